"""Rendering one bound shot: the plain function behind the preview, final, fallback and
collect tasks, and the start of a shot (the render cache, else the backlog).

:func:`run_bound` starts the delivery that holds the shot's binding (it takes the shot's
lease, so a task Celery delivers twice renders once), drives the node's backend while a
guard thread renews the lease and watches for a cancel, and applies what comes next
through :mod:`farm.lifecycle`: the take to the quality gate, the final after a preview,
the next rung of the fallback ladder, or a failure record. Each of those transitions is
fenced on the binding: a renderer that lost it (frozen or cut off while the farm moved
the shot on) changes nothing; its files stay in its own attempt folder, an orphan. The
node slot is released on every path out. It never raises for a render failure, so a
scene's chord always completes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from farm import budget, lifecycle, telemetry
from farm.backends import Backend, RenderResult, image_mime, make_backend
from farm.cache import RenderCache, place_file, request_key
from farm.dispatch import (
    Dispatcher,
    backlog_entry,
    cancelled_record,
    rung_of,
    scene_of,
)
from farm.errors import (
    FarmError,
    InternalError,
    JobCancelled,
    NodeUnavailable,
    counts_against_node,
)
from farm.images import check_start_image
from farm.lifecycle import ShotState
from farm.planning import Job, Rung, next_rung, plan_variants
from farm.runtime import Runtime
from farm.scheduler import job_cost

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5  # seconds between progress writes to Redis
PREVIEW_EVERY = 1.0  # seconds between preview frames kept
GUARD_EVERY = 0.5  # seconds between cancel checks of a running render
#: marks the fallback ladder leaves in a job's params (planning.next_rung): not settings
LADDER_MARKS = ("reduced", "fast_tier")

Hit = tuple[Job, dict[str, Any]]


def shot_dir(storage: Path, scene_id: str, shot_id: str) -> Path:
    return storage / "scenes" / scene_id / "shots" / shot_id


def attempt_dir(storage: Path, job: Job) -> Path:
    """The folder of one attempt's files from its node (``final_a2``, ``final_t1_a1``)."""
    return shot_dir(storage, job.scene_id, job.shot_id) / job.label


def clip_name(job: Job) -> str:
    """File name of ``job``'s kept clip in its shot folder: one per kind and take
    (``final.mp4`` for take 1, ``final_t2.mp4`` for take 2)."""
    return f"{job.kind}_t{job.take}.mp4" if job.take > 1 else f"{job.kind}.mp4"


# -- the task body ------------------------------------------------------------------------


def run_bound(
    rt: Runtime,
    d: Dispatcher,
    scene_id: str,
    shot_id: str,
    token: str,
    backend_for: Callable[[str, str], Backend] | None = None,
    *,
    collect: bool = False,
) -> dict[str, Any] | None:
    """Render the shot bound with ``token`` (``collect``: only fetch the outputs of the
    attempt its node finished); the chord record, or None when this delivery must do
    nothing more (a stale binding, a duplicate, a paused scene, or the shot goes on: the
    slot stays open)."""
    node = ""
    duplicate = False  # another delivery of this binding renders the shot
    try:
        shot = rt.state.shot(scene_id, shot_id)
        if shot.get("binding") != token or shot.get("state") not in (
            ShotState.BOUND, ShotState.RUNNING):  # fmt: skip
            log.info("shot %s/%s: binding %s is stale or over; ignored", scene_id, shot_id,
                     token[:8])  # fmt: skip
            return None
        job = Job.from_dict(shot["job"])
        node = job.node or ""
        if shot["state"] == ShotState.BOUND:
            flags = _flags(rt, scene_id, shot_id)
            if flags["cancel"]:
                out = lifecycle.cancel(rt, scene_id, shot_id, state=ShotState.BOUND, token=token,
                                       node=node)  # fmt: skip
                return cancelled_record(scene_id, shot_id, job) if out else None
            if not collect and (flags["paused"] or d.blocklisted(scene_id, node)):
                why = "paused" if flags["paused"] else "blocklisted"
                backlog, stored = backlog_entry(rung_of(rt, scene_id, shot), job.kind,
                                                job.priority)  # fmt: skip
                lifecycle.unbind(rt, scene_id, shot_id, token, node, backlog, stored,
                                 max(0, job.attempt - 1), why=why)  # fmt: skip
                return None
        started = lifecycle.start(rt, scene_id, shot_id, token, node,
                                  wait_for=4 * rt.settings.lease_ttl)  # fmt: skip
        if not started:
            log.info("shot %s/%s is rendered by another delivery (%s); this one is a duplicate",
                     scene_id, shot_id, started.why)  # fmt: skip
            # the slot and lease are that delivery's (the same binding): leave them be
            duplicate = started.why == "lease"
            return None
        return _render(rt, d, job, token, backend_for, collect)
    finally:
        if not duplicate:
            lifecycle.release_slot(rt, node, scene_id, shot_id, token)
            lifecycle.release_lease(rt, rt.settings.keys.lease(scene_id, shot_id), token)
        d.dispatch()


