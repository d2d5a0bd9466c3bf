"""The timeout checker: every state that is not over has an owner and a deadline, and this
checker enforces them (Flamenco's ``timeout_checker`` is the model). It runs in every
farm worker, GPU and CPU alike (:mod:`farm.worker`), every ``FARM_HEARTBEAT`` seconds,
one process at a time through a fenced lock; every change it makes is a fenced
transition of :mod:`farm.lifecycle`, so it may race a living owner and lose, never win
wrongly.

===========================  ===========================  ===========================================
state                        owner                        past its deadline
===========================  ===========================  ===========================================
shot queued                  the dispatcher               no live node could take it for
                                                          ``FARM_WAIT_TIMEOUT``: failed
shot bound                   its task in the node queue   its node died: back to the backlog (or, if
                                                          the node had started it, as for running);
                                                          unstarted for ``FARM_START_TIMEOUT`` with
                                                          the queue empty: published again
shot running                 its renderer (the lease)     lease lapsed, node alive: published again
                                                          on the node, which follows the node's job;
                                                          node dead: the job is cancelled on the node
                                                          (its outputs collected if it finished), and
                                                          a new attempt waits for another node
shot scoring                 its scoring task (lease)     no lease, CPU queue empty for
                                                          ``FARM_START_TIMEOUT``: scored again
scene, every shot over       the chord body               ``WATCHDOG_GRACE``: the body published again
scene assembling / scoring   the stage's task (lease)     lease lapsed: tried once more, then failed
scene not fully enqueued     the enqueuer (its lease)     lease lapsed: the enqueue is finished
scene over                   nobody                       ``FARM_RETENTION``: its keys are deleted
a node slot                  the shot bound there         the shot is not bound or running there
                                                          with that token: freed
===========================  ===========================  ===========================================

Deadlines that rest on silence (a missed heartbeat, a lapsed lease) only count while
this process could reach Redis itself (:class:`Contact`): after a Redis outage or
restart (a call that failed or blocked), nodes and renderers get ``FARM_NODE_TTL`` /
``FARM_LEASE_TTL`` to show up again before anything is declared dead, so an outage is
never mistaken for a farm of dead nodes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import redis
from celery import Celery

from farm import canvas, lifecycle, telemetry
from farm.assembly import publish_stage, stage_failed
from farm.backends import make_backend
from farm.dispatch import Dispatcher, backlog_entry, cancelled_record, rung_of
from farm.errors import FarmError
from farm.keys import member, split
from farm.lifecycle import SceneState, ShotState
from farm.planning import Job, Rung
from farm.runtime import Runtime
from farm.scheduler import CLASS_SPAN, able_for
from farm.shots import attempt_dir, attempt_entry
from farm.state import _decode

log = logging.getLogger(__name__)
T = TypeVar("T")

#: seconds a scene whose shots are all over may wait for its chord body before it is
#: published again
WATCHDOG_GRACE = 30.0
#: a Redis round trip slower than this means Redis was away (the client retried)
SLOW_CONTACT = 1.0
LOCK_SECONDS = 60.0
#: scenes deleted per tick once their retention ran out
RETENTION_BATCH = 100


class Contact:
    """This process's own view of Redis: since when it has reached Redis without a break.
    A break is a failed call, or a call that blocked (the client retried through an
    outage or a restart); silence of others (missed beats, lapsed leases) counts only over
    the time since."""

    def __init__(self) -> None:
        self.since: float | None = None

    def read(self, call: Callable[[], T]) -> T:
        """``call()`` (a read from Redis), noting a break when it fails or blocks."""
        started = time.monotonic()
        try:
            value = call()
        except (redis.RedisError, OSError):
            self.since = None
            raise
        if self.since is None or time.monotonic() - started > SLOW_CONTACT:
            self.since = time.time()
        return value

    def check(self, client: redis.Redis) -> bool:
        """Talk to Redis now; False when it cannot be reached."""
        try:
            self.read(client.ping)
        except (redis.RedisError, OSError):
            return False
        return True

    def lost(self) -> None:
        self.since = None

    def judges(self, seconds: float) -> bool:
        """Whether this process has reached Redis for ``seconds`` without a break."""
        return self.since is not None and time.time() - self.since >= seconds


class Checker:
    """One per farm worker process; :meth:`tick` every heartbeat."""

    def __init__(self, rt: Runtime, app: Celery) -> None:
        self.rt, self.app = rt, app
        self.r, self.s, self.keys = rt.redis, rt.settings, rt.settings.keys
        self.contact = Contact()
        self.d = Dispatcher(rt, app)

    def tick(self) -> bool:
        """Check every deadline once, if no other process does it now; False when this
        process did not check (Redis away, or the lock taken)."""
        if not self.contact.check(self.r):
            return False
        lock = lifecycle.Lock(self.rt, self.keys.checker_lock(), LOCK_SECONDS)
        if not lock.acquire():
            return False
        try:
            nodes = {r["name"]: r for r in self.contact.read(self.rt.registry.records)}
            self.shots(nodes)
            lock.extend()
            self.waiting()
            self.scenes()
            lock.extend()
            self.slots(nodes)
            self.retention()
        except (redis.ConnectionError, redis.TimeoutError):
            self.contact.lost()
            raise
        finally:
            lock.release()
        return True

    # -- nodes --------------------------------------------------------------------------
    def dead(self, node: dict[str, Any] | None) -> bool:
        """Whether ``node`` counts as dead: its worker says its server does not answer, or
        it missed its beats for FARM_NODE_TTL while this process could reach Redis."""
        if node is None:
            return self.contact.judges(self.s.node_ttl)
        if node["alive"]:
            return False
        if node["age"] <= self.s.node_ttl:
            return True  # its worker beats, and says its server does not answer
        return self.contact.judges(self.s.node_ttl)

    # -- shots --------------------------------------------------------------------------
    def shots(self, nodes: dict[str, dict[str, Any]]) -> None:
        members = self.r.zrange(self.keys.active(), 0, -1)
        if not members:
            return
        fields = ["state", "binding", "scoring", "node", "queue", "since", "on_node", "job",
                  "stopping", "rung", "id", "primary_error", "used_fallback"]  # fmt: skip
        pipe = self.r.pipeline(transaction=False)
        for m in members:
            pipe.hmget(self.keys.shot(*split(m)), fields)
            pipe.exists(self.keys.lease(*split(m)))
        replies = self.contact.read(pipe.execute)
        depth: dict[str, int] = {}
        now = time.time()
        for m, raw, leased in zip(members, replies[::2], replies[1::2], strict=True):
            shot = {f: None for f in fields}
            shot.update(_decode({f: v for f, v in zip(fields, raw, strict=True) if v is not None}))
            scene_id, shot_id = split(m)
            if shot["state"] not in lifecycle.ACTIVE_SHOT:
                self.r.zrem(self.keys.active(), m)  # its scene was deleted meanwhile
                continue
            if leased:
                continue  # its owner lives
            shot.update(id=shot_id, since=shot["since"] or 0.0)
            try:
                if shot["state"] == ShotState.SCORING:
                    self._scoring(scene_id, shot, now, depth)
                elif shot["state"] == ShotState.BOUND:
                    self._bound(scene_id, shot, nodes, now, depth)
                else:
                    self._running(scene_id, shot, nodes)
            except FarmError as exc:
                log.warning("checking shot %s/%s: %s", scene_id, shot_id, exc)
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception:  # one bad record must not stop the checks of every other
                log.exception("checking shot %s/%s failed", scene_id, shot_id)

    def _depth(self, queue: str, depth: dict[str, int]) -> int:
        if queue not in depth:
            depth[queue] = canvas.queue_depth(self.r, self.s, queue)
        return depth[queue]

    def _unstarted(self, since: float, queue: str, now: float, depth: dict[str, int]) -> bool:
        """A task published at ``since`` on ``queue`` is lost: it did not start within
        FARM_START_TIMEOUT although its queue is empty (a worker holding it died), or
        within FARM_RENDER_TIME_LIMIT at all."""
        waited = now - since
        if waited > self.s.render_time_limit:
            return True
        return waited > self.s.start_timeout and self._depth(queue, depth) == 0

    def _scoring(self, scene_id: str, shot: dict[str, Any], now: float, depth) -> None:
        if not self.contact.judges(self.s.lease_ttl):
            return
        if not self._unstarted(shot["since"], self.s.cpu_queue, now, depth):
            return
        token = lifecycle.new_token()
        if lifecycle.rescore(self.rt, scene_id, shot["id"], shot["scoring"] or "", token):
            log.warning("shot %s/%s: its scoring task was lost; scoring it again", scene_id,
                        shot["id"])  # fmt: skip
            self.d.score(scene_id, shot["id"], token)

    def _bound(self, scene_id: str, shot: dict[str, Any], nodes, now: float, depth) -> None:
        node_name, queue = shot["node"] or "", shot["queue"] or ""
        node = nodes.get(node_name)
        if queue != self.s.cpu_queue and self.dead(node):
            if shot["on_node"] == "1":
                self._off_node(scene_id, shot, node)
            else:
                self._unbind(scene_id, shot, node_name)
            return
        if self.contact.judges(self.s.lease_ttl) and self._unstarted(shot["since"], queue, now,
                                                                      depth):  # fmt: skip
            self._rebind(scene_id, shot, "its delivery was lost")

    def _running(self, scene_id: str, shot: dict[str, Any], nodes) -> None:
        if not self.contact.judges(self.s.lease_ttl):
            return
        node = nodes.get(shot["node"] or "")
        if self.dead(node):
            self._off_node(scene_id, shot, node)
        else:
            self._rebind(scene_id, shot, "its renderer stopped")

    def _rebind(self, scene_id: str, shot: dict[str, Any], why: str) -> None:
        """Publish the shot's attempt again to the same queue (a new binding): the new
        delivery follows the node's job, or starts it if the node never got it."""
        job = Job.from_dict(shot["job"])
        token = lifecycle.new_token()
        queue = shot["queue"] or ""
        if not lifecycle.rebind(self.rt, scene_id, shot["id"], shot["binding"] or "", token,
                                job.node or "", queue, why=why):  # fmt: skip
            return
        log.warning("shot %s/%s on %s: %s; published again", scene_id, shot["id"], job.node, why)
        if queue == self.s.cpu_queue:
            self.d.collect(scene_id, shot["id"], token)
        else:
            self.d.send_render(scene_id, shot["id"], token, job, queue)

    def _unbind(self, scene_id: str, shot: dict[str, Any], node: str) -> None:
        """A shot bound to a dead node that never started goes back as it was (its attempt
        not spent), free to go to any other node."""
        job = Job.from_dict(shot["job"])
        record = {"id": shot["id"], "rung": shot["rung"]}
        rung = _without_pin(rung_of(self.rt, scene_id, record), node)
        backlog, stored = backlog_entry(rung, job.kind, job.priority)
        out = lifecycle.unbind(self.rt, scene_id, shot["id"], shot["binding"] or "", node, backlog,
                               stored, max(0, job.attempt - 1), why=f"node {node} is down")  # fmt: skip
        if out.state == ShotState.CANCELLED:
            self.d.close(scene_id, shot["id"], cancelled_record(scene_id, shot["id"], job))

    def _off_node(self, scene_id: str, shot: dict[str, Any], node: dict[str, Any] | None) -> None:
        """The node of a started attempt is dead: its job must not render for nobody nor
        beside the next attempt. Ask the node: a job still there is cancelled (and the
        shot moves once it is off, or after FARM_NODE_IDLE_TIMEOUT); a finished one is
        adopted (its outputs collected on the CPU queue); otherwise the shot moves on."""
        job = Job.from_dict(shot["job"])
        out_dir = attempt_dir(self.s.storage, job)
        where = "unreachable"
        if node is not None:
            try:
                backend = make_backend(node["kind"], node["url"], self.s)
                where = backend.find(job, out_dir)
                if where in ("pending", "running"):
                    since = float(shot["stopping"] or 0)
                    if not since:
                        how = backend.cancel(job, out_dir)
                        self.rt.state.update_shot(scene_id, shot["id"], stopping=time.time())
                        log.info("shot %s/%s: job on dead node %s: %s", scene_id, shot["id"],
                                 job.node, how)  # fmt: skip
                        return
                    if time.time() - since <= self.s.node_idle_timeout:
                        return  # not off yet: look again next tick
            except FarmError as exc:
                where = "unreachable"
                log.info("shot %s/%s: node %s does not answer: %s", scene_id, shot["id"],
                         job.node, exc)  # fmt: skip
        if where == "succeeded":
            token = lifecycle.new_token()
            if lifecycle.rebind(self.rt, scene_id, shot["id"], shot["binding"] or "", token,
                                job.node or "", self.s.cpu_queue,
                                why=f"node {job.node} is down; its finished job is collected"):  # fmt: skip
                self.d.collect(scene_id, shot["id"], token)
            return
        self._lost(scene_id, shot, job)

    def _lost(self, scene_id: str, shot: dict[str, Any], job: Job) -> None:
        reason = f"node {job.node} stopped beating"
        record = {"id": shot["id"], "rung": shot["rung"]}
        rung = _without_pin(rung_of(self.rt, scene_id, record), job.node or "")
        backlog, stored = backlog_entry(rung, job.kind, job.priority)
        entry = {**attempt_entry(job, "lost", 0.0), "error_kind": "node_unavailable",
                 "error": reason}  # fmt: skip
        out = lifecycle.lost(self.rt, scene_id, shot["id"], shot["binding"] or "", job.node or "",
                             backlog, stored, logged=entry, error=reason, used_fallback=True,
                             primary_error=shot["primary_error"] or reason,
                             fallback=rung.step)  # fmt: skip
        if not out:
            return
        log.warning("shot %s/%s: %s; attempt %d is lost, the shot waits for another node",
                    scene_id, shot["id"], reason, job.attempt)  # fmt: skip
        telemetry.record_fallback(self.r, self.s, "node_unavailable")
        if out.state == ShotState.CANCELLED:
            self.d.close(scene_id, shot["id"], cancelled_record(scene_id, shot["id"], job))

    # -- waiting shots ------------------------------------------------------------------
    def waiting(self) -> None:
        """Fail shots that waited FARM_WAIT_TIMEOUT with no live node able to take them:
        none can render the group, or every one that can is blocklisted for the shot's
        scene."""
        if not self.contact.judges(self.s.node_ttl):
            return
        infos = [
            n
            for n in self.rt.registry.infos()
            if n.alive and not (n.cloud and self.s.burst == "never")  # it takes nothing
        ]
        limit = time.time() - self.s.wait_timeout
        for group in self.d._groups():
            expired = [split(key) for key, sc in self.r.zrange(self.keys.wait(group.id), 0, -1,
                                                                withscores=True)
                       if sc % CLASS_SPAN < limit]  # fmt: skip
            if not expired:
                continue
            able = {n.name for n in infos if able_for(group, n) is not None}
            models = " or ".join(dict.fromkeys(v.model for v in group.variants))
            blocked = self.d._blocklisted({scene_id for scene_id, _ in expired}) if able else {}
            for scene_id, shot_id in expired:
                if not able:
                    error = (f"no_capable_node: no live node could render {models} for "
                             f"{self.s.wait_timeout:g}s")  # fmt: skip
                elif able <= blocked[scene_id]:
                    error = (f"no_capable_node: every live node that can render {models} "
                             f"({', '.join(sorted(able))}) is blocked for this scene after "
                             f"{self.s.blocklist_after} failed shots, for "
                             f"{self.s.wait_timeout:g}s; `farm retry` clears the blocks")  # fmt: skip
                else:
                    continue
                if lifecycle.fail(self.rt, scene_id, shot_id, error=error, group=group.id):
                    telemetry.record_shot_finished(self.r, self.s, ShotState.FAILED)
                    self.d.close(scene_id, shot_id, {"scene_id": scene_id, "shot_id": shot_id,
                                                     "state": "failed", "error": error})  # fmt: skip

    # -- scenes -------------------------------------------------------------------------
    def scenes(self) -> None:
        ids = sorted(self.r.smembers(self.keys.open_scenes()))
        if not ids:
            return
        fields = ["state", "run", "open", "enqueued", "stage_sent", "shots_over_at", "since"]
        pipe = self.r.pipeline(transaction=False)
        for scene_id in ids:
            pipe.hmget(self.keys.scene(scene_id), fields)
            pipe.exists(self.keys.scene_lease(scene_id))
            pipe.exists(self.keys.enqueue_lease(scene_id))
        replies = self.contact.read(pipe.execute)
        now, depth = time.time(), {}
        for i, scene_id in enumerate(ids):
            raw, leased, enqueuing = replies[3 * i : 3 * i + 3]
            scene = dict(zip(fields, raw, strict=True))
            if scene["state"] is None:
                self.r.srem(self.keys.open_scenes(), scene_id)  # deleted meanwhile
                continue
            try:
                self._scene(scene_id, scene, bool(leased), bool(enqueuing), now, depth)
            except FarmError as exc:
                log.warning("checking scene %s: %s", scene_id, exc)
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception:  # one bad record must not stop the checks of every other
                log.exception("checking scene %s failed", scene_id)

    def _scene(self, scene_id: str, scene: dict[str, Any], leased: bool, enqueuing: bool,
               now: float, depth: dict[str, int]) -> None:  # fmt: skip
        from farm.submit import resume

        state, run = scene["state"], int(scene["run"] or 1)
        sent = float(scene["stage_sent"] or 0)
        if scene["enqueued"] != "1":
            if not enqueuing and resume(self.rt, scene_id):
                log.warning("scene %s: its enqueue was left unfinished; finished it", scene_id)
            return
        if state in (SceneState.QUEUED, SceneState.RENDERING):
            over_at = max(float(scene["shots_over_at"] or 0), sent)
            if int(scene["open"] or 0) <= 0 and now - over_at > WATCHDOG_GRACE and (
                    now - sent > self.s.render_time_limit
                    or self._depth(self.s.cpu_queue, depth) == 0):  # fmt: skip
                log.warning("scene %s: every shot is over but it was not assembled; "
                            "assembling it now", scene_id)  # fmt: skip
                publish_stage(self.rt, scene_id, SceneState.ASSEMBLING, run)
            return
        stalled = state in (SceneState.ASSEMBLING, SceneState.SCORING) and not leased
        if (stalled and self.contact.judges(self.s.lease_ttl)
                and self._unstarted(sent, self.s.cpu_queue, now, depth)):  # fmt: skip
            log.warning("scene %s: its %s task died or was lost", scene_id, state)
            stage_failed(self.rt, scene_id, state, run, None,
                         f"its {state} task died or its message was lost", countdown=0)  # fmt: skip

    def retention(self) -> None:
        """Delete the scenes that ended more than FARM_RETENTION seconds ago."""
        old = self.r.zrangebyscore(self.keys.over_scenes(), "-inf",
                                   time.time() - self.s.retention, start=0,
                                   num=RETENTION_BATCH)  # fmt: skip
        for scene_id in old:
            log.info("scene %s ended more than FARM_RETENTION ago; deleting its records",
                     scene_id)  # fmt: skip
            self.rt.state.delete_scene(scene_id)

    # -- node slots ---------------------------------------------------------------------
    def slots(self, nodes: dict[str, dict[str, Any]]) -> None:
        """Free every slot whose shot is not bound or running there with its token."""
        names = list(nodes)
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.bound(name))
        held = [(name, m, token) for name, slots in zip(names, pipe.execute(), strict=True)
                for m, token in slots.items()]  # fmt: skip
        if not held:
            return
        pipe = self.r.pipeline(transaction=False)
        for _, m, _ in held:
            pipe.hmget(self.keys.shot(*split(m)), ["state", "binding", "node"])
        for (name, m, token), (state, binding, node) in zip(held, pipe.execute(), strict=True):
            if binding == token and node == name and state in (ShotState.BOUND, ShotState.RUNNING):
                continue
            if lifecycle.release_slot(self.rt, name, *split(m), token):
                log.warning("node %s: freed the slot of %s (it is %s there no more)", name, m,
                            state or "gone")  # fmt: skip


def _without_pin(rung: Rung, node: str) -> Rung:
    """``rung`` free to go to any node but ``node`` if it was pinned there (a WanGP
    lower-memory retry), as a step "another node"."""
    return replace(rung, pin=None if rung.pin == node else rung.pin, step="another node")


__all__ = ["Checker", "Contact", "member"]
