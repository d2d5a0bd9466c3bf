"""The farm's secure defaults, each proved against the real thing (docs/security.md):
JSON-only messages and results on the session farm's Celery workers, the submission size
limit of `farm submit`, the download cap and contained output names on live emulated
ComfyUI and WanGP nodes. Tests that already prove a default elsewhere are listed in
docs/security.md, not repeated here."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis as redis_lib
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import loads

from farm.backends.comfyui import ComfyClient, ComfyUIBackend, output_items
from farm.backends.wan2gp import RECORD, Wan2GPBackend, WanClient, collect
from farm.errors import BadNodeResponse
from farm.nodes import node_queue
from farm.scene import parse_scene
from farm.settings import Settings
from farm.submit import enqueue

from .conftest import EXAMPLES, REPO
from .test_backend_comfyui import small_job
from .test_backend_wan2gp import job as wan_job
from .test_comfy_contract import Recorder, graph
from .test_e2e import wait_done

PICKLE = "application/x-python-serialize"
REFUSED = "Refusing to deserialize untrusted content of type pickle"


class Marker:
    """Unpickling this makes the folder ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_the_marker_payload_is_live(tmp_path):
    """The payload the tests below send does act when unpickled, so its absence means
    the farm never unpickled it."""
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(((Marker(marker),), {}, {})))
    assert marker.is_dir()


# -- JSON only --------------------------------------------------------------------------


def test_celery_accepts_json_only_in_the_config_and_in_every_running_worker(farm_cluster):
    from farm.celery_app import app, celery_config

    conf = celery_config(Settings.from_env({}))
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    replies = app.control.inspect(timeout=2).conf() or {}
    names = set(replies)
    assert any(n.startswith("node-a@") for n in names) and any(n.startswith("cpu") for n in names)
    for name, worker_conf in replies.items():
        assert worker_conf["accept_content"] == ["json"], name
        assert worker_conf["result_accept_content"] == ["json"], name
        assert worker_conf["task_serializer"] == worker_conf["result_serializer"] == "json", name
    assert app.backend.accept == {"application/json"}


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def wait_log(path: Path, start: int, needle: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with path.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in {path} after {timeout:g}s:\n{text[-3000:]}")


def test_a_pickled_task_is_refused_unread_and_the_workers_go_on(farm_cluster, rt, tmp_path):
    """Anyone who can write to Redis could queue a pickle: the node worker and the CPU
    worker drop it without loading it, and then render and assemble a scene as before."""
    from farm.celery_app import app

    settings = farm_cluster.settings()
    client = redis_lib.Redis.from_url(settings.redis_url)
    sent = {}
    for queue, task, log in [
        (node_queue("node-a"), "farm.preview", "worker-node-a.log"),
        (settings.cpu_queue, "farm.score_scene", "worker-cpu.log"),
    ]:
        marker = tmp_path / f"unpickled-{uuid.uuid4().hex}"
        path = farm_cluster.logs / log
        start = log_size(path)
        task_id = f"pickle-{uuid.uuid4()}"
        app.send_task(task, args=[Marker(marker)], queue=queue, serializer="pickle",
                      task_id=task_id)  # fmt: skip
        text = wait_log(path, start, marker.name)
        assert REFUSED in text and "has been ignored and discarded" in text, text[-2000:]
        sent[queue] = (marker, task_id)
    time.sleep(1)  # what a worker would do with it, it has done by now
    for queue, (marker, task_id) in sent.items():
        assert not marker.exists(), queue
        # rejected, not requeued nor left unacknowledged
        for key in client.scan_iter(f"{queue}*"):
            if client.type(key) == b"list":
                assert not any(task_id.encode() in m for m in client.lrange(key, 0, -1)), key
        assert not any(task_id.encode() in m for m in client.hvals("unacked"))
    client.close()
    for name in ("worker-node-a", "worker-cpu"):
        assert farm_cluster.procs[name].poll() is None, name
    # the same workers go on: an image-to-video ComfyUI shot only node-a can render,
    # scored and assembled on the CPU worker
    scene = parse_scene({"id": f"json-only-{uuid.uuid4().hex[:8]}", "quality": "preview",
                         "shots": [{"id": "s1", "action_description": "the meadow at dawn",
                                    "start_image": str(EXAMPLES / "images" / "meadow.jpg"),
                                    "backend": "comfyui", "width": 256, "height": 160,
                                    "frames": 9, "seed": 5}]})  # fmt: skip
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", status
    assert status["shots"][0]["node"] == "node-a"
    assert Path(status["outputs"]["video"]).is_file()


def test_the_result_backend_never_unpickles(farm_cluster, tmp_path):
    """A result stored as a pickle (by anyone who can write to Redis) is refused when read."""
    from celery.result import AsyncResult

    from farm.celery_app import app

    marker = tmp_path / "unpickled"
    task_id = f"pickle-{uuid.uuid4()}"
    meta = {"status": "SUCCESS", "result": Marker(marker), "task_id": task_id,
            "traceback": None, "children": []}  # fmt: skip
    blob = pickle.dumps(meta)
    client = redis_lib.Redis.from_url(farm_cluster.settings().redis_url)
    client.set(app.backend.get_key_for_task(task_id), blob, ex=60)
    client.close()
    with pytest.raises(DecodeError):  # read as JSON, the only content it accepts
        AsyncResult(task_id, app=app).get(timeout=2)
    # even a result that names its content type as pickle is refused
    with pytest.raises(ContentDisallowed):
        loads(blob, PICKLE, "binary", accept=app.backend.accept)
    assert not marker.exists()


def test_no_farm_module_uses_pickle():
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|dill|shelve|marshal)\b", re.M)
    users = [p.relative_to(REPO) for p in (REPO / "farm").rglob("*.py")
             if pattern.search(p.read_text())]  # fmt: skip
    assert users == []


