"""Submitting a scene: plan its jobs, place them on nodes, record it, start its chord.

The one module that turns a plan into a Celery canvas: a chord whose header is one task
per shot (on that shot's node queue) and whose body assembles then scores (CPU queue).
"""

from __future__ import annotations

from celery import chord

from farm.planning import Job, place_scene, plan_scene
from farm.runtime import Runtime
from farm.scene import Scene
from farm.tasks.render import shot_signature
from farm.tasks.scene import assemble_scene, score_scene


def scene_canvas(scene_id: str, jobs: list[Job], cpu_queue: str):
    """The scene's chord: header = one shot task per job, body = assemble → score."""
    body = assemble_scene.s(scene_id).set(queue=cpu_queue) | score_scene.s(scene_id).set(
        queue=cpu_queue
    )
    return chord([shot_signature(job) for job in jobs], body)


def enqueue(
    scene: Scene, rt: Runtime, quality: str | None = None, *, replace: bool = False
) -> list[Job]:
    """Plan, place and start ``scene``; returns the placed jobs. Nothing is queued when any
    shot has no capable live node (raises :class:`~farm.errors.NoCapableNode`)."""
    quality = quality or scene.quality
    jobs = place_scene(plan_scene(scene, quality), rt.registry.infos(), rt.registry.loads())
    rt.state.create_scene(scene.to_dict(), [j.to_dict() for j in jobs], quality, replace=replace)
    result = scene_canvas(scene.id, jobs, rt.settings.cpu_queue).apply_async()
    _unsubscribe(result)
    return jobs


def _unsubscribe(result) -> None:
    """Drop the pub/sub subscriptions the Redis result backend opened for the chord's tasks:
    progress is read from the farm state, and nothing should linger in this process."""
    consumer = result.backend.result_consumer
    pending = [result]
    while pending:
        res = pending.pop()
        consumer.cancel_for(res.id)
        pending += [r for r in (getattr(res, "results", None) or []) if r is not None]
        if res.parent is not None:
            pending.append(res.parent)
