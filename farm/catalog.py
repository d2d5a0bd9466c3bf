"""The model catalogue: templates → ComfyUI engines and model files (``data/catalog.json``)
and → WanGP model ids per tier (its ``wan2gp`` part, with ``data/wan2gp_models.json``),
merged with a studio's own catalogue (``FARM_CATALOG``, :mod:`farm.studio`).

A template renders each shot by its input kind (``text``, ``start_image``,
``trajectories``) and tier (``preview``, ``final``): ``templates[name][tier]`` is the model
of text shots; ``templates[name]["start_image"][tier]`` and ``["trajectories"][tier]``,
when the template has them, those of image shots (else the catalogue's ``image_models``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from farm.workflows import Targets

BUILT_IN = "built-in"
KINDS = ("text", "start_image", "trajectories")
TIERS = ("preview", "final")
#: the parameters every job gives its workflow, and those of each input kind besides
BASE_PARAMS = ("prompt", "negative", "seed", "steps", "width", "height", "length", "fps",
               "filename_prefix")  # fmt: skip
KIND_PARAMS = {"text": (), "start_image": ("start_image",),
               "trajectories": ("start_image", "tracks")}  # fmt: skip


@dataclass(frozen=True)
class Engine:
    """A way of rendering: a workflow plus the support files it needs on the node."""

    name: str
    workflow: str
    family: str
    frame_step: int
    size_step: int
    fps: int
    files: dict[str, tuple[str, ...]]
    #: the workflow file of a studio engine; None: ``FARM_WORKFLOWS/<workflow>.json``
    path: Path | None = None
    #: where the workflow takes a parameter when not at its default node title
    #: (:data:`farm.workflows.BINDINGS`): parameter -> ((title, input), ...); () for none
    bindings: Mapping[str, Targets] = field(default_factory=dict)
    #: where it is defined: ``built-in`` or the studio catalogue's file
    source: str = BUILT_IN

    def workflow_file(self, workflows_dir: Path) -> Path:
        """The file of this engine's workflow."""
        return self.path or Path(workflows_dir) / f"{self.workflow}.json"


@dataclass(frozen=True)
class Model:
    """The diffusion model files (any number, the first the primary) a job of one engine
    loads: Wan 2.2 A14B loads two, a workflow without a diffusion model none. They live in
    ComfyUI's ``folder``: ``diffusion_models``, or ``checkpoints`` for a whole checkpoint
    (LTX-2's holds its video and audio VAEs and text projection too)."""

    key: str
    engine: Engine
    files: tuple[str, ...]
    folder: str = "diffusion_models"

    @property
    def file(self) -> str:
        """The primary diffusion model file ("" when the workflow loads none)."""
        return self.files[0] if self.files else ""

    def required_files(self) -> dict[str, tuple[str, ...]]:
        """Every file a node needs for this model, by ComfyUI model folder."""
        files = dict(self.engine.files)
        if self.files:
            files[self.folder] = (*files.get(self.folder, ()), *self.files)
        return files


def wan_files(model_type: str, count: int = 1) -> tuple[str, ...]:
    """The names the farm and the WanGP emulator give the ``count`` transformer files of
    WanGP model ``model_type``, as its definition lists them: ``URLs`` (the id itself, the
    primary) then ``URLs2`` (Wan 2.2 A14B's low-noise expert: ``t2v_2_2:URLs2``). WanGP
    loads them all whenever the model type changes, so each counts as a model load."""
    return (model_type, *(f"{model_type}:URLs{n}" for n in range(2, count + 1)))


def model_names(models: Sequence[str]) -> list[str]:
    """The models as people name them: a WanGP model's further transformer files
    (``t2v_2_2:URLs2``, see :func:`wan_files`) are counted on its id, not named."""
    return [m for m in models if not (":" in m and m.split(":", 1)[0] in models)]


@dataclass(frozen=True)
class WanModel:
    """A WanGP model id (``model_type``) and the facts the farm needs of it."""

    id: str
    name: str
    family: str
    tier: str  # "fast" (previews) | "full" (finals)
    mode: str  # "t2v" | "i2v" | "ti2v" (either)
    params_b: float
    fps: int
    frame_step: int  # frames = frame_step·n + 1
    min_frames: int
    size_step: int
    resolution: str
    frames: int
    steps: int
    #: diffusion model files it loads (Wan 2.2 A14B: a high-noise and a low-noise one)
    diffusion_models: int = 1

    @property
    def files(self) -> tuple[str, ...]:
        """Its transformer files, as :attr:`farm.planning.Job.models` names them
        (:func:`wan_files`)."""
        return wan_files(self.id, self.diffusion_models)

    @property
    def takes_image(self) -> bool:
        return self.mode in ("i2v", "ti2v")

    def snap_frames(self, frames: int) -> int:
        """``frames`` on this model's grid, at least ``min_frames``."""
        n = max(0, int((frames - 1) / self.frame_step + 0.5))
        return max(self.min_frames, n * self.frame_step + 1)


