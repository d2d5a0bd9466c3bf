"""Faults on a real farm: worker processes killed with SIGKILL mid-render, Redis restarted
mid-scene, every fault the emulated nodes can inject, and blocklisting after failures.

The module runs its own farm (redis-server with AOF, emulated nodes, Celery worker
subprocesses) with short leases and heartbeats, since its tests kill and restart parts of
it. What a node really rendered is read from the emulators' own job logs
(``GET /emulator/jobs``): every execution a node started, interrupted and crashed ones too.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from farm.backends.comfyui import prompt_id_for
from farm.celery_app import app
from farm.dispatch import Dispatcher
from farm.lifecycle import TERMINAL_SCENE
from farm.local import EmulatedNode, LocalFarm
from farm.media import probe
from farm.planning import Job
from farm.runtime import Runtime, get_runtime
from farm.scene import parse_scene
from farm.submit import enqueue
from farm.worker import patient

from .conftest import NODES, pointed_at

LEASE_TTL = 3.0
NODE_TTL = 3.0
#: above the ComfyUI client's 5 s /history reconciliation: a redelivered task following a
#: job under a new client id gets none of its events but the broadcast ones, and learns
#: of its end only there (a shorter idle timeout would call the finished job hung)
IDLE_TIMEOUT = 6.0
#: a 6 GB ComfyUI node with Wan 2.2 TI2V-5B and T2V A14B (fb also has Hunyuan Video 1.5,
#: which the WanGP node fw renders too)
COMFY = {
    "gpu": "NVIDIA GeForce RTX 2060", "vram_gb": 6, "speed": 1.0, "model_load_s": 0.2,
    "step_s": 0.05, "failure_rate": 0.0,
    "models": {
        "diffusion_models": ["wan2.2_ti2v_5B_fp16.safetensors",
                             "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                             "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"],
        "text_encoders": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
        "vae": ["wan_2.1_vae.safetensors", "wan2.2_vae.safetensors"],
    },
}  # fmt: skip
HUNYUAN = {
    "diffusion_models": ["hunyuanvideo1.5_720p_t2v_fp16.safetensors"],
    "text_encoders": [
        "qwen_2.5_vl_7b_fp8_scaled.safetensors",
        "byt5_small_glyphxl_fp16.safetensors",
    ],
    "vae": ["hunyuanvideo15_vae_fp16.safetensors"],
}
#: a render of a test shot lasts about 3 s under this fault: time to kill something
SLOW = {"slow": {"rate": 1.0, "factor": 8.0}}


def comfy_profile(name: str, **extra: Any) -> dict[str, Any]:
    profile = {"name": name, **COMFY, **extra}
    if name == "fb":
        profile["models"] = {k: [*v, *HUNYUAN.get(k, [])] for k, v in COMFY["models"].items()}
    return profile


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A farm of two ComfyUI nodes (fa, fb) and a WanGP node (fw), pointed at by this
    process for the module."""
    root = tmp_path_factory.mktemp("faults")
    (root / "profiles").mkdir()
    nodes = []
    for name in ("fa", "fb"):
        path = root / "profiles" / f"{name}.json"
        path.write_text(json.dumps(comfy_profile(name)))
        nodes.append(EmulatedNode(name, path))
    nodes.append(EmulatedNode("fw", NODES / "wan-a.json", kind="wan2gp"))
    env = {"FARM_LEASE_TTL": str(LEASE_TTL), "FARM_NODE_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
           "FARM_HTTP_TIMEOUT": "5", "FARM_CACHE": "0"}  # fmt: skip
    farm = LocalFarm(root, nodes, heartbeat=0.5, node_ttl=NODE_TTL, extra_env=env)
    with farm, pointed_at(farm.env()):
        yield farm
        gc.collect()  # results made here unsubscribe while Redis is up


