"""The farm across hosts (tests/multihost.py): Redis, the CPU worker and each GPU node on
machines of their own, each with its own address and network stack, configured from
deploy/env.example; links cut and healed, slowed and dropped, mid-scene.

What must hold after every fault: the scene ends (no stuck state), no attempt of a shot
rendered successfully twice (the emulators' own job logs are the referee), the kept clip
is the one the shot record and the report name, and a healed host takes work again.
"""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from farm.assembly import scene_dir
from farm.lifecycle import TERMINAL_SCENE
from farm.media import probe
from farm.runtime import Runtime, get_runtime
from farm.scene import parse_scene
from farm.submit import enqueue, retry
from farm.worker import patient

from .conftest import pointed_at
from .multihost import Testbed, namespaces_possible, write_env_file
from .test_faults import SLOW, attempt_ids, comfy_profile, events, t2v_scene, wait_for
from .test_faults import wait_done as scene_over

pytestmark = pytest.mark.multihost

NODE_TTL = 3.0
LEASE_TTL = 3.0
TUNABLES = {
    "FARM_HEARTBEAT": "0.5", "FARM_NODE_TTL": str(NODE_TTL), "FARM_LEASE_TTL": str(LEASE_TTL),
    "FARM_NODE_IDLE_TIMEOUT": "6", "FARM_HTTP_TIMEOUT": "5", "FARM_START_TIMEOUT": "15",
    "FARM_CACHE": "0", "FARM_CLIP_WAIT": "4",
}  # fmt: skip
COMFY = ("gpu1", "gpu2")
#: a scene must end within this after its fault heals: leases, node TTL, fallbacks, renders
BOUND = 120.0


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    """The test bed for the module, this process pointed at its Redis from the tester host."""
    why = namespaces_possible()
    if why:
        pytest.skip(f"no multi-host test bed here: {why}")
    root = tmp_path_factory.mktemp("multihost")
    (root / "profiles").mkdir()
    profiles = {}
    for name in COMFY:
        profiles[name] = root / "profiles" / f"{name}.json"
        profiles[name].write_text(json.dumps(comfy_profile(name)))
    bed = Testbed(root, f"mh{time.time_ns() % 100000}", TUNABLES, profiles)
    with bed, pointed_at(bed.env()):
        yield bed
        gc.collect()


@pytest.fixture
def rt(bed) -> Runtime:
    """This process's runtime, once every link is up, no fault injected and every node
    alive and idle."""
    for host in ("redis", "cpu", "gpu1", "gpu2", "gpu2n", "gpu3"):
        bed.heal(host)
    for name in bed.nodes:
        set_faults(bed, name, {})
    runtime = get_runtime()
    patient(runtime.redis)
    wait_for(lambda: idle(runtime, bed), 60, "every node alive and idle")
    return runtime


# -- helpers ---------------------------------------------------------------------------------


def idle(rt: Runtime, bed: Testbed) -> bool:
    alive = {r["name"] for r in rt.registry.records() if r["alive"]}
    bound = any(rt.redis.hlen(rt.settings.keys.bound(n)) for n in bed.nodes)
    return alive == set(bed.nodes) and not bound


def set_faults(bed: Testbed, node: str, faults: dict) -> None:
    bed.admin(node, "PUT", "/emulator/faults", faults)


def executions(bed: Testbed, nodes=COMFY) -> list[dict[str, Any]]:
    """Every execution the nodes started, from their own job logs, with the node's name."""
    runs = []
    for name in nodes:
        runs += [{**run, "node": name} for run in bed.admin(name, "GET", "/emulator/jobs")["jobs"]]
    return runs


def wait_done(rt: Runtime, scene_id: str, timeout: float = BOUND) -> dict[str, Any]:
    return scene_over(rt, scene_id, timeout)


def running_on(rt: Runtime, scene_id: str, node: str, progress: float) -> dict | None:
    """A shot of the scene rendering on ``node`` past ``progress``."""
    for shot in rt.state.shots(scene_id):
        if (
            shot.get("state") == "running"
            and shot.get("node") == node
            and (shot.get("progress") or 0) >= progress
        ):
            return shot
    return None


