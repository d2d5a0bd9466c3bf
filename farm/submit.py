"""Submitting a scene: plan its shots, check that the farm can render each, record it,
freeze its chord and put its shots in the backlog; the dispatcher binds them to nodes.

The scene's chord: header = one slot per shot (published to a node's queue when bound),
body = assemble → score on the CPU queue. A shot whose request is in the render cache
(:mod:`farm.cache`) is served from it and never reaches the backlog.

An enqueue holds the scene's enqueue lease from the moment its records exist until its
chord is frozen and every shot has started (``enqueued`` on the scene). If the enqueuer
dies in between (ingest killed, a CLI interrupted), :func:`resume` — called by the
timeout checker once the lease lapsed, and by ingest when the submission comes again —
does the rest, so no shot waits forever outside the backlog.

:func:`retry` renders shots of a finished scene again: a new run of the scene with a new
chord of one slot per retried shot and the same body, so the scene is assembled and
scored once more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace as replace_job

from farm import lifecycle
from farm.celery_app import app
from farm.dispatch import Dispatcher, remember, scene_of
from farm.errors import InvalidInput
from farm.lifecycle import TERMINAL_SCENE, ShotState
from farm.planning import Job, place_any, plan_scene
from farm.runtime import Runtime
from farm.scene import Scene
from farm.shots import start_shots


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
    shots = plan_scene(scene, quality, rt.catalog)
    nodes = rt.registry.infos()
    for variants in shots:
        place_any(variants, nodes)  # raises NoCapableNode, naming what each node lacks
    first = [variants[0] for variants in shots]
    records = [{"shot_id": j.shot_id, "node": j.node, "kind": j.kind} for j in first]
    token = lifecycle.new_token()
    run = lifecycle.create(rt, scene.to_dict(), records, quality, enqueuer=token,
                           replace=replace, submission=submission)  # fmt: skip
    remember(rt, scene)
    if force:
        rt.state.update_scene(scene.id, force="1")
    with _enqueuing(rt, scene.id, token):
        bound = {a.key: a for a in _finish(rt, scene.id, run, shots, scene.priority, force,
                                           fresh=True)}  # fmt: skip
    out = []
    for variants in shots:
        a = bound.get(f"{scene.id}/{variants[0].shot_id}")
        out.append(replace_job(variants[a.variant], node=a.node) if a else variants[0])
    return out


@contextlib.contextmanager
def _enqueuing(rt: Runtime, scene_id: str, token: str) -> Iterator[None]:
    """Keep the scene's enqueue lease (``token``) alive while the block runs, then free it."""
    keys = rt.settings.keys
    keeper = lifecycle.Keeper(rt, keys.enqueue_lease(scene_id), token, keys.scene(scene_id),
                              "enqueuer")  # fmt: skip
    keeper.start()
    try:
        yield
    finally:
        keeper.stop()
        lifecycle.release_lease(rt, keys.enqueue_lease(scene_id), token)


def _take_enqueue(rt: Runtime, scene_id: str, token: str) -> bool:
    """Take the scene's enqueue lease with ``token``; False while another process holds it."""
    keys = rt.settings.keys
    if not rt.redis.set(keys.enqueue_lease(scene_id), token, nx=True,
                        px=int(rt.settings.lease_ttl * 1000)):  # fmt: skip
        return False
    rt.redis.hset(keys.scene(scene_id), "enqueuer", token)
    return True


