"""The WanGP backends' contract, driven against live emulated nodes: the MCP server
(``python -m farm.emulators.wan2gp``) on a free loopback port and the batch CLI
(``wgp.py --process`` installed by ``python -m farm.emulators.wgp_cli --install``).

Cases mirror tests/test_comfy_contract.py where they make sense for WanGP: success with
progress and a real mp4, rejections, a missing model, a busy node, out of memory then a
lighter memory profile, cancel, hang → timeout, crash and HTTP 500 → unavailable,
redelivery, gallery transfers, the download cap, CLI mode, and ``farm wan run``.
Faults are switched on the running emulator through ``PUT /emulator/faults``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from farm.backends.wan2gp import (
    RECORD,
    NodeBusy,
    Wan2GPBackend,
    WanClient,
    collect,
    make_wan2gp_backend,
    parse_sse,
    tool_result,
)
from farm.backends.wgp_cli import WgpCliBackend
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
from farm.planning import Job
from farm.settings import Settings

from .emulated import EmulatorProcess

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "examples" / "images" / "meadow.jpg"
PROFILE = {
    "name": "wan-contract",
    "gpu": "NVIDIA GeForce RTX 3060",
    "vram_gb": 3.5,  # t2v_1.3B at 640x384x81 runs out of memory under profile 4, fits under 5
    "models": {"wangp": sorted(["t2v_1.3B", "ti2v_2_2_fastwan"])},
    "model_load_s": 0.05,
    "step_s": 0.05,
}


class Server(EmulatorProcess):
    """An emulated WanGP node run as ``python -m farm.emulators.wan2gp``."""

    module = "farm.emulators.wan2gp"

    def ready(self) -> bool:
        return bool(WanClient(self.url, 1).server_info())

    def outputs(self) -> list[Path]:
        return sorted((self.data / "outputs").glob("*.mp4"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("wan-contract"), PROFILE).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def no_faults(request):
    if "server" in request.fixturenames:
        request.getfixturevalue("server").faults({})
    yield


def settings(idle: float = 10.0, **env: str) -> Settings:
    return Settings.from_env(
        {"FARM_NODE_IDLE_TIMEOUT": str(idle), "FARM_HTTP_TIMEOUT": "10", **env}
    )


COUNTER = iter(range(1, 10_000))


def job(model: str = "ti2v_2_2_fastwan", **params) -> Job:
    """A tiny job with a shot id of its own (so its output name is its own)."""
    base = {"prompt": "a boat at sea", "negative": "", "seed": 3, "steps": 3, "width": 96,
            "height": 64, "length": 5, "fps": 24}  # fmt: skip
    return Job(scene_id="wc", shot_id=f"s{next(COUNTER)}", kind="preview", engine="wan2gp",
               workflow="", model=model, files={}, params={**base, **params})  # fmt: skip


def backend(server, idle: float = 10.0, **kw) -> Wan2GPBackend:
    return Wan2GPBackend(server.url, settings(idle), **kw)


class Recorder:
    """A progress callback and event counter."""

    def __init__(self, cancel_at: float | None = None) -> None:
        self.fractions: list[float] = []
        self.messages: list[str] = []
        self.events: list[str] = []
        self.cancel_at = cancel_at

    def progress(self, fraction: float, message: str = "", preview: bytes | None = None) -> None:
        if preview is not None:
            return
        self.fractions.append(fraction)
        self.messages.append(message)
        if self.cancel_at is not None and fraction >= self.cancel_at:
            raise JobCancelled("cancelled by the test")

    def event(self, kind: str, data: dict) -> None:
        self.events.append(kind)


# -- protocol parsing ---------------------------------------------------------------------


def test_event_stream_answers_and_both_result_shapes_are_read():
    body = 'event: message\ndata: {"jsonrpc": "2.0", "id": 3,\ndata:  "result": {}}\n\n'
    assert parse_sse(body) == [{"jsonrpc": "2.0", "id": 3, "result": {}}]
    text = {"content": [{"type": "text", "text": '{"job_id": "j"}'}]}
    assert tool_result("t", text) == {"job_id": "j"}
    assert tool_result("t", {"structuredContent": {"result": [1, 2]}, "content": []}) == [1, 2]
    with pytest.raises(NodeBusy):
        tool_result("wangp_generate", {"isError": True, "content": [
            {"type": "text", "text": "WanGP session already has a generation in progress"}]})  # fmt: skip


def test_the_factory_picks_mcp_or_cli_by_scheme(tmp_path):
    s = settings()
    mcp = make_wan2gp_backend("wan2gp+http://h:7866/", s)
    assert isinstance(mcp, Wan2GPBackend) and mcp.url == "http://h:7866" and mcp.shared is None
    remote = make_wan2gp_backend("https://h/gpu3?download=1", s)
    assert remote.url == "https://h/gpu3" and remote.shared is False
    cli = make_wan2gp_backend(f"file://{tmp_path}?python=/usr/bin/python3", s)
    assert isinstance(cli, WgpCliBackend) and cli.folder == tmp_path
    assert cli.python == "/usr/bin/python3" and cli.url == f"file://{tmp_path}"
    with pytest.raises(NodeUnavailable, match="no wgp.py"):
        cli.probe()


# -- success, discovery -------------------------------------------------------------------


def test_a_render_reports_progress_and_keeps_a_real_video(server, tmp_path):
    rec, j = Recorder(), job(width=100, height=70, length=6)
    result = backend(server).render(j, tmp_path, rec.progress)
    info = probe(result.video)
    assert (info.frames, info.width, info.height) == (5, 96, 64)  # 32-px block, 4n+1 grid
    assert result.video.parent == tmp_path and result.video.name.startswith(f"farm_wc_{j.shot_id}_")
    assert rec.fractions == sorted(rec.fractions) and rec.fractions[-1] == 1.0
    assert "inference step 3/3" in rec.messages
    record = json.loads((tmp_path / RECORD).read_text())
    assert (
        record["job_id"] == result.backend_job_id and record["key"] == f"wc/{j.shot_id}/preview/1"
    )


def test_discovery_lists_the_models_whose_weights_are_present(server):
    backend(server).probe()
    info = backend(server).describe()
    assert info["models"] == {"wangp": sorted(["t2v_1.3B", "ti2v_2_2_fastwan"])}
    assert info["workflows"] == {} and info["listed"] > 2 and info["mode"] == "mcp"


def test_a_start_image_is_uploaded_when_the_node_refuses_paths(server, tmp_path):
    b = backend(server)
    result = b.render(job(start_image=str(IMAGE)), tmp_path, Recorder().progress)
    assert probe(result.video).frames == 5
    assert b.reads_files is False  # the next renders upload straight away
    assert list((server.data / "uploads").glob("meadow*.jpg"))


# -- rejections and failures --------------------------------------------------------------


def test_validation_failures_are_rejections_with_the_servers_text(server, tmp_path):
    with pytest.raises(NodeRejected, match=r"validation: Invalid num_inference_steps: 0"):
        backend(server).render(job(steps=0), tmp_path, Recorder().progress)
    with pytest.raises(NodeRejected, match="does not accept a Start or End Image"):
        backend(server).render(job("t2v_1.3B", start_image=str(IMAGE)), tmp_path / "b",
                               Recorder().progress)  # fmt: skip


def test_unknown_and_absent_models_fall_back(server, tmp_path):
    with pytest.raises(ModelMissing, match="Unknown model type: nope_14B"):
        backend(server).render(job("nope_14B"), tmp_path / "a", Recorder().progress)
    with pytest.raises(ModelMissing, match="hunyuan is not available on this node"):
        backend(server).render(job("hunyuan"), tmp_path / "b", Recorder().progress)


def test_out_of_memory_then_success_with_a_lighter_profile(server, tmp_path):
    big = job("t2v_1.3B", width=640, height=384, length=81, steps=2)
    with pytest.raises(OutOfMemory, match="CUDA out of memory"):
        backend(server).render(big, tmp_path / "a1", Recorder().progress)
    retry = replace(big, attempt=2, params={**big.params, "override_profile": 5})
    result = backend(server).render(retry, tmp_path / "a2", Recorder().progress)
    assert probe(result.video).frames == 81


def test_a_busy_node_is_waited_for_then_unavailable(server, tmp_path):
    server.faults({"slow": {"rate": 1.0, "factor": 30.0}})
    client = WanClient(server.url, 10)
    first = client.generate({"model_type": "ti2v_2_2_fastwan", "prompt": "x", "resolution": "96x64",
                             "video_length": 5, "num_inference_steps": 40})  # fmt: skip
    try:
        started = time.monotonic()
        with pytest.raises(NodeBusy, match="already has a generation in progress"):
            backend(server, idle=1.5).render(job(), tmp_path, Recorder().progress)
        assert 1.0 < time.monotonic() - started < 5
        assert not (tmp_path / RECORD).exists()
    finally:
        client.cancel_job(first["job_id"])
    wait_for(lambda: client.get_job(first["job_id"])["done"], 10, "the first job to stop")
    server.faults({"slow": {"rate": 1.0, "factor": 10.0}})
    short = client.generate({"model_type": "ti2v_2_2_fastwan", "prompt": "x", "resolution": "96x64",
                             "video_length": 5, "num_inference_steps": 8})  # fmt: skip
    result = backend(server).render(job(), tmp_path, Recorder().progress)  # waits its turn
    assert probe(result.video).frames == 5
    assert client.get_job(short["job_id"])["result"]["success"]


def test_a_cancel_from_the_farm_cancels_the_job_on_the_node(server, tmp_path):
    server.faults({"slow": {"rate": 1.0, "factor": 10.0}})
    rec = Recorder(cancel_at=0.3)
    with pytest.raises(JobCancelled, match="cancelled by the test"):
        backend(server).render(job(steps=30), tmp_path, rec.progress)
    job_id = json.loads((tmp_path / RECORD).read_text())["job_id"]
    client = WanClient(server.url, 10)
    wait_for(lambda: client.get_job(job_id)["done"], 10, "the cancelled job to end")
    result = client.get_job(job_id)["result"]
    assert result["cancelled"] and result["errors"][-1]["stage"] == "cancelled"


def test_cancel_takes_the_running_attempt_off_the_node(server, tmp_path):
    server.faults({"slow": {"rate": 1.0, "factor": 10.0}})
    b, j, errors = backend(server), job(steps=30), []

    def run() -> None:
        try:
            b.render(j, tmp_path, Recorder().progress)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: (tmp_path / RECORD).exists(), 10, "the job to start")
    assert b.cancel(j) == "interrupted"
    thread.join(20)
    assert len(errors) == 1 and isinstance(errors[0], JobCancelled)
    assert "Generation was cancelled" in str(errors[0])
    assert b.cancel(job()) == "not_found"


def test_a_hung_job_times_out_and_is_cancelled(server, tmp_path):
    server.faults({"hang": {"rate": 1.0, "at_step": 2}})
    started = time.monotonic()
    with pytest.raises(NodeTimeout, match="made no progress for 1.5s"):
        backend(server, idle=1.5).render(job(steps=6), tmp_path, Recorder().progress)
    assert time.monotonic() - started < 10
    job_id = json.loads((tmp_path / RECORD).read_text())["job_id"]
    client = WanClient(server.url, 10)
    wait_for(lambda: client.get_job(job_id)["done"], 10, "the hung job to be cancelled")


def test_http_500_is_a_node_failure(server, tmp_path):
    server.faults({"http_500": {"rate": 1.0}})
    with pytest.raises(NodeUnavailable, match="HTTP 500: Internal Server Error"):
        backend(server).render(job(), tmp_path, Recorder().progress)


def test_a_crashed_node_is_unavailable(tmp_path):
    srv = Server(tmp_path / "srv", {**PROFILE, "faults": {"crash": {"rate": 1.0, "at_step": 2}}})
    srv.start()
    try:
        with pytest.raises(NodeUnavailable):
            backend(srv).render(job(steps=6), tmp_path / "out", Recorder().progress)
        assert srv.proc.wait(timeout=10) == 70
    finally:
        srv.stop()


def test_an_unreachable_node_is_unavailable(tmp_path):
    b = Wan2GPBackend(f"http://127.0.0.1:{free_port()}", settings())
    with pytest.raises(NodeUnavailable):
        b.probe()
    with pytest.raises(NodeUnavailable):
        b.render(job(), tmp_path, Recorder().progress)


# -- exactly once -------------------------------------------------------------------------


def test_a_redelivered_task_follows_the_running_job_instead_of_rendering_twice(server, tmp_path):
    server.faults({"slow": {"rate": 1.0, "factor": 5.0}})
    j, results = job(steps=12), []
    first = threading.Thread(
        target=lambda: results.append(backend(server).render(j, tmp_path, Recorder().progress))
    )
    first.start()
    wait_for(lambda: (tmp_path / RECORD).exists(), 10, "the first delivery to submit")
    second = backend(server).render(j, tmp_path, Recorder().progress)  # the redelivery
    first.join(20)
    assert results and results[0].backend_job_id == second.backend_job_id
    assert [p.name for p in server.outputs() if j.shot_id + "_" in p.name] == [
        f"farm_wc_{j.shot_id}_preview_a1.mp4"
    ]  # one generation: a second would be "... (2).mp4"
    again = backend(server).render(j, tmp_path, Recorder().progress)  # after it finished
    assert again.backend_job_id == second.backend_job_id


def test_a_record_the_node_forgot_is_submitted_again(server, tmp_path):
    j = job()
    (tmp_path / RECORD).write_text(json.dumps({"job_id": "f" * 32, "url": server.url,
                                               "key": f"wc/{j.shot_id}/preview/1"}))  # fmt: skip
    result = backend(server).render(j, tmp_path, Recorder().progress)
    assert result.backend_job_id != "f" * 32 and probe(result.video).frames == 5


# -- outputs ------------------------------------------------------------------------------


def test_outputs_are_downloaded_through_the_gallery_when_not_shared(server, tmp_path):
    result = backend(server, shared=False).render(job(), tmp_path, Recorder().progress)
    original = next(p for p in server.outputs() if p.name == result.video.name)
    assert result.video.read_bytes() == original.read_bytes()
    assert not list(tmp_path.glob("*.part"))


def test_downloads_over_the_cap_are_refused_and_leave_nothing(server, tmp_path):
    client = WanClient(server.url, 10)
    b = Wan2GPBackend(server.url, settings(), client=client)
    b.render(job(), tmp_path / "ok", Recorder().progress)
    job_id = json.loads((tmp_path / "ok" / RECORD).read_text())["job_id"]
    result = client.get_job(job_id)["result"]
    with pytest.raises(BadNodeResponse, match="exceeds the 1048-byte download cap"):
        collect(client, result, tmp_path / "capped", 1048, shared=False)
    assert list((tmp_path / "capped").iterdir()) == []
    with pytest.raises(BadNodeResponse, match="exceeds the download cap"):
        collect(client, result, tmp_path / "shared", 1048, shared=None)


def test_untrusted_output_names_stay_inside_the_folder(server, tmp_path):
    odd = {"generated_files": ["/nowhere/../../escape.mp4"], "gallery_items": []}
    with pytest.raises(BadNodeResponse, match="not readable here and has no gallery id"):
        collect(WanClient(server.url, 10), odd, tmp_path / "o", 10 << 20, shared=None)
    assert not list(tmp_path.rglob("escape*"))


# -- CLI mode -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wgp_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("wangp")
    profile = root / "profile.json"
    profile.write_text(json.dumps(PROFILE))
    subprocess.run([sys.executable, "-m", "farm.emulators.wgp_cli", "--install", str(root / "Wan2GP"),
                    "--profile", str(profile)], check=True, cwd=REPO, capture_output=True)  # fmt: skip
    return root / "Wan2GP"


def cli_backend(folder: Path) -> WgpCliBackend:
    b = make_wan2gp_backend(f"file://{folder}", settings())
    assert isinstance(b, WgpCliBackend)
    return b


def test_cli_mode_lists_the_folders_models_and_finetunes(tmp_path):
    """A WanGP folder's models: its ``defaults/`` and the studio's ``finetunes/``."""
    for sub, name in (("defaults", "t2v"), ("defaults", "t2v_2_2"), ("finetunes", "t2v_2_2_dusk")):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / f"{name}.json").write_text("{}")
    (tmp_path / "wgp.py").write_text("")
    assert cli_backend(tmp_path).describe()["models"]["wangp"] == ["t2v", "t2v_2_2", "t2v_2_2_dusk"]


def test_cli_mode_renders_with_progress(wgp_folder, tmp_path):
    rec = Recorder()
    b = cli_backend(wgp_folder)
    b.probe()
    result = b.render(job(steps=4), tmp_path, rec.progress)
    assert probe(result.video).frames == 5 and result.video.parent == tmp_path
    assert "step 4/4" in rec.messages and rec.fractions == sorted(rec.fractions)
    assert json.loads((tmp_path / "job.json").read_text())["num_inference_steps"] == 4


def test_cli_mode_skipped_task_is_a_rejection(wgp_folder, tmp_path):
    with pytest.raises(NodeRejected, match="skipped: Invalid num_inference_steps: 0"):
        cli_backend(wgp_folder).render(job(steps=0), tmp_path, Recorder().progress)


def test_cli_mode_failures_by_exit_code(wgp_folder, tmp_path):
    big = job("t2v_1.3B", width=640, height=384, length=81, steps=2)
    with pytest.raises(OutOfMemory, match="exited with code 1.*CUDA out of memory"):
        cli_backend(wgp_folder).render(big, tmp_path / "a", Recorder().progress)
    with pytest.raises(RenderFailed, match="exited with code 1: Error: source must be"):
        cli_backend(wgp_folder).run("not settings", tmp_path / "b", Recorder().progress)


def test_cli_mode_cancel_stops_the_process(wgp_folder, tmp_path):
    rec = Recorder(cancel_at=0.3)
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        cli_backend(wgp_folder).render(job(steps=200), tmp_path, rec.progress)
    assert time.monotonic() - started < 15


# -- farm wan run -------------------------------------------------------------------------


def farm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm", *args], capture_output=True, text=True, timeout=timeout,
        cwd=REPO,
    )  # fmt: skip


def settings_file(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"model_type": "ti2v_2_2_fastwan", "prompt": "a lighthouse",
                                "resolution": "96x64", "video_length": 5,
                                "num_inference_steps": 3, **kw}))  # fmt: skip
    return path


def test_wan_run_renders_and_downloads(server, tmp_path):
    out = farm("wan", "run", str(settings_file(tmp_path)), "--url", server.url, "--out",
               str(tmp_path / "out"), "--download", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["status"] == "success" and summary["error"] is None and summary["job_id"]
    [output] = summary["outputs"]
    path = Path(output["path"])
    assert path.parent == tmp_path / "out" and output["bytes"] == path.stat().st_size
    assert probe(path).frames == 5
    assert summary["events"]["progress"] >= 3 and summary["events"]["completed"] == 1


def test_wan_run_in_cli_mode(wgp_folder, tmp_path):
    out = farm("wan", "run", str(settings_file(tmp_path)), "--url", f"file://{wgp_folder}",
               "--out", str(tmp_path / "out"), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["events"]["progress"] == 3 and len(summary["outputs"]) == 1


def test_wan_run_rejection_exits_1(server, tmp_path):
    out = farm("wan", "run", str(settings_file(tmp_path, num_inference_steps=0)), "--url",
               server.url, "--out", str(tmp_path / "out"), "--json")  # fmt: skip
    assert out.returncode == 1
    summary = json.loads(out.stdout)
    assert summary["error_kind"] == "rejected"
    assert "Invalid num_inference_steps: 0" in summary["error"]


def test_wan_run_bad_file_exits_2_and_unreachable_exits_3(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "no model"}]')
    out = farm("wan", "run", str(bad), "--url", "http://127.0.0.1:9", "--out", str(tmp_path))
    assert out.returncode == 2 and "item 0: no model_type" in out.stderr
    out = farm("wan", "run", str(tmp_path / "missing.json"), "--url", "http://127.0.0.1:9",
               "--out", str(tmp_path))  # fmt: skip
    assert out.returncode == 2 and "does not exist" in out.stderr
    down = farm("wan", "run", str(settings_file(tmp_path)), "--url",
                f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path), "--json")  # fmt: skip
    assert down.returncode == 3 and json.loads(down.stdout)["error_kind"] == "node_unavailable"