def is_cancelled(rt: Runtime, scene_id: str, shot_id: str) -> bool:
    """Whether the shot or its scene was cancelled."""
    return _flags(rt, scene_id, shot_id)["cancel"]


def _flags(rt: Runtime, scene_id: str, shot_id: str) -> dict[str, bool]:
    scene = rt.redis.hmget(rt.state.scene_key(scene_id), ["cancel", "paused"])
    shot = rt.redis.hget(rt.state.shot_key(scene_id, shot_id), "cancel")
    return {"cancel": scene[0] == "1" or shot == "1", "paused": scene[1] == "1"}


class Guard(lifecycle.Keeper):
    """Keeps the render's lease and cancels the backend job when the shot or its scene
    is cancelled (checked every GUARD_EVERY seconds)."""

    def __init__(self, rt: Runtime, job: Job, token: str, backend: Backend, out_dir: Path):
        keys = rt.settings.keys
        super().__init__(rt, keys.lease(job.scene_id, job.shot_id), token,
                         keys.shot(job.scene_id, job.shot_id), "binding", GUARD_EVERY)  # fmt: skip
        self.job, self.backend, self.out_dir = job, backend, out_dir
        self.cancelled = False

    def tick(self) -> None:
        if not self.cancelled and is_cancelled(self.rt, self.job.scene_id, self.job.shot_id):
            self.cancelled = True
            how = self.backend.cancel(self.job, self.out_dir)
            log.info("shot %s/%s cancelled on %s: %s", self.job.scene_id, self.job.shot_id,
                     self.job.node, how)  # fmt: skip


def _render(
    rt: Runtime,
    d: Dispatcher,
    job: Job,
    token: str,
    backend_for: Callable[[str, str], Backend] | None,
    collect: bool,
) -> dict[str, Any] | None:
    settings = rt.settings
    backend_for = backend_for or (lambda kind, url: make_backend(kind, url, settings))
    out_dir = attempt_dir(settings.storage, job)
    started = time.monotonic()
    guard = None
    try:
        node = next((r for r in rt.registry.records() if r["name"] == job.node), None)
        if node is None:
            raise NodeUnavailable(f"node {job.node!r} is not registered (is its worker running?)")
        backend = backend_for(node["kind"], node["url"])
        guard = Guard(rt, job, token, backend, out_dir)
        guard.start()
        if collect:
            result = backend.collect(job, out_dir)
        else:
            if job.params.get("start_image"):  # changed since it was validated: fail it once
                check_start_image(job.params["start_image"])
            result = backend.render(_settings_only(job), out_dir, _progress(rt, job, token))
    except FarmError as exc:
        budget.charge(rt.redis, rt.settings, job, exc.details, work=False)  # a failed cloud job
        if guard is not None and guard.cancelled and not isinstance(exc, JobCancelled):
            exc = JobCancelled(f"cancelled by the user ({exc})")
        return _failed(rt, d, job, token, exc, time.monotonic() - started)
    except Exception as exc:  # a bug must not hang the scene: record it, never retry it
        log.exception("internal error rendering %s/%s", job.scene_id, job.shot_id)
        error = InternalError(f"internal error: {exc.__class__.__name__}: {exc}")
        return _failed(rt, d, job, token, error, time.monotonic() - started)
    finally:
        if guard is not None:
            guard.stop()
    return _rendered(rt, d, job, token, result, round(time.monotonic() - started, 2))


