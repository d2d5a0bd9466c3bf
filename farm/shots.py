"""Rendering one bound shot: the plain function behind the preview, final and fallback tasks.

:func:`run_bound` checks that the task still holds the shot's binding, takes the attempt's
lease (so a task Celery delivers twice renders once), drives the node's backend while a
guard thread renews the lease and watches for a cancel, keeps the shot record current and
decides what comes next: done, the final after a preview, the next rung of the fallback
ladder (back to the backlog), or a failure record. It never raises for a render failure,
so a scene's chord always completes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from farm import telemetry
from farm.backends import Backend, image_mime, make_backend
from farm.cache import RenderCache, place_file
from farm.dispatch import Dispatcher
from farm.errors import FarmError, JobCancelled, NodeUnavailable
from farm.planning import PERMANENT_KINDS, Job, Rung, next_rung, plan_variants
from farm.runtime import Runtime
from farm.scene import Scene, parse_scene
from farm.scheduler import Group, job_cost
from farm.state import TERMINAL_SHOT, SceneState, ShotState

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5  # seconds between progress writes to Redis
PREVIEW_EVERY = 1.0  # seconds between preview frames kept
GUARD_EVERY = 0.5  # seconds between cancel checks of a running render
#: marks the fallback ladder leaves in a job's params (planning.next_rung): not settings
LADDER_MARKS = ("reduced", "fast_tier")
#: error kinds that count against a node for the scene's blocklist
NODE_FAULTS = frozenset(
    {"node_unavailable", "timeout", "render_failed", "out_of_memory", "model_missing",
     "retryable", "bad_response", "error"}
)  # fmt: skip


def shot_dir(storage: Path, scene_id: str, shot_id: str) -> Path:
    return storage / "scenes" / scene_id / "shots" / shot_id


# -- the task body ------------------------------------------------------------------------


def run_bound(
    rt: Runtime,
    d: Dispatcher,
    scene_id: str,
    shot_id: str,
    token: str,
    backend_for: Callable[[str, str], Backend] | None = None,
) -> dict[str, Any] | None:
    """Render the shot bound with ``token``; the chord record, or None when this delivery
    must do nothing (a stale binding, a duplicate, a paused scene: the slot stays open)."""
    state = rt.state
    shot = state.shot(scene_id, shot_id)
    if not shot or shot.get("binding") != token or shot.get("state") in TERMINAL_SHOT:
        log.info("shot %s/%s: binding %s is stale or over; ignored", scene_id, shot_id, token[:8])
        return None
    job = Job.from_dict(shot["job"])
    node = job.node or ""
    flags = _flags(rt, scene_id, shot_id)
    if flags["cancel"]:
        d.release(scene_id, shot_id, node, token)
        return cancelled(rt, scene_id, shot_id, job)
    if flags["paused"] or d.blocklisted(scene_id, node):  # (bound before it was blocklisted)
        d.release(scene_id, shot_id, node, token)
        _back_to_backlog(rt, d, scene_id, shot_id, rung_of(rt, scene_id, shot))
        d.dispatch()  # the node has room again
        return None
    if not _take_lease(rt, scene_id, shot_id, token):
        return None
    try:
        return _render(rt, d, job, token, backend_for)
    finally:
        lease = rt.settings.key("lease", scene_id, shot_id)
        if rt.redis.get(lease) == token:
            rt.redis.delete(lease)
        d.release(scene_id, shot_id, node, token)
        d.dispatch()


def is_cancelled(rt: Runtime, scene_id: str, shot_id: str) -> bool:
    """Whether the shot or its scene was cancelled."""
    return _flags(rt, scene_id, shot_id)["cancel"]


def _flags(rt: Runtime, scene_id: str, shot_id: str) -> dict[str, bool]:
    scene = rt.redis.hmget(rt.state.scene_key(scene_id), ["cancel", "paused"])
    shot = rt.redis.hget(rt.state.shot_key(scene_id, shot_id), "cancel")
    return {"cancel": scene[0] == "1" or shot == "1", "paused": scene[1] == "1"}


def _take_lease(rt: Runtime, scene_id: str, shot_id: str, token: str) -> bool:
    """The attempt's lease. Held by another renderer of this binding (Celery delivered the
    task again after its worker died, or past the visibility timeout): wait for that lease
    to lapse — a live renderer renews it — or for the shot to move on."""
    key, ttl = rt.settings.key("lease", scene_id, shot_id), rt.settings.lease_ttl
    deadline = time.monotonic() + 4 * ttl
    while True:
        taken = rt.redis.set(key, token, nx=True, px=int(ttl * 1000))
        shot = rt.redis.hmget(rt.state.shot_key(scene_id, shot_id), ["binding", "state"])
        moved_on = shot[0] != token or shot[1] in TERMINAL_SHOT  # e.g. the other one ended it
        if taken and not moved_on:
            return True
        if taken:
            rt.redis.delete(key)
        if moved_on or time.monotonic() > deadline:
            log.info("shot %s/%s is rendered elsewhere; this delivery is a duplicate",
                     scene_id, shot_id)  # fmt: skip
            return False
        time.sleep(0.25)


class Guard(threading.Thread):
    """Renews the lease while the render runs and cancels the backend job when the shot
    or its scene is cancelled (checked every GUARD_EVERY seconds)."""

    def __init__(self, rt: Runtime, job: Job, token: str, backend: Backend) -> None:
        super().__init__(name=f"guard-{job.shot_id}", daemon=True)
        self.rt, self.job, self.token, self.backend = rt, job, token, backend
        self.stopped = threading.Event()
        self.cancelled = False

    def run(self) -> None:
        key = self.rt.settings.key("lease", self.job.scene_id, self.job.shot_id)
        ttl_ms = int(self.rt.settings.lease_ttl * 1000)
        renew_every = self.rt.settings.lease_ttl / 3
        renewed = time.monotonic()
        while not self.stopped.wait(GUARD_EVERY):
            try:
                if time.monotonic() - renewed >= renew_every:
                    if self.rt.redis.get(key) == self.token:
                        self.rt.redis.pexpire(key, ttl_ms)
                    renewed = time.monotonic()
                if (
                    not self.cancelled
                    and _flags(self.rt, self.job.scene_id, self.job.shot_id)["cancel"]
                ):
                    self.cancelled = True
                    how = self.backend.cancel(self.job)
                    log.info("shot %s/%s cancelled on %s: %s", self.job.scene_id,
                             self.job.shot_id, self.job.node, how)  # fmt: skip
            except Exception:  # Redis or node hiccups: try again next round
                log.exception("guard of %s/%s", self.job.scene_id, self.job.shot_id)


def _render(
    rt: Runtime,
    d: Dispatcher,
    job: Job,
    token: str,
    backend_for: Callable[[str, str], Backend] | None,
) -> dict[str, Any] | None:
    state, settings = rt.state, rt.settings
    backend_for = backend_for or (lambda kind, url: make_backend(kind, url, settings))
    if state.scene(job.scene_id).get("state") == SceneState.QUEUED:
        state.update_scene(job.scene_id, "scene_rendering", state=SceneState.RENDERING)
    state.update_shot(job.scene_id, job.shot_id, "shot_started", state=ShotState.RUNNING,
                      node=job.node, kind=job.kind, progress=0.0, started=time.time())  # fmt: skip
    folder = shot_dir(settings.storage, job.scene_id, job.shot_id)
    started = time.monotonic()
    guard = None
    try:
        node = next((r for r in rt.registry.records() if r["name"] == job.node), None)
        if node is None:
            raise NodeUnavailable(f"node {job.node!r} is not registered (is its worker running?)")
        backend = backend_for(node["kind"], node["url"])
        guard = Guard(rt, job, token, backend)
        guard.start()
        result = backend.render(_settings_only(job), folder / job.label, _progress(rt, job, folder))
    except FarmError as exc:
        if guard is not None and guard.cancelled and not isinstance(exc, JobCancelled):
            exc = JobCancelled(f"cancelled by the user ({exc})")
        return _failed(rt, d, job, exc, time.monotonic() - started)
    except Exception as exc:  # a bug must not hang the scene: record it, never retry it
        log.exception("internal error rendering %s/%s", job.scene_id, job.shot_id)
        error = FarmError(f"internal error: {exc.__class__.__name__}: {exc}")
        return _failed(rt, d, job, error, time.monotonic() - started)
    finally:
        if guard is not None:
            guard.stopped.set()
    clip = place_file(Path(result.video), folder / clip_name(job))
    seconds = round(time.monotonic() - started, 2)
    cache_key = RenderCache(rt).store(job, clip, result.backend_job_id)
    rt.registry.record_render(job.node or "", job.model, job_cost(job), seconds)
    state.log_attempt(job.scene_id, job.shot_id, {
        **_attempt(job, "done", seconds), "backend_job_id": result.backend_job_id,
        "workflow": job.workflow, "seed": job.params.get("seed"), "cache_key": cache_key,
    })  # fmt: skip
    return _rendered(rt, d, job, clip, cache_hit=False, seconds=seconds)


def clip_name(job: Job) -> str:
    """File name of ``job``'s clip in its shot folder: one per kind and take."""
    return f"{job.kind}_t{job.take}.mp4" if job.take else f"{job.kind}.mp4"


