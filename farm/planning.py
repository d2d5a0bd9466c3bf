"""Pure planning: scene → shot jobs → node placement → next attempt after a failure.

Nothing here does I/O: it takes data (a scene, the catalogue, node descriptions, loads)
and returns data, so every decision is unit-tested without Redis or Celery.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from farm.catalog import Catalog, load_catalog
from farm.errors import (
    FarmError,
    InvalidInput,
    NoCapableNode,
    OutOfMemory,
    is_final,
    wants_another_node,
)
from farm.scene import Scene, Shot
from farm.trajectory import ati_length_ok, ati_tracks, scale_tracks

REFERENCE_WORKLOAD = 832 * 480 * 81
#: cost of loading one more diffusion model on a node, in reference sampler steps
MODEL_SWITCH_COST = 20.0
#: the backend whose jobs a node kind runs, when it is not its own: a Comfy API v2 node
#: (Comfy Cloud, comfy-api-proxy) runs the ComfyUI graphs
BACKEND_OF = {"comfyv2": "comfyui"}


def backend_of(kind: str) -> str:
    """The :attr:`Job.backend` a node of ``kind`` runs."""
    return BACKEND_OF.get(kind, kind)


def loads_needed(job: Job, held: Collection[str]) -> int:
    """How many of ``job``'s models a node holding ``held`` (the models it has, or will
    have, loaded) must load: each one counts (Wan 2.2 A14B needs two)."""
    models = job.models
    if len(models) == 1:  # the common case, asked for every node and group by the dispatcher
        return 0 if models[0] in held else 1
    return sum(1 for m in models if m not in held)


@dataclass(frozen=True)
class NodeInfo:
    """What the planner needs to know of a GPU node."""

    name: str
    kind: str = "comfyui"
    alive: bool = True
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    speed: float = 1.0
    #: workflows the node can run → diffusion models it offers for them (None: not discovered)
    workflows: Mapping[str, tuple[str, ...]] | None = None
    #: workflows it cannot run → what it lacks for each (discovery's reasons)
    lacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: a cloud node's plan: the shots it renders at once (0: not a cloud node) …
    concurrency: int = 0
    #: … and its price per billed GPU-second (FARM_CLOUD_PRICE's currency)
    price: float = 0.0

    @property
    def backend(self) -> str:
        """The :attr:`Job.backend` this node runs (:func:`backend_of` its kind)."""
        return backend_of(self.kind)

    @property
    def cloud(self) -> bool:
        """A cloud node: it runs ``concurrency`` shots at once and loads no model."""
        return self.concurrency > 0

    def missing(self, files: Mapping[str, Iterable[str]]) -> list[str]:
        """Files of ``files`` (folder → names) this node does not hold."""
        return [
            f"{folder}/{name}"
            for folder, names in files.items()
            for name in names
            if name not in self.models.get(folder, ())
        ]

    def cannot_run(self, job: Job) -> str | None:
        """Why this node cannot run ``job``'s workflow with its model, or None if it can."""
        if self.workflows is None or job.backend != "comfyui":
            return None
        if job.workflow not in self.workflows:
            why = "; ".join(self.lacks.get(job.workflow, ())) or "see `farm nodes`"
            return f"cannot run workflow {job.workflow} ({why})"
        offered = self.workflows[job.workflow]
        lacking = [m for m in job.models if m and m not in offered]
        if lacking:
            return f"offers no {', '.join(lacking)} to workflow {job.workflow}"
        return None