def _finish(rt: Runtime, scene_id: str, run: int, shots: list[list[Job]], priority: int,
            force: bool, *, fresh: bool = False) -> list:  # fmt: skip
    """The second half of an enqueue (or a retry), under the enqueue lease: freeze the
    chord of ``run`` over ``shots`` (unless done), start every shot still outside the
    backlog, mark the scene enqueued; returns what was bound at once. ``fresh``: the
    scene was just recorded, nothing of this is done yet."""
    d = Dispatcher(rt, app)
    chord_run = 0 if fresh else int(rt.redis.hget(rt.state.scene_key(scene_id), "chord_run") or 0)
    if chord_run != run:
        d.open_scene(scene_id, [v[0].shot_id for v in shots], run)
    waiting = shots
    if not fresh:
        records = {s["id"]: s for s in rt.state.shots(scene_id)}
        waiting = [v for v in shots if records[v[0].shot_id].get("state") == ShotState.QUEUED
                   and not records[v[0].shot_id].get("group")]  # fmt: skip
    start_shots(rt, d, scene_id, waiting, priority, force=force)
    rt.state.update_scene(scene_id, enqueued="1")
    return d.dispatch()


def resume(rt: Runtime, scene_id: str) -> bool:
    """Finish the enqueue (or retry) of a scene whose enqueuer died: its chord frozen, its
    shots in the backlog. False when there is nothing to do or another process does it."""
    token = lifecycle.new_token()
    if not _take_enqueue(rt, scene_id, token):
        return False
    with _enqueuing(rt, scene_id, token):
        scene = rt.state.scene(scene_id)
        if scene.get("enqueued") == "1" or scene.get("state") in TERMINAL_SCENE:
            return False
        parsed = scene_of(rt, scene_id)
        records = {s["id"]: s for s in rt.state.shots(scene_id)}
        planned = [v for v in plan_scene(parsed, scene.get("quality"), rt.catalog)
                   if records[v[0].shot_id].get("state") not in lifecycle.TERMINAL_SHOT]  # fmt: skip
        if not planned:  # nothing was reset before the retry died: the scene is over again
            rt.state.update_scene(scene_id, enqueued="1")
            return True
        take = {sid: int(r.get("take") or 1) for sid, r in records.items()}
        planned = [[replace_job(v, take=take[v.shot_id]) for v in variants]
                   for variants in planned]  # fmt: skip
        force = scene.get("force") == "1" or any(records[v[0].shot_id].get("force") == "1"
                                                 for v in planned)  # fmt: skip
        _finish(rt, scene_id, int(scene.get("run") or 1), planned, parsed.priority, force)
        return True


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
    scene = scene_of(rt, scene_id)
    planned = {v[0].shot_id: v for v in plan_scene(scene, info.get("quality"), rt.catalog)}
    token = lifecycle.new_token()
    if not _take_enqueue(rt, scene_id, token):
        raise InvalidInput(f"scene {scene_id!r} is being retried already; wait for it")
    with _enqueuing(rt, scene_id, token):
        _retry(rt, scene_id, scene, ids, shots, planned)
    return ids


def _retry(rt: Runtime, scene_id: str, scene: Scene, ids: list[str],
           shots: dict[str, dict], planned: dict[str, list[Job]]) -> None:  # fmt: skip
    keys = rt.settings.keys
    pipe = rt.redis.pipeline()
    pipe.delete(keys.blocklist(scene_id), keys.parked(scene_id))
    for shot_id in ids:
        pipe.hdel(keys.shot(scene_id, shot_id), "cancel")
    pipe.execute()
    run = lifecycle.reopen(rt, scene_id)
    takes = {}
    for shot_id in ids:
        takes[shot_id] = int(shots[shot_id].get("take") or 1) + 1
        lifecycle.reset(rt, scene_id, shot_id, progress=0.0, error=None, used_fallback=False,
                        primary_error=None, fallback=None, attempt=0, cache_hit=False, force="1",
                        retries=int(shots[shot_id].get("retries") or 0) + 1,
                        take=takes[shot_id], takes=[], gate=None, scoring="",
                        pending_take=None, kind=planned[shot_id][0].kind, finished=None)  # fmt: skip
    again = [[replace_job(v, take=takes[i]) for v in planned[i]] for i in ids]
    _finish(rt, scene_id, run, again, scene.priority, True)
