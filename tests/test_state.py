"""Farm state and node registry against a real Redis."""

from __future__ import annotations

import json
import time

import pytest

from farm import lifecycle
from farm.errors import ConfigError, InvalidInput
from farm.lifecycle import Backlog
from farm.nodes import NodeRegistry
from farm.runtime import Runtime
from farm.settings import Settings
from farm.state import FarmState, connect, redacted


def make(settings):
    client = connect(settings)
    return FarmState(client, settings), NodeRegistry(client, settings)


SPEC = {"id": "sc1", "title": "T", "priority": 5, "shots": [{"id": "a"}, {"id": "b"}]}
JOBS = [
    {"shot_id": "a", "node": "n1", "kind": "final"},
    {"shot_id": "b", "node": "n2", "kind": "final"},
]


def runtime(settings) -> Runtime:
    client = connect(settings)
    return Runtime(settings, client, FarmState(client, settings), NodeRegistry(client, settings))


def create(rt: Runtime, quality: str = "final", replace: bool = False) -> None:
    lifecycle.create(rt, SPEC, JOBS, quality, enqueuer="test", replace=replace)


def run_shot(rt: Runtime, shot_id: str, token: str) -> None:
    """Take a shot through the backlog to a node and start it."""
    needs = json.dumps({"variants": [], "pin": None, "exclude": []})
    lifecycle.wait(rt, "sc1", shot_id, Backlog("g", needs, 1.0), {"plan": "final"})
    lifecycle.bind(rt, "sc1", shot_id, "g", token, {"attempt": 1, "kind": "final"}, "n1", "q")
    lifecycle.start(rt, "sc1", shot_id, token, "n1", wait_for=0)


def test_scene_status_has_the_documented_shape(scratch_settings):
    rt = runtime(scratch_settings)
    create(rt)
    run_shot(rt, "a", "ta")
    take = {"take": 1, "kind": "final", "clip": "/x.mp4"}
    lifecycle.rendered(rt, "sc1", "a", "ta", "n1", scoring="s", take=take,
                       outputs={"final": "/x.mp4"}, logged={"attempt": 1})  # fmt: skip
    lifecycle.keep(rt, "sc1", "a", "s", {"decision": "passed", "kept": 0, "takes": 1})
    run_shot(rt, "b", "tb")
    lifecycle.fail(rt, "sc1", "b", error="node_unavailable: refused", token="tb", node="n1")
    status = rt.state.status("sc1")
    assert set(status) >= {"id", "state", "shots", "outputs", "metrics"}
    assert [
        set(s) >= {"id", "state", "node", "attempts", "outputs", "error"} for s in status["shots"]
    ] == [True, True]
    a, b = status["shots"]
    assert (a["state"], a["node"], a["outputs"], a["error"]) == (
        "done",
        "n1",
        {"final": "/x.mp4"},
        None,
    )
    assert (b["state"], b["error"]) == ("failed", "node_unavailable: refused")


def test_events_are_streamed_in_order(scratch_settings):
    rt = runtime(scratch_settings)
    create(rt)
    run_shot(rt, "a", "ta")
    types = [e[1]["type"] for e in rt.state.events("sc1")]
    assert types == ["scene_queued", "shot_bound", "scene_rendering", "shot_started"]
    first = rt.state.events("sc1")[0][0]
    assert [e[1]["type"] for e in rt.state.events("sc1", after=first)] == types[1:]


def test_a_state_is_never_written_outside_the_lifecycle(scratch_settings):
    rt = runtime(scratch_settings)
    create(rt)
    with pytest.raises(ValueError, match="farm.lifecycle"):
        rt.state.update_shot("sc1", "a", state="done")
    with pytest.raises(ValueError, match="farm.lifecycle"):
        rt.state.update_scene("sc1", state="done")


def test_an_unfinished_scene_is_not_clobbered(scratch_settings):
    rt = runtime(scratch_settings)
    create(rt)
    with pytest.raises(InvalidInput, match="already queued"):
        create(rt)
    lifecycle.fail_scene(rt, "sc1", "given up")
    with pytest.raises(InvalidInput, match="--replace"):
        create(rt)
    create(rt, "preview", replace=True)
    status = rt.state.status("sc1")
    assert status["quality"] == "preview" and status["state"] == "queued"


def test_unknown_scene_is_explained(scratch_settings):
    state, _ = make(scratch_settings)
    with pytest.raises(InvalidInput, match="no scene 'nope'"):
        state.status("nope")