@dataclass(frozen=True)
class Job:
    """One render of one shot: what to render, with what, where, and which attempt."""

    scene_id: str
    shot_id: str
    kind: str  # "preview" | "final"
    engine: str
    workflow: str
    model: str  # the primary diffusion model file (a WanGP job: its model id)
    files: dict[str, list[str]]
    params: dict[str, Any]
    priority: int = 5
    attempt: int = 1
    node: str | None = None
    then_final: bool = False
    tried_nodes: tuple[str, ...] = ()
    primary_error: str | None = None
    backend: str = "comfyui"  # what runs it: "comfyui" (ComfyUI or comfyv2 nodes) | "wan2gp"
    #: counted from 1: the shot's first take; each gate retake or `farm retry` the next
    take: int = 1
    #: where the render differs from what the shot asked: [{"field", "asked", "rendered", "why"}]
    adjusted: tuple[dict[str, Any], ...] = ()
    #: every diffusion model the job loads, the primary first (empty: just ``model``)
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.models and self.model:
            object.__setattr__(self, "models", (self.model,))

    @property
    def attempt_id(self) -> str:
        """What identifies this attempt of this job on a node, across redeliveries."""
        take = f"/t{self.take}" if self.take > 1 else ""
        return f"{self.scene_id}/{self.shot_id}/{self.kind}{take}/{self.attempt}"

    @property
    def label(self) -> str:
        """A file-name-safe name of the attempt: ``final_a2``, ``final_t2_a1`` (take 2)."""
        take = f"_t{self.take}" if self.take > 1 else ""
        return f"{self.kind}{take}_a{self.attempt}"

    @property
    def cost(self) -> float:
        """Estimated work in reference sampler steps (832×480×81 frames)."""
        p = self.params
        return p["steps"] * p["width"] * p["height"] * p["length"] / REFERENCE_WORKLOAD

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tried_nodes"] = list(self.tried_nodes)
        data["adjusted"] = list(self.adjusted)
        data["models"] = list(self.models)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        data = dict(data)
        data["tried_nodes"] = tuple(data.get("tried_nodes", ()))
        data["adjusted"] = tuple(data.get("adjusted", ()))
        data["models"] = tuple(data.get("models", ()))
        return cls(**data)


def snap(value: float, step: int, *, minimum: int) -> int:
    """``value`` rounded to a multiple of ``step``, at least ``minimum``."""
    return max(minimum, int(value / step + 0.5) * step)


def snap_frames(frames: int, step: int) -> int:
    """Frames on the model's grid ``step·n + 1`` (Wan and Hunyuan: 4n+1)."""
    return max(1, int((frames - 1) / step + 0.5) * step + 1)


def render_size(shot: Shot, kind: str, step: int, catalog: Catalog) -> tuple[int, int]:
    """Width and height to render, snapped to the model's ``step`` block; previews are
    scaled down."""
    scale = 1.0
    if kind == "preview":
        scale = max(catalog.preview_scale, catalog.min_preview_side / min(shot.width, shot.height))
        scale = min(scale, 1.0)
    return (
        snap(shot.width * scale, step, minimum=step * 4),
        snap(shot.height * scale, step, minimum=step * 4),
    )


