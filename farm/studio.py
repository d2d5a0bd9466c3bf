"""A studio's own catalogue (``FARM_CATALOG``, TOML or JSON) merged over the built-in one.

It adds templates or replaces built-in ones by name, and defines the ComfyUI workflows
they render with; relative paths resolve against the catalogue's folder::

    [workflows.dusk]                     # a workflow and what the farm must know of it
    file = "flows/dusk.json"             # API or editor format
    fps = 16                             # it renders at; frames = frame_step·n + 1
    frame_step = 4
    size_step = 16                       # width and height are multiples of it
    files = { vae = ["wan_2.1_vae.safetensors"] }   # support files a node must hold
    [workflows.dusk.bindings]            # parameter = "Node title.input" (default: the
    models = ["High Noise.unet_name", "Low Noise.unet_name"]   # built-in titles)
    negative_prompt = ""                 # "": the workflow does not take it

    [templates.dusk]
    description = "Wan 2.2 A14B, two models"
    steps = { preview = 6, final = 20 }
    text.preview = { workflow = "dusk", models = ["hi.safetensors", "lo.safetensors"] }
    text.final = { workflow = "dusk", models = ["hi.safetensors", "lo.safetensors"], wangp = "t2v_2_2" }

    [wangp_models.t2v_2_2_dusk]          # a WanGP model of the studio's own (a finetune on
    architecture = "t2v_2_2"             # the node): its architecture's facts, and its own
    tier = "fast"
    steps = 4

Everything is checked when the catalogue is loaded; each problem names the file, the key
and the fix (:class:`~farm.errors.CatalogError`). What needs a node (its classes, the
titles of an editor-format workflow once converted) is checked by node discovery
(:mod:`farm.discovery`).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, replace
from functools import cache
from pathlib import Path
from typing import Any

from farm.catalog import KINDS, TIERS, Catalog, Engine, Model, WanModel, load_catalog
from farm.comfy_editor import is_editor_format
from farm.errors import CatalogError, WorkflowError
from farm.jsonfile import JSONTextError, decode, read_json
from farm.workflows import (
    Targets,
    bound_inputs,
    check_api_format,
    model_bindings,
    target_problem,
)

#: a binding's name in a studio catalogue → the farm parameter it sets
PARAMS = {
    "prompt": "prompt",
    "negative_prompt": "negative",
    "seed": "seed",
    "steps": "steps",
    "width": "width",
    "height": "height",
    "frames": "length",
    "fps": "fps",
    "start_image": "start_image",
    "tracks": "tracks",
    "models": "model",
    "filename_prefix": "filename_prefix",
}
TOP_KEYS = ("version", "description", "workflows", "wangp_models", "templates")
WORKFLOW_KEYS = ("file", "fps", "frame_step", "size_step", "family", "files", "bindings")
TEMPLATE_KEYS = ("description", "steps", *KINDS)
LEAF_KEYS = ("workflow", "models", "folder", "wangp")
#: where a leaf's model files may live on a ComfyUI node (``folder``)
MODEL_HOMES = ("diffusion_models", "checkpoints")
#: the facts of a WanGP model (``[wangp_models.<model_type>]``), as wan2gp_models.json holds
WAN_INTS = ("fps", "frame_step", "min_frames", "size_step", "frames", "steps", "diffusion_models")
WAN_TEXTS = ("name", "family", "tier", "mode", "resolution")
WAN_KEYS = ("architecture", *WAN_TEXTS, "params_b", *WAN_INTS)
WAN_CHOICES = {
    "tier": {"fast": "previews", "full": "finals"},
    "mode": {"t2v": "text only", "i2v": "a start image", "ti2v": "either"},
}
DEFAULT_STEPS = {"preview": 8, "final": 30}


def catalog_for(settings: Any) -> Catalog:
    """The catalogue of a farm with ``settings``: the built-in one with ``FARM_CATALOG``
    merged in (read again when the file changes)."""
    return load_studio(settings.catalog) if settings.catalog else load_catalog()


def load_studio(path: str | Path) -> Catalog:
    """The built-in catalogue with the studio catalogue at ``path`` merged in; raises
    :class:`CatalogError` naming the file, the key and the fix when it is wrong."""
    path = Path(path).expanduser().resolve()
    try:
        info = os.stat(path)
        mark: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
    except OSError:
        mark = None  # read_catalog says what is wrong
    return _merged(path, mark)


@cache
def _merged(path: Path, mark: tuple[int, int] | None) -> Catalog:
    return merge_studio(load_catalog(), path)


class Problems:
    """The problems found in one catalogue file, each 'file: key: what; fix'."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.path}: {key}: {message}")

    def table(self, raw: Any, key: str, known: tuple[str, ...] | None = None) -> dict[str, Any]:
        """``raw`` as a table of ``known`` keys (each unknown key a problem; None: any
        key); {} if it is not a table."""
        if not isinstance(raw, dict):
            self.add(key, f"must be a table ({{...}}), not {type(raw).__name__}")
            return {}
        for name in raw if known is not None else ():
            if name not in known:
                self.add(f"{key}.{name}" if key else name,
                         f"unknown key; remove it or use one of: {', '.join(known)}")  # fmt: skip
        return raw

    def positive(self, raw: dict[str, Any], key: str, name: str, default: int) -> int:
        value = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.add(f"{key}.{name}", f"{value!r} must be a whole number of 1 or more")
            return default
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        """A string or a list of strings, as a tuple ("" and [] give ())."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            self.add(key, f"{value!r} must be a string or a list of strings")
            return ()
        return tuple(i for i in items if i)


def read_catalog(path: Path) -> dict[str, Any]:
    """The studio catalogue at ``path`` as data (TOML, or JSON for ``*.json``)."""
    where = f"{path} (FARM_CATALOG)"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{where} does not exist: point FARM_CATALOG at your catalog.toml "
                           "(or .json), or unset it to use the built-in catalogue") from None  # fmt: skip
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{where} cannot be read ({exc}); save it as UTF-8 text") from None
    try:
        data = decode(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{where} is not valid TOML: {exc}; fix that line "
                           "(https://toml.io), or give a .json file") from None  # fmt: skip
    except JSONTextError as exc:
        raise CatalogError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{where} must be a table of workflows and templates")
    return data


def merge_studio(base: Catalog, path: Path) -> Catalog:
    """``base`` with the studio catalogue at ``path`` merged over it; raises
    :class:`CatalogError` listing every problem."""
    data = read_catalog(path)
    p = Problems(path)
    data = p.table(data, "", TOP_KEYS)
    if data.get("version", 1) != 1:
        p.add("version", f"{data['version']!r} is not supported; write version = 1")
    if not isinstance(data.get("description", ""), str):
        p.add("description", "must be a string")
    engines = dict(base.engines)
    graphs: dict[str, Any] = {}
    raw_flows = p.table(data.get("workflows", {}), "workflows")
    broken: set[str] = set()  # defined, with problems: not reported again where used
    for name, raw in raw_flows.items():
        found = _engine(p, name, raw, path.parent, base.engines.get(name))
        if found is None:
            broken.add(name)
        else:
            engines[name], graphs[name] = found
    wan_models = dict(base.wan_models)
    for model_type, raw in p.table(data.get("wangp_models", {}), "wangp_models").items():
        found_model = _wan_model(p, model_type, raw, base.wan_models)
        if found_model is None:
            broken.add(f"wangp:{model_type}")
        else:
            wan_models[model_type] = found_model
    templates = dict(base.templates)
    models = dict(base.models)
    wan = {k: dict(v) for k, v in base.wan_templates.items()}
    sources = dict(base.sources)
    studio = replace(base, wan_models=wan_models)
    raw_templates = p.table(data.get("templates", {}), "templates")
    for name, raw in raw_templates.items():
        spec, found, wan_spec = _template(p, name, raw, engines, studio, broken)
        templates[name], sources[name], wan[name] = spec, str(path), wan_spec
        models.update(found)
    merged = replace(base, engines=engines, models=models, templates=templates,
                     wan_models=wan_models, wan_templates=wan, sources=sources,
                     studio=path)  # fmt: skip
    for name, params in merged.params().items():
        if name in graphs:
            _check_bindings(p, name, engines[name], graphs[name], params)
    if p.items:
        raise CatalogError(f"the studio catalogue {path} (FARM_CATALOG) has "
                           f"{len(p.items)} problem{'s' if len(p.items) > 1 else ''}:", p.items)  # fmt: skip
    return merged


def _engine(
    p: Problems, name: str, raw: Any, folder: Path, base: Engine | None
) -> tuple[Engine, Any] | None:
    """The engine of ``[workflows.name]`` and its graph (None: problems recorded)."""
    key = f"workflows.{name}"
    raw = p.table(raw, key, WORKFLOW_KEYS)
    if not isinstance(raw.get("file"), str) or not raw.get("file"):
        p.add(f"{key}.file", "is required: the path of the workflow's JSON file "
              "(API or editor format), relative to this catalogue")  # fmt: skip
        return None
    file = (folder / raw["file"]).expanduser().resolve()
    try:
        graph = read_json(file, "workflow", WorkflowError)
        if not is_editor_format(graph):
            check_api_format(graph, str(file))
    except WorkflowError as exc:
        p.add(f"{key}.file", f"{exc}; fix the path (relative to this catalogue) or the file")
        return None
    files: dict[str, tuple[str, ...]] = {}
    raw_files = raw.get("files", {})
    for folder_name, names in p.table(raw_files, f"{key}.files").items():
        files[folder_name] = p.strings(names, f"{key}.files.{folder_name}")
    bindings = dict(base.bindings) if base else {}
    raw_bindings = p.table(raw.get("bindings", {}), f"{key}.bindings", tuple(PARAMS))
    for studio_name, value in raw_bindings.items():
        found = _targets(p, f"{key}.bindings.{studio_name}", value)
        if studio_name == "models":  # one loader per model file: model, model2, ...
            bindings = {k: v for k, v in bindings.items() if k not in model_bindings(bindings)}
            bindings.update({"model" if i == 0 else f"model{i + 1}": (t,)
                             for i, t in enumerate(found)} or {"model": ()})  # fmt: skip
        elif studio_name in PARAMS:
            bindings[PARAMS[studio_name]] = found
    family = raw.get("family", base.family if base else name)
    if not isinstance(family, str):
        p.add(f"{key}.family", "must be a string")
    engine = Engine(
        name=name,
        workflow=name,
        family=str(family),
        frame_step=p.positive(raw, key, "frame_step", base.frame_step if base else 4),
        size_step=p.positive(raw, key, "size_step", base.size_step if base else 16),
        fps=p.positive(raw, key, "fps", base.fps if base else 16),
        files=files,
        path=file,
        bindings=bindings,
        source=str(p.path),
    )
    return engine, graph


def _targets(p: Problems, key: str, value: Any) -> Targets:
    """A binding: ``"Title.input"``, a list of them, or ``""`` (not taken)."""
    out = []
    for item in p.strings(value, key):
        title, dot, input_name = item.rpartition(".")
        if not dot or not title or not input_name:
            p.add(key, f"{item!r} must be 'Node title.input name' (e.g. \"Positive Prompt.text\"),"
                  ' or "" when the workflow does not take it')  # fmt: skip
            continue
        out.append((title, input_name))
    return tuple(out)


def _template(
    p: Problems,
    name: str,
    raw: Any,
    engines: dict[str, Engine],
    base: Catalog,
    broken: set[str],
) -> tuple[dict[str, Any], dict[str, Model], dict[str, dict[str, str]]]:
    """``[templates.name]`` as the catalogue's template entry, its models and its WanGP
    columns."""
    key = f"templates.{name}"
    raw = p.table(raw, key, TEMPLATE_KEYS)
    description = raw.get("description", "")
    if not isinstance(description, str):
        p.add(f"{key}.description", "must be a string")
    raw_steps = p.table(raw.get("steps", {}), f"{key}.steps", TIERS)
    steps = {t: p.positive(raw_steps, f"{key}.steps", t, DEFAULT_STEPS[t]) for t in TIERS}
    spec: dict[str, Any] = {"description": str(description), "steps": steps}
    models: dict[str, Model] = {}
    wan: dict[str, dict[str, str]] = {}
    if "text" not in raw:
        p.add(f"{key}.text", "is required: how text-only shots render, "
              "text.preview and text.final = { workflow = ..., models = [...] }")  # fmt: skip
    for kind in KINDS:
        if kind not in raw:
            continue
        tiers = p.table(raw[kind], f"{key}.{kind}", TIERS)
        column: dict[str, str | None] = {}
        for tier in TIERS:
            where = f"{key}.{kind}.{tier}"
            if tier not in tiers:
                p.add(where, f"is required: {{ workflow = ..., models = [...] }} for {tier}s")
                continue
            model, wan_id = _leaf(p, where, tiers[tier], kind, engines, base, broken)
            column[tier] = model.key if model else None
            if model:
                models[model.key] = model
            if wan_id:
                wan.setdefault("t2v" if kind == "text" else "i2v", {})[tier] = wan_id
        if kind == "text":
            spec.update(column)
        else:
            spec[kind] = column
    return spec, models, wan


def _leaf(
    p: Problems,
    key: str,
    raw: Any,
    kind: str,
    engines: dict[str, Engine],
    base: Catalog,
    broken: set[str],
) -> tuple[Model | None, str | None]:
    """One tier of one input kind: its ComfyUI model (workflow + files) and WanGP id."""
    raw = p.table(raw, key, LEAF_KEYS)
    flow, wan_id = raw.get("workflow"), raw.get("wangp")
    files = p.strings(raw.get("models", []), f"{key}.models")
    if flow is None and wan_id is None:
        p.add(key, "names no renderer: give workflow (ComfyUI) and/or wangp (a WanGP model id)")
    if wan_id is not None:
        if kind == "trajectories":
            p.add(f"{key}.wangp", "WanGP has no trajectory control (Wan ATI is ComfyUI only); "
                  "remove it")  # fmt: skip
        elif not isinstance(wan_id, str) or not wan_id:
            p.add(f"{key}.wangp", f"{wan_id!r} must be a WanGP model id (its model_type)")
            wan_id = None
        elif f"wangp:{wan_id}" in broken:
            wan_id = None  # its definition's problems are reported there
        elif wan_id not in base.wan_models:
            p.add(f"{key}.wangp", f"{wan_id!r} is not a WanGP model the farm knows; define it "
                  f"in [wangp_models.{wan_id}] or use one of: "
                  f"{', '.join(sorted(base.wan_models))}")  # fmt: skip
            wan_id = None
        else:
            wanted = "t2v" if kind == "text" else "i2v"
            mode = base.wan_models[wan_id].mode
            if mode not in (wanted, "ti2v"):
                takes = "a start image" if mode == "i2v" else "text only"
                p.add(f"{key}.wangp", f"WanGP model {wan_id!r} takes {takes} (mode {mode}); "
                      f"{kind} shots need a model of mode {wanted} or ti2v")  # fmt: skip
                wan_id = None
    if flow is None:
        if files:
            p.add(f"{key}.models", "models need a workflow to load them; add workflow = ...")
        return None, wan_id if isinstance(wan_id, str) else None
    if flow in broken:
        return None, None
    if flow not in engines:
        p.add(f"{key}.workflow", f"{flow!r} is not a workflow; define [workflows.{flow}] or "
              f"use one of: {', '.join(sorted(engines))}")  # fmt: skip
        return None, None
    engine = engines[flow]
    loaders = len(model_bindings(engine.bindings))
    if files and loaders and len(files) != loaders:
        p.add(f"{key}.models", f"gives {len(files)} model file(s) but workflow {flow!r} binds "
              f"{loaders} (bindings.models); give one file per bound loader, or set "
              'bindings.models = "" when the workflow names its files itself')  # fmt: skip
    folder = raw.get("folder", "diffusion_models")
    if folder not in MODEL_HOMES:
        p.add(f"{key}.folder", f"got {folder!r}; use one of: {', '.join(MODEL_HOMES)} (the "
              "ComfyUI model folder of the files in models)")  # fmt: skip
        folder = "diffusion_models"
    model = Model(key=key.removeprefix("templates."), engine=engine, files=files, folder=folder)
    return model, wan_id if isinstance(wan_id, str) else None


def _wan_model(
    p: Problems, model_type: str, raw: Any, known: dict[str, WanModel]
) -> WanModel | None:
    """``[wangp_models.<model_type>]`` as a :class:`WanModel`: a new WanGP model id (a
    finetune: its ``architecture``'s facts, or every fact given) or a built-in one's facts
    overridden (None: problems recorded)."""
    key = f"wangp_models.{model_type}"
    before = len(p.items)
    raw = p.table(raw, key, WAN_KEYS)
    arch = raw.get("architecture")
    if not model_type.strip() or any(c in model_type for c in "/\\ "):
        p.add(key, "a WanGP model id (model_type) has no spaces or slashes: the file name of "
              "its finetune, e.g. [wangp_models.t2v_2_2_studio]")  # fmt: skip
    if arch is not None and model_type in known:
        p.add(f"{key}.architecture", f"{model_type!r} is a built-in WanGP model: its own facts "
              "are the defaults; remove architecture, or give the new model another id")  # fmt: skip
        return None
    if arch is not None and arch not in known:
        p.add(f"{key}.architecture", f"{arch!r} is not a WanGP model the farm knows; use the "
              "finetune's model.architecture, one of: "
              f"{', '.join(sorted(known))}, or give every fact")  # fmt: skip
        return None
    start = known.get(model_type) or known.get(arch or "")
    facts: dict[str, Any] = asdict(start) if start else {"diffusion_models": 1}
    facts["id"] = model_type
    if start is not None and model_type not in known:
        facts["name"] = model_type
    for name in WAN_TEXTS:
        if name in raw:
            value = raw[name]
            if not isinstance(value, str) or not value.strip():
                p.add(f"{key}.{name}", f"{value!r} must be a non-empty string")
            elif name in WAN_CHOICES and value not in WAN_CHOICES[name]:
                choices = ", ".join(f'"{k}" ({v})' for k, v in WAN_CHOICES[name].items())
                p.add(f"{key}.{name}", f"{value!r} is not a {name}; use {choices}")
            else:
                facts[name] = value.strip()
    for name in WAN_INTS:
        if name in raw:
            facts[name] = p.positive(raw, key, name, facts.get(name, 1))
    if "params_b" in raw:
        value = raw["params_b"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            p.add(f"{key}.params_b", f"{value!r} must be the billions of parameters, > 0 (e.g. 14)")
        else:
            facts["params_b"] = float(value)
    missing = [n for n in (*WAN_TEXTS, "params_b", *WAN_INTS) if n not in facts and n not in raw]
    if missing:
        p.add(key, f"a new WanGP model needs {', '.join(missing)}; give them, or set "
              "architecture = the built-in model it is a finetune of (its facts are the "
              "defaults)")  # fmt: skip
    if len(p.items) > before:
        return None
    model = WanModel(**facts)
    _check_grid(p, key, model)
    return model if len(p.items) == before else None


def _check_grid(p: Problems, key: str, m: WanModel) -> None:
    """``m``'s frames and resolution on its own grid (frames = frame_step·n + 1, width and
    height multiples of size_step)."""
    if (m.min_frames - 1) % m.frame_step:
        p.add(f"{key}.min_frames", f"{m.min_frames} is off the frame grid {m.frame_step}n+1; "
              f"use {m.snap_frames(m.min_frames)}")  # fmt: skip
    if (m.frames - 1) % m.frame_step or m.frames < m.min_frames:
        p.add(f"{key}.frames", f"{m.frames} is off the frame grid {m.frame_step}n+1 (at least "
              f"min_frames {m.min_frames}); use {max(m.snap_frames(m.frames), m.min_frames)}")  # fmt: skip
    size = re.fullmatch(r"(\d+)x(\d+)", m.resolution)
    if size is None:
        p.add(f"{key}.resolution", f'{m.resolution!r} must be WIDTHxHEIGHT, e.g. "832x480"')
    elif any(int(v) < m.size_step or int(v) % m.size_step for v in size.groups()):
        w, h = (max(m.size_step, int(v) // m.size_step * m.size_step) for v in size.groups())
        p.add(f"{key}.resolution", f"{m.resolution!r} is not a multiple of size_step "
              f"{m.size_step}; use \"{w}x{h}\"")  # fmt: skip


def _check_bindings(p: Problems, name: str, engine: Engine, graph: Any, params: set[str]) -> None:
    """Every bound title of ``params`` is one node of the workflow, with that input (an
    editor-format file: its titled nodes; their inputs are checked once converted)."""
    editor = is_editor_format(graph)
    studio_names = {v: k for k, v in PARAMS.items()}
    for param in sorted(params):
        for title, input_name in bound_inputs(param, engine.bindings):
            key = f"workflows.{name}.bindings.{studio_names[param]}"
            problem = (
                editor_title_problem(graph, title)
                if editor
                else target_problem(graph, title, input_name)
            )
            if problem:
                p.add(key, f"{problem} in {engine.path}; title the node {title!r} in ComfyUI, "
                      f"bind another title, or set {studio_names[param]} = \"\" if the "
                      "workflow does not take it")  # fmt: skip


def editor_title_problem(graph: dict[str, Any], title: str) -> str | None:
    """Why an editor-format ``graph`` has no one node titled ``title`` (None: it has; its
    inputs are known once a node's classes convert it)."""
    ids = [str(n.get("id")) for n in graph["nodes"] if isinstance(n, dict)
           and n.get("title") == title]  # fmt: skip
    if not ids:
        return f"no node titled {title!r}"
    if len(ids) > 1:
        return (
            f"{len(ids)} nodes are titled {title!r} (ids {', '.join(ids)}); titles must be unique"
        )
    return None
