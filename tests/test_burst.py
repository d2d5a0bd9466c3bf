"""The burst policy and budget through the dispatcher, against a real redis-server: which
shots cloud (comfyv2) nodes take under each FARM_BURST, what they cost, and how a shot the
budget keeps from the cloud waits and says why. No renders run: nodes are registered as
their workers would register them, and a cloud render's billing is what the render task
records (:func:`farm.budget.charge`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from typing import Any

import pytest
from rich.console import Console

from farm import budget
from farm.celery_app import app
from farm.dispatch import Dispatcher
from farm.local import LocalFarm
from farm.nodes import NodeRegistry
from farm.planning import Job, plan_scene
from farm.runtime import Runtime
from farm.scene import parse_scene
from farm.scheduler import STEP_SECONDS
from farm.settings import Settings
from farm.state import FarmState, connect
from farm.submit import enqueue
from farm.watch import render_status

from .conftest import REPO, pointed_at

PRICE = 0.002  # per GPU-second


@pytest.fixture(scope="module")
def redis_env(tmp_path_factory):
    """A redis-server of this module's own (no nodes, no workers), the process pointed at it."""
    farm = LocalFarm(tmp_path_factory.mktemp("burst"), [], extra_env={"FARM_CACHE": "0"})
    for folder in (farm.logs, farm.storage, farm.root / "redis"):
        folder.mkdir(parents=True)
    farm.start_redis()
    try:
        with pointed_at(farm.env()):
            yield farm.env()
    finally:
        farm.stop()


def make_rt(env: dict[str, str], **settings: Any) -> Runtime:
    """A runtime on ``env``'s Redis under a key prefix of its own, with ``settings``."""
    s = Settings.from_env(env, key_prefix=f"b{uuid.uuid4().hex[:8]}", **settings)
    client = connect(s)
    return Runtime(s, client, FarmState(client, s), NodeRegistry(client, s))


def scene(scene_id: str, shots: int):
    """Shots of 30 steps at 832x480x81 (Job.cost 30: 900 s at STEP_SECONDS): one group."""
    return parse_scene({
        "id": scene_id, "quality": "final",
        "shots": [{"id": f"s{i}", "action_description": f"shot {i}", "backend": "comfyui",
                   "width": 832, "height": 480, "frames": 81,
                   "seed": i} for i in range(shots)],
    })  # fmt: skip


def files_of(scene_) -> dict[str, list[str]]:
    """Every file the scene's final jobs need."""
    held: dict[str, set[str]] = {}
    for variants in plan_scene(scene_, "final"):
        for v in variants:
            for folder, names in v.files.items():
                held.setdefault(folder, set()).update(names)
    return {k: sorted(v) for k, v in held.items()}


def register(rt: Runtime, scene_, *, local: int = 1, cloud: int | None = 2) -> None:
    """``local`` ComfyUI nodes and, unless ``cloud`` is None, a cloud node of that
    concurrency at PRICE, each holding the scene's files."""
    models = files_of(scene_)
    for i in range(local):
        rt.registry.register(f"local{i}", "comfyui", "http://127.0.0.1:1", {"models": models})
    if cloud is not None:
        plan = {"concurrency": cloud, "price_per_second": PRICE}
        rt.registry.register("cloud", "comfyv2", "http://127.0.0.1:2",
                             {"models": models, "cloud": plan})  # fmt: skip


def placed(rt: Runtime, scene_id: str) -> dict[str, str | None]:
    """Shot id → the node it is bound to (None: waiting)."""
    return {s["id"]: s.get("node") if s["state"] == "bound" else None
            for s in rt.state.shots(scene_id)}  # fmt: skip


def on(where: dict[str, str | None], node: str | None) -> list[str]:
    return sorted(k for k, v in where.items() if v == node)


def cost_of_one(job_cost: float = 30.0) -> float:
    """The estimate of one shot on the cloud node (no render measured yet)."""
    return job_cost * STEP_SECONDS * PRICE


def test_never_sends_nothing_to_a_cloud_node(redis_env):
    rt = make_rt(redis_env, burst="never")
    sc = scene("never", 5)
    register(rt, sc)
    enqueue(sc, rt)
    where = placed(rt, "never")
    assert on(where, "cloud") == [] and len(on(where, "local0")) == 2


def test_always_fills_the_cloud_node_up_to_its_concurrency(redis_env):
    rt = make_rt(redis_env, burst="always")
    sc = scene("always", 6)
    register(rt, sc, local=0, cloud=3)
    enqueue(sc, rt)
    where = placed(rt, "always")
    assert len(on(where, "cloud")) == 3 and len(on(where, None)) == 3
    held = json.loads(rt.redis.hget(rt.settings.keys.spend_held(), "always/s0") or "null")
    assert held == {"node": "cloud", "estimate": pytest.approx(cost_of_one())}


