"""Late binding: the farm's backlog of waiting shots, and the dispatcher that binds them to
GPU nodes as nodes get room (the policy is :mod:`farm.scheduler`, pure).

A scene's chord is frozen when it is enqueued (:mod:`farm.canvas`), but its header tasks
are not published then: each shot keeps its *slot* and waits in the backlog.
:meth:`Dispatcher.dispatch` binds a waiting shot to a node with room
(:func:`farm.lifecycle.bind`: taken from the backlog, a fresh binding token, one of the
node's slots) and publishes ``farm.preview`` / ``farm.final`` / ``farm.fallback`` into the
shot's chord slot on the node's queue. A task whose token is not the shot's binding any
more does nothing.

Backlog keys (:mod:`farm.keys`): ``groups`` (group id -> needs), ``wait:{group}`` (shots
by :func:`farm.scheduler.score`), ``parked:{scene}`` (a paused scene's), ``bound:{node}``
(the node's slots), ``blocklist:{scene}`` and the dispatcher's lock.

Cloud nodes take shots by the burst policy (``FARM_BURST``, :class:`farm.scheduler.Burst`):
the dispatcher gives the policy the local nodes' bound work, the spend and budgets
(:mod:`farm.budget`), holds the estimate of each shot it binds to a cloud node, and writes
on a shot the budget kept from a cloud node why it waits (its ``waiting`` field, shown by
`farm status`), with a ``shot_burst_held`` event.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from celery import Celery

from farm import budget, canvas, lifecycle
from farm.errors import InvalidInput
from farm.keys import member, split
from farm.lifecycle import TERMINAL_SHOT, Backlog, ShotState
from farm.nodes import held_models, median_throughput, node_queue
from farm.planning import Job, Rung, plan_variants
from farm.runtime import Runtime
from farm.scene import Scene, parse_scene
from farm.scheduler import (
    CLASS_SPAN,
    STEP_SECONDS,
    Assignment,
    Burst,
    Group,
    NodeLoad,
    assign,
    assign_naive,
    class_of,
    group_id,
    holds,
    job_cost,
    score,
)

log = logging.getLogger(__name__)

LOCK_SECONDS = 10.0
#: dispatch passes one call runs at most (each binds what it can; more are for new marks)
MAX_PASSES = 3

#: park a waiting shot of a paused scene (KEYS: wait, parked; ARGV: member, group)
PARK = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({ARGV[2], tonumber(at)}))
return 1
"""
#: drop a backlog entry whose shot is not waiting in that group (KEYS: shot, wait; ARGV:
#: member, group)
STALE = """
local cur = redis.call('HMGET', KEYS[1], 'state', 'group')
if cur[1] == 'queued' and cur[2] == ARGV[2] then return 0 end
return redis.call('ZREM', KEYS[2], ARGV[1])
"""
#: put a parked shot back in its group (KEYS: parked, wait; ARGV: member, score)
UNPARK = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


# -- a shot's plan -------------------------------------------------------------------------

_scenes: dict[tuple[str, float], Scene] = {}


def scene_of(rt: Runtime, scene_id: str) -> Scene:
    """The scene as submitted, parsed once per process (a scene of thousands of shots
    takes a while to validate), until it is submitted again."""
    created = float(rt.redis.hget(rt.state.scene_key(scene_id), "created") or 0)
    scene = _scenes.get((scene_id, created))
    if scene is None:
        if len(_scenes) >= 32:
            _scenes.clear()
        scene = _scenes[(scene_id, created)] = parse_scene(
            rt.state.scene(scene_id)["spec"], check_files=False, templates=rt.catalog.templates
        )
    return scene


def remember(rt: Runtime, scene: Scene) -> None:
    """Keep the scene just enqueued as :func:`scene_of` would parse it (this process plans
    its shots' first rungs again when it dispatches them)."""
    created = float(rt.redis.hget(rt.state.scene_key(scene.id), "created") or 0)
    _scenes[(scene.id, created)] = scene


