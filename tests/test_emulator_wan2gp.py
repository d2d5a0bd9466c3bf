"""The emulated WanGP node: its MCP server (raw JSON-RPC and the official mcp client), the
batch CLI and the installed wgp.py, against real processes on loopback."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio
import cv2
import numpy as np
import pytest
import requests

from farm.catalog import load_catalog
from farm.emulators.wan2gp_settings import catalogue, plan_task, split_prompts, vram_needed
from farm.media import probe
from farm.planning import Job, loads_needed

NODES = Path(__file__).resolve().parent / "nodes"
PROFILE = NODES / "wan-a.json"
WAN_JOB = Job("s", "a", "final", "wan2.2", "wangp", "t2v_2_2", {"wangp": ["t2v_2_2"]}, {},
              backend="wan2gp")  # fmt: skip
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
NAME = re.compile(r"^\d{4}-\d\d-\d\d-\d\dh\d\dm\d\ds_seed(\d+)_(.*)\.mp4$")


def tiny(model_type: str = "t2v_2_2", **extra) -> dict:
    return {
        "model_type": model_type,
        "prompt": "a red fox in snow",
        "resolution": "256x160",
        "video_length": 17,
        "num_inference_steps": 3,
        "multi_prompts_gen_type": "FG",
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(tmp: Path, profile: Path = PROFILE, *extra: str):
    port = free_port()
    cmd = [sys.executable, "-m", "farm.emulators.wan2gp", "--port", str(port)]
    cmd += ["--profile", str(profile), "--data", str(tmp), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(f"{url}/emulator/faults", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the WanGP emulator did not start")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc, url = start_node(tmp_path_factory.mktemp("wan"))
    yield url
    proc.terminate()
    proc.wait(10)


def rpc(url: str, name: str, **arguments) -> dict:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    res = requests.post(f"{url}/mcp", json=body, headers=HEADERS, timeout=30)
    res.raise_for_status()
    return res.json()["result"]


def call(url: str, name: str, **arguments):
    result = rpc(url, name, **arguments)
    assert not result.get("isError"), result["content"][0]["text"]
    structured = result["structuredContent"]
    texts = [json.loads(c["text"]) for c in result["content"]]
    # a dict comes back as one JSON text; a list as {"result": [...]} and one text per item
    assert texts == [structured] or structured == {"result": texts}
    return structured


def error(url: str, name: str, **arguments) -> str:
    result = rpc(url, name, **arguments)
    assert result["isError"] is True
    return result["content"][0]["text"]


def generate(url: str, source, **kw) -> dict:
    return call(url, "wangp_generate", source=source, wait=True, timeout_s=30, **kw)


def set_faults(url: str, faults: dict) -> None:
    requests.put(f"{url}/emulator/faults", json=faults, timeout=5).raise_for_status()


def phases(snapshot: dict) -> list[str]:
    return [e["data"]["phase"] for e in snapshot["events"] if e["kind"] == "progress"]


# --- pure settings ---------------------------------------------------------------------------


def test_settings_are_completed_rounded_and_snapped():
    task = plan_task(
        0,
        1,
        {"model_type": "ltxv_distilled", "resolution": "300x200", "video_length": 30, "seed": 5},
    )
    assert (task.width, task.height, task.frames, task.steps) == (288, 192, 25, 6)
    wan = plan_task(0, 1, {"model_type": "t2v_2_2", "resolution": "270x170", "video_length": 3})
    assert (wan.width, wan.height, wan.frames) == (256, 160, 5)
    assert plan_task(0, 1, {"model_type": "t2v_2_2", "video_length": "2s"}).frames == 33
    assert split_prompts("a\nb\n\n# note\n\nc", "") == ["a\nb", "c"]
    assert split_prompts("a\n\n# note\nc", "FG") == ["a\n\nc"]


def test_lower_memory_profiles_fit_what_the_default_does_not():
    info = catalogue()["t2v_2_2"]
    needs = {p: vram_needed(info, 640, 480, 81, p) for p in range(1, 6)}
    assert needs[1] == needs[3] > needs[2] == needs[4] > needs[5]
    assert needs[4] > 6 > needs[5]  # the test node's 6 GB


# --- the MCP server --------------------------------------------------------------------------


def test_discovery_tools(node):
    models = call(node, "wangp_list_models")["result"]
    by_id = {m["model_type"]: m for m in models}
    assert by_id["t2v_2_2"]["available"] is True and by_id["t2v"]["available"] is False
    assert call(node, "wangp_get_model_availability", model_type="t2v_2_2")["status"] == "available"
    assert call(node, "wangp_get_model_availability", model_type="t2v")["status"] == "missing"
    assert "Unknown model type: nope" in error(
        node, "wangp_get_model_availability", model_type="nope"
    )
    defaults = call(node, "wangp_get_default_settings", model_type="ltxv_distilled")
    assert defaults["resolution"] == "1280x720" and defaults["num_inference_steps"] == 6
    assert "Unknown WanGP job_id: abc" in error(node, "wangp_get_job", job_id="abc")
    assert "Unknown WanGP job_id: abc" in error(node, "wangp_cancel_job", job_id="abc")


def test_generation_events_naming_and_embedded_settings(node):
    snap = generate(node, tiny(resolution="270x170", video_length=18, seed=123), event_limit=100)
    assert snap["done"] and snap["result"]["success"], snap["result"]
    assert phases(snap)[:2] == ["loading_model", "encoding_text"]
    assert phases(snap)[-1] == "decoding"
    steps = [
        e["data"] for e in snap["events"] if e["data"].get("phase", "").startswith("inference")
    ]
    assert [(s["current_step"], s["total_steps"]) for s in steps] == [(1, 3), (2, 3), (3, 3)]
    kinds = [e["kind"] for e in snap["events"]]
    assert kinds[0] == "started" and kinds[-2:] == ["output", "completed"]
    result = snap["result"]
    (path,) = result["generated_files"]
    assert Path(path).is_absolute()
    assert NAME.match(Path(path).name).groups() == ("123", "a red fox in snow")
    assert f"New video saved to Path: {path}" in [e["data"].get("text") for e in snap["events"]]
    assert result["artifacts"][0] | {"path": path, "fps": 16} == result["artifacts"][0]
    info = probe(Path(path))
    assert (info.width, info.height, info.frames, info.fps) == (256, 160, 17, 16)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags=comment", "-of", "json", path],
        capture_output=True,
        text=True,
        check=True,
    )
    settings = json.loads(json.loads(out.stdout)["format"]["tags"]["comment"])
    assert settings["seed"] == 123 and settings["video_length"] == 17
    assert settings["resolution"] == "256x160" and settings["guidance_scale"] == 4.0
    # the model stays warm; the same seed clashes on the name within a second: " (2)"
    again = generate(node, tiny(resolution="270x170", video_length=18, seed=123), event_limit=100)
    assert "loading_model" not in phases(again)
    assert Path(again["result"]["generated_files"][0]).name in (
        Path(path).name.replace(".mp4", " (2).mp4"),
        *[p.name for p in Path(path).parent.glob("*_seed123_*.mp4")],
    )


def test_multi_prompts_split_unless_fg_and_random_seed(node):
    source = tiny(prompt="first shot\n\n# a comment\n\nsecond shot", seed=-1)
    del source["multi_prompts_gen_type"]
    files = generate(node, source)["result"]["generated_files"]
    assert [NAME.match(Path(f).name).group(2) for f in files] == ["first shot", "second shot"]
    assert int(NAME.match(Path(files[0]).name).group(1)) >= 0
    fg = generate(node, {**source, "multi_prompts_gen_type": "FG"})["result"]["generated_files"]
    assert len(fg) == 1


def test_validation_errors(node):
    source = [
        {"prompt": "no model"},
        {"model_type": "nope"},
        tiny("i2v_2_2"),
        tiny(image_prompt_type="S"),
        tiny("t2v"),
        tiny(),
    ]
    result = generate(node, source)["result"]
    assert (result["success"], result["total_tasks"], result["successful_tasks"]) == (False, 6, 1)
    messages = [(e["task_index"], e["stage"], e["message"]) for e in result["errors"]]
    assert messages[:4] == [
        (0, "validation", "No model_type specified"),
        (1, "validation", "Unknown model type: nope"),
        (2, "validation", "You must provide a Start Image"),
        (3, "validation", "Model t2v_2_2 does not accept a Start or End Image"),
    ]
    assert messages[4][:2] == (4, "validation") and "not available on this node" in messages[4][2]
    text = error(
        node,
        "wangp_generate",
        source=tiny("i2v_2_2", image_prompt_type="S", image_start="/etc/hostname"),
    )
    assert "/etc/hostname" in text and "--mcp-allow-read-file-system" in text


def test_one_generation_at_a_time_and_cancel(node):
    set_faults(node, {"hang": {"at_step": 2}})
    try:
        job = call(node, "wangp_generate", source=tiny())
        assert not job["done"] and job["result"] is None
        assert "WanGP session already has a generation in progress" in error(
            node, "wangp_generate", source=tiny()
        )
        for _ in range(100):
            snap = call(node, "wangp_get_job", job_id=job["job_id"])
            if any(e["data"].get("current_step") == 1 for e in snap["events"]):
                break
            time.sleep(0.05)
        assert call(node, "wangp_cancel_job", job_id=job["job_id"])["cancel_requested"] is True
        for _ in range(100):
            snap = call(node, "wangp_get_job", job_id=job["job_id"], event_limit=5)
            if snap["done"]:
                break
            time.sleep(0.05)
    finally:
        set_faults(node, {})
    result = snap["result"]
    assert (result["success"], result["cancelled"]) == (False, True)
    assert (
        result["errors"][0]
        | {"message": "Generation was cancelled", "stage": "cancelled", "cancelled": True}
        == result["errors"][0]
    )
    assert "cancelled" in phases(snap)
    assert generate(node, tiny())["result"]["success"]  # the session is free again


def test_each_transformer_file_loads_and_the_farm_counts_the_same(tmp_path):
    """WanGP loads every transformer file of a model (its definition's URLs and URLs2:
    Wan 2.2 A14B's two experts) when the model type changes, and none while it stays. The
    job log names each file loaded, as the farm names a WanGP job's models, and the farm's
    rule (each model the node's last render did not use loads) predicts the same loads."""
    proc, url = start_node(tmp_path)
    try:
        order = ["t2v_2_2", "t2v_2_2", "ti2v_2_2_fastwan", "t2v_2_2"]
        for model_type in order:
            assert generate(url, tiny(model_type))["result"]["success"]
        jobs = requests.get(f"{url}/emulator/jobs", timeout=5).json()["jobs"]
    finally:
        proc.terminate()
        proc.wait(10)
    loaded = [j["details"]["loaded_models"] for j in jobs]
    a14b = ["t2v_2_2", "t2v_2_2:URLs2"]
    assert loaded == [a14b, [], ["ti2v_2_2_fastwan"], a14b]
    wan = load_catalog().wan_models
    held: tuple[str, ...] = ()
    predicted = []
    for model_type in order:
        job = replace(WAN_JOB, model=model_type, models=wan[model_type].files)
        predicted.append([m for m in job.models if m not in held])
        assert loads_needed(job, held) == len(predicted[-1])
        held = job.models
    assert predicted == loaded


def test_out_of_memory_and_the_fail_safe_profile(node):
    big = tiny(resolution="640x480", video_length=81, num_inference_steps=1)
    result = generate(node, big)["result"]
    (err,) = result["errors"]
    assert err["stage"] == "generation" and err["message"].startswith(
        "CUDA out of memory. Tried to allocate"
    )
    assert generate(node, {**big, "override_profile": 5})["result"]["success"]


def test_gallery_download_and_upload(node, tmp_path):
    item = generate(node, tiny())["result"]["gallery_items"][0]
    link = call(node, "wangp_create_gallery_download", media_id=item["id"])
    assert link["url"].startswith("/wangp_api/gallery/download/")
    res = requests.get(node + link["url"], timeout=10)
    assert res.status_code == 200 and res.content == Path(item["path"]).read_bytes()
    assert requests.get(node + link["url"], timeout=10).status_code == 404  # one use
    assert "Unknown Gallery media_id: x" in error(
        node, "wangp_create_gallery_download", gallery_id="x"
    )

    up = call(node, "wangp_create_gallery_upload", filename="start.png")
    assert up["url"].startswith("/wangp_api/gallery/upload/")
    png = cv2.imencode(".png", np.full((160, 256, 3), (0, 0, 255), np.uint8))[1].tobytes()
    stored = requests.put(node + up["url"], data=png, timeout=10).json()
    assert requests.put(node + up["url"], data=png, timeout=10).status_code == 404
    source = tiny("i2v_2_2", image_prompt_type="S", image_start=stored["media_id"])
    assert generate(node, source)["result"]["success"]


def test_http_500_fault_on_tools_call(node):
    set_faults(node, {"http_500": {"rate": 1.0}})
    try:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "wangp_list_models", "arguments": {}},
        }
        res = requests.post(f"{node}/mcp", json=body, headers=HEADERS, timeout=10)
        assert (res.status_code, res.text) == (500, "Internal Server Error")
    finally:
        set_faults(node, {})
    assert requests.get(f"{node}/emulator/faults", timeout=5).json() == {}