def _rendered(
    rt: Runtime, d: Dispatcher, job: Job, clip: Path, *, cache_hit: bool, seconds: float = 0.0
) -> dict[str, Any] | None:
    """``job``'s clip is ready (rendered or from the cache): hand a preview over to its
    final (None: the slot stays open for it, unless the final is cached too), or hand the
    take to the quality gate (:mod:`farm.gate`, on the CPU queue; None: the slot is
    filled by its scoring task)."""
    state = rt.state
    shot = state.shot(job.scene_id, job.shot_id)
    outputs = {**(shot.get("outputs") or {}), job.kind: str(clip)}
    if job.then_final and job.kind == "preview":
        state.update_shot(job.scene_id, job.shot_id, "shot_preview_done", outputs=outputs,
                          kind="final", progress=0.0, attempt=0)  # fmt: skip
        scene = scene_of(rt, job.scene_id)
        finals = plan_variants(scene, scene.shot(job.shot_id), "final")
        # the final of a previewed shot follows the preview's node when it can (warm cache)
        return begin(rt, d, job.scene_id, job.shot_id, "final", finals, job.priority,
                     force=_forced(rt, job.scene_id, job.shot_id))  # fmt: skip
    token = uuid.uuid4().hex
    take = {"take": job.take, "kind": job.kind, "seed": job.params.get("seed"),
            "node": job.node, "clip": str(clip), "seconds": round(seconds, 2),
            "cache_hit": cache_hit, "priority": job.priority, "backend": job.backend,
            "model": job.model, "workflow": job.workflow,
            "params": {k: v for k, v in job.params.items()
                       if isinstance(v, str | int | float | bool) and k not in LADDER_MARKS}}  # fmt: skip
    state.update_shot(job.scene_id, job.shot_id, "shot_scoring", state=ShotState.SCORING,
                      outputs=outputs, progress=1.0, scoring=token, pending_take=take,
                      cache_hit=cache_hit)  # fmt: skip
    d.score(job.scene_id, job.shot_id, token)
    return None


