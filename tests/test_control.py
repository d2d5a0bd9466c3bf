"""Cancel, pause and resume through the `farm` CLI, on the real farm: a hung render is
interrupted on its node, waiting shots are dropped, the chord still completes."""

from __future__ import annotations

import json
import time

import requests

from farm.lifecycle import TERMINAL_SCENE
from farm.scene import parse_scene
from farm.submit import enqueue

from .conftest import EXAMPLES
from .test_cli import farm
from .test_e2e import wait_done


def ati_scene(scene_id: str, shots: int):
    """Shots only node-c (Wan ATI) can render, so they queue behind each other there."""
    img = str(EXAMPLES / "images" / "meadow.jpg")
    track = [{"x": 40, "y": 150}, {"x": 160, "y": 110}, {"x": 280, "y": 60}]
    return parse_scene({
        "id": scene_id, "quality": "final",
        "shots": [{"id": f"s{i}", "action_description": "a fox runs", "start_image": img,
                   "trajectories": [track], "width": 320, "height": 192, "frames": 17,
                   "seed": i} for i in range(shots)],
    })  # fmt: skip


def wait_for(check, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rendering(rt, scene_id: str):
    """A shot of the scene (as ``farm status`` shows it) rendering past 0%, or None."""
    shots = rt.state.status(scene_id)["shots"]
    return next((s for s in shots if s["state"] == "running" and s["progress"] > 0), None)


def set_faults(farm_cluster, node: str, faults: dict) -> None:
    resp = requests.put(farm_cluster.node_url(node) + "/emulator/faults", json=faults, timeout=5)
    assert resp.status_code == 200, resp.text


def test_cancel_interrupts_the_running_render_and_drops_waiting_shots(rt, farm_cluster, cli_env):
    set_faults(farm_cluster, "node-c", {"hang": {"at_step": 2}})
    try:
        scene = ati_scene("ctl-cancel", 3)
        enqueue(scene, rt)
        running = wait_for(lambda: rendering(rt, scene.id), what="a running shot")
        asked = time.monotonic()
        out = farm("cancel", scene.id, "--json", env=cli_env)
        assert out.returncode == 0, out.stderr
        counts = json.loads(out.stdout)
        assert counts["dropped"] >= 1 and counts["dropped"] + counts["interrupting"] == 3
        wait_for(lambda: rt.state.shot(scene.id, running["id"])["state"] == "cancelled",
                 timeout=10, what="the running shot to be cancelled")  # fmt: skip
        took = time.monotonic() - asked
        status = wait_done(rt, scene.id, timeout=60)
    finally:
        set_faults(farm_cluster, "node-c", {})
    assert took < 5.0  # interrupted on the node, not timed out (FARM_NODE_IDLE_TIMEOUT is 8 s)
    assert status["state"] == "cancelled"
    assert [s["state"] for s in status["shots"]] == ["cancelled"] * 3
    history = requests.get(farm_cluster.node_url("node-c") + "/history", timeout=5).json()
    interrupted = [
        h for h in history.values()
        if any(m[0] == "execution_interrupted" for m in h["status"].get("messages", []))
    ]  # fmt: skip
    assert interrupted, "the hung prompt was not interrupted on the node"
    # the slots were filled: the chord body ran and saw the cancel
    assert rt.state.scene(scene.id)["state"] in TERMINAL_SCENE


def test_cancel_one_shot_lets_the_scene_finish(rt, cli_env):
    scene = ati_scene("ctl-cancel-shot", 3)
    enqueue(scene, rt)
    out = farm("cancel", scene.id, "--shot", "s2", env=cli_env)
    assert out.returncode == 0, out.stderr
    status = wait_done(rt, scene.id)
    states = {s["id"]: s["state"] for s in status["shots"]}
    assert states["s2"] == "cancelled" and states["s0"] == states["s1"] == "done"
    assert status["state"] == "partial" and status["outputs"]["video"]
    assert farm("cancel", scene.id, "--shot", "nope", env=cli_env).returncode == 2


def test_pause_holds_waiting_shots_and_resume_finishes_them(rt, cli_env):
    scene = ati_scene("ctl-pause", 5)
    enqueue(scene, rt)
    out = farm("pause", scene.id, env=cli_env)
    assert out.returncode == 0, out.stderr

    def started() -> set[str]:
        return {s["id"] for s in rt.state.shots(scene.id) if s.get("started")}

    time.sleep(3.0)  # what was running at the pause finishes; nothing new starts
    before = started()
    time.sleep(2.0)
    assert started() == before and len(before) <= 2
    held = [s for s in rt.state.status(scene.id)["shots"] if s["state"] == "queued"]
    assert len(held) >= 3
    out = farm("resume", scene.id, env=cli_env)
    assert out.returncode == 0, out.stderr
    status = wait_done(rt, scene.id)
    assert status["state"] == "done" and all(s["state"] == "done" for s in status["shots"])
    assert farm("pause", "no-such-scene", env=cli_env).returncode == 2