def test_overflow_sends_only_what_would_wait_longer_than_burst_after(redis_env):
    """One local node (900 s a shot): it takes two shots (the second starts at 900 s,
    within FARM_BURST_AFTER=1000); the third would start at 1800 s: the cloud takes the
    third and fourth (its concurrency), the fifth waits."""
    rt = make_rt(redis_env, burst="overflow", burst_after=1000.0)
    sc = scene("over", 5)
    register(rt, sc)
    enqueue(sc, rt)
    where = placed(rt, "over")
    assert on(where, "local0") == ["s0", "s1"]
    assert on(where, "cloud") == ["s2", "s3"]
    assert on(where, None) == ["s4"]


def test_overflow_keeps_what_a_local_node_starts_in_time(redis_env):
    rt = make_rt(redis_env, burst="overflow", burst_after=5000.0)
    sc = scene("in-time", 4)
    register(rt, sc)
    enqueue(sc, rt)
    where = placed(rt, "in-time")
    assert on(where, "cloud") == [] and on(where, "local0") == ["s0", "s1"]


def test_the_day_budget_keeps_shots_for_the_local_nodes_and_says_why(redis_env):
    """Each shot is estimated at 30 steps x 30 s x PRICE = 1.8; the day's budget of 4 takes
    two. The others wait, saying why; billing what the two cost (the render task's call)
    never brings the spend past the cap, and a redelivered bill is not counted twice."""
    rt = make_rt(redis_env, burst="always", burst_budget_day=4.0)
    sc = scene("budget", 6)
    register(rt, sc, cloud=4)
    enqueue(sc, rt)
    where = placed(rt, "budget")
    assert len(on(where, "cloud")) == 2 and len(on(where, "local0")) == 2
    waiting = rt.state.status("budget")["shots"]
    held = [s for s in waiting if s["state"] == "queued"]
    assert len(held) == 2
    for shot in held:
        assert "FARM_BURST_BUDGET_DAY=4" in shot["waiting"], shot
        assert "waits for a local node" in shot["waiting"]
    console = Console(width=400, record=True)
    console.print(render_status(rt.state.status("budget")))  # farm status, farm watch
    assert f"{held[0]['id']} waits for a local node: on cloud node cloud" in console.export_text()
    events = rt.redis.xrange(rt.settings.keys.events("budget"))
    assert sum(1 for _, e in events if e.get("type") == "shot_burst_held") == 2

    d = Dispatcher(rt, app)
    for shot_id in on(where, "cloud"):  # billed a little more than estimated
        job = Job.from_dict(rt.state.shot("budget", shot_id)["job"])
        assert budget.charge(rt.redis, rt.settings, job, {"gpu_seconds": 950.0}) == 950 * PRICE
        assert budget.charge(rt.redis, rt.settings, job, {"gpu_seconds": 950.0}) == 0.0
        d.dispatch()
        assert budget.state(rt.redis, rt.settings, ["cloud"], ["budget"]).day <= 4.0
    spent = budget.summary(rt.redis, rt.settings, ["cloud"])
    assert spent["today"] == pytest.approx(2 * 950 * PRICE) and spent["today"] <= 4.0
    assert spent["nodes"]["cloud"]["gpu_seconds"] == 1900.0
    assert len(on(placed(rt, "budget"), "cloud")) == 2  # nothing more fits today
    assert not rt.redis.hlen(rt.settings.keys.spend_held())  # billed: nothing held


def test_the_scene_budget_caps_each_scene(redis_env):
    rt = make_rt(redis_env, burst="always", burst_budget_scene=3.0)
    one, two = scene("one", 3), scene("two", 3)
    register(rt, one, local=0, cloud=8)
    enqueue(one, rt)
    enqueue(two, rt)
    assert len(on(placed(rt, "one"), "cloud")) == 1
    assert len(on(placed(rt, "two"), "cloud")) == 1
    waiting = [s for s in rt.state.status("one")["shots"] if s["state"] == "queued"]
    assert all("FARM_BURST_BUDGET_SCENE=3" in s["waiting"] for s in waiting)