@dataclass(frozen=True)
class Catalog:
    engines: dict[str, Engine]
    models: dict[str, Model]
    templates: dict[str, dict[str, Any]]
    image_models: dict[str, str]
    preview_scale: float
    min_preview_side: int
    wan_models: dict[str, WanModel]
    wan_templates: dict[str, dict[str, dict[str, str]]]
    oom_profiles: tuple[int, ...]
    #: the memory profile a WanGP node runs when a job does not override it (WanGP's default)
    wan_default_profile: int = 4
    #: template → where it is defined: ``built-in`` or the studio catalogue's file
    sources: Mapping[str, str] = field(default_factory=dict)
    #: the studio catalogue merged in (None: the built-in one alone)
    studio: Path | None = None

    def source(self, template: str) -> str:
        return self.sources.get(template, BUILT_IN)

    def description(self, template: str) -> str:
        return str(self.templates[template].get("description", ""))

    def wan_model_for(
        self, template: str, kind: str, *, start_image: bool, trajectories: bool
    ) -> WanModel | None:
        """The WanGP model for a shot of ``template`` at ``kind``; None when WanGP cannot
        render it (trajectory control is ComfyUI's Wan ATI only; a studio template may
        name no WanGP model)."""
        if trajectories:
            return None
        column = "i2v" if start_image else "t2v"
        model = self.wan_templates.get(template, {}).get(column, {}).get(kind)
        return self.wan_models[model] if model else None

    def wan_usable(self, ids: Iterable[str]) -> list[str]:
        """Those of the WanGP model ids ``ids`` (a node's) that the templates render at some
        tier, sorted: what a WanGP node can render for the farm."""
        used = {m for t in self.wan_templates.values() for col in t.values() for m in col.values()}
        return sorted(used.intersection(ids))

    def model_for(
        self, template: str, kind: str, *, start_image: bool, trajectories: bool
    ) -> Model | None:
        """The model that renders a shot of ``template`` at quality ``kind`` on ComfyUI
        (None: a studio template that renders it on WanGP only)."""
        spec = self.templates[template]
        if trajectories or start_image:
            column = "trajectories" if trajectories else "start_image"
            key = spec[column].get(kind) if column in spec else self.image_models[column]
        else:
            key = spec.get(kind)
        return self.models[key] if key else None

    def workflows(self) -> dict[str, Engine]:
        """Each workflow the catalogue renders with, by name, with its engine."""
        return {e.workflow: e for e in self.engines.values()}

    def params(self) -> dict[str, set[str]]:
        """The parameters each workflow is given by the templates that render with it."""
        out: dict[str, set[str]] = {}
        for spec in self.templates.values():
            for kind in KINDS:
                for tier in TIERS:
                    if kind == "text":
                        key = spec.get(tier)
                    else:
                        key = spec[kind].get(tier) if kind in spec else self.image_models[kind]
                    model = self.models.get(key) if key else None
                    if model is not None:
                        used = out.setdefault(model.engine.workflow, set(BASE_PARAMS))
                        used.update(KIND_PARAMS[kind], ["model"] if model.files else [])
        return out

    def _engine_of(self, workflow: str, engine: str | None) -> Engine | None:
        """The engine ``engine`` when it renders ``workflow``, else the first that does."""
        named = self.engines.get(engine) if engine else None
        if named is not None and named.workflow == workflow:
            return named
        return next((e for e in self.engines.values() if e.workflow == workflow), None)

    def bindings(self, workflow: str, engine: str | None = None) -> Mapping[str, Targets]:
        """Where ``workflow`` takes parameters off the default titles: the ``bindings`` of
        ``engine`` (a job's own) or of the engine that renders it; empty for a workflow no
        engine names."""
        found = self._engine_of(workflow, engine)
        return found.bindings if found is not None else {}

    def workflow_file(self, name: str, workflows_dir: Path, engine: str | None = None) -> Path:
        """The file of workflow ``name`` (of ``engine`` when given): a studio's own, else
        ``workflows_dir/name.json``."""
        found = self._engine_of(name, engine)
        return found.workflow_file(workflows_dir) if found else Path(workflows_dir) / f"{name}.json"

    def model_files(self, engine: str, primary: str) -> tuple[str, ...]:
        """Every diffusion model file of the ``engine`` model whose primary is ``primary``."""
        for model in self.models.values():
            if model.engine.name == engine and model.file == primary:
                return model.files
        return (primary,) if primary else ()

    def steps(self, template: str, kind: str) -> int:
        return int(self.templates[template]["steps"][kind])


@cache
def load_catalog() -> Catalog:
    """The bundled catalogue (:func:`farm.studio.catalog_for`: with a studio's merged in)."""
    raw = json.loads(resources.files("farm").joinpath("data", "catalog.json").read_text())
    engines = {
        name: Engine(
            name=name,
            workflow=e["workflow"],
            family=e["family"],
            frame_step=e["frame_step"],
            size_step=e["size_step"],
            fps=e["fps"],
            files={k: tuple(v) for k, v in e["files"].items()},
            bindings={
                param: tuple((str(t), str(i)) for t, i in targets)
                for param, targets in e.get("bindings", {}).items()
            },
        )
        for name, e in raw["engines"].items()
    }
    models = {
        key: Model(
            key=key,
            engine=engines[m["engine"]],
            files=_files(m),
            folder=m.get("folder", "diffusion_models"),
        )
        for key, m in raw["models"].items()
    }
    wan_raw = json.loads(resources.files("farm").joinpath("data", "wan2gp_models.json").read_text())
    wan_models = {key: WanModel(id=key, **m) for key, m in wan_raw["models"].items()}
    return Catalog(
        engines=engines,
        models=models,
        templates=raw["templates"],
        image_models=raw["image_models"],
        preview_scale=raw["preview_scale"],
        min_preview_side=raw["min_preview_side"],
        wan_models=wan_models,
        wan_templates=raw["wan2gp"]["templates"],
        oom_profiles=tuple(raw["wan2gp"]["oom_profiles"]),
        wan_default_profile=int(raw["wan2gp"]["default_profile"]),
        sources={name: BUILT_IN for name in raw["templates"]},
    )


def _files(model: Mapping[str, Any]) -> tuple[str, ...]:
    """A model's diffusion model files: ``files`` (a list) or ``file`` (one)."""
    return tuple(model["files"]) if "files" in model else (model["file"],)