def rung_of(rt: Runtime, scene_id: str, shot: dict[str, Any]) -> Rung:
    """The shot's current rung (:func:`stored_rung`): a first rung is planned again from the
    scene, the later ones are kept whole."""
    data = shot["rung"]
    if "plan" not in data:
        return Rung.from_dict(data)
    scene = scene_of(rt, scene_id)
    variants = plan_variants(scene, scene.shot(shot["id"]), data["plan"], rt.catalog)
    return Rung(tuple(replace(v, then_final=data["then_final"]) for v in variants))


def stored_rung(rung: Rung) -> dict[str, Any]:
    """A rung as the shot record keeps it. A first rung is the plan of its kind, so only
    the kind is kept (:func:`rung_of` plans it again from the scene): a few bytes instead
    of two whole jobs, which keeps the shot hash in Redis' compact encoding."""
    if rung.step == "first" and rung.pin is None and not rung.exclude:
        first = rung.variants[0]
        return {"plan": first.kind, "then_final": first.then_final}
    return rung.to_dict()


def backlog_entry(rung: Rung, kind: str, priority: int) -> tuple[Backlog, dict[str, Any]]:
    """Where a shot waits with ``rung`` (its group and score), and the rung as stored."""
    needs = {"variants": [v.to_dict() for v in rung.variants], "pin": rung.pin,
             "exclude": sorted(rung.exclude)}  # fmt: skip
    gid = "g" + group_id(rung.variants, rung.pin, rung.exclude)
    return Backlog(gid, json.dumps(needs), score(kind, priority, time.time())), stored_rung(rung)


def cancelled_record(scene_id: str, shot_id: str, job: Job | None = None) -> dict[str, Any]:
    """The chord record of a cancelled shot."""
    record = {"scene_id": scene_id, "shot_id": shot_id, "state": "cancelled",
              "error": "cancelled"}  # fmt: skip
    if job is not None:
        record.update(kind=job.kind, node=job.node, attempt=job.attempt)
    return record


