"""Tasks on the CPU queue: scoring each shot's take (the quality gate), then the chord
body that assembles the scene and writes its report.

A CPU worker runs one process per core (``farm worker --cpu``); each process gives OpenCV
one thread, so takes are scored in parallel, one per process, without oversubscription.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import worker_process_init

from farm.assembly import assemble, score
from farm.celery_app import app
from farm.gate import score_take
from farm.runtime import get_runtime
from farm.tasks import with_outcome


@worker_process_init.connect
def _one_opencv_thread(**_: Any) -> None:
    import cv2

    cv2.setNumThreads(1)


@app.task(name="farm.score_shot", bind=True)
def score_shot(self: Task, scene_id: str, shot_id: str, binding: str) -> dict[str, Any]:
    """Score a shot's finished take and apply the quality gate: keep it, or render a new
    take with a new seed (the slot stays open for it)."""
    record = score_take(get_runtime(), scene_id, shot_id, binding)
    if record is None:
        raise Ignore()
    return with_outcome(record)


@app.task(name="farm.assemble_scene")
def assemble_scene(
    shot_records: list[dict[str, Any]], scene_id: str, run: int | None = None
) -> dict[str, Any]:
    """Chord body: concatenate the scene's kept takes (header results are advisory; the
    shot records in Redis are the truth). Does nothing when ``run`` is not the scene's
    latest or its assembly is done."""
    rt = get_runtime()
    return assemble(scene_id, run or _run_of(rt, scene_id), rt)


@app.task(name="farm.score_scene")
def score_scene(
    assembly: dict[str, Any] | None, scene_id: str, run: int | None = None
) -> dict[str, Any]:
    """Score the cuts between shots and write the scene report (report.json, report.html)."""
    rt = get_runtime()
    return score(scene_id, run or _run_of(rt, scene_id), rt)


def _run_of(rt: Any, scene_id: str) -> int:
    """The scene's current run (a body task published before runs existed)."""
    return int(rt.redis.hget(rt.settings.keys.scene(scene_id), "run") or 1)