# -- starting a shot: the render cache, else the backlog ----------------------------------

Hit = tuple[Job, dict[str, Any]]


def begin(
    rt: Runtime,
    d: Dispatcher,
    scene_id: str,
    shot_id: str,
    kind: str,
    variants: list[Job],
    priority: int,
    *,
    force: bool = False,
    hit: Hit | None = None,
    looked: bool = False,
    step: str = "first",
) -> dict[str, Any] | None:
    """Start rendering a shot at ``kind``: served from the render cache when one of its
    ``variants`` was rendered before (unless ``force``), else put in the backlog. Returns
    the shot's chord record when it is over without rendering (every kind it needed was
    cached), else None. ``looked``: the caller looked the cache up already (``hit``);
    ``step``: what the rung is (a gate's retake: its variants carry a new seed)."""
    if not force and not looked:
        hit = RenderCache(rt).lookup([variants])[0]
    if force or hit is None:
        d.wait(kind, priority, scene_id, shot_id, Rung(tuple(variants), step=step))
        return None
    job, entry = hit
    job = replace(job, attempt=0, node=None)
    clip = place_file(Path(entry["clip"]), shot_dir(rt.settings.storage, scene_id, shot_id)
                      / clip_name(job))  # fmt: skip
    rt.state.log_attempt(scene_id, shot_id, {
        **_attempt(job, "cached", 0.0), "node": entry.get("node"), "cache_key": entry["key"],
        "source": f"{entry['scene']}/{entry['shot']}", "workflow": job.workflow,
        "seed": job.params.get("seed"),
    })  # fmt: skip
    rt.state.event(scene_id, "shot_cache_hit", shot=shot_id, kind=kind,
                   source=f"{entry['scene']}/{entry['shot']}")  # fmt: skip
    return _rendered(rt, d, job, clip, cache_hit=True)


