"""Comfy API v2 nodes: the real comfy-api-proxy (the package, as a subprocess with a token
and a state folder) in front of the emulated ComfyUI, driven by the comfyv2 backend
directly and by a real farm (redis-server, Celery workers) whose one GPU node is such a
node; the proxy's own job list and the emulator's job log referee."""

from __future__ import annotations

import email.utils
import gc
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from farm.backends import detect_kind, image_mime, make_backend
from farm.backends.comfyui import prompt_id_for
from farm.backends.comfyv2 import RECORD, TAG, ComfyV2Backend, reported_seconds, retry_after
from farm.errors import (
    BadNodeResponse,
    ConfigError,
    FarmError,
    JobCancelled,
    ModelMissing,
    OutOfMemory,
)
from farm.local import EmulatedNode, LocalFarm, free_port, proxy_argv, wait_node
from farm.media import probe
from farm.planning import Job, backend_of
from farm.runtime import get_runtime
from farm.scene import parse_scene
from farm.settings import Settings
from farm.submit import enqueue
from farm.worker import patient

from .conftest import EXAMPLES, NODES, REPO, pointed_at
from .ratelimit import RateLimiter
from .test_backend_comfyui import small_job
from .test_comfy_contract import Server
from .test_faults import pool_children, t2v_scene, wait_done, wait_for

TOKEN = "cloud-key-7f3a9c2e51d84b06"


def _profile() -> dict:
    """node-a's models and node-c's Wan 2.1 ATI (trajectories), with the job API."""
    a, c = (json.loads((NODES / f"{n}.json").read_text()) for n in ("node-a", "node-c"))
    models = {k: sorted({*a["models"].get(k, []), *c["models"].get(k, [])})
              for k in {*a["models"], *c["models"]}}  # fmt: skip
    return {**a, "models": models, "api": "0.38"}


PROFILE = _profile()
MODELS = ",".join(f"{folder}/{name}" for folder, names in PROFILE["models"].items()
                  for name in names)  # fmt: skip
SLOW = {"slow": {"rate": 1.0, "factor": 8.0}}
IMAGE = EXAMPLES / "images" / "meadow.jpg"


