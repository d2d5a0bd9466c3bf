"""What an emulated WanGP node does with settings, before any GPU work: pure functions.

- the model catalogue (``farm/data/wan2gp_models.json``) and each model's default settings;
  a node's own models (its finetunes, :func:`node_catalogue`);
- :func:`plan_tasks`: a ``wangp_generate`` source (a settings dict, a list of them, or a list
  of ``{"id", "params"}``) into :class:`Task` s, or validation errors, as WanGP does it:
  missing keys from the model's defaults, resolution rounded down to the model's block,
  frames snapped to its grid, prompts split on blank lines unless
  ``multi_prompts_gen_type`` is ``"FG"``, ``#`` comment lines dropped;
- the memory rule of WanGP's memory profiles (:func:`vram_needed`);
- output file naming (:func:`output_name`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from farm.catalog import wan_files
from farm.emulators.profile import (
    MIN_RESIDENT_GB,
    VRAM_OVERHEAD_GB,
    ModelSize,
    activations_gb,
    workload,
)
from farm.errors import ConfigError

#: WanGP's memory profiles (``--profile`` / ``override_profile``); 4 is WanGP's default
MEMORY_PROFILES = {
    1: "HighRAM_HighVRAM",
    2: "HighRAM_LowVRAM",
    3: "LowRAM_HighVRAM",
    4: "LowRAM_LowVRAM",
    5: "VerylowRAM_LowVRAM",
}
DEFAULT_MEMORY_PROFILE = 4
#: profiles that keep every weight in VRAM (the others stream weights from RAM)
RESIDENT_PROFILES = (1, 3)
#: the fail-safe profile 5 also tiles the VAE and slices attention: half the activations
FAILSAFE_ACTIVATION_SHARE = 0.5
#: seconds per step relative to profile 1: streaming weights costs time
PROFILE_STEP_FACTOR = {1: 1.0, 2: 1.1, 3: 1.0, 4: 1.15, 5: 1.4}
#: WanGP keeps transformers quantized to int8 by default: one byte per parameter
BYTES_PER_PARAM = 1.0
MAX_SEED = 999_999_999
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "wan2.1": {"guidance_scale": 5.0, "flow_shift": 5.0},
    "wan2.2": {"guidance_scale": 4.0, "flow_shift": 5.0},
    "hunyuan": {"guidance_scale": 1.0, "embedded_guidance_scale": 6.0, "flow_shift": 7.0},
    "ltxv": {"guidance_scale": 3.0, "flow_shift": 1.0},
}
_BAD_FILE_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
#: arguments that name files (a path is refused unless reading the file system is allowed)
FILE_KEYS = ("image_start", "image_end", "image_refs", "video_source", "video_guide", "audio_guide")


class ValidationFailed(ValueError):
    """A task's settings are invalid (WanGP's stage ``validation``)."""


@dataclass(frozen=True)
class ModelInfo:
    """One catalogue entry (see farm/data/wan2gp_models.json)."""

    model_type: str
    name: str
    family: str
    tier: str
    mode: str
    params_b: float
    fps: int
    frame_step: int
    min_frames: int
    size_step: int
    resolution: str
    frames: int
    steps: int
    #: transformer files it loads: Wan 2.2 A14B has a high-noise and a low-noise expert
    diffusion_models: int = 1

    @property
    def files(self) -> tuple[str, ...]:
        """Its transformer files, named as the farm names them (:func:`farm.catalog.wan_files`)."""
        return wan_files(self.model_type, self.diffusion_models)

    @property
    def guidance_phases(self) -> int:
        """Wan 2.2 A14B runs two experts (high noise, then low noise): two inference stages."""
        return self.diffusion_models


@dataclass
class Task:
    """One generation: the filled-in settings and what the emulator renders from them."""

    index: int
    task_id: Any
    settings: dict[str, Any]
    model: ModelInfo
    prompts: list[str]
    width: int
    height: int
    frames: int
    steps: int
    seed: int
    memory_profile: int
    image_start: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@cache
def catalogue() -> dict[str, ModelInfo]:
    """The WanGP models the farm knows, by ``model_type``."""
    raw = json.loads(resources.files("farm").joinpath("data", "wan2gp_models.json").read_text())
    return {mt: ModelInfo(model_type=mt, **spec) for mt, spec in raw["models"].items()}


def node_catalogue(finetunes: Path | None) -> dict[str, ModelInfo]:
    """The WanGP models a node knows: the catalogue's and its finetunes, one
    ``<model_type>.json`` each in ``finetunes`` in WanGP's format (a ``model`` block with
    ``name`` and ``architecture``, a built-in model_type whose facts it shares; ``URLs2``
    when it loads a second transformer; default ``resolution``, ``video_length`` and
    ``num_inference_steps``). ConfigError names every bad file and its fix."""
    models = dict(catalogue())
    problems: list[str] = []
    for path in sorted(finetunes.glob("*.json")) if finetunes else ():
        info = _finetune(path, problems)
        if info is not None:
            models[info.model_type] = info
    if problems:
        raise ConfigError("\n".join(["invalid WanGP finetunes:", *(f"  - {p}" for p in problems)]))
    return models


def _finetune(path: Path, problems: list[str]) -> ModelInfo | None:
    """One finetune file as a ModelInfo (None: its problems added to ``problems``)."""
    before = len(problems)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{path}: not readable JSON ({exc}); fix the file")
        return None
    block = data.get("model") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        problems.append(f'{path}: needs a "model" object with "name" and "architecture" '
                        "(WanGP's finetune format)")  # fmt: skip
        return None
    base = catalogue().get(str(block.get("architecture")))
    if base is None:
        problems.append(f"{path}: model.architecture {block.get('architecture')!r} is not a "
                        f"model this node renders; use one of {', '.join(sorted(catalogue()))}")  # fmt: skip
    name = block.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{path}: model.name must be a non-empty string")
    steps, frames = data.get("num_inference_steps"), data.get("video_length")
    for key, value in (("num_inference_steps", steps), ("video_length", frames)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):  # fmt: skip
            problems.append(f"{path}: {key} {value!r} must be a whole number of 1 or more")
    resolution = data.get("resolution")
    if resolution is not None and not re.fullmatch(r"\d+x\d+", str(resolution)):
        problems.append(f'{path}: resolution {resolution!r} must be WIDTHxHEIGHT, e.g. "832x480"')
    if len(problems) > before or base is None:
        return None
    steps = steps or base.steps
    return replace(
        base,
        model_type=path.stem,
        name=str(name).strip(),
        tier="fast" if steps < base.steps else base.tier,
        resolution=str(resolution or base.resolution),
        frames=frames or base.frames,
        steps=steps,
        diffusion_models=2 if "URLs2" in block else base.diffusion_models,
    )


def model_info(model_type: Any, models: Mapping[str, ModelInfo] | None = None) -> ModelInfo:
    """The entry of ``models`` (default: the catalogue); ValidationFailed with WanGP's
    messages when missing or unknown."""
    if model_type is None or model_type == "":
        raise ValidationFailed("No model_type specified")
    info = (catalogue() if models is None else models).get(str(model_type))
    if info is None:
        raise ValidationFailed(f"Unknown model type: {model_type}")
    return info


def model_record(info: ModelInfo, available: bool) -> dict[str, Any]:
    """A compact ``wangp_list_models`` record."""
    return {
        "model_type": info.model_type,
        "name": info.name,
        "family": info.family,
        "tier": info.tier,
        "inputs": info.mode,
        "main_output": "video",
        "params_b": info.params_b,
        "fps": info.fps,
        "available": available,
    }


def default_settings(info: ModelInfo) -> dict[str, Any]:
    """WanGP's pristine defaults for a model (what ``wangp_get_default_settings`` returns)."""
    return {
        "model_type": info.model_type,
        "prompt": "",
        "negative_prompt": "",
        "resolution": info.resolution,
        "video_length": info.frames,
        "num_inference_steps": info.steps,
        "seed": -1,
        **_FAMILY_DEFAULTS.get(info.family, {}),
        "image_prompt_type": "S" if info.mode == "i2v" else "",
        "multi_prompts_gen_type": "",
        "activated_loras": [],
        "loras_multipliers": "",
        "repeat_generation": 1,
    }


