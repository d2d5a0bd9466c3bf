"""Discrete-event simulation of the dispatch policy on a large farm, against a naive baseline.

Both policies run the same workload on the same nodes, in virtual time, without Redis or
Celery:

- *late binding*: :func:`farm.scheduler.assign` itself, called as :mod:`farm.dispatch`
  calls it (after every event, with each group's first ``room`` waiting shots and the
  number it has waiting), nodes holding at most ``DEPTH`` shots (the running one and one
  queued);
- *round-robin*: every render is bound when it is enqueued to the next capable node of
  its group in turn, and each node runs its queue first in, first out.

A render takes the load time of each of its models the node's last render did not use
(every node starts empty; Wan 2.2 A14B loads two), plus its work divided by the node's
speed. See ``bench/README.md`` for what
each printed figure means and for the lower bound.

    .venv/bin/python -m bench.simulate [--nodes 100 --shots 10000 --seed 1]

With ``--burst`` it measures the burst policy instead (``FARM_BURST``): the same workload
on the same local nodes plus one cloud node (``--cloud-concurrency`` renders at once, at
``--cloud-speed``, no model loads, ``--price`` per GPU-second), under ``never``,
``overflow`` (``--burst-after``) and ``always``, and ``overflow`` with a day budget of
half what ``always`` spent: makespan and spend (:func:`burst_main`).

    .venv/bin/python -m bench.simulate --burst [--nodes 8 --shots 600 --scenes 6]
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from farm.catalog import Catalog, load_catalog
from farm.planning import Job, NodeInfo, plan_variants
from farm.scene import Point, Scene, Shot
from farm.scheduler import (
    DEPTH,
    Burst,
    Group,
    NodeLoad,
    assign,
    can_run,
    class_of,
    group_id,
    holds,
    job_cost,
    score,
)

#: seconds of work per reference sampler step (832x480x81) per billion model parameters,
#: on a node of speed 1.0 (a 14B Wan final of 30 steps at 832x480x81: 21 minutes)
SECONDS_PER_STEP_PER_B = 3.0
#: loading a model takes LOAD_BASE + LOAD_PER_B x its billions of parameters, in seconds
LOAD_BASE, LOAD_PER_B = 5.0, 2.5
SPEEDS = (0.5, 1.0, 1.0, 1.5, 2.0)  # GPU classes, relative to the reference node
SIZES = ((832, 480), (1280, 720))
FRAMES = (33, 49, 81, 121)
QUALITIES = ("preview", "final", "preview_then_final", "preview_then_final")
TRACKS = ((Point(100, 100), Point(400, 300)),)


# -- the workload ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Render:
    """One render of one shot at one quality, and the final that follows a preview."""

    key: str  # "scene/shot"
    kind: str  # "preview" | "final"
    priority: int
    submit: float  # when its scene was submitted
    group: str
    variants: tuple[Job, ...]
    work: tuple[float, ...]  # seconds on a node of speed 1.0, per variant
    then: Render | None = None


@dataclass
class Workload:
    """The farm's nodes, its scenes in submission order and each model's load time."""

    nodes: list[NodeInfo]
    scenes: list[tuple[float, list[Render]]]  # (submission time, first render of each shot)
    load: dict[str, float]  # seconds to load a model on a node

    def renders(self) -> Iterable[Render]:
        for _, first in self.scenes:
            for render in first:
                yield render
                if render.then:
                    yield render.then


def billions(job: Job, catalog: Catalog, model: str | None = None) -> float:
    """The size in billions of parameters of ``model`` (by default the job's primary one;
    a Wan 2.2 A14B step runs one 14B expert), from its WanGP facts or file name. Every
    transformer file of a WanGP model (``t2v_2_2``, ``t2v_2_2:URLs2``) has the model's size."""
    if job.backend == "wan2gp":
        return catalog.wan_models[job.model].params_b
    model = model or job.model
    found = re.search(r"(\d+(?:\.\d+)?)B", model)
    return float(found.group(1)) if found else 8.3  # Hunyuan Video 1.5: 8.3B


