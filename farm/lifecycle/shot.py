"""The transitions of a shot (see :mod:`farm.lifecycle`)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from farm.keys import member
from farm.lifecycle.fenced import (
    EVENTS_MAXLEN,
    Outcome,
    _apply,
    _Spec,
    scripts,
)
from farm.lifecycle.states import SHOT_TRANSITIONS, ShotState
from farm.state import _encode

if TYPE_CHECKING:
    from farm.runtime import Runtime

# -- shots ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """Where a shot waits: its group (the needs shared with other shots, JSON), its score
    in the group (:func:`farm.scheduler.score`)."""

    group: str
    needs: str
    score: float


def _shot_spec(
    rt: Runtime,
    scene_id: str,
    shot_id: str,
    *,
    token: str | None = None,
    fence: str = "binding",
    event: str | None = None,
    data: Mapping[str, Any] | None = None,
    **fields: Any,
) -> _Spec:
    keys = rt.settings.keys
    spec = _Spec(keys, keys.shot(scene_id, shot_id), scene_id)
    s = spec.spec
    s.update(member=member(scene_id, shot_id), fence=fence, active=spec.key(keys.active()))
    if token is not None:
        s["token"] = token
    s["set"] = _encode({k: v for k, v in fields.items() if v is not None})
    s["unset"] = [k for k, v in fields.items() if v is None]
    if event:
        s["event"] = event
        s["data"] = _encode({"shot": shot_id, **(data or {})})
    return spec


def _to_backlog(rt: Runtime, spec: _Spec, scene_id: str, backlog: Backlog, cancelled: dict) -> None:
    """The shot goes to the backlog (parked if its scene is paused), or ends cancelled with
    ``cancelled``'s fields if it or its scene was cancelled."""
    keys = rt.settings.keys
    spec.spec["backlog"] = [
        spec.key(keys.groups()), backlog.group, backlog.needs, spec.key(keys.wait(backlog.group)),
        spec.key(keys.parked(scene_id)), repr(backlog.score),
        json.dumps([backlog.group, backlog.score]),
    ]  # fmt: skip
    spec.spec["on_cancel"] = _encode(
        {"error": "cancelled", "finished": time.time(), "binding": "", "group": "", **cancelled}
    )


def _release(rt: Runtime, spec: _Spec, node: str | None, token: str) -> None:
    if node:
        spec.spec["release"] = [spec.key(rt.settings.keys.bound(node)), token]


def _drop_lease(rt: Runtime, spec: _Spec, scene_id: str, shot_id: str, token: str) -> None:
    spec.spec["lease_drop"] = [spec.key(rt.settings.keys.lease(scene_id, shot_id)), token]


def wait(
    rt: Runtime, scene_id: str, shot_id: str, backlog: Backlog, rung: dict[str, Any], *,
    logged: Sequence[dict[str, Any]] = (), **fields: Any,
) -> Outcome:  # fmt: skip
    """A new (or retried) shot enters the backlog with ``rung`` (``logged``: what the
    cache served it first, a previewed shot's preview)."""
    spec = _shot_spec(rt, scene_id, shot_id, token="", rung=rung, group=backlog.group,
                      node="", **fields)  # fmt: skip
    spec.spec["append"] = [json.dumps(e) for e in logged]
    _to_backlog(rt, spec, scene_id, backlog, {})
    return _apply(rt, SHOT_TRANSITIONS, "wait", spec, ShotState.QUEUED)


def bind(
    rt: Runtime, scene_id: str, shot_id: str, group: str, token: str, job: dict[str, Any],
    node: str, queue: str,
) -> Outcome:  # fmt: skip
    """Take the shot from backlog group ``group`` and bind it to ``node`` with ``token``: it
    occupies one of the node's slots until it leaves bound and running."""
    keys = rt.settings.keys
    spec = _shot_spec(rt, scene_id, shot_id, token="", event="shot_bound",
                      data={"node": node, "attempt": job["attempt"]}, binding=token, job=job,
                      node=node, attempt=job["attempt"], kind=job["kind"], queue=queue,
                      on_node=None, stopping=None)  # fmt: skip
    spec.spec["take"] = [["zrem", spec.key(keys.wait(group))]]
    spec.spec["occupy"] = [spec.key(keys.bound(node)), token]
    return _apply(rt, SHOT_TRANSITIONS, "bind", spec, ShotState.BOUND)


