"""The ComfyUI client's contract, driven against a live emulated node for every case:
rejections, run-time errors, interrupts, cancel, websocket drops, redelivery, previews,
outputs, download limits, timeouts, crashes, the /api prefix and node discovery. Every
test runs against both server generations (profile ``api``: 0.3.64's routes, and the
newer job API with 409 on a duplicate prompt id).

Faults are switched on the running emulator through its ``PUT /emulator/faults`` route
(emulator-only; see docs/emulators.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from farm.backends.comfyui import (
    ComfyClient,
    ComfyUIBackend,
    output_items,
    parse_preview,
)
from farm.errors import (
    BadNodeResponse,
    JobCancelled,
    ModelMissing,
    NodeRejected,
    NodeTimeout,
    NodeUnavailable,
    OutOfMemory,
    RenderFailed,
)
from farm.local import free_port, wait_for
from farm.media import probe
from farm.settings import Settings

from .emulated import EmulatorProcess

REPO = Path(__file__).resolve().parent.parent
T2V = "wan2.2_ti2v_5B_fp16.safetensors"
PROFILE = {
    "name": "contract",
    "gpu": "NVIDIA GeForce RTX 4090",
    "vram_gb": 24,
    "models": {
        "diffusion_models": [T2V],
        "text_encoders": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
        "vae": ["wan_2.1_vae.safetensors", "wan2.2_vae.safetensors"],
        "clip_vision": ["clip_vision_h.safetensors"],
    },
    "model_load_s": 0.1,
    "step_s": 0.1,
}


class Server(EmulatorProcess):
    """An emulated ComfyUI node run as ``python -m farm.emulators.comfyui``."""

    module = "farm.emulators.comfyui"

    def ready(self) -> bool:
        return requests.get(self.url + "/system_stats", timeout=1).ok

    def history(self) -> dict:
        return requests.get(self.url + "/history", timeout=5).json()

    def queue(self) -> dict:
        return requests.get(self.url + "/queue", timeout=5).json()

    def hits(self) -> dict[str, int]:
        """Requests the node answered per route (``GET /emulator/requests``)."""
        return requests.get(self.url + "/emulator/requests", timeout=5).json()

    @property
    def job_api(self) -> bool:
        return json.loads(self.profile.read_text()).get("api", "0.3") != "0.3"


@pytest.fixture(scope="module", params=["0.3", "0.38"], ids=["api-0.3", "api-0.38"])
def server(request, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("contract"), {**PROFILE, "api": request.param}).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def no_faults(request):
    if "server" in request.fixturenames:
        request.getfixturevalue("server").faults({})
    yield


def graph(width=96, height=64, length=5, steps=4, seed=None, prefix="contract") -> dict:
    """The shipped Wan 2.2 TI2V-5B workflow at a tiny size."""
    g = json.loads((REPO / "workflows" / "wan22_ti2v.json").read_text())
    for node in g.values():
        title = node["_meta"]["title"]
        if title == "Video Latent":
            node["inputs"].update(width=width, height=height, length=length)
        elif title == "Sampler":
            node["inputs"].update(steps=steps, seed=time.time_ns() if seed is None else seed)
        elif title == "Diffusion Model":
            node["inputs"]["unet_name"] = T2V
        elif title == "Save Video":
            node["inputs"]["filename_prefix"] = prefix
    return g


def titled(g: dict, title: str) -> str:
    return next(nid for nid, n in g.items() if n["_meta"]["title"] == title)


class Recorder:
    """A progress callback and event counter."""

    def __init__(self, cancel_at: float | None = None) -> None:
        self.fractions: list[float] = []
        self.previews: list[bytes] = []
        self.events: list[str] = []
        self.cancel_at = cancel_at

    def progress(self, fraction: float, message: str = "", preview: bytes | None = None) -> None:
        if preview is not None:
            self.previews.append(preview)
            return
        self.fractions.append(fraction)
        if self.cancel_at is not None and fraction >= self.cancel_at:
            raise JobCancelled("cancelled by the test")

    def event(self, kind: str, data: dict) -> None:
        self.events.append(kind)


def client(server, idle=10.0) -> ComfyClient:
    return ComfyClient(server.url, 10.0, idle)


def pid() -> str:
    return str(uuid.uuid4())


# -- rejections ---------------------------------------------------------------------------


def test_unknown_class_is_rejected_naming_it(server):
    g = graph()
    g["99"] = {"class_type": "NotARealNode", "inputs": {}}
    with pytest.raises(NodeRejected) as err:
        client(server).submit(g, pid(), "c")
    assert "NotARealNode" in str(err.value) and "[invalid_prompt]" in str(err.value)


def test_missing_required_input_names_node_class_and_input(server):
    g = graph()
    del g[titled(g, "Sampler")]["inputs"]["steps"]
    with pytest.raises(NodeRejected) as err:
        client(server).submit(g, pid(), "c")
    sampler = titled(g, "Sampler")
    assert f"node {sampler} (KSampler) input 'steps': Required input is missing" in str(err.value)
    assert "[required_input_missing]" in str(err.value)


def test_value_out_of_range_names_the_value(server):
    g = graph()
    g[titled(g, "Sampler")]["inputs"]["steps"] = 0
    with pytest.raises(NodeRejected) as err:
        client(server).submit(g, pid(), "c")
    text = str(err.value)
    assert "(KSampler) input 'steps': Value 0 smaller than min of 1 (got 0)" in text
    assert "[value_smaller_than_min]" in text


def test_bad_link_is_rejected(server):
    g = graph()
    g[titled(g, "Sampler")]["inputs"]["model"] = ["404", 0]
    with pytest.raises(NodeRejected) as err:
        client(server).submit(g, pid(), "c")
    # as in ComfyUI, the KeyError surfaces while validating the node that links to the
    # sampler, and is filed under the sampler with that node's input name
    assert str(err.value) == (
        f"Prompt outputs failed validation: node {titled(g, 'Sampler')} (KSampler) input "
        "'samples': Exception when validating inner node — '404' "
        "[exception_during_inner_validation]"
    )


def test_a_model_file_the_node_lacks_is_model_missing(server):
    g = graph()
    g[titled(g, "Diffusion Model")]["inputs"]["unet_name"] = "nope_14B.safetensors"
    with pytest.raises(ModelMissing) as err:
        client(server).submit(g, pid(), "c")
    assert "(UNETLoader) input 'unet_name'" in str(err.value)
    assert "nope_14B.safetensors" in str(err.value)


def test_an_ltx2_checkpoint_the_node_lacks_is_model_missing(server):
    """LTX-2's graph names its checkpoint in three loaders; a node without it is
    ModelMissing (the farm places the shot elsewhere), not a rejected workflow."""
    g = json.loads((REPO / "workflows" / "ltx2_t2v.json").read_text())
    with pytest.raises(ModelMissing) as err:
        client(server).submit(g, pid(), "c")
    assert "(CheckpointLoaderSimple) input 'ckpt_name'" in str(err.value)
    assert "ltx-2-19b-dev-fp8.safetensors" in str(err.value)


def test_partial_node_errors_fail_the_job_and_take_it_off_the_node(server):
    g = graph(steps=30)
    g["90"] = {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1,
                                                      "color": 0}}  # fmt: skip
    g["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0], "filename_prefix": "x"}}
    prompt_id = pid()
    with pytest.raises(NodeRejected) as err:
        client(server).submit(g, prompt_id, "c")
    text = str(err.value)
    assert text.startswith("node would run only part of the workflow")
    assert "node 90 (EmptyImage) input 'width'" in text
    time.sleep(0.5)
    queue = server.queue()
    assert prompt_id not in json.dumps(queue)  # removed or interrupted, not left running
    entry = server.history().get(prompt_id)
    assert entry is None or entry["status"]["status_str"] == "error"


def test_http_500_text_body_is_a_node_failure(server):
    server.faults({"http_500": {"rate": 1.0}})
    with pytest.raises(NodeUnavailable) as err:
        client(server).submit(graph(), pid(), "c")
    assert "HTTP 500" in str(err.value)
    assert "500 Internal Server Error: Server got itself in trouble" in str(err.value)
    assert server.queue() == {"queue_running": [], "queue_pending": []}


# -- run-time outcomes --------------------------------------------------------------------


def test_a_run_streams_progress_and_previews_and_collects_the_video(server, tmp_path):
    rec = Recorder()
    c = client(server)
    entry = c.run(graph(steps=4), pid(), rec.progress, rec.event)
    files = c.collect(entry, tmp_path, 10 << 20)
    assert [f.suffix for f in files] == [".mp4"]
    assert probe(files[0]).frames == 5
    assert rec.fractions[0] == 0.02 and max(rec.fractions) >= 0.9
    assert rec.previews and all(p[:3] == b"\xff\xd8\xff" for p in rec.previews)
    assert rec.events.count("progress") == 4
    assert rec.events.count("preview_image") == len(rec.previews)
    assert "execution_success" in rec.events


def test_type_1_and_type_4_preview_frames_are_parsed():
    jpeg = b"\xff\xd8\xff\xe0" + b"x" * 20
    assert parse_preview((1).to_bytes(4, "big") + (1).to_bytes(4, "big") + jpeg, "p") == jpeg
    meta = json.dumps({"node_id": "3", "prompt_id": "p", "image_type": "image/jpeg"}).encode()
    frame = (4).to_bytes(4, "big") + len(meta).to_bytes(4, "big") + meta + jpeg
    assert parse_preview(frame, "p") == jpeg
    assert parse_preview(frame, "another prompt") is None
    assert parse_preview((3).to_bytes(4, "big") + b"\x00\x00\x00\x01" + b"3text", "p") is None


def test_out_of_memory_is_classified(server):
    g = graph(width=1920, height=1088, length=161, steps=1)
    with pytest.raises(OutOfMemory) as err:
        client(server).run(g, pid(), Recorder().progress)
    assert "KSampler" in str(err.value) and "torch.OutOfMemoryError" in str(err.value)


def test_other_run_time_errors_are_render_failures(server):
    odd = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 65, "height": 64, "batch_size": 3,
                                                     "color": 0}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "odd/x",
                                                    "format": "mp4", "codec": "h264"}},
    }  # fmt: skip
    with pytest.raises(RenderFailed) as err:
        client(server).run(odd, pid(), Recorder().progress)
    assert str(err.value).startswith("SaveVideo (node 3): ")
    assert "not divisible by 2" in str(err.value)


def test_interrupt_from_the_farm_cancels_a_running_job(server):
    rec = Recorder(cancel_at=0.3)
    prompt_id = pid()
    with pytest.raises(JobCancelled, match="cancelled by the test"):
        client(server).run(graph(steps=40), prompt_id, rec.progress, rec.event)
    wait_for(lambda: server.history().get(prompt_id), 10, "the interrupted job's history")
    entry = server.history()[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_interrupted"


def test_execution_interrupted_raises_cancelled(server):
    c, prompt_id = client(server), pid()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            c.run(graph(steps=40), prompt_id, Recorder().progress)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: c.queue_state(prompt_id) == "running", 10, "the job to start")
    assert client(server).cancel(prompt_id) == "interrupted"
    thread.join(20)
    assert len(errors) == 1 and isinstance(errors[0], JobCancelled)
    assert "interrupted" in str(errors[0])


def test_cancel_removes_a_pending_job(server):
    server.faults({"hang": {"rate": 1.0, "at_step": 1}})
    c = client(server)
    running, pending = pid(), pid()
    c.submit(graph(), running, "c")
    wait_for(lambda: c.queue_state(running) == "running", 10, "the first job to start")
    c.submit(graph(), pending, "c")
    assert c.queue_state(pending) == "pending"
    assert c.cancel(pending) == "removed"
    assert c.queue_state(pending) is None
    assert c.cancel(running) == "interrupted"
    wait_for(lambda: c.queue_state(running) is None, 10, "the hung job to stop")
    assert pending not in server.history()
    assert c.cancel(pid()) == "not_found"


def test_a_hung_job_times_out_and_is_interrupted(server):
    server.faults({"hang": {"rate": 1.0, "at_step": 2}})
    c, prompt_id = client(server, idle=2.0), pid()
    started = time.monotonic()
    with pytest.raises(NodeTimeout, match="made no progress for 2s"):
        c.run(graph(steps=10), prompt_id, Recorder().progress)
    assert time.monotonic() - started < 15
    wait_for(lambda: c.queue_state(prompt_id) is None, 10, "the hung job to be interrupted")


def test_websocket_drop_reconnects_and_reconciles_without_resubmitting(server, tmp_path):
    server.faults({"ws_drop": {"rate": 1.0, "at_step": 2}})
    rec, prompt_id = Recorder(), pid()
    c = client(server)
    entry = c.run(graph(steps=6), prompt_id, rec.progress, rec.event)
    assert "reconnected" in rec.events
    assert entry["status"]["status_str"] == "success"
    assert probe(c.collect(entry, tmp_path, 10 << 20)[0]).frames == 5
    starts = [m for m in entry["status"]["messages"] if m[0] == "execution_start"]
    assert len(starts) == 1  # one run: the client did not submit again


def test_a_redelivered_task_follows_the_running_job_instead_of_rendering_twice(server):
    prompt_id = pid()
    g = graph(steps=12)
    results: list[dict] = []
    first = threading.Thread(
        target=lambda: results.append(client(server).run(g, prompt_id, Recorder().progress))
    )
    first.start()
    wait_for(lambda: client(server).queue_state(prompt_id) == "running", 10, "the first run")
    rec = Recorder()
    second = client(server).run(g, prompt_id, rec.progress, rec.event)  # the redelivery
    first.join(20)
    assert results and results[0]["status"] == second["status"]
    assert 0.02 not in rec.fractions  # it never submitted
    entry = server.history()[prompt_id]
    assert len([m for m in entry["status"]["messages"] if m[0] == "execution_start"]) == 1


def long_graph(steps=120) -> dict:
    """A job that runs for a few seconds on the contract node (0.025 s a step)."""
    return graph(width=416, height=240, length=81, steps=steps)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def test_the_client_uses_the_job_api_where_the_node_has_it(server):
    c, running, waiting = client(server), pid(), pid()
    assert c.job_api() == server.job_api
    c.submit(long_graph(), running, "c")
    wait_for(lambda: c.queue_state(running) == "running", 10, "the first job to start")
    c.submit(graph(), waiting, "c")
    before = server.hits()
    assert c.cancel(waiting) == "removed"
    assert c.cancel(running) == "interrupted"
    used = delta(before, server.hits())
    if server.job_api:  # one atomic call per cancel; status from the job API, never /queue
        assert used["POST /api/jobs/{job_id}/cancel"] == 2 and used["GET /api/jobs/{job_id}"] >= 2
        assert not {"GET /queue", "POST /queue", "POST /interrupt"} & set(used)
    else:  # a waiting job is dequeued; /interrupt is sent only for the running one
        assert used["POST /queue"] == 1 and used["POST /interrupt"] == 1
        assert not any("/api/jobs" in route for route in used)
    wait_for(lambda: server.history().get(running), 10, "the interrupted job's history")
    assert waiting not in server.history()
    entry = c.history(running)
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    with pytest.raises(JobCancelled):
        c.run(graph(), running, Recorder().progress)  # its history says interrupted


def test_a_prompt_id_the_node_already_has_is_followed_not_failed(server):
    c, prompt_id, g = client(server), pid(), graph(steps=6)
    assert c.submit(g, prompt_id, "c") is True
    # a second delivery racing the first: the newer node answers 409 (already there); the
    # old one takes the duplicate and runs it again (the client checks before it submits)
    assert c.submit(g, prompt_id, "c") is (not server.job_api)
    expected = 1 if server.job_api else 2

    def runs() -> list[dict]:
        jobs = requests.get(server.url + "/emulator/jobs", timeout=5).json()["jobs"]
        return [j for j in jobs if j["job_id"] == prompt_id and j["status"] != "running"]

    wait_for(lambda: len(runs()) == expected, 10, f"{expected} run(s) of the job")
    entry = c.run(g, prompt_id, Recorder().progress)  # a redelivery collects, never resubmits
    assert entry["status"]["status_str"] == "success" and len(runs()) == expected


def test_cancelling_a_waiting_job_leaves_the_running_one_running(server):
    c, running, waiting = client(server), pid(), pid()
    rec, results = Recorder(), []
    first = threading.Thread(target=lambda: results.append(c.run(long_graph(), running,
                                                                 rec.progress, rec.event)))  # fmt: skip
    first.start()
    wait_for(lambda: c.queue_state(running) == "running", 10, "the first job to start")
    c.submit(graph(), waiting, "other-client")
    assert c.queue_state(waiting) == "pending"
    assert c.cancel(waiting) == "removed"
    first.join(30)
    assert results and results[0]["status"]["status_str"] == "success"
    assert "execution_interrupted" not in rec.events
    assert waiting not in server.history() and c.queue_state(waiting) is None


def test_cancelling_the_running_job_lets_the_waiting_one_finish(server):
    c, running, waiting = client(server), pid(), pid()
    errors, results = [], []

    def run(prompt_id: str, g: dict, out: list) -> None:
        try:
            out.append(client(server).run(g, prompt_id, Recorder().progress))
        except JobCancelled as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(running, long_graph(), results))]
    threads[0].start()
    wait_for(lambda: c.queue_state(running) == "running", 10, "the first job to start")
    threads.append(threading.Thread(target=run, args=(waiting, graph(steps=6), results)))
    threads[1].start()
    wait_for(lambda: c.queue_state(waiting) == "pending", 10, "the second job to queue")
    assert c.cancel(running) == "interrupted"
    for t in threads:
        t.join(30)
    assert len(errors) == 1 and "interrupted" in str(errors[0])
    assert len(results) == 1 and results[0]["status"]["status_str"] == "success"
    assert server.history()[waiting]["status"]["status_str"] == "success"


def test_slow_node_still_completes(server):
    server.faults({"slow": {"rate": 1.0, "factor": 3.0}})
    entry = client(server).run(graph(steps=3), pid(), Recorder().progress)
    assert entry["status"]["status_str"] == "success"


# -- outputs ------------------------------------------------------------------------------


def test_outputs_are_collected_under_any_key_with_untrusted_names_contained(server, tmp_path):
    c = client(server)
    entry = c.run(graph(), pid(), Recorder().progress)
    [item] = output_items(entry)
    odd = {"filename": item["filename"], "subfolder": item["subfolder"], "type": "output"}
    custom = {"outputs": {"7": {"gifs": [dict(odd, format="video/h264-mp4")]},
                          "8": {"videos": [odd]}, "9": {"animated": [True], "text": ["hi"]}}}  # fmt: skip
    files = c.collect(custom, tmp_path / "out", 10 << 20)
    assert len(files) == 2 and files[0].name != files[1].name
    assert all(f.parent == tmp_path / "out" and f.stat().st_size > 1000 for f in files)
    escape = {"outputs": {"1": {"images": [{"filename": "../../escape.mp4", "type": "output"}]}}}
    with pytest.raises(BadNodeResponse, match="HTTP 400"):
        c.collect(escape, tmp_path / "out2", 10 << 20)
    assert not list(tmp_path.glob("escape*")) and not list((tmp_path / "out2").iterdir())


def test_downloads_over_the_cap_are_refused_and_leave_nothing(server, tmp_path):
    c = client(server)
    entry = c.run(graph(), pid(), Recorder().progress)
    with pytest.raises(BadNodeResponse, match="exceeds the 1048-byte download cap"):
        c.collect(entry, tmp_path, 1048)
    assert list(tmp_path.iterdir()) == []


# -- node down, prefix, discovery ---------------------------------------------------------


def test_a_crashed_node_is_unavailable(tmp_path):
    srv = Server(tmp_path, {**PROFILE, "faults": {"crash": {"rate": 1.0, "at_step": 2}}}).start()
    try:
        with pytest.raises(NodeUnavailable):
            client(srv, idle=3.0).run(graph(steps=6), pid(), Recorder().progress)
        assert srv.proc.wait(timeout=10) == 70
    finally:
        srv.stop()


def test_api_prefix_runs_the_whole_protocol(server, tmp_path):
    c = ComfyClient(server.url + "/api", 10.0, 10.0)
    assert c.ws_url == f"ws://127.0.0.1:{server.port}/api/ws"
    rec = Recorder()
    entry = c.run(graph(), pid(), rec.progress, rec.event)
    assert "execution_success" in rec.events
    assert probe(c.collect(entry, tmp_path, 10 << 20)[0]).frames == 5


def test_discovery_says_which_workflows_the_node_can_run(server):
    settings = Settings.from_env({"FARM_WORKFLOWS": str(REPO / "workflows")})
    info = ComfyUIBackend(server.url, settings).describe()
    assert info["version"] and info["gpu"] == "NVIDIA GeForce RTX 4090"
    assert info["vram_total"] == 24 * 2**30 and info["classes"] > 20
    assert info["models"]["diffusion_models"] == [T2V]
    flows = info["workflows"]
    assert flows["wan22_ti2v"] == {"ok": True, "missing": [], "models": [T2V],
                                   "catalog": ["wan22_ti2v_5b"]}  # fmt: skip
    # the two-model Wan 2.2 A14B graph runs here, but the node lacks both its experts
    assert flows["wan22_t2v"]["ok"] is True and flows["wan22_t2v"]["catalog"] == []
    assert flows["hunyuan15_t2v"]["ok"] is False
    missing = flows["hunyuan15_t2v"]["missing"]
    assert any("qwen_2.5_vl_7b_fp8_scaled.safetensors" in m for m in missing)
    # LTX-2's classes are there, its Gemma text encoder and checkpoint are not
    assert flows["ltx2_t2v"]["ok"] is False and flows["ltx2_t2v"]["catalog"] == []
    (gemma,) = [m for m in flows["ltx2_t2v"]["missing"] if "gemma" in m]
    assert "(LTXAVTextEncoderLoader): no file 'gemma_3_12B_it_fp4_mixed.safetensors'" in gemma
    assert not any("not installed" in m for m in flows["ltx2_t2v"]["missing"])


def test_an_editor_format_farm_workflow_is_converted_and_rendered(server, tmp_path):
    flows = tmp_path / "workflows"
    flows.mkdir()
    editor = (REPO / "tests" / "fixtures" / "editor" / "txt2video_wan.json").read_text()
    (flows / "wan22_ti2v.json").write_text(editor)
    settings = Settings.from_env({"FARM_WORKFLOWS": str(flows)})
    backend = ComfyUIBackend(server.url, settings)
    assert backend.describe()["workflows"]["wan22_ti2v"] == {
        "ok": True, "missing": [], "models": [T2V], "catalog": ["wan22_ti2v_5b"]}  # fmt: skip
    from .test_backend_comfyui import small_job

    job = small_job(scene_id="editor", shot_id="e1", width=256, height=128, frames=9)
    result = backend.render(job, tmp_path / "out", Recorder().progress)
    info = probe(result.video)
    assert (info.frames, info.width, info.height) == (9, 256, 128)


# -- farm comfy run / info ----------------------------------------------------------------


def farm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm", *args], capture_output=True, text=True, timeout=timeout
    )


def test_comfy_run_sets_inputs_runs_and_downloads(server, tmp_path):
    out = farm(
        "comfy", "run", str(REPO / "workflows" / "wan22_ti2v.json"), "--url", server.url,
        "--set", "Video Latent.width=96", "--set", "Video Latent.height=64",
        "--set", "Video Latent.length=5", "--set", "Sampler.steps=3",
        "--set", "Diffusion Model.unet_name=" + T2V,
        "--set", "Positive Prompt.text=a lighthouse at night", "--out", str(tmp_path), "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["status"] == "success" and summary["error"] is None
    [output] = summary["outputs"]
    path = Path(output["path"])
    assert path.parent == tmp_path and output["bytes"] == path.stat().st_size
    assert probe(path).frames == 5
    assert summary["events"]["progress"] == 3 and summary["events"]["execution_success"] == 1
    entry = server.history()[summary["prompt_id"]]
    sampler = entry["prompt"][2][titled(entry["prompt"][2], "Sampler")]
    assert sampler["inputs"]["steps"] == 3
    assert entry["prompt"][2]["6"]["inputs"]["text"] == "a lighthouse at night"


def test_comfy_run_takes_editor_workflows_and_uploads(server, tmp_path):
    editor = REPO / "tests" / "fixtures" / "editor" / "txt2video_wan.json"
    image = REPO / "examples" / "images" / "meadow.jpg"
    out = farm("comfy", "run", str(editor), "--url", server.url, "--upload",
               f"Reference.image={image}", "--set", f"Diffusion Model.unet_name={T2V}",
               "--out", str(tmp_path), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    names = sorted(Path(o["path"]).suffix for o in summary["outputs"])
    assert names == [".mp4", ".png"]  # the video and the (bypassed-blur) preview image
    graph_sent = server.history()[summary["prompt_id"]]["prompt"][2]
    assert graph_sent["55"]["inputs"]["image"].startswith("farm/")  # the uploaded file
    assert "56" not in graph_sent and "54" not in graph_sent  # bypassed, muted


def test_comfy_run_reports_a_rejection_with_exit_1(server, tmp_path):
    out = farm("comfy", "run", str(REPO / "workflows" / "wan22_ti2v.json"), "--url", server.url,
               "--set", "Sampler.steps=0", "--out", str(tmp_path), "--json")  # fmt: skip
    assert out.returncode == 1
    summary = json.loads(out.stdout)
    assert summary["status"] == "failed" and summary["error_kind"] == "rejected"
    assert "(KSampler) input 'steps': Value 0 smaller than min of 1" in summary["error"]
    plain = farm("comfy", "run", str(REPO / "workflows" / "wan22_ti2v.json"), "--url", server.url,
                 "--set", "Sampler.steps=0", "--out", str(tmp_path))  # fmt: skip
    assert plain.returncode == 1
    assert "Value 0 smaller than min of 1 (got 0) [value_smaller_than_min]" in plain.stderr


def test_comfy_run_bad_flags_exit_2_and_unreachable_exit_3(server, tmp_path):
    wf = str(REPO / "workflows" / "wan22_ti2v.json")
    bad = farm("comfy", "run", wf, "--url", server.url, "--set", "Nope.seed=1", "--out",
               str(tmp_path))  # fmt: skip
    assert bad.returncode == 2 and "no node titled or numbered 'Nope'" in bad.stderr
    bad = farm("comfy", "run", wf, "--url", server.url, "--set", "Sampler.sede=1", "--out",
               str(tmp_path))  # fmt: skip
    assert (
        bad.returncode == 2 and "has no input 'sede'; its inputs: model, seed, steps" in bad.stderr
    )
    bad = farm("comfy", "run", wf, "--url", server.url, "--set", "steps", "--out", str(tmp_path))
    assert bad.returncode == 2 and "expected TITLE.input=value" in bad.stderr
    down = farm("comfy", "run", wf, "--url", f"http://127.0.0.1:{free_port()}", "--out",
                str(tmp_path), "--json")  # fmt: skip
    assert down.returncode == 3 and json.loads(down.stdout)["error_kind"] == "node_unavailable"


def test_comfy_info_discovers_the_node(server):
    out = farm("comfy", "info", "--url", server.url, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    flows = info["workflows"]
    assert flows["wan22_ti2v"]["catalog"] == ["wan22_ti2v_5b"]
    assert flows["wan_ati"]["ok"] and flows["wan_ati"]["catalog"] == []  # no ATI model here
    text = farm("comfy", "info", "--url", server.url).stdout
    assert f"can run wan22_ti2v (wan22_ti2v_5b) with models: {T2V}" in " ".join(text.split())
    assert "can run wan_ati (no catalogue model)" in text
    assert "cannot run hunyuan15_t2v: node 38 (DualCLIPLoader): no file" in text