def _rendered(
    rt: Runtime, d: Dispatcher, job: Job, token: str, result: RenderResult, seconds: float
) -> dict[str, Any] | None:
    """The node rendered ``job``: hand a preview over to its final (the backlog, or the
    cache), or the take to the quality gate (:mod:`farm.gate`, on the CPU queue). None:
    the slot stays open for what comes next (a cancelled record if the shot ended)."""
    budget.charge(rt.redis, rt.settings, job, result.details)  # a cloud node's billed time
    shot = rt.state.shot(job.scene_id, job.shot_id)
    source = Path(result.video)
    kept = shot_dir(rt.settings.storage, job.scene_id, job.shot_id) / clip_name(job)
    entry = {**_attempt(job, "done", seconds), "backend_job_id": result.backend_job_id,
             "workflow": job.workflow, "seed": job.params.get("seed"),
             "cache_key": request_key(job, rt.settings.workflows_dir, catalog=rt.catalog) if rt.settings.cache
             else None}  # fmt: skip
    outputs = {**(shot.get("outputs") or {}), job.kind: str(kept)}
    if job.then_final and job.kind == "preview":
        out = to_final(rt, d, job, source=ShotState.RUNNING, token=token, logged=[entry],
                       outputs=outputs, preview=source)  # fmt: skip
    else:
        scoring = lifecycle.new_token()
        take = take_record(job, kept, source, cache_hit=False, seconds=seconds)
        out = lifecycle.rendered(rt, job.scene_id, job.shot_id, token, job.node or "",
                                 scoring=scoring, take=take, outputs=outputs, logged=entry)  # fmt: skip
        if out:
            place_file(source, kept)
            d.score(job.scene_id, job.shot_id, scoring)
    if not out:
        orphan(rt, job, token, out.why)
        return None
    RenderCache(rt).store(job, kept, result.backend_job_id)
    loaded = rt.registry.record_render(job.node or "", job.models, job_cost(job), seconds)
    telemetry.record_render(rt.redis, rt.settings, job.model, job.node or "", seconds, loaded)
    if out.state == ShotState.CANCELLED:  # cancelled before its final could wait
        return cancelled_record(job.scene_id, job.shot_id, job)
    return None


def to_final(rt: Runtime, d: Dispatcher, job: Job, *, source: str, token: str,
             logged: list[dict[str, Any]], outputs: dict[str, Any],
             preview: Path | str) -> lifecycle.Outcome:  # fmt: skip
    """The preview ``job`` of a previewed shot is done (rendered, or served by the cache
    from ``preview``): its final comes from the cache, or waits in the backlog (it follows
    the preview's node when it can: a warm cache). The preview's file is put in place
    once that is so."""
    key = (job.scene_id, job.shot_id)
    scene = scene_of(rt, job.scene_id)
    finals = plan_variants(scene, scene.shot(job.shot_id), "final", rt.catalog)
    hit = None if forced(rt, *key) else RenderCache(rt).lookup([finals])[0]
    if hit is not None:
        out = serve_from_cache(rt, d, *key, hit, source=source, token=token, node=job.node,
                               logged=logged, outputs=outputs)  # fmt: skip
    else:
        backlog, stored = backlog_entry(Rung(tuple(finals)), "final", job.priority)
        fields = {"outputs": outputs, "kind": "final", "progress": 0.0, "attempt": 0}
        if source == ShotState.QUEUED:
            out = lifecycle.wait(rt, *key, backlog, stored, logged=logged, **fields)
        else:
            out = lifecycle.next_rung(rt, *key, token, job.node, backlog, stored, logged=logged,
                                      event="shot_preview_done", data={}, **fields)  # fmt: skip
    if out:
        place_file(Path(preview), Path(outputs["preview"]))
        if hit is None and out.state != ShotState.CANCELLED:
            d.dispatch()
    return out


def take_record(job: Job, kept: Path, source: Path | str, *, cache_hit: bool,
                seconds: float) -> dict[str, Any]:  # fmt: skip
    """A take as the quality gate scores it: ``clip`` is where it is kept, ``source``
    where its file came from (the attempt folder, or the cache)."""
    return {"take": job.take, "kind": job.kind, "seed": job.params.get("seed"),
            "node": job.node, "clip": str(kept), "source": str(source),
            "seconds": round(seconds, 2), "cache_hit": cache_hit, "priority": job.priority,
            "backend": job.backend, "model": job.model, "models": list(job.models),
            "workflow": job.workflow, "adjusted": list(job.adjusted),
            "params": {k: v for k, v in job.params.items()
                       if isinstance(v, str | int | float | bool) and k not in LADDER_MARKS}}  # fmt: skip


def place_take(take: dict[str, Any]) -> None:
    """Put a take's file where the shot keeps it, if it is not there yet (the renderer
    that made the transition died before it could)."""
    clip, source = Path(take["clip"]), Path(take.get("source") or take["clip"])
    if not clip.is_file() and source.is_file():
        place_file(source, clip)


def orphan(rt: Runtime, job: Job, token: str, why: str) -> None:
    """A render whose binding no longer holds: its files stay in its attempt folder, and
    nothing of the shot changes."""
    folder = attempt_dir(rt.settings.storage, job)
    log.warning("shot %s/%s: attempt %d on %s finished after the shot moved on (%s); its "
                "files stay in %s", job.scene_id, job.shot_id, job.attempt, job.node, why,
                folder)  # fmt: skip
    rt.state.event(job.scene_id, "shot_orphan_attempt", shot=job.shot_id, node=job.node,
                   attempt=job.attempt, binding=token[:8], files=str(folder))  # fmt: skip


