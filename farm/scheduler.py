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

Cloud nodes (``NodeInfo.concurrency > 0``: a Comfy API v2 service) take shots by the
burst policy (:class:`Burst`, ``FARM_BURST``): ``never``, none; ``always``, as any capable
node; ``overflow``, once the local nodes have taken what they can, a shot only when no local
capable node would start it within ``FARM_BURST_AFTER`` seconds (:func:`local_start`). A
cloud node holds up to its ``concurrency`` shots (not ``depth``), all running at once, so
rule 2 does not hold it back, and it loads no model (rules 4, 7 and 8 count no load for
it). Before a cloud node takes a shot its price is estimated (:meth:`Burst.estimate`); a
shot that would pass the day's or its scene's budget is not sent to the cloud: it waits
for a local node, and :attr:`Burst.held` says why.

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
from farm.problems import show

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
#: seconds a node of speed 1.0 takes per reference sampler step, until a node has rendered
#: (a 14B Wan model at 832x480x81 on a 24 GB GPU: 30 to 45 s)
STEP_SECONDS = 30.0


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
    if node.backend != job.backend:
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
    #: reference sampler steps (Job.cost) of its bound shots not rendered yet (the burst
    #: policy's estimate of when it is free: :func:`local_start`)
    work: float = 0.0


def holds(node: NodeLoad, depth: int = DEPTH) -> int:
    """Shots ``node`` holds at most: a cloud node its ``concurrency``, a local node ``depth``."""
    return node.info.concurrency or depth


@dataclass
class Burst:
    """How cloud nodes take shots (``FARM_BURST``), and the budget left for them.

    ``after`` is ``FARM_BURST_AFTER``; ``step_seconds`` the seconds a node of speed 1.0
    takes per reference step (the farm's median learned throughput); ``rates`` a cloud
    node's billed GPU-seconds per reference step so far (else ``step_seconds`` over its
    speed). ``day_cap`` and ``scene_cap`` are the budgets (``inf``: no cap), ``day_spent``
    and ``scene_spent`` what is spent or committed (the estimates of shots bound to cloud
    nodes and not billed yet); :func:`assign` adds the estimate of each shot it sends to a
    cloud node, and fills ``held``: shot → why it was not sent to one (its budget)."""

    policy: str = "never"
    after: float = 0.0
    step_seconds: float = STEP_SECONDS
    rates: dict[str, float] = field(default_factory=dict)
    day_cap: float = math.inf
    scene_cap: float = math.inf
    day_spent: float = 0.0
    scene_spent: dict[str, float] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)

    def estimate(self, node: NodeInfo, job: Job) -> float:
        """What rendering ``job`` on cloud node ``node`` would cost: its work in reference
        steps, times the node's GPU-seconds per step, times its price per GPU-second."""
        rate = self.rates.get(node.name) or self.step_seconds / max(node.speed, 1e-9)
        return job_cost(job) * rate * node.price

    def refuses(self, key: str, node: NodeInfo, price: float) -> str | None:
        """Why shot ``key`` may not go to cloud node ``node`` for ``price`` (None: it may)."""
        scene_id = key.split("/", 1)[0]
        spent = self.scene_spent.get(scene_id, 0.0)
        if self.day_spent + price > self.day_cap:
            return (f"waits for a local node: on cloud node {node.name} it would cost about "
                    f"{price:.4g}, past today's burst budget FARM_BURST_BUDGET_DAY="
                    f"{self.day_cap:g} ({self.day_spent:.4g} spent or committed)")  # fmt: skip
        if spent + price > self.scene_cap:
            return (f"waits for a local node: on cloud node {node.name} it would cost about "
                    f"{price:.4g}, past the burst budget of scene {show(scene_id)}, "
                    f"FARM_BURST_BUDGET_SCENE={self.scene_cap:g} ({spent:.4g} spent or "
                    "committed)")  # fmt: skip
        return None

    def commit(self, key: str, price: float) -> None:
        """Shot ``key`` was sent to a cloud node for about ``price``."""
        scene_id = key.split("/", 1)[0]
        self.day_spent += price
        self.scene_spent[scene_id] = self.scene_spent.get(scene_id, 0.0) + price
        self.held.pop(key, None)