# --- sources and tasks --------------------------------------------------------------------


def task_entries(source: Any) -> list[tuple[Any, Any]]:
    """(task id, settings) of each task of a ``wangp_generate`` source / ``--process`` file."""
    if isinstance(source, dict):
        source = [source]
    if not isinstance(source, list):
        raise TypeError("source must be a settings dict, task dict, manifest dict, or task list")
    entries = []
    for i, item in enumerate(source):
        if isinstance(item, dict) and isinstance(item.get("params"), dict):
            entries.append((item.get("id", i + 1), item["params"]))
        else:
            entries.append((i + 1, item))
    return entries


def file_arguments(settings: Any) -> list[str]:
    """The file-path values of one task's settings (they need file-system access)."""
    if not isinstance(settings, dict):
        return []
    found = []
    for key in FILE_KEYS:
        value = settings.get(key)
        values = value if isinstance(value, list) else [value]
        found += [v for v in values if isinstance(v, str) and v]
    return found


def plan_task(
    index: int,
    task_id: Any,
    raw: Any,
    *,
    default_profile: int = DEFAULT_MEMORY_PROFILE,
    rng_seed: int | None = None,
    models: Mapping[str, ModelInfo] | None = None,
) -> Task:
    """One task from its raw settings, its model one of ``models`` (default: the
    catalogue's); ValidationFailed says what WanGP would refuse."""
    if not isinstance(raw, dict):
        raise ValidationFailed(f"Task settings must be a dict, got {type(raw).__name__}")
    info = model_info(raw.get("model_type"), models)
    settings = {**default_settings(info), **raw}
    width, height = _resolution(settings["resolution"], info)
    frames = snap_frames(_frame_count(settings["video_length"], info), info)
    steps = _positive_int(settings["num_inference_steps"], "num_inference_steps")
    prompts = split_prompts(str(settings.get("prompt") or ""), settings["multi_prompts_gen_type"])
    seed = _int(settings["seed"], "seed")
    if seed < 0:
        seed = rng_seed if rng_seed is not None else 0
    profile = settings.get("override_profile", -1)
    profile = default_profile if profile in (-1, None, "", 0) else _int(profile, "override_profile")
    if profile not in MEMORY_PROFILES:
        raise ValidationFailed(
            f"override_profile must be one of {sorted(MEMORY_PROFILES)} (or -1), got {profile}"
        )
    image_start = _image_inputs(settings, info)
    settings.update(resolution=f"{width}x{height}", video_length=frames, seed=seed)
    return Task(
        index=index,
        task_id=task_id,
        settings=settings,
        model=info,
        prompts=prompts or [""],
        width=width,
        height=height,
        frames=frames,
        steps=steps,
        seed=seed,
        memory_profile=profile,
        image_start=image_start,
    )