@pytest.fixture
def rt(farm) -> Runtime:
    """This process's runtime on the module's farm, once every node is alive and idle
    and no fault is injected."""
    for node in farm.nodes:
        set_faults(farm, node.name, {})
    runtime = get_runtime()
    patient(runtime.redis)  # polls go on through a Redis restart, as the workers' do
    wait_for(lambda: idle(runtime, farm), 30, "every node alive and idle")
    return runtime


# -- helpers ---------------------------------------------------------------------------------


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def idle(rt: Runtime, farm: LocalFarm) -> bool:
    alive = {r["name"] for r in rt.registry.records() if r["alive"]}
    bound = any(rt.redis.hlen(rt.settings.keys.bound(n.name)) for n in farm.nodes)
    return alive == {n.name for n in farm.nodes} and not bound


def set_faults(farm: LocalFarm, node: str, faults: dict) -> None:
    resp = requests.put(farm.node_url(node) + "/emulator/faults", json=faults, timeout=5)
    assert resp.status_code == 200, resp.text


def executions(farm: LocalFarm) -> list[dict[str, Any]]:
    """Every execution every node started, from the emulators' job logs, with its node."""
    runs = []
    for node in farm.nodes:
        resp = requests.get(farm.node_url(node.name) + "/emulator/jobs", timeout=5)
        runs += [{**run, "node": node.name} for run in resp.json()["jobs"]]
    return runs