def assert_rendered_once(rt: Runtime, bed: Testbed, scene_id: str, before: list) -> None:
    """The scene is done; each attempt of each shot succeeded on the nodes at most once and
    the nodes ran nothing else; each shot's kept clip is the one its record and the report
    name, from a successful execution of its done attempt on the node that rendered it."""
    status = rt.state.status(scene_id)
    assert status["state"] == "done", json.dumps(status, indent=1)
    seen = {(r["node"], r["run"]) for r in before}
    runs = [r for r in executions(bed) if (r["node"], r["run"]) not in seen]
    ids = attempt_ids(rt, scene_id)
    assert {r["job_id"] for r in runs} <= {p for v in ids.values() for p in v}, runs
    for p in {p for v in ids.values() for p in v}:
        wins = [r for r in runs if r["job_id"] == p and r["status"] == "success"]
        assert len(wins) <= 1, f"attempt {p} succeeded {len(wins)} times: {wins}"
    report = json.loads((scene_dir(rt.settings.storage, scene_id) / "report.json").read_text())
    clips = {s["id"]: s["clip"] for s in report["shots"]}
    for shot in rt.state.shots(scene_id):
        assert shot["state"] == "done", shot
        done = [a for a in shot["attempt_log"] if a["state"] == "done"]
        assert len(done) == 1, shot["attempt_log"]
        kept = next(t for t in shot["takes"] if t["take"] == shot["gate"]["kept"])
        assert shot["outputs"]["final"] == clips[shot["id"]] == kept["clip"]
        assert kept["node"] == done[0]["node"]
        prompt = ids[shot["id"]][shot["attempt_log"].index(done[0])]
        assert [r["node"] for r in runs if r["job_id"] == prompt and r["status"] == "success"] == [
            done[0]["node"]]  # fmt: skip
        assert probe(Path(shot["outputs"]["final"])).frames == 17
    assert probe(Path(status["outputs"]["video"])).frames == 17 * len(status["shots"])


def assert_gets_work(rt: Runtime, bed: Testbed, node: str, name: str) -> None:
    """A healed ``node`` is alive and renders a shot of a new scene (two shots for two idle
    ComfyUI nodes: each gets one, the least loaded first)."""
    wait_for(lambda: idle(rt, bed), 60, f"{node} alive again")
    for other in COMFY:
        set_faults(bed, other, {})
    scene = t2v_scene(name, 2, seed=90)
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done"
    assert node in {s["node"] for s in status["shots"]}, status["shots"]


# -- the farm across hosts -------------------------------------------------------------------


def test_a_scene_renders_across_the_hosts(rt, bed):
    """Four ComfyUI shots and a Hunyuan one (only the WanGP node has Hunyuan): each GPU host
    renders, the CPU host assembles, each attempt runs once; every host reaches Redis over
    TLS with its password, configured from deploy/env.example."""
    for name in COMFY:
        set_faults(bed, name, SLOW)
    before = executions(bed)
    wan_before = executions(bed, ("gpu3",))
    spec = {
        "id": "across", "quality": "final",
        "shots": [{"id": f"s{i}", "action_description": f"shot {i}", "backend": "comfyui",
                   "width": 320, "height": 192, "frames": 17, "seed": i} for i in range(4)]
        + [{"id": "w", "action_description": "a wan shot", "template": "quick_preview",
            "width": 320, "height": 192, "frames": 17, "seed": 9}],
    }  # fmt: skip
    scene = parse_scene(spec)
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", status
    assert {s["node"] for s in status["shots"]} == {"gpu1", "gpu2", "gpu3"}
    wan = [r for r in executions(bed, ("gpu3",)) if r not in wan_before]
    assert [r["status"] for r in wan] == ["success"]
    comfy = [r for r in executions(bed) if r not in before]
    assert sorted(r["job_id"] for r in comfy) == sorted(
        p for sid, ids in attempt_ids(rt, scene.id).items() if sid != "w" for p in ids
    )
    assert all(r["status"] == "success" for r in comfy)
    env = bed.env("gpu1")
    assert env["FARM_REDIS_URL"] == f"rediss://:{bed.password}@10.213.0.2:6379/0"
    assert env["FARM_REDIS_CA"] and env["FARM_REDIS_CERT"] and env["FARM_REDIS_KEY"]
    assert env["FARM_NODES"].split(",")[1] == "gpu2=http://10.213.0.22:8188"
    assert env["FARM_WORKFLOWS"] == str(Path(__file__).resolve().parent.parent / "workflows")


