"""A workload in virtual time under the farm's own placement functions, without the farm.

:func:`replay` drives :func:`farm.scheduler.assign` (late binding, nodes holding at most
``DEPTH`` shots) or :func:`farm.scheduler.assign_naive` (everything bound at once,
round-robin) the way :mod:`farm.dispatch` does, after every batch of simultaneous events,
and lets each node take exactly the emulator timing model's time (``bench/timing.py``: work
/ speed, plus a model load per model the node's last render did not use). No Redis, Celery, CPU work or latency:
the difference between its makespan and a real run's is the farm's own overhead; between
its makespan and the lower bound, the policy's.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.timing import Render
from farm.planning import NodeInfo
from farm.scheduler import DEPTH, Group, NodeLoad, assign, assign_naive, group_id, score


@dataclass
class Replayed:
    """Seconds from the submission of everything at 0, and model loads."""

    makespan: float = 0.0
    previews_done: float = 0.0
    loads: int = 0
    node_end: dict[str, float] = field(default_factory=dict)


def replay(
    plan: Sequence[Render],
    nodes: Sequence[NodeInfo],
    speed: Mapping[str, float],
    load_s: float,
    naive: bool = False,
    priority: int = 5,
) -> Replayed:
    """Render ``plan`` (previews first, each shot's final when its preview ends; all
    submitted at 0 in plan order) on ``nodes``; the makespan, loads and previews."""
    finals = {r.shot: r for r in plan if r.kind == "final"}
    previewed = {r.shot for r in plan if r.kind == "preview"}
    firsts = [r for r in plan if r.kind == "preview" or r.shot not in previewed]
    loads = [NodeLoad(n) for n in nodes if n.alive]
    index = {load.info.name: load for load in loads}
    queue: dict[str, deque[Render]] = {n: deque() for n in index}
    busy: dict[str, bool] = dict.fromkeys(index, False)
    held: dict[str, frozenset[str]] = {}
    waiting: dict[str, tuple[Render, list[tuple[float, str]]]] = {}  # group -> shots
    renders: dict[str, Render] = {}
    events: list[tuple[float, int, str, Render]] = []
    order = itertools.count()
    out = Replayed()
    turn = 0

    def enqueue(render: Render, now: float) -> None:
        gid = group_id(render.variants, None, ())
        key = f"{render.shot}#{render.kind}"
        renders[key] = render
        waiting.setdefault(gid, (render, []))[1].append((score(render.kind, priority, now), key))
        waiting[gid][1].sort()

    def start(name: str, now: float) -> None:
        if busy[name] or not queue[name]:
            return
        render = queue[name].popleft()
        models, work = render.options[name]
        missing = [m for m in models if m not in held.get(name, ())]  # each one loads
        took = (work + load_s * len(missing)) / speed[name]
        held[name] = frozenset(models)
        out.loads += len(missing)
        busy[name] = True
        heapq.heappush(events, (now + took, next(order), name, render))

    def bind(now: float) -> None:
        nonlocal turn
        room = sum(max(0, DEPTH - n.bound) for n in loads)
        if not waiting or (room == 0 and not naive):
            return
        groups = [
            Group(gid, first.variants, shots if naive else shots[:room], waiting=len(shots))
            for gid, (first, shots) in waiting.items()
        ]
        if naive:
            chosen, turn = assign_naive(groups, loads, turn)
        else:
            chosen = assign(groups, loads)
        for a in chosen:
            shots = waiting[a.group][1]
            shots[:] = [s for s in shots if s[1] != a.key]
            if not shots:
                del waiting[a.group]
            queue[a.node].append(renders.pop(a.key))
            start(a.node, now)

    for render in firsts:
        enqueue(render, 0.0)
    bind(0.0)
    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, _, name, render = heapq.heappop(events)
            busy[name] = False
            index[name].bound -= 1
            out.makespan = max(out.makespan, now)
            out.node_end[name] = now
            if render.kind == "preview":
                out.previews_done = max(out.previews_done, now)
                if render.shot in finals:
                    enqueue(finals[render.shot], now)
            start(name, now)
        bind(now)
    return out