def _forced(rt: Runtime, scene_id: str, shot_id: str) -> bool:
    """Whether the shot must be rendered even when its request is cached (``--force``,
    ``farm retry``)."""
    scene = rt.redis.hget(rt.state.scene_key(scene_id), "force")
    shot = rt.redis.hget(rt.state.shot_key(scene_id, shot_id), "force")
    return scene == "1" or shot == "1"


def _failed(
    rt: Runtime, d: Dispatcher, job: Job, exc: FarmError, seconds: float
) -> dict[str, Any] | None:
    """Record the failed attempt; put the next rung in the backlog (None: the slot stays
    open for it), or close the shot as failed or cancelled."""
    state = rt.state
    message = f"{exc.kind}: {exc}"
    log.warning("shot %s/%s attempt %d on %s failed: %s", job.scene_id, job.shot_id,
                job.attempt, job.node, message)  # fmt: skip
    state.log_attempt(job.scene_id, job.shot_id,
                      {**_attempt(job, "failed", seconds), "error_kind": exc.kind,
                       "error": str(exc)})  # fmt: skip
    if exc.kind == "cancelled":
        return cancelled(rt, job.scene_id, job.shot_id, job)
    if exc.kind in NODE_FAULTS and job.node:
        count = d.count_failure(job.scene_id, job.node)
        if count == rt.settings.blocklist_after:
            state.event(job.scene_id, "node_blocklisted", node=job.node, failures=count)
    rung = _next(rt, job, exc.kind)
    shot = state.shot(job.scene_id, job.shot_id)
    if rung is not None and not _flags(rt, job.scene_id, job.shot_id)["cancel"]:
        primary = shot.get("primary_error") or message
        state.update_shot(job.scene_id, job.shot_id, "shot_retry", state=ShotState.RETRYING,
                          error=message, used_fallback=True, primary_error=primary,
                          fallback=rung.step)  # fmt: skip
        telemetry.record_fallback(rt.redis, rt.settings, exc.kind)
        d.wait(job.kind, job.priority, job.scene_id, job.shot_id, rung)
        return None
    state.update_shot(job.scene_id, job.shot_id, "shot_failed", state=ShotState.FAILED,
                      error=message, finished=time.time())  # fmt: skip
    telemetry.record_shot_finished(rt.redis, rt.settings, ShotState.FAILED)
    return _record(job, "failed", error=message)


def _next(rt: Runtime, job: Job, error_kind: str) -> Rung | None:
    if error_kind in PERMANENT_KINDS or error_kind == "error":
        return None  # internal errors are bugs: retrying would repeat them
    state = rt.state
    shot = state.shot(job.scene_id, job.shot_id)
    scene = scene_of(rt, job.scene_id)
    current = rung_of(rt, job.scene_id, shot).variants
    fast = plan_variants(scene, scene.shot(job.shot_id), "preview")
    return next_rung(job, error_kind, current, fast, rt.registry.infos(),
                     rt.settings.max_attempts)  # fmt: skip


