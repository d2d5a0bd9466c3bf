"""The ComfyUI client against a server that chooses every prompt id itself (ComfyUI of
March 2024; the emulator's ``"api": "2024"``): the farm's tag in ``extra_data`` lets a
fresh client find, follow, cancel and collect the job, discovery reads the model files
from the loaders, and the server speaks that generation's messages.

tests/test_real_comfyui.py runs the same client against the real ComfyUI of that time.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import requests
import websocket

from farm.backends import comfyui as comfy
from farm.backends.comfyui import ComfyClient, ComfyUIBackend
from farm.errors import JobCancelled
from farm.local import wait_for
from farm.settings import Settings

from .test_comfy_contract import PROFILE, REPO, T2V, Recorder, Server, graph, long_graph


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("legacy"), {**PROFILE, "api": "2024"}).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def fresh():
    """Each test starts as a new worker process does: nothing learnt about the server."""
    comfy.CLIENT_IDS.clear()
    yield


def client(server) -> ComfyClient:
    return ComfyClient(server.url, 10.0, 10.0)


def tagged(server, farm_id: str) -> list[str]:
    """The node's ids of every job in its history tagged with ``farm_id``."""
    return [
        node_id
        for node_id, entry in server.history().items()
        if entry["prompt"][3].get(comfy.PROMPT_TAG) == farm_id
    ]


def test_the_node_queues_under_its_own_id_and_the_client_follows_it(server):
    farm_id, rec = str(uuid.uuid4()), Recorder()
    c = client(server)
    entry = c.run(graph(steps=4), farm_id, rec.progress, rec.event)
    assert entry["status"]["status_str"] == "success"
    (node_id,) = tagged(server, farm_id)
    assert node_id != farm_id and c.node_id(farm_id) == node_id
    assert comfy.CLIENT_IDS[server.url] is False
    assert rec.fractions[-1] > 0.8  # progress events of the node's id were followed
    # that generation's messages: no progress registry, no execution_success, no timestamps
    assert "progress_state" not in rec.events and "execution_success" not in rec.events
    messages = entry["status"]["messages"]
    assert [m[0] for m in messages] == ["execution_start", "execution_cached"]
    assert all("timestamp" not in m[1] for m in messages)


def test_a_redelivered_task_follows_the_running_job_by_its_tag(server):
    farm_id, results = str(uuid.uuid4()), []
    g = graph(steps=12)
    first = threading.Thread(
        target=lambda: results.append(client(server).run(g, farm_id, Recorder().progress))
    )
    first.start()
    wait_for(lambda: client(server).queue_state(farm_id) == "running", 10, "the first run")
    comfy.CLIENT_IDS.clear()  # the redelivery runs in a worker that never saw this server
    rec = Recorder()
    second = client(server).run(g, farm_id, rec.progress, rec.event)
    first.join(20)
    assert results and results[0]["status"] == second["status"]
    assert 0.02 not in rec.fractions  # it never submitted
    assert len(tagged(server, farm_id)) == 1


def test_cancel_by_the_farm_s_id_dequeues_or_interrupts_the_node_s_job(server):
    c, running, waiting = client(server), str(uuid.uuid4()), str(uuid.uuid4())
    c.submit(long_graph(), running, "c")
    wait_for(lambda: c.queue_state(running) == "running", 10, "the first job to start")
    c.submit(graph(), waiting, "c")
    fresh = client(server)  # another process: finds both by their tags
    assert fresh.queue_state(waiting) == "pending"
    assert fresh.cancel(waiting) == "removed"
    assert fresh.cancel(running) == "interrupted"
    wait_for(lambda: tagged(server, running), 10, "the interrupted job's history")
    assert tagged(server, waiting) == [] and server.queue()["queue_pending"] == []
    assert fresh.history(running)["status"]["messages"][-1][0] == "execution_interrupted"
    with pytest.raises(JobCancelled):
        fresh.run(graph(), running, Recorder().progress)  # its history says interrupted


def test_discovery_reads_model_files_from_the_loaders_without_a_models_route(server):
    assert requests.get(server.url + "/models", timeout=5).status_code == 404
    settings = Settings.from_env({"FARM_WORKFLOWS": str(REPO / "workflows")})
    info = ComfyUIBackend(server.url, settings).describe()
    assert info["version"] == ""  # that ComfyUI did not say its version
    assert info["models"]["diffusion_models"] == [T2V]
    assert "wan2.2_vae.safetensors" in info["models"]["vae"]
    assert info["workflows"]["wan22_ti2v"]["ok"] is True


def test_preview_frames_come_without_metadata(server):
    """That server never sends the metadata preview (type 4), whatever the client asks."""
    farm_id = str(uuid.uuid4())
    c = client(server)
    ws = websocket.create_connection(f"{server.url.replace('http', 'ws')}/ws?clientId=w",
                                     timeout=10)  # fmt: skip
    try:
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        c.submit(graph(steps=4), farm_id, "w")
        kinds = set()
        while True:
            frame = ws.recv()
            if isinstance(frame, bytes):
                kinds.add(int.from_bytes(frame[:4], "big"))
                continue
            msg = json.loads(frame)
            if msg["type"] == "executing" and msg["data"]["node"] is None:
                break
    finally:
        ws.close()
    assert kinds == {1}
