"""End to end: scenes through real Celery chords on real workers and emulated nodes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import cv2
import requests

from farm.celery_app import app
from farm.lifecycle import TERMINAL_SCENE
from farm.local import wait_for
from farm.media import probe, read_frames
from farm.metrics import score_clip
from farm.scene import parse_scene
from farm.submit import enqueue

from .conftest import EXAMPLES


def wait_done(rt, scene_id, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rt.state.status(scene_id)
        if status["state"] in TERMINAL_SCENE:
            return status
        time.sleep(0.2)
    raise AssertionError(
        f"scene {scene_id} did not finish: {json.dumps(rt.state.status(scene_id), indent=1)}"
    )


def small_scene(scene_id, quality="final", **extra):
    img = str(EXAMPLES / "images" / "meadow.jpg")
    base = {"width": 320, "height": 192, "frames": 17, "fps": 16}
    return parse_scene(
        {
            "id": scene_id,
            "quality": quality,
            "shots": [
                {
                    "id": "t2v",
                    "action_description": "a lighthouse",
                    "camera_movements": ["pan_right"],
                    **base,
                    "seed": 1,
                },
                {
                    "id": "i2v",
                    "action_description": "the meadow at dawn",
                    "start_image": img,
                    **base,
                    "seed": 2,
                },
                {
                    "id": "ati",
                    "action_description": "a fox runs",
                    "start_image": img,
                    **base,
                    "seed": 3,
                    "trajectories": [
                        [{"x": 40, "y": 150}, {"x": 160, "y": 110}, {"x": 280, "y": 60}]
                    ],
                },
                {
                    "id": "hy",
                    "action_description": "a dragon",
                    "template": "fantasy_content",
                    **base,
                    "seed": 4,
                },
            ],
        },
        **extra,
    )


def test_a_scene_renders_assembles_and_scores(rt):
    scene = small_scene("e2e-main")
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    nodes = {s["id"]: s["node"] for s in status["shots"]}
    # bound late, to whichever capable node had room: ATI only on node-c, Hunyuan (or
    # WanGP's Wan 2.2) on node-b or the WanGP node
    assert nodes["ati"] == "node-c" and nodes["hy"] in {"node-b", "node-w"}
    assert {nodes["t2v"], nodes["i2v"]} <= {"node-a", "node-b", "node-w"}
    assert status["state"] == "done", status
    assert [s["state"] for s in status["shots"]] == ["done"] * 4
    for shot in status["shots"]:
        info = probe(Path(shot["outputs"]["final"]))
        assert (info.frames, info.width, info.height) == (17, 320, 192)
        assert shot["attempts"] == 1 and shot["error"] is None
    video = probe(Path(status["outputs"]["video"]))
    assert (video.frames, video.width, video.height) == (4 * 17, 320, 192)
    cap = cv2.VideoCapture(status["outputs"]["video"])
    ok, frame = cap.read()
    assert ok and frame.shape == (192, 320, 3) and frame.std() > 5  # real picture, not a blank
    report = json.loads(Path(status["outputs"]["report"]).read_text())
    shots = {s["id"]: s for s in report["shots"]}
    for shot_id in ("t2v", "i2v", "ati", "hy"):
        scores = shots[shot_id]["scores"]
        for name in ("motion_smoothness", "temporal_flicker", "visual_consistency"):
            assert 0.0 <= scores[name] <= 1.0
    assert (
        "trajectory_adherence" in shots["ati"]["scores"]
        and "trajectory_adherence" not in shots["t2v"]["scores"]
    )
    # the emulated ATI shot follows its drawn track, not another path from the same start
    ati = shots["ati"]
    assert ati["scores"]["trajectory_adherence"] > 0.9
    assert ati["raw"]["trajectory_adherence"]["objmc_px"] < 3
    elsewhere = score_clip(ati["clip"], [[(40, 150), (160, 170), (280, 185)]])
    assert elsewhere["scores"]["trajectory_adherence"] < 0.3
    assert elsewhere["raw"]["trajectory_adherence"]["objmc_px"] > 10 * (
        ati["raw"]["trajectory_adherence"]["objmc_px"] + 0.1
    )
    assert all(s["gate"]["decision"] == "passed" for s in report["shots"])
    assert status["metrics"]["summary"]


def test_wan_2_2_a14b_shots_render_with_both_experts_on_the_node_that_holds_them(rt, farm_cluster):
    """Two Wan 2.2 T2V A14B finals (a high-noise and a low-noise 14B model in one graph):
    only node-a holds both, so both go there; each renders with both models; the node
    loads the pair at most once for the two and records the pair as its loaded model."""
    high, low = (f"wan2.2_t2v_{n}_noise_14B_fp8_scaled.safetensors" for n in ("high", "low"))
    base = {"width": 320, "height": 192, "frames": 17, "fps": 16, "backend": "comfyui"}
    scene = parse_scene({"id": "e2e-a14b", "quality": "final", "shots": [
        {"id": f"a{i}", "action_description": f"a lighthouse {i}", "seed": 60 + i, **base}
        for i in range(2)]})  # fmt: skip
    jobs = enqueue(scene, rt)
    assert all(j.models == (high, low) and j.workflow == "wan22_t2v" for j in jobs)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", status
    logs = [rt.state.shot(scene.id, s["id"])["attempt_log"] for s in status["shots"]]
    assert [[(a["node"], a["models"]) for a in log] for log in logs] == [
        [("node-a", [high, low])]
    ] * 2
    for shot in status["shots"]:
        info = probe(Path(shot["outputs"]["final"]))
        assert (info.frames, info.width, info.height, round(info.fps)) == (17, 320, 192, 16)
    runs = requests.get(farm_cluster.node_url("node-a") + "/emulator/jobs", timeout=5).json()
    mine = {log[0]["backend_job_id"] for log in logs}
    first, second = [r["details"]["loaded_models"] for r in runs["jobs"] if r["job_id"] in mine]
    assert first in ([], [high, low])  # none if node-a held the pair already
    assert second == []  # the pair stayed loaded
    held = rt.redis.hget(rt.registry.key("node-a"), "rendered_models")
    assert json.loads(held) == [high, low]


def test_an_ltx2_shot_renders_video_and_sound_on_the_node_with_its_checkpoint(rt, farm_cluster):
    """high_quality's final tier on ComfyUI is LTX-2 19B (one checkpoint in models/
    checkpoints, with Gemma 3 as text encoder): only node-b holds it, so the shot goes
    there; the clip is on LTX-2's grid with its audio track, and the scene assembles."""
    ckpt = "ltx-2-19b-dev-fp8.safetensors"
    shot = {"id": "ltx", "action_description": "rain on a tin roof", "template": "high_quality",
            "width": 320, "height": 192, "frames": 17, "fps": 24, "seed": 5, "backend": "comfyui"}  # fmt: skip
    scene = parse_scene({"id": "e2e-ltx2", "quality": "final", "shots": [shot]})
    (job,) = enqueue(scene, rt)
    assert (job.workflow, job.models) == ("ltx2_t2v", (ckpt,))
    assert job.files["checkpoints"] == [ckpt]
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", status
    (done,) = status["shots"]
    assert done["node"] == "node-b"
    clip = Path(done["outputs"]["final"])
    info = probe(clip)
    assert (info.frames, info.width, info.height, round(info.fps)) == (17, 320, 192, 24)
    streams = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0", str(clip)],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()  # fmt: skip
    assert streams == ["video", "audio"]
    assert probe(Path(status["outputs"]["video"])).frames == 17


