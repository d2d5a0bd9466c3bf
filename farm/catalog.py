"""The model catalogue (``farm/data/catalog.json``): templates → engines and model files."""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Model:
    """A diffusion model file usable with one engine."""

    key: str
    engine: Engine
    file: str

    def required_files(self) -> dict[str, tuple[str, ...]]:
        """Every file a node needs for this model, by ComfyUI model folder."""
        files = dict(self.engine.files)
        files["diffusion_models"] = (*files.get("diffusion_models", ()), self.file)
        return files


@dataclass(frozen=True)
class Catalog:
    engines: dict[str, Engine]
    models: dict[str, Model]
    templates: dict[str, dict[str, Any]]
    image_models: dict[str, str]
    preview_scale: float
    min_preview_side: int

    def model_for(
        self, template: str, kind: str, *, start_image: bool, trajectories: bool
    ) -> Model:
        """The model that renders a shot of ``template`` at quality ``kind``."""
        if trajectories:
            return self.models[self.image_models["trajectories"]]
        if start_image:
            return self.models[self.image_models["start_image"]]
        return self.models[self.templates[template][kind]]

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
        )
        for name, e in raw["engines"].items()
    }
    models = {
        key: Model(key=key, engine=engines[m["engine"]], file=m["file"])
        for key, m in raw["models"].items()
    }
    return Catalog(
        engines=engines,
        models=models,
        templates=raw["templates"],
        image_models=raw["image_models"],
        preview_scale=raw["preview_scale"],
        min_preview_side=raw["min_preview_side"],
    )
