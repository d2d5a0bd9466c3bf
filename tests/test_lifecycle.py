"""The life of a shot and of a scene (farm.lifecycle): the transition table, and each
transition applied on a real Redis only while the record is in the expected state and
holds the caller's token, with its side effects (node slot, backlog, lease, indexes,
events) in the same step."""

from __future__ import annotations

import json
import time

import pytest

from farm import lifecycle
from farm.lifecycle import (
    SCENE_TRANSITIONS,
    SHOT_TRANSITIONS,
    TERMINAL_SCENE,
    TERMINAL_SHOT,
    Backlog,
    SceneState,
    ShotState,
)
from farm.nodes import NodeRegistry
from farm.runtime import Runtime
from farm.settings import Settings
from farm.state import FarmState, connect

# -- the table (pure) -------------------------------------------------------------------


def reachable(table, start) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for begin, ends in table.values():
            if state in begin:
                for end in ends - seen:
                    seen.add(end)
                    todo.append(end)
    return seen


def test_every_shot_state_can_reach_an_end_and_ends_leave_only_by_a_retry():
    for state in ShotState:
        assert reachable(SHOT_TRANSITIONS, state) & TERMINAL_SHOT, state
    assert reachable(SHOT_TRANSITIONS, ShotState.QUEUED) == set(ShotState)
    leaving = {name for name, (begin, _) in SHOT_TRANSITIONS.items() if begin & TERMINAL_SHOT}
    assert leaving == {"reset"}
    for name, (begin, ends) in SHOT_TRANSITIONS.items():
        assert begin and ends and begin <= set(ShotState) and ends <= set(ShotState), name


def test_every_scene_state_can_reach_an_end_and_ends_leave_only_by_a_retry():
    for state in SceneState:
        assert reachable(SCENE_TRANSITIONS, state) & TERMINAL_SCENE, state
    assert reachable(SCENE_TRANSITIONS, SceneState.QUEUED) == set(SceneState)
    leaving = {name for name, (begin, _) in SCENE_TRANSITIONS.items() if begin & TERMINAL_SCENE}
    assert leaving == {"reopen"}


def test_a_shot_sent_back_to_the_backlog_may_end_cancelled_instead():
    """Every transition into queued may end in cancelled (the shot or scene was
    cancelled meanwhile), except a retry's reset, which clears the cancel first."""
    for name, (_, ends) in SHOT_TRANSITIONS.items():
        if ShotState.QUEUED in ends and name != "reset":
            assert ShotState.CANCELLED in ends, name


# -- transitions on a real Redis ----------------------------------------------------------


@pytest.fixture
def rt(scratch_settings) -> Runtime:
    settings = Settings.from_env({"FARM_REDIS_URL": scratch_settings.redis_url,
                                  "FARM_LEASE_TTL": "1"},
                                 key_prefix=scratch_settings.key_prefix)  # fmt: skip
    client = connect(settings)
    return Runtime(settings, client, FarmState(client, settings), NodeRegistry(client, settings))


def new_scene(rt: Runtime, scene_id: str = "sc", shots=("a", "b")) -> int:
    spec = {"id": scene_id, "title": "t", "priority": 5, "shots": [{"id": s} for s in shots]}
    run = lifecycle.create(rt, spec, [{"shot_id": s, "node": None, "kind": "final"}
                                      for s in shots], "final", enqueuer="me")  # fmt: skip
    rt.state.update_scene(scene_id, enqueued="1")
    return run


def backlog(group: str = "g1") -> Backlog:
    return Backlog(group, json.dumps({"variants": [], "pin": None, "exclude": []}), 100.0)


JOB = {"attempt": 1, "kind": "final", "node": "n1"}


def waiting(rt: Runtime, shot: str = "a", group: str = "g1") -> None:
    assert lifecycle.wait(rt, "sc", shot, backlog(group), {"plan": "final", "then_final": False})


def bound(rt: Runtime, shot: str = "a", token: str = "t1") -> None:
    waiting(rt, shot)
    assert lifecycle.bind(rt, "sc", shot, "g1", token, JOB, "n1", "node.n1")


def running(rt: Runtime, shot: str = "a", token: str = "t1") -> None:
    bound(rt, shot, token)
    assert lifecycle.start(rt, "sc", shot, token, "n1", wait_for=0)