def rebind(
    rt: Runtime, scene_id: str, shot_id: str, old: str, new: str, node: str, queue: str, *,
    why: str,
) -> Outcome:  # fmt: skip
    """Hand the shot's binding ``old`` over to a new delivery ``new`` (same node, same
    attempt): its delivery was lost, or its renderer died (then only while nobody holds
    its lease). The new delivery follows the node's job if it exists."""
    keys = rt.settings.keys
    spec = _shot_spec(rt, scene_id, shot_id, token=old, event="shot_rebound",
                      data={"node": node, "why": why}, binding=new, queue=queue)  # fmt: skip
    spec.spec["lease_free"] = spec.key(keys.lease(scene_id, shot_id))
    spec.spec["release"] = [spec.key(keys.bound(node)), old]
    spec.spec["occupy"] = [spec.key(keys.bound(node)), new]
    return _apply(rt, SHOT_TRANSITIONS, "rebind", spec, ShotState.BOUND)


def start(rt: Runtime, scene_id: str, shot_id: str, token: str, node: str, *,
          wait_for: float) -> Outcome:  # fmt: skip
    """The renderer of binding ``token`` starts: it takes the shot's lease. A second
    delivery of the same binding (Celery redelivered it: its worker died) waits up to
    ``wait_for`` seconds for the first one's lease to lapse, then takes over."""
    keys = rt.settings.keys
    lease = keys.lease(scene_id, shot_id)
    ttl_ms = int(rt.settings.lease_ttl * 1000)
    deadline = time.monotonic() + wait_for
    while True:
        spec = _shot_spec(rt, scene_id, shot_id, token=token, event="shot_started",
                          data={"node": node}, node=node, progress=0.0, started=time.time(),
                          on_node="1")  # fmt: skip
        spec.spec["lease_free"] = spec.key(lease)
        spec.spec["lease_set"] = [spec.key(lease), token, ttl_ms]
        spec.spec["rendering"] = True
        outcome = _apply(rt, SHOT_TRANSITIONS, "start", spec, ShotState.RUNNING)
        if outcome or outcome.why != "lease" or time.monotonic() > deadline:
            return outcome
        time.sleep(0.25)


def unbind(rt: Runtime, scene_id: str, shot_id: str, token: str, node: str, backlog: Backlog,
           rung: dict[str, Any], attempt: int, *, why: str) -> Outcome:  # fmt: skip
    """A bound shot goes back to the backlog before it started (its scene is paused, its
    node blocklisted for the scene or lost): its attempt is not spent."""
    spec = _shot_spec(rt, scene_id, shot_id, token=token, event="shot_unbound",
                      data={"node": node, "why": why}, binding="", node="", rung=rung,
                      group=backlog.group, attempt=attempt, on_node=None, queue=None)  # fmt: skip
    _release(rt, spec, node, token)
    _to_backlog(rt, spec, scene_id, backlog, {})
    return _apply(rt, SHOT_TRANSITIONS, "unbind", spec, ShotState.QUEUED)


def rendered(rt: Runtime, scene_id: str, shot_id: str, token: str, node: str, *,
             scoring: str, take: dict[str, Any], outputs: dict[str, Any],
             logged: dict[str, Any]) -> Outcome:  # fmt: skip
    """The renderer of ``token`` finished: its attempt is ``logged`` and the take goes to
    the quality gate with scoring token ``scoring``; the node slot and lease are freed."""
    spec = _shot_spec(rt, scene_id, shot_id, token=token, event="shot_scoring",
                      data={"node": node}, scoring=scoring, pending_take=take, outputs=outputs,
                      progress=1.0, cache_hit=False, binding="", on_node=None)  # fmt: skip
    spec.spec["append"] = [json.dumps(logged)]
    _release(rt, spec, node, token)
    _drop_lease(rt, spec, scene_id, shot_id, token)
    return _apply(rt, SHOT_TRANSITIONS, "rendered", spec, ShotState.SCORING)


def cached(rt: Runtime, scene_id: str, shot_id: str, *, source: str, token: str,
           node: str | None, scoring: str, take: dict[str, Any], outputs: dict[str, Any],
           logged: Sequence[dict[str, Any]], **fields: Any) -> Outcome:  # fmt: skip
    """The render cache serves the shot's take: from ``source`` (queued: at submission;
    running: a preview's final; scoring: a retake) with its fence ``token``; ``logged``:
    the attempts to log (a running preview's, and the cache's own entries)."""
    fence = "scoring" if source == ShotState.SCORING else "binding"
    spec = _shot_spec(rt, scene_id, shot_id, token=token, fence=fence, event="shot_scoring",
                      data={"kind": take["kind"], "cache_hit": True}, scoring=scoring, pending_take=take,
                      outputs=outputs, progress=1.0, cache_hit=True, binding="", on_node=None,
                      **fields)  # fmt: skip
    spec.spec["append"] = [json.dumps(e) for e in logged]
    if source == ShotState.RUNNING:
        _release(rt, spec, node, token)
    if source in (ShotState.RUNNING, ShotState.SCORING):
        _drop_lease(rt, spec, scene_id, shot_id, token)
    return _apply_from(rt, "cached", spec, ShotState.SCORING, {source})