def test_a_trajectory_shot_moves_its_subject_and_passes_the_gate_on_the_first_take(rt, tmp_path):
    # the meadow with a subject where the track starts: an orange disk with a white and a dark spot
    start, end = (80, 170), (330, 130)
    image = cv2.resize(cv2.imread(str(EXAMPLES / "images" / "meadow.jpg")), (416, 240))
    cv2.circle(image, start, 16, (40, 110, 230), -1)
    cv2.circle(image, (start[0] - 6, start[1] - 5), 5, (255, 255, 255), -1)
    cv2.circle(image, (start[0] + 7, start[1] + 4), 4, (20, 20, 20), -1)
    cv2.imwrite(str(tmp_path / "fox.png"), image)
    scene = parse_scene(
        {
            "id": "e2e-ati-gate",
            "quality": "final",
            "shots": [
                {
                    "id": "fox",
                    "action_description": "a fox runs across the meadow",
                    "start_image": str(tmp_path / "fox.png"),
                    "trajectories": [[{"x": x, "y": y} for x, y in (start, (200, 150), end)]],
                    "width": 416,
                    "height": 240,
                    "frames": 17,
                    "seed": 5,
                }
            ],
        }
    )
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", status
    report = json.loads(Path(status["outputs"]["report"]).read_text())
    (shot,) = report["shots"]
    assert shot["gate"]["decision"] == "passed" and len(shot["gate"]["takes"]) == 1, shot["gate"]
    assert shot["scores"]["trajectory_adherence"] > 0.9
    assert shot["raw"]["trajectory_adherence"]["lost_fraction"] == 0
    # the subject itself moved: gone from where it started, found where its track ends
    frames = read_frames(Path(shot["clip"]))
    subject = cv2.getRectSubPix(image, (25, 25), start)

    def match(frame, at):
        near = cv2.getRectSubPix(frame, (65, 65), at)
        return cv2.minMaxLoc(cv2.matchTemplate(near, subject, cv2.TM_CCOEFF_NORMED))[1]

    assert match(frames[0], start) > 0.8
    assert match(frames[-1], end) > 0.8
    assert match(frames[-1], start) < 0.5


