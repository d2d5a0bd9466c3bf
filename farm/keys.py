"""Every Redis key the farm uses, in one place: what each holds and how long it lives.

All keys start with the settings' prefix (``FARM_PREFIX``, ``farm``). Celery's own keys
(queues ``node.NAME`` and ``cpu`` with their priority lists, ``unacked``, results and
chord counters) are Celery's: :mod:`farm.canvas` is the only module that knows their
shape. Lifetimes:

- *scene-scoped* keys (scene, shots, events, previews, leases, backlog entries,
  blocklist) are deleted together by the timeout checker ``FARM_RETENTION`` seconds after
  the scene ended (:func:`scene_keys`); `farm retry` and ``--replace`` keep them alive;
- leases and locks expire by themselves (their TTL is set on every write);
- node records live while the node is registered; the render cache until ``farm cache
  --clear``; submission statuses ``FARM_SUBMISSION_TTL`` after their last change; the
  streams are capped (events ~2,000 per scene, dead letters ~1,000).

==============================  =======  ===============================================
key                             type     content
==============================  =======  ===============================================
scenes                          zset     every scene id, by creation time
scenes:open                     set      scenes not yet over (the checker's worklist)
scenes:over                     zset     scenes over, by the time they ended (retention)
scene:{scene}                   hash     the scene record (:mod:`farm.state`)
shot:{scene}:{shot}             hash     a shot record
shots:active                    zset     "scene/shot" of shots bound, running or scoring,
                                         by the time they entered that state
events:{scene}                  stream   the scene's events
preview:{scene}:{shot}          hash     the newest preview frame of a running shot
lease:{scene}:{shot}            string   the shot's owner (renderer or scorer): its token
lease:scene:{scene}             string   the scene's assembler or scorer: its token
lease:enqueue:{scene}           string   held while a scene is being enqueued
groups                          hash     backlog group id -> its needs (variants, pin...)
wait:{group}                    zset     waiting "scene/shot" by scheduler score
parked:{scene}                  hash     a paused scene's waiting shots -> [group, score]
bound:{node}                    hash     "scene/shot" -> binding token (the node's slots)
blocklist:{scene}               hash     node -> failed shots of the scene on it
dispatch:lock / :dirty / :turn  string   one dispatcher at a time; nothing missed
checker:lock                    string   one timeout checker at a time (fenced token)
nodes / node:{name}             set/hash the node registry (:mod:`farm.nodes`)
node:{name}:renders             list     the node's last render speeds
cache                           hash     the render cache (:mod:`farm.cache`)
templates                       hash     template -> {description, source}: the catalogue
                                         ingest validates against (the Blender add-on's list)
telemetry:{name}                hash     counters for the exporter (:mod:`farm.telemetry`)
spend:day:{YYYY-MM-DD}          hash     cloud spend that day (UTC): total, per node;
                                         kept SPEND_DAYS days (:mod:`farm.budget`)
spend:scene:{scene}             hash     the scene's cloud spend: total, per node,
                                         charged:{attempt} (each billed render once)
spend:node:{name}               hash     a cloud node's spend: total, gpu_seconds, work
spend:held                      hash     "scene/shot" bound to a cloud node -> the
                                         estimate it committed (until it is billed)
submissions / :dead             stream   submissions and rejected ones (:mod:`farm.ingest`)
submission:{id} / :lock         hash     a submission's decision / who decides it
web:session:{digest}            hash     a `farm web` login session (user, CSRF token), by
                                         the SHA-256 of its cookie; FARM_WEB_SESSION_TTL
==============================  =======  ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass


def member(scene_id: str, shot_id: str) -> str:
    """A shot as a member of the backlog, slot and active sets: ``scene/shot``."""
    return f"{scene_id}/{shot_id}"


def split(value: str) -> tuple[str, str]:
    """``scene/shot`` back into its parts."""
    scene_id, _, shot_id = value.partition("/")
    return scene_id, shot_id


@dataclass(frozen=True)
class Keys:
    """The farm's key names under ``prefix``."""

    prefix: str = "farm"

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # scenes and shots
    def scenes(self) -> str:
        return self._k("scenes")

    def open_scenes(self) -> str:
        return self._k("scenes", "open")

    def over_scenes(self) -> str:
        return self._k("scenes", "over")

    def scene(self, scene_id: str) -> str:
        return self._k("scene", scene_id)

    def shot(self, scene_id: str, shot_id: str) -> str:
        return self._k("shot", scene_id, shot_id)

    def active(self) -> str:
        return self._k("shots", "active")

    def events(self, scene_id: str) -> str:
        return self._k("events", scene_id)

    def preview(self, scene_id: str, shot_id: str) -> str:
        return self._k("preview", scene_id, shot_id)

    # owners
    def lease(self, scene_id: str, shot_id: str) -> str:
        return self._k("lease", scene_id, shot_id)

    def scene_lease(self, scene_id: str) -> str:
        return self._k("lease", "scene", scene_id)

    def enqueue_lease(self, scene_id: str) -> str:
        return self._k("lease", "enqueue", scene_id)

    # the backlog and the nodes' slots
    def groups(self) -> str:
        return self._k("groups")

    def wait(self, group: str) -> str:
        return self._k("wait", group)

    def parked(self, scene_id: str) -> str:
        return self._k("parked", scene_id)

    def bound(self, node: str) -> str:
        return self._k("bound", node)

    def blocklist(self, scene_id: str) -> str:
        return self._k("blocklist", scene_id)

    def dispatch(self, what: str) -> str:
        """``lock``, ``dirty`` or ``turn`` of the dispatcher."""
        return self._k("dispatch", what)

    def checker_lock(self) -> str:
        return self._k("checker", "lock")

    # nodes
    def nodes(self) -> str:
        return self._k("nodes")

    def node(self, name: str) -> str:
        return self._k("node", name)

    def node_renders(self, name: str) -> str:
        return self._k("node", name, "renders")

    def node_strays(self, name: str) -> str:
        """Jobs a renderer gave up on while the node did not answer: cancelled on it once
        it answers again (:meth:`farm.worker.Heartbeat.cancel_strays`)."""
        return self._k("node", name, "strays")

    # the rest
    def cache(self) -> str:
        return self._k("cache")

    def templates(self) -> str:
        return self._k("templates")

    def telemetry(self, name: str) -> str:
        return self._k("telemetry", name)

    # cloud spend (farm.budget)
    def spend_day(self, day: str) -> str:
        return self._k("spend", "day", day)

    def spend_scene(self, scene_id: str) -> str:
        return self._k("spend", "scene", scene_id)

    def spend_node(self, name: str) -> str:
        return self._k("spend", "node", name)

    def spend_held(self) -> str:
        return self._k("spend", "held")

    def submissions(self) -> str:
        return self._k("submissions")

    def dead_submissions(self) -> str:
        return self._k("submissions", "dead")

    def submission(self, submission_id: str) -> str:
        return self._k("submission", submission_id)

    def submission_lock(self, submission_id: str) -> str:
        return self._k("submission", submission_id, "lock")

    def web_session(self, digest: str) -> str:
        """A `farm web` session, by the SHA-256 of its cookie (:mod:`farm.web.auth`)."""
        return self._k("web", "session", digest)

    def scene_keys(self, scene_id: str, shot_ids: list[str]) -> list[str]:
        """Every key that belongs to scene ``scene_id`` alone (deleted with it)."""
        keys = [self.scene(scene_id), self.events(scene_id), self.scene_lease(scene_id),
                self.enqueue_lease(scene_id), self.parked(scene_id), self.blocklist(scene_id),
                self.spend_scene(scene_id)]  # fmt: skip
        for shot_id in shot_ids:
            keys += [self.shot(scene_id, shot_id), self.preview(scene_id, shot_id),
                     self.lease(scene_id, shot_id)]  # fmt: skip
        return keys