def local_start(frees: Sequence[tuple[float, float]], ahead: float) -> float:
    """When the local nodes start a shot that has ``ahead`` seconds-at-speed-1 of work
    waiting before it: ``frees`` is, per capable local node, ``(free, speed)``, the seconds
    until it has rendered its bound shots (their work left over its speed) and its speed.

    The nodes are taken as one fluid pool: from its ``free`` time on, a node does
    ``speed`` seconds-at-speed-1 of work per second, and the shot starts when the pool has
    done the work ahead of it: the least ``t`` with ``Σ max(0, t - free) x speed >= ahead``
    (with nothing ahead, when the first node is free). Work of other groups that wants the
    same nodes is not counted, so the estimate errs early: the policy bursts late rather
    than paying for what a local node would soon have done. ``inf``: no local node."""
    pool = sorted((f, sp) for f, sp in frees if sp > 0)
    done = rate = 0.0
    for i, (free, speed) in enumerate(pool):
        rate += speed
        upto = pool[i + 1][0] if i + 1 < len(pool) else math.inf
        if done + rate * (upto - free) >= ahead:
            return free + (ahead - done) / rate
        done += rate * (upto - free)
    return math.inf


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
        if variant.backend == info.backend and can_run(info, variant):
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
        "loaded", "holders", "cloud",
    )  # fmt: skip

    def __init__(self, live: Sequence[Group], farm: _Farm, columns: Sequence[_Column]):
        self.cloud: _Cloud | None = None  # set by _slots when a cloud node is alive
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


class _Cloud:
    """The burst policy within one call: the budget (:class:`Burst`) and, for
    ``overflow``, the local nodes and which of them can run each group (their columns)."""

    def __init__(self, burst: Burst, local: Sequence[NodeLoad], columns: Sequence[_Column],
                 need: _Scarcity) -> None:  # fmt: skip
        self.burst, self.local, self.columns, self.need = burst, local, columns, need

    def overflows(self, j: int) -> bool:
        """Whether group ``j``'s last waiting shot would wait for a local node longer than
        ``FARM_BURST_AFTER`` (always so unless the policy is ``overflow``): the shots
        ahead of it cost the group's least cost each (:func:`local_start`)."""
        burst, need = self.burst, self.need
        if burst.policy != "overflow":
            return True
        step = burst.step_seconds
        frees = [
            (n.work * step / max(n.info.speed, 1e-9), n.info.speed)
            for n, i in zip(self.local, self.columns[j].index, strict=True)
            if i >= 0
        ]
        ahead = max(0, need.waiting[j] - 1) * need.unit[j] * step
        return local_start(frees, ahead) > burst.after

    def head(self, group: Group, node: NodeLoad, price: float) -> tuple[float, str] | None:
        """The first shot of ``group`` cloud node ``node`` may take for ``price``: of a
        scene it is not blocklisted for, within the budgets; those it may not take for
        their budget are held (:attr:`Burst.held`)."""
        for shot in group.shots:
            if node.blocked and shot[1].split("/", 1)[0] in node.blocked:
                continue
            why = self.burst.refuses(shot[1], node.info, price)
            if why is None:
                return shot
            self.burst.held[shot[1]] = why  # it says why (past the day's cap: every shot)
        return None


#: a node's best candidate: (preview or final, -scarcity band, rank class, -advantage,
#: affinity, score, group position, head shot)
_Candidate = tuple[int, int, int, float, int, float, int, tuple[float, str]]