def split_prompts(prompt: str, gen_type: Any) -> list[str]:
    """The prompts of one task: ``#`` lines dropped; unless ``gen_type`` is "FG", one
    prompt per paragraph (blocks separated by blank lines)."""
    lines = [line for line in prompt.splitlines() if not line.lstrip().startswith("#")]
    if gen_type == "FG":
        text = "\n".join(lines).strip()
        return [text] if text else []
    prompts, block = [], []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line)
        elif block:
            prompts.append("\n".join(block).strip())
            block = []
    return prompts


def snap_frames(frames: int, info: ModelInfo) -> int:
    """Frames snapped down to the model's grid (frame_step x n + 1), at least min_frames."""
    snapped = (max(frames, 1) - 1) // info.frame_step * info.frame_step + 1
    return max(info.min_frames, snapped)


def _frame_count(value: Any, info: ModelInfo) -> int:
    if isinstance(value, str) and value.strip().lower().endswith("s"):
        try:
            seconds = float(value.strip()[:-1])
        except ValueError:
            raise ValidationFailed(f"Invalid video_length: {value!r}") from None
        return round(seconds * info.fps) + 1
    return _positive_int(value, "video_length")


def _resolution(value: Any, info: ModelInfo) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(value))
    if not match:
        raise ValidationFailed(f"Invalid resolution {value!r}: expected WIDTHxHEIGHT, e.g. 832x480")
    block = info.size_step
    width, height = (int(match.group(i)) // block * block for i in (1, 2))
    if width < block or height < block:
        raise ValidationFailed(f"Resolution {value} is too small for {info.model_type}")
    return width, height


def _image_inputs(settings: Mapping[str, Any], info: ModelInfo) -> str | None:
    kind = str(settings.get("image_prompt_type") or "")
    unknown = set(kind) - set("SEV")
    if unknown:
        raise ValidationFailed(f"Unsupported image_prompt_type {kind!r}")
    if info.mode == "t2v" and kind:
        raise ValidationFailed(f"Model {info.model_type} does not accept a Start or End Image")
    if info.mode == "i2v" and "S" not in kind and "V" not in kind:
        raise ValidationFailed("You must provide a Start Image")
    if "S" in kind and not settings.get("image_start"):
        raise ValidationFailed("You must provide a Start Image")
    if "E" in kind and not settings.get("image_end"):
        raise ValidationFailed("You must provide an End Image")
    if "V" in kind and not settings.get("video_source"):
        raise ValidationFailed("You must provide a Video to continue")
    start = settings.get("image_start") if "S" in kind else None
    if isinstance(start, list):
        start = start[0] if start else None
    return str(start) if start else None


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationFailed(f"Invalid {name}: {value!r}")
    try:
        return int(float(value))
    except ValueError:
        raise ValidationFailed(f"Invalid {name}: {value!r}") from None


def _positive_int(value: Any, name: str) -> int:
    number = _int(value, name)
    if number < 1:
        raise ValidationFailed(f"Invalid {name}: {value!r} (must be >= 1)")
    return number


# --- memory ---------------------------------------------------------------------------------


def vram_needed(
    info: ModelInfo, width: int, height: int, frames: int, memory_profile: int
) -> float:
    """Peak VRAM (GB) of a generation under a WanGP memory profile.

    weights = params_b x 1 byte (int8); activations as profile.py's model, scaled by the
    job's size relative to 832x480x81.
    profiles 1, 3 (HighVRAM) keep every weight resident:  weights + activations + 1.0
    profiles 2, 4 (LowVRAM) stream weights from RAM:       min(weights, 2.0) + activations + 1.0
    profile 5 (fail-safe) streams weights and also tiles the VAE / slices attention:
                                                          min(weights, 2.0) + activations / 2 + 1.0
    """
    size = ModelSize(info.params_b, BYTES_PER_PARAM)
    act = activations_gb(size, workload(width, height, frames))
    if memory_profile in RESIDENT_PROFILES:
        weights = size.weights_gb
    else:
        weights = min(size.weights_gb, MIN_RESIDENT_GB)
    if memory_profile == 5:
        act *= FAILSAFE_ACTIVATION_SHARE
    return weights + act + VRAM_OVERHEAD_GB


def oom_message(needed_gb: float, vram_gb: float) -> str:
    """torch's out-of-memory text for an allocation that does not fit."""
    free = max(0.0, vram_gb - min(needed_gb, vram_gb) * 0.9)
    want = max(0.01, needed_gb - vram_gb + free)
    return (
        f"CUDA out of memory. Tried to allocate {want:.2f} GiB. GPU 0 has a total capacity of "
        f"{vram_gb:.2f} GiB of which {free:.2f} GiB is free. Of the allocated memory "
        f"{vram_gb - free:.2f} GiB is allocated by PyTorch. If reserved but unallocated memory "
        "is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
        "fragmentation."
    )


# --- output naming --------------------------------------------------------------------------


def output_name(task: Task, prompt: str, when: datetime) -> str:
    """The file name of one generation (without the clash suffix), ``.mp4`` included."""
    stamp = when.strftime("%Y-%m-%d-%Hh%Mm%Ss")
    template = str(task.settings.get("output_filename") or "")
    if template:
        values = {
            "seed": task.seed,
            "steps": task.steps,
            "resolution": f"{task.width}x{task.height}",
            "frames": task.frames,
            "date": stamp,
            "model_type": task.model.model_type,
        }

        def fill(match: re.Match) -> str:
            key, size = match.group(1), match.group(2)
            if key == "prompt":
                return _prompt_part(prompt, int(size) if size else 50)
            return str(values.get(key, match.group(0)))

        stem = re.sub(r"\{(\w+)(?:\((\d+)\))?\}", fill, template)
        stem = _BAD_FILE_CHARS.sub("", stem).strip() or stamp
    else:
        stem = f"{stamp}_seed{task.seed}_{_prompt_part(prompt, 50)}"
    return f"{stem}.mp4"


def unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name (2).mp4``, ``name (3).mp4``... when it exists."""
    path = folder / name
    stem, suffix = path.stem, path.suffix
    n = 2
    while path.exists():
        path = folder / f"{stem} ({n}){suffix}"
        n += 1
    return path


def _prompt_part(prompt: str, size: int) -> str:
    text = " ".join(prompt.split())[:size]
    return _BAD_FILE_CHARS.sub("", text).strip()


def seconds_text(seconds: float) -> str:
    """WanGP's duration text: ``1m 5s`` / ``12.3s``."""
    if seconds >= 60:
        return f"{math.floor(seconds / 60)}m {seconds % 60:.0f}s"
    return f"{seconds:.1f}s"
