"""Submitting a scene: plan its shots, check that the farm can render each, record it,
freeze its chord and put its shots in the backlog; the dispatcher binds them to nodes.

The scene's chord: header = one slot per shot (published to a node's queue when bound),
body = assemble → score on the CPU queue. A shot whose request is in the render cache
(:mod:`farm.cache`) is served from it and never reaches the backlog.

:func:`retry` renders shots of a finished scene again: a new chord with one slot per
retried shot and the same body, so the scene is assembled and scored once more.
"""

from __future__ import annotations

from dataclasses import replace as replace_job

from farm.cache import RenderCache
from farm.celery_app import app
from farm.dispatch import Dispatcher
from farm.errors import InvalidInput
from farm.planning import Job, place_any, plan_scene
from farm.runtime import Runtime
from farm.scene import Scene, parse_scene
from farm.shots import begin, remember
from farm.state import TERMINAL_SCENE, SceneState, ShotState


def scene_body(scene_id: str, cpu_queue: str):
    """The chord body: assemble the scene, then score it."""
    return app.signature("farm.assemble_scene", args=(scene_id,), queue=cpu_queue) | app.signature(
        "farm.score_scene", args=(scene_id,), queue=cpu_queue
    )


def enqueue(
    scene: Scene,
    rt: Runtime,
    quality: str | None = None,
    *,
    replace: bool = False,
    force: bool = False,
    submission: str | None = None,
) -> list[Job]:
    """Plan and start ``scene``; returns each shot's first job, with the node it was bound to
    at once (``node`` None: it waits for a node with room, or was served from the render
    cache). Nothing is queued when any shot has no capable live node (raises
    :class:`~farm.errors.NoCapableNode`). ``force``: render every shot even when its
    request is in the render cache. ``submission``: the id of the submission the scene
    came in by, kept on its record (:mod:`farm.ingest`)."""
    quality = quality or scene.quality
    shots = plan_scene(scene, quality)
    nodes = rt.registry.infos()
    for variants in shots:
        place_any(variants, nodes)  # raises NoCapableNode, naming what each node lacks
    first = [variants[0] for variants in shots]
    records = [{"shot_id": j.shot_id, "node": j.node, "kind": j.kind} for j in first]
    rt.state.create_scene(scene.to_dict(), records, quality, replace=replace, submission=submission)
    remember(rt, scene)
    if force:
        rt.state.update_scene(scene.id, force="1")
    d = Dispatcher(rt, app)
    d.open_scene(scene.id, [j.shot_id for j in first], scene_body(scene.id, rt.settings.cpu_queue))
    start(rt, d, scene.id, shots, scene.priority, force=force)
    bound = {a.key: a for a in d.dispatch()}
    out = []
    for variants in shots:
        a = bound.get(f"{scene.id}/{variants[0].shot_id}")
        out.append(replace_job(variants[a.variant], node=a.node) if a else variants[0])
    return out


def start(
    rt: Runtime, d: Dispatcher, scene_id: str, shots: list[list[Job]], priority: int, *,
    force: bool,
) -> None:  # fmt: skip
    """Start each shot (its variants): from the render cache (one lookup for all), else
    into the backlog; a shot the cache served whole fills its chord slot at once."""
    hits = [None] * len(shots) if force else RenderCache(rt).lookup(shots)
    for variants, hit in zip(shots, hits, strict=True):
        job = variants[0]
        record = begin(rt, d, scene_id, job.shot_id, job.kind, variants, priority,
                       force=force, hit=hit, looked=True)  # fmt: skip
        if record is not None:
            d.close(scene_id, job.shot_id, record)


def retry(rt: Runtime, scene_id: str, shot_ids: list[str] | None = None) -> list[str]:
    """Render shots of a finished scene again (``shot_ids``; default: every failed or
    cancelled shot) and assemble and score the scene once more. The shots are rendered
    even when their request is cached. Returns the shots retried."""
    state = rt.state
    info = state.scene(scene_id)
    if info["state"] not in TERMINAL_SCENE:
        raise InvalidInput(
            f"scene {scene_id!r} is still {info['state']}; retry its shots when it has "
            f"finished, or `farm cancel {scene_id}` first"
        )
    shots = {s["id"]: s for s in state.shots(scene_id)}
    if shot_ids:
        unknown = [s for s in shot_ids if s not in shots]
        if unknown:
            raise InvalidInput(
                f"scene {scene_id!r} has no shot {', '.join(map(repr, unknown))} "
                f"(its shots: {', '.join(shots)})"
            )
        ids = list(dict.fromkeys(shot_ids))
    else:
        ids = [i for i, s in shots.items() if s.get("state") != ShotState.DONE]
        if not ids:
            raise InvalidInput(
                f"every shot of scene {scene_id!r} is done; name the shots to render again "
                "with --shot"
            )
    scene = parse_scene(info["spec"], check_files=False)
    planned = {v[0].shot_id: v for v in plan_scene(scene, info.get("quality"))}
    pipe = rt.redis.pipeline()
    pipe.hdel(state.scene_key(scene_id), "cancel", "paused")
    pipe.delete(rt.settings.key("watchdog", scene_id), rt.settings.key("blocklist", scene_id),
                rt.settings.key("parked", scene_id))  # fmt: skip
    for shot_id in ids:
        pipe.hdel(state.shot_key(scene_id, shot_id), "cancel")
    pipe.execute()
    for shot_id in ids:
        state.update_shot(scene_id, shot_id, "shot_retry_requested", state=ShotState.QUEUED,
                          progress=0.0, error=None, used_fallback=False, primary_error=None,
                          fallback=None, attempt=0, cache_hit=False, force="1",
                          retries=int(shots[shot_id].get("retries") or 0) + 1,
                          take=int(shots[shot_id].get("take") or 0) + 1, takes=[], gate=None,
                          scoring="", pending_take=None,
                          kind=planned[shot_id][0].kind)  # fmt: skip
    state.update_scene(scene_id, "scene_retry", state=SceneState.QUEUED, error=None)
    d = Dispatcher(rt, app)
    d.open_scene(scene_id, ids, scene_body(scene_id, rt.settings.cpu_queue))
    start(rt, d, scene_id, [planned[i] for i in ids], scene.priority, force=True)
    d.dispatch()
    return ids