def test_the_newest_preview_is_kept_for_the_cli_and_blender(scratch_settings):
    rt = runtime(scratch_settings)
    state = rt.state
    create(rt)
    run_shot(rt, "a", "ta")
    assert state.preview("sc1", "a") is None
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256))
    assert state.set_preview("sc1", "a", b"\xff\xd8\xff old", "image/jpeg")
    assert state.set_preview("sc1", "a", jpeg, "image/jpeg")
    assert lifecycle.guarded_write(rt, "sc1", "a", "ta", preview="/p/a.jpg", preview_at=1.5)
    frame = state.preview("sc1", "a")
    assert frame["image"] == jpeg and frame["mime"] == "image/jpeg" and frame["bytes"] == 260
    shot = state.status("sc1")["shots"][0]
    assert shot["preview"] == "/p/a.jpg" and shot["preview_at"] == 1.5
    assert not state.set_preview("sc1", "b", b"\xff" * (600 * 1024), "image/jpeg")
    assert state.preview("sc1", "b") is None
    state.delete_scene("sc1")
    assert state.preview("sc1", "a") is None


def test_nodes_live_by_heartbeat(scratch_settings):
    settings = Settings.from_env(
        {"FARM_REDIS_URL": scratch_settings.redis_url, "FARM_NODE_TTL": "0.5"},
        key_prefix=scratch_settings.key_prefix,
    )
    _, registry = make(settings)
    registry.register("n1", "comfyui", "http://127.0.0.1:1", {"models": {"vae": ["v"]}, "gpu": "G"})
    (rec,) = registry.records()
    assert rec["alive"] and rec["models"] == {"vae": ["v"]} and rec["queue"] == "node.n1"
    registry.beat("n1", ok=False, reason="refused")
    assert not registry.records()[0]["alive"] and registry.records()[0]["reason"] == "refused"
    registry.beat("n1", ok=True)
    assert registry.infos()[0].workflows is None  # not discovered: no workflow filter
    flows = {"wan_t2v": {"ok": True, "missing": [], "models": ["m"]},
             "hunyuan_t2v": {"ok": False, "missing": ["node 1: class X is not installed"],
                             "models": []}}  # fmt: skip
    registry.update_description("n1", {"models": {"vae": ["v"]}, "workflows": flows})
    assert registry.records()[0]["workflows"] == flows
    assert registry.infos()[0].workflows == {"wan_t2v": ("m",)}
    time.sleep(0.7)
    assert not registry.infos()[0].alive  # no heartbeat within the TTL


