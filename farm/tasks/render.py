"""Shot tasks, published to the bound GPU node's own queue by the dispatcher
(:mod:`farm.dispatch`): preview, final and fallback (a later rung of a failed shot); and
collect, on the CPU queue, which fetches what a dead node finished (:mod:`farm.checker`).

Each holds one slot of its scene's chord. It returns the shot's record to the chord when
the shot is over (Celery's SUCCESS then means the record was delivered; whether the shot
was done, failed or cancelled is the record's ``outcome``); when the shot goes on (the final after a preview, the next fallback
rung, the quality gate, a paused scene) or this delivery is stale or a duplicate, it
raises ``Ignore``: the slot stays open and the farm publishes the shot's next task into
it, as ``Task.replace`` would (same task id, chord, group and index).
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore

from farm.celery_app import app
from farm.dispatch import Dispatcher
from farm.runtime import get_runtime
from farm.shots import run_bound
from farm.tasks import with_outcome


def _run(scene_id: str, shot_id: str, binding: str, collect: bool = False) -> dict[str, Any]:
    rt = get_runtime()
    record = run_bound(rt, Dispatcher(rt, app), scene_id, shot_id, binding, collect=collect)
    if record is None:
        raise Ignore()
    return with_outcome(record)


@app.task(name="farm.preview", bind=True)
def preview(self: Task, scene_id: str, shot_id: str, binding: str) -> dict[str, Any]:
    """Render a shot at preview quality."""
    return _run(scene_id, shot_id, binding)


@app.task(name="farm.final", bind=True)
def final(self: Task, scene_id: str, shot_id: str, binding: str) -> dict[str, Any]:
    """Render a shot at final quality."""
    return _run(scene_id, shot_id, binding)


@app.task(name="farm.fallback", bind=True)
def fallback(self: Task, scene_id: str, shot_id: str, binding: str) -> dict[str, Any]:
    """Run the next rung of a failed shot's fallback ladder (another node, a lower-memory
    setting, a smaller size, the fast tier)."""
    return _run(scene_id, shot_id, binding)


@app.task(name="farm.collect", bind=True)
def collect(self: Task, scene_id: str, shot_id: str, binding: str) -> dict[str, Any]:
    """Fetch the outputs of the attempt a node finished after its worker died (the node
    itself is not asked to render anything)."""
    return _run(scene_id, shot_id, binding, collect=True)


@app.task(name="farm.close_shot")
def close_shot(record: dict[str, Any]) -> dict[str, Any]:
    """Fill a shot's chord slot without rendering (cancelled before it ran, or no node
    could take it): returns its record."""
    return with_outcome(record)
