"""The Celery and kombu internals the farm relies on (farm.canvas), each checked against
the installed Celery with a real worker, so an upgrade that changes them fails here, by
name, instead of stranding scenes."""

from __future__ import annotations

import time
import uuid

from farm import canvas
from farm.celery_app import app


def wait_ready(result, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.ready():
            return True
        time.sleep(0.1)
    return False


def test_a_slot_filled_twice_counts_once_and_the_body_runs_when_every_slot_is_filled(rt):
    """Celery's chord join de-duplicates by task id and index: a slot published again
    (a redelivery, the farm's own second publication) does not complete the chord."""
    scene_id = f"canvas-{uuid.uuid4().hex[:8]}"  # no such scene: its body skips, harmlessly
    body = canvas.scene_body(app, scene_id, 1, rt.settings.cpu_queue)
    chord = canvas.freeze_chord(app, scene_id, ["a", "b"], body)
    assert len(chord.slots) == 2 and [i for _, i in chord.slots] == [0, 1]
    assert chord.body["task"] == "celery.chain"  # assemble, then score
    tasks = [t["task"] for t in chord.body["kwargs"]["tasks"]]
    assert tasks == ["farm.assemble_scene", "farm.score_scene"]

    def fill(index: int) -> None:
        task_id, slot = chord.slots[index]
        canvas.fill_slot(app, "farm.close_shot", ({"shot_id": str(index)},), task_id=task_id,
                         chord_id=chord.id, index=slot, chord_body=chord.body,
                         queue=rt.settings.cpu_queue)  # fmt: skip

    result = app.AsyncResult(chord.result_id)
    fill(0)
    fill(0)
    assert not wait_ready(result, timeout=5.0), "a slot filled twice completed a 2-slot chord"
    fill(1)
    assert wait_ready(result), "the chord body did not run once every slot was filled"
    assert result.get(timeout=5) == {"scene_id": scene_id, "skipped": True}
    result.forget()


def test_freezing_and_publishing_leave_no_result_subscription_behind(rt):
    """Freezing a chord and publishing into it subscribe this process to results it
    never reads; canvas.unsubscribe drops them through the backend's pending results."""
    pending = app.backend._pending_results
    assert len(pending) == 2 and all(hasattr(m, "get") for m in pending)
    assert callable(app.backend.remove_pending_result)
    assert callable(app.backend.result_consumer.cancel_for)
    scene_id = f"canvas-{uuid.uuid4().hex[:8]}"
    chord = canvas.freeze_chord(app, scene_id, ["a"], canvas.scene_body(app, scene_id, 1, "cpu"))
    ids = {task_id for task_id, _ in chord.slots} | {chord.result_id}
    assert not any(task_id in mapping for mapping in pending for task_id in ids)


def test_a_queue_s_priorities_live_in_the_lists_queue_lists_names(rt):
    queue = f"canvas-{uuid.uuid4().hex[:8]}"
    lists = canvas.queue_lists(rt.settings, queue)
    assert lists[0] == queue and len(lists) == 10
    try:
        for priority in (0, 3, 9):
            app.send_task("farm.close_shot", args=({},), queue=queue, priority=priority)
        found = {key: rt.redis.llen(key) for key in lists if rt.redis.llen(key)}
        assert sum(found.values()) == 3 and set(found) <= set(lists)
        assert canvas.queue_depth(rt.redis, rt.settings, queue) == 3
    finally:
        rt.redis.delete(*lists)
