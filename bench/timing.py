"""The emulators' timing model and a lower bound on the makespan of any schedule (pure).

An emulated node sleeps, for one render (``farm/emulators``):

- ComfyUI: ``steps x step_s x workload / speed`` in its samplers, plus ``model_load_s / speed``
  for each diffusion model the node's last prompt did not use (every node starts empty;
  Wan 2.2 A14B loads two), plus
  smaller loads (text encoders, VAE, CLIP vision: once per node) and 0.02 s per text or
  image encode;
- WanGP: ``steps x step_s x workload x 1.15 / speed`` (memory profile 4), plus
  ``0.1 x model_load_s / speed`` to encode the prompt, plus ``model_load_s / speed`` per
  transformer file when the model type changes (two for Wan 2.2 A14B's ``t2v_2_2``), and
  the farm counts each one: a WanGP job's ``models`` name its transformer files
  (``t2v_2_2``, ``t2v_2_2:URLs2``).

``workload`` is ``width x height x frames / (832 x 480 x 81)`` of what the node renders. The
synthetic frames, the video encoding and the farm's own work come on top. When every
node has the same ``step_s`` and ``model_load_s``, a render's time is its *work* (the
seconds a node of speed 1.0 sleeps for it) divided by the node's speed, and a model load is
``model_load_s`` of work: :func:`lower_bound` relies on that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import combinations
from math import comb

import numpy as np

from farm.emulators.comfy_runners import LOAD_SHARE
from farm.emulators.profile import NodeProfile, workload
from farm.emulators.wan2gp import ENCODE_SHARE
from farm.emulators.wan2gp_settings import PROFILE_STEP_FACTOR, plan_task
from farm.planning import Job, NodeInfo, plan_variants
from farm.scene import Scene
from farm.scheduler import can_run
from farm.wan_settings import build_settings, load_wan_models

#: the area bound tries every set of groups up to this many, else each group and all
EXACT_GROUPS = 16


@cache
def _wan_models() -> dict:
    return load_wan_models()


def job_work(job: Job, step_s: float, model_load_s: float) -> float:
    """Seconds a node of speed 1.0 sleeps to render ``job`` with its model already loaded
    (the speed-scaled sleeps only: a lower bound on the render's time times the speed)."""
    if job.backend == "wan2gp":
        task = plan_task(0, 1, build_settings(job, _wan_models()[job.model]))
        steps = task.steps * step_s * workload(task.width, task.height, task.frames)
        return steps * PROFILE_STEP_FACTOR[task.memory_profile] + model_load_s * ENCODE_SHARE
    p = job.params
    return p["steps"] * step_s * workload(p["width"], p["height"], p["length"])


def uniform_costs(profiles: Iterable[NodeProfile]) -> tuple[float, float]:
    """``(step_s, model_load_s)`` shared by every profile; ValueError if they differ."""
    costs = {(p.step_s, p.model_load_s) for p in profiles}
    if len(costs) != 1:
        raise ValueError(f"the bound needs one step_s and model_load_s on every node: {costs}")
    return costs.pop()


@dataclass(frozen=True)
class Render:
    """One render of one shot: for each node able to run it, the models it would load there
    and its work (seconds at speed 1.0, models loaded)."""

    shot: str  # "scene/shot"
    kind: str  # "preview" | "final"
    options: Mapping[str, tuple[tuple[str, ...], float]]  # node -> (models, work)
    variants: tuple[Job, ...] = field(default=(), compare=False, repr=False)

    def least(self, speed: Mapping[str, float]) -> float:
        """Its least time on any capable node (model loaded)."""
        return min(work / speed[n] for n, (_, work) in self.options.items())


def plan_renders(
    scenes: Iterable[Scene], nodes: Sequence[NodeInfo], step_s: float, model_load_s: float
) -> list[Render]:
    """Every render of ``scenes`` (a preview and a final per shot for
    ``preview_then_final``) with its options on ``nodes``: each node runs the first
    variant it can, as :mod:`farm.scheduler` binds them."""
    out = []
    for scene in scenes:
        kinds = {"preview": ("preview",), "final": ("final",)}.get(
            scene.quality, ("preview", "final")
        )
        for shot in scene.shots:
            for kind in kinds:
                variants = plan_variants(scene, shot, kind)
                options = {}
                for node in nodes:
                    able = [v for v in variants if v.backend == node.kind and can_run(node, v)]
                    if able:
                        options[node.name] = (
                            able[0].models,
                            job_work(able[0], step_s, model_load_s),
                        )
                out.append(Render(f"{scene.id}/{shot.id}", kind, options, tuple(variants)))
    return out


@dataclass(frozen=True)
class Bound:
    """``value = max(chain, area, fractional)`` (seconds), with what gave each part."""

    value: float
    chain: float
    area: float
    fractional: float
    area_nodes: tuple[str, ...] = ()
    area_work: float = 0.0
    area_loads: int = 0
    weights: Mapping[str, float] = field(default_factory=dict)


def lower_bound(
    renders: Sequence[Render],
    speed: Mapping[str, float],
    load_s: float,
    startup: Mapping[str, float] | None = None,
) -> Bound:
    """No schedule of ``renders`` (all runnable at time 0, every node starting with no
    model loaded, a shot's final only after its preview) ends before ``value`` seconds,
    the largest of three valid bounds:

    - chain: a shot's preview and final run one after the other; the node of its preview
      loads a model first (each node starts empty, and loads and renders of a node run one
      at a time): ``min over nodes (load + preview) + min over nodes (final)``;
    - area: for a set Γ of groups (renders with the same options), the nodes able to run
      them, at total speed ``S``, must do their least work ``W`` (each render's least over
      its options) and load at least ``k`` models, ``k`` the fewest models that cover every
      render of Γ (each model load is ``load_s`` of work; a render needing several models,
      Wan 2.2 A14B, counts its set as one, which only loosens the bound):
      ``(W + k x load_s) / S``. The
      maximum over every set of at most EXACT_GROUPS groups (else each group and all);
    - fractional: the least makespan of a fractional assignment of renders to capable
      nodes, each render ``r`` taking ``p(r, n) = work / speed`` on node ``n`` (loads
      free). By LP duality every weighting ``y`` of the nodes (``y >= 0``, summing to 1)
      gives ``sum over r of min over n of y_n p(r, n) <= makespan``; :func:`_fractional`
      searches for a good ``y`` (any ``y`` is a valid bound, a better one only a tighter).
      ``startup[n]``: seconds node ``n`` spends loading before its first render (every
      node starts empty; :func:`startup_seconds`). Node ``n`` is then busy at least
      ``startup[n] + sum_r x(r, n) p(r, n)`` if it renders; if it does not, ``startup[n]``
      is still below the makespan whenever it is below the chain or area bound (checked:
      else startups are left out). So the dual value gains ``sum_n y_n startup[n]``.
    """
    if not renders:
        return Bound(0.0, 0.0, 0.0, 0.0)
    kinds: dict[str, dict[str, Render]] = {}
    for r in renders:
        kinds.setdefault(r.shot, {})[r.kind] = r
    chain = 0.0
    for shot in kinds.values():
        first, final = shot.get("preview"), shot.get("final")
        head = first or final
        assert head is not None
        t = min((load_s * len(m) + work) / speed[n] for n, (m, work) in head.options.items())
        if first is not None and final is not None:
            t += final.least(speed)
        chain = max(chain, t)
    area, nodes, work, loads = _area(renders, speed, load_s)
    startup = startup or {}
    if startup and max(startup.values()) > max(chain, area):
        startup = {}  # the makespan may be shorter than a node's startup: not a valid term
    fractional, weights = _fractional(renders, speed, startup)
    value = max(chain, area, fractional)
    return Bound(value, chain, area, fractional, nodes, work, loads, weights)


def startup_seconds(
    kinds: Mapping[str, str], speed: Mapping[str, float], load_s: float
) -> dict[str, float]:
    """Seconds each node (``kinds``: name -> comfyui | wan2gp) must load before its first
    render: a diffusion model; on ComfyUI also a text encoder and a VAE (the emulator's
    ``LOAD_SHARE``; every workflow here uses both)."""
    extra = {"comfyui": LOAD_SHARE["text_encoders"] + LOAD_SHARE["vae"]}
    return {n: load_s * (1.0 + extra.get(kind, 0.0)) / speed[n] for n, kind in kinds.items()}


def _fractional(
    renders: Sequence[Render],
    speed: Mapping[str, float],
    startup: Mapping[str, float],
    points: int = 20_000,
) -> tuple[float, dict[str, float]]:
    """``(bound, y)``: the dual value ``sum_r min_n y_n p(r, n)`` at the best node weighting
    ``y`` found by a grid over the simplex, then a pattern search moving weight between
    two nodes with halving steps."""
    names = sorted(speed)
    p = np.full((len(renders), len(names)), np.inf)
    for i, r in enumerate(renders):
        for n, (_, work) in r.options.items():
            p[i, names.index(n)] = work / speed[n]
    able = np.isfinite(p)
    p[~able] = 0.0
    first = np.array([startup.get(n, 0.0) for n in names])

    def value(ys: np.ndarray) -> np.ndarray:
        out = np.empty(len(ys))
        for at in range(0, len(ys), 512):
            y = ys[at : at + 512]
            cost = np.where(able[None], p[None] * y[:, None, :], np.inf)
            out[at : at + 512] = cost.min(axis=2).sum(axis=1) + y @ first
        return out

    grid = _simplex(len(names), points)
    values = value(grid)
    best = grid[int(values.argmax())]
    top = float(values.max())
    step = 1.0 / _resolution(len(names), points)
    while step > 1e-4:
        moves = []
        for i in range(len(names)):
            for j in range(len(names)):
                if i != j and best[i] >= step:
                    y = best.copy()
                    y[i] -= step
                    y[j] += step
                    moves.append(y)
        if moves:
            tried = value(np.array(moves))
            k = int(tried.argmax())
            if tried[k] > top + 1e-12:
                best, top = moves[k], float(tried[k])
                continue
        step /= 2
    return top, {n: round(float(w), 4) for n, w in zip(names, best, strict=True)}


def _resolution(n: int, points: int) -> int:
    """The finest grid step 1/R whose simplex grid has at most ``points`` points."""
    r = 1
    while comb(r + 1 + n - 1, n - 1) <= points:
        r += 1
    return r


def _simplex(n: int, points: int) -> np.ndarray:
    """Every ``y >= 0`` with ``sum(y) == 1`` on a grid of step 1/R."""
    r = _resolution(n, points)
    rows = []
    for bars in combinations(range(r + n - 1), n - 1):
        edges = (-1, *bars, r + n - 1)
        rows.append([edges[k + 1] - edges[k] - 1 for k in range(n)])
    return np.array(rows, dtype=float) / r


def _area(
    renders: Sequence[Render], speed: Mapping[str, float], load_s: float
) -> tuple[float, tuple[str, ...], float, int]:
    """``(value, nodes, work, loads)`` of the largest area term (see :func:`lower_bound`)."""
    groups: dict[tuple, float] = {}
    for r in renders:
        key = tuple(sorted((n, m) for n, (m, _) in r.options.items()))
        groups[key] = groups.get(key, 0.0) + min(w for _, w in r.options.values())
    keys = list(groups)
    if len(keys) <= EXACT_GROUPS:
        sets = [[i for i in range(len(keys)) if s >> i & 1] for s in range(1, 1 << len(keys))]
    else:
        sets = [[i] for i in range(len(keys))] + [list(range(len(keys)))]
    best: tuple[float, tuple[str, ...], float, int] = (0.0, (), 0.0, 0)
    fewest = FewestModels([frozenset(m for _, m in k) for k in keys])
    for chosen in sets:
        able = sorted({n for i in chosen for n, _ in keys[i]})
        work = sum(groups[keys[i]] for i in chosen)
        loads = fewest(chosen)
        value = (work + loads * load_s) / sum(speed[n] for n in able)
        if value > best[0]:
            best = (value, tuple(able), work, loads)
    return best


class FewestModels:
    """The fewest models such that every chosen group can use one of them (set cover),
    for groups each usable with any model of a set: exact, by trying sets of models in
    order of size."""

    def __init__(self, needs: Sequence[frozenset[str]]) -> None:
        self.needs = needs
        self.memo: dict[frozenset[frozenset[str]], int] = {}

    def __call__(self, chosen: Sequence[int]) -> int:
        needs = frozenset(self.needs[i] for i in chosen)
        if needs not in self.memo:
            self.memo[needs] = _cover(needs)
        return self.memo[needs]


def _cover(needs: frozenset[frozenset[str]]) -> int:
    # a need that contains another is met whenever the smaller one is: drop it
    needs = frozenset(n for n in needs if not any(o < n for o in needs))
    pool = sorted(frozenset().union(*needs))
    for size in range(len(pool) + 1):
        for pick in combinations(pool, size):
            if all(n.intersection(pick) for n in needs):
                return size
    return len(pool)
