"""Late binding: the farm's backlog of waiting shots, and the dispatcher that binds them to
GPU nodes as nodes get room (the policy is :mod:`farm.scheduler`, pure).

A scene's chord is frozen when it is submitted, but its header tasks are not published
then: each shot keeps its place in the chord (a *slot*: the header task id and index; the
scene keeps the chord id and body) and waits in the backlog. :meth:`Dispatcher.dispatch`
publishes a slot to a node's queue (``farm.preview`` / ``farm.final`` / ``farm.fallback``
with the slot's task id, group and index: what ``Task.replace`` does) only when that node
has room, so no node holds a long backlog while another idles. A failed attempt's next rung
goes back to the backlog and is published into the same slot; Celery counts a slot once
(its chord join de-duplicates by task id and index), so the body runs once.

Every publication carries a fresh *binding* token, also stored on the shot; a task whose
token is not the shot's (a node was given up, the shot re-bound) does nothing. Redis keys::

    farm:groups            hash: group id -> {"variants", "pin", "exclude"} (scheduler.Group)
    farm:wait:{group}      sorted set: "scene/shot" by scheduler.score
    farm:bound:{node}      hash: "scene/shot" -> binding token (running or queued there)
    farm:lease:{scene}:{shot}   the renderer's lease (value: binding token), renewed
    farm:blocklist:{scene} hash: node -> failed shots of the scene on it
    farm:dispatch:lock / farm:dispatch:dirty   one dispatcher at a time; nothing missed

:meth:`Dispatcher.tick` (from every node worker's heartbeat) also takes shots back from
nodes that stopped beating, fails shots that waited too long for any capable node, and
assembles a scene whose shots are all over when its chord body was lost (the watchdog).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from celery import Celery

from farm.nodes import node_queue
from farm.planning import Job, Rung
from farm.runtime import Runtime
from farm.scheduler import (
    CLASS_SPAN,
    DEPTH,
    Assignment,
    Group,
    NodeLoad,
    assign,
    assign_naive,
    can_run,
    group_id,
    score,
)
from farm.state import TERMINAL_SCENE, TERMINAL_SHOT, SceneState, ShotState

log = logging.getLogger(__name__)

LOCK_MS = 10_000
#: seconds a scene whose shots are all over may wait for its chord body before the watchdog
WATCHDOG_GRACE = 30.0


def shot_key(scene_id: str, shot_id: str) -> str:
    return f"{scene_id}/{shot_id}"


def stored_rung(rung: Rung) -> dict[str, Any]:
    """A rung as the shot record keeps it. A first rung is the plan of its kind, so only
    the kind is kept (``shots.rung_of`` plans it again from the scene): a few bytes
    instead of two whole jobs, which keeps the shot hash in Redis' compact encoding."""
    if rung.step == "first" and rung.pin is None and not rung.exclude:
        first = rung.variants[0]
        return {"plan": first.kind, "then_final": first.then_final}
    return rung.to_dict()


