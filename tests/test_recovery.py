"""The faults users cause, on a real farm, refereed by the emulators' own job logs: a GPU
worker's main process killed and restarted (as `farm up` does), a worker frozen past the
node TTL, Redis away longer than the node TTL or restarted during assembly, a clip
unreadable before assembly, a lost scoring message with no GPU worker alive, a lost
delivery in a node's queue, a stale delivery, and an enqueue that died half way.

Each test asserts that the scene ends within a bound far below Celery's visibility
timeout (7,200 s) and that no attempt of a shot rendered successfully twice. The module
runs its own farm with short leases (FARM_LEASE_TTL 2 s), a node TTL long enough for a
worker to restart (8 s) and a short start timeout (3 s).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from farm import canvas
from farm.backends.comfyui import prompt_id_for
from farm.celery_app import app
from farm.local import EmulatedNode, LocalFarm
from farm.media import probe
from farm.nodes import node_queue
from farm.planning import Job
from farm.runtime import Runtime, get_runtime
from farm.scene import parse_scene
from farm.submission import pack_submission, send_submission, wait_status
from farm.submit import enqueue
from farm.worker import patient

from .conftest import NODES, REPO, pointed_at
from .test_faults import (
    SLOW,
    assert_each_attempt_ran_once,
    attempt_runs,
    comfy_profile,
    events,
    executions,
    new_runs,
    pool_children,
    running_shot,
    set_faults,
    t2v_scene,
    wait_done,
    wait_for,
)

LEASE_TTL = 2.0
NODE_TTL = 8.0
START_TIMEOUT = 3.0
#: a scene must end within this after its fault: leases, node TTL, a worker restart and
#: the renders themselves; far below the visibility timeout a stuck message waits for
BOUND = 90.0
COMFY_NODES = ("ra", "rb")
WAN_SLOW = {"slow": {"rate": 1.0, "factor": 40.0}}


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery")
    (root / "profiles").mkdir()
    nodes = []
    for name in COMFY_NODES:
        path = root / "profiles" / f"{name}.json"
        path.write_text(json.dumps(comfy_profile(name)))
        nodes.append(EmulatedNode(name, path))
    nodes.append(EmulatedNode("rw", NODES / "wan-a.json", kind="wan2gp"))
    env = {"FARM_LEASE_TTL": str(LEASE_TTL), "FARM_START_TIMEOUT": str(START_TIMEOUT),
           "FARM_NODE_IDLE_TIMEOUT": "30", "FARM_HTTP_TIMEOUT": "5", "FARM_CACHE": "0",
           "FARM_INGEST_CLAIM_IDLE": "2"}  # fmt: skip
    farm = LocalFarm(root, nodes, cpu_concurrency=2, heartbeat=0.5, node_ttl=NODE_TTL,
                     extra_env=env, supervise=True)  # fmt: skip
    with farm, pointed_at(farm.env()):
        yield farm
        gc.collect()


@pytest.fixture
def rt(farm) -> Runtime:
    """This process's runtime on the module's farm, once every worker runs, every node is
    alive and idle and no fault is injected."""
    for name, proc in list(farm.procs.items()):
        if name in farm.held and name.startswith("worker-") and proc.poll() is not None:
            restart(farm, name)  # stopped by a test that failed before starting it again
    for node in farm.nodes:
        set_faults(farm, node.name, {})
    runtime = get_runtime()
    patient(runtime.redis)
    wait_for(lambda: idle(runtime, farm), 60, "every node alive and idle")
    return runtime


def idle(rt: Runtime, farm: LocalFarm) -> bool:
    alive = {r["name"] for r in rt.registry.records() if r["alive"]}
    bound = any(rt.redis.hlen(rt.settings.keys.bound(n.name)) for n in farm.nodes)
    return alive == {n.name for n in farm.nodes} and not bound


def restart(farm: LocalFarm, name: str) -> None:
    """Start process ``name`` again after a test stopped it on purpose."""
    if name == "worker-cpu":
        farm.start_cpu_worker()
    else:
        farm.start_worker(name.removeprefix("worker-"))


def kill_main(farm: LocalFarm, worker: str) -> None:
    """SIGKILL a worker's main process only (its pool child dies with it: Celery sets the
    child's parent-death signal), as `kill -9 PID` does; the farm's supervisor starts it
    again a second later, as `farm up` does."""
    proc = farm.procs[worker]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    wait_for(lambda: farm.procs[worker] is not proc, 30, f"{worker} restarted")


def wan_scene(scene_id: str, shots: int, seed: int = 0, **extra: Any):
    """Hunyuan shots only the WanGP node renders (with WAN_SLOW: 6 steps of about 0.8 s)."""
    return parse_scene({
        "id": scene_id, "quality": "final",
        "shots": [{"id": f"s{i}", "action_description": f"shot {i}", "backend": "wan2gp",
                   "template": "quick_preview", "width": 640, "height": 352, "frames": 49,
                   "seed": seed * 100 + i, **extra} for i in range(shots)],
    })  # fmt: skip


def wan_runs(farm: LocalFarm, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in new_runs(farm, before) if r["node"] == "rw"]


def log_of(rt: Runtime, scene_id: str, shot_id: str) -> list[tuple]:
    shot = rt.state.shot(scene_id, shot_id)
    return [(a["state"], a["node"], a.get("error_kind")) for a in shot["attempt_log"]]


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- a worker's main process killed and restarted ---------------------------------------------


@pytest.mark.parametrize(
    "kind, at",
    [
        ("comfyui", 0.1),
        ("comfyui", 0.5),
        ("comfyui", 0.85),
        ("wan2gp", 0.2),
        ("wan2gp", 0.7),
    ],  # fmt: skip
    ids=[
        "comfyui-started",
        "comfyui-midway",
        "comfyui-nearly-done",
        "wangp-started",
        "wangp-late",
    ],  # fmt: skip
)
def test_a_killed_main_worker_s_render_is_taken_over_within_seconds(rt, farm, kind, at):
    """`kill -9` of the main worker process mid-render, restarted a second later: its task
    message is stuck in Celery's unacknowledged set until the visibility timeout, but the
    renderer's lease lapses, the timeout checker publishes the shot again on the same
    node (the node lives), and the restarted worker follows the node's job: the scene
    ends in seconds and the node ran the attempt once."""
    faults = WAN_SLOW if kind == "wan2gp" else SLOW
    for node in (*COMFY_NODES, "rw"):
        set_faults(farm, node, faults)
    before = executions(farm)
    tag = f"{kind}-{int(at * 100)}"
    scene = (t2v_scene(f"kill-main-{tag}", 1, seed=int(at * 100), width=640, height=352,
                       frames=33) if kind == "comfyui" else wan_scene(f"kill-main-{tag}", 1))  # fmt: skip
    enqueue(scene, rt)
    shot = wait_for(lambda: running_shot(rt, scene.id, at), 60, f"the shot past {at:.0%}")
    node = shot["node"]
    killed = time.monotonic()
    kill_main(farm, f"worker-{node}")
    status = wait_done(rt, scene.id, timeout=BOUND)
    took = time.monotonic() - killed
    assert status["state"] == "done" and took < BOUND
    assert log_of(rt, scene.id, "s0") == [("done", node, None)]  # followed, not moved
    rebound = [e for e in events(rt, scene.id, "shot_rebound") if e["shot"] == "s0"]
    assert rebound and rebound[0]["why"] == "its renderer stopped"
    if kind == "comfyui":
        assert_each_attempt_ran_once(rt, farm, scene.id, before)
        runs = [r for r in new_runs(farm, before) if r["node"] != "rw"]
    else:
        runs = wan_runs(farm, before)
    assert [r["status"] for r in runs] == ["success"]  # one execution, on its node
    wait_for(lambda: idle(rt, farm), 30, "the node's slot freed")


def test_a_killed_main_worker_on_a_comfyui_of_2024_follows_the_job_by_the_farm_s_tag(
    rt, farm, tmp_path
):
    """The same fault on nodes that choose every prompt id themselves (ComfyUI of March
    2024, the emulator's ``"api": "2024"``): the restarted worker knows nothing of the
    node's id for the job, finds it by the farm's tag in the job's ``extra_data`` and
    follows it; the node ran the attempt once, under its own id."""
    for name in COMFY_NODES:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(comfy_profile(name, api="2024")))
        farm.restart_emulator(name, path)
    try:
        wait_for(lambda: idle(rt, farm), 60, "every node alive and idle")
        for name in COMFY_NODES:
            set_faults(farm, name, SLOW)
        before = executions(farm)
        scene = t2v_scene("kill-main-2024", 1, seed=24, width=640, height=352, frames=33)
        enqueue(scene, rt)
        shot = wait_for(lambda: running_shot(rt, scene.id, 0.4), 60, "the shot past 40%")
        node = shot["node"]
        kill_main(farm, f"worker-{node}")
        status = wait_done(rt, scene.id, timeout=BOUND)
        assert status["state"] == "done"
        assert log_of(rt, scene.id, "s0") == [("done", node, None)]  # followed, not moved
        runs = [r for r in new_runs(farm, before) if r["node"] != "rw"]
        assert [(r["node"], r["status"]) for r in runs] == [(node, "success")]
        record = rt.state.shot(scene.id, "s0")
        (attempt,) = [a for a in record["attempt_log"] if a.get("backend_job_id")]
        farm_id = prompt_id_for(Job.from_dict(record["job"]))
        assert attempt["backend_job_id"] == runs[0]["job_id"] != farm_id  # the node's own id
    finally:
        for name in COMFY_NODES:
            farm.restart_emulator(name, farm.root / "profiles" / f"{name}.json")


@pytest.mark.parametrize("at", [0.3, 0.75], ids=["early", "late"])
def test_a_killed_pool_child_of_a_wangp_node_is_followed(rt, farm, at):
    """SIGKILL the pool child rendering on the WanGP node: the redelivered task (or the
    checker's new delivery) follows the WanGP job recorded in the attempt's folder."""
    set_faults(farm, "rw", WAN_SLOW)
    before = executions(farm)
    scene = wan_scene(f"kill-child-wan-{int(at * 100)}", 1, seed=int(at * 100))
    enqueue(scene, rt)
    wait_for(lambda: running_shot(rt, scene.id, at), 60, f"the shot past {at:.0%}")
    worker = farm.procs["worker-rw"]
    (child,) = pool_children(worker.pid)
    os.kill(child, signal.SIGKILL)
    status = wait_done(rt, scene.id, timeout=BOUND)
    assert status["state"] == "done" and worker.poll() is None
    assert log_of(rt, scene.id, "s0") == [("done", "rw", None)]
    assert [r["status"] for r in wan_runs(farm, before)] == ["success"]


# -- a frozen worker ----------------------------------------------------------------------------


def freeze(farm: LocalFarm, worker: str) -> None:
    os.killpg(farm.procs[worker].pid, signal.SIGSTOP)


def thaw(farm: LocalFarm, worker: str) -> None:
    os.killpg(farm.procs[worker].pid, signal.SIGCONT)


def test_a_renderer_frozen_past_the_node_ttl_loses_its_shot_and_its_late_result_is_kept_aside(
    rt, farm
):
    """SIGSTOP the worker rendering a shot for longer than the node TTL, then SIGCONT: the
    node is declared dead, its job interrupted on the node, and the shot rendered on the
    other node. When the frozen renderer wakes up, nothing of the finished shot changes:
    its record, its clip, the scene video and the report stay those of the kept render."""
    for node in COMFY_NODES:
        set_faults(farm, node, SLOW)
    before = executions(farm)
    scene = t2v_scene("frozen", 1, seed=61, width=640, height=352, frames=49)
    enqueue(scene, rt)
    shot = wait_for(lambda: running_shot(rt, scene.id, 0.2), 60, "the shot past 20%")
    frozen = shot["node"]
    freeze(farm, f"worker-{frozen}")
    # its node lives on and would finish the job: it hangs at its last step instead, until
    # interrupted (so that the farm must take the job off the node; adoption has its test)
    set_faults(farm, frozen, {**SLOW, "hang": {"at_step": 30}})
    try:
        status = wait_done(rt, scene.id, timeout=BOUND)
        kept = rt.state.shot(scene.id, "s0")
        video, report = status["outputs"]["video"], status["outputs"]["report"]
        hashes = (file_hash(video), file_hash(report), file_hash(kept["outputs"]["final"]))
    finally:
        thaw(farm, f"worker-{frozen}")
    live = ({*COMFY_NODES} - {frozen}).pop()
    assert status["state"] == "done"
    assert log_of(rt, scene.id, "s0") == [
        ("lost", frozen, "node_unavailable"),
        ("done", live, None),
    ]
    # the woken renderer and its node's queued delivery change nothing
    wait_for(lambda: idle(rt, farm), 60, f"{frozen} alive again with no slot taken")
    time.sleep(2 * LEASE_TTL)
    assert rt.state.shot(scene.id, "s0") == kept
    assert (file_hash(video), file_hash(report), file_hash(kept["outputs"]["final"])) == hashes
    shot_report = json.loads(Path(report).read_text())["shots"][0]
    assert (
        shot_report["clip"] == kept["outputs"]["final"]
        and shot_report["provenance"]["node"] == live
    )
    runs = attempt_runs(rt, farm, scene.id, before)
    assert sorted(r["status"] for rs in runs.values() for r in rs) == ["interrupted", "success"]


def test_a_frozen_worker_s_finished_job_is_adopted_not_rendered_again(rt, farm):
    """The node finishes the job while its worker is frozen past the node TTL: the
    checker finds the job done on the node and collects its outputs on the CPU queue;
    the shot is done with that one render."""
    before = executions(farm)
    for node in COMFY_NODES:
        set_faults(farm, node, {"slow": {"rate": 1.0, "factor": 3.0}})
    scene = t2v_scene("adopted", 1, seed=62, width=640, height=352, frames=33)
    enqueue(scene, rt)
    shot = wait_for(lambda: running_shot(rt, scene.id, 0.6), 60, "the shot past 60%")
    frozen = shot["node"]
    freeze(farm, f"worker-{frozen}")
    try:
        status = wait_done(rt, scene.id, timeout=BOUND)
    finally:
        thaw(farm, f"worker-{frozen}")
    assert status["state"] == "done"
    assert log_of(rt, scene.id, "s0") == [("done", frozen, None)]
    why = [e["why"] for e in events(rt, scene.id, "shot_rebound")]
    assert any("collected" in w for w in why), why
    assert_each_attempt_ran_once(rt, farm, scene.id, before)
    assert [r["status"] for r in new_runs(farm, before)] == ["success"]
    wait_for(lambda: idle(rt, farm), 60, f"{frozen} alive again")


# -- Redis away ---------------------------------------------------------------------------------


def test_a_redis_outage_longer_than_the_node_ttl_declares_no_node_dead(rt, farm):
    """Redis killed for longer than FARM_NODE_TTL mid-render and restarted from its
    append-only file: every heartbeat was missed, but the farm itself could not reach
    Redis, so no node is declared dead and no running shot is rendered again."""
    for node in COMFY_NODES:
        set_faults(farm, node, SLOW)
    before = executions(farm)
    scene = t2v_scene("outage", 2, seed=63, width=640, height=352, frames=33)
    enqueue(scene, rt)
    wait_for(lambda: running_shot(rt, scene.id, 0.2), 60, "a shot past 20%")
    farm.restart_redis(signal.SIGKILL, down_for=NODE_TTL + 3)
    status = wait_done(rt, scene.id, timeout=BOUND + 60)
    assert status["state"] == "done"
    for shot in ("s0", "s1"):
        assert [state for state, _, _ in log_of(rt, scene.id, shot)] == ["done"]
    assert not events(rt, scene.id, "shot_requeued")
    assert_each_attempt_ran_once(rt, farm, scene.id, before)


def test_redis_killed_during_assembly_assembles_once_and_a_late_body_does_nothing(rt, farm):
    """Redis killed while the CPU worker assembles or scores the scene: the stage goes on
    when Redis is back and ends once. A copy of the chord body delivered late (its
    acknowledgement was lost in the restart) finds its work done and changes nothing."""
    scene = t2v_scene("assembly-outage", 3, seed=64, width=640, height=352, frames=49)
    enqueue(scene, rt)

    def in_cpu_stage() -> bool:
        return rt.state.scene(scene.id)["state"] in ("assembling", "scoring", "done")

    wait_for(in_cpu_stage, BOUND, "the scene's assembly")
    farm.restart_redis(signal.SIGKILL, down_for=2.0)
    status = wait_done(rt, scene.id, timeout=BOUND)
    assert status["state"] == "done"
    assert probe(Path(status["outputs"]["video"])).frames == 3 * 49
    counts = {t: len(events(rt, scene.id, t)) for t in ("scene_assembled", "scene_done")}
    assert counts == {"scene_assembled": 1, "scene_done": 1}
    video, report = status["outputs"]["video"], status["outputs"]["report"]
    stamps = (os.stat(video).st_mtime_ns, os.stat(report).st_mtime_ns)
    run = rt.state.scene(scene.id)["run"]
    late = canvas.scene_body(app, scene.id, run, rt.settings.cpu_queue, records=[]).apply_async()
    wait_for(lambda: late.ready(), 60, "the late body to run")
    assert late.get(timeout=5)["skipped"] is True
    late.forget()
    assert (os.stat(video).st_mtime_ns, os.stat(report).st_mtime_ns) == stamps
    assert {t: len(events(rt, scene.id, t)) for t in counts} == counts


# -- assembly that fails --------------------------------------------------------------------------


def test_a_clip_unreadable_before_assembly_fails_the_scene_and_retry_mends_it(rt, farm):
    """One shot's clip is damaged after it was kept: assembly fails, is tried once more,
    then the scene ends failed with the error (not stuck assembling), and `farm retry`
    renders the shot again and assembles the scene."""
    set_faults(farm, "rb", SLOW)
    set_faults(farm, "ra", {})
    scene = t2v_scene("bad-clip", 2, seed=65)
    enqueue(scene, rt)

    def one_done() -> dict | None:
        shots = rt.state.shots(scene.id)
        done = [s for s in shots if s["state"] == "done"]
        over = ("done", "failed", "cancelled")
        rest = [s for s in shots if s["state"] not in over]
        return done[0] if len(done) == 1 and rest else None

    damaged = wait_for(one_done, BOUND, "one shot done while the other is not")
    Path(damaged["outputs"]["final"]).write_bytes(b"not a video at all")
    status = wait_done(rt, scene.id, timeout=BOUND)
    assert status["state"] == "failed"
    record = rt.state.scene(scene.id)
    assert record["error"].startswith("assembly failed 2 times") and record["stage_tries"] == 2
    assert len(events(rt, scene.id, "scene_stage_retry")) == 1
    out = subprocess.run([sys.executable, "-m", "farm", "retry", scene.id, "--shot",
                          damaged["id"]], env={**os.environ, **farm.env()}, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    status = wait_done(rt, scene.id, timeout=BOUND)
    assert status["state"] == "done" and probe(Path(status["outputs"]["video"])).frames == 2 * 17


# -- lost messages ---------------------------------------------------------------------------------


def drop_queue(rt: Runtime, queue: str) -> int:
    """Delete every message waiting in ``queue`` (every priority): they are lost."""
    return sum(rt.redis.delete(key) for key in canvas.queue_lists(rt.settings, queue))


def test_a_lost_scoring_message_is_scored_again_by_the_cpu_worker_alone(rt, farm):
    """The take's scoring message is lost while no CPU worker runs, and every GPU worker
    is gone too: when a CPU worker starts, its own timeout checker scores the take again
    and the scene ends (the farm's housekeeping runs in CPU workers too)."""
    farm.kill("worker-cpu")
    scene = t2v_scene("lost-score", 1, seed=66)
    try:
        enqueue(scene, rt)
        wait_for(lambda: rt.state.shot(scene.id, "s0")["state"] == "scoring", 60, "scoring")
        for node in farm.nodes:
            farm.kill(f"worker-{node.name}")
        assert drop_queue(rt, rt.settings.cpu_queue) >= 1
    finally:
        farm.start_cpu_worker()
    status = wait_done(rt, scene.id, timeout=BOUND)
    assert status["state"] == "done"
    assert len(events(rt, scene.id, "shot_rescoring")) == 1
    for node in farm.nodes:
        restart(farm, f"worker-{node.name}")


def test_a_delivery_lost_from_a_node_queue_is_published_again(rt, farm):
    """Two shots only the WanGP node renders: one runs, one waits bound in the node's
    queue; that message is lost. The checker publishes it again once the queue is empty
    and it did not start within FARM_START_TIMEOUT."""
    set_faults(farm, "rw", WAN_SLOW)
    scene = wan_scene("lost-delivery", 2, seed=67)
    enqueue(scene, rt)

    def one_bound_behind() -> bool:
        states = sorted(s["state"] for s in rt.state.shots(scene.id))
        depth = canvas.queue_depth(rt.redis, rt.settings, node_queue("rw"))
        return states == ["bound", "running"] and depth == 1

    wait_for(one_bound_behind, 60, "a shot bound behind the running one")
    assert drop_queue(rt, node_queue("rw")) == 1
    status = wait_done(rt, scene.id, timeout=BOUND)
    assert status["state"] == "done"
    why = [e["why"] for e in events(rt, scene.id, "shot_rebound")]
    assert why == ["its delivery was lost"]


def test_a_second_delivery_of_a_running_binding_leaves_the_renderer_its_lease_and_slot(rt, farm):
    """Celery delivers a render message twice while its first delivery renders (it puts
    unacknowledged messages back when a worker's broker connection drops; here a second
    worker on the node's queue takes the copy): the copy waits for the lease, finds the
    renderer alive and does nothing. It must not free the renderer's lease or node slot,
    which share its binding token: the checker would take the lapsed lease for a dead
    renderer and move the shot, and the dispatcher would bind a second shot to the node."""
    set_faults(farm, "rw", {"slow": {"rate": 1.0, "factor": 300.0}})  # about 30 s
    before = executions(farm)
    scene = wan_scene("second-delivery", 1, seed=71)
    enqueue(scene, rt)
    shot = wait_for(lambda: running_shot(rt, scene.id, 0.01), 60, "the shot rendering")
    token, kind = shot["binding"], shot["job"]["kind"]
    keys, member = rt.settings.keys, f"{scene.id}/s0"
    copy = farm._spawn("worker-rw-copy", [sys.executable, "-m", "farm", "worker", "--node", "rw"])
    try:
        app.send_task(f"farm.{kind}", args=(scene.id, "s0", token), queue=node_queue("rw"))
        log = farm.logs / "worker-rw-copy.log"
        wait_for(lambda: "is rendered by another delivery" in log.read_text(), 60,
                 "the copy to find the renderer alive")  # fmt: skip
        assert rt.redis.get(keys.lease(scene.id, "s0")) == token
        assert rt.redis.hget(keys.bound("rw"), member) == token
        time.sleep(2 * LEASE_TTL)  # the checker's rounds see the renderer alive
        assert rt.state.shot(scene.id, "s0")["binding"] == token
    finally:
        copy.kill()
        copy.wait(timeout=10)
        farm.procs.pop("worker-rw-copy", None)
        set_faults(farm, "rw", {})
    status = wait_done(rt, scene.id, timeout=BOUND)
    assert status["state"] == "done"
    assert events(rt, scene.id, "shot_rebound") == []
    assert log_of(rt, scene.id, "s0") == [("done", "rw", None)]
    assert len(wan_runs(farm, before)) == 1


def test_a_stale_delivery_frees_its_node_slot_and_the_checker_frees_leaked_ones(rt, farm):
    """A slot left taken under a binding the shot no longer holds: the stale delivery of
    that binding frees it on its way out, and the checker frees one nobody delivers."""
    scene = t2v_scene("stale-slot", 1, seed=68)
    enqueue(scene, rt)
    wait_done(rt, scene.id)
    keys = rt.settings.keys
    rt.redis.hset(keys.bound("ra"), f"{scene.id}/s0", "stale-token")
    result = app.send_task("farm.final", args=(scene.id, "s0", "stale-token"),
                           queue=node_queue("ra"))  # fmt: skip
    wait_for(lambda: not rt.redis.hexists(keys.bound("ra"), f"{scene.id}/s0"), 30,
             "the stale delivery to free the slot")  # fmt: skip
    result.forget()
    rt.redis.hset(keys.bound("rb"), f"{scene.id}/s0", "leaked-token")
    wait_for(lambda: not rt.redis.hexists(keys.bound("rb"), f"{scene.id}/s0"), 30,
             "the checker to free the leaked slot")  # fmt: skip
    both = t2v_scene("stale-slot-after", 2, seed=69)
    enqueue(both, rt)
    status = wait_done(rt, both.id)
    assert {s["node"] for s in status["shots"]} == set(COMFY_NODES)


# -- an enqueue that died half way -------------------------------------------------------------

DIE_AFTER_CREATE = """
import os, sys
from farm import submit
from farm.runtime import get_runtime
from farm.scene import parse_scene
import json

def die(*args, **kwargs):  # the process is killed right after the scene was recorded
    os._exit(137)

submit._finish = die
scene = parse_scene(json.loads(sys.argv[1]))
submit.enqueue(scene, get_runtime(), submission=sys.argv[2])
"""


def test_an_enqueue_that_died_after_recording_the_scene_is_finished(rt, farm, tmp_path):
    """The process enqueuing a submission (ingest) dies right after the scene and its
    shots were recorded, before the chord was frozen and the shots entered the backlog.
    Its enqueue lease lapses; the scene is finished (by the checker, or by ingest when the
    submission's message comes again): every shot renders once, the submission is
    accepted once."""
    scene = t2v_scene("half-enqueued", 2, seed=70)
    scene_file = tmp_path / "scene.json"
    scene_file.write_text(json.dumps(scene.to_dict()))
    fields = pack_submission(scene_file, "half-enqueued-1")
    env = {**os.environ, **farm.env()}
    died = subprocess.run([sys.executable, "-c", DIE_AFTER_CREATE,
                           json.dumps(scene.to_dict()), "half-enqueued-1"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert died.returncode == 137, died.stderr
    record = rt.state.scene(scene.id)
    assert record["state"] == "queued" and record.get("enqueued") is None
    assert all(not s.get("group") for s in rt.state.shots(scene.id))  # outside the backlog
    before = executions(farm)
    send_submission(rt.redis, rt.settings, fields)  # the message comes (again)
    status = wait_done(rt, scene.id, timeout=BOUND)
    assert status["state"] == "done"
    decision = wait_status(rt.redis, rt.settings, "half-enqueued-1", timeout=60)
    assert decision and decision["state"] == "accepted"
    assert len(events(rt, scene.id, "scene_queued")) == 1
    assert_each_attempt_ran_once(rt, farm, scene.id, before)
