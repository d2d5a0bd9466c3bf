"""The dispatch policy, pure: which waiting shot goes to which GPU node now.

Shots are bound to a node late: a node holds at most ``depth`` shots (the one it renders
and ``depth - 1`` queued behind it), and the rest wait in the farm's backlog until a node
has room. The dispatcher (:mod:`farm.dispatch`) calls :func:`assign` whenever that may have
changed (a scene enqueued, a shot started or ended, a heartbeat) and publishes what it
returns. The rules, in order:

1. Only a capable node is a candidate: alive, of the variant's backend, holding every file
   (or WanGP model) of the job, able to run its workflow, not excluded for the shot (it
   failed it, or it is blocklisted for the scene), and the pinned node when a rung is pinned.
2. An idle node is filled before a busy node queues more: no capable node idles while a
   shot it could run waits.
3. Previews before finals, then higher scene priority (the rank class of the head's score).
4. Within a class, a node takes a shot of the model it has (or will have) loaded before any
   other, so same-model shots stay together and models load less.
5. Then the oldest shot first; between nodes otherwise equal, the faster one.

Waiting shots come in :class:`Group` s: shots whose variants need the same things (so one
capability check serves them all), each with its shots ordered by score. A score encodes the
rank class and the time the shot became runnable (:func:`score`), so a Redis sorted set
keeps a group in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from farm.planning import Job, NodeInfo

#: shots bound to a node at once: the running one and one queued behind it
DEPTH = 2
#: a class spans this many seconds of age in a score
CLASS_SPAN = 1e10


def rank_class(kind: str, priority: int) -> int:
    """0 (preview, priority 9) … 19 (final, priority 0): lower goes first."""
    return (0 if kind == "preview" else 10) + (9 - max(0, min(9, priority)))


def score(kind: str, priority: int, since: float) -> float:
    """A waiting shot's sort key: its rank class, then when it became runnable."""
    return rank_class(kind, priority) * CLASS_SPAN + since


def class_of(value: float) -> int:
    return int(value // CLASS_SPAN)


def can_run(node: NodeInfo, job: Job) -> bool:
    """Whether ``node`` can render ``job`` (liveness aside)."""
    return node.kind == job.backend and not node.missing(job.files) and not node.cannot_run(job)


def group_id(variants: Sequence[Job], pin: str | None, exclude: Sequence[str]) -> str:
    """Shots with the same needs share a group: backend, workflow, model, files of every
    variant, the pinned node and the excluded nodes."""
    needs = [[v.backend, v.workflow, v.model, v.files] for v in variants]
    text = json.dumps([needs, pin, sorted(exclude)], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Group:
    """Waiting shots with the same needs, best first: ``shots`` is ``[(score, key), ...]``."""

    id: str
    variants: tuple[Job, ...]
    shots: list[tuple[float, str]]
    pin: str | None = None
    exclude: frozenset[str] = frozenset()


@dataclass
class NodeLoad:
    """A node as the dispatcher sees it now."""

    info: NodeInfo
    bound: int = 0  # shots bound to it: running + queued
    model: str = ""  # the model loaded once its bound shots have run
    blocked: frozenset[str] = field(default_factory=frozenset)  # scenes it is blocklisted for


@dataclass(frozen=True)
class Assignment:
    key: str  # the waiting shot ("scene/shot")
    node: str
    variant: int  # index of the chosen variant in the shot's (and its group's) variants
    model: str
    group: str


def _variant_for(group: Group, node: NodeLoad, cache: dict) -> int | None:
    """Index of the first variant of ``group`` that ``node`` can run, or None."""
    key = (group.id, node.info.name)
    if key not in cache:
        ok = (
            node.info.alive
            and node.info.name not in group.exclude
            and (group.pin is None or group.pin == node.info.name)
        )
        cache[key] = next(
            (i for i, v in enumerate(group.variants) if ok and can_run(node.info, v)), None
        )
    return cache[key]


def assign(
    groups: Sequence[Group], nodes: Sequence[NodeLoad], depth: int = DEPTH
) -> list[Assignment]:
    """Bind waiting shots to nodes with room, by the rules above. ``groups`` and ``nodes``
    are updated as shots are bound (heads popped, ``bound`` and ``model`` advanced)."""
    cache: dict = {}
    out: list[Assignment] = []
    live = [g for g in groups if g.shots]
    while True:
        best: tuple | None = None
        for node in nodes:
            if node.bound >= depth or not node.info.alive:
                continue
            for group in live:
                index = _variant_for(group, node, cache)
                if index is None:
                    continue
                job = group.variants[index]
                head = next(
                    (s for s in group.shots if s[1].split("/", 1)[0] not in node.blocked), None
                )
                if head is None:
                    continue
                affinity = 0 if node.model == job.model else 1
                rank = (node.bound > 0, class_of(head[0]), affinity, head[0], -node.info.speed)
                if best is None or rank < best[0]:
                    best = (rank, node, group, head, index, job.model)
        if best is None:
            return out
        _, node, group, head, index, model = best
        group.shots.remove(head)
        if not group.shots:
            live.remove(group)
        node.bound += 1
        node.model = model
        out.append(Assignment(head[1], node.info.name, index, model, group.id))
