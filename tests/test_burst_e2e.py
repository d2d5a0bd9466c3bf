"""Burst to the cloud end to end: a real farm (redis-server, Celery workers) with one local
emulated ComfyUI node and one Comfy API v2 node (the real comfy-api-proxy in front of an
emulated ComfyUI). Which shots rendered where is read from the shots' attempt logs, the
proxy's own job list and each emulator's job log; what the cloud cost from the spend the
render tasks recorded.

Each test starts a farm of its own, so the dispatcher's estimates start from the prior
(``STEP_SECONDS`` per reference step, nothing learned yet): the shots here cost 0.97
reference steps, about 29 s each by that prior (the emulators render them in a second or
two, and the estimates only shrink once renders are measured)."""

from __future__ import annotations

import gc
import json
import signal
import time
from pathlib import Path

import pytest
import requests

from farm.budget import summary
from farm.local import EmulatedNode, LocalFarm
from farm.runtime import Runtime, get_runtime
from farm.submit import enqueue
from farm.worker import patient

from .conftest import pointed_at
from .test_backend_comfyv2 import MODELS, PROFILE, TOKEN
from .test_faults import t2v_scene, wait_done, wait_for

PRICE = 0.0004


def burst_farm(root: Path, **env: str) -> LocalFarm:
    """A local ComfyUI node ("local", node-a's models) and a v2 node ("cloud", the same
    models behind comfy-api-proxy, two jobs at once, PRICE a GPU-second)."""
    profile = root / "node.json"
    profile.write_text(json.dumps(PROFILE))
    base = {"FARM_CACHE": "0", "FARM_HTTP_TIMEOUT": "10", "FARM_CLOUD_MODELS": MODELS,
            "FARM_CLOUD_CONCURRENCY": "2", "FARM_CLOUD_PRICE": str(PRICE)}  # fmt: skip
    nodes = [EmulatedNode("local", profile), EmulatedNode("cloud", profile, kind="comfyv2")]
    return LocalFarm(root, nodes, heartbeat=0.5, node_ttl=8.0, extra_env={**base, **env},
                     cloud_token=TOKEN)  # fmt: skip


@pytest.fixture
def farm(request, tmp_path):
    """A burst farm of the test's own with its ``FARM_BURST*`` settings (``request.param``,
    given by an indirect parametrize)."""
    with burst_farm(tmp_path, **request.param) as running, pointed_at(running.env()):
        yield running
        gc.collect()


def ready(farm: LocalFarm) -> Runtime:
    rt = get_runtime()
    patient(rt.redis)
    wait_for(lambda: sum(r["alive"] for r in rt.registry.records()) == 2, 60, "both nodes alive")
    return rt


def rendered_on(rt: Runtime, scene_id: str) -> dict[str, list[str]]:
    """Node → the shots whose take it rendered (each shot's done attempt)."""
    out: dict[str, list[str]] = {}
    for shot in rt.state.shots(scene_id):
        (done,) = [a for a in shot["attempt_log"] if a["state"] == "done"]
        out.setdefault(done["node"], []).append(shot["id"])
    return {node: sorted(shots) for node, shots in out.items()}


def proxy_jobs(farm: LocalFarm) -> list[dict]:
    resp = requests.get(farm.node_url("cloud") + "/api/v2/jobs", params={"limit": 100},
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)  # fmt: skip
    return resp.json()["jobs"]


def emulator_runs(farm: LocalFarm, name: str) -> int:
    """Executions the node's emulated ComfyUI started (its job log)."""
    return len(requests.get(farm.emulator_url(name) + "/emulator/jobs", timeout=5).json()["jobs"])


@pytest.mark.parametrize("farm", [{"FARM_BURST": "overflow", "FARM_BURST_AFTER": "60"}],
                         indirect=True)  # fmt: skip
def test_only_the_overflow_goes_to_the_v2_node(farm):
    """Five shots, FARM_BURST_AFTER=60: the local node takes two (the second starts after
    the first, at about 29 s); of the three left the last would start locally at about
    58 + 2 x 29 s, so the cloud takes the oldest, then (58 + 29 s) the next; the last
    starts at about 58 s, within 60: it waits for the local node, which renders it."""
    rt = ready(farm)
    enqueue(t2v_scene("overflow", 5, seed=3), rt)
    status = wait_done(rt, "overflow", timeout=180)
    assert status["state"] == "done", status
    assert rendered_on(rt, "overflow") == {"local": ["s0", "s1", "s4"], "cloud": ["s2", "s3"]}
    jobs = proxy_jobs(farm)
    assert len(jobs) == 2 and all(j["status"] == "succeeded" for j in jobs)
    assert emulator_runs(farm, "cloud") == 2 and emulator_runs(farm, "local") == 3
    spend = summary(rt.redis, rt.settings, ["cloud"])
    billed = spend["nodes"]["cloud"]["gpu_seconds"]
    assert billed > 0 and spend["today"] == pytest.approx(billed * PRICE)
    cost = pytest.approx(billed * PRICE)
    assert rt.state.status("overflow")["cloud_spend"] == {"total": cost, "cloud": cost}