def next_rung(rt: Runtime, scene_id: str, shot_id: str, token: str, node: str | None,
              backlog: Backlog, rung: dict[str, Any], *, logged: Sequence[dict[str, Any]],
              event: str, data: Mapping[str, Any], **fields: Any) -> Outcome:  # fmt: skip
    """The renderer of ``token`` sends the shot on: the next rung of its fallback ladder
    (its failed attempt ``logged``), or the final after its preview; it waits in the
    backlog (cancelled instead, if it was)."""
    spec = _shot_spec(rt, scene_id, shot_id, token=token, event=event, data=data, binding="",
                      node="", rung=rung, group=backlog.group, on_node=None, queue=None,
                      **fields)  # fmt: skip
    spec.spec["append"] = [json.dumps(e) for e in logged]
    _release(rt, spec, node, token)
    _drop_lease(rt, spec, scene_id, shot_id, token)
    _to_backlog(rt, spec, scene_id, backlog, {})
    return _apply(rt, SHOT_TRANSITIONS, "next", spec, ShotState.QUEUED)


def lost(rt: Runtime, scene_id: str, shot_id: str, token: str, node: str, backlog: Backlog,
         rung: dict[str, Any], *, logged: dict[str, Any], **fields: Any) -> Outcome:  # fmt: skip
    """The shot's node died with its attempt on it (and the job is off the node): the
    attempt is ``logged`` lost and a new one waits for another node. Only while nobody
    holds the shot's lease."""
    spec = _shot_spec(rt, scene_id, shot_id, token=token, event="shot_requeued",
                      data={"node": node, "error": fields.get("error")}, binding="", node="",
                      rung=rung, group=backlog.group, on_node=None, stopping=None, queue=None,
                      **fields)  # fmt: skip
    spec.spec["append"] = [json.dumps(logged)]
    spec.spec["lease_free"] = spec.key(rt.settings.keys.lease(scene_id, shot_id))
    _release(rt, spec, node, token)
    _to_backlog(rt, spec, scene_id, backlog, {})
    return _apply(rt, SHOT_TRANSITIONS, "lost", spec, ShotState.QUEUED)


def fail(rt: Runtime, scene_id: str, shot_id: str, *, error: str, token: str | None = None,
         node: str | None = None, group: str | None = None,
         logged: dict[str, Any] | None = None) -> Outcome:  # fmt: skip
    """The shot failed: its renderer's last rung failed (``token``, the attempt
    ``logged``), or it waited in backlog group ``group`` with no live node able to take it."""
    spec = _shot_spec(rt, scene_id, shot_id, token=token, event="shot_failed",
                      data={"error": error}, error=error, finished=time.time(), binding="",
                      group="", on_node=None, queue=None)  # fmt: skip
    if logged is not None:
        spec.spec["append"] = [json.dumps(logged)]
    if token:
        _release(rt, spec, node, token)
        _drop_lease(rt, spec, scene_id, shot_id, token)
        return _apply(rt, SHOT_TRANSITIONS, "fail", spec, ShotState.FAILED)
    spec.spec["take"] = [["zrem", spec.key(rt.settings.keys.wait(group or ""))]]
    return _apply_from(rt, "fail", spec, ShotState.FAILED, {ShotState.QUEUED})


def cancel(rt: Runtime, scene_id: str, shot_id: str, *, state: str, token: str = "",
           node: str | None = None, group: str | None = None,
           logged: dict[str, Any] | None = None) -> Outcome:  # fmt: skip
    """Cancel the shot in ``state``: a waiting one is taken from the backlog (or its
    paused scene's parking); a bound, running or scoring one by the owner of ``token``
    (its binding, or its scoring token)."""
    keys = rt.settings.keys
    fence = "scoring" if state == ShotState.SCORING else "binding"
    spec = _shot_spec(rt, scene_id, shot_id, token=token, fence=fence, event="shot_cancelled",
                      error="cancelled", finished=time.time(), binding="", group="",
                      on_node=None, queue=None)  # fmt: skip
    if logged is not None:
        spec.spec["append"] = [json.dumps(logged)]
    if state == ShotState.QUEUED:
        spec.spec["take"] = [["zrem", spec.key(keys.wait(group or ""))],
                             ["hdel", spec.key(keys.parked(scene_id))]]  # fmt: skip
    else:
        _release(rt, spec, node, token)
        _drop_lease(rt, spec, scene_id, shot_id, token)
    return _apply_from(rt, "cancel", spec, ShotState.CANCELLED, {state})