def test_preview_then_final_hands_over_inside_the_chord(rt):
    scene = parse_scene(
        {
            "id": "e2e-ptf",
            "quality": "preview_then_final",
            "shots": [
                {
                    "id": "only",
                    "action_description": "waves",
                    "width": 512,
                    "height": 320,
                    "frames": 9,
                }
            ],
        }
    )
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    (shot,) = status["shots"]
    assert status["state"] == "done" and set(shot["outputs"]) == {"preview", "final"}
    assert (
        probe(Path(shot["outputs"]["preview"])).width < probe(Path(shot["outputs"]["final"])).width
    )
    assert probe(Path(status["outputs"]["video"])).width == 512  # the scene is cut from finals


def test_a_shot_whose_node_is_down_fails_and_the_scene_still_assembles(rt, farm_cluster):
    scene = small_scene("e2e-down")
    enqueue(scene, rt)
    farm_cluster.kill("emulator-node-c")  # the only node with the ATI model
    try:
        status = wait_done(rt, scene.id)
    finally:
        farm_cluster.start_emulator(next(n for n in farm_cluster.nodes if n.name == "node-c"))
        url = farm_cluster.node_url("node-c") + "/emulator/faults"
        wait_for(lambda: requests.get(url, timeout=1).ok, 30, "node-c back")
        alive = lambda: any(r["name"] == "node-c" and r["alive"] for r in rt.registry.records())  # noqa: E731
        wait_for(alive, 30, "node-c alive again in the registry")
    shots = {s["id"]: s for s in status["shots"]}
    assert status["state"] == "partial"
    assert shots["ati"]["state"] == "failed" and "node_unavailable" in shots["ati"]["error"]
    assert all(shots[s]["state"] == "done" for s in ("t2v", "i2v", "hy"))
    # the shot's chord slot task is SUCCESS in Celery (and Flower); its result says the shot failed
    for shot_id, said in (("ati", "shot failed: node_unavailable"), ("t2v", "shot done (gate")):
        slot = app.AsyncResult(rt.state.shot(scene.id, shot_id)["task_id"])
        assert slot.state == "SUCCESS" and slot.result["outcome"].startswith(said), slot.result
    video = probe(Path(status["outputs"]["video"]))
    assert video.frames == 4 * 17  # the failed shot is a slate of its own length


def test_a_start_image_that_is_not_an_image_at_render_time_fails_its_shot_once(rt, tmp_path):
    """The file changed after the scene was validated (or was never checked): the worker
    refuses it before a node gets the job, and the shot fails at once. Before, every node
    failed it (PIL.UnidentifiedImageError) and the shot was tried three times."""
    image = tmp_path / "start.png"
    image.write_bytes(b"not an image any more")
    shot = {"id": "i2v", "action_description": "the meadow", "start_image": str(image),
            "width": 320, "height": 192, "frames": 17, "seed": 2}  # fmt: skip
    scene = parse_scene({"id": "e2e-notimage", "quality": "final", "shots": [shot]},
                        check_files=False)  # fmt: skip
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "failed"
    record = rt.state.shot(scene.id, "i2v")
    log = [(a["state"], a.get("error_kind")) for a in record["attempt_log"]]
    assert log == [("failed", "invalid_input")], record["attempt_log"]
    assert f"start image {image} is not an image (Pillow cannot tell its format)" in record["error"]