# -- starting a shot: the render cache, else the backlog ----------------------------------


def serve_from_cache(rt: Runtime, d: Dispatcher, scene_id: str, shot_id: str, hit: Hit, *,
                     source: str, token: str, node: str | None = None,
                     logged: Sequence[dict[str, Any]] = (),
                     outputs: dict[str, Any] | None = None, **fields: Any) -> lifecycle.Outcome:  # fmt: skip
    """The cache has the shot's take: it goes to the quality gate from ``source`` (queued,
    running: a preview's final, scoring: a retake) fenced on ``token`` (a previewed shot's
    cached preview goes on to its final)."""
    job, entry = hit
    job = replace(job, attempt=0, node=None)
    kept = shot_dir(rt.settings.storage, scene_id, shot_id) / clip_name(job)
    if outputs is None:
        outputs = rt.state.shot(scene_id, shot_id).get("outputs") or {}
    outputs = {**outputs, job.kind: str(kept)}
    logged = [*logged, served_entry(job, entry)]
    rt.state.event(scene_id, "shot_cache_hit", shot=shot_id, kind=job.kind,
                   source=f"{entry['scene']}/{entry['shot']}")  # fmt: skip
    if job.then_final and job.kind == "preview":
        return to_final(rt, d, job, source=source, token=token, logged=logged, outputs=outputs,
                        preview=entry["clip"])  # fmt: skip
    scoring = lifecycle.new_token()
    take = take_record(job, kept, entry["clip"], cache_hit=True, seconds=0.0)
    out = lifecycle.cached(rt, scene_id, shot_id, source=source, token=token, node=node,
                           scoring=scoring, take=take, outputs=outputs, logged=logged,
                           **fields)  # fmt: skip
    if out:
        place_take(take)
        d.score(scene_id, shot_id, scoring)
    return out


def served_entry(job: Job, entry: dict[str, Any]) -> dict[str, Any]:
    """The attempt-log entry of a take the render cache served."""
    return {**attempt_entry(job, "cached", 0.0), "node": entry.get("node"),
            "cache_key": entry["key"], "source": f"{entry['scene']}/{entry['shot']}",
            "workflow": job.workflow, "seed": job.params.get("seed")}  # fmt: skip


def start_shots(rt: Runtime, d: Dispatcher, scene_id: str, shots: list[list[Job]],
                priority: int, *, force: bool) -> None:  # fmt: skip
    """Start each shot (its variants): from the render cache (one lookup for all), else
    into the backlog."""
    hits = [None] * len(shots) if force else RenderCache(rt).lookup(shots)
    for variants, hit in zip(shots, hits, strict=True):
        job = variants[0]
        if hit is not None:
            serve_from_cache(rt, d, scene_id, job.shot_id, hit, source=ShotState.QUEUED,
                             token="")  # fmt: skip
            continue
        out = d.wait(scene_id, job.shot_id, Rung(tuple(variants)), job.kind, priority)
        if out.state == ShotState.CANCELLED:
            d.close(scene_id, job.shot_id, cancelled_record(scene_id, job.shot_id))


def forced(rt: Runtime, scene_id: str, shot_id: str) -> bool:
    """Whether the shot must be rendered even when its request is cached (``--force``,
    ``farm retry``)."""
    scene = rt.redis.hget(rt.state.scene_key(scene_id), "force")
    shot = rt.redis.hget(rt.state.shot_key(scene_id, shot_id), "force")
    return scene == "1" or shot == "1"


# -- a failed attempt ------------------------------------------------------------------------


#: failures after which the attempt's job may still be on its node: the node did not
#: answer (the link to it was cut) or its job did not end in time
STRAY_KINDS = ("node_unavailable", "timeout")


def mark_stray(rt: Runtime, job: Job) -> None:
    """Remember ``job``'s attempt on its node: it may still render there for nobody (the
    renderer could not reach the node to cancel it). The node's worker cancels it once the
    node answers (:meth:`farm.worker.Heartbeat.cancel_strays`)."""
    key = rt.settings.keys.node_strays(job.node or "")
    rt.redis.hset(key, f"{job.scene_id}/{job.shot_id}/{job.label}", json.dumps(job.to_dict()))
    rt.redis.expire(key, int(rt.settings.visibility_timeout))