class Dispatcher:
    """The backlog and the binding of its shots to node queues."""

    def __init__(self, rt: Runtime, app: Celery) -> None:
        self.rt, self.app = rt, app
        self.r, self.s, self.keys = rt.redis, rt.settings, rt.settings.keys

    # -- a scene's chord ---------------------------------------------------------------
    def open_scene(self, scene_id: str, shot_ids: Sequence[str], run: int) -> None:
        """Freeze the scene's chord for ``run`` (a slot per shot of ``shot_ids``) and keep
        the slots on the shots; they then enter the backlog with :meth:`wait`."""
        chord = canvas.freeze_chord(
            self.app, scene_id, shot_ids,
            canvas.scene_body(self.app, scene_id, run, self.s.cpu_queue),
        )  # fmt: skip
        pipe = self.r.pipeline()  # one transaction: every slot, or none
        pipe.hset(self.keys.scene(scene_id), mapping={
            "chord_id": chord.id, "chord": json.dumps(chord.body), "chord_run": str(run)})  # fmt: skip
        for (task_id, index), shot_id in zip(chord.slots, shot_ids, strict=True):
            pipe.hset(self.keys.shot(scene_id, shot_id),
                      mapping={"task_id": task_id, "slot": str(index)})  # fmt: skip
        pipe.execute()

    def wait(self, scene_id: str, shot_id: str, rung: Rung, kind: str, priority: int,
             **fields: Any) -> lifecycle.Outcome:  # fmt: skip
        """Put a new (or retried) shot in the backlog with its first ``rung``."""
        backlog, stored = backlog_entry(rung, kind, priority)
        return lifecycle.wait(self.rt, scene_id, shot_id, backlog, stored, **fields)

    # -- control: pause, resume, cancel ---------------------------------------------------
    def pause(self, scene_id: str) -> int:
        """Stop binding the scene's shots (running ones finish; bound ones come back to the
        backlog when their task arrives); returns how many waiting shots were parked."""
        state = self.rt.state
        state.update_scene(scene_id, "scene_paused", paused="1")
        park = self.r.register_script(PARK)
        parked = 0
        for shot in state.shots(scene_id):
            gid = shot.get("group") or ""
            if gid and shot.get("state") == ShotState.QUEUED:
                parked += int(park(keys=[self.keys.wait(gid), self.keys.parked(scene_id)],
                                   args=[member(scene_id, shot["id"]), gid]))  # fmt: skip
        return parked

    def resume(self, scene_id: str) -> int:
        """Put a paused scene's shots back in the backlog, in their old order; dispatch."""
        self.rt.state.update_scene(scene_id, "scene_resumed", paused="0")
        unpark = self.r.register_script(UNPARK)
        back = 0
        for key, text in self.r.hgetall(self.keys.parked(scene_id)).items():
            gid, at = json.loads(text)
            back += int(unpark(keys=[self.keys.parked(scene_id), self.keys.wait(gid)],
                               args=[key, repr(float(at))]))  # fmt: skip
        self.dispatch()
        return back

    def set_priority(self, scene_id: str, priority: int) -> int:
        """Give the scene ``priority`` (0 lowest … 9 highest): its record and spec say so,
        and its shots waiting now (in the backlog, or parked by a pause) are ranked again,
        keeping their place among shots of the same rank. Returns how many were ranked
        again. A shot that enters the backlog later with a job planned before (a final
        after its preview, a retake) ranks by that job's priority."""
        if not 0 <= priority <= 9:
            raise InvalidInput(f"priority {priority} must be from 0 (lowest) to 9 (highest)")
        state = self.rt.state
        spec = state.scene(scene_id)["spec"]
        state.update_scene(scene_id, "scene_priority", priority=priority,
                           spec={**spec, "priority": priority})  # fmt: skip
        parked = self.r.hgetall(self.keys.parked(scene_id))
        moved = 0
        for shot in state.shots(scene_id):
            gid, key = shot.get("group") or "", member(scene_id, shot["id"])
            if not gid or shot.get("state") != ShotState.QUEUED:
                continue
            kind = shot.get("kind") or "final"
            if key in parked:
                gid, at = json.loads(parked[key])
                since = float(at) - class_of(float(at)) * CLASS_SPAN
                self.r.hset(self.keys.parked(scene_id), key,
                            json.dumps([gid, score(kind, priority, since)]))  # fmt: skip
                moved += 1
                continue
            at = self.r.zscore(self.keys.wait(gid), key)
            if at is not None:
                since = at - class_of(at) * CLASS_SPAN
                self.r.zadd(self.keys.wait(gid), {key: score(kind, priority, since)}, xx=True)
                moved += 1
        self.dispatch()
        return moved

    def cancel(self, scene_id: str, shot_id: str | None = None) -> dict[str, int]:
        """Cancel a scene or one shot: waiting shots are dropped at once (their chord slots
        filled with a cancelled record), bound ones end when their task starts, running
        ones are interrupted on their node by the render's guard within a second, and the
        timeout checker ends those whose owner died."""
        state = self.rt.state
        if shot_id is None:
            state.update_scene(scene_id, "scene_cancel", cancel="1")
            targets = state.shots(scene_id)
        else:
            shot = state.shot(scene_id, shot_id)
            if not shot:
                raise InvalidInput(f"scene {scene_id!r} has no shot {shot_id!r}")
            state.update_shot(scene_id, shot_id, "shot_cancel", cancel="1")
            targets = [shot]
        counts = {"dropped": 0, "interrupting": 0, "over": 0}
        for shot in targets:
            if shot.get("state") in TERMINAL_SHOT:
                counts["over"] += 1
                continue
            if shot.get("state") == ShotState.QUEUED and lifecycle.cancel(
                self.rt, scene_id, shot["id"], state=ShotState.QUEUED, group=shot.get("group")
            ):
                self.close(scene_id, shot["id"], cancelled_record(scene_id, shot["id"]))
                counts["dropped"] += 1
            else:
                counts["interrupting"] += 1
        return counts

    # -- dispatching --------------------------------------------------------------------
    def dispatch(self, *, periodic: bool = False) -> list[Assignment]:
        """Bind what can be bound now. Only one process dispatches at a time; a call that
        finds the lock taken marks the backlog dirty, and the holder runs once more. The
        holder runs at most ``MAX_PASSES`` passes: a mark left after them is for the next
        call (the housekeeping's comes every FARM_HEARTBEAT), so no caller (a render
        task on its way out, over a slow link) dispatches for ever for the others.
        ``periodic``: the housekeeping's call, which changed nothing; it leaves no mark when
        another process dispatches now."""
        dirty = self.keys.dispatch("dirty")
        lock = lifecycle.Lock(self.rt, self.keys.dispatch("lock"), LOCK_SECONDS)
        done: list[Assignment] = []
        if periodic and self.r.exists(lock.key):
            return done
        self.r.set(dirty, "1")
        passes = 0
        while passes < MAX_PASSES and self.r.get(dirty):
            if not lock.acquire():
                return done  # the holder will see the dirty mark
            try:
                while passes < MAX_PASSES and self.r.delete(dirty):
                    done += self._dispatch_once()
                    passes += 1
                    lock.extend()
            finally:
                lock.release()
        return done

    def _dispatch_once(self) -> list[Assignment]:
        groups = self._groups()
        if not groups:
            return []
        nodes, step_seconds = self._loads()
        naive = self.s.placement == "naive"
        if self.s.burst == "never" or naive:  # the naive baseline knows no cloud nodes
            nodes = [n for n in nodes if not n.info.cloud]
        room = -1 if naive else sum(max(0, holds(n) - n.bound) for n in nodes if n.info.alive)
        if room == 0:
            return []
        pipe = self.r.pipeline()
        for g in groups:
            pipe.zrange(self.keys.wait(g.id), 0, room - 1 if room > 0 else -1, withscores=True)
            pipe.zcard(self.keys.wait(g.id))
        replies = pipe.execute()
        for g, heads, waiting in zip(groups, replies[::2], replies[1::2], strict=True):
            g.shots = [(sc, key) for key, sc in heads]
            g.waiting = waiting
        scenes = {split(key)[0] for g in groups for _, key in g.shots}
        blocked = self._blocklisted(scenes)
        for node in nodes:
            node.blocked = frozenset(s for s, names in blocked.items() if node.info.name in names)
        if naive:
            turn = int(self.r.get(self.keys.dispatch("turn")) or 0)
            chosen, turn = assign_naive(groups, nodes, turn)
            self.r.set(self.keys.dispatch("turn"), turn)
            return [a for a in chosen if self.publish(a)]
        burst = self._burst(nodes, scenes, step_seconds)
        chosen = assign(groups, nodes, burst=burst)
        clouds = {n.info.name: n.info for n in nodes if n.info.cloud}
        done = []
        for a in chosen:
            cloud = clouds.get(a.node)
            if cloud is None:
                if self.publish(a):
                    done.append(a)
                continue
            group = next(g for g in groups if g.id == a.group)
            estimate = burst.estimate(cloud, group.variants[a.variant])
            budget.hold(self.r, self.s, a.key, a.node, estimate)
            if self.publish(a):
                done.append(a)
            else:
                self.r.hdel(self.keys.spend_held(), a.key)
        self._say_held(burst, {a.key for a in chosen})
        return done

    def _burst(self, nodes: list[NodeLoad], scenes: set[str], step_seconds: float) -> Burst:
        """The burst policy's view: the local nodes' bound work (when it is ``overflow``),
        the spend (held estimates counted) and the budgets."""
        clouds = [n.info.name for n in nodes if n.info.cloud and n.info.alive]
        if not clouds:
            return Burst()
        if self.s.burst == "overflow":
            self._bound_work([n for n in nodes if not n.info.cloud and n.info.alive])
        spend = budget.state(self.r, self.s, clouds, scenes)
        return Burst(self.s.burst, self.s.burst_after, step_seconds, spend.rates,
                     budget.cap(self.s.burst_budget_day), budget.cap(self.s.burst_budget_scene),
                     spend.day, spend.scenes)  # fmt: skip

    def _bound_work(self, nodes: list[NodeLoad]) -> None:
        """Set each node's :attr:`NodeLoad.work`: its bound shots' cost, less what they have
        rendered (their progress)."""
        pipe = self.r.pipeline()
        for node in nodes:
            pipe.hkeys(self.keys.bound(node.info.name))
        members = pipe.execute()
        for keys in members:
            for key in keys:
                pipe.hmget(self.keys.shot(*split(key)), ["job", "progress"])
        replies = iter(pipe.execute())
        for node, keys in zip(nodes, members, strict=True):
            node.work = 0.0
            for _ in keys:
                job, progress = next(replies)
                if job:
                    left = 1.0 - min(1.0, max(0.0, float(progress or 0)))
                    node.work += job_cost(Job.from_dict(json.loads(job))) * left

    def _say_held(self, burst: Burst, bound: set[str]) -> None:
        """Write on each shot the budget kept from a cloud node (and still waiting) why."""
        for key, why in burst.held.items():
            if key in bound:
                continue
            scene_id, shot_id = split(key)
            if self.r.hget(self.keys.shot(scene_id, shot_id), "waiting") != json.dumps(why):
                self.rt.state.update_shot(scene_id, shot_id, "shot_burst_held", waiting=why)

    def _groups(self) -> list[Group]:
        raw = self.r.hgetall(self.keys.groups())
        groups = []
        for gid, text in raw.items():
            needs = json.loads(text)
            groups.append(Group(gid, tuple(Job.from_dict(v) for v in needs["variants"]), [],
                                needs.get("pin"), frozenset(needs.get("exclude", ()))))  # fmt: skip
        return groups

    def _loads(self) -> tuple[list[NodeLoad], float]:
        """The registered nodes with their bound shots and loaded models, and the seconds
        a node of speed 1.0 takes per reference step (the median learned throughput's)."""
        records = self.rt.registry.records()
        infos = self.rt.registry.infos(records)
        pipe = self.r.pipeline()
        for info in infos:
            pipe.hlen(self.keys.bound(info.name))
            pipe.hget(self.keys.node(info.name), "loaded")
        replies = pipe.execute()
        median = median_throughput(records)
        loads = [
            NodeLoad(
                info,
                int(replies[2 * i]),
                frozenset() if info.cloud else held_models(replies[2 * i + 1]),
            )  # fmt: skip
            for i, info in enumerate(infos)
        ]
        return loads, 1.0 / median if median > 0 else STEP_SECONDS

    def _blocklisted(self, scenes: set[str]) -> dict[str, set[str]]:
        pipe = self.r.pipeline()
        for scene_id in scenes:
            pipe.hgetall(self.keys.blocklist(scene_id))
        limit = self.s.blocklist_after
        return {
            scene_id: {n for n, c in counts.items() if int(c) >= limit}
            for scene_id, counts in zip(scenes, pipe.execute(), strict=True)
        }

    def publish(self, a: Assignment) -> bool:
        """Bind the shot of ``a`` to its node and publish its slot there."""
        scene_id, shot_id = split(a.key)
        shot = self.rt.state.shot(scene_id, shot_id)
        if shot.get("state") != ShotState.QUEUED or shot.get("group") != a.group:
            self.r.register_script(STALE)(  # a stale entry: never bind it
                keys=[self.keys.shot(scene_id, shot_id), self.keys.wait(a.group)],
                args=[a.key, a.group])  # fmt: skip
            return False
        job = rung_of(self.rt, scene_id, shot).variants[a.variant]
        attempt = int(shot.get("attempt") or 0) + 1
        job = replace(job, node=a.node, attempt=attempt, take=int(shot.get("take") or 1))
        token = uuid.uuid4().hex
        queue = node_queue(a.node)
        if not lifecycle.bind(self.rt, scene_id, shot_id, a.group, token, job.to_dict(), a.node,
                              queue):  # fmt: skip
            return False
        self.r.hset(self.keys.node(a.node), "loaded", json.dumps(list(job.models)))
        if shot.get("waiting"):
            self.r.hdel(self.keys.shot(scene_id, shot_id), "waiting")
        self.send_render(scene_id, shot_id, token, job, queue, shot)
        return True

    def send_render(self, scene_id: str, shot_id: str, token: str, job: Job, queue: str,
                    shot: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Publish the render of binding ``token`` into the shot's slot on ``queue``:
        ``farm.preview``/``farm.final`` for a first attempt, ``farm.fallback`` after."""
        name = "farm.fallback" if job.attempt > 1 else f"farm.{job.kind}"
        self._fill(name, (scene_id, shot_id, token), scene_id, shot_id, queue,
                   priority=9 - max(0, min(9, job.priority)), shot=shot)  # fmt: skip

    def close(self, scene_id: str, shot_id: str, record: dict[str, Any]) -> None:
        """Fill a shot's chord slot without rendering (cancelled, failed while waiting): a
        ``farm.close_shot`` task on the CPU queue returns ``record``."""
        self._fill("farm.close_shot", (record,), scene_id, shot_id, self.s.cpu_queue)

    def score(self, scene_id: str, shot_id: str, token: str) -> None:
        """Fill a shot's chord slot with ``farm.score_shot`` on the CPU queue: the quality
        gate scores the take the shot's ``scoring`` token names (:mod:`farm.gate`)."""
        self._fill("farm.score_shot", (scene_id, shot_id, token), scene_id, shot_id,
                   self.s.cpu_queue)  # fmt: skip

    def collect(self, scene_id: str, shot_id: str, token: str) -> None:
        """Fill a shot's chord slot with ``farm.collect`` on the CPU queue: the outputs of
        the attempt its dead node finished are fetched (:func:`farm.shots.run_bound`)."""
        self._fill("farm.collect", (scene_id, shot_id, token), scene_id, shot_id,
                   self.s.cpu_queue)  # fmt: skip

    def _fill(self, name: str, args: tuple, scene_id: str, shot_id: str, queue: str, *,
              priority: int | None = None, shot: dict[str, Any] | None = None) -> None:  # fmt: skip
        shot = shot or self.rt.state.shot(scene_id, shot_id)
        chord_id, chord_body = self.r.hmget(self.keys.scene(scene_id), ["chord_id", "chord"])
        canvas.fill_slot(
            self.app, name, args, task_id=shot["task_id"], chord_id=chord_id,
            index=int(shot["slot"]), chord_body=json.loads(chord_body), queue=queue,
            priority=priority,
        )  # fmt: skip

    # -- blocklist ------------------------------------------------------------------------
    def blocklisted(self, scene_id: str, node: str) -> bool:
        """Whether ``node`` failed FARM_BLOCKLIST_AFTER shots of ``scene_id``."""
        failures = int(self.r.hget(self.keys.blocklist(scene_id), node) or 0)
        return failures >= self.s.blocklist_after

    def count_failure(self, scene_id: str, node: str) -> int:
        """One more failed shot of ``scene_id`` on ``node``; returns the count."""
        return int(self.r.hincrby(self.keys.blocklist(scene_id), node, 1))