def test_unreachable_redis_gives_one_clear_line():
    s = Settings.from_env({"FARM_REDIS_URL": "redis://:secret@127.0.0.1:9/0"})
    with pytest.raises(ConfigError) as info:
        connect(s)
    text = str(info.value)
    assert "redis://:***@127.0.0.1:9/0" in text and "secret" not in text and "redis-server" in text
    assert "\n" not in text
    assert redacted("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"


def test_a_waiting_shot_keeps_its_first_rung_as_a_plan_and_plans_the_same_jobs(scratch_settings):
    """A waiting shot's record holds only the kind of its first rung (a few bytes, so the
    hash stays in Redis' compact listpack encoding); planning it again from the scene as
    a worker parses it gives exactly the jobs planned at submission, start image and
    trajectories included. A later rung is kept whole."""
    from farm import dispatch
    from farm.celery_app import app
    from farm.dispatch import Dispatcher
    from farm.planning import Rung, plan_scene
    from farm.scene import load_scene
    from tests.conftest import EXAMPLES

    rt = runtime(scratch_settings)
    client = rt.redis
    scene = load_scene(EXAMPLES / "demo_scene.json")
    planned = plan_scene(scene, "preview_then_final")
    lifecycle.create(rt, scene.to_dict(), [{"shot_id": v[0].shot_id, "node": None,
                     "kind": v[0].kind} for v in planned], "preview_then_final",
                     enqueuer="test")  # fmt: skip
    d = Dispatcher(rt, app)
    for variants in planned:
        d.wait(scene.id, variants[0].shot_id, Rung(tuple(variants)), "preview", 5)
    dispatch._scenes.clear()  # as in a worker: the scene is parsed from its record
    for variants in planned:
        key = rt.state.shot_key(scene.id, variants[0].shot_id)
        record = rt.state.shot(scene.id, variants[0].shot_id)
        assert record["rung"] == {"plan": "preview", "then_final": True}
        assert client.object("encoding", key) == "listpack"
        assert dispatch.rung_of(rt, scene.id, record) == Rung(tuple(variants))
    later = Rung(tuple(planned[0]), exclude=("node-a",), step="another node")
    backlog, stored = dispatch.backlog_entry(later, "preview", 5)
    lifecycle.cancel(rt, scene.id, planned[0][0].shot_id, state="queued",
                     group=record_group(rt, scene.id, planned[0][0].shot_id))  # fmt: skip
    lifecycle.reset(rt, scene.id, planned[0][0].shot_id)
    lifecycle.wait(rt, scene.id, planned[0][0].shot_id, backlog, stored)
    record = rt.state.shot(scene.id, planned[0][0].shot_id)
    assert dispatch.rung_of(rt, scene.id, record) == later
    assert record["rung"]["variants"][0]["params"] == planned[0][0].params


def record_group(rt: Runtime, scene_id: str, shot_id: str) -> str:
    return rt.state.shot(scene_id, shot_id)["group"]


def test_a_render_loads_each_model_its_node_did_not_use_last(scratch_settings):
    """A two-model render (Wan 2.2 A14B) on a fresh node loads both; the same pair again
    loads none; a render sharing one of them loads only the other. Only a render that
    loaded nothing is a speed sample."""
    _, registry = make(scratch_settings)
    registry.register("a", "comfyui", "http://127.0.0.1:1", {"models": {}})
    assert registry.record_render("a", ["hi", "lo"], 10.0, 60.0) == ["hi", "lo"]
    assert registry.records()[0]["throughput"] == 0  # loaded: no sample
    assert registry.record_render("a", ["hi", "lo"], 10.0, 5.0) == []
    assert registry.records()[0]["throughput"] == 2.0
    assert registry.record_render("a", ["hi", "other"], 10.0, 30.0) == ["other"]


def test_node_speed_is_learned_from_renders_without_model_loads(scratch_settings):
    """Speeds are each node's work per second over its last renders, relative to the
    median node; a render that loaded a model is no sample; an unmeasured node is 1.0."""
    _, registry = make(scratch_settings)
    for name in ("fast", "mid", "slow", "new"):
        registry.register(name, "comfyui", "http://127.0.0.1:1", {"models": {}})
    for name in ("fast", "mid", "slow"):
        registry.record_render(name, ["m1"], 10.0, 60.0)  # the first render loads m1
    assert {i.speed for i in registry.infos()} == {1.0}
    for _ in range(3):
        registry.record_render("fast", ["m1"], 10.0, 2.5)  # 4 steps/s
        registry.record_render("mid", ["m1"], 10.0, 5.0)  # 2 steps/s
        registry.record_render("slow", ["m1"], 10.0, 20.0)  # 0.5 steps/s
    registry.record_render("slow", ["m2"], 10.0, 90.0)  # loads m2: not a sample
    speeds = {i.name: i.speed for i in registry.infos()}
    assert speeds == {"fast": 2.0, "mid": 1.0, "slow": 0.25, "new": 1.0}
    registry.record_render("slow", ["m2"], 10.0, 10.0)  # 1 step/s: the window's mean moves
    assert {i.name: i.speed for i in registry.infos()}["slow"] < 0.3
    registry.remove("mid")  # median of 4 and 0.56 steps/s
    speeds = {i.name: i.speed for i in registry.infos()}
    assert speeds["fast"] > 1.0 > speeds["slow"] and speeds["new"] == 1.0


def test_a_dispatch_over_a_slow_link_ends_while_other_processes_keep_marking_the_backlog(
    scratch_settings,
):
    """A process dispatches over a slow link (a proxy adding 50 ms each way, so each pass
    takes a few round trips) while other processes call dispatch all the time (every
    worker's housekeeping and every render task on its way out): each finds the lock taken
    and marks the backlog dirty for the holder. The slow call runs at most MAX_PASSES
    passes and returns, rather than dispatching for ever for the others (it was a render
    task's last step, holding its node's only worker process)."""
    import dataclasses
    import subprocess
    import sys
    import threading

    from farm.celery_app import app
    from farm.dispatch import MAX_PASSES, Dispatcher
    from farm.local import free_port

    fast = runtime(scratch_settings)
    port = free_port()
    target = scratch_settings.redis_url.split("@")[-1].split("//")[-1].split("/")[0]
    proxy = subprocess.Popen([sys.executable, "-m", "tests.netproxy", "--listen",
                              f"127.0.0.1:{port}", "--to", target, "--delay", "0.05"])  # fmt: skip
    stop = threading.Event()

    def others() -> None:
        while not stop.is_set():
            Dispatcher(fast, app).dispatch()

    try:
        time.sleep(1.0)  # the proxy listens
        url = scratch_settings.redis_url.replace(target, f"127.0.0.1:{port}")
        slow = runtime(dataclasses.replace(scratch_settings, redis_url=url))
        calls = {"passes": 0}
        d = Dispatcher(slow, app)
        once = d._dispatch_once

        def counted():
            calls["passes"] += 1
            return once()

        d._dispatch_once = counted
        caller = threading.Thread(target=d.dispatch, daemon=True)
        caller.start()
        lock = scratch_settings.keys.dispatch("lock")
        deadline = time.monotonic() + 10
        while not fast.redis.exists(lock) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert fast.redis.exists(lock), "the slow process took the dispatcher's lock"
        for _ in range(3):  # the others, from now on
            threading.Thread(target=others, daemon=True).start()
        caller.join(60)
        assert not caller.is_alive(), f"still dispatching after {calls['passes']} passes"
        assert 1 <= calls["passes"] <= MAX_PASSES
    finally:
        stop.set()
        proxy.kill()
        proxy.wait(timeout=10)