def make_workload(n_nodes: int, n_shots: int, n_scenes: int, window: float, seed: int) -> Workload:
    """A random but reproducible farm and backlog: scenes of mixed templates, image and
    trajectory shots, qualities and priorities, submitted over ``window`` seconds."""
    rng = random.Random(seed)
    catalog = load_catalog()
    templates = sorted(catalog.templates)
    planned: dict[tuple, tuple[str, tuple[Job, ...], tuple[float, ...]]] = {}
    load: dict[str, float] = {}

    def plan(shot: Shot, kind: str) -> tuple[str, tuple[Job, ...], tuple[float, ...]]:
        shape = (shot.template, shot.width, shot.frames, bool(shot.start_image),
                 bool(shot.trajectories), kind)  # fmt: skip
        if shape not in planned:
            variants = tuple(plan_variants(Scene("x", (shot,)), shot, kind, catalog))
            work = tuple(v.cost * SECONDS_PER_STEP_PER_B * billions(v, catalog) for v in variants)
            for v in variants:
                for m in v.models:
                    load[m] = LOAD_BASE + LOAD_PER_B * billions(v, catalog, m)
            planned[shape] = (group_id(variants, None, ()), variants, work)
        return planned[shape]

    n_scenes = max(1, min(n_scenes, n_shots))
    weights = [rng.uniform(0.5, 1.5) for _ in range(n_scenes)]
    sizes = [max(1, int(n_shots * w / sum(weights))) for w in weights]
    sizes[0] += n_shots - sum(sizes)
    scenes = []
    for s, size in enumerate(sizes):
        scene_id, priority = f"s{s:03d}", rng.randint(0, 9)
        quality, main = rng.choice(QUALITIES), rng.choice(templates)
        width, height = rng.choice(SIZES)
        submit = 0.0 if s == 0 else rng.uniform(0, window)
        first = []
        for i in range(size):
            image = rng.random() < 0.3
            shot = Shot(
                id=f"sh{i:04d}",
                action_description="x",
                template=main if rng.random() < 0.8 else rng.choice(templates),
                width=width,
                height=height,
                frames=rng.choice(FRAMES),
                start_image="/a.png" if image else None,
                trajectories=TRACKS if image and rng.random() < 0.15 else (),
            )
            key = f"{scene_id}/{shot.id}"
            then = None
            if quality != "preview":
                then = Render(key, "final", priority, submit, *plan(shot, "final"))
            if quality == "final":
                first.append(then)
            else:
                first.append(Render(key, "preview", priority, submit, *plan(shot, "preview"), then))
        scenes.append((submit, first))
    groups = {p[0]: p[1] for p in planned.values()}
    nodes = make_nodes(n_nodes, groups.values(), rng)
    return Workload(nodes, sorted(scenes, key=lambda s: s[0]), load)