def test_the_official_mcp_client_lists_tools_and_generates(node):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        async with (
            streamable_http_client(f"{node}/mcp") as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            result = await session.call_tool(
                "wangp_generate", {"source": tiny(), "wait": True, "timeout_s": 30}
            )
            return names, result

    names, result = anyio.run(run)
    assert {
        "wangp_generate",
        "wangp_get_job",
        "wangp_cancel_job",
        "wangp_list_models",
        "wangp_create_gallery_download",
        "wangp_create_gallery_upload",
    } <= names
    assert result.structured_content["result"]["success"] is True


def test_crash_fault_exits_70(tmp_path):
    profile = json.loads(PROFILE.read_text()) | {"faults": {"crash": {"at_step": 2}}}
    (tmp_path / "crash.json").write_text(json.dumps(profile))
    proc, url = start_node(tmp_path, tmp_path / "crash.json")
    try:
        call(url, "wangp_generate", source=tiny())
        assert proc.wait(10) == 70
        assert "emulated fault: crash at step 2" in proc.stderr.read()
    finally:
        proc.kill()


# --- the batch CLI ---------------------------------------------------------------------------


def run_cli(args: list[str], cwd: Path | None = None, script: Path | None = None):
    head = (
        [sys.executable, str(script)]
        if script
        else [sys.executable, "-m", "farm.emulators.wgp_cli"]
    )
    tail = [] if script else ["--profile", str(PROFILE)]
    proc = subprocess.run([*head, *args, *tail], capture_output=True, cwd=cwd, timeout=30)
    # bytes decoded by hand: text mode would turn the console's "\r" into newlines
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def test_cli_console_exit_codes_and_file(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps([{"id": "a", "params": tiny(seed=9)}, {"id": "b", "params": {}}]))
    out = tmp_path / "out"
    proc = run_cli(["--process", str(job), "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Loaded 2 task(s)"
    assert "[Task 1/2] a red fox in snow..." in lines
    assert "\r  [1/3] Denoising 1/3\r  [2/3] Denoising 2/3\r  [3/3] Denoising 3/3" in proc.stdout
    (video,) = out.glob("*.mp4")
    assert f"New video saved to Path: {video.resolve()}" in lines
    assert "Task 1 completed" in lines and "[Task 2/2] skipped: No model_type specified" in lines
    assert re.match(r"Queue completed: 1/2 tasks in \d", lines[-1])
    assert NAME.match(video.name).group(1) == "9"

    dry = run_cli(["--process", str(job), "--output-dir", str(tmp_path / "dry"), "--dry-run"])
    assert dry.returncode == 0 and not (tmp_path / "dry").exists()
    job.write_text(json.dumps(tiny(resolution="640x480", video_length=81)))
    assert run_cli(["--process", str(job), "--output-dir", str(out)]).returncode == 1  # OOM
    assert run_cli(["--process", str(tmp_path / "missing.json")]).returncode == 1


def test_cli_sigint_exits_130(tmp_path):
    profile = json.loads(PROFILE.read_text()) | {"faults": {"hang": {"at_step": 1}}}
    (tmp_path / "hang.json").write_text(json.dumps(profile))
    (tmp_path / "job.json").write_text(json.dumps(tiny()))
    cmd = [
        sys.executable,
        "-m",
        "farm.emulators.wgp_cli",
        "--process",
        str(tmp_path / "job.json"),
        "--output-dir",
        str(tmp_path),
        "--profile",
        str(tmp_path / "hang.json"),
    ]
    # as from a terminal: SIGINT at its default, whatever this process inherited (a shell
    # runs background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    # interrupt once the task runs (on a loaded machine the start alone can take seconds)
    assert proc.stdout is not None
    while "Loading model" not in (line := proc.stdout.readline()):
        assert line, f"the CLI ended before its task ran: {proc.stderr.read()}"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130


def test_installed_wgp_py_runs_from_its_folder(tmp_path):
    folder = tmp_path / "Wan2GP"
    proc = run_cli(["--install", str(folder)])
    assert proc.returncode == 0, proc.stderr
    (folder / "job.json").write_text(json.dumps({"id": 1, "params": tiny("ltxv_distilled")}))
    run = run_cli(
        ["--process", "job.json", "--output-dir", "out"], cwd=folder, script=folder / "wgp.py"
    )
    assert run.returncode == 0, run.stderr
    (video,) = (folder / "out").glob("*.mp4")
    assert probe(video).frames == 17 and probe(video).fps == 30