def shot(rt: Runtime, shot_id: str = "a") -> dict:
    return rt.state.shot("sc", shot_id)


def test_a_shot_is_bound_only_while_it_waits_in_its_group(rt):
    new_scene(rt)
    keys = rt.settings.keys
    assert not lifecycle.bind(rt, "sc", "a", "g1", "t1", JOB, "n1", "node.n1")  # not waiting
    waiting(rt)
    assert rt.redis.zscore(keys.wait("g1"), "sc/a") == 100.0
    out = lifecycle.bind(rt, "sc", "a", "g1", "t1", JOB, "n1", "node.n1")
    assert out and out.state == ShotState.BOUND
    rec = shot(rt)
    assert (rec["state"], rec["binding"], rec["node"], rec["attempt"]) == ("bound", "t1", "n1", 1)
    assert rt.redis.hget(keys.bound("n1"), "sc/a") == "t1"  # the node's slot
    assert rt.redis.zscore(keys.wait("g1"), "sc/a") is None
    assert rt.redis.zscore(keys.active(), "sc/a") is not None
    again = lifecycle.bind(rt, "sc", "a", "g1", "t2", JOB, "n1", "node.n1")
    assert not again and again.why == "state" and shot(rt)["binding"] == "t1"


def test_a_stale_renderer_changes_nothing_and_keeps_no_slot(rt):
    """The renderer of an old binding finishing after the shot was handed to a new one:
    its transition is refused, the shot's record, version and attempt log stay, and the
    new binding keeps the node's slot."""
    new_scene(rt)
    keys = rt.settings.keys
    running(rt, token="old")
    rt.redis.delete(keys.lease("sc", "a"))  # the old renderer froze: its lease lapsed
    assert lifecycle.rebind(rt, "sc", "a", "old", "new", "n1", "node.n1", why="test")
    take = {"take": 1, "kind": "final", "clip": "/x.mp4"}

    def late():
        return lifecycle.rendered(rt, "sc", "a", "old", "n1", scoring="s", take=take,
                                  outputs={"final": "/x.mp4"}, logged={"attempt": 1})  # fmt: skip

    before = shot(rt)
    assert late().why == "state" and shot(rt) == before  # the new delivery did not start
    assert lifecycle.start(rt, "sc", "a", "new", "n1", wait_for=0)
    before = shot(rt)
    refused = late()
    assert not refused and refused.why == "token"
    assert shot(rt) == before and shot(rt)["attempt_log"] == []
    assert rt.redis.hget(keys.bound("n1"), "sc/a") == "new"
    assert not lifecycle.release_slot(rt, "n1", "sc", "a", "old")
    assert rt.redis.hget(keys.bound("n1"), "sc/a") == "new"


def test_rendered_logs_the_attempt_frees_the_slot_and_hands_the_take_to_the_gate(rt):
    new_scene(rt)
    keys = rt.settings.keys
    running(rt)
    assert rt.redis.get(keys.lease("sc", "a")) == "t1"
    version = shot(rt)["version"]
    take = {"take": 1, "kind": "final", "clip": "/x.mp4"}
    out = lifecycle.rendered(rt, "sc", "a", "t1", "n1", scoring="s1", take=take,
                             outputs={"final": "/x.mp4"}, logged={"attempt": 1, "state": "done"})  # fmt: skip
    assert out and out.state == ShotState.SCORING
    rec = shot(rt)
    assert (rec["scoring"], rec["pending_take"], rec["binding"]) == ("s1", take, "")
    assert rec["attempt_log"] == [{"attempt": 1, "state": "done"}] and rec["attempts"] == 1
    assert rec["version"] == version + 1
    assert rt.redis.hget(keys.bound("n1"), "sc/a") is None
    assert rt.redis.get(keys.lease("sc", "a")) is None
    gate = {"decision": "passed", "kept": 1, "takes": 1}
    assert not lifecycle.keep(rt, "sc", "a", "other", gate)  # another scorer's token
    assert lifecycle.keep(rt, "sc", "a", "s1", gate)
    rec = shot(rt)
    assert rec["state"] == "done" and rec["gate"] == gate
    assert rt.redis.zscore(keys.active(), "sc/a") is None
    assert int(rt.redis.hget(keys.scene("sc"), "open")) == 1  # b is not over