class _Slot:
    """A node with room, the groups it may take shots of, and its best candidate among
    them (the smallest; the first group on a tie); ``ready`` when it takes it now (a busy
    node does not take a shot of a thin group, rule 2)."""

    __slots__ = ("node", "able", "best", "ready", "need", "depth", "until")

    def __init__(self, node: NodeLoad, able: dict[int, int], need: _Scarcity, depth: int,
                 until: float = math.inf):  # fmt: skip
        self.node = node
        self.able = able  # group position -> index of the variant this node runs
        self.best: _Candidate | None = None
        self.ready = False
        self.need = need
        self.depth = depth
        #: a busy node queues no shot it would start later than this (seconds; overflow)
        self.until = until

    def rank(self, live: Sequence[Group]) -> tuple:
        """Idle first, then the candidate's kind, band and class, then the node that would
        finish it first, then its score."""
        kind, band, cls, _, _, value, j, _ = self.best  # type: ignore[misc]
        node, index = self.node, self.able[j]
        variant = live[j].variants[index]
        cloud = node.info.cloud  # loads nothing, and is idle while it has room
        load = 0.0 if cloud else MODEL_SWITCH_COST * loads_needed(variant, node.models)
        finish = (load + self.need.costs[j][index]) / max(node.info.speed, 1e-9)
        return (node.bound > 0 and not cloud, kind, band, cls, finish, value)

    def candidate(self, live: Sequence[Group], j: int) -> _Candidate | None:
        """The head of ``live[j]`` for this node (its first shot of a scene the node is not
        blocklisted for), or None."""
        group, node, need, index = live[j], self.node, self.need, self.able[j]
        if node.info.cloud:
            return self.cloud_candidate(live, j)
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

    def cloud_candidate(self, live: Sequence[Group], j: int) -> _Candidate | None:
        """The head of ``live[j]`` for this cloud node: none unless the burst policy lets
        the group overflow; its first shot within the budgets (no load, no thin group)."""
        group, need, index = live[j], self.need, self.able[j]
        cloud = need.cloud
        if cloud is None or not cloud.overflows(j):
            return None
        variant = group.variants[index]
        head = cloud.head(group, self.node, cloud.burst.estimate(self.node.info, variant))
        if head is None:
            return None
        cls = class_of(head[0])
        return (cls // 10, -need.band[j], cls, -need.advantage[j][index], 0, head[0], j, head)

    def affordable(self, live: Sequence[Group]) -> bool:
        """Whether this node's best candidate is still within the budgets (another cloud
        node may have committed part of them since it was chosen)."""
        if not self.node.info.cloud or self.need.cloud is None:
            return True
        j, head = self.best[6], self.best[7]  # type: ignore[index]
        variant = live[j].variants[self.able[j]]
        burst = self.need.cloud.burst
        why = burst.refuses(head[1], self.node.info, burst.estimate(self.node.info, variant))
        if why is not None:
            burst.held[head[1]] = why
        return why is None

    def settle(self, best: _Candidate | None) -> None:
        """Make ``best`` the best candidate; ready unless this node is busy and its group
        is thin, or it would start it later than ``until``."""
        self.best = best
        node = self.node
        self.ready = best is not None and not (
            not node.info.cloud
            and node.bound > 0
            and (
                (best[4] > 0 or self.need.holders[best[6]] > 1)
                and self.need.thin(best[6], self.depth)
                or self.until < math.inf
                and self.free() > self.until
            )
        )

    def free(self) -> float:
        """Seconds until this node has rendered its bound shots (:attr:`NodeLoad.work`)."""
        step = self.need.cloud.burst.step_seconds if self.need.cloud else STEP_SECONDS
        return self.node.work * step / max(self.node.info.speed, 1e-9)

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
        if node.info.cloud and self.need.cloud is not None:
            burst = self.need.cloud.burst
            burst.commit(head[1], burst.estimate(node.info, variant))
        elif not node.info.cloud:
            node.models = frozenset(variant.models)
            node.work += job_cost(variant)
        if node.bound < holds(node, self.depth):
            self.rescan(live)
        else:
            self.settle(None)
        return Assignment(head[1], node.info.name, index, variant.model, group.id)


def _slots(
    live: Sequence[Group], nodes: Sequence[NodeLoad], depth: int, burst: Burst
) -> tuple[list[_Slot], list[_Slot]]:
    """The nodes with room that have a candidate, in the order given (a node listed twice
    ties with itself, so its first place is kept), and the cloud nodes with room that take
    shots only once those are done (``overflow``; their candidates not searched yet)."""
    alive = [n for n in nodes if n.info.alive]
    if len(set(map(id, alive))) < len(alive):  # a node listed twice keeps its first place
        alive = list({id(n): n for n in alive}.values())
    clouds = [n for n in alive if n.info.cloud]
    if clouds and burst.policy != "always":  # never: none; overflow: after the local nodes
        alive = [n for n in alive if not n.info.cloud]
    farm = _farm(alive)
    columns = [farm.column(g, alive) for g in live]
    need = _Scarcity(live, farm, columns)
    if clouds and burst.policy != "never":
        need.cloud = _Cloud(burst, [n for n in alive if not n.info.cloud], columns, need)
    deep = {j for j in range(len(live)) if not need.thin(j, depth)}
    ables = farm.able(live, columns)
    for node, able in zip(alive, ables, strict=True):  # holders of thin groups' models
        if node.models and not node.info.cloud:
            for j, i in able.items():
                if not loads_needed(live[j].variants[i], node.models):
                    need.holders[j] += 1
    later = []
    if burst.policy == "overflow":
        later = [_Slot(n, _able(live, n), need, depth) for n in clouds if n.bound < holds(n)]
    until = burst.after if later else math.inf  # leave the cloud what would wait too long
    slots: list[_Slot] = []
    for node, able in zip(alive, ables, strict=True):
        # a busy node able to run only thin groups, none with its models, takes nothing
        # (rule 2), the whole call
        if node.bound >= holds(node, depth) or (
            not node.info.cloud
            and node.bound > 0
            and deep.isdisjoint(able)
            and all(
                need.holders[j] > 1 or loads_needed(live[j].variants[i], node.models)
                for j, i in able.items()
            )
        ):
            continue
        slot = _Slot(node, able, need, depth, until)
        slot.rescan(live)
        if slot.best is not None:
            slots.append(slot)
    return slots, later


def assign(
    groups: Sequence[Group],
    nodes: Sequence[NodeLoad],
    depth: int = DEPTH,
    burst: Burst | None = None,
) -> list[Assignment]:
    """Bind waiting shots to nodes with room, by the rules above. ``groups`` and ``nodes``
    are updated as shots are bound (heads popped, ``bound`` and ``models`` advanced).

    Each node keeps its best candidate (rules 3 to 8); each bind takes the node of the
    smallest :meth:`_Slot.rank`, the first listed on a tie. A bind changes one node and
    one group's head (and its waiting count), so only that node and those whose best came
    from that group rescan their groups; the others compare that group's new head with
    their best.

    Cloud nodes take shots by ``burst`` (:class:`Burst`; default: never). With
    ``overflow``, the local nodes bind first, a busy one queuing no shot it would start
    later than ``FARM_BURST_AFTER``; then each cloud node its best candidates among the
    groups that overflow; then the local nodes queue what the cloud left. ``burst`` is
    updated as cloud nodes bind (what they committed, the shots held for their budget)."""
    live = [g for g in groups if g.shots]
    if not live:
        return []
    slots, later = _slots(live, nodes, depth, burst or Burst())
    out = _bind(live, slots)
    if not later:
        return out
    for slot in later:  # overflow: the groups the local nodes leave waiting too long
        slot.rescan(live)
    out += _bind(live, [slot for slot in later if slot.best is not None])
    live = [g for g in live if g.shots]  # what the cloud left: the local nodes queue it
    local = [n for n in nodes if not n.info.cloud]
    return out + (_bind(live, _slots(live, local, depth, Burst())[0]) if live else [])


def _bind(live: Sequence[Group], slots: list[_Slot]) -> list[Assignment]:
    """Bind, while a slot is ready, the best ready slot's candidate (rank ties: the first)."""
    out: list[Assignment] = []
    while ready := [slot for slot in slots if slot.ready]:
        chosen = min(ready, key=lambda slot: slot.rank(live))  # the first of equal ranks
        if not chosen.affordable(live):  # another cloud node spent the budget meanwhile
            chosen.rescan(live)
            slots = [slot for slot in slots if slot.best is not None]
            continue
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
