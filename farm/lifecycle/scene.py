"""The transitions of a scene (see :mod:`farm.lifecycle`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis

from farm.lifecycle.fenced import EVENTS_MAXLEN, Outcome, _apply, _Spec, new_token
from farm.lifecycle.states import SCENE_TRANSITIONS, TERMINAL_SCENE, SceneState, ShotState
from farm.state import _encode

if TYPE_CHECKING:
    from farm.runtime import Runtime

# -- scenes ---------------------------------------------------------------------------------


def create(
    rt: Runtime,
    spec: dict[str, Any],
    shots: list[dict[str, Any]],
    quality: str,
    *,
    enqueuer: str,
    replace: bool = False,
    submission: str | None = None,
) -> int:
    """(new) -> queued: record a new scene and its queued ``shots`` (each ``{"shot_id",
    "node", "kind"}``), held by ``enqueuer`` (the enqueue lease's token) until it has
    opened its chord and filled the backlog; returns its run. Refuses to clobber a scene
    that is not over, and one that is over unless ``replace``."""
    from farm.errors import InvalidInput

    keys = rt.settings.keys
    scene_id = spec["id"]
    existing, old_run = rt.redis.hmget(keys.scene(scene_id), ["state", "run"])
    if existing is not None:
        if existing not in TERMINAL_SCENE:
            raise InvalidInput(
                f"scene {scene_id!r} is already {existing}; wait for it to finish or use another id"
            )
        if not replace:
            raise InvalidInput(
                f"scene {scene_id!r} already exists ({existing}); pass --replace to render it again"
            )
        rt.state.delete_scene(scene_id)
    run = int(old_run or 0) + 1  # stale tasks of the replaced scene never match it
    now = time.time()
    with rt.redis.pipeline() as pipe:
        try:
            pipe.watch(keys.scene(scene_id))
            if pipe.exists(keys.scene(scene_id)):
                raise redis.WatchError
            pipe.multi()
            pipe.hset(keys.scene(scene_id), mapping=_encode({
                "id": scene_id, "title": spec.get("title", ""), "quality": quality,
                "priority": spec.get("priority", 5), "state": SceneState.QUEUED, "spec": spec,
                "shots": [s["shot_id"] for s in shots], "outputs": {}, "metrics": {},
                "created": now, "updated": now, "since": now, "submission": submission,
                "run": run, "open": len(shots), "version": 1, "enqueuer": enqueuer,
            }))  # fmt: skip
            for shot in shots:
                pipe.hset(keys.shot(scene_id, shot["shot_id"]), mapping=_encode({
                    "id": shot["shot_id"], "state": ShotState.QUEUED, "progress": 0.0,
                    "node": shot["node"], "kind": shot["kind"], "attempts": 0, "outputs": {},
                    "error": None, "used_fallback": False, "primary_error": None,
                    "attempt_log": [], "updated": now,
                }))  # fmt: skip
            pipe.zadd(keys.scenes(), {scene_id: now})
            pipe.sadd(keys.open_scenes(), scene_id)
            pipe.zrem(keys.over_scenes(), scene_id)
            pipe.set(keys.enqueue_lease(scene_id), enqueuer, px=int(rt.settings.lease_ttl * 1000))
            pipe.xadd(keys.events(scene_id), _encode({"shots": len(shots), "quality": quality})
                      | {"type": "scene_queued", "time": f"{now:.3f}", "state": "queued"},
                      maxlen=EVENTS_MAXLEN, approximate=True)  # fmt: skip
            pipe.execute()
        except redis.WatchError:
            raise InvalidInput(
                f"scene {scene_id!r} is being enqueued by another request; wait for it to "
                "finish or use another id"
            ) from None
    return run


def _scene_spec(rt: Runtime, scene_id: str, run: int | None, *, token: str | None = None,
                event: str | None = None, data: Mapping[str, Any] | None = None,
                **fields: Any) -> _Spec:  # fmt: skip
    keys = rt.settings.keys
    spec = _Spec(keys, keys.scene(scene_id), scene_id)
    s = spec.spec
    s["fence"] = "stage"
    if token is not None:
        s["token"] = token
    if run is not None:
        s["run"] = str(run)
    s["scene"] = [spec.key(keys.open_scenes()), spec.key(keys.over_scenes()), scene_id]
    s["set"] = _encode({k: v for k, v in fields.items() if v is not None})
    s["unset"] = [k for k, v in fields.items() if v is None]
    if event:
        s["event"] = event
        s["data"] = _encode(dict(data or {}))
    return spec


def claim(rt: Runtime, scene_id: str, run: int, stage: str, *, wait_for: float) -> str | None:
    """A task of ``run``'s chord body claims ``stage`` (``assembling`` or ``scoring``): it
    holds the scene's lease with the returned token while it works; None when this
    delivery has nothing to do (another run, the stage done or held by a live task —
    a redelivered task waits up to ``wait_for`` seconds for a dead one's lease)."""
    keys = rt.settings.keys
    token = new_token()
    name = "assemble" if stage == SceneState.ASSEMBLING else "score"
    lease = keys.scene_lease(scene_id)
    deadline = time.monotonic() + wait_for
    while True:
        spec = _scene_spec(rt, scene_id, run, event=f"scene_{stage}", stage=token)
        spec.spec["lease_free"] = spec.key(lease)
        spec.spec["lease_set"] = [spec.key(lease), token, int(rt.settings.lease_ttl * 1000)]
        spec.spec["incr"] = ["stage_tries"]
        outcome = _apply(rt, SCENE_TRANSITIONS, name, spec, stage)
        if outcome:
            return token
        if outcome.why != "lease" or time.monotonic() > deadline:
            return None
        time.sleep(0.25)


def assembled(rt: Runtime, scene_id: str, token: str, **fields: Any) -> Outcome:
    """The assembler (``token``) is done: the scene goes to scoring (its scorer claims it)."""
    spec = _scene_spec(rt, scene_id, None, token=token, event="scene_assembled", stage="",
                       stage_tries=0, stage_sent=time.time(), **fields)  # fmt: skip
    spec.spec["lease_drop"] = [spec.key(rt.settings.keys.scene_lease(scene_id)), token]
    return _apply(rt, SCENE_TRANSITIONS, "assembled", spec, SceneState.SCORING)


def finish(rt: Runtime, scene_id: str, token: str, partial: bool, **fields: Any) -> Outcome:
    """The scorer (``token``) wrote the report: the scene is over."""
    to = SceneState.PARTIAL if partial else SceneState.DONE
    spec = _scene_spec(rt, scene_id, None, token=token, event="scene_done", stage="",
                       finished=time.time(), **fields)  # fmt: skip
    spec.spec["lease_drop"] = [spec.key(rt.settings.keys.scene_lease(scene_id)), token]
    return _apply(rt, SCENE_TRANSITIONS, "finish", spec, to)


def release(rt: Runtime, scene_id: str, state: str, token: str | None, error: str) -> Outcome:
    """The stage's task failed (``token``) or died (None: only while nobody holds the
    lease): the lease is dropped for one more try, the error kept."""
    keys = rt.settings.keys
    spec = _scene_spec(rt, scene_id, None, token=token, event="scene_stage_retry",
                       data={"error": error}, stage="", stage_error=error,
                       stage_sent=time.time())  # fmt: skip
    if token is None:
        spec.spec["lease_free"] = spec.key(keys.scene_lease(scene_id))
    else:
        spec.spec["lease_drop"] = [spec.key(keys.scene_lease(scene_id)), token]
    return _apply(rt, {"release": (frozenset({state}), frozenset({state}))}, "release", spec,
                  state)  # fmt: skip


def fail_scene(rt: Runtime, scene_id: str, error: str, *, token: str | None = None,
               states: Iterable[str] | None = None) -> Outcome:  # fmt: skip
    """The scene failed (no shot rendered, or its assembly or scoring failed twice)."""
    keys = rt.settings.keys
    spec = _scene_spec(rt, scene_id, None, token=token, event="scene_failed",
                       data={"error": error}, error=error, stage="",
                       finished=time.time())  # fmt: skip
    if token is not None:
        spec.spec["lease_drop"] = [spec.key(keys.scene_lease(scene_id)), token]
    table = SCENE_TRANSITIONS
    if states is not None:
        table = {"fail": (frozenset(states) & table["fail"][0], table["fail"][1])}
    return _apply(rt, table, "fail", spec, SceneState.FAILED)


def cancel_scene(rt: Runtime, scene_id: str, token: str) -> Outcome:
    """The assembler (``token``) found the scene cancelled: it ends cancelled."""
    spec = _scene_spec(rt, scene_id, None, token=token, event="scene_cancelled", stage="",
                       finished=time.time())  # fmt: skip
    spec.spec["lease_drop"] = [spec.key(rt.settings.keys.scene_lease(scene_id)), token]
    return _apply(rt, SCENE_TRANSITIONS, "cancel", spec, SceneState.CANCELLED)


def reopen(rt: Runtime, scene_id: str) -> int:
    """`farm retry`: a scene that is over is queued again as a new run (a new chord);
    returns the run. The caller checked that it is over."""
    spec = _scene_spec(rt, scene_id, None, event="scene_retry", error=None, stage="",
                       stage_tries=0, stage_error=None, enqueued=None, cancel=None,
                       paused=None, finished=None)  # fmt: skip
    spec.spec["incr"] = ["run"]
    outcome = _apply(rt, SCENE_TRANSITIONS, "reopen", spec, SceneState.QUEUED)
    if not outcome:
        raise RuntimeError(f"scene {scene_id} could not be reopened ({outcome.why})")
    return int(rt.redis.hget(rt.settings.keys.scene(scene_id), "run") or 1)