def test_the_attempt_log_grows_entry_by_entry_through_failures(rt):
    new_scene(rt)
    running(rt)
    out = lifecycle.next_rung(rt, "sc", "a", "t1", "n1", backlog("g2"), {"plan": "final"},
                              logged=[{"attempt": 1, "state": "failed", "params": {}, "x": []}],
                              event="shot_retry", data={}, error="e1")  # fmt: skip
    assert out and out.state == ShotState.QUEUED
    assert rt.redis.zscore(rt.settings.keys.wait("g2"), "sc/a") == 100.0
    assert lifecycle.bind(rt, "sc", "a", "g2", "t2", {**JOB, "attempt": 2}, "n1", "node.n1")
    assert lifecycle.start(rt, "sc", "a", "t2", "n1", wait_for=0)
    assert lifecycle.fail(rt, "sc", "a", error="e2", token="t2", node="n1",
                          logged={"attempt": 2, "state": "failed"})  # fmt: skip
    rec = shot(rt)
    assert [e["attempt"] for e in rec["attempt_log"]] == [1, 2] and rec["attempts"] == 2
    assert rec["attempt_log"][0]["params"] == {} and rec["attempt_log"][0]["x"] == []
    assert (rec["state"], rec["error"]) == ("failed", "e2")


def test_a_cancelled_or_paused_shot_does_not_go_back_to_waiting(rt):
    new_scene(rt)
    keys = rt.settings.keys
    rt.state.update_scene("sc", paused="1")
    waiting(rt, "a")
    assert rt.redis.zscore(keys.wait("g1"), "sc/a") is None
    assert json.loads(rt.redis.hget(keys.parked("sc"), "sc/a")) == ["g1", 100.0]
    rt.state.update_scene("sc", paused="0")
    running(rt, "b")
    rt.state.update_shot("sc", "b", cancel="1")
    out = lifecycle.next_rung(rt, "sc", "b", "t1", "n1", backlog(), {"plan": "final"},
                              logged=[], event="shot_retry", data={})  # fmt: skip
    assert out and out.state == ShotState.CANCELLED
    assert rt.redis.zscore(keys.wait("g1"), "sc/b") is None
    assert shot(rt, "b")["error"] == "cancelled"
    # a parked shot is cancelled by taking it from the parking
    assert lifecycle.cancel(rt, "sc", "a", state=ShotState.QUEUED, group="g1")
    assert rt.redis.hget(keys.parked("sc"), "sc/a") is None
    assert int(rt.redis.hget(keys.scene("sc"), "open")) == 0


def test_a_redelivery_waits_for_the_first_renderer_s_lease(rt):
    """Celery delivers the same binding twice (its worker died): the second delivery
    starts only once the first one's lease lapsed; a rebind needs the lease lapsed too."""
    new_scene(rt)
    running(rt)
    assert not lifecycle.rebind(rt, "sc", "a", "t1", "t2", "n1", "node.n1", why="test")
    held = lifecycle.start(rt, "sc", "a", "t1", "n1", wait_for=0)
    assert not held and held.why == "lease"
    started = time.monotonic()
    assert lifecycle.start(rt, "sc", "a", "t1", "n1", wait_for=5)  # the lease lives 1 s
    assert 0.5 < time.monotonic() - started < 4


def test_the_first_shot_started_makes_the_scene_rendering(rt):
    new_scene(rt)
    assert rt.state.scene("sc")["state"] == "queued"
    running(rt)
    assert rt.state.scene("sc")["state"] == "rendering"
    types = [e["type"] for _, e in rt.state.events("sc")]
    assert types == ["scene_queued", "shot_bound", "scene_rendering", "shot_started"]


def test_progress_is_written_only_by_the_binding_that_runs_the_shot(rt):
    new_scene(rt)
    running(rt)
    assert lifecycle.guarded_write(rt, "sc", "a", "t1", "shot_progress", progress=0.5)
    assert not lifecycle.guarded_write(rt, "sc", "a", "stale", "shot_progress", progress=0.9)
    assert shot(rt)["progress"] == 0.5