def _settings_only(job: Job) -> Job:
    """``job`` without the ladder's marks, which no workflow or WanGP setting takes."""
    return replace(job, params={k: v for k, v in job.params.items() if k not in LADDER_MARKS})


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
            rt.state.scene(scene_id)["spec"], check_files=False
        )
    return scene


def rung_of(rt: Runtime, scene_id: str, shot: dict[str, Any]) -> Rung:
    """The shot's current rung (``dispatch.stored_rung``): a first rung is planned again
    from the scene, the later ones are kept whole."""
    data = shot["rung"]
    if "plan" not in data:
        return Rung.from_dict(data)
    scene = scene_of(rt, scene_id)
    variants = plan_variants(scene, scene.shot(shot["id"]), data["plan"])
    return Rung(tuple(replace(v, then_final=data["then_final"]) for v in variants))


def remember(rt: Runtime, scene: Scene) -> None:
    """Keep the scene just submitted as :func:`scene_of` would parse it (this process
    plans its shots' first rungs again when it dispatches them)."""
    created = float(rt.redis.hget(rt.state.scene_key(scene.id), "created") or 0)
    _scenes[(scene.id, created)] = scene


def cancelled(rt: Runtime, scene_id: str, shot_id: str, job: Job | None) -> dict[str, Any]:
    rt.state.update_shot(scene_id, shot_id, "shot_cancelled", state=ShotState.CANCELLED,
                         error="cancelled", finished=time.time())  # fmt: skip
    telemetry.record_shot_finished(rt.redis, rt.settings, ShotState.CANCELLED)
    record = {"scene_id": scene_id, "shot_id": shot_id, "state": "cancelled"}
    return {**(_record(job, "cancelled") if job else record), "error": "cancelled"}


def _back_to_backlog(rt: Runtime, d: Dispatcher, scene_id: str, shot_id: str, rung: Rung) -> None:
    """Put a bound shot back in the backlog as it was (paused scene: the binding did not
    become an attempt)."""
    shot = rt.state.shot(scene_id, shot_id)
    rt.redis.hset(rt.state.shot_key(scene_id, shot_id), "attempt", max(0, shot["attempt"] - 1))
    job = Job.from_dict(shot["job"])
    d.wait(job.kind, job.priority, scene_id, shot_id, rung)


# -- called by the dispatcher's housekeeping ---------------------------------------------


def requeue_from_dead_node(
    rt: Runtime, d: Dispatcher, scene_id: str, shot_id: str, token: str, node: dict[str, Any]
) -> bool:
    """A shot bound to a node that stopped beating, with no live renderer: its job there
    is cancelled if the node still answers, and the shot goes back to the backlog without
    that node while it is down, as a new attempt (started ones) or as it was (queued ones).
    False while the node still runs the job it was asked to stop: call again later."""
    shot = rt.state.shot(scene_id, shot_id)
    if shot.get("binding") != token or shot.get("state") not in (
        ShotState.QUEUED,
        ShotState.RUNNING,
    ):
        return True
    job = Job.from_dict(shot["job"])
    started = shot.get("state") == ShotState.RUNNING
    reason = f"node {node['name']} stopped beating ({node.get('reason') or 'no heartbeat'})"
    if started:
        if not _off_node(rt, node, job, shot):
            return False
        rt.state.log_attempt(scene_id, shot_id, {**_attempt(job, "lost", 0.0),
                             "error_kind": "node_unavailable", "error": reason})  # fmt: skip
        telemetry.record_fallback(rt.redis, rt.settings, "node_unavailable")
    else:
        rt.redis.hset(rt.state.shot_key(scene_id, shot_id), "attempt", max(0, job.attempt - 1))
    rung = rung_of(rt, scene_id, shot)  # a dead node is no candidate; back, it may take it
    rung = Rung(rung.variants, None if rung.pin == node["name"] else rung.pin, rung.exclude,
                "another node")  # fmt: skip
    rt.state.update_shot(scene_id, shot_id, "shot_requeued", error=reason, stopping=None,
                         used_fallback=started or bool(shot.get("used_fallback")),
                         primary_error=shot.get("primary_error") or (reason if started else None))  # fmt: skip
    d.wait(job.kind, job.priority, scene_id, shot_id, rung)
    return True


