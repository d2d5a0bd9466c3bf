"""The model catalogue: templates → ComfyUI engines and model files (``data/catalog.json``)
and → WanGP model ids per tier (its ``wan2gp`` part, with ``data/wan2gp_models.json``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any


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
    #: where the workflow takes a parameter when not at its default node title
    #: (:data:`farm.workflows.BINDINGS`): parameter -> ((title, input), ...)
    bindings: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Model:
    """The diffusion model files one job loads with one engine, the first the primary
    (Wan 2.2 A14B: the high-noise and the low-noise model)."""

    key: str
    engine: Engine
    files: tuple[str, ...]

    @property
    def file(self) -> str:
        """The primary diffusion model file."""
        return self.files[0]

    def required_files(self) -> dict[str, tuple[str, ...]]:
        """Every file a node needs for this model, by ComfyUI model folder."""
        files = dict(self.engine.files)
        files["diffusion_models"] = (*files.get("diffusion_models", ()), *self.files)
        return files


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

    def wan_model_for(
        self, template: str, kind: str, *, start_image: bool, trajectories: bool
    ) -> WanModel | None:
        """The WanGP model for a shot of ``template`` at ``kind``; None when WanGP cannot
        render it (trajectory control is ComfyUI's Wan ATI only)."""
        if trajectories:
            return None
        column = "i2v" if start_image else "t2v"
        return self.wan_models[self.wan_templates[template][column][kind]]

    def wan_usable(self, ids: Iterable[str]) -> list[str]:
        """Those of the WanGP model ids ``ids`` (a node's) that the templates render at some
        tier, sorted: what a WanGP node can render for the farm."""
        used = {m for t in self.wan_templates.values() for col in t.values() for m in col.values()}
        return sorted(used.intersection(ids))

    def model_for(
        self, template: str, kind: str, *, start_image: bool, trajectories: bool
    ) -> Model:
        """The model that renders a shot of ``template`` at quality ``kind``."""
        if trajectories:
            return self.models[self.image_models["trajectories"]]
        if start_image:
            return self.models[self.image_models["start_image"]]
        return self.models[self.templates[template][kind]]

    def bindings(self, workflow: str) -> dict[str, tuple[tuple[str, str], ...]]:
        """Where ``workflow`` takes parameters off the default titles (its engine's
        ``bindings``; empty for a workflow no engine names)."""
        for engine in self.engines.values():
            if engine.workflow == workflow and engine.bindings:
                return engine.bindings
        return {}

    def steps(self, template: str, kind: str) -> int:
        return int(self.templates[template]["steps"][kind])


@cache
def load_catalog() -> Catalog:
    """The bundled catalogue."""
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
        key: Model(key=key, engine=engines[m["engine"]], files=tuple(m["files"]))
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
    )