class Proxy:
    """comfy-api-proxy in front of ``comfyui``, with ``--token`` and ``--state-dir``."""

    def __init__(self, root: Path, comfyui: str, token: str = TOKEN) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port, self.log = free_port(), root / "proxy.log"
        self.argv = proxy_argv(self.port, comfyui, root / "state", token)
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token

    def start(self) -> Proxy:
        self.proc = subprocess.Popen(self.argv, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        wait_node("comfyv2", self.port, self.proc, "comfy-api-proxy", self.log, 30)
        return self

    def stop(self) -> None:
        self.proc.terminate()  # aiohttp waits up to a minute for open event streams
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def jobs(self) -> list[dict]:
        """The proxy's own job list (``GET /api/v2/jobs``), newest first."""
        resp = requests.get(self.url + "/api/v2/jobs", params={"limit": 100}, timeout=10,
                            headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
        assert resp.status_code == 200, resp.text
        return resp.json()["jobs"]


def settings_for(tmp_path: Path, token: str = TOKEN, **env: str) -> Settings:
    key = tmp_path / "cloud-token"
    key.write_text(token + "\n")
    return Settings.from_env({"FARM_CLOUD_TOKEN_FILE": str(key), "FARM_CLOUD_MODELS": MODELS,
                              "FARM_HTTP_TIMEOUT": "10", **env})  # fmt: skip


def runs(emulator: Server) -> list[dict]:
    """Every execution the emulated ComfyUI started (its job log)."""
    return requests.get(emulator.url + "/emulator/jobs", timeout=5).json()["jobs"]


def tagged(proxy: Proxy, job: Job) -> list[dict]:
    return [j for j in proxy.jobs() if j.get("metadata") == TAG + prompt_id_for(job)]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """An emulated ComfyUI with the job API, and comfy-api-proxy in front of it."""
    root = tmp_path_factory.mktemp("v2node")
    emulator = Server(root / "comfyui", PROFILE).start()
    proxy = Proxy(root / "proxy", emulator.url).start()
    yield emulator, proxy
    proxy.stop()
    emulator.stop()


@pytest.fixture
def emulator(node):
    node[0].faults({})
    return node[0]


@pytest.fixture
def proxy(node):
    return node[1]


# -- what the service reports, read ---------------------------------------------------------------


def test_gpu_seconds_come_from_the_service_s_figures_when_it_gives_them():
    """Comfy Cloud's ``metrics.execution_ms`` first, then ``completed_at - started_at``;
    comfy-api-proxy 0.1.6 gives neither (the worker then counts what it saw)."""
    times = {"started_at": "2026-12-07T10:00:00Z", "completed_at": "2026-12-07T10:01:30.5Z"}
    assert reported_seconds({"metrics": {"execution_ms": 91250}, **times}) == (
        91.25,
        "metrics.execution_ms",
    )
    assert reported_seconds(times) == (90.5, "completed_at - started_at")
    assert reported_seconds({"started_at": None, "completed_at": None}) == (None, "")


def test_retry_after_is_read_in_seconds_or_as_a_date_and_capped():
    def answer(value: str) -> requests.Response:
        resp = requests.Response()
        resp.headers["Retry-After"] = value
        return resp

    assert retry_after(answer("3")) == 3.0 and retry_after(answer("3600")) == 60.0
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= retry_after(answer(later)) <= 10.0
    assert retry_after(answer("soon")) == 5.0


# -- the backend against the real proxy ---------------------------------------------------------


def test_a_v2_node_is_recognised_described_and_runs_comfyui_jobs(emulator, proxy, tmp_path):
    assert detect_kind(proxy.url) == "comfyv2" and backend_of("comfyv2") == "comfyui"
    settings = settings_for(tmp_path, FARM_CLOUD_CONCURRENCY="3", FARM_CLOUD_PRICE="0.0004")
    backend = make_backend("comfyv2", proxy.url, settings)
    info = backend.describe()
    assert info["cloud"] == {"concurrency": 3, "price_per_second": 0.0004}
    assert info["models"] == PROFILE["models"]
    assert (
        info["workflows"]["wan22_ti2v"]["ok"]
        and "wan22_ti2v_5b" in info["workflows"]["wan22_ti2v"]["catalog"]
    )
    assert not info["workflows"]["hunyuan15_t2v"]["ok"]  # its files are not listed
    assert "FARM_CLOUD_MODELS" in info["workflows"]["hunyuan15_t2v"]["missing"][0]


def test_a_shot_renders_through_the_proxy_and_a_second_delivery_follows_the_same_job(
    emulator, proxy, tmp_path
):
    settings = settings_for(tmp_path)
    job = small_job(scene_id="v2-once")
    seen = []
    result = ComfyV2Backend(proxy.url, settings).render(
        job, tmp_path / "one", lambda f, m="", p=None: seen.append((f, m))
    )
    info = probe(result.video)
    assert (info.frames, info.width, info.height) == (17, 320, 192)
    assert max(f for f, _ in seen) > 0.5 and any(m.startswith("step ") for _, m in seen)
    assert result.details["gpu_seconds"] > 0
    assert result.details["gpu_seconds_source"] == "observed running"  # the proxy reports no times
    # a redelivered task in another process: nothing in memory, no record beside the outputs
    again = ComfyV2Backend(proxy.url, settings)
    assert again.find(job, tmp_path / "two") == "succeeded"
    second = again.render(job, tmp_path / "two", lambda *a, **k: None)
    assert second.backend_job_id == result.backend_job_id
    assert second.video.read_bytes() == result.video.read_bytes()
    (mine,) = tagged(proxy, job)  # one job, one key
    assert mine["id"] == result.backend_job_id
    ranged = requests.get(mine["outputs"][0]["url"], timeout=10, headers={  # through to /view
        "Authorization": f"Bearer {TOKEN}", "Range": "bytes=0-99"})  # fmt: skip
    assert ranged.status_code == 206 and ranged.content == result.video.read_bytes()[:100]
    assert [r["job_id"] for r in runs(emulator)].count(result.backend_job_id) == 1
    assert json.loads((tmp_path / "one" / RECORD).read_text())["job_id"] == result.backend_job_id


def test_a_second_submission_of_an_attempt_is_refused_by_its_key_and_follows_the_job(
    emulator, proxy, tmp_path, caplog
):
    """Two processes submit the same attempt (say, the first died after its POST, before it
    recorded the job): the service refuses the second use of the idempotency key, and the
    second process follows the first one's job instead."""
    settings = settings_for(tmp_path)
    job = small_job(scene_id="v2-key")
    first = ComfyV2Backend(proxy.url, settings).submit(job, prompt_id_for(job), None)
    with caplog.at_level("INFO", logger="farm.backends.comfyv2"):
        second = ComfyV2Backend(proxy.url, settings).submit(job, prompt_id_for(job), None)
    assert second["id"] == first["id"] and "already submitted" in caplog.text
    result = ComfyV2Backend(proxy.url, settings).render(job, tmp_path, lambda *a, **k: None)
    assert result.backend_job_id == first["id"] and len(tagged(proxy, job)) == 1
    refused = requests.post(proxy.url + "/api/v2/jobs", timeout=10, json={"workflow": {}},
                            headers={"Authorization": f"Bearer {TOKEN}",
                                     "Idempotency-Key": prompt_id_for(job)})  # fmt: skip
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "idempotency_key_reuse"


def test_a_start_image_is_uploaded_once_by_its_hash_and_referenced(emulator, proxy, tmp_path):
    settings = settings_for(tmp_path)
    before = emulator.hits().get("POST /upload/image", 0)
    for i in range(2):  # two shots from the same image, each in a fresh process
        job = small_job(scene_id=f"v2-img{i}", start_image=str(IMAGE))
        backend = ComfyV2Backend(proxy.url, settings)
        graph = backend.graph_for(job)
        refs = [v for n in graph.values() for v in n["inputs"].values()
                if isinstance(v, dict) and v.get("__type") == "core/ASSET"]  # fmt: skip
        assert len(refs) == 1 and refs[0]["info"]["hash"].startswith("blake3:")
        assert backend.render(job, tmp_path / str(i), lambda *a, **k: None).video.exists()
    assert emulator.hits().get("POST /upload/image", 0) - before <= 1  # once, ever
    digest = refs[0]["info"]["hash"]
    head = requests.head(f"{proxy.url}/api/v2/assets/by-hash/{digest}", timeout=5,
                         headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert head.status_code == 200


def test_cancel_from_another_process_interrupts_the_job_on_the_emulator(emulator, proxy, tmp_path):
    emulator.faults(SLOW)
    settings = settings_for(tmp_path)
    job = small_job(scene_id="v2-cancel", frames=33)
    outcome: list = []
    previews: list[bytes] = []

    def keep(fraction: float, message: str = "", preview: bytes | None = None) -> None:
        if preview is not None:
            previews.append(preview)

    def render() -> None:
        try:
            ComfyV2Backend(proxy.url, settings).render(job, tmp_path, keep)
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=render)
    thread.start()
    other = ComfyV2Backend(proxy.url, settings)  # e.g. `farm cancel`, or the checker
    wait_for(lambda: other.find(job, tmp_path) == "running", 30, "the job running")
    wait_for(lambda: previews, 30, "a live preview through the event stream")
    assert image_mime(previews[0]) in ("image/jpeg", "image/png")
    assert other.cancel(job, tmp_path) == "interrupted"
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], JobCancelled)
    (mine,) = tagged(proxy, job)
    assert mine["status"] == "canceled"
    (run,) = [r for r in runs(emulator) if r["job_id"] == mine["id"]]
    assert run["status"] != "success"
    assert other.cancel(job, tmp_path) == "not_found"  # over: nothing left to take off


