"""End to end on a WanGP node: scenes through real Celery chords on the emulated WanGP MCP
server (node-w) next to the ComfyUI nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from farm.media import probe
from farm.scene import parse_scene
from farm.submit import enqueue

from .conftest import EXAMPLES
from .test_e2e import wait_done


def embedded_settings(path: str) -> dict:
    """The WanGP settings the node wrote into the mp4's ``comment`` tag."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags=comment", "-of", "json", path],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return json.loads(json.loads(out.stdout)["format"]["tags"]["comment"])


def wan_shot(shot_id: str, seed: int, **extra) -> dict:
    return {
        "id": shot_id,
        "action_description": f"shot {shot_id}",
        "backend": "wan2gp",
        "width": 320,
        "height": 192,
        "frames": 17,
        "fps": 16,
        "seed": seed,
        **extra,
    }


def test_a_scene_renders_on_the_wangp_node_beside_comfyui(rt, cli_env, farm_cluster):
    img = str(EXAMPLES / "images" / "meadow.jpg")
    scene = parse_scene(
        {
            "id": "e2e-wan",
            "quality": "final",
            "shots": [
                wan_shot("hy", 11, template="quick_preview"),
                wan_shot("a14b", 12, template="character_focus", start_image=img),
                {**wan_shot("comfy", 13), "backend": "comfyui"},
            ],
        }
    )
    jobs = {j.shot_id: j for j in enqueue(scene, rt)}
    assert {k: (j.node, j.backend, j.model) for k, j in jobs.items()} == {
        "hy": ("node-w", "wan2gp", "hunyuan_1_5_480_t2v_lightx2v"),
        "a14b": ("node-w", "wan2gp", "i2v_2_2"),  # Wan 2.2 I2V A14B: two experts
        "comfy": ("node-a", "comfyui", jobs["comfy"].model),
    }
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", status
    shots = {s["id"]: s for s in status["shots"]}
    assert [shots[k]["node"] for k in ("hy", "a14b", "comfy")] == ["node-w", "node-w", "node-a"]
    # 17 frames at 16 fps become the model's own grid and rate: Hunyuan Video 1.5 24 fps;
    # Wan 2.2 renders them as asked
    for shot_id, model, fps in (
        ("hy", "hunyuan_1_5_480_t2v_lightx2v", 24),
        ("a14b", "i2v_2_2", 16),
    ):
        clip = shots[shot_id]["outputs"]["final"]
        info = probe(Path(clip))
        assert (info.width, info.height, round(info.fps)) == (320, 192, fps)
        assert info.frames % 4 == 1 and abs(info.frames / fps - 17 / 16) < 0.2
        settings = embedded_settings(clip)
        assert settings["model_type"] == model and settings["seed"] == jobs[shot_id].params["seed"]
        assert settings["multi_prompts_gen_type"] == "FG"
        log = rt.state.shot(scene.id, shot_id)["attempt_log"]
        assert len(log) == 1 and log[0]["backend_job_id"]
        # the model forced its own rate and frame count: the status says so, and why
        adjusted = {a["field"]: a for a in shots[shot_id]["adjusted"]}
        if fps == 16:
            assert adjusted == {} and info.frames == 17
            continue
        assert (adjusted["fps"]["asked"], adjusted["fps"]["rendered"]) == (16, fps)
        assert f"{model} renders at {fps} fps only" in adjusted["fps"]["why"]
        assert (adjusted["frames"]["asked"], adjusted["frames"]["rendered"]) == (17, info.frames)
    assert shots["comfy"]["adjusted"] == []  # 17 frames at 16 fps, rendered as asked
    shown = subprocess.run([sys.executable, "-m", "farm", "status", scene.id], env=cli_env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())  # the note may wrap
    assert (
        "hy: rendered with fps 16 → 24, frames 17 → 25 (WanGP model hunyuan_1_5_480_t2v_lightx2v"
        in text
    )
    assert "image_start" in embedded_settings(shots["a14b"]["outputs"]["final"])
    # the farm counts the loads the node makes: each transformer file (i2v_2_2: two)
    assert jobs["a14b"].models == ("i2v_2_2", "i2v_2_2:URLs2")
    runs = requests.get(farm_cluster.node_url("node-w") + "/emulator/jobs", timeout=5).json()
    models = {
        log[0]["backend_job_id"]: log[0]["models"]
        for log in (rt.state.shot(scene.id, k)["attempt_log"] for k in ("hy", "a14b"))
    }
    first, second = [
        (r["details"]["loaded_models"], models[r["job_id"]])
        for r in runs["jobs"]
        if r["job_id"] in models
    ]  # in start order
    assert first[0] in ([], first[1])  # the model was warm, or all its files loaded
    assert second[0] == [m for m in second[1] if m not in first[1]]  # fmt: skip
    video = probe(Path(status["outputs"]["video"]))
    assert video.width == 320 and video.frames > 0
    report = {
        s["id"]: s for s in json.loads(Path(status["outputs"]["report"]).read_text())["shots"]
    }
    assert report["hy"]["adjusted"] == shots["hy"]["adjusted"] and not report["comfy"]["adjusted"]
    html = Path(status["outputs"]["report_html"]).read_text()
    assert html.count("Rendered differently than asked") == 1
    assert (
        "fps: asked 16, rendered 24 &mdash; WanGP model hunyuan_1_5_480_t2v_lightx2v renders at "
        "24 fps only" in html
    )


def test_out_of_memory_on_wangp_retries_with_a_lower_memory_profile(rt):
    """1280x720, 25 frames with Wan 2.2 T2V A14B needs 6.3 GB at WanGP's default profile 4
    on a 6 GB card and 4.6 GB at the fail-safe profile 5: the shot fails once, then renders
    on the same node."""
    scene = parse_scene(
        {
            "id": "e2e-wan-oom",
            "quality": "final",
            "shots": [
                wan_shot(
                    "big", 21, template="standard_generation", width=1280, height=720, frames=25
                )
            ],  # fmt: skip
        }
    )
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    (shot,) = status["shots"]
    assert status["state"] == "done", status
    assert shot["attempts"] == 2 and shot["used_fallback"]
    assert (
        "out_of_memory" in shot["primary_error"] and "CUDA out of memory" in shot["primary_error"]
    )
    log = rt.state.shot(scene.id, "big")["attempt_log"]
    assert [(a["state"], a["node"]) for a in log] == [("failed", "node-w"), ("done", "node-w")]
    settings = embedded_settings(shot["outputs"]["final"])
    assert settings["override_profile"] == 5
    assert (probe(Path(shot["outputs"]["final"])).width, settings["resolution"]) == (
        1280,
        "1280x720",
    )