def _failed(
    rt: Runtime, d: Dispatcher, job: Job, token: str, exc: FarmError, seconds: float
) -> dict[str, Any] | None:
    """Log the failed attempt and put the next rung in the backlog (None: the slot stays
    open for it), or close the shot as failed or cancelled."""
    message = f"{exc.kind}: {exc}"
    log.warning("shot %s/%s attempt %d on %s failed: %s", job.scene_id, job.shot_id,
                job.attempt, job.node, message)  # fmt: skip
    if exc.kind in STRAY_KINDS and job.node:
        mark_stray(rt, job)
    entry = {**_attempt(job, "failed", seconds), "error_kind": exc.kind, "error": str(exc)}
    key = (job.scene_id, job.shot_id)
    if isinstance(exc, JobCancelled) or is_cancelled(rt, *key):
        out = lifecycle.cancel(rt, *key, state=ShotState.RUNNING, token=token, node=job.node,
                               logged=entry)  # fmt: skip
        if not out:
            orphan(rt, job, token, out.why)
            return None
        return cancelled_record(*key, job)
    shot = rt.state.shot(*key)
    rung = _next(rt, job, exc, shot)
    if rung is not None:
        backlog, stored = backlog_entry(rung, job.kind, job.priority)
        out = lifecycle.next_rung(
            rt, *key, token, job.node, backlog, stored, logged=[entry], event="shot_retry",
            data={"error": message, "fallback": rung.step}, error=message, used_fallback=True,
            primary_error=shot.get("primary_error") or message, fallback=rung.step,
        )  # fmt: skip
    else:
        out = lifecycle.fail(rt, *key, error=message, token=token, node=job.node, logged=entry)
    if not out:
        orphan(rt, job, token, out.why)
        return None
    _count_against(rt, d, job, exc)
    if out.state == ShotState.CANCELLED:
        return cancelled_record(*key, job)
    if rung is not None:
        telemetry.record_fallback(rt.redis, rt.settings, exc.kind)
        return None
    telemetry.record_shot_finished(rt.redis, rt.settings, ShotState.FAILED)
    return _record(job, "failed", error=message)


def _count_against(rt: Runtime, d: Dispatcher, job: Job, exc: FarmError) -> None:
    """A node fault counts towards the node's blocklist for the scene."""
    if counts_against_node(exc) and job.node:
        count = d.count_failure(job.scene_id, job.node)
        if count == rt.settings.blocklist_after:
            rt.state.event(job.scene_id, "node_blocklisted", node=job.node, failures=count)


def _next(rt: Runtime, job: Job, exc: FarmError, shot: dict[str, Any]) -> Rung | None:
    scene = scene_of(rt, job.scene_id)
    current = rung_of(rt, job.scene_id, shot).variants
    fast = plan_variants(scene, scene.shot(job.shot_id), "preview", rt.catalog)
    return next_rung(job, exc, current, fast, rt.registry.infos(), rt.settings.max_attempts)


def _settings_only(job: Job) -> Job:
    """``job`` without the ladder's marks, which no workflow or WanGP setting takes."""
    return replace(job, params={k: v for k, v in job.params.items() if k not in LADDER_MARKS})


# -- records -------------------------------------------------------------------------------


def attempt_entry(job: Job, state: str, seconds: float) -> dict[str, Any]:
    """The common part of an attempt-log entry."""
    return {"attempt": job.attempt, "kind": job.kind, "node": job.node, "state": state,
            "seconds": round(seconds, 2), "model": job.model, "models": list(job.models),
            "backend": job.backend}  # fmt: skip


_attempt = attempt_entry


def _record(job: Job, state: str, **extra: Any) -> dict[str, Any]:
    return {"scene_id": job.scene_id, "shot_id": job.shot_id, "state": state, "kind": job.kind,
            "node": job.node, "attempt": job.attempt, **extra}  # fmt: skip


def _progress(rt: Runtime, job: Job, token: str) -> Callable[..., None]:
    """A progress callback that writes at most every PROGRESS_EVERY seconds, and keeps
    the newest preview frame (file beside the shot, and in Redis) every PREVIEW_EVERY;
    only while the render still holds the shot's binding."""
    last = {"progress": 0.0, "preview": 0.0}
    folder = shot_dir(rt.settings.storage, job.scene_id, job.shot_id)
    key = (job.scene_id, job.shot_id)

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
            if rt.state.set_preview(*key, preview, mime):
                lifecycle.guarded_write(rt, *key, token, preview=str(path), preview_at=time.time())
            return
        if now - last["progress"] >= PROGRESS_EVERY or fraction >= 1.0:
            last["progress"] = now
            lifecycle.guarded_write(rt, *key, token, "shot_progress", progress=round(fraction, 3),
                                    message=message)  # fmt: skip

    return report