def make_nodes(n: int, needs: Iterable[tuple[Job, ...]], rng: random.Random) -> list[NodeInfo]:
    """``n`` nodes, about 70% ComfyUI and 30% WanGP, each holding a random part of the
    models the workload uses; every group gets at least two capable nodes."""
    needs = list(needs)
    by_kind: dict[str, list[dict[str, list[str]]]] = {"comfyui": [], "wan2gp": []}
    for variants in needs:
        for v in variants:
            if v.files not in by_kind[v.backend]:
                by_kind[v.backend].append(v.files)
    kinds = ["wan2gp" if rng.random() < 0.3 else "comfyui" for _ in range(n)]
    held: list[dict[str, set[str]]] = []
    for kind in kinds:
        options = by_kind[kind] or by_kind["comfyui"] or by_kind["wan2gp"]
        chosen = [f for f in options if rng.random() < 0.35] or [rng.choice(options)]
        files: dict[str, set[str]] = {}
        for f in chosen:
            for folder, names in f.items():
                files.setdefault(folder, set()).update(names)
        held.append(files)

    def info(i: int) -> NodeInfo:
        models = {k: tuple(sorted(v)) for k, v in held[i].items()}
        workflows = {} if kinds[i] == "wan2gp" else None
        return NodeInfo(f"n{i:03d}", kinds[i], True, models, SPEEDS[i % len(SPEEDS)], workflows)

    def short() -> list[tuple[Job, ...]]:
        able = [[any(can_run(info(i), v) for v in vs) for i in range(n)] for vs in needs]
        return [vs for vs, row in zip(needs, able, strict=True) if sum(row) < min(2, n)]

    while lacking := short():  # give the group's files to a node of one of its backends
        present = [v for v in lacking[0] if v.backend in kinds]
        if present:
            v = rng.choice(present)
            i = rng.choice([i for i in range(n) if kinds[i] == v.backend])
        else:  # no node of any of its backends: turn one into its first variant's kind
            v, i = lacking[0][0], rng.randrange(n)
            kinds[i], held[i] = v.backend, {}
        for folder, names in v.files.items():
            held[i].setdefault(folder, set()).update(names)
    return [info(i) for i in range(n)]


# -- the lower bound ------------------------------------------------------------------------
#: the area bound tries every set of groups up to this many groups, else a few sets
EXACT_GROUPS = 16
#: the backends whose nodes the area bound tells apart (a render's work depends on which)
BACKENDS = ("comfyui", "wan2gp")
_NEVER = 1e150  # seconds: stands for "cannot" inside split_time


def lower_bound(work: Workload) -> tuple[float, float, float]:
    """``(bound, chain, area)``: no schedule finishes ``work`` sooner than ``bound``, the
    larger of two valid bounds (model loads counted as free in both):

    - ``chain``: a shot's renders run one after the other, each no faster than on its
      fastest capable node: submission + least time of its preview + least time of its final;
    - ``area``: for a set of groups and a time ``a``, the renders of those groups submitted
      at ``a`` or later start at ``a`` at the earliest, on the nodes capable of one of the
      groups only, and a render's work is that of its variant for the backend that runs
      it. So they need at least the time of the best *fractional* split of those renders
      between those nodes of each backend (:func:`split_time`) after ``a``. The maximum
      over every set of groups (when there are at most ``EXACT_GROUPS`` sets of capable
      nodes; otherwise over each group, the groups a group's capable nodes can run, and
      all) and every submission time.
    """
    nodes = work.nodes
    capable: dict[str, list[tuple[int, int]]] = {}
    for r in work.renders():
        if r.group not in capable:
            capable[r.group] = capable_nodes(r.variants, nodes)

    def least_time(render: Render) -> float:
        return min(render.work[v] / nodes[i].speed for i, v in capable[render.group])

    chain = max(
        submit + least_time(r) + (least_time(r.then) if r.then else 0.0)
        for submit, first in work.scenes
        for r in first
    )
    # a group's renders with one ratio of work between the backends make a part; its work
    # on each backend (inf: none of the group's capable nodes is of that backend), per
    # submission time
    times = sorted({submit for submit, _ in work.scenes})
    kinds = {g: {nodes[i].kind for i, _ in cap} for g, cap in capable.items()}
    parts: dict[tuple[str, float], np.ndarray] = {}
    for r in work.renders():
        pairs = list(zip(r.variants, r.work, strict=True))
        on = [min((w for v, w in pairs if v.backend == b), default=np.inf) for b in BACKENDS]
        on = [w if b in kinds[r.group] else np.inf for w, b in zip(on, BACKENDS, strict=True)]
        part = parts.setdefault((r.group, on[1] / on[0]), np.zeros((len(BACKENDS), len(times))))
        part[:, bisect.bisect_right(times, r.submit) - 1] += on
    work_at = np.array(list(parts.values()))[:, :, ::-1].cumsum(axis=2)[:, :, ::-1]
    # sets of groups: subsets of the distinct sets of capable nodes
    sets = sorted({frozenset(i for i, _ in cap) for cap in capable.values()}, key=sorted)
    row = np.array([sets.index(frozenset(i for i, _ in capable[g])) for g, _ in parts])
    member = np.zeros((len(sets), len(nodes)), dtype=bool)
    for k, x in enumerate(sets):
        member[k, list(x)] = True
    if len(sets) <= EXACT_GROUPS:  # every subset: subset m - 1 holds set k when bit k of m is set
        m = np.arange(1, 2 ** len(sets))
        pick = ((m[:, None] >> np.arange(len(sets))) & 1).astype(bool)
    else:
        pick = np.array([[sets[j] <= x for j in range(len(sets))] for x in sets])
        pick = np.vstack([pick, np.ones(len(sets), dtype=bool)])
    # only the largest set of groups of each set of nodes counts: with every group those
    # nodes alone can run, it has the most work for the same speed
    inside = member.astype(np.float32)
    union = np.unique(pick.astype(np.float32) @ inside > 0, axis=0)
    pick = (~union).astype(np.float32) @ inside.T == 0  # the sets inside each union
    speed = np.array([[n.speed * (n.kind == b) for b in BACKENDS] for n in nodes])
    holds = pick[:, row]  # set of groups -> part in it
    area = max(
        t + float(split_time(holds, work_at[:, :, k], union @ speed).max())
        for k, t in enumerate(times)
    )
    return max(chain, area), chain, area


