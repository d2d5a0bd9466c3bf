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
    """Whether ``node`` can render ``job`` (liveness aside): ``not node.missing(job.files)``
    without building the list, as the dispatcher asks it for every node and group."""
    if node.kind != job.backend:
        return False
    for folder, names in job.files.items():
        held = node.models.get(folder, ())
        for name in names:
            if name not in held:
                return False
    return not node.cannot_run(job)


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


def _able(group_list: Sequence[Group], node: NodeLoad) -> dict[int, int]:
    """Position in ``group_list`` → index of the first variant ``node`` can run, for each
    group it may take shots of (liveness aside: only live nodes are asked)."""
    info = node.info
    name, kind = info.name, info.kind
    able = {}
    for j, group in enumerate(group_list):
        if name in group.exclude or (group.pin is not None and group.pin != name):
            continue
        for i, variant in enumerate(group.variants):
            if variant.backend == kind and can_run(info, variant):
                able[j] = i
                break
    return able


#: a node's best candidate: (rank class, affinity, score, group position, head shot)
_Candidate = tuple[int, int, float, int, tuple[float, str]]


class _Slot:
    """A node with room, the groups it may take shots of, and its best candidate among
    them (the smallest; the first group on a tie)."""

    __slots__ = ("node", "able", "best")

    def __init__(self, node: NodeLoad, able: dict[int, int]) -> None:
        self.node = node
        self.able = able  # group position -> index of the variant this node runs
        self.best: _Candidate | None = None

    def rank(self) -> tuple:
        """Idle first, then the candidate's class, affinity and score, then the faster."""
        cls, affinity, value, _, _ = self.best  # type: ignore[misc]
        return (self.node.bound > 0, cls, affinity, value, -self.node.info.speed)

    def candidate(self, live: Sequence[Group], j: int) -> _Candidate | None:
        """The head of ``live[j]`` for this node (its first shot of a scene the node is not
        blocklisted for), or None."""
        group, node = live[j], self.node
        if node.blocked:
            found = (s for s in group.shots if s[1].split("/", 1)[0] not in node.blocked)
            head = next(found, None)
        else:
            head = group.shots[0] if group.shots else None
        if head is None:
            return None
        affinity = 0 if node.model == group.variants[self.able[j]].model else 1
        return (class_of(head[0]), affinity, head[0], j, head)

    def rescan(self, live: Sequence[Group]) -> None:
        found = [c for j in self.able if (c := self.candidate(live, j)) is not None]
        self.best = min(found) if found else None

    def changed(self, live: Sequence[Group], j: int) -> None:
        """Group ``live[j]`` lost a shot: rescan if the best came from it, else compare."""
        if j not in self.able:
            return
        if self.best is not None and self.best[3] == j:
            self.rescan(live)
            return
        new = self.candidate(live, j)
        if new is not None and (self.best is None or new < self.best):
            self.best = new

    def take(self, live: Sequence[Group], depth: int) -> Assignment:
        """Bind the best candidate to this node."""
        _, _, _, j, head = self.best  # type: ignore[misc]
        group, node, index = live[j], self.node, self.able[j]
        group.shots.remove(head)
        node.bound += 1
        node.model = group.variants[index].model
        if node.bound < depth:
            self.rescan(live)
        else:
            self.best = None
        return Assignment(head[1], node.info.name, index, node.model, group.id)


def _slots(live: Sequence[Group], nodes: Sequence[NodeLoad], depth: int) -> list[_Slot]:
    """The nodes with room that have a candidate, in the order given (a node listed twice
    ties with itself, so its first place is kept)."""
    slots: list[_Slot] = []
    seen: set[int] = set()
    for node in nodes:
        if node.bound >= depth or not node.info.alive or id(node) in seen:
            continue
        seen.add(id(node))
        slot = _Slot(node, _able(live, node))
        slot.rescan(live)
        if slot.best is not None:
            slots.append(slot)
    return slots


def assign(
    groups: Sequence[Group], nodes: Sequence[NodeLoad], depth: int = DEPTH
) -> list[Assignment]:
    """Bind waiting shots to nodes with room, by the rules above. ``groups`` and ``nodes``
    are updated as shots are bound (heads popped, ``bound`` and ``model`` advanced).

    Each bind takes the smallest ``(busy, class, affinity, score, -speed)`` over every pair
    of a node with room and a group it can take from; on a tie, the first node listed, then
    the first group. Each node keeps its best candidate: a bind changes one node and one
    group's head, so only that node and those whose best came from that group rescan their
    groups; the others compare that group's new head with their best."""
    live = [g for g in groups if g.shots]
    slots = _slots(live, nodes, depth)
    out: list[Assignment] = []
    while slots:
        chosen = min(slots, key=_Slot.rank)  # the first of equal ranks
        j = chosen.best[3]  # type: ignore[index]
        out.append(chosen.take(live, depth))
        for slot in slots:
            if slot is not chosen:
                slot.changed(live, j)
        slots = [slot for slot in slots if slot.best is not None]
    return out


def assign_naive(
    groups: Sequence[Group], nodes: Sequence[NodeLoad], turn: int
) -> tuple[list[Assignment], int]:
    """The baseline the benchmarks compare against (``FARM_PLACEMENT=naive``): every waiting
    shot is bound at once, oldest first (no preview or priority classes), to the next
    capable node in round-robin order starting at ``turn``, with no regard for loaded
    models or for how many shots a node already holds (early binding). Returns the
    assignments and the next turn."""
    live = [n for n in nodes if n.info.alive]
    shots = sorted(
        ((value % CLASS_SPAN, key, g) for g in groups for value, key in g.shots),
        key=lambda s: (s[0], s[1]),
    )
    out: list[Assignment] = []
    for _, key, group in shots:
        scene_id = key.split("/", 1)[0]
        for step in range(len(live)):
            node = live[(turn + step) % len(live)]
            able = _able([group], node)
            if 0 in able and scene_id not in node.blocked:
                turn += step + 1
                model = group.variants[able[0]].model
                node.bound += 1
                node.model = model
                out.append(Assignment(key, node.info.name, able[0], model, group.id))
                break
    return out, turn % max(1, len(live))