def new_runs(farm: LocalFarm, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {(r["node"], r["run"]) for r in before}
    return [r for r in executions(farm) if (r["node"], r["run"]) not in seen]


def wait_done(rt: Runtime, scene_id: str, timeout: float = 90) -> dict[str, Any]:
    def over() -> dict[str, Any] | None:
        status = rt.state.status(scene_id)
        return status if status["state"] in TERMINAL_SCENE else None

    try:
        return wait_for(over, timeout, f"scene {scene_id} to finish")
    except AssertionError:
        raise AssertionError(json.dumps(rt.state.status(scene_id), indent=1)) from None


def t2v_scene(scene_id: str, shots: int, seed: int = 0, **extra: Any):
    """Text-to-video shots only the ComfyUI nodes render (Wan 14B, 30 steps)."""
    return parse_scene({
        "id": scene_id, "quality": "final",
        "shots": [{"id": f"s{i}", "action_description": f"shot {i}", "backend": "comfyui",
                   "width": 320, "height": 192, "frames": 17, "seed": seed * 100 + i, **extra}
                  for i in range(shots)],
    })  # fmt: skip


def attempt_ids(rt: Runtime, scene_id: str) -> dict[str, list[str]]:
    """Each shot's ComfyUI prompt ids, one per attempt in its attempt log."""
    out = {}
    for shot in rt.state.shots(scene_id):
        job = Job.from_dict(shot["job"])
        out[shot["id"]] = [
            prompt_id_for(replace(job, kind=a["kind"], attempt=a["attempt"]))
            for a in shot.get("attempt_log") or []
        ]
    return out


def events(rt: Runtime, scene_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The scene's events (of type ``kind``), their JSON fields decoded."""
    found = [{k: _value(v) for k, v in fields.items()}
             for _, fields in rt.state.events(scene_id, count=10_000)]  # fmt: skip
    return [e for e in found if kind is None or e["type"] == kind]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def running_shot(rt: Runtime, scene_id: str, progress: float) -> dict[str, Any] | None:
    """A shot of the scene rendering past ``progress``, if any."""
    for shot in rt.state.shots(scene_id):
        if shot.get("state") == "running" and (shot.get("progress") or 0) >= progress:
            return shot
    return None


def pool_children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a Celery worker's pool children)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def attempt_runs(
    rt: Runtime, farm: LocalFarm, scene_id: str, before: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """The executions the ComfyUI nodes started since ``before`` for each attempt of the
    scene's shots (by prompt id); fails if they started anything else."""
    runs = [r for r in new_runs(farm, before) if r["node"] != "fw"]
    ids = {p for ids in attempt_ids(rt, scene_id).values() for p in ids}
    assert {r["job_id"] for r in runs} <= ids, f"executions of no attempt: {runs}"
    return {p: [r for r in runs if r["job_id"] == p] for p in ids}


def assert_each_attempt_ran_once(rt: Runtime, farm: LocalFarm, scene_id: str, before) -> None:
    """Every attempt of every shot started exactly one execution on the nodes, the nodes
    started nothing else, and no shot ran on two nodes at once."""
    per_attempt = attempt_runs(rt, farm, scene_id, before)
    assert all(len(runs) == 1 for runs in per_attempt.values()), per_attempt
    for ids in attempt_ids(rt, scene_id).values():
        spans = sorted((r["started_at"], r["ended_at"] or 1e18)
                       for p in ids for r in per_attempt[p])  # fmt: skip
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"two executions of one shot overlapped: {spans}"


# -- worker processes killed with SIGKILL ------------------------------------------------------


@pytest.mark.parametrize("at", [0.05, 0.4, 0.75], ids=["started", "midway", "nearly-done"])
def test_a_killed_pool_child_s_render_is_followed_not_started_again(rt, farm, at):
    """SIGKILL the prefork child running a render: Celery redelivers the task to a new
    child of the same worker, which waits for the dead child's lease to lapse and then
    follows (or collects) the job still running on the node under its deterministic id."""
    for node in ("fa", "fb"):
        set_faults(farm, node, SLOW)
    before = executions(farm)
    # sampling of about 4 s under SLOW: a kill at 75% lands well before the render ends
    scene = t2v_scene(f"kill-child-{int(at * 100)}", 2, seed=int(at * 100), width=640,
                      height=352, frames=49)  # fmt: skip
    enqueue(scene, rt)
    shot = wait_for(lambda: running_shot(rt, scene.id, at), 30, f"a shot past {at:.0%}")
    worker = farm.procs[f"worker-{shot['node']}"]
    (child,) = pool_children(worker.pid)
    os.kill(child, signal.SIGKILL)
    status = wait_done(rt, scene.id)

    assert worker.poll() is None and child not in pool_children(worker.pid)
    assert status["state"] == "done" and all(s["state"] == "done" for s in status["shots"])
    killed = rt.state.shot(scene.id, shot["id"])
    assert killed["node"] == shot["node"]  # the node lived on: nothing was moved
    log = [(a["state"], a.get("error")) for a in killed["attempt_log"]]
    assert [state for state, _ in log] == ["done"], log
    starts = [e for e in events(rt, scene.id, "shot_started") if e["shot"] == shot["id"]]
    assert len(starts) == 2  # the first delivery, and the redelivery that followed the job
    assert_each_attempt_ran_once(rt, farm, scene.id, before)
    runs = new_runs(farm, before)
    assert all(r["status"] == "success" for r in runs)


def test_a_killed_worker_s_shots_are_reclaimed_and_rendered_once_on_a_live_node(rt, farm):
    """SIGKILL a node's whole worker (main process and pool child) mid-render: the node
    stops beating, its renderer's lease lapses, and the timeout checker takes its shots back:
    the running one is interrupted on the node and rendered as a new attempt on the live
    node, a queued one goes back as it was. Each attempt starts one execution."""
    for node in ("fa", "fb"):
        set_faults(farm, node, SLOW)
    before = executions(farm)
    scene = t2v_scene("kill-worker", 3, seed=7)
    enqueue(scene, rt)
    shot = wait_for(lambda: running_shot(rt, scene.id, 0.3), 30, "a shot past 30%")
    dead = shot["node"]
    farm.kill(f"worker-{dead}")
    # the node lives on: its job must not end before the farm takes it back (so that we
    # see the farm interrupt it); it stops at its last step until interrupted
    set_faults(farm, dead, {**SLOW, "hang": {"at_step": 30}})
    try:
        status = wait_done(rt, scene.id)
    finally:
        farm.start_worker(dead)
    assert status["state"] == "done" and all(s["state"] == "done" for s in status["shots"])
    killed = rt.state.shot(scene.id, shot["id"])
    log = [(a["state"], a["node"], a.get("error_kind")) for a in killed["attempt_log"]]
    live = ({"fa", "fb"} - {dead}).pop()
    assert log == [("lost", dead, "node_unavailable"), ("done", live, None)]
    assert killed["used_fallback"] and "stopped beating" in killed["primary_error"]
    assert_each_attempt_ran_once(rt, farm, scene.id, before)
    first = prompt_id_for(replace(Job.from_dict(killed["job"]), attempt=1))
    (run,) = [r for r in new_runs(farm, before) if r["job_id"] == first]
    assert (run["node"], run["status"]) == (dead, "interrupted")  # not left rendering for nobody


def test_redis_restarted_mid_scene_loses_nothing(rt, farm):
    """Redis killed and restarted mid-scene on its append-only file: queued and unacked
    tasks, the chord, the backlog and the farm state survive, workers reconnect, and the
    scene completes with each attempt rendered once."""
    for node in ("fa", "fb"):
        set_faults(farm, node, SLOW)
    before = executions(farm)
    scene = t2v_scene("redis-restart", 4, seed=9)
    enqueue(scene, rt)
    wait_for(lambda: running_shot(rt, scene.id, 0.3), 30, "a shot past 30%")
    farm.restart_redis(signal.SIGKILL, down_for=2.0)
    status = wait_done(rt, scene.id, timeout=120)
    assert status["state"] == "done" and all(s["state"] == "done" for s in status["shots"])
    assert status["outputs"]["video"] and probe(Path(status["outputs"]["video"])).frames == 4 * 17
    assert_each_attempt_ran_once(rt, farm, scene.id, before)
    # every delivery was acknowledged: nothing of the scene waits to be redelivered later
    assert not [m for m in rt.redis.hvals("unacked") if scene.id in m]


# -- blocklisting ------------------------------------------------------------------------------


def test_a_node_that_fails_three_shots_of_a_scene_gets_no_more_of_them(rt, farm):
    """fa refuses every prompt (HTTP 500): each shot it takes fails over to fb; after its
    third failure fa is blocklisted for the scene and starts none of its shots again (one
    already queued there is handed back), while other scenes still use it."""
    set_faults(farm, "fa", {"http_500": {"rate": 1.0}})
    scene = t2v_scene("blocklist", 6, seed=13)
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done" and all(s["state"] == "done" for s in status["shots"])
    tried = [(s["id"], a) for s in rt.state.shots(scene.id) for a in s["attempt_log"]]
    on_fa = [a for _, a in tried if a["node"] == "fa"]
    assert len(on_fa) == 3 and {a["error_kind"] for a in on_fa} == {"node_unavailable"}
    assert all(a["node"] == "fb" for _, a in tried if a["state"] == "done")
    found = events(rt, scene.id)
    (blocked,) = [i for i, e in enumerate(found) if e["type"] == "node_blocklisted"]
    assert (found[blocked]["node"], found[blocked]["failures"]) == ("fa", 3)
    assert status["blocked"] == [{"node": "fa", "failures": 3, "errors": {"node_unavailable": 3},
                                  "text": "fa: blocked for this scene after 3 failures "
                                          "(a lost connection ×3)"}]  # fmt: skip
    later = [e for e in found[blocked:] if e["type"] == "shot_started" and e["node"] == "fa"]
    assert later == []
    set_faults(farm, "fa", {})
    other = t2v_scene("blocklist-other", 2, seed=14)
    enqueue(other, rt)
    status = wait_done(rt, other.id)
    assert status["state"] == "done" and {s["node"] for s in status["shots"]} == {"fa", "fb"}


# -- every fault the nodes can inject ----------------------------------------------------------

#: fault on fa -> the error kind its shot fails with there (None: it is not a failure)
COMFY_FAULTS = {
    "crash": ({"crash": {"at_step": 3}}, "node_unavailable"),
    "hang": ({"hang": {"at_step": 3}}, "timeout"),
    "http_500": ({"http_500": {"rate": 1.0}}, "node_unavailable"),
    "ws_drop": ({"ws_drop": {"at_step": 3}}, None),
    "slow": ({"slow": {"factor": 3.0}}, None),
}


@pytest.mark.parametrize("fault", COMFY_FAULTS)
def test_each_comfyui_fault_takes_its_rung_and_the_scene_completes(rt, farm, fault):
    """Two shots, one per ComfyUI node, faults on fa: a crash, a hang and HTTP 500 fail
    the shot there and it is rendered on fb as a new attempt ("another node"), with
    used_fallback and primary_error; a dropped websocket and a slow node are no failure:
    the shot renders on fa at the first attempt. Each attempt runs once on the nodes."""
    faults, kind = COMFY_FAULTS[fault]
    set_faults(farm, "fa", faults)
    before = executions(farm)
    scene = t2v_scene(f"fault-{fault}", 2, seed=20 + list(COMFY_FAULTS).index(fault))
    enqueue(scene, rt)
    try:
        status = wait_done(rt, scene.id)
    finally:
        if fault == "crash":
            farm.restart_emulator("fa")
    assert status["state"] == "done" and all(s["state"] == "done" for s in status["shots"])
    shots = {s["id"]: rt.state.shot(scene.id, s["id"]) for s in status["shots"]}
    (hit,) = [s for s in shots.values() if s["attempt_log"][0]["node"] == "fa"]
    log = [(a["state"], a["node"], a.get("error_kind")) for a in hit["attempt_log"]]
    per_attempt = attempt_runs(rt, farm, scene.id, before)
    first = per_attempt[attempt_ids(rt, scene.id)[hit["id"]][0]]
    if kind is None:
        assert log == [("done", "fa", None)] and not hit["used_fallback"]
        assert [r["status"] for r in first] == ["success"]
    else:
        assert log == [("failed", "fa", kind), ("done", "fb", None)]
        assert hit["used_fallback"] and hit["primary_error"].startswith(kind)
        assert hit["fallback"] == "another node"
        # what the node saw of the failed attempt: killed mid-run, interrupted, refused
        expect = {"crash": ["running"], "hang": ["interrupted"], "http_500": []}[fault]
        assert [r["status"] for r in first] == expect
    for other in shots.values():
        if other is not hit:
            assert [a["state"] for a in other["attempt_log"]] == ["done"]
    assert all(len(runs) <= 1 for runs in per_attempt.values())


def test_out_of_memory_retries_at_three_quarters_of_the_size(rt, farm):
    """960x544x49 with Wan 14B does not fit the 6 GB nodes: the node reports
    torch.OutOfMemoryError, and the shot is rendered again at 0.75x the size."""
    scene = t2v_scene("fault-oom", 1, seed=30, width=960, height=544, frames=49)
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    (shot,) = status["shots"]
    log = rt.state.shot(scene.id, shot["id"])["attempt_log"]
    assert status["state"] == "done" and shot["state"] == "done", json.dumps(log, indent=1)
    assert [(a["state"], a.get("error_kind")) for a in log] == [
        ("failed", "out_of_memory"), ("done", None)]  # fmt: skip
    assert shot["used_fallback"] and "OutOfMemoryError" in shot["primary_error"]
    assert shot["fallback"] == "720x416 (0.75x size)"
    info = probe(Path(shot["outputs"]["final"]))
    assert (info.width, info.height, info.frames) == (720, 416, 49)


def test_status_says_what_an_out_of_memory_shot_retries_and_which_node_is_blocked(
    rt, farm, tmp_path
):
    """fb holds no Wan model, so fa alone renders two 1280x720 Wan 14B shots: each runs out
    of memory there, and fa's third failure blocks it for the scene, so both shots wait
    for their next rung. `farm status` says in words what each one renders next and why,
    and that fa is blocked (its --json too), instead of a cut error."""
    hunyuan_only = tmp_path / "fb-hunyuan.json"
    hunyuan_only.write_text(json.dumps({**comfy_profile("fb"), "models": HUNYUAN}))
    swap_profile(rt, farm, "fb", hunyuan_only)
    try:
        scene = t2v_scene("fault-plan", 2, seed=32, width=1280, height=720, frames=49)
        enqueue(scene, rt)

        def waiting() -> dict[str, Any] | None:
            status = rt.state.status(scene.id)
            shots = status["shots"]
            ready = status["blocked"] and all(s["state"] == "queued" and s["plan"] for s in shots)
            return status if ready else None

        status = wait_for(waiting, 60, "both shots waiting with fa blocked")
        assert sorted(s["plan"]["text"] for s in status["shots"]) == [
            "attempt 2 of 3: final at 960×544 after out of memory on fa",
            "attempt 3 of 3: final at 960×544 with the fast-tier ComfyUI wan2.2_ti2v_5B_fp16 "
            "after out of memory on fa",
        ]
        assert status["blocked"] == [{
            "node": "fa", "failures": 3, "errors": {"out_of_memory": 3},
            "text": "fa: blocked for this scene after 3 failures (out of memory ×3)"}]  # fmt: skip
        shown = subprocess.run([sys.executable, "-m", "farm", "status", scene.id],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        words = " ".join(shown.stdout.split())  # as one line, however the terminal wraps it
        for shot in status["shots"]:
            assert f"{shot['id']}: {shot['plan']['text']}" in words, shown.stdout
        assert "fa: blocked for this scene after 3 failures (out of memory ×3)" in words
        assert "Allocation on device" not in words  # the plan, not the stale error
        as_json = subprocess.run([sys.executable, "-m", "farm", "status", scene.id, "--json"],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        printed = json.loads(as_json.stdout)
        assert [s["plan"] for s in printed["shots"]] == [s["plan"] for s in status["shots"]]
        assert printed["blocked"] == status["blocked"]
    finally:
        Dispatcher(rt, app).cancel("fault-plan")
        swap_profile(rt, farm, "fb", None)


def swap_profile(rt: Runtime, farm: LocalFarm, name: str, profile: Path | None) -> None:
    """Restart node ``name``'s emulator with ``profile`` (None: its own), once its worker
    saw it down, and wait until the registry holds what it now offers."""

    def record() -> dict[str, Any]:
        return next(r for r in rt.registry.records() if r["name"] == name)

    farm.kill(f"emulator-{name}", signal.SIGTERM)
    wait_for(lambda: not record()["ok"], 30, f"{name} seen down")
    farm.restart_emulator(name, profile)
    path = profile or next(n.profile for n in farm.nodes if n.name == name)
    want = sorted(json.loads(path.read_text())["models"]["diffusion_models"])
    wait_for(lambda: record()["alive"] and idle(rt, farm)
             and sorted(record()["models"].get("diffusion_models", [])) == want,
             30, f"{name} discovered again")  # fmt: skip


def test_a_render_failure_is_tried_once_more_on_another_node(rt, farm, tmp_path):
    """A node whose every sampling run fails (the profile's failure_rate 1.0: "CUDA error:
    an illegal memory access") fails its shot, which is rendered again on the other node."""
    broken = tmp_path / "fa-broken.json"
    broken.write_text(json.dumps(comfy_profile("fa", failure_rate=1.0)))
    farm.restart_emulator("fa", broken)
    try:
        wait_for(lambda: idle(rt, farm), 30, "fa alive again")
        scene = t2v_scene("fault-render", 2, seed=31)
        enqueue(scene, rt)
        status = wait_done(rt, scene.id)
    finally:
        farm.restart_emulator("fa")
    assert status["state"] == "done" and all(s["state"] == "done" for s in status["shots"])
    shots = [rt.state.shot(scene.id, s["id"]) for s in status["shots"]]
    (hit,) = [s for s in shots if s["attempt_log"][0]["node"] == "fa"]
    log = [(a["state"], a["node"], a.get("error_kind")) for a in hit["attempt_log"]]
    assert log == [("failed", "fa", "render_failed"), ("done", "fb", None)]
    assert "RuntimeError: CUDA error" in hit["primary_error"]
    assert hit["fallback"] == "again on another node"


WAN_FAULTS = {
    "crash": ({"crash": {"at_step": 2}}, "node_unavailable"),
    "hang": ({"hang": {"at_step": 2}}, "timeout"),
    "http_500": ({"http_500": {"rate": 1.0}}, "node_unavailable"),
}


@pytest.mark.parametrize("fault", WAN_FAULTS)
def test_each_wangp_fault_falls_back_to_the_other_engine(rt, farm, fault):
    """Two Hunyuan Video 1.5 shots: one on the WanGP node fw, one on fb (ComfyUI). A crash,
    a hang or HTTP 500 on fw fails its shot there, and fb renders it with ComfyUI's."""
    faults, kind = WAN_FAULTS[fault]
    set_faults(farm, "fw", faults)
    before = executions(farm)
    scene = parse_scene({
        "id": f"fault-wan-{fault}", "quality": "final",
        "shots": [{"id": f"s{i}", "action_description": f"shot {i}", "template": "quick_preview",
                   "width": 320, "height": 192, "frames": 17, "seed": 40 + i} for i in range(2)],
    })  # fmt: skip
    enqueue(scene, rt)
    try:
        status = wait_done(rt, scene.id)
    finally:
        if fault == "crash":
            farm.restart_emulator("fw")
    assert status["state"] == "done" and all(s["state"] == "done" for s in status["shots"])
    shots = [rt.state.shot(scene.id, s["id"]) for s in status["shots"]]
    (hit,) = [s for s in shots if s["attempt_log"][0]["node"] == "fw"]
    log = [(a["state"], a["node"], a["backend"], a.get("error_kind")) for a in hit["attempt_log"]]
    assert log == [("failed", "fw", "wan2gp", kind), ("done", "fb", "comfyui", None)]
    assert hit["used_fallback"] and hit["primary_error"].startswith(kind)
    on_fw = [r for r in new_runs(farm, before) if r["node"] == "fw"]
    expect = {"crash": ["running"], "hang": ["interrupted"], "http_500": []}[fault]
    assert [r["status"] for r in on_fw] == expect  # the hung job was cancelled on the node


# -- a late redelivery ---------------------------------------------------------------------------


def test_a_late_redelivery_of_a_finished_shot_renders_nothing(rt, farm):
    """A render task delivered again after its shot is done (its acknowledgement lost in
    a Redis crash, then restored after the visibility timeout) does nothing."""
    from farm.celery_app import app

    before = executions(farm)
    scene = t2v_scene("late-redelivery", 1, seed=50)
    enqueue(scene, rt)
    wait_done(rt, scene.id)
    shot = rt.state.shot(scene.id, "s0")
    result = app.send_task("farm.final", args=(scene.id, "s0", shot["binding"]),
                           queue=f"node.{shot['node']}")  # fmt: skip
    wait_for(lambda: result.state != "PENDING", 30, "the redelivered task to start")
    worker = f"{shot['node']}@"

    def finished() -> bool:
        with app.connection_for_write() as conn:  # not a pooled one Redis restarts closed
            active = app.control.inspect(timeout=1.0, connection=conn).active() or {}
        return not any(t["id"] == result.id for k, ts in active.items() if k.startswith(worker)
                       for t in ts)  # fmt: skip

    wait_for(finished, 30, "the redelivered task to end")
    result.forget()
    after = rt.state.shot(scene.id, "s0")
    assert after["state"] == "done" and after["attempt_log"] == shot["attempt_log"]
    assert len(events(rt, scene.id, "shot_started")) == 1
    assert len(new_runs(farm, before)) == 1
