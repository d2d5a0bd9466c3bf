"""Shot tasks, routed to the chosen GPU node's own queue: preview, final and fallback.

Each returns a small record for the scene's chord, or hands over to the next task with
``Task.replace`` (keeping its place in the chord): the final after a preview, or the
fallback attempt after a failure.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from farm.celery_app import app
from farm.nodes import node_queue
from farm.planning import Job
from farm.runtime import get_runtime
from farm.shots import run_job


def _run(task: Task, job_data: dict[str, Any]) -> dict[str, Any]:
    outcome = run_job(Job.from_dict(job_data), get_runtime())
    nxt = outcome.next_job
    if nxt is not None:
        follow = final if nxt.kind == "final" and nxt.attempt == 1 else fallback
        raise task.replace(shot_signature(nxt, follow))
    return outcome.record


def shot_signature(job: Job, task: Task | None = None):
    """The signature that runs ``job`` on its node's queue."""
    task = task or {"preview": preview, "final": final}[job.kind]
    return task.si(job.to_dict()).set(queue=node_queue(job.node or ""), priority=9 - job.priority)


@app.task(name="farm.preview", bind=True)
def preview(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    """Render a shot at preview quality."""
    return _run(self, job)


@app.task(name="farm.final", bind=True)
def final(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    """Render a shot at final quality."""
    return _run(self, job)


@app.task(name="farm.fallback", bind=True)
def fallback(self: Task, job: dict[str, Any]) -> dict[str, Any]:
    """Run the next rung of a failed shot's fallback ladder (another node or lighter settings)."""
    return _run(self, job)