# -- size limits --------------------------------------------------------------------------


def test_farm_submit_refuses_an_oversize_submission_before_sending(tmp_path):
    """Over FARM_SUBMISSION_MAX_BYTES, `farm submit` refuses (exit 2) before it even
    connects (this Redis URL answers nothing, which would be exit 3)."""
    env = {**os.environ, "FARM_REDIS_URL": "redis://127.0.0.1:9/0",
           "FARM_SUBMISSION_MAX_BYTES": "20000"}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "farm", "submit", str(EXAMPLES / "demo_scene.json")],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert re.search(r"over the limit of 20000 \(FARM_SUBMISSION_MAX_BYTES\)", out.stderr)


def test_the_backends_take_their_download_cap_from_the_settings(farm_cluster, tmp_path):
    """FARM_MAX_DOWNLOAD_MB (4096 by default) reaches both backends' renders: with a cap
    of 0 a real render is refused and leaves no file in the attempt folder."""
    assert Settings.from_env({}).max_download_bytes == 4096 * 1024 * 1024
    capped = replace(farm_cluster.settings(), max_download_mb=0)
    comfy = ComfyUIBackend(farm_cluster.node_url("node-a"), capped)
    with pytest.raises(BadNodeResponse, match=r"0-byte download cap \(FARM_MAX_DOWNLOAD_MB\)"):
        comfy.render(small_job(scene_id=f"cap{uuid.uuid4().hex[:6]}"), tmp_path / "c",
                     Recorder().progress)  # fmt: skip
    assert list((tmp_path / "c").iterdir()) == []
    for shared in (None, False):  # copied from a shared folder, or downloaded
        wan = Wan2GPBackend(farm_cluster.node_url("node-w"), capped, shared=shared)
        out = tmp_path / f"w-{shared}"
        with pytest.raises(BadNodeResponse, match="download cap"):
            wan.render(wan_job(), out, Recorder().progress)
        assert [p.name for p in out.iterdir()] == [RECORD]  # the job record only


# -- file names from nodes ----------------------------------------------------------------


def test_a_comfyui_output_name_with_folders_is_written_flat(farm_cluster, tmp_path):
    """ComfyUI serves a /view file name with folders by its last part; the farm writes it
    as a plain name inside the attempt folder and creates no folder from it."""
    client = ComfyClient(farm_cluster.node_url("node-a"), 10.0, 10.0)
    entry = client.run(graph(), f"names-{uuid.uuid4()}", Recorder().progress)
    [item] = output_items(entry)
    hostile = {**item, "filename": f"etc/cron.d/{item['filename']}"}
    out = tmp_path / "attempt"
    [file] = client.collect({"outputs": {"9": {"videos": [hostile]}}}, out, 10 << 20)
    assert file == out / item["filename"] and file.stat().st_size > 1000
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [
        Path("attempt"),
        Path("attempt") / item["filename"],
    ]


def test_a_wangp_output_path_that_climbs_is_downloaded_inside_the_folder(farm_cluster, tmp_path):
    """A WanGP node names its outputs by path; a path climbing out ('../../') is fetched
    through the gallery and written under its plain name inside the attempt folder."""
    url = farm_cluster.node_url("node-w")
    client = WanClient(url, 10)
    first = tmp_path / "first"
    Wan2GPBackend(url, farm_cluster.settings(), client=client).render(
        wan_job(), first, Recorder().progress
    )
    result = client.get_job(json.loads((first / RECORD).read_text())["job_id"])["result"]
    [item] = result["gallery_items"]
    name = Path(item["path"]).name
    climbing = f"../../../{name}"
    hostile = {"generated_files": [climbing], "gallery_items": [{**item, "path": climbing}]}
    out = tmp_path / "deep" / "attempt"
    files = collect(client, hostile, out, 10 << 20, shared=False)
    assert files == [out / name] and files[0].read_bytes() == (first / name).read_bytes()
    assert sorted(p.relative_to(tmp_path / "deep") for p in (tmp_path / "deep").rglob("*")) == [
        Path("attempt"),
        Path("attempt") / name,
    ]
    assert not (tmp_path / name).exists()