def test_a_job_that_fails_on_the_node_raises_its_farm_error(emulator, proxy, tmp_path):
    job = small_job(scene_id="v2-oom")  # more than the emulated GPU's memory
    job = replace(
        job, params={**job.params, "width": 1920, "height": 1088, "length": 161, "steps": 1}
    )
    with pytest.raises(OutOfMemory):
        ComfyV2Backend(proxy.url, settings_for(tmp_path)).render(
            job, tmp_path, lambda *a, **k: None
        )
    (mine,) = tagged(proxy, job)
    assert mine["status"] == "failed"


def test_a_job_that_failed_after_it_ran_reports_the_seconds_it_was_billed(
    emulator, proxy, tmp_path
):
    """A job that runs a while and is then stopped on the node itself (someone interrupts
    it at the ComfyUI behind the proxy) raises its farm error with the GPU-seconds it ran
    (the proxy reports none: the time the worker saw it run), which the render task
    charges to the budget."""
    emulator.faults({**SLOW, "hang": {"at_step": 2}})
    job = small_job(scene_id="v2-stopped")
    raised: list[BaseException] = []

    def render() -> None:
        try:
            ComfyV2Backend(proxy.url, settings_for(tmp_path)).render(
                job, tmp_path, lambda *a, **k: None
            )
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            raised.append(exc)

    thread = threading.Thread(target=render)
    thread.start()

    def running() -> bool:
        found = tagged(proxy, job)
        return bool(found) and any(r["job_id"] == found[0]["id"] and r["status"] == "running"
                                   for r in runs(emulator))  # fmt: skip

    wait_for(running, 30, "the job running")
    time.sleep(2.0)
    requests.post(emulator.url + "/interrupt", json={}, timeout=5).raise_for_status()
    thread.join(60)
    assert not thread.is_alive() and len(raised) == 1
    error = raised[0]
    assert isinstance(error, FarmError), error
    (mine,) = tagged(proxy, job)
    assert mine["status"] in ("failed", "canceled")
    assert error.details["gpu_seconds"] >= 2.0
    assert error.details["gpu_seconds_source"] != "unknown"