@pytest.mark.parametrize("down_for", [1.5, 3 * NODE_TTL], ids=["under-ttl", "over-ttl"])
def test_a_gpu_host_cut_from_redis_mid_render(rt, bed, down_for):
    """gpu1 (its worker and its node) loses the network mid-render, for less and for
    more than FARM_NODE_TTL, then comes back: the scene completes, no attempt succeeded
    twice, the kept clips are the ones the records and the report name. A short cut costs
    nothing (the shot stays on gpu1, one attempt); a long one hands the shot to gpu2."""
    for name in COMFY:
        set_faults(bed, name, SLOW)
    before = executions(bed)
    scene = t2v_scene(f"cut-gpu1-{int(down_for)}", 3, seed=10 + int(down_for))
    enqueue(scene, rt)
    shot = wait_for(lambda: running_on(rt, scene.id, "gpu1", 0.2), 60, "a shot on gpu1")
    bed.cut("gpu1")
    time.sleep(down_for)
    if down_for > NODE_TTL:  # cut off until the farm has moved the shot (a node's TTL, the
        # lease, and the checker's call to the unreachable node)
        wait_for(lambda: rt.state.shot(scene.id, shot["id"])["attempt_log"], 30, "the shot moved")
    bed.heal("gpu1")
    wait_done(rt, scene.id)
    assert_rendered_once(rt, bed, scene.id, before)
    log = [(a["state"], a["node"]) for a in rt.state.shot(scene.id, shot["id"])["attempt_log"]]
    if down_for < NODE_TTL:
        assert log == [("done", "gpu1")]
    else:
        assert log[0][1] == "gpu1" and log[0][0] != "done" and log[-1] == ("done", "gpu2"), log
    assert_gets_work(rt, bed, "gpu1", f"after-cut-gpu1-{int(down_for)}")


def test_a_gpu_worker_cut_from_its_node_falls_back_and_the_orphan_is_cancelled(rt, bed):
    """gpu2's worker (on host gpu2) loses its link to gpu2's node server (on host gpu2n)
    mid-render, while the node renders on: the shot fails over to gpu1 and the scene
    completes; when the link heals, the job left on gpu2's node is cancelled, not left
    rendering for nobody; gpu2 takes work again."""
    for name in COMFY:
        set_faults(bed, name, SLOW)
    before = executions(bed)
    scene = t2v_scene("cut-node", 2, seed=30)
    enqueue(scene, rt)
    shot = wait_for(lambda: running_on(rt, scene.id, "gpu2", 0.2), 60, "a shot on gpu2")
    set_faults(bed, "gpu2", {**SLOW, "hang": {"at_step": 28}})  # it renders on, for nobody
    bed.cut("gpu2n")
    try:
        wait_done(rt, scene.id)
    finally:
        bed.heal("gpu2n")
    log = [(a["state"], a["node"]) for a in rt.state.shot(scene.id, shot["id"])["attempt_log"]]
    assert log[0][1] == "gpu2" and log[0][0] != "done" and log[-1] == ("done", "gpu1"), log
    first = attempt_ids(rt, scene.id)[shot["id"]][0]

    def orphan() -> list[str]:
        return [r["status"] for r in executions(bed, ("gpu2",)) if r["job_id"] == first]

    wait_for(lambda: orphan() == ["interrupted"], 30, f"the orphaned job cancelled: {orphan()}")
    assert_rendered_once(rt, bed, scene.id, before)
    assert_gets_work(rt, bed, "gpu2", "after-cut-node")