def split_time(holds: np.ndarray, work: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """For each set (a row of ``holds``: which parts it holds), the least time in which
    nodes of two backends, of total speeds ``speed[:, 0]`` and ``speed[:, 1]``, do the work
    of its parts, each part split between the backends at will: ``work[p, b]`` is part
    ``p``'s work on backend ``b`` (``inf``: that backend cannot run it).

    Moving a part from backend 0 to backend 1 saves ``work[p, 0]`` for ``work[p, 1]``, so
    the best split moves parts in increasing order of ``work[p, 1] / work[p, 0]`` (the
    fractional knapsack): along that order backend 1's time grows and backend 0's falls,
    and the least time is the later of the two where they meet."""
    only1, only0 = np.isinf(work[:, 0]), np.isinf(work[:, 1])
    either = np.flatnonzero(~only0 & ~only1)
    either = either[np.argsort(work[either, 1] / np.maximum(work[either, 0], 1e-9))]
    on1 = holds[:, only1] @ work[only1, 1]  # (sets,) work forced onto each backend
    on0 = holds[:, only0] @ work[only0, 0]
    moved = np.cumsum(holds[:, either] * work[either, 1], axis=1)
    kept = np.cumsum((holds[:, either] * work[either, 0])[:, ::-1], axis=1)[:, ::-1]
    zero = np.zeros((len(holds), 1))
    # after the first k parts of the order moved: time of backend 1 (u) and 0 (v)
    u = _per_speed(on1[:, None] + np.hstack([zero, moved]), speed[:, 1:])
    v = _per_speed(on0[:, None] + np.hstack([kept, zero]), speed[:, :1])
    if not len(either):
        best = np.maximum(u[:, 0], v[:, 0])
        return np.where(best < _NEVER, best, np.inf)
    u0, u1, v0, v1 = u[:, :-1], u[:, 1:], v[:, :-1], v[:, 1:]
    span = (u1 - u0) + (v0 - v1)
    meet = u0 + (v0 - u0) * (u1 - u0) / np.where(span > 0, span, 1.0)
    best = np.where(u0 >= v0, u0, np.where(u1 <= v1, v1, meet))  # least max(u, v) per step
    best = best.min(axis=1)
    return np.where(best < _NEVER, best, np.inf)


def _per_speed(work: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """``work / speed``, with no work taking no time even at speed 0, and ``_NEVER`` for
    work that cannot be done (so that the arithmetic of :func:`split_time` stays finite)."""
    out = np.where(work > 0, _NEVER, 0.0)
    return np.minimum(np.divide(work, speed, out=out, where=speed > 0), _NEVER)


def capable_nodes(variants: Sequence[Job], nodes: Sequence[NodeInfo]) -> list[tuple[int, int]]:
    """``(node index, variant index)`` of every node that can run one of ``variants``."""
    out = []
    for i, node in enumerate(nodes):
        index = next((k for k, v in enumerate(variants) if can_run(node, v)), None)
        if node.alive and index is not None:
            out.append((i, index))
    return out


# -- the simulation -------------------------------------------------------------------------
@dataclass
class Machine:
    """A node at run time: what it renders now (a cloud node: up to its concurrency at
    once) and the shots queued behind."""

    info: NodeInfo
    queue: deque[tuple[Render, int]] = field(default_factory=deque)
    loaded: frozenset[str] = frozenset()
    #: renders running: (start, end, work in reference steps)
    running: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return len(self.running) >= (self.info.concurrency or 1)

    def steps_left(self, now: float) -> float:
        """Reference steps of its bound renders not done at ``now`` (a running one's in
        proportion to its time left, as the dispatcher reads a shot's progress)."""
        left = sum(job_cost(r.variants[v]) for r, v in self.queue)
        for start, end, cost in self.running:
            left += cost * (end - now) / (end - start) if end > start else 0.0
        return left


@dataclass
class Result:
    """What one policy did with the workload (times in seconds)."""

    name: str
    makespan: float = 0.0
    loads: int = 0
    spend: float = 0.0  # cloud nodes' GPU-seconds x their price
    cloud_renders: int = 0
    previews_done: float = 0.0
    preview_ready: list[float] = field(default_factory=list)  # per preview: done - submitted
    per_call: list[float] = field(default_factory=list)  # seconds of policy CPU time
    per_decision: list[float] = field(default_factory=list)
    decisions: int = 0


class Simulation:
    """The event loop and the nodes; a policy decides where renders go."""

    name = "?"

    def __init__(self, work: Workload) -> None:
        self.work = work
        self.machines = [Machine(info) for info in work.nodes]
        self.events: list[tuple[float, int, Callable[[float], None]]] = []
        self.order = itertools.count()  # events at the same time: first pushed, first run
        self.result = Result(self.name)

    def at(self, t: float, event: Callable[[float], None]) -> None:
        heapq.heappush(self.events, (t, next(self.order), event))

    def run(self) -> Result:
        for submit, first in self.work.scenes:
            self.at(submit, partial(self.submitted, first))
        while self.events:
            now = self.events[0][0]
            while self.events and self.events[0][0] == now:  # simultaneous events, then bind
                heapq.heappop(self.events)[2](now)
            self.bind(now)
        return self.result

    def submitted(self, first: list[Render], now: float) -> None:
        for render in first:
            self.enqueue(render, now)

    def finished(self, index: int, render: Render, now: float) -> None:
        machine = self.machines[index]
        ended = next(i for i, r in enumerate(machine.running) if r[1] == now)
        del machine.running[ended]
        self.result.makespan = max(self.result.makespan, now)
        if render.kind == "preview":
            self.result.previews_done = max(self.result.previews_done, now)
            self.result.preview_ready.append(now - render.submit)
        self.released(index)
        if render.then:
            self.enqueue(render.then, now)
        self.start(index, now)

    def start(self, index: int, now: float) -> None:
        machine = self.machines[index]
        if machine.busy or not machine.queue:
            return
        render, variant = machine.queue.popleft()
        models = render.variants[variant].models
        took = render.work[variant] / machine.info.speed
        if machine.info.cloud:  # loads no model; bills its GPU-seconds
            self.result.spend += took * machine.info.price
            self.result.cloud_renders += 1
        else:
            missing = [m for m in models if m not in machine.loaded]
            took += sum(self.work.load[m] for m in missing)  # each model it lacks loads
            machine.loaded = frozenset(models)
            self.result.loads += len(missing)
        machine.running.append((now, now + took, job_cost(render.variants[variant])))
        self.at(now + took, partial(self.finished, index, render))

    def place(self, index: int, render: Render, variant: int, now: float) -> None:
        self.machines[index].queue.append((render, variant))
        self.start(index, now)

    def timed(self, seconds: float, decisions: int) -> None:
        self.result.per_call.append(seconds)
        if decisions:
            self.result.per_decision.append(seconds / decisions)
            self.result.decisions += decisions

    # the policy
    def enqueue(self, render: Render, now: float) -> None:
        raise NotImplementedError

    def released(self, index: int) -> None:
        """A shot bound to node ``index`` is over."""

    def bind(self, now: float) -> None:
        """Events at ``now`` are handled: bind what can be bound."""


class Backlog:
    """One group's waiting shots in score order, as the sorted set ``farm:wait:{group}``:
    one FIFO per rank class (shots of a class are enqueued in time order), and their
    number (its ``ZCARD``)."""

    def __init__(self, variants: tuple[Job, ...]) -> None:
        self.variants = variants
        self.classes: dict[int, deque[tuple[float, str]]] = {}
        self.size = 0

    def add(self, value: float, key: str, rank: int) -> None:
        self.classes.setdefault(rank, deque()).append((value, key))
        self.size += 1

    def head(self, n: int) -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        for rank in sorted(self.classes):
            for item in self.classes[rank]:
                if len(out) == n:
                    return out
                out.append(item)
        return out

    def remove(self, value: float, key: str, rank: int) -> None:
        self.size -= 1
        queue = self.classes[rank]
        if queue[0] == (value, key):
            queue.popleft()
        else:
            queue.remove((value, key))
        if not queue:
            del self.classes[rank]


class LateBinding(Simulation):
    """:func:`farm.scheduler.assign` binding waiting shots to nodes with room."""

    name = "late binding (assign)"

    def __init__(self, work: Workload, depth: int = DEPTH, burst: Burst | None = None,
                 name: str | None = None) -> None:  # fmt: skip
        self.name = name or self.name
        super().__init__(work)
        self.depth = depth
        self.burst = burst
        self.loads = [NodeLoad(m.info) for m in self.machines]
        self.index = {m.info.name: i for i, m in enumerate(self.machines)}
        self.backlog: dict[str, Backlog] = {}
        self.waiting: dict[str, tuple[Render, float]] = {}

    def enqueue(self, render: Render, now: float) -> None:
        value = score(render.kind, render.priority, now)
        backlog = self.backlog.setdefault(render.group, Backlog(render.variants))
        backlog.add(value, render.key, class_of(value))
        self.waiting[render.key] = (render, value)

    def released(self, index: int) -> None:
        self.loads[index].bound -= 1

    def bind(self, now: float) -> None:
        room = sum(max(0, holds(n, self.depth) - n.bound) for n in self.loads if n.info.alive)
        if room == 0 or not self.waiting:
            return
        if self.burst is not None:  # the spend so far: no held estimates to add here
            self.burst.day_spent = self.result.spend
            for load, machine in zip(self.loads, self.machines, strict=True):
                load.work = machine.steps_left(now)
        groups = [
            Group(gid, b.variants, b.head(room), waiting=b.size)
            for gid, b in self.backlog.items()
            if b.classes
        ]
        began = time.thread_time()
        bound = assign(groups, self.loads, self.depth, self.burst)
        self.timed(time.thread_time() - began, len(bound))
        for a in bound:
            render, value = self.waiting.pop(a.key)
            self.backlog[a.group].remove(value, a.key, class_of(value))
            self.place(self.index[a.node], render, a.variant, now)


class RoundRobin(Simulation):
    """Early binding: each render goes to the next capable node of its group in turn when
    it is enqueued; nodes run their queues first in, first out."""

    name = "round-robin at enqueue"

    def __init__(self, work: Workload) -> None:
        super().__init__(work)
        self.capable: dict[str, list[tuple[int, int]]] = {}
        self.turn: dict[str, int] = {}

    def enqueue(self, render: Render, now: float) -> None:
        began = time.thread_time()
        if render.group not in self.capable:
            self.capable[render.group] = capable_nodes(render.variants, self.work.nodes)
        cap = self.capable[render.group]
        turn = self.turn.get(render.group, 0)
        self.turn[render.group] = turn + 1
        index, variant = cap[turn % len(cap)]
        self.timed(time.thread_time() - began, 1)
        self.place(index, render, variant, now)


# -- the report -----------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The value at rank ``floor(q * n)`` of the ``n`` sorted ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def report(results: Sequence[Result], bound: float) -> str:
    """A table: one row per figure, one column per policy."""
    hours = 3600.0
    rows = [
        ("makespan (h)", lambda r: f"{r.makespan / hours:.2f}"),
        ("lower bound (h)", lambda r: f"{bound / hours:.2f}"),
        ("makespan / bound", lambda r: f"{r.makespan / bound:.3f}"),
        ("model loads", lambda r: f"{r.loads}"),
        ("all previews done (h)", lambda r: f"{r.previews_done / hours:.2f}"),
        ("preview ready after, mean (min)", lambda r: f"{mean(r.preview_ready) / 60:.1f}"),
        ("decisions / calls", lambda r: f"{r.decisions} / {len(r.per_call)}"),
        ("ms per decision, mean", lambda r: f"{mean(r.per_decision) * 1e3:.3f}"),
        ("ms per decision, p99", lambda r: f"{percentile(r.per_decision, 0.99) * 1e3:.3f}"),
        ("ms per call, mean", lambda r: f"{mean(r.per_call) * 1e3:.3f}"),
        ("ms per call, p99", lambda r: f"{percentile(r.per_call, 0.99) * 1e3:.3f}"),
        ("ms per call, max", lambda r: f"{max(r.per_call, default=0) * 1e3:.3f}"),
    ]
    left, width = max(len(label) for label, _ in rows), max(len(r.name) for r in results) + 2
    lines = [" " * left + "".join(f"{r.name:>{width}}" for r in results)]
    for label, cell in rows:
        lines.append(f"{label:{left}}" + "".join(f"{cell(r):>{width}}" for r in results))
    return "\n".join(lines)


def describe(work: Workload, seed: int) -> str:
    renders = list(work.renders())
    kinds = sorted({n.kind for n in work.nodes})
    farm = ", ".join(f"{sum(n.kind == k for n in work.nodes)} {k}" for k in kinds)
    previews = sum(r.kind == "preview" for r in renders)
    return (
        f"{len(work.nodes)} nodes ({farm}), {sum(len(f) for _, f in work.scenes)} shots in"
        f" {len(work.scenes)} scenes, {len(renders)} renders ({previews} previews),"
        f" {len({r.group for r in renders})} groups, seed {seed}"
    )


# -- the burst policy -----------------------------------------------------------------------
def with_cloud(work: Workload, concurrency: int, speed: float, price: float) -> Workload:
    """``work`` with one cloud node more: a Comfy API v2 node holding every file of the
    workload's ComfyUI variants, running ``concurrency`` renders at once at ``speed``, for
    ``price`` per GPU-second."""
    files: dict[str, set[str]] = {}
    for render in work.renders():
        for v in render.variants:
            if v.backend == "comfyui":
                for folder, names in v.files.items():
                    files.setdefault(folder, set()).update(names)
    models = {k: tuple(sorted(v)) for k, v in files.items()}
    cloud = NodeInfo("cloud", "comfyv2", True, models, speed, concurrency=concurrency,
                     price=price)  # fmt: skip
    return Workload([*work.nodes, cloud], work.scenes, work.load)


def step_seconds(work: Workload) -> float:
    """Seconds per reference step at speed 1, over all the workload's renders: what the
    farm learns as its median throughput."""
    renders = list(work.renders())
    return sum(r.work[0] for r in renders) / sum(job_cost(r.variants[0]) for r in renders)


def burst_report(results: Sequence[Result], local: Result) -> str:
    """A table: one row per figure, one column per policy."""
    hours = 3600.0
    rows = [
        ("makespan (h)", lambda r: f"{r.makespan / hours:.2f}"),
        ("makespan vs never", lambda r: f"x{local.makespan / r.makespan:.2f} shorter"),
        ("all previews done (h)", lambda r: f"{r.previews_done / hours:.2f}"),
        ("preview ready after, mean (min)", lambda r: f"{mean(r.preview_ready) / 60:.1f}"),
        ("renders on the cloud node", lambda r: f"{r.cloud_renders}"),
        ("spend", lambda r: f"{r.spend:.2f}"),
        ("spend per hour saved", lambda r: (f"{r.spend / ((local.makespan - r.makespan) / hours):.2f}"
                                            if local.makespan > r.makespan else "-")),
        ("model loads (local nodes)", lambda r: f"{r.loads}"),
    ]  # fmt: skip
    left, width = max(len(label) for label, _ in rows), max(len(r.name) for r in results) + 2
    lines = [" " * left + "".join(f"{r.name:>{width}}" for r in results)]
    for label, cell in rows:
        lines.append(f"{label:{left}}" + "".join(f"{cell(r):>{width}}" for r in results))
    return "\n".join(lines)


def burst_main(args: argparse.Namespace) -> None:
    """The burst policy's effect: never, overflow, always, and overflow under a budget of
    half what always spent (its ``day_cap``: the whole run is one budget day)."""
    work = make_workload(args.nodes, args.shots, args.scenes, args.window, args.seed)
    work = with_cloud(work, args.cloud_concurrency, args.cloud_speed, args.price)
    step = step_seconds(work)
    print(describe(work, args.seed))
    print(f"cloud node: {args.cloud_concurrency} renders at once at speed {args.cloud_speed:g}, "
          f"{args.price:g} per GPU-second; FARM_BURST_AFTER={args.burst_after:g} s; "
          f"{step:.1f} s per reference step at speed 1\n")  # fmt: skip

    def run(policy: str, name: str, cap: float = math.inf) -> Result:
        burst = Burst(policy, args.burst_after, step, day_cap=cap)
        return LateBinding(work, burst=burst, name=name).run()

    never = run("never", "never")
    results = [never, run("overflow", "overflow"), run("always", "always")]
    budget = results[2].spend / 2
    results.append(run("overflow", f"overflow, cap {budget:.0f}", budget))
    print(burst_report(results, never))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=10_000)
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument(
        "--window", type=float, default=4 * 3600.0, help="seconds over which scenes are submitted"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--burst", action="store_true",
                        help="measure FARM_BURST (never, overflow, always) with a cloud node")  # fmt: skip
    parser.add_argument("--cloud-concurrency", type=int, default=8)
    parser.add_argument("--cloud-speed", type=float, default=2.0)
    parser.add_argument("--price", type=float, default=0.001, help="per cloud GPU-second")
    parser.add_argument("--burst-after", type=float, default=1800.0, help="FARM_BURST_AFTER")
    args = parser.parse_args(argv)
    if args.burst:
        burst_main(args)
        return
    work = make_workload(args.nodes, args.shots, args.scenes, args.window, args.seed)
    print(describe(work, args.seed))
    bound, chain, area = lower_bound(work)
    print(
        f"lower bound: {bound / 3600:.2f} h (chain {chain / 3600:.2f} h, area {area / 3600:.2f} h)\n"
    )
    late = LateBinding(work).run()
    naive = RoundRobin(work).run()
    print(report([late, naive], bound))
    print(
        f"\nlate binding vs round-robin: makespan x{naive.makespan / late.makespan:.2f} shorter,"
        f" all previews done x{naive.previews_done / late.previews_done:.2f} sooner,"
        f" model loads x{naive.loads / max(1, late.loads):.2f} fewer"
    )


if __name__ == "__main__":
    main()