def test_outputs_are_held_to_the_download_cap(emulator, proxy, tmp_path):
    settings = settings_for(tmp_path, FARM_MAX_DOWNLOAD_MB="0")
    with pytest.raises(BadNodeResponse, match="FARM_MAX_DOWNLOAD_MB"):
        ComfyV2Backend(proxy.url, settings).render(
            small_job(scene_id="v2-cap"), tmp_path, lambda *a, **k: None
        )
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".mp4", ".part")]


def test_a_workflow_the_node_refuses_is_final_for_the_job(emulator, proxy, tmp_path):
    job = small_job(scene_id="v2-refused", template="quick_preview")  # Hunyuan: not there
    with pytest.raises(ModelMissing, match="hunyuan"):
        ComfyV2Backend(proxy.url, settings_for(tmp_path)).render(
            job, tmp_path, lambda *a, **k: None
        )
    assert tagged(proxy, job) == []  # refused: no job, and its key is free again


def test_rate_limited_submissions_wait_as_asked_and_complete(emulator, proxy, tmp_path):
    limiter = RateLimiter(proxy.url, {"POST /api/v2/jobs": 2}, retry_after=1.0).start()
    try:
        job = small_job(scene_id="v2-429")
        backend = ComfyV2Backend(limiter.url, settings_for(tmp_path))
        result = backend.render(job, tmp_path, lambda *a, **k: None)
        assert result.video.exists()
        posts = limiter.answered("POST /api/v2/jobs")
        assert [s for _, s in posts] == [429, 429, 201]
        assert all(
            b - a >= 0.95 for (a, _), (b, _) in zip(posts, posts[1:], strict=False)
        )  # Retry-After
        assert len(tagged(proxy, job)) == 1
    finally:
        limiter.stop()


def test_a_submission_whose_answer_was_lost_is_sent_again_and_runs_once(emulator, proxy, tmp_path):
    """The proxy takes the job but its answer never arrives: the farm sends the submission
    again with the same idempotency key, the proxy refuses the key, and the farm follows
    the job it already has."""
    limiter = RateLimiter(proxy.url, drop={"POST /api/v2/jobs": 1}).start()
    try:
        job = small_job(scene_id="v2-lost")
        result = ComfyV2Backend(limiter.url, settings_for(tmp_path)).render(
            job, tmp_path, lambda *a, **k: None
        )
        assert [s for _, s in limiter.answered("POST /api/v2/jobs")] == [0, 422]  # lost, reused
        (mine,) = tagged(proxy, job)
        assert mine["id"] == result.backend_job_id and mine["status"] == "succeeded"
        assert [r["job_id"] for r in runs(emulator)].count(mine["id"]) == 1
    finally:
        limiter.stop()