def test_a_held_estimate_of_a_shot_no_longer_bound_is_dropped(redis_env):
    rt = make_rt(redis_env, burst="always", burst_budget_day=2.0)
    sc = scene("dropped", 2)
    register(rt, sc, local=0)
    enqueue(sc, rt)
    assert on(placed(rt, "dropped"), "cloud") == ["s0"]
    rt.redis.hdel(rt.settings.keys.bound("cloud"), "dropped/s0")  # its binding ended unbilled
    assert budget.state(rt.redis, rt.settings, ["cloud"], []).day == 0.0
    assert not rt.redis.hexists(rt.settings.keys.spend_held(), "dropped/s0")


def test_a_cloud_nodes_billing_rate_prices_its_next_shots(redis_env):
    rt = make_rt(redis_env, burst="always")
    sc = scene("rate", 1)
    register(rt, sc, local=0)
    job = replace(plan_scene(sc, "final")[0][0], node="cloud")
    budget.charge(rt.redis, rt.settings, job, {"gpu_seconds": 60.0})  # 30 steps: 2 s each
    assert budget.state(rt.redis, rt.settings, ["cloud"], []).rates == {"cloud": 2.0}
    assert budget.charge(rt.redis, rt.settings, replace(job, node="local0"), {}) == 0.0


def test_a_cloud_job_that_failed_after_it_ran_is_paid_for_but_teaches_no_rate(redis_env):
    """A failed cloud job's billed seconds are spent (day, scene, node) once, and count in
    the node's billed time but not its work: the rate per step then prices failures in."""
    rt = make_rt(redis_env, burst="always")
    sc = scene("failed-bill", 1)
    register(rt, sc, local=0)
    job = replace(plan_scene(sc, "final")[0][0], node="cloud")
    assert budget.charge(rt.redis, rt.settings, job, {"gpu_seconds": 30.0}, work=False) == (
        30 * PRICE
    )
    assert budget.charge(rt.redis, rt.settings, job, {"gpu_seconds": 30.0}, work=False) == 0.0
    spend = budget.state(rt.redis, rt.settings, ["cloud"], [sc.id])
    assert spend.day == pytest.approx(30 * PRICE) and spend.scenes[sc.id] == pytest.approx(
        30 * PRICE
    )
    assert spend.rates == {}  # no work done yet: no rate
    budget.charge(rt.redis, rt.settings, replace(job, attempt=2), {"gpu_seconds": 60.0})
    assert budget.state(rt.redis, rt.settings, ["cloud"], []).rates == {"cloud": 3.0}


def test_farm_nodes_and_the_exporter_show_spend_and_budgets(redis_env):
    from prometheus_client import CollectorRegistry, generate_latest

    from farm.telemetry import FarmCollector

    rt = make_rt(redis_env, burst="overflow", burst_budget_day=50.0, burst_budget_scene=20.0)
    sc = scene("shown", 1)
    register(rt, sc)
    enqueue(sc, rt)
    job = replace(plan_scene(sc, "final")[0][0], node="cloud")
    budget.charge(rt.redis, rt.settings, job, {"gpu_seconds": 1000.0})  # costs 2.0
    env = {**os.environ, **redis_env, "FARM_PREFIX": rt.settings.key_prefix,
           "FARM_BURST": "overflow", "FARM_BURST_BUDGET_DAY": "50",
           "FARM_BURST_BUDGET_SCENE": "20", "PYTHONPATH": str(REPO)}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "farm", "nodes", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    nodes = {r["name"]: r for r in json.loads(out.stdout)}
    assert nodes["cloud"]["cloud"] == {"concurrency": 2, "price_per_second": PRICE}
    assert nodes["cloud"]["spend"] == {"today": 2.0, "total": 2.0, "gpu_seconds": 1000.0}
    burst = nodes["cloud"]["burst"]
    assert burst["policy"] == "overflow" and burst["today"] == 2.0
    assert burst["budget_day"] == 50.0 and burst["budget_scene"] == 20.0
    assert burst["scenes"] == {"shown": 2.0}
    assert "spend" not in nodes["local0"]
    table = subprocess.run([sys.executable, "-m", "farm", "nodes"], env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "burst overflow: cloud spend today" in table and "of 50" in table
    assert "shown 2" in table

    registry = CollectorRegistry()
    registry.register(FarmCollector(rt.settings, rt.redis))
    text = generate_latest(registry).decode()
    assert "farm_burst_spend_today 2.0" in text
    assert "farm_burst_budget_day 50.0" in text and "farm_burst_budget_scene 20.0" in text
    assert 'farm_cloud_spend_today{node="cloud"} 2.0' in text
    assert 'farm_cloud_spend_total{node="cloud"} 2.0' in text
    assert 'farm_cloud_gpu_seconds_total{node="cloud"} 1000.0' in text
    assert 'farm_scene_cloud_spend{scene="shown"} 2.0' in text