@pytest.mark.parametrize("farm", [{"FARM_BURST": "always", "FARM_BURST_BUDGET_DAY": "0.02"}],
                         indirect=True)  # fmt: skip
def test_a_spent_day_budget_sends_the_rest_to_the_local_node(farm):
    """A day's budget of 0.02 holds one shot's first estimate (0.97 steps x 30 s x PRICE,
    about 0.0116) and not two: the cloud takes one shot, the local node two, and the next
    says why it waits. Every shot renders once; the day's spend never passes the cap."""
    rt = ready(farm)
    enqueue(t2v_scene("budget", 5, seed=5), rt)
    shots = rt.state.status("budget")["shots"]
    assert sorted(s["node"] for s in shots if s["state"] != "queued") == ["cloud", "local", "local"]
    held = [s for s in shots if s["state"] == "queued"]
    assert len(held) == 2
    # the shot a cloud node would take next says why it waits (the dispatcher reads as
    # many waiting shots as nodes have room: here one, for the cloud node's free slot)
    assert "FARM_BURST_BUDGET_DAY=0.02" in held[0]["waiting"], held
    assert "waits for a local node" in held[0]["waiting"]
    status = wait_done(rt, "budget", timeout=180)
    assert status["state"] == "done", status
    placed = rendered_on(rt, "budget")
    assert sum(len(v) for v in placed.values()) == 5 and len(placed["local"]) >= 2
    assert len(proxy_jobs(farm)) == len(placed.get("cloud", [])) == emulator_runs(farm, "cloud")
    spend = summary(rt.redis, rt.settings, ["cloud"])
    assert 0 < spend["today"] <= 0.02
    assert spend["today"] == pytest.approx(spend["nodes"]["cloud"]["gpu_seconds"] * PRICE)
    events = [e for _, e in rt.redis.xrange(rt.settings.keys.events("budget"))]
    assert any(e.get("type") == "shot_burst_held" for e in events)


@pytest.mark.parametrize("farm", [{"FARM_BURST": "always"}], indirect=True)
def test_a_cloud_job_that_ran_and_then_failed_is_paid_for(farm):
    """Only the cloud node is up; its job runs a few seconds and is then interrupted at the
    ComfyUI behind the proxy (someone stopped it there): the attempt fails, and what the job
    ran is spent all the same (a cloud job that ran is billed, finished or not)."""
    rt = ready(farm)
    farm.kill("worker-local", signal.SIGTERM)  # a stopped worker marks its node down
    wait_for(lambda: [r["name"] for r in rt.registry.records() if r["alive"]] == ["cloud"], 60,
             "only the cloud node alive")  # fmt: skip
    cloud = farm.emulator_url("cloud")
    faults = {"slow": {"rate": 1.0, "factor": 8.0}, "hang": {"at_step": 2}}
    requests.put(cloud + "/emulator/faults", json=faults, timeout=5).raise_for_status()
    enqueue(t2v_scene("billed-failure", 1, seed=7), rt)
    wait_for(lambda: any(r["status"] == "running" for r in
                         requests.get(cloud + "/emulator/jobs", timeout=5).json()["jobs"]),
             60, "the cloud job running")  # fmt: skip
    time.sleep(2.0)
    requests.post(cloud + "/interrupt", json={}, timeout=5).raise_for_status()
    status = wait_done(rt, "billed-failure", timeout=120)
    assert status["state"] != "done", status
    (shot,) = rt.state.shots("billed-failure")
    assert [(a["state"], a["node"]) for a in shot["attempt_log"]][0][1] == "cloud"
    assert [j["status"] for j in proxy_jobs(farm)] == ["canceled"]
    spend = summary(rt.redis, rt.settings, ["cloud"])
    billed = spend["nodes"]["cloud"]["gpu_seconds"]
    assert billed >= 2.0 and spend["today"] == pytest.approx(billed * PRICE)
    charged = [f for f in rt.redis.hkeys(rt.settings.keys.spend_scene("billed-failure"))
               if f.startswith("charged:")]  # fmt: skip
    assert len(charged) == 1