def test_a_refused_event_stream_falls_back_to_polling(emulator, proxy, tmp_path, caplog):
    """The proxy serves 8 event streams at once; a ninth is refused with 429
    too_many_streams: the render goes on by polling and completes."""
    emulator.faults(SLOW)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    blocker = small_job(scene_id="v2-sse-blocker", frames=33)
    settings = settings_for(tmp_path)
    graph = ComfyV2Backend(proxy.url, settings).graph_for(blocker)
    resp = requests.post(
        proxy.url + "/api/v2/jobs", json={"workflow": graph}, headers=auth, timeout=10
    )
    assert resp.status_code == 201
    streams = [requests.get(f"{proxy.url}/api/v2/jobs/{resp.json()['id']}/events", headers=auth,
                            stream=True, timeout=(5, 60)) for _ in range(8)]  # fmt: skip
    try:
        assert all(s.status_code == 200 for s in streams)
        job = small_job(scene_id="v2-sse")
        with caplog.at_level("INFO", logger="farm.backends.comfyv2"):
            result = ComfyV2Backend(proxy.url, settings).render(job, tmp_path, lambda *a, **k: None)
        assert result.video.exists()
        assert "too_many_streams" in caplog.text
    finally:
        for s in streams:
            s.close()


def test_bad_credentials_and_config_name_the_setting(emulator, proxy, tmp_path):
    wrong = ComfyV2Backend(proxy.url, settings_for(tmp_path, token="not-the-key"))
    with pytest.raises(ConfigError) as info:
        wrong.describe()
    assert "FARM_CLOUD_TOKEN" in str(info.value) and "not-the-key" not in str(info.value)
    with pytest.raises(ConfigError, match="FARM_CLOUD_TOKEN"):
        wrong.render(small_job(scene_id="v2-401"), tmp_path, lambda *a, **k: None)
    with pytest.raises(ConfigError, match="FARM_CLOUD_TOKEN_FILE"):
        ComfyV2Backend("https://cloud.example", Settings.from_env({}))  # Comfy Cloud, no key
    missing = Settings.from_env({"FARM_CLOUD_TOKEN_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="FARM_CLOUD_TOKEN_FILE: cannot read"):
        ComfyV2Backend(proxy.url, missing)
    with pytest.raises(ConfigError, match="both set"):
        Settings.from_env({"FARM_CLOUD_TOKEN": "a", "FARM_CLOUD_TOKEN_FILE": "b"}).cloud_api_key()
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FARM_NODES": f"c=comfyv2+https://me:{TOKEN}@cloud.example"})
    assert "FARM_CLOUD_TOKEN" in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match="FARM_NODES"):
        Settings.from_env({"FARM_NODES": "c=comfyv2+ftp://cloud.example"})
    with pytest.raises(ConfigError, match="FARM_NODES"):
        Settings.from_env({"FARM_NODES": "c=comfyv2+https://"})
    with pytest.raises(ConfigError, match="FARM_CLOUD_MODELS"):
        Settings.from_env({"FARM_CLOUD_MODELS": "just-a-file.safetensors"})
    with pytest.raises(ConfigError, match="FARM_CLOUD_CONCURRENCY"):
        Settings.from_env({"FARM_CLOUD_CONCURRENCY": "0"})
    nodes = Settings.from_env(
        {"FARM_NODES": "c=comfyv2+https://cloud.example,p=comfyv2+http://127.0.0.1:8189"}
    ).nodes
    assert [(n.kind, n.url) for n in nodes] == [
        ("comfyv2", "https://cloud.example"), ("comfyv2", "http://127.0.0.1:8189")]  # fmt: skip


def test_a_v2_worker_without_a_key_stops_at_once_naming_the_setting(tmp_path):
    """`farm worker` for a Comfy Cloud node with no key exits with the config error (3)
    before it takes a task."""
    env = {"PATH": "/usr/bin:/bin", "FARM_REDIS_URL": "redis://127.0.0.1:9/0",
           "FARM_STORAGE": str(tmp_path), "PYTHONPATH": str(REPO)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "farm", "worker", "--url", "comfyv2+https://cloud.example"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "FARM_CLOUD_TOKEN_FILE" in done.stderr + done.stdout


def test_farm_up_runs_an_emulated_v2_node_behind_comfy_api_proxy(tmp_path):
    """`farm up` with ``emulate = "comfyv2"``: the emulated ComfyUI, comfy-api-proxy in
    front of it and the node's worker; a scene renders through the proxy."""
    from .test_up import bare_env
    from .test_up import farm as cli

    profile = tmp_path / "cloud.json"
    profile.write_text(json.dumps(PROFILE))
    ports = [free_port() for _ in range(3)]
    config = tmp_path / "farm.toml"
    config.write_text(f"""
root = "root"
stop_timeout = 20
[redis]
port = {ports[0]}
[[node]]
name = "cloud"
emulate = "comfyv2"
profile = "{profile}"
port = {ports[1]}
comfyui_port = {ports[2]}
[cpu]
concurrency = 1
[flower]
enabled = false
[web]
enabled = false
[exporter]
enabled = false
[env]
FARM_HEARTBEAT = "1"
FARM_CLOUD_MODELS = "{MODELS}"
FARM_BURST = "always"
""")  # fmt: skip
    env = bare_env()
    started = cli("up", str(config), env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        exports = cli("env", str(config), env=env).stdout
        pairs = [line.removeprefix("export ").split("=", 1) for line in exports.splitlines()]
        farm_env = {**env, **{k: shlex.split(v)[0] for k, v in pairs}}
        assert f"cloud=comfyv2+http://127.0.0.1:{ports[1]}" in farm_env["FARM_NODES"]
        scene = tmp_path / "scene.json"
        scene.write_text(json.dumps({"id": "up-v2", "quality": "final", "shots": [
            {"id": "intro", "action_description": "a paper kite", "width": 256, "height": 160,
             "frames": 9, "seed": 1, "backend": "comfyui"}]}))  # fmt: skip
        assert cli("submit", str(scene), env=farm_env).returncode == 0

        def done() -> bool:
            out = cli("status", "--json", "up-v2", env=farm_env)
            return out.returncode == 0 and json.loads(out.stdout)["state"] == "done"

        wait_for(done, 120, "scene up-v2 done")
        jobs = requests.get(f"http://127.0.0.1:{ports[1]}/api/v2/jobs", timeout=10).json()["jobs"]
        assert [j["status"] for j in jobs] == ["succeeded"]
    finally:
        cli("down", str(config), env=env)


# -- a farm whose GPU node is a Comfy API v2 node -----------------------------------------------


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """One comfyv2 node ("cloud": the emulator behind comfy-api-proxy), short leases, and a
    supervisor that restarts a killed worker as `farm up` does."""
    root = tmp_path_factory.mktemp("v2farm")
    profile = root / "cloud.json"
    profile.write_text(json.dumps(PROFILE))
    env = {"FARM_LEASE_TTL": "2", "FARM_START_TIMEOUT": "3", "FARM_NODE_IDLE_TIMEOUT": "30",
           "FARM_HTTP_TIMEOUT": "5", "FARM_CACHE": "0", "FARM_CLOUD_MODELS": MODELS,
           "FARM_CLOUD_CONCURRENCY": "2", "FARM_CLOUD_PRICE": "0.0004",
           "FARM_BURST": "always"}  # its only node: cloud nodes take shots by FARM_BURST  # fmt: skip
    farm = LocalFarm(root, [EmulatedNode("cloud", profile, kind="comfyv2")], heartbeat=0.5,
                     node_ttl=8.0, extra_env=env, supervise=True, cloud_token=TOKEN)  # fmt: skip
    with farm, pointed_at(farm.env()):
        yield farm
        gc.collect()


@pytest.fixture
def rt(farm):
    requests.put(farm.emulator_url("cloud") + "/emulator/faults", json={}, timeout=5)
    runtime = get_runtime()
    patient(runtime.redis)
    wait_for(lambda: any(r["alive"] for r in runtime.registry.records()), 60, "the node alive")
    return runtime


def farm_jobs(farm: LocalFarm) -> list[dict]:
    resp = requests.get(farm.node_url("cloud") + "/api/v2/jobs", params={"limit": 100},
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)  # fmt: skip
    return resp.json()["jobs"]


def farm_runs(farm: LocalFarm) -> list[dict]:
    return requests.get(farm.emulator_url("cloud") + "/emulator/jobs", timeout=5).json()["jobs"]


def assert_no_token_in_redis(farm: LocalFarm) -> None:
    """No key or value anywhere in Redis holds the API key (task messages, results,
    events, node records, shot records)."""
    client = farm._redis()  # bytes, as stored
    needle, seen = TOKEN.encode(), 0
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [x for kv in client.hgetall(key).items() for x in kv]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "stream":
            values = [x for _, f in client.xrange(key) for kv in f.items() for x in kv]
        else:
            values = []
        seen += 1
        assert needle not in key and not any(needle in (v or b"") for v in values), key
    assert seen > 10
    client.close()


def test_a_scene_renders_through_a_v2_node_and_the_key_stays_out_of_logs_and_redis(rt, farm):
    record = next(r for r in rt.registry.records() if r["name"] == "cloud")
    assert record["kind"] == "comfyv2" and record["cloud"] == {
        "concurrency": 2,
        "price_per_second": 0.0004,
    }
    assert len(pool_children(farm.procs["worker-cloud"].pid)) == 2  # FARM_CLOUD_CONCURRENCY
    before = {j["id"] for j in farm_jobs(farm)}
    base = {"backend": "comfyui", "width": 320, "height": 192, "frames": 17}
    path = [{"x": 40, "y": 150}, {"x": 160, "y": 110}, {"x": 280, "y": 60}]
    scene = parse_scene({"id": "v2-scene", "quality": "final", "shots": [
        {"id": "t2v", "action_description": "a lighthouse", "seed": 1, **base},
        {"id": "t2v2", "action_description": "a harbour", "seed": 2, **base},
        {"id": "i2v", "action_description": "the meadow at dawn", "start_image": str(IMAGE),
         "seed": 3, **base},
        {"id": "ati", "action_description": "a fox runs", "start_image": str(IMAGE),
         "trajectories": [path], "seed": 4, **base},
    ]})  # fmt: skip
    enqueue(scene, rt)
    wait_for(lambda: any(s.get("state") == "running" for s in rt.state.shots(scene.id)), 60,
             "a shot running")  # fmt: skip
    assert_no_token_in_redis(farm)  # with task messages in flight
    status = wait_done(rt, scene.id, timeout=180)
    assert status["state"] == "done", status
    assert probe(Path(status["outputs"]["video"])).frames == 4 * 17
    new = [j for j in farm_jobs(farm) if j["id"] not in before]
    assert sorted(j["status"] for j in new) == ["succeeded"] * 4  # one v2 job per shot
    workflows = {rt.state.shot(scene.id, sid)["job"]["workflow"] for sid in ("i2v", "ati")}
    assert workflows == {"wan22_i2v", "wan_ati"}  # a start image; a trajectory too
    for shot in rt.state.shots(scene.id):
        (done,) = [a for a in shot["attempt_log"] if a["state"] == "done"]
        assert done["node"] == "cloud" and done["backend_job_id"] in {j["id"] for j in new}
    assert_no_token_in_redis(farm)
    for path in [*farm.logs.rglob("*"), *farm.storage.rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for proc in farm.procs.values():  # nor on any farm process's command line
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert TOKEN.encode() not in cmdline or b"comfy_api_proxy" in cmdline


def test_a_killed_worker_follows_the_same_v2_job(rt, farm):
    """`kill -9` of the node worker mid-render, restarted a second later: the shot,
    published again when its lease lapses, finds the v2 job (recorded beside the attempt's
    outputs) and follows it; the proxy lists one job and the emulator ran it once."""
    requests.put(farm.emulator_url("cloud") + "/emulator/faults", json=SLOW, timeout=5)
    before = {j["id"] for j in farm_jobs(farm)}
    scene = t2v_scene("v2-kill", 1, seed=7, width=640, height=352, frames=33)
    enqueue(scene, rt)
    wait_for(lambda: any((s.get("progress") or 0) >= 0.3 for s in rt.state.shots(scene.id)), 90,
             "the shot past 30%")  # fmt: skip
    proc = farm.procs["worker-cloud"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wait_for(lambda: farm.procs["worker-cloud"] is not proc, 30, "the worker restarted")
    status = wait_done(rt, scene.id, timeout=120)
    assert status["state"] == "done", status
    new = [j for j in farm_jobs(farm) if j["id"] not in before]
    assert len(new) == 1 and new[0]["status"] == "succeeded"
    assert [r["job_id"] for r in farm_runs(farm)].count(new[0]["id"]) == 1
    shot = rt.state.shot(scene.id, "s0")
    assert [(a["state"], a["node"]) for a in shot["attempt_log"]] == [("done", "cloud")]
    assert json.loads(next(farm.storage.rglob(RECORD)).read_text())  # recorded beside the outputs
