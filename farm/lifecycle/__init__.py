"""The life of a shot and of a scene: their states, the transitions allowed between them,
and one function per transition that applies it atomically.

Every change of a shot's or a scene's ``state`` goes through this module; nothing else
writes it. A transition is applied by one Lua script (:data:`SCRIPT`) only while the
record is still in one of the states it starts from and still holds the caller's token —
its *fence*: a shot's ``binding`` (the delivery that owns it on a node), its ``scoring``
token (the scoring task that owns it on the CPU queue), or a scene's ``run`` (the chord
of its latest enqueue or retry) — so a stale worker (killed, frozen, cut off) can never
overwrite what a newer owner did. In the same script, atomically: the record's fields,
an entry appended to its attempt log, the node slot released or taken, the backlog entry
taken or added (a cancelled shot is cancelled instead of queued, a paused scene's shot
is parked), the lease set or dropped, the index of active shots, the scene's count of
shots not over, and the event on the scene's stream. Every transition bumps the record's
``version`` and sets ``since`` (when it entered its state), which the timeout checker
(:mod:`farm.checker`) reads for its deadlines.

Shots (``*`` marks the transitions the timeout checker makes)::

    (new) ─► queued ──bind──► bound ──start──► running ──rendered──► scoring ──keep──► done
               ▲  │             │ ▲ rebind*     │  ▲ start         │       ▲ rescore*
               │  │             │ └─────────────┘  │ (redelivery)  │       │ cached
               │  └──fail──►    │ unbind*          │               ├─retake──► queued
               │     failed     ▼                  ├─next─► queued (next rung, final after preview)
               │              queued               ├─lost*─► queued (its node died: a new attempt)
               │                                   └─fail──► failed
               └─reset── done | failed | cancelled   (`farm retry`)
    any of queued, bound, running, scoring ──cancel──► cancelled; a shot sent back to
    queued after it was cancelled ends cancelled instead.

Scenes::

    queued ─► rendering ─assemble─► assembling ─assembled─► scoring ─finish─► done | partial
                                       │ ▲ (retry once)       │ ▲ (retry once)
                                       └─┴──► failed ◄────────┴─┘
    queued | rendering | assembling ─cancel─► cancelled;  done | partial | failed |
    cancelled ─reopen─► queued (`farm retry`)

Modules: :mod:`~farm.lifecycle.states` (the states and the tables),
:mod:`~farm.lifecycle.fenced` (the Lua script every transition runs),
:mod:`~farm.lifecycle.shot` and :mod:`~farm.lifecycle.scene` (one function per
transition), :mod:`~farm.lifecycle.leases` (leases and locks released only by their
holder). Everything is imported from ``farm.lifecycle``.
"""

from farm.lifecycle.fenced import EVENTS_MAXLEN, Outcome, _apply, new_token, scripts
from farm.lifecycle.leases import Keeper, Lock, hold, release_lease, release_slot
from farm.lifecycle.scene import (
    assembled,
    cancel_scene,
    claim,
    create,
    fail_scene,
    finish,
    release,
    reopen,
)
from farm.lifecycle.shot import (
    Backlog,
    _shot_spec,
    bind,
    cached,
    cancel,
    fail,
    guarded_write,
    keep,
    lost,
    next_rung,
    rebind,
    rendered,
    rescore,
    reset,
    retake,
    start,
    unbind,
    wait,
)
from farm.lifecycle.states import (
    ACTIVE_SHOT,
    SCENE_TRANSITIONS,
    SHOT_TRANSITIONS,
    TERMINAL_SCENE,
    TERMINAL_SHOT,
    SceneState,
    ShotState,
)

__all__ = [
    "ACTIVE_SHOT", "EVENTS_MAXLEN", "SCENE_TRANSITIONS", "SHOT_TRANSITIONS", "TERMINAL_SCENE",
    "TERMINAL_SHOT", "Backlog", "Keeper", "Lock", "Outcome", "SceneState", "ShotState",
    "_apply", "_shot_spec", "assembled", "bind", "cached", "cancel", "cancel_scene", "claim",
    "create", "fail", "fail_scene", "finish", "guarded_write", "hold", "keep", "lost",
    "new_token", "next_rung", "rebind", "release", "release_lease", "release_slot", "rendered",
    "reopen", "rescore", "reset", "retake", "scripts", "start", "unbind", "wait",
]  # fmt: skip
