"""Fault injection on the emulated ComfyUI node: each fault's observable behaviour, the
``faults`` profile field and the emulator-only ``/emulator/faults`` route."""

from __future__ import annotations

import json
import struct
import time

import pytest
import requests
import websocket

from farm.emulators.profile import (
    REFERENCE_VOXELS,
    Fault,
    fault_hits,
    http_500_hits,
    parse_faults,
    parse_profile,
)
from farm.errors import ConfigError

from .test_emulator_comfyui import PROFILE, TIMEOUT, Client, start_emulator, wan_t2v

W, H, L = 160, 96, 9
STEP_S = 0.1  # one sampler step of a W x H x L job on this profile
FAULTY = {**PROFILE, "model_load_s": 0.05, "step_s": STEP_S * REFERENCE_VOXELS / (W * H * L)}
AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    url, proc = start_emulator(root, FAULTY)
    yield url
    proc.terminate()
    assert proc.wait(timeout=10) == 0, (root / "server.log").read_text()


@pytest.fixture
def faults(node):
    """Set the node's faults for one test (cleared after it)."""

    def put(value: dict) -> None:
        resp = requests.put(node + "/emulator/faults", json=value, timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text

    yield put
    put({})


def graph(steps: int = 4) -> dict:
    return wan_t2v(width=W, height=H, length=L, steps=steps)


def progress_times(client: Client, prompt_id: str) -> list[float]:
    """Arrival times of the prompt's ``progress`` events, up to its end."""
    times = []
    while True:
        event = json.loads(_next_text(client.ws))
        if event["type"] == "progress":
            times.append(time.monotonic())
        if event["type"] == "executing" and event["data"]["node"] is None:
            assert event["data"]["prompt_id"] == prompt_id
            return times


def _next_text(ws: websocket.WebSocket) -> str:
    while isinstance(msg := ws.recv(), bytes):
        pass
    return msg


def history(node: str, prompt_id: str) -> dict:
    return requests.get(f"{node}/history/{prompt_id}", timeout=TIMEOUT).json()


def queue(node: str) -> dict:
    return requests.get(node + "/queue", timeout=TIMEOUT).json()


def wait_for_history(node: str, prompt_id: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while not (entry := history(node, prompt_id)):
        assert time.monotonic() < deadline, f"no history for {prompt_id}"
        time.sleep(0.05)
    return entry[prompt_id]


# --- the faults field ------------------------------------------------------------------------


def test_faults_field_defaults_and_errors():
    profile = parse_profile({**PROFILE, "faults": {"slow": {}, "crash": {"at_step": 3}}})
    assert profile.faults == {"slow": Fault(1.0, 1, 4.0), "crash": Fault(1.0, 3, 4.0)}
    assert parse_profile(PROFILE).faults == {}
    bad = {
        "crash": {"rate": 1.5, "at_step": 0},
        "hang": {"at_step": 2.5},
        "slow": {"factor": 0},
        "http_500": {"at_step": 1},
        "ws_drop": [],
        "explode": {},
    }
    with pytest.raises(ConfigError) as err:
        parse_profile({**PROFILE, "faults": bad}, "bad.json")
    text = str(err.value)
    for problem in (
        "faults.crash.rate: got 1.5; use a fraction between 0 and 1",
        "faults.crash.at_step: got 0; use a sampler step >= 1",
        "faults.hang.at_step: got 2.5",
        "faults.slow.factor: got 0; use a slowdown multiplier > 0",
        "faults.http_500.at_step: unknown setting; remove it (known: rate)",
        "faults.ws_drop: got []; use an object such as",
        "faults.explode: unknown fault; use one of crash, hang, slow, http_500, ws_drop",
    ):
        assert problem in text
    with pytest.raises(ConfigError, match="faults: got 'crash'"):
        parse_faults("crash")


def test_fault_decisions_are_deterministic_per_prompt_id():
    faults = parse_faults({"hang": {"rate": 0.5}, "http_500": {"rate": 0.5}})
    ids = [f"job-{i}" for i in range(200)]
    hung = [fault_hits(faults, "hang", i) is not None for i in ids]
    assert hung == [fault_hits(faults, "hang", i) is not None for i in ids]
    assert 60 < sum(hung) < 140
    assert fault_hits(faults, "crash", "job-1") is None
    first = [http_500_hits(faults, i, 1) for i in ids]
    assert first == [http_500_hits(faults, i, 1) for i in ids]
    assert first != [http_500_hits(faults, i, 2) for i in ids]  # each POST decides anew


# --- the admin route -------------------------------------------------------------------------


def test_admin_route_replaces_and_reports_the_faults(node, faults):
    faults({"hang": {"at_step": 2}, "slow": {"rate": 0.5}})
    got = requests.get(node + "/emulator/faults", timeout=TIMEOUT).json()
    assert got == {"hang": {"rate": 1.0, "at_step": 2}, "slow": {"rate": 0.5, "factor": 4.0}}
    bad = requests.put(node + "/emulator/faults", json={"crash": {"rate": 2}}, timeout=TIMEOUT)
    assert bad.status_code == 400 and "faults.crash.rate: got 2" in bad.text
    garbled = requests.put(node + "/emulator/faults", data=b"{", timeout=TIMEOUT)
    assert garbled.status_code == 400 and "not JSON" in garbled.text
    assert requests.get(node + "/emulator/faults", timeout=TIMEOUT).json() == got  # unchanged
    assert requests.get(node + "/api/emulator/faults", timeout=TIMEOUT).status_code == 404


# --- each fault ------------------------------------------------------------------------------


def test_http_500_answers_aiohttps_plain_text_500_and_queues_nothing(node, faults):
    faults({"http_500": {"rate": 1.0}})
    resp = Client(node).submit(graph(), prompt_id="refused")
    assert resp.status_code == 500
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.text == AIOHTTP_500
    assert queue(node) == {"queue_running": [], "queue_pending": []}
    assert history(node, "refused") == {}


def test_http_500_below_rate_one_lets_a_resubmission_through(node, faults):
    half = parse_faults({"http_500": {"rate": 0.5}})
    pid = next(
        f"retry-{i}"
        for i in range(1000)
        if http_500_hits(half, f"retry-{i}", 1) and not http_500_hits(half, f"retry-{i}", 2)
    )
    faults({"http_500": {"rate": 0.5}})
    client = Client(node)
    assert client.submit(graph(steps=1), prompt_id=pid).status_code == 500
    assert client.submit(graph(steps=1), prompt_id=pid).status_code == 200
    client.events(pid)


def test_slow_stretches_every_sampler_step(node, faults):
    client = Client(node)
    client.submit(graph(steps=3), prompt_id="normal-pace")
    normal = sum(_gaps(progress_times(client, "normal-pace")))
    faults({"slow": {"rate": 1.0, "factor": 4.0}})
    client.submit(graph(steps=3), prompt_id="slow-pace")
    # steps are kept on a schedule (one late step shortens the next): compare their sums
    slow = sum(_gaps(progress_times(client, "slow-pace")))
    assert slow >= 0.95 * 2 * 4.0 * STEP_S
    assert slow / normal >= 0.75 * 4.0  # the same steps with the fault off, plus overhead


def _gaps(times: list[float]) -> list[float]:
    assert len(times) == 3
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_hang_stops_at_the_step_until_interrupted(node, faults):
    faults({"hang": {"rate": 1.0, "at_step": 2}})
    client = Client(node)
    client.submit(graph(steps=4), prompt_id="hung")
    events = client.events("hung", until="progress")
    assert events[-1][1]["value"] == 1
    client.ws.settimeout(2.0)
    assert client.ws.recv()[:8] == struct.pack(">II", 1, 1)  # step 1's preview, then
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.ws.recv()  # nothing at all for two seconds
    client.ws.settimeout(TIMEOUT)
    requests.post(node + "/queue", json={"delete": ["hung"]}, timeout=TIMEOUT)  # pending only
    assert [item[1] for item in queue(node)["queue_running"]] == ["hung"]
    assert history(node, "hung") == {}
    assert requests.post(node + "/interrupt", timeout=TIMEOUT).ok  # no body: whatever runs
    (stop,) = [d for t, d in client.events("hung") if t == "execution_interrupted"]
    assert stop["node_id"] == "3" and stop["node_type"] == "KSampler"
    status = history(node, "hung")["hung"]["status"]
    assert status["status_str"] == "error" and status["messages"][-1][0] == "execution_interrupted"
    assert queue(node)["queue_running"] == []


def test_ws_drop_closes_the_clients_sockets_and_the_job_completes(node, faults):
    faults({"ws_drop": {"rate": 1.0, "at_step": 2}})
    client, bystander = Client(node), Client(node)
    client.submit(graph(steps=4), prompt_id="dropped")
    values = []
    while True:
        opcode, frame = client.ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        if opcode == websocket.ABNF.OPCODE_TEXT and json.loads(frame.data)["type"] == "progress":
            values.append(json.loads(frame.data)["data"]["value"])
    assert values == [1]
    assert struct.unpack(">H", frame.data[:2])[0] == 1001  # going away
    entry = wait_for_history(node, "dropped")
    assert entry["status"]["status_str"] == "success"
    (video,) = entry["outputs"]["50"]["images"]
    assert video["filename"].endswith(".mp4")
    seen = [json.loads(_next_text(bystander.ws))["type"] for _ in range(3)]
    assert "progress_state" in seen  # other clients keep their sockets


def test_crash_kills_the_process_mid_job(tmp_path):
    profile = {**FAULTY, "faults": {"crash": {"rate": 1.0, "at_step": 2}}}
    url, proc = start_emulator(tmp_path, profile)
    try:
        client = Client(url)
        client.submit(graph(steps=4), prompt_id="fatal")
        values = []
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while True:
                event = json.loads(_next_text(client.ws))  # "" (a close frame) fails here
                if event["type"] == "progress":
                    values.append(event["data"]["value"])
        assert values == [1]
        assert proc.wait(timeout=10) == 70
    finally:
        proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "emulated fault: crash at step 2 of prompt fatal; exit 70" in log
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/queue", timeout=TIMEOUT)