class Dispatcher:
    """The backlog and the binding of its shots to node queues."""

    def __init__(self, rt: Runtime, app: Celery) -> None:
        self.rt, self.app = rt, app
        self.r, self.s = rt.redis, rt.settings

    # keys
    def k(self, *parts: str) -> str:
        return self.s.key(*parts)

    # -- submission ---------------------------------------------------------------------
    def open_scene(self, scene_id: str, shot_ids: Sequence[str], body) -> None:
        """Freeze the scene's chord (header: one slot per shot; ``body`` after them) and
        record its slots; the shots are then put in the backlog with :meth:`wait`."""
        from celery import chord

        header = [self.app.signature("farm.render", args=(scene_id, s)) for s in shot_ids]
        ch = chord(header, body)
        body_result = ch.freeze()
        gid = ch.tasks.id
        self.app.backend.set_chord_size(gid, len(shot_ids))
        ids = [t.id for t in ch.tasks.tasks] + [body_result.id]
        parent = body_result.parent
        while parent is not None:
            ids.append(parent.id)
            parent = parent.parent
        _unsubscribe(self.app, ids)
        chord_body = dict(ch.tasks.tasks[0].options["chord"]) if shot_ids else {}
        pipe = self.r.pipeline()
        pipe.hset(self.rt.state.scene_key(scene_id),
                  mapping={"chord_id": gid, "chord": json.dumps(chord_body)})  # fmt: skip
        for sig, shot_id in zip(ch.tasks.tasks, shot_ids, strict=True):
            pipe.hset(self.rt.state.shot_key(scene_id, shot_id),
                      mapping={"task_id": sig.id, "slot": str(sig.options["group_index"])})  # fmt: skip
        pipe.execute()

    def wait(self, job_kind: str, priority: int, scene_id: str, shot_id: str, rung: Rung) -> None:
        """Put a shot (its next rung) in the backlog."""
        gid = group_id(rung.variants, rung.pin, rung.exclude)
        needs = {"variants": [v.to_dict() for v in rung.variants], "pin": rung.pin,
                 "exclude": sorted(rung.exclude)}  # fmt: skip
        gid = "g" + gid
        key, at = shot_key(scene_id, shot_id), score(job_kind, priority, time.time())
        pipe = self.r.pipeline()
        pipe.hsetnx(self.k("groups"), gid, json.dumps(needs))
        pipe.hset(self.rt.state.shot_key(scene_id, shot_id),
                  mapping={"rung": json.dumps(stored_rung(rung)), "group": gid, "binding": "",
                           "node": "", "state": ShotState.QUEUED})  # fmt: skip
        if self.r.hget(self.rt.state.scene_key(scene_id), "paused") == "1":
            pipe.hset(self.k("parked", scene_id), key, json.dumps([gid, at]))
        else:
            pipe.zadd(self.k("wait", gid), {key: at})
        pipe.execute()

    def unwait(self, scene_id: str, shot_id: str) -> bool:
        """Take a shot out of the backlog; True if it was waiting."""
        gid = self.r.hget(self.rt.state.shot_key(scene_id, shot_id), "group") or ""
        return bool(gid) and bool(self.r.zrem(self.k("wait", gid), shot_key(scene_id, shot_id)))

    # -- control: pause, resume, cancel ---------------------------------------------------
    def pause(self, scene_id: str) -> int:
        """Stop binding the scene's shots (running ones finish; queued ones come back to the
        backlog when their task arrives); returns how many waiting shots were parked."""
        state = self.rt.state
        state.update_scene(scene_id, "scene_paused", paused="1")
        parked = 0
        for shot in state.shots(scene_id):
            gid, key = shot.get("group") or "", shot_key(scene_id, shot["id"])
            at = self.r.zscore(self.k("wait", gid), key) if gid else None
            if at is not None and self.r.zrem(self.k("wait", gid), key):
                self.r.hset(self.k("parked", scene_id), key, json.dumps([gid, at]))
                parked += 1
        return parked

    def resume(self, scene_id: str) -> int:
        """Put a paused scene's shots back in the backlog, in their old order; dispatch."""
        self.rt.state.update_scene(scene_id, "scene_resumed", paused="0")
        parked = self.r.hgetall(self.k("parked", scene_id))
        pipe = self.r.pipeline()
        for key, text in parked.items():
            gid, at = json.loads(text)
            pipe.zadd(self.k("wait", gid), {key: at})
        pipe.delete(self.k("parked", scene_id))
        pipe.execute()
        self.dispatch()
        return len(parked)

    def cancel(self, scene_id: str, shot_id: str | None = None) -> dict[str, int]:
        """Cancel a scene or one shot: waiting shots are dropped at once (their chord slots
        filled with a cancelled record), bound ones end when their task starts, running
        ones are interrupted on their node by the render's guard within a second."""
        from farm.shots import cancelled

        state = self.rt.state
        if shot_id is None:
            state.update_scene(scene_id, "scene_cancel", cancel="1")
            targets = [s for s in state.shots(scene_id)]
        else:
            shot = state.shot(scene_id, shot_id)
            if not shot:
                from farm.errors import InvalidInput

                raise InvalidInput(f"scene {scene_id!r} has no shot {shot_id!r}")
            state.update_shot(scene_id, shot_id, "shot_cancel", cancel="1")
            targets = [shot]
        counts = {"dropped": 0, "interrupting": 0, "over": 0}
        for shot in targets:
            key = shot_key(scene_id, shot["id"])
            if shot.get("state") in TERMINAL_SHOT:
                counts["over"] += 1
                continue
            parked = self.r.hdel(self.k("parked", scene_id), key)
            if parked or self.unwait(scene_id, shot["id"]):
                record = cancelled(self.rt, scene_id, shot["id"], None)
                self.close(scene_id, shot["id"], record)
                counts["dropped"] += 1
            else:
                counts["interrupting"] += 1
        return counts

    # -- dispatching --------------------------------------------------------------------
    def dispatch(self) -> list[Assignment]:
        """Bind what can be bound now. Only one process dispatches at a time; a call that
        finds the lock taken marks the backlog dirty, and the holder runs once more."""
        lock, dirty = self.k("dispatch", "lock"), self.k("dispatch", "dirty")
        token = uuid.uuid4().hex
        done: list[Assignment] = []
        self.r.set(dirty, "1")
        while self.r.get(dirty):
            if not self.r.set(lock, token, nx=True, px=LOCK_MS):
                return done  # the holder will see the dirty mark
            try:
                while self.r.delete(dirty):
                    done += self._dispatch_once()
            finally:
                if self.r.get(lock) == token:
                    self.r.delete(lock)
        return done

    def _dispatch_once(self) -> list[Assignment]:
        groups = self._groups()
        if not groups:
            return []
        nodes = self._loads()
        naive = self.s.placement == "naive"
        room = -1 if naive else sum(max(0, DEPTH - n.bound) for n in nodes if n.info.alive)
        if room == 0:
            return []
        pipe = self.r.pipeline()
        for g in groups:
            pipe.zrange(self.k("wait", g.id), 0, room - 1 if room > 0 else -1, withscores=True)
            pipe.zcard(self.k("wait", g.id))
        replies = pipe.execute()
        for g, heads, waiting in zip(groups, replies[::2], replies[1::2], strict=True):
            g.shots = [(sc, key) for key, sc in heads]
            g.waiting = waiting
        scenes = {key.split("/", 1)[0] for g in groups for _, key in g.shots}
        blocked = self._blocklisted(scenes)
        for node in nodes:
            node.blocked = frozenset(s for s, names in blocked.items() if node.info.name in names)
        if naive:
            turn = int(self.r.get(self.k("dispatch", "turn")) or 0)
            chosen, turn = assign_naive(groups, nodes, turn)
            self.r.set(self.k("dispatch", "turn"), turn)
        else:
            chosen = assign(groups, nodes)
        out = []
        for a in chosen:
            if self.publish(a):
                out.append(a)
        return out

    def _groups(self) -> list[Group]:
        raw = self.r.hgetall(self.k("groups"))
        groups = []
        for gid, text in raw.items():
            needs = json.loads(text)
            groups.append(Group(gid, tuple(Job.from_dict(v) for v in needs["variants"]), [],
                                needs.get("pin"), frozenset(needs.get("exclude", ()))))  # fmt: skip
        return groups

    def _loads(self) -> list[NodeLoad]:
        infos = self.rt.registry.infos()
        pipe = self.r.pipeline()
        for info in infos:
            pipe.hlen(self.k("bound", info.name))
            pipe.hget(self.rt.registry.key(info.name), "model")
        replies = pipe.execute()
        return [
            NodeLoad(info, int(replies[2 * i]), replies[2 * i + 1] or "")
            for i, info in enumerate(infos)
        ]

    def _blocklisted(self, scenes: set[str]) -> dict[str, set[str]]:
        pipe = self.r.pipeline()
        for scene_id in scenes:
            pipe.hgetall(self.k("blocklist", scene_id))
        limit = self.s.blocklist_after
        return {
            scene_id: {n for n, c in counts.items() if int(c) >= limit}
            for scene_id, counts in zip(scenes, pipe.execute(), strict=True)
        }

    def publish(self, a: Assignment) -> bool:
        """Bind the shot of ``a`` to its node and publish its slot there."""
        scene_id, shot_id = a.key.split("/", 1)
        if not self.r.zrem(self.k("wait", a.group), a.key):
            return False  # taken meanwhile (cancelled)
        state = self.rt.state
        shot = state.shot(scene_id, shot_id)
        scene = self.r.hmget(state.scene_key(scene_id), ["chord_id", "chord", "state"])
        from farm.shots import rung_of

        job = rung_of(self.rt, scene_id, shot).variants[a.variant]
        attempt = int(shot.get("attempt") or 0) + 1
        job = replace(job, node=a.node, attempt=attempt, take=int(shot.get("take") or 0))
        token = uuid.uuid4().hex
        pipe = self.r.pipeline()
        pipe.hset(state.shot_key(scene_id, shot_id),
                  mapping={"binding": token, "job": json.dumps(job.to_dict()), "node": a.node,
                           "attempt": str(attempt), "kind": job.kind})  # fmt: skip
        pipe.hset(self.k("bound", a.node), a.key, token)
        pipe.hset(self.rt.registry.key(a.node), "model", job.model)
        pipe.execute()
        state.event(scene_id, "shot_bound", shot=shot_id, node=a.node, attempt=attempt)
        name = "farm.fallback" if attempt > 1 else f"farm.{job.kind}"
        self._send(name, scene_id, shot_id, token, shot, scene, node_queue(a.node), job.priority)
        return True

    def _send(self, name, scene_id, shot_id, token, shot, scene, queue, priority) -> None:
        self._fill_slot(name, (scene_id, shot_id, token), shot, scene, queue,
                        priority=9 - max(0, min(9, priority)))  # fmt: skip

    def close(self, scene_id: str, shot_id: str, record: dict[str, Any]) -> None:
        """Fill a shot's chord slot without rendering (cancelled, failed while waiting): a
        ``farm.close_shot`` task on the CPU queue returns ``record``."""
        self._fill_cpu_slot("farm.close_shot", (record,), scene_id, shot_id)

    def score(self, scene_id: str, shot_id: str, token: str) -> None:
        """Fill a shot's chord slot with ``farm.score_shot`` on the CPU queue: the quality
        gate scores the take the shot's ``scoring`` token names (:mod:`farm.gate`)."""
        self._fill_cpu_slot("farm.score_shot", (scene_id, shot_id, token), scene_id, shot_id)

    def _fill_cpu_slot(self, name: str, args: tuple, scene_id: str, shot_id: str) -> None:
        """Publish CPU task ``name`` into the shot's chord slot."""
        state = self.rt.state
        shot = state.shot(scene_id, shot_id)
        scene = self.r.hmget(state.scene_key(scene_id), ["chord_id", "chord", "state"])
        self._fill_slot(name, args, shot, scene, self.s.cpu_queue)

    def _fill_slot(self, name, args, shot, scene, queue, **options) -> None:
        """Publish task ``name`` into the shot's chord slot (its task id, group, index)."""
        chord_id, chord_body, _ = scene
        result = self.app.send_task(
            name, args=args, task_id=shot["task_id"], group_id=chord_id,
            group_index=int(shot["slot"]), chord=json.loads(chord_body), queue=queue, **options,
        )  # fmt: skip
        _unsubscribe(self.app, [result.id])  # publishing subscribed this process to it

    # -- bound shots ----------------------------------------------------------------------
    def release(self, scene_id: str, shot_id: str, node: str, token: str) -> None:
        """The shot no longer occupies ``node`` (if it still holds this binding there)."""
        key, bound = shot_key(scene_id, shot_id), self.k("bound", node)
        if self.r.hget(bound, key) == token:
            self.r.hdel(bound, key)

    def blocklisted(self, scene_id: str, node: str) -> bool:
        """Whether ``node`` failed FARM_BLOCKLIST_AFTER shots of ``scene_id``."""
        failures = int(self.r.hget(self.k("blocklist", scene_id), node) or 0)
        return failures >= self.s.blocklist_after

    def count_failure(self, scene_id: str, node: str) -> int:
        """One more failed shot of ``scene_id`` on ``node``; returns the count."""
        return int(self.r.hincrby(self.k("blocklist", scene_id), node, 1))

    # -- housekeeping (every heartbeat) ---------------------------------------------------
    def tick(self) -> None:
        """Take shots back from dead nodes, fail shots no node can take, run the watchdog,
        then dispatch."""
        for record in self.rt.registry.records():
            if not record["alive"]:
                self._reclaim(record)
        self._expire_waiting()
        self._watchdog()
        self.dispatch()

    def _reclaim(self, node: dict[str, Any]) -> None:
        """Shots bound to a dead node whose renderer holds no lease go back to the backlog,
        with that node excluded, as a new attempt."""
        from farm.shots import requeue_from_dead_node

        for key, token in self.r.hgetall(self.k("bound", node["name"])).items():
            scene_id, shot_id = key.split("/", 1)
            if self.r.exists(self.k("lease", scene_id, shot_id)):
                continue  # its renderer lives and will report what happened
            if not self.r.hdel(self.k("bound", node["name"]), key):
                continue  # another dispatcher took it back
            if not requeue_from_dead_node(self.rt, self, scene_id, shot_id, token, node):
                self.r.hset(self.k("bound", node["name"]), key, token)  # still stopping there

    def _expire_waiting(self) -> None:
        from farm.shots import fail_waiting

        nodes = self.rt.registry.infos()
        now = time.time()
        for group in self._groups():
            if any(n.alive and any(can_run(n, v) for v in group.variants) for n in nodes):
                continue
            limit = now - self.s.wait_timeout
            for key, sc in self.r.zrange(self.k("wait", group.id), 0, -1, withscores=True):
                if sc % CLASS_SPAN < limit:
                    scene_id, shot_id = key.split("/", 1)
                    if self.r.zrem(self.k("wait", group.id), key):
                        fail_waiting(self.rt, self, scene_id, shot_id, group)

    def _watchdog(self) -> None:
        from farm.shots import finish_scene

        state = self.rt.state
        for info in state.list_scenes(limit=200):
            if info["state"] in TERMINAL_SCENE or info["state"] in (
                SceneState.ASSEMBLING, SceneState.SCORING):  # fmt: skip
                continue
            scene = state.scene(info["id"])
            shots = state.shots(info["id"])
            if not shots or any(s.get("state") not in TERMINAL_SHOT for s in shots):
                continue
            if time.time() - max(s.get("updated", 0.0) for s in shots) < WATCHDOG_GRACE:
                continue
            if self.r.set(self.k("watchdog", info["id"]), "1", nx=True, ex=3600):
                log.warning("scene %s: every shot is over but it was not assembled; "
                            "assembling it now", info["id"])  # fmt: skip
                finish_scene(self.rt, scene["id"])


def _unsubscribe(app: Celery, task_ids: Sequence[str]) -> None:
    """Freezing a chord subscribes this process to its header results; progress is read
    from the farm state, so drop them now, while Redis is up (not at interpreter exit)."""
    backend = app.backend
    pending = getattr(backend, "_pending_results", None)
    for task_id in task_ids:
        results = []
        for mapping in pending or ():  # celery 5.7: task id -> {id(result): result}
            waiting = mapping.get(task_id)
            results += list(waiting.values()) if isinstance(waiting, Mapping) else [waiting]
        with contextlib.suppress(Exception):  # not subscribed
            for result in filter(None, results):
                backend.remove_pending_result(result)
            if not any(results):
                backend.result_consumer.cancel_for(task_id)