def _off_node(rt: Runtime, node: dict[str, Any], job: Job, shot: dict[str, Any]) -> bool:
    """Ask the node of a dead worker to drop ``job`` (it may live on without its worker:
    it must not render for nobody, nor beside the next attempt). True once the job is off
    it, or the node cannot be asked, or it had FARM_NODE_IDLE_TIMEOUT seconds to stop."""
    try:
        how = make_backend(node["kind"], node["url"], rt.settings).cancel(job)
    except Exception as exc:
        log.info("could not cancel %s/%s on %s: %s", job.scene_id, job.shot_id, node["name"], exc)
        return True
    if how != "interrupted":  # removed from its queue, or not (any more) there
        return True
    since = float(shot.get("stopping") or 0)
    if not since:
        rt.redis.hset(rt.state.shot_key(job.scene_id, job.shot_id), "stopping", time.time())
    return bool(since) and time.time() - since > rt.settings.node_idle_timeout


def fail_waiting(rt: Runtime, d: Dispatcher, scene_id: str, shot_id: str, group: Group) -> None:
    """A shot that waited FARM_WAIT_TIMEOUT seconds with no live node able to take it."""
    models = " or ".join(dict.fromkeys(v.model for v in group.variants))
    message = (f"no_capable_node: no live node could render {models} for "
               f"{rt.settings.wait_timeout:g}s")  # fmt: skip
    rt.state.update_shot(scene_id, shot_id, "shot_failed", state=ShotState.FAILED,
                         error=message, finished=time.time())  # fmt: skip
    telemetry.record_shot_finished(rt.redis, rt.settings, ShotState.FAILED)
    d.close(scene_id, shot_id, {"scene_id": scene_id, "shot_id": shot_id, "state": "failed",
                                "error": message})  # fmt: skip


def finish_scene(rt: Runtime, scene_id: str) -> None:
    """The watchdog's way to run a scene's chord body (assemble, then score) once more."""
    from farm.celery_app import app

    queue = rt.settings.cpu_queue
    (app.signature("farm.assemble_scene", args=([], scene_id), queue=queue)
     | app.signature("farm.score_scene", args=(scene_id,), queue=queue)).apply_async()  # fmt: skip


# -- records -------------------------------------------------------------------------------


def _attempt(job: Job, state: str, seconds: float) -> dict[str, Any]:
    """The common part of an attempt-log entry."""
    return {"attempt": job.attempt, "kind": job.kind, "node": job.node, "state": state,
            "seconds": round(seconds, 2), "model": job.model, "backend": job.backend}  # fmt: skip


def _record(job: Job, state: str, **extra: Any) -> dict[str, Any]:
    return {"scene_id": job.scene_id, "shot_id": job.shot_id, "state": state, "kind": job.kind,
            "node": job.node, "attempt": job.attempt, **extra}  # fmt: skip


def _progress(rt: Runtime, job: Job, folder: Path) -> Callable[..., None]:
    """A progress callback that writes at most every PROGRESS_EVERY seconds, and keeps
    the newest preview frame (file beside the shot, and in Redis) every PREVIEW_EVERY."""
    last = {"progress": 0.0, "preview": 0.0}

    def report(fraction: float, message: str = "", preview: bytes | None = None) -> None:
        now = time.monotonic()
        if preview is not None:
            mime = image_mime(preview)
            if mime is None or now - last["preview"] < PREVIEW_EVERY:
                return
            last["preview"] = now
            path = folder / ("preview.png" if mime == "image/png" else "preview.jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(preview)
            tmp.replace(path)
            rt.state.set_preview(job.scene_id, job.shot_id, preview, mime, str(path))
            return
        if now - last["progress"] >= PROGRESS_EVERY or fraction >= 1.0:
            last["progress"] = now
            rt.state.update_shot(job.scene_id, job.shot_id, "shot_progress",
                                 progress=round(fraction, 3), message=message)  # fmt: skip

    return report
