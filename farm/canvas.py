"""Celery, as the farm drives it: a scene's chord and the publication of its slots, and
every use of a Celery or kombu internal, in this one module.

A scene runs as one chord: a header slot per shot, and a body (``farm.assemble_scene``
then ``farm.score_scene`` on the CPU queue). The chord is frozen when the scene is
enqueued, but its header tasks are not published then: each shot's *slot* (its header
task id and index, with the chord id and body) is kept on the shot, and the farm
publishes a task into it when the shot is bound to a node — what ``Task.replace`` does —
and again for each later step (a fallback, the scoring of its take). Celery's chord join
counts a slot once (task id and index, Celery ≥ 5.7), so the body runs once however
often a slot is published.

Internals used here, each checked by tests/test_canvas.py so a Celery or kombu upgrade
that changes them fails loudly:

- ``chord.freeze()`` and the frozen header's ``options["chord"]`` / ``group_index``;
  ``backend.set_chord_size`` (the chord is never applied as a whole);
- ``send_task(..., group_id=, group_index=, chord=)``: publishing into a slot;
- ``backend._pending_results`` and ``result_consumer.cancel_for``: freezing and publishing
  subscribe this process to results it never reads; :func:`unsubscribe` drops them;
- kombu's Redis transport keeps priority ``p`` of queue ``q`` in the list ``q`` (p = 0)
  or ``q{sep}{p}`` (:func:`queue_lists`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from farm.settings import Settings


@dataclass(frozen=True)
class Chord:
    """A frozen scene chord: its id, its body (as a header task's ``chord`` option), one
    slot (task id, index) per shot, and the id of the body's last task."""

    id: str
    body: dict[str, Any]
    slots: list[tuple[str, int]]
    result_id: str = ""


def scene_body(app: Celery, scene_id: str, run: int, cpu_queue: str,
               records: list | None = None):  # fmt: skip
    """The chord body of ``run`` of a scene: assemble it, then score it. As a chord body
    it gets the shots' records first; sent on its own, ``records`` stands for them."""
    head = () if records is None else (records,)
    return app.signature(
        "farm.assemble_scene", args=(*head, scene_id, run), queue=cpu_queue
    ) | app.signature("farm.score_scene", args=(scene_id, run), queue=cpu_queue)


def freeze_chord(app: Celery, scene_id: str, shot_ids: Sequence[str], body) -> Chord:
    """Freeze a chord of one slot per shot and ``body``; its size is set, so it completes
    when every slot was filled once."""
    from celery import chord

    header = [app.signature("farm.render", args=(scene_id, s)) for s in shot_ids]
    ch = chord(header, body)
    body_result = ch.freeze()
    app.backend.set_chord_size(ch.tasks.id, len(shot_ids))
    ids = [t.id for t in ch.tasks.tasks] + [body_result.id]
    parent = body_result.parent
    while parent is not None:
        ids.append(parent.id)
        parent = parent.parent
    unsubscribe(app, ids)
    chord_body = dict(ch.tasks.tasks[0].options["chord"]) if shot_ids else {}
    slots = [(t.id, int(t.options["group_index"])) for t in ch.tasks.tasks]
    return Chord(ch.tasks.id, chord_body, slots, body_result.id)


def fill_slot(
    app: Celery,
    name: str,
    args: tuple,
    *,
    task_id: str,
    chord_id: str,
    index: int,
    chord_body: Mapping[str, Any],
    queue: str,
    priority: int | None = None,
    countdown: float | None = None,
) -> None:
    """Publish task ``name`` into a chord slot (its task id, group and index) on ``queue``."""
    options: dict[str, Any] = {}
    if priority is not None:
        options["priority"] = priority
    if countdown:
        options["countdown"] = countdown
    result = app.send_task(
        name, args=args, task_id=task_id, group_id=chord_id, group_index=index,
        chord=dict(chord_body), queue=queue, **options,
    )  # fmt: skip
    unsubscribe(app, [result.id])  # publishing subscribed this process to it


def send(app: Celery, signature, countdown: float = 0.0) -> None:
    """Publish a signature (a chord body sent again) and forget its results."""
    result = signature.apply_async(countdown=countdown or None)
    ids = []
    while result is not None:
        ids.append(result.id)
        result = result.parent
    unsubscribe(app, ids)


def unsubscribe(app: Celery, task_ids: Sequence[str]) -> None:
    """Freezing a chord subscribes this process to its header results; progress is read
    from the farm state, so drop them now, while Redis is up (not at interpreter exit)."""
    backend = app.backend
    pending = getattr(backend, "_pending_results", None)
    for task_id in task_ids:
        results = []
        for mapping in pending or ():  # celery 5.7: task id -> {id(result): result}
            waiting = mapping.get(task_id)
            results += list(waiting.values()) if isinstance(waiting, Mapping) else [waiting]
        with contextlib.suppress(Exception):  # not subscribed
            for result in filter(None, results):
                backend.remove_pending_result(result)
            if not any(results):
                backend.result_consumer.cancel_for(task_id)


def queue_lists(settings: Settings, queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages: its own (priority 0) and one per
    other priority step (kombu's ``priority_steps``, named QUEUE + sep + priority)."""
    from farm.celery_app import celery_config

    options = celery_config(settings)["broker_transport_options"]
    return [queue, *(f"{queue}{options['sep']}{p}" for p in options["priority_steps"] if p)]


def queue_depth(client: redis.Redis, settings: Settings, queue: str) -> int:
    """Messages waiting in ``queue`` (every priority), not those a worker reserved."""
    pipe = client.pipeline(transaction=False)
    for key in queue_lists(settings, queue):
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())
