"""Rendering one shot job: the plain function behind the preview, final and fallback tasks.

:func:`run_job` drives the node's backend, keeps the shot record current and decides
what comes next: done, another attempt (fallback), the final after a preview, or a
failure record. It never raises for a render failure, so a scene's chord always completes.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.backends import Backend, image_mime, make_backend
from farm.errors import FarmError, NodeUnavailable
from farm.planning import Job, next_attempt, place_any, plan_variants
from farm.runtime import Runtime
from farm.scene import parse_scene
from farm.state import SceneState, ShotState

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5  # seconds between progress writes to Redis
PREVIEW_EVERY = 1.0  # seconds between preview frames kept


@dataclass
class Outcome:
    """The result of one attempt: a record for the chord, or the next job to hand over to."""

    record: dict[str, Any]
    next_job: Job | None = None


def shot_dir(storage: Path, scene_id: str, shot_id: str) -> Path:
    return storage / "scenes" / scene_id / "shots" / shot_id


def run_job(
    job: Job, rt: Runtime, backend_for: Callable[[str, str], Backend] | None = None
) -> Outcome:
    """Render ``job`` on its node and record what happened."""
    state, settings = rt.state, rt.settings
    backend_for = backend_for or (lambda kind, url: make_backend(kind, url, settings))
    if state.scene(job.scene_id).get("state") == SceneState.QUEUED:
        state.update_scene(job.scene_id, "scene_rendering", state=SceneState.RENDERING)
    state.update_shot(
        job.scene_id,
        job.shot_id,
        "shot_started",
        state=ShotState.RUNNING,
        node=job.node,
        kind=job.kind,
        progress=0.0,
        started=time.time(),
    )
    folder = shot_dir(settings.storage, job.scene_id, job.shot_id)
    started = time.monotonic()
    try:
        node = next((r for r in rt.registry.records() if r["name"] == job.node), None)
        if node is None:
            raise NodeUnavailable(f"node {job.node!r} is not registered (is its worker running?)")
        backend = backend_for(node["kind"], node["url"])
        result = backend.render(
            job, folder / f"{job.kind}_a{job.attempt}", _progress(rt, job, folder)
        )
    except FarmError as exc:
        return _failed(rt, job, exc, time.monotonic() - started)
    except Exception as exc:  # a bug must not hang the scene: record it, never retry it
        log.exception("internal error rendering %s/%s", job.scene_id, job.shot_id)
        return _failed(
            rt,
            job,
            FarmError(f"internal error: {exc.__class__.__name__}: {exc}"),
            time.monotonic() - started,
        )
    clip = folder / f"{job.kind}.mp4"
    shutil.copyfile(result.video, clip)
    seconds = round(time.monotonic() - started, 2)
    state.log_attempt(
        job.scene_id,
        job.shot_id,
        {
            **_attempt(job, "done", seconds),
            "backend_job_id": result.backend_job_id,
            "workflow": job.workflow,
            "seed": job.params.get("seed"),
        },
    )
    outputs = {**(state.shot(job.scene_id, job.shot_id).get("outputs") or {}), job.kind: str(clip)}
    if job.then_final and job.kind == "preview":
        final = _final_after_preview(rt, job)
        state.update_shot(
            job.scene_id,
            job.shot_id,
            "shot_preview_done",
            outputs=outputs,
            state=ShotState.QUEUED,
            kind="final",
            node=final.node,
            progress=0.0,
        )
        return Outcome(record={}, next_job=final)
    state.update_shot(
        job.scene_id,
        job.shot_id,
        "shot_done",
        state=ShotState.DONE,
        outputs=outputs,
        progress=1.0,
        finished=time.time(),
        error=None,
    )
    return Outcome(record=_record(job, "done", clip=str(clip)))


def _final_after_preview(rt: Runtime, job: Job) -> Job:
    """The final render of a previewed shot, preferring the node that has the model loaded."""
    scene = parse_scene(rt.state.scene(job.scene_id)["spec"], check_files=False)
    variants = plan_variants(scene, scene.shot(job.shot_id), "final")
    loaded = next((v.model for v in variants if v.backend == job.backend), "")
    return place_any(
        variants, rt.registry.infos(), rt.registry.loads(), last_model={job.node or "": loaded}
    )


def _failed(rt: Runtime, job: Job, exc: FarmError, seconds: float) -> Outcome:
    state = rt.state
    message = f"{exc.kind}: {exc}"
    log.warning(
        "shot %s/%s attempt %d on %s failed: %s",
        job.scene_id,
        job.shot_id,
        job.attempt,
        job.node,
        message,
    )
    state.log_attempt(
        job.scene_id,
        job.shot_id,
        {
            **_attempt(job, "failed", seconds),
            "error_kind": exc.kind,
            "error": str(exc),
        },
    )
    nxt = None
    if exc.kind != "error":  # internal errors are bugs: retrying would repeat them
        try:
            nxt = next_attempt(
                job,
                exc.kind,
                message,
                rt.registry.infos(),
                rt.registry.loads(),
                rt.settings.max_attempts,
            )
        except FarmError:
            nxt = None
    if nxt is not None:
        state.update_shot(
            job.scene_id,
            job.shot_id,
            "shot_retry",
            state=ShotState.RETRYING,
            error=message,
            node=nxt.node,
            used_fallback=True,
            primary_error=nxt.primary_error,
        )
        return Outcome(record={}, next_job=nxt)
    state.update_shot(
        job.scene_id,
        job.shot_id,
        "shot_failed",
        state=ShotState.FAILED,
        error=message,
        finished=time.time(),
    )
    return Outcome(record=_record(job, "failed", error=message))


def _attempt(job: Job, state: str, seconds: float) -> dict[str, Any]:
    """The common part of an attempt-log entry."""
    return {"attempt": job.attempt, "kind": job.kind, "node": job.node, "state": state,
            "seconds": round(seconds, 2), "model": job.model}  # fmt: skip


def _record(job: Job, state: str, **extra: Any) -> dict[str, Any]:
    return {
        "scene_id": job.scene_id,
        "shot_id": job.shot_id,
        "state": state,
        "kind": job.kind,
        "node": job.node,
        "attempt": job.attempt,
        **extra,
    }


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
            rt.state.update_shot(
                job.scene_id,
                job.shot_id,
                "shot_progress",
                progress=round(fraction, 3),
                message=message,
            )

    return report
