"""The states of a shot and of a scene, and the table of transitions allowed between them
(see :mod:`farm.lifecycle`)."""

from __future__ import annotations

from enum import StrEnum


class SceneState(StrEnum):
    QUEUED = "queued"
    RENDERING = "rendering"
    ASSEMBLING = "assembling"
    SCORING = "scoring"
    DONE = "done"  # every shot rendered
    PARTIAL = "partial"  # assembled, some shots failed
    FAILED = "failed"  # no shot rendered, or assembly failed twice
    CANCELLED = "cancelled"  # `farm cancel`


class ShotState(StrEnum):
    QUEUED = "queued"  # waiting in the backlog (or parked: its scene is paused)
    BOUND = "bound"  # published to a node's queue, not started
    RUNNING = "running"  # a renderer holds its lease
    SCORING = "scoring"  # rendered; the quality gate scores the take (farm.gate)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_SCENE = frozenset(
    {SceneState.DONE, SceneState.PARTIAL, SceneState.FAILED, SceneState.CANCELLED}
)
TERMINAL_SHOT = frozenset({ShotState.DONE, ShotState.FAILED, ShotState.CANCELLED})
#: shots someone works on: in the index of active shots, each with an owner and a deadline
ACTIVE_SHOT = frozenset({ShotState.BOUND, ShotState.RUNNING, ShotState.SCORING})

_Q, _B, _R, _S = ShotState.QUEUED, ShotState.BOUND, ShotState.RUNNING, ShotState.SCORING

#: transition -> (states it starts from, states it may end in)
SHOT_TRANSITIONS: dict[str, tuple[frozenset[ShotState], frozenset[ShotState]]] = {
    # a new or retried shot enters the backlog
    "wait": (frozenset({_Q}), frozenset({_Q, ShotState.CANCELLED})),
    # the dispatcher takes it from the backlog and publishes it to a node's queue
    "bind": (frozenset({_Q}), frozenset({_B})),
    # its delivery was lost, or its renderer died while its node lives: publish it again
    "rebind": (frozenset({_B, _R}), frozenset({_B})),
    # a renderer takes its lease (from running: a redelivery takes over a dead renderer)
    "start": (frozenset({_B, _R}), frozenset({_R})),
    # back to the backlog unstarted: its scene is paused, its node blocklisted or lost
    "unbind": (frozenset({_B}), frozenset({_Q, ShotState.CANCELLED})),
    # rendered: the take goes to the quality gate
    "rendered": (frozenset({_R}), frozenset({_S})),
    # the render cache served the take
    "cached": (frozenset({_Q, _R, _S}), frozenset({_S})),
    # the next rung of the fallback ladder, or the final after its preview
    "next": (frozenset({_R}), frozenset({_Q, ShotState.CANCELLED})),
    # its node died: its attempt is over, a new one waits for another node
    "lost": (frozenset({_B, _R}), frozenset({_Q, ShotState.CANCELLED})),
    # no rung left, or no live node could take it in time
    "fail": (frozenset({_Q, _R}), frozenset({ShotState.FAILED})),
    "cancel": (frozenset({_Q, _B, _R, _S}), frozenset({ShotState.CANCELLED})),
    # its scoring task was lost: score it again
    "rescore": (frozenset({_S}), frozenset({_S})),
    # the gate kept a take
    "keep": (frozenset({_S}), frozenset({ShotState.DONE})),
    # the gate asks for a new take
    "retake": (frozenset({_S}), frozenset({_Q, ShotState.CANCELLED})),
    # `farm retry`
    "reset": (TERMINAL_SHOT, frozenset({_Q})),
}

_SQ, _SR, _SA, _SS = (SceneState.QUEUED, SceneState.RENDERING, SceneState.ASSEMBLING,
                      SceneState.SCORING)  # fmt: skip
SCENE_TRANSITIONS: dict[str, tuple[frozenset[SceneState], frozenset[SceneState]]] = {
    # its first shot started (made by the shot's own start)
    "render": (frozenset({_SQ}), frozenset({_SR})),
    # an assembly task claims it (from assembling: its assembler died or failed once)
    "assemble": (frozenset({_SQ, _SR, _SA}), frozenset({_SA})),
    "assembled": (frozenset({_SA}), frozenset({_SS})),
    # a scoring task claims it (from scoring: its scorer died or failed once)
    "score": (frozenset({_SS}), frozenset({_SS})),
    # the stage's task failed or died: its lease is dropped for one more try
    "release": (frozenset({_SA, _SS}), frozenset({_SA, _SS})),
    "finish": (frozenset({_SS}), frozenset({SceneState.DONE, SceneState.PARTIAL})),
    "fail": (frozenset({_SQ, _SR, _SA, _SS}), frozenset({SceneState.FAILED})),
    "cancel": (frozenset({_SQ, _SR, _SA}), frozenset({SceneState.CANCELLED})),
    # `farm retry`
    "reopen": (TERMINAL_SCENE, frozenset({_SQ})),
}

#: the Lua script behind every transition; see :func:`_apply`