def test_the_cpu_host_cut_from_redis_during_assembly_assembles_once(rt, bed):
    """The CPU host (its worker and ingest) loses the network as the scene's assembly
    starts, longer than the scene's lease: once it heals the stage is claimed again, the
    scene is assembled exactly once and completes; the CPU host then serves the next
    scene."""
    before = executions(bed)
    scene = t2v_scene("cut-cpu", 3, seed=40, width=640, height=352, frames=17)
    enqueue(scene, rt)
    wait_for(lambda: rt.state.status(scene.id)["state"] == "assembling", 60, "assembly")
    bed.cut("cpu")
    cut_at = time.time()
    time.sleep(2 * LEASE_TTL)
    bed.heal("cpu")
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", status
    (assembled,) = events(rt, scene.id, "scene_assembled")
    assert assembled["time"] > cut_at  # the cut came before the assembly was over
    assert_rendered_once(rt, bed, scene.id, before)
    after = t2v_scene("after-cut-cpu", 1, seed=41)
    enqueue(after, rt)
    assert wait_done(rt, after.id)["state"] == "done"  # only the CPU host assembles


def test_redis_restarted_while_partitioned_hosts_reconnect_loses_no_scene(rt, bed):
    """gpu1 and the CPU host are cut off, Redis is killed and restarted from its
    append-only file, then the hosts come back: the scene completes, each attempt
    succeeded at most once, and gpu1 takes work again."""
    for name in COMFY:
        set_faults(bed, name, SLOW)
    before = executions(bed)
    scene = t2v_scene("redis-partition", 4, seed=50)
    enqueue(scene, rt)
    wait_for(lambda: running_on(rt, scene.id, "gpu1", 0.2), 60, "a shot on gpu1")
    bed.cut("gpu1")
    bed.cut("cpu")
    bed.kill("redis", signal.SIGKILL)
    time.sleep(1.0)
    bed.start_redis()
    time.sleep(1.0)
    bed.heal("gpu1")
    bed.heal("cpu")
    wait_done(rt, scene.id)
    assert_rendered_once(rt, bed, scene.id, before)
    assert not [m for m in rt.redis.hvals("unacked") if scene.id in m]
    assert_gets_work(rt, bed, "gpu1", "after-redis-partition")


def test_a_slow_dropping_link_delays_but_fails_nothing(rt, bed):
    """gpu1's worker reaches Redis and its node through a link that delays every byte
    200 ms each way and drops each connection after a few seconds (a proxy on gpu1,
    tests/netproxy.py; gpu2's worker is stopped, so gpu1 renders every shot): each shot
    renders at its first attempt, progress reaches Redis while it renders, and the
    scene completes."""
    proxies = {"redis": (16379, f"{bed.redis_url().rsplit('@', 1)[1].split('/')[0]}"),
               "node": (18188, "10.213.0.11:8188")}  # fmt: skip
    for name, (port, target) in proxies.items():
        bed.spawn(f"proxy-{name}", "gpu1", [sys.executable, str(Path(__file__).parent / "netproxy.py"), "--listen",
                  f"127.0.0.1:{port}", "--to", target, "--delay", "0.1", "--drop-every", "12"])  # fmt: skip
    nodes = bed.settings_values()["FARM_NODES"].replace("gpu1=http://10.213.0.11:8188",
                                                        "gpu1=http://127.0.0.1:18188")  # fmt: skip
    slow = bed.root / "hosts" / "gpu1-slow" / "farm.env"
    write_env_file(slow, bed.settings_values(
        FARM_REDIS_URL=bed.redis_url("127.0.0.1", 16379), FARM_NODES=nodes))  # fmt: skip
    bed.kill("worker-gpu2")
    bed.kill("worker-gpu1")
    try:
        bed.start_worker("gpu1", env_file=slow)
        wait_for(lambda: {r["name"] for r in rt.registry.records()
                          if r["alive"] and r["models"]} == {"gpu1", "gpu3"},
                 60, "gpu1 described through the proxies, gpu2 down")  # fmt: skip
        set_faults(bed, "gpu1", SLOW)
        before = executions(bed)
        scene = t2v_scene("slow-link", 1, seed=60)
        enqueue(scene, rt)
        seen: dict[str, set[float]] = {}

        def over() -> bool:
            for shot in rt.state.shots(scene.id):
                if shot.get("state") == "running":
                    seen.setdefault(shot["id"], set()).add(round(shot.get("progress") or 0, 3))
            return rt.state.status(scene.id)["state"] in TERMINAL_SCENE

        wait_for(over, 2 * BOUND, "the scene over the slow link")  # a loaded machine
        assert_rendered_once(rt, bed, scene.id, before)
        for shot in rt.state.shots(scene.id):
            assert [(a["state"], a["node"]) for a in shot["attempt_log"]] == [("done", "gpu1")]
            assert len({p for p in seen.get(shot["id"], ()) if 0 < p < 1}) >= 2, seen
        for name in proxies:
            assert "dropped a connection" in (bed.logs / f"proxy-{name}.log").read_text()
    finally:
        bed.kill("worker-gpu1")
        for name in proxies:
            bed.kill(f"proxy-{name}")
        bed.start_worker("gpu1")
        bed.start_worker("gpu2")
        bed.wait_workers()