def plan_job(scene: Scene, shot: Shot, kind: str, catalog: Catalog | None = None) -> Job | None:
    """The job that renders ``shot`` at quality ``kind`` (node not yet chosen) on ComfyUI,
    or None when its template renders it on WanGP only."""
    catalog = catalog or load_catalog()
    model = catalog.model_for(
        shot.template,
        kind,
        start_image=bool(shot.start_image),
        trajectories=bool(shot.trajectories),
    )
    if model is None:
        return None
    width, height = render_size(shot, kind, model.engine.size_step, catalog)
    params: dict[str, Any] = {
        "prompt": shot.prompt,
        "negative": shot.negative_prompt,
        "seed": shot.seed,
        "steps": catalog.steps(shot.template, kind),
        "width": width,
        "height": height,
        "length": snap_frames(shot.frames, model.engine.frame_step),
        "fps": shot.fps,
    }
    if "switch_step" in model.engine.bindings:  # two experts: the high-noise one runs half
        params["switch_step"] = max(1, params["steps"] // 2)
    if shot.start_image:
        params["start_image"] = shot.start_image
    step = model.engine.frame_step
    why = []
    if params["length"] != shot.frames:
        why.append(f"{model.engine.name} renders {step}n+1 frames")
    if shot.trajectories:
        if not ati_length_ok(params["length"]):  # WanTrackToVideo fails at 121 and 241
            why.append(f"ComfyUI's WanTrackToVideo (trajectories) fails at {params['length']} "
                       f"frames (120n+1), so {step} fewer")  # fmt: skip
            params["length"] -= step
        params["tracks"] = ati_tracks(
            [[(p.x, p.y) for p in track] for track in shot.trajectories],
            width,
            height,
            shot.trajectory_interpolation,
            src_size=(shot.width, shot.height),
            length=params["length"],
        )
    return Job(
        scene_id=scene.id,
        shot_id=shot.id,
        kind=kind,
        engine=model.engine.name,
        workflow=model.engine.workflow,
        model=model.file,
        files={k: list(v) for k, v in model.required_files().items()},
        params=params,
        priority=scene.priority,
        adjusted=adjustments(shot, params, {"frames": "; ".join(why)}),
        models=model.files,
    )


def adjustments(shot: Shot, params: Mapping[str, Any], why: Mapping[str, str]) -> tuple[dict, ...]:
    """Where ``params`` (the render) differ from what ``shot`` asked, in frames and fps:
    ``{"field", "asked", "rendered", "why"}`` each, ``why`` from ``why[field]``."""
    asked = {"frames": shot.frames, "fps": shot.fps}
    rendered = {"frames": params["length"], "fps": params["fps"]}
    return tuple(
        {"field": f, "asked": asked[f], "rendered": rendered[f], "why": why[f]}
        for f in ("fps", "frames")
        if asked[f] != rendered[f]
    )


def describe_adjusted(adjusted: Iterable[Mapping[str, Any]]) -> str:
    """``adjusted`` in a line: ``fps 16 → 30, frames 48 → 89 (why; why)``; "" for none."""
    adjusted = list(adjusted)
    if not adjusted:
        return ""
    changes = ", ".join(f"{a['field']} {a['asked']} → {a['rendered']}" for a in adjusted)
    return f"{changes} ({'; '.join(dict.fromkeys(a['why'] for a in adjusted))})"


def plan_wan_job(scene: Scene, shot: Shot, kind: str, catalog: Catalog | None = None) -> Job | None:
    """The job that renders ``shot`` at ``kind`` on a WanGP node, or None if WanGP cannot."""
    catalog = catalog or load_catalog()
    model = catalog.wan_model_for(
        shot.template,
        kind,
        start_image=bool(shot.start_image),
        trajectories=bool(shot.trajectories),
    )
    if model is None:
        return None
    width, height = render_size(shot, kind, model.size_step, catalog)
    params: dict[str, Any] = {
        "prompt": shot.prompt,
        "negative": shot.negative_prompt,
        "seed": shot.seed,
        "steps": model.steps,
        "width": width,
        "height": height,
        "length": model.snap_frames(round(shot.frames * model.fps / shot.fps)),
        "fps": model.fps,
    }
    if shot.start_image:
        params["start_image"] = shot.start_image
    seconds = f"{shot.frames / shot.fps:.3g} s"
    grid = f"on its {model.frame_step}n+1 frame grid"
    why = {
        "fps": f"WanGP model {model.id} renders at {model.fps} fps only",
        "frames": f"the shot's {seconds} at {model.fps} fps, {grid}"
        if model.fps != shot.fps else f"WanGP model {model.id} renders {grid}",
    }  # fmt: skip
    return Job(
        scene_id=scene.id,
        shot_id=shot.id,
        kind=kind,
        engine=model.family,
        workflow="wangp",
        model=model.id,
        files={"wangp": [model.id]},
        params=params,
        priority=scene.priority,
        backend="wan2gp",
        adjusted=adjustments(shot, params, why),
        models=model.files,
    )


def plan_variants(scene: Scene, shot: Shot, kind: str, catalog: Catalog | None = None) -> list[Job]:
    """Every way to render ``shot`` at ``kind``: on ComfyUI, and on WanGP when it can;
    only the shot's ``backend`` when it names one."""
    comfy = plan_job(scene, shot, kind, catalog) if shot.backend != "wan2gp" else None
    wan = plan_wan_job(scene, shot, kind, catalog) if shot.backend != "comfyui" else None
    variants = [job for job in (comfy, wan) if job is not None]
    if not variants:  # parse_scene refuses trajectories on wan2gp; a Scene built in code may not
        if shot.backend == "any":
            raise InvalidInput(
                f"shot {shot.id!r}: template {shot.template!r} names no workflow or WanGP model "
                f"for this shot at {kind} ({(catalog or load_catalog()).source(shot.template)})"
            )
        raise InvalidInput(
            f"shot {shot.id!r}: backend {shot.backend} cannot render this shot with template "
            f"{shot.template!r} (trajectories need Wan ATI on ComfyUI); set backend to any"
        )
    return variants


def plan_scene(
    scene: Scene, quality: str | None = None, catalog: Catalog | None = None
) -> list[list[Job]]:
    """The variants of each shot's first job, in shot order. ``preview_then_final`` renders
    the preview first; its task then hands over to the final render of the same shot."""
    quality = quality or scene.quality
    kind = "final" if quality == "final" else "preview"
    return [
        [
            replace(job, then_final=quality == "preview_then_final")
            for job in plan_variants(scene, shot, kind, catalog)
        ]
        for shot in scene.shots
    ]


def _best_node(
    job: Job,
    nodes: Iterable[NodeInfo],
    load: Mapping[str, float],
    last_model: Mapping[str, Collection[str]],
    exclude: set[str],
) -> tuple[tuple[float, str] | None, list[str]]:
    """The best ``(score, node)`` for ``job`` and why every other node was refused."""
    best: tuple[float, str] | None = None
    reasons: list[str] = []
    for node in nodes:
        if node.backend != job.backend:
            continue
        missing = node.missing(job.files)
        unable = node.cannot_run(job)
        if node.name in exclude:
            reasons.append(f"{node.name}: already failed this shot")
        elif not node.alive:
            reasons.append(f"{node.name}: down (no heartbeat)")
        elif missing:
            reasons.append(f"{node.name}: lacks {', '.join(missing)}")
        elif unable:
            reasons.append(f"{node.name}: {unable}")
        else:
            switch = MODEL_SWITCH_COST * loads_needed(job, last_model.get(node.name, ()))
            score = (load.get(node.name, 0.0) + job.cost + switch) / max(node.speed, 1e-3)
            if best is None or (score, node.name) < best:
                best = (score, node.name)
    return best, reasons


def place_any(
    variants: Iterable[Job],
    nodes: Iterable[NodeInfo],
    load: Mapping[str, float] | None = None,
    last_model: Mapping[str, Collection[str]] | None = None,
    exclude: Iterable[str] = (),
) -> Job:
    """The best variant on its best node: capable and alive, least loaded counting each
    model it must load (``last_model``: node -> the models it holds). Raises :class:`NoCapableNode` with what each node lacks when none qualifies."""
    load, last_model, exclude = load or {}, last_model or {}, set(exclude)
    nodes = list(nodes)
    variants = list(variants)
    best: tuple[float, str, int] | None = None
    reasons: list[str] = []
    for i, job in enumerate(variants):
        found, why = _best_node(job, nodes, load, last_model, exclude)
        reasons += [r for r in why if r not in reasons]
        if found is not None and (best is None or (*found, i) < best):
            best = (*found, i)
    if best is None:
        job = variants[0]
        models = " or ".join(dict.fromkeys(v.model for v in variants))
        detail = "; ".join(reasons) or "no nodes are registered (start `farm worker --node NAME`)"
        raise NoCapableNode(f"no live node can render shot {job.shot_id!r} ({models}): {detail}")
    return replace(variants[best[2]], node=best[1])


def place(
    job: Job,
    nodes: Iterable[NodeInfo],
    load: Mapping[str, float] | None = None,
    last_model: Mapping[str, Collection[str]] | None = None,
    exclude: Iterable[str] = (),
) -> str:
    """The best node for ``job`` (see :func:`place_any`)."""
    return place_any([job], nodes, load, last_model, exclude).node or ""


def place_scene(
    shots: list[list[Job]], nodes: list[NodeInfo], load: Mapping[str, float] | None = None
) -> list[Job]:
    """Place one variant of every shot; same-model shots are placed together so nodes
    reload less."""
    load = dict(load or {})
    last_model: dict[str, frozenset[str]] = {}
    placed: dict[int, Job] = {}
    order = sorted(range(len(shots)), key=lambda i: (shots[i][0].models, -shots[i][0].cost))
    for i in order:
        job = place_any(shots[i], nodes, load, last_model)
        name = job.node or ""
        switch = MODEL_SWITCH_COST * loads_needed(job, last_model.get(name, ()))
        load[name] = load.get(name, 0.0) + job.cost + switch
        last_model[name] = frozenset(job.models)
        placed[i] = job
    return [placed[i] for i in range(len(shots))]


@dataclass(frozen=True)
class Rung:
    """What a shot renders next: its variants (one per backend that can), the node it must
    stay on (a WanGP lower-memory retry), the nodes it must avoid, and what changed."""

    variants: tuple[Job, ...]
    pin: str | None = None
    exclude: tuple[str, ...] = ()
    step: str = "first"

    def to_dict(self) -> dict[str, Any]:
        return {"variants": [v.to_dict() for v in self.variants], "pin": self.pin,
                "exclude": list(self.exclude), "step": self.step}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rung:
        return cls(tuple(Job.from_dict(v) for v in data["variants"]), data.get("pin"),
                   tuple(data.get("exclude", ())), data.get("step", "first"))  # fmt: skip


def _capable(nodes: Iterable[NodeInfo], variants: Iterable[Job], exclude: Iterable[str]) -> bool:
    skip = set(exclude)
    return any(
        n.alive and n.name not in skip and n.backend == v.backend and not n.missing(v.files)
        and not n.cannot_run(v)
        for n in nodes for v in variants
    )  # fmt: skip


def next_rung(
    job: Job,
    error: FarmError,
    current: Iterable[Job],
    fast: Iterable[Job],
    nodes: Iterable[NodeInfo],
    max_attempts: int = 3,
) -> Rung | None:
    """The shot's next rung after ``job`` (one of the ``current`` rung's variants) failed
    with ``error``, or None when it should stop; decided by the error's class
    (:mod:`farm.errors`). ``fast`` are the shot's fast-tier (preview model) variants.

    - final errors (validation, a rejected graph, cancelled, a bug) and spent attempts: stop;
    - out of memory: a WanGP job first retries on the same node at the next lower-memory
      profile; then every variant at 0.75 x the size; then the fast tier at that size;
    - node down, timeout, connection lost, model missing: the same work on another live
      node (of either backend: another engine with the model is as good); none: stop;
    - other run-time failures: once more, on another node when one can take it.
    """
    if is_final(error) or job.attempt >= max_attempts:
        return None
    nodes = list(nodes)
    tried = tuple(dict.fromkeys(n for n in (*job.tried_nodes, job.node) if n))
    current = [replace(v, tried_nodes=tried, node=None) for v in current]
    if isinstance(error, OutOfMemory):
        if job.backend == "wan2gp":
            catalog = load_catalog()  # WanGP trades speed for memory first
            ran_at = job.params.get("override_profile", catalog.wan_default_profile)
            lower = [q for q in catalog.oom_profiles if q > ran_at]
            if lower:
                params = {**job.params, "override_profile": lower[0]}
                retry = replace(job, params=params, tried_nodes=tried, node=None)
                return Rung((retry,), pin=job.node, step=f"WanGP memory profile {lower[0]}")
        width, height = job.params["width"], job.params["height"]
        w, h = snap(width * 0.75, 16, minimum=64), snap(height * 0.75, 16, minimum=64)
        if not job.params.get("reduced"):
            return Rung(tuple(_resized(v, w, h) for v in current), step=f"{w}x{h} (0.75x size)")
        if not job.params.get("fast_tier"):
            faster = [
                replace(_resized(v, width, height), kind=job.kind, tried_nodes=tried,
                        params={**_resized(v, width, height).params, "fast_tier": True})
                for v in fast
            ]  # fmt: skip
            if faster and any(v.models != job.models for v in faster):
                return Rung(tuple(faster), step="fast tier")
        return None
    if wants_another_node(error):
        if not _capable(nodes, current, tried):
            return None  # no other live node can: the shot fails now rather than wait
        return Rung(tuple(current), exclude=tried, step="another node")
    if _capable(nodes, current, tried):
        return Rung(tuple(current), exclude=tried, step="again on another node")
    return Rung(tuple(current), step="again")


def _resized(job: Job, width: int, height: int) -> Job:
    """``job`` at ``width`` x ``height`` (its trajectories scaled), marked as reduced."""
    p = {**job.params, "reduced": True}
    if "tracks" in p:
        p["tracks"] = scale_tracks(p["tracks"], (p["width"], p["height"]), (width, height))
    p.update(width=width, height=height)
    return replace(job, params=p)
