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
   shot it could run waits. A busy node queues its best shot only while that shot's group
   is deep: at least ``depth`` waiting shots per capable node (or one capable node, or its
   waiting count unknown). Otherwise the shot waits for the first capable node to free up,
   rather than behind the running shot of whichever node had room first, unless the busy
   node is the only one with the group's models loaded (each model counted: a Wan 2.2
   A14B pair, or a WanGP model's transformer files): then it queues it, so nobody loads
   them again for the group's last shots.
3. Previews before finals.
4. Then the scarcer group: the one whose capable nodes are furthest behind, in bands of a
   factor ``SCARCITY_BAND`` of its drain time (its waiting work, the shots times the
   least cost of its variants, over the speed its capable nodes can give it,
   :func:`_capacity`). A node that many groups need thus serves the groups that few other
   nodes can serve, and leaves to other nodes those that many can. For a node that has the
   group's models loaded, the drain time counts ``1 + LOAD_STEPS x models / cost`` times
   longer (the loads it saves, each model counted, against the shot's cost): a node leaves
   its models only for a group that much scarcer. The only node with a thin group's models
   loaded (rule 2) finishes that group before any other group of its kind.
5. Then higher scene priority (the rank class of the head's score).
6. Then the group the node's backend runs best compared with the group's other backends
   (the least cost of their variants over this node's).
7. Then a shot needing fewer models the node has not (or will not have) loaded, so
   same-model shots stay together and models load less. A node's loaded model is the set
   of diffusion models its last bound shot needs (Wan 2.2 A14B: two).
8. Then the oldest shot. Between nodes, the one that would finish the shot first: the
   least (a model load per model it lacks + cost) / speed.

Rules 4 and 6 bend the default order (previews, priority, age) only between groups of the
same kind, never within a group: a group's shots are bound in score order.

Waiting shots come in :class:`Group` s: shots whose variants need the same things (so one
capability check serves them all), each with its shots ordered by score and its number of
waiting shots. A score encodes the rank class and the time the shot became runnable
(:func:`score`), so a Redis sorted set keeps a group in order. Which live node can run
which group (by group id) is kept from call to call while the nodes' descriptions are
equal: the dispatcher asks for every live node on every call.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from farm.planning import MODEL_SWITCH_COST, Job, NodeInfo, loads_needed

#: shots bound to a node at once: the running one and one queued behind it
DEPTH = 2
#: a class spans this many seconds of age in a score
CLASS_SPAN = 1e10
#: groups whose drain times are within this factor of each other are equally scarce
SCARCITY_BAND = 2.0
#: rounds of the estimate of what each group can expect of its capable nodes
CAPACITY_ROUNDS = 5
#: a model load, in reference sampler steps (Job.cost): a 14B Wan model loads in 30-60 s,
#: about as long as 1.5 steps at 832x480x81 take on the GPU that holds it
LOAD_STEPS = 1.5


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
    """Waiting shots with the same needs, best first: ``shots`` is ``[(score, key), ...]``,
    the first of the group's ``waiting`` shots (0: not known; taken as ``len(shots)``, and
    the group is never thin, rule 2). ``id`` names the needs (:func:`group_id`): groups
    with the same id need the same things."""

    id: str
    variants: tuple[Job, ...]
    shots: list[tuple[float, str]]
    pin: str | None = None
    exclude: frozenset[str] = frozenset()
    waiting: int = 0


@dataclass
class NodeLoad:
    """A node as the dispatcher sees it now."""

    info: NodeInfo
    bound: int = 0  # shots bound to it: running + queued
    #: the diffusion models loaded once its bound shots have run
    models: frozenset[str] = frozenset()
    blocked: frozenset[str] = field(default_factory=frozenset)  # scenes it is blocklisted for


@dataclass(frozen=True)
class Assignment:
    key: str  # the waiting shot ("scene/shot")
    node: str
    variant: int  # index of the chosen variant in the shot's (and its group's) variants
    model: str
    group: str


def job_cost(job: Job) -> float:
    """:attr:`Job.cost`, or 1 for a job without its size (nothing to compare)."""
    try:
        return job.cost
    except KeyError:
        return 1.0


def able_for(group: Group, info: NodeInfo) -> int | None:
    """Index of the first variant of ``group`` the node can run, or None when it may not
    take the group's shots (liveness and scene blocklists aside)."""
    if info.name in group.exclude or (group.pin is not None and group.pin != info.name):
        return None
    for i, variant in enumerate(group.variants):
        if variant.backend == info.kind and can_run(info, variant):
            return i
    return None


def _able(group_list: Sequence[Group], node: NodeLoad) -> dict[int, int]:
    """Position in ``group_list`` → index of the first variant ``node`` can run, for each
    group it may take shots of (liveness aside: only live nodes are asked)."""
    able = {}
    for j, group in enumerate(group_list):
        index = able_for(group, node.info)
        if index is not None:
            able[j] = index
    return able


@dataclass
class _Column:
    """Which of the farm's live nodes can run one group."""

    index: list[int]  # per live node: the index of the variant it runs, or -1
    speeds: np.ndarray  # per live node: its speed if it can run the group, else 0
    nodes: int  # capable nodes
    backends: frozenset[str]  # their backends


class _Farm:
    """The live nodes (their descriptions, in order) and, for each group id seen with them,
    which can run the group (the same needs: :func:`group_id`). The dispatcher asks for
    every live node on every call, and nodes and needs rarely change, so this is kept
    between calls while the live nodes are the same."""

    def __init__(self, nodes: Sequence[NodeLoad]) -> None:
        self.infos = [n.info for n in nodes]
        self.speed = np.array([info.speed for info in self.infos])
        self.columns: dict[str, _Column] = {}
        self.capacity: dict[tuple, list[float]] = {}
        self.ables: tuple[tuple[str, ...], list[dict[int, int]]] = ((), [])

    def same(self, nodes: Sequence[NodeLoad]) -> bool:
        """Whether ``nodes`` are this farm's live nodes, described the same, in order."""
        return len(nodes) == len(self.infos) and all(
            n.info is info or n.info == info for n, info in zip(nodes, self.infos, strict=True)
        )

    def column(self, group: Group, nodes: Sequence[NodeLoad]) -> _Column:
        """Which of ``nodes`` (this farm's) can run ``group``."""
        found = self.columns.get(group.id)
        if found is None:
            if len(self.columns) > 4096:
                self.columns.clear()
            index = [_able([group], node).get(0, -1) for node in nodes]
            able = np.array(index) >= 0
            backends = frozenset(n.info.kind for n, i in zip(nodes, index, strict=True) if i >= 0)
            speeds = np.where(able, self.speed, 0.0)
            found = self.columns[group.id] = _Column(index, speeds, int(able.sum()), backends)
        return found

    def able(self, live: Sequence[Group], columns: Sequence[_Column]) -> list[dict[int, int]]:
        """Per live node: position in ``live`` → the variant it runs, for each group of
        ``live`` it can run (kept for the last ``live``)."""
        ids = tuple(g.id for g in live)
        if self.ables[0] != ids:
            rows = range(len(self.infos))
            able = [{j: i for j, c in enumerate(columns) if (i := c.index[r]) >= 0} for r in rows]
            self.ables = (ids, able)
        return self.ables[1]

    def capacity_for(
        self, live: Sequence[Group], columns: Sequence[_Column], work: list[float]
    ) -> list[float]:
        """:func:`_capacity` of the groups ``live`` (whose ``columns`` these are) for their
        ``work``, each made once."""
        key = (tuple(g.id for g in live), tuple(work))
        found = self.capacity.get(key)
        if found is None:
            if len(self.capacity) > 4096:
                self.capacity.clear()
            speeds = np.column_stack([c.speeds for c in columns])
            found = self.capacity[key] = _capacity(speeds, np.array(work)).tolist()
        return found


def _rounded(work: float) -> float:
    """``work`` to 1/16 of an octave: the capacity estimate hardly changes with a shot more
    or less, so most calls find it already made (``_Farm.capacity``)."""
    return 2.0 ** (round(math.log2(work) * 16) / 16) if work > 0 else 0.0


#: the farm of the last call
_last: list[_Farm] = []


def _farm(nodes: Sequence[NodeLoad]) -> _Farm:
    """The farm of ``nodes`` (alive, listed once): the last one if they are the same."""
    if not (_last and _last[0].same(nodes)):
        _last[:] = [_Farm(nodes)]
    return _last[0]


def _capacity(speeds: np.ndarray, work: np.ndarray, rounds: int = CAPACITY_ROUNDS) -> np.ndarray:
    """The speed each group can expect of its capable nodes: ``speeds[n, g]`` is node
    ``n``'s speed if it can run group ``g`` (else 0), ``work[g]`` the group's waiting work.

    A node able to run several groups is shared between them: in equal parts at first,
    then, for ``rounds`` rounds, half as before and half in proportion to the square of
    each group's drain time (work over the speed it gets), so that it counts mostly for the
    groups that need it most, and little for groups that other nodes serve well."""
    able = speeds > 0
    share = able / np.maximum(able.sum(axis=1, keepdims=True), 1)
    for _ in range(rounds):
        drain = work / np.maximum((share * speeds).sum(axis=0), 1e-9)
        weight = able * (drain / drain.max()) ** 2
        share = 0.5 * share + 0.5 * weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-300)
    return (share * speeds).sum(axis=0)


_FINISH = 2**30  # the band of a thin group for its only holder: above every other band
_ALONE = 1e9  # the advantage of a backend no other backend can stand in for


class _Scarcity:
    """What the live groups need: their waiting shots, the cost of their variants, their
    capable nodes, and the scarcity band of each (rule 4) and backend advantage (rule 6)."""

    __slots__ = (
        "known", "waiting", "costs", "unit", "nodes", "speed", "band", "advantage", "head",
        "loaded", "holders",
    )  # fmt: skip

    def __init__(self, live: Sequence[Group], farm: _Farm, columns: Sequence[_Column]):
        self.known = [g.waiting > 0 for g in live]
        self.waiting = [g.waiting or len(g.shots) for g in live]
        self.costs = [[job_cost(v) for v in g.variants] for g in live]
        self.unit = [min(c) for c in self.costs]
        self.nodes = [c.nodes for c in columns]
        work = [_rounded(w * u) for w, u in zip(self.waiting, self.unit, strict=True)]
        self.speed = farm.capacity_for(live, columns, work) if farm.infos else [0.0] * len(live)
        self.band = [self._band(j) for j in range(len(live))]
        self.loaded: dict[tuple[int, int], int] = {}  # (group, variant) -> its loaded band
        #: per group: live nodes that have the models of the variant they run loaded (counted
        #: for thin groups only, when the call starts)
        self.holders = [0] * len(live)
        self.head = [self._head(g, j) for j, g in enumerate(live)]
        self.advantage = [
            [self._advantage(g, j, i, c.backends) for i in range(len(g.variants))]
            if len(c.backends) > 1
            else [_ALONE] * len(g.variants)
            for j, (g, c) in enumerate(zip(live, columns, strict=True))
        ]

    def _band(self, j: int, stretch: float = 1.0) -> int:
        drain = self.waiting[j] * self.unit[j] / max(self.speed[j], 1e-9) * stretch
        return math.floor(math.log(drain, SCARCITY_BAND)) if drain > 0 else -(2**31)

    def loaded_band(self, j: int, index: int, models: int) -> int:
        """Group ``j``'s band for a node that has the ``models`` models of its variant
        ``index`` loaded: the loads that node saves stretch the group's drain time."""
        band = self.loaded.get((j, index))
        if band is None:
            stretch = 1.0 + LOAD_STEPS * models / max(self.costs[j][index], 1e-9)
            band = self.loaded[(j, index)] = self._band(j, stretch)
        return band

    def _advantage(self, group: Group, j: int, index: int, backends: frozenset[str]) -> float:
        """How many times the least cost of group ``j``'s variants for its other capable
        backends is that of variant ``index`` (``_ALONE``: no other backend can run it)."""
        mine = group.variants[index].backend
        others = [
            cost
            for v, cost in zip(group.variants, self.costs[j], strict=True)
            if v.backend != mine and v.backend in backends
        ]
        if not others:
            return _ALONE
        return round(min(others) / max(self.costs[j][index], 1e-9), 1)

    def _head(self, group: Group, j: int) -> tuple | None:
        """The group-wide part of a candidate from group ``j`` for a node blocklisted for
        no scene: (preview or final, -band, rank class, score, head shot), or None."""
        if not group.shots:
            return None
        head = group.shots[0]
        cls = class_of(head[0])
        return (cls // 10, -self.band[j], cls, head[0], head)

    def took(self, group: Group, j: int) -> None:
        """A shot of ``group``, at position ``j``, was bound."""
        self.waiting[j] -= 1
        self.band[j] = self._band(j)
        for index in range(len(group.variants)):
            self.loaded.pop((j, index), None)
        self.head[j] = self._head(group, j)

    def thin(self, j: int, depth: int) -> bool:
        """Whether group ``j`` (its waiting shots known) has more than one capable node,
        and fewer than ``depth`` waiting shots per capable node."""
        return self.known[j] and self.nodes[j] > 1 and self.waiting[j] < depth * self.nodes[j]


#: a node's best candidate: (preview or final, -scarcity band, rank class, -advantage,
#: affinity, score, group position, head shot)
_Candidate = tuple[int, int, int, float, int, float, int, tuple[float, str]]


class _Slot:
    """A node with room, the groups it may take shots of, and its best candidate among
    them (the smallest; the first group on a tie); ``ready`` when it takes it now (a busy
    node does not take a shot of a thin group, rule 2)."""

    __slots__ = ("node", "able", "best", "ready", "need", "depth")

    def __init__(self, node: NodeLoad, able: dict[int, int], need: _Scarcity, depth: int):
        self.node = node
        self.able = able  # group position -> index of the variant this node runs
        self.best: _Candidate | None = None
        self.ready = False
        self.need = need
        self.depth = depth

    def rank(self, live: Sequence[Group]) -> tuple:
        """Idle first, then the candidate's kind, band and class, then the node that would
        finish it first, then its score."""
        kind, band, cls, _, _, value, j, _ = self.best  # type: ignore[misc]
        node, index = self.node, self.able[j]
        variant = live[j].variants[index]
        load = MODEL_SWITCH_COST * loads_needed(variant, node.models)
        finish = (load + self.need.costs[j][index]) / max(node.info.speed, 1e-9)
        return (node.bound > 0, kind, band, cls, finish, value)

    def candidate(self, live: Sequence[Group], j: int) -> _Candidate | None:
        """The head of ``live[j]`` for this node (its first shot of a scene the node is not
        blocklisted for), or None."""
        group, node, need, index = live[j], self.node, self.need, self.able[j]
        if node.blocked:
            found = (s for s in group.shots if s[1].split("/", 1)[0] not in node.blocked)
            head = next(found, None)
            if head is None:
                return None
            cls = class_of(head[0])
            kind, band, value = cls // 10, -need.band[j], head[0]
        elif need.head[j] is None:
            return None
        else:
            kind, band, cls, value, head = need.head[j]  # type: ignore[misc]
        variant = group.variants[index]
        affinity = loads_needed(variant, node.models)
        if not affinity:
            band = -need.loaded_band(j, index, len(variant.models))
            if need.holders[j] == 1 and need.thin(j, self.depth):
                band = -_FINISH  # its last holder finishes a thin group first (rule 4)
        return (kind, band, cls, -need.advantage[j][index], affinity, value, j, head)

    def settle(self, best: _Candidate | None) -> None:
        """Make ``best`` the best candidate; ready unless this node is busy and its group
        is thin."""
        self.best = best
        self.ready = best is not None and not (
            self.node.bound > 0
            and (best[4] > 0 or self.need.holders[best[6]] > 1)
            and self.need.thin(best[6], self.depth)
        )

    def rescan(self, live: Sequence[Group]) -> None:
        found = [c for j in self.able if (c := self.candidate(live, j)) is not None]
        self.settle(min(found) if found else None)

    def changed(self, live: Sequence[Group], j: int) -> None:
        """Group ``live[j]`` lost a shot: rescan if the best came from it, else compare."""
        if j not in self.able:
            return
        if self.best is not None and self.best[6] == j:
            self.rescan(live)
            return
        new = self.candidate(live, j)
        if new is not None and (self.best is None or new < self.best):
            self.settle(new)

    def take(self, live: Sequence[Group]) -> Assignment:
        """Bind the best candidate to this node."""
        j, head = self.best[6], self.best[7]  # type: ignore[index]
        group, node, index = live[j], self.node, self.able[j]
        group.shots.remove(head)
        self.need.took(group, j)
        node.bound += 1
        variant = group.variants[index]
        node.models = frozenset(variant.models)
        if node.bound < self.depth:
            self.rescan(live)
        else:
            self.settle(None)
        return Assignment(head[1], node.info.name, index, variant.model, group.id)


def _slots(live: Sequence[Group], nodes: Sequence[NodeLoad], depth: int) -> list[_Slot]:
    """The nodes with room that have a candidate, in the order given (a node listed twice
    ties with itself, so its first place is kept)."""
    alive = [n for n in nodes if n.info.alive]
    if len(set(map(id, alive))) < len(alive):  # a node listed twice keeps its first place
        alive = list({id(n): n for n in alive}.values())
    farm = _farm(alive)
    columns = [farm.column(g, alive) for g in live]
    need = _Scarcity(live, farm, columns)
    deep = {j for j in range(len(live)) if not need.thin(j, depth)}
    ables = farm.able(live, columns)
    for node, able in zip(alive, ables, strict=True):  # holders of thin groups' models
        if node.models:
            for j, i in able.items():
                if not loads_needed(live[j].variants[i], node.models):
                    need.holders[j] += 1
    slots: list[_Slot] = []
    for node, able in zip(alive, ables, strict=True):
        # a busy node able to run only thin groups, none with its models, takes nothing
        # (rule 2), the whole call
        if node.bound >= depth or (
            node.bound > 0
            and deep.isdisjoint(able)
            and all(
                need.holders[j] > 1 or loads_needed(live[j].variants[i], node.models)
                for j, i in able.items()
            )
        ):
            continue
        slot = _Slot(node, able, need, depth)
        slot.rescan(live)
        if slot.best is not None:
            slots.append(slot)
    return slots


def assign(
    groups: Sequence[Group], nodes: Sequence[NodeLoad], depth: int = DEPTH
) -> list[Assignment]:
    """Bind waiting shots to nodes with room, by the rules above. ``groups`` and ``nodes``
    are updated as shots are bound (heads popped, ``bound`` and ``models`` advanced).

    Each node keeps its best candidate (rules 3 to 8); each bind takes the node of the
    smallest :meth:`_Slot.rank`, the first listed on a tie. A bind changes one node and
    one group's head (and its waiting count), so only that node and those whose best came
    from that group rescan their groups; the others compare that group's new head with
    their best."""
    live = [g for g in groups if g.shots]
    if not live:
        return []
    slots = _slots(live, nodes, depth)
    out: list[Assignment] = []
    while ready := [slot for slot in slots if slot.ready]:
        chosen = min(ready, key=lambda slot: slot.rank(live))  # the first of equal ranks
        j = chosen.best[6]  # type: ignore[index]
        out.append(chosen.take(live))
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
                variant = group.variants[able[0]]
                node.bound += 1
                node.models = frozenset(variant.models)
                out.append(Assignment(key, node.info.name, able[0], variant.model, group.id))
                break
    return out, turn % max(1, len(live))
