"""The render cache and `farm retry`, on the real farm: an identical request is served
from the cache without reaching any node, anything that changes the request renders, and
a retried shot renders again (a new take, never from the cache) and the scene is assembled
once more."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import requests

from farm.backends.comfyui import prompt_id_for
from farm.celery_app import app
from farm.dispatch import Dispatcher
from farm.planning import plan_scene
from farm.scene import parse_scene
from farm.submit import enqueue

from .conftest import EXAMPLES
from .test_cli import farm
from .test_control import ati_scene
from .test_e2e import wait_done


def scene_of(scene_id: str, image: Path, quality: str = "final", seeds=(11, 12)):
    """Two ComfyUI shots (text-to-video, and image-to-video from ``image``)."""
    base = {"width": 320, "height": 192, "frames": 9, "fps": 16}
    return parse_scene({
        "id": scene_id, "quality": quality,
        "shots": [
            {"id": "t2v", "action_description": "a lighthouse", "backend": "comfyui",
             "seed": seeds[0], **base},
            {"id": "i2v", "action_description": "the meadow", "start_image": str(image),
             "backend": "comfyui", "seed": seeds[1], **base},
        ],
    })  # fmt: skip


def prompts_on_nodes(farm_cluster) -> set[str]:
    """Every prompt id the ComfyUI emulators ran (their own /history)."""
    ids: set[str] = set()
    for node in farm_cluster.nodes:
        if node.kind == "comfyui":
            url = farm_cluster.node_url(node.name) + "/history?max_items=10000"
            ids |= set(requests.get(url, timeout=5).json())
    return ids


def cached_entries(shot: dict) -> list[dict]:
    return [a for a in shot["attempt_log"] if a["state"] == "cached"]


def test_an_identical_request_is_served_from_the_cache(rt, farm_cluster, tmp_path):
    image = tmp_path / "start.jpg"
    shutil.copyfile(EXAMPLES / "images" / "meadow.jpg", image)
    first = scene_of("cache-a", image)
    enqueue(first, rt)
    assert wait_done(rt, first.id)["state"] == "done"
    ran = prompts_on_nodes(farm_cluster)

    again = scene_of("cache-b", image)  # another scene, the same requests
    jobs = enqueue(again, rt)
    status = wait_done(rt, again.id)
    assert status["state"] == "done" and all(s["cache_hit"] for s in status["shots"])
    assert all(j.node is None for j in jobs)  # never bound to a node
    for shot in rt.state.shots(again.id):
        (entry,) = cached_entries(shot)
        assert entry["source"] == f"cache-a/{shot['id']}" and len(shot["attempt_log"]) == 1
        source = rt.state.shot(first.id, shot["id"])["outputs"]["final"]
        assert Path(shot["outputs"]["final"]).read_bytes() == Path(source).read_bytes()
    # no node saw a request of the second scene
    planned = [v[0] for v in plan_scene(again)]
    assert not {prompt_id_for(replace(j, attempt=1)) for j in planned} & ran
    assert prompts_on_nodes(farm_cluster) == ran
    assert Path(status["outputs"]["video"]).is_file()  # assembled from the cached clips
    report = json.loads(Path(status["outputs"]["report"]).read_text())
    assert all(s["provenance"]["cache_hit"] for s in report["shots"])


def test_what_changes_the_request_renders_and_force_renders_anyway(rt, tmp_path):
    image = tmp_path / "start.jpg"
    shutil.copyfile(EXAMPLES / "images" / "meadow.jpg", image)
    enqueue(scene_of("cache-c", image), rt)
    assert wait_done(rt, "cache-c")["state"] == "done"

    # a new seed for t2v; the same path for i2v's start image, but other content
    data = bytearray(image.read_bytes())
    data[-10] ^= 0xFF
    image.write_bytes(bytes(data))
    enqueue(scene_of("cache-d", image, seeds=(99, 12)), rt)
    status = wait_done(rt, "cache-d")
    assert status["state"] == "done"
    assert not any(s["cache_hit"] for s in status["shots"])

    enqueue(scene_of("cache-e", image, seeds=(99, 12)), rt, force=True)
    status = wait_done(rt, "cache-e")
    assert status["state"] == "done" and not any(s["cache_hit"] for s in status["shots"])
    for shot in rt.state.shots("cache-e"):
        assert [a["state"] for a in shot["attempt_log"]] == ["done"]


def test_a_cached_preview_and_final_fill_the_chord_slot(rt, tmp_path):
    image = tmp_path / "start.jpg"
    shutil.copyfile(EXAMPLES / "images" / "meadow.jpg", image)
    enqueue(scene_of("cache-ptf-a", image, "preview_then_final"), rt)
    assert wait_done(rt, "cache-ptf-a")["state"] == "done"
    enqueue(scene_of("cache-ptf-b", image, "preview_then_final"), rt)
    status = wait_done(rt, "cache-ptf-b")
    assert status["state"] == "done"
    for shot in rt.state.shots("cache-ptf-b"):
        assert [a["kind"] for a in cached_entries(shot)] == ["preview", "final"]
        assert set(shot["outputs"]) == {"preview", "final"} and shot["cache_hit"]


def test_farm_cache_shows_and_clears_the_cache(rt, cli_env, tmp_path):
    image = tmp_path / "start.jpg"
    shutil.copyfile(EXAMPLES / "images" / "meadow.jpg", image)
    enqueue(scene_of("cache-cli", image), rt)
    wait_done(rt, "cache-cli")
    out = farm("cache", "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["entries"] == 2 and stats["bytes"] > 0
    out = farm("cache", "--clear", "--json", env=cli_env)
    assert json.loads(out.stdout)["removed"] == 2
    assert json.loads(farm("cache", "--json", env=cli_env).stdout)["entries"] == 0


def test_retry_renders_a_shot_again_and_reassembles(rt, farm_cluster, cli_env, tmp_path):
    image = tmp_path / "start.jpg"
    shutil.copyfile(EXAMPLES / "images" / "meadow.jpg", image)
    scene = scene_of("retry-a", image)
    enqueue(scene, rt)
    assert wait_done(rt, scene.id)["state"] == "done"
    assembled = len([e for _, e in rt.state.events(scene.id) if e["type"] == "scene_assembled"])
    ran = prompts_on_nodes(farm_cluster)

    out = farm("retry", scene.id, "--shot", "i2v", "--watch", "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["state"] == "done"
    shots = {s["id"]: s for s in status["shots"]}
    assert shots["i2v"]["retries"] == 1 and not shots["i2v"]["cache_hit"]
    log = rt.state.shot(scene.id, "i2v")["attempt_log"]
    assert [a["state"] for a in log] == ["done", "done"]  # rendered again, not served cached
    assert log[0]["backend_job_id"] != log[1]["backend_job_id"]
    assert log[1]["backend_job_id"] in prompts_on_nodes(farm_cluster) - ran
    assert shots["t2v"]["retries"] == 0 and len(rt.state.shot(scene.id, "t2v")["attempt_log"]) == 1
    events = [e["type"] for _, e in rt.state.events(scene.id)]
    assert events.count("scene_assembled") == assembled + 1


def test_retry_without_shots_takes_the_cancelled_ones(rt, cli_env):
    scene = ati_scene("retry-cancelled", 2)
    enqueue(scene, rt)
    assert farm("cancel", scene.id, "--shot", "s1", env=cli_env).returncode == 0
    status = wait_done(rt, scene.id)
    assert status["state"] == "partial"
    out = farm("retry", scene.id, "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["shots"] == ["s1"]
    status = wait_done(rt, scene.id)
    assert status["state"] == "done" and [s["state"] for s in status["shots"]] == ["done"] * 2


def test_retry_refuses_what_it_cannot_do(rt, cli_env):
    scene = ati_scene("retry-refused", 3)  # one node renders them: the third one waits
    enqueue(scene, rt)
    # paused at once, in this process: its waiting shot is parked, so it cannot finish
    assert Dispatcher(rt, app).pause(scene.id) >= 1
    out = farm("retry", scene.id, "--shot", "s0", env=cli_env)
    assert out.returncode == 2 and "still" in out.stderr and "farm cancel" in out.stderr
    assert farm("resume", scene.id, env=cli_env).returncode == 0
    assert wait_done(rt, scene.id)["state"] == "done"
    out = farm("retry", scene.id, "--shot", "nope", env=cli_env)
    assert out.returncode == 2 and "'nope'" in out.stderr and "s0" in out.stderr
    out = farm("retry", scene.id, env=cli_env)  # nothing failed
    assert out.returncode == 2 and "--shot" in out.stderr
    assert farm("retry", "no-such-scene", env=cli_env).returncode == 2


def test_the_cache_key_names_every_model_of_a_two_model_job():
    """A Wan 2.2 A14B request is keyed on both its experts, in order: another low-noise
    model is another request; the same job planned again is the same one."""
    from farm.cache import request_key
    from farm.catalog import load_catalog
    from farm.planning import plan_job

    from .conftest import REPO

    scene = parse_scene({"id": "k", "quality": "final",
                         "shots": [{"id": "a", "action_description": "x", "seed": 3}]})  # fmt: skip
    job = plan_job(scene, scene.shots[0], "final", load_catalog())
    high, low = job.models
    folder = REPO / "workflows"
    again = plan_job(scene, scene.shots[0], "final", load_catalog())
    assert request_key(job, folder) == request_key(again, folder)
    other = "wan2.2_t2v_low_noise_14B_fp16.safetensors"
    files = {**job.files, "diffusion_models": [high, other]}
    assert request_key(replace(job, models=(high, other), files=files), folder) != request_key(
        job, folder
    )
    swapped = replace(job, model=low, models=(low, high))
    assert request_key(swapped, folder) != request_key(job, folder)