def test_a_scene_stage_is_claimed_once_per_run_and_tried_twice_at_most(rt):
    run = new_scene(rt, shots=("a",))
    keys = rt.settings.keys
    assert lifecycle.claim(rt, "sc", run + 1, SceneState.ASSEMBLING, wait_for=0) is None
    token = lifecycle.claim(rt, "sc", run, SceneState.ASSEMBLING, wait_for=0)
    assert token and rt.redis.get(keys.scene_lease("sc")) == token
    assert lifecycle.claim(rt, "sc", run, SceneState.ASSEMBLING, wait_for=0) is None  # held
    assert lifecycle.release(rt, "sc", SceneState.ASSEMBLING, token, "boom")
    again = lifecycle.claim(rt, "sc", run, SceneState.ASSEMBLING, wait_for=0)
    assert again and rt.state.scene("sc")["stage_tries"] == 2
    assert not lifecycle.assembled(rt, "sc", token)  # the first try's token is stale
    assert lifecycle.assembled(rt, "sc", again, outputs={"video": "/v.mp4"})
    assert lifecycle.claim(rt, "sc", run, SceneState.ASSEMBLING, wait_for=0) is None  # done
    scorer = lifecycle.claim(rt, "sc", run, SceneState.SCORING, wait_for=0)
    assert lifecycle.finish(rt, "sc", scorer, partial=False)
    assert rt.state.scene("sc")["state"] == "done"
    assert not rt.redis.sismember(keys.open_scenes(), "sc")
    assert rt.redis.zscore(keys.over_scenes(), "sc") is not None
    assert lifecycle.claim(rt, "sc", run, SceneState.SCORING, wait_for=0) is None


def test_reopen_starts_a_new_run_and_reset_brings_a_shot_back(rt):
    run = new_scene(rt, shots=("a",))
    keys = rt.settings.keys
    assert lifecycle.fail_scene(rt, "sc", "no shot rendered")
    assert lifecycle.reopen(rt, "sc") == run + 1
    assert rt.state.scene("sc")["state"] == "queued"
    assert rt.redis.sismember(keys.open_scenes(), "sc")
    running(rt)
    assert lifecycle.fail(rt, "sc", "a", error="x", token="t1", node="n1")
    assert int(rt.redis.hget(keys.scene("sc"), "open")) == 0
    assert lifecycle.reset(rt, "sc", "a", take=1)
    assert shot(rt)["state"] == "queued" and int(rt.redis.hget(keys.scene("sc"), "open")) == 1


def test_a_replaced_scene_gets_a_new_run_so_old_tasks_never_match(rt):
    run = new_scene(rt, shots=("a",))
    with pytest.raises(Exception, match="already queued"):
        new_scene(rt, shots=("a",))
    lifecycle.fail_scene(rt, "sc", "x")
    spec = {"id": "sc", "title": "t", "priority": 5, "shots": [{"id": "a"}]}
    with pytest.raises(Exception, match="--replace"):
        lifecycle.create(rt, spec, [{"shot_id": "a", "node": None, "kind": "final"}], "final",
                         enqueuer="me")  # fmt: skip
    again = lifecycle.create(rt, spec, [{"shot_id": "a", "node": None, "kind": "final"}],
                             "final", enqueuer="me", replace=True)  # fmt: skip
    assert again == run + 1
    assert lifecycle.claim(rt, "sc", run, SceneState.ASSEMBLING, wait_for=0) is None


def test_a_lock_is_released_only_by_its_holder(rt):
    first = lifecycle.Lock(rt, rt.settings.keys.checker_lock(), 0.3)
    second = lifecycle.Lock(rt, rt.settings.keys.checker_lock(), 0.3)
    assert first.acquire() and not second.acquire()
    time.sleep(0.4)  # the first holder outlived its TTL
    assert second.acquire()
    first.release()  # must not free the second holder's lock
    assert rt.redis.get(rt.settings.keys.checker_lock()) == second.token
    assert not first.extend() and second.extend()
    second.release()
    assert rt.redis.get(rt.settings.keys.checker_lock()) is None


def test_a_transition_outside_the_table_is_a_bug(rt):
    new_scene(rt)
    spec = lifecycle._shot_spec(rt, "sc", "a")
    with pytest.raises(ValueError, match="cannot end in"):
        lifecycle._apply(rt, SHOT_TRANSITIONS, "bind", spec, ShotState.DONE)