# -- storage: one shared folder, seen by every host ------------------------------------------


def blind_cpu(bed: Testbed) -> Path:
    """Restart the CPU worker in a mount namespace of its own where FARM_STORAGE is an
    empty folder: a machine whose shared mount is missing (or does not show new files
    yet). Returns that folder."""
    empty = bed.root / "empty-storage"
    empty.mkdir(exist_ok=True)
    bed.kill("worker-cpu")
    mount = f'mount --bind {empty} {bed.storage} && exec "$@"'
    bed.start_cpu(wrap=["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"])
    bed.wait_workers()
    return empty


def see_storage(bed: Testbed) -> None:
    """Let the blind CPU worker see FARM_STORAGE: take the empty folder off it."""
    pid = bed.procs["worker-cpu"].pid
    done = subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", str(bed.storage)],
                          capture_output=True, text=True, timeout=10)  # fmt: skip
    assert done.returncode == 0, done.stderr


def restore_cpu(bed: Testbed) -> None:
    bed.kill("worker-cpu")
    bed.start_cpu()
    bed.wait_workers()


def test_a_host_that_cannot_see_a_clip_fails_the_scene_with_a_clear_error(rt, bed):
    """The CPU host's FARM_STORAGE is not the shared folder: scoring and assembly wait
    FARM_CLIP_WAIT for the clip, assembly is tried once more, and the scene fails with an
    error naming the clip, the host and the fix, instead of hanging; with the mount
    mended, `farm retry` renders the shot again and the scene completes."""
    blind_cpu(bed)
    try:
        scene = t2v_scene("blind-cpu", 1, seed=70)
        enqueue(scene, rt)
        status = wait_done(rt, scene.id)
        assert status["state"] == "failed"
        record = rt.state.scene(scene.id)
        clip = rt.state.shot(scene.id, "s0")["outputs"]["final"]
        assert record["error"].startswith("assembly failed 2 times"), record["error"]
        assert f"clip {clip} is not in FARM_STORAGE on this machine" in record["error"]
        assert "FARM_CLIP_WAIT" in record["error"] and "docs/deploy.md" in record["error"]
        assert len(events(rt, scene.id, "scene_stage_retry")) == 1
        assert Path(clip).is_file()  # rendered and kept: only the CPU host could not see it
    finally:
        restore_cpu(bed)
    retry(rt, scene.id, ["s0"])
    status = wait_done(rt, scene.id)
    assert status["state"] == "done" and probe(Path(status["outputs"]["video"])).frames == 17


def test_a_clip_that_shows_up_late_on_the_cpu_host_is_waited_for(rt, bed):
    """New files show up late on the CPU host (as on NFS with attribute caching): its
    worker waits for the clip instead of failing, and once it appears the take is scored
    and the scene assembled, with no retry."""
    blind_cpu(bed)
    log = bed.logs / "worker-cpu.log"
    try:
        scene = t2v_scene("late-clip", 1, seed=71)
        enqueue(scene, rt)
        wait_for(lambda: "is not visible here yet; waiting up to" in log.read_text(), 60,
                 "the CPU worker waiting for the clip")  # fmt: skip
        see_storage(bed)
        status = wait_done(rt, scene.id)
    finally:
        restore_cpu(bed)
    assert status["state"] == "done", status
    shot = rt.state.shot(scene.id, "s0")
    kept = next(t for t in shot["takes"] if t["take"] == shot["gate"]["kept"])
    assert "error" not in kept and kept["scores"], kept
    assert events(rt, scene.id, "scene_stage_retry") == []
    assert probe(Path(status["outputs"]["video"])).frames == 17