def _apply_from(rt: Runtime, name: str, spec: _Spec, to: str, start: set[str]) -> Outcome:
    """Transition ``name`` from the states of ``start`` only (a subset of its own)."""
    allowed, ends = SHOT_TRANSITIONS[name]
    if not start <= allowed:
        raise ValueError(f"transition {name!r} does not start from {sorted(start - allowed)}")
    return _apply(rt, {name: (frozenset(start), ends)}, name, spec, to)


def rescore(rt: Runtime, scene_id: str, shot_id: str, old: str, new: str) -> Outcome:
    """The shot's scoring task ``old`` was lost (no lease, nothing in the CPU queue): a new
    one, ``new``, scores the same take. Only while nobody holds the shot's lease."""
    spec = _shot_spec(rt, scene_id, shot_id, token=old, fence="scoring", event="shot_rescoring",
                      scoring=new)  # fmt: skip
    spec.spec["lease_free"] = spec.key(rt.settings.keys.lease(scene_id, shot_id))
    return _apply(rt, SHOT_TRANSITIONS, "rescore", spec, ShotState.SCORING)


def keep(rt: Runtime, scene_id: str, shot_id: str, scoring: str, gate: dict[str, Any],
         **fields: Any) -> Outcome:  # fmt: skip
    """The quality gate (scoring task ``scoring``) keeps a take (``gate``: its decision):
    the shot is done."""
    spec = _shot_spec(rt, scene_id, shot_id, token=scoring, fence="scoring", event="shot_done",
                      data={"decision": gate["decision"], "kept": gate["kept"],
                            "takes": gate["takes"], "node": fields.get("node")},
                      scoring="", progress=1.0, error=None, finished=time.time(), gate=gate,
                      **fields)  # fmt: skip
    _drop_lease(rt, spec, scene_id, shot_id, scoring)
    return _apply(rt, SHOT_TRANSITIONS, "keep", spec, ShotState.DONE)


def retake(rt: Runtime, scene_id: str, shot_id: str, scoring: str, backlog: Backlog,
           rung: dict[str, Any], *, data: Mapping[str, Any], **fields: Any) -> Outcome:  # fmt: skip
    """The quality gate (scoring task ``scoring``) asks for a new take: it waits in the
    backlog (cancelled instead, if it was)."""
    spec = _shot_spec(rt, scene_id, shot_id, token=scoring, fence="scoring",
                      event="shot_gate_retake", data=data, scoring="", rung=rung,
                      group=backlog.group, node="", binding="", **fields)  # fmt: skip
    _drop_lease(rt, spec, scene_id, shot_id, scoring)
    _to_backlog(rt, spec, scene_id, backlog, {})
    return _apply(rt, SHOT_TRANSITIONS, "retake", spec, ShotState.QUEUED)


def reset(rt: Runtime, scene_id: str, shot_id: str, **fields: Any) -> Outcome:
    """`farm retry`: a shot that is over is queued again (its scene was reopened); it
    enters the backlog with :func:`wait`."""
    spec = _shot_spec(rt, scene_id, shot_id, event="shot_retry_requested", binding="",
                      group="", node="", **fields)  # fmt: skip
    return _apply(rt, SHOT_TRANSITIONS, "reset", spec, ShotState.QUEUED)


def guarded_write(rt: Runtime, scene_id: str, shot_id: str, token: str,
                  event: str | None = None, **fields: Any) -> bool:  # fmt: skip
    """Write ``fields`` (progress, a preview) to a running shot only while its binding is
    still ``token``; False (nothing written) when the shot moved on."""
    keys = rt.settings.keys
    flat = [x for kv in _encode({**fields, "updated": time.time()}).items() for x in kv]
    return bool(scripts(rt.redis).write(
        keys=[keys.shot(scene_id, shot_id), keys.events(scene_id)],
        args=["binding", token, ShotState.RUNNING, event or "", f"{time.time():.3f}",
              EVENTS_MAXLEN, json.dumps(shot_id), *flat],
    ))  # fmt: skip
