"""Submitting a scene: plan its shots, check that the farm can render each, record it,
freeze its chord and put its shots in the backlog; the dispatcher binds them to nodes.

The scene's chord: header = one slot per shot (published to a node's queue when bound),
body = assemble → score on the CPU queue.
"""

from __future__ import annotations

from dataclasses import replace as replace_job

from farm.celery_app import app
from farm.dispatch import Dispatcher
from farm.planning import Job, Rung, place_any, plan_scene
from farm.runtime import Runtime
from farm.scene import Scene


def scene_body(scene_id: str, cpu_queue: str):
    """The chord body: assemble the scene, then score it."""
    return app.signature("farm.assemble_scene", args=(scene_id,), queue=cpu_queue) | app.signature(
        "farm.score_scene", args=(scene_id,), queue=cpu_queue
    )


def enqueue(
    scene: Scene, rt: Runtime, quality: str | None = None, *, replace: bool = False
) -> list[Job]:
    """Plan and start ``scene``; returns each shot's first job, with the node it was bound to
    at once (``node`` None: it waits for a node with room). Nothing is queued when any shot
    has no capable live node (raises :class:`~farm.errors.NoCapableNode`)."""
    quality = quality or scene.quality
    shots = plan_scene(scene, quality)
    nodes = rt.registry.infos()
    for variants in shots:
        place_any(variants, nodes)  # raises NoCapableNode, naming what each node lacks
    first = [variants[0] for variants in shots]
    rt.state.create_scene(scene.to_dict(), [j.to_dict() for j in first], quality, replace=replace)
    d = Dispatcher(rt, app)
    d.open_scene(scene.id, [j.shot_id for j in first], scene_body(scene.id, rt.settings.cpu_queue))
    for variants in shots:
        job = variants[0]
        d.wait(job.kind, scene.priority, scene.id, job.shot_id, Rung(tuple(variants)))
    bound = {a.key: a for a in d.dispatch()}
    out = []
    for variants in shots:
        a = bound.get(f"{scene.id}/{variants[0].shot_id}")
        out.append(replace_job(variants[a.variant], node=a.node) if a else variants[0])
    return out
