"""`farm flower`: Flower never starts open by accident, and shows farm tasks by scene and
shot. (Flower run by `farm up`, logged into in Chromium, is in tests/test_up.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import requests

from farm.flower import describe_args, flower_env
from farm.local import free_port
from farm.settings import Settings


def flower(*args: str, env: dict[str, str]):
    return subprocess.Popen([sys.executable, "-m", "farm", "flower", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_flower_refuses_to_start_without_a_login(farm_cluster, tmp_path):
    env = {**os.environ, **farm_cluster.env(), "FARM_FLOWER_DB": str(tmp_path / "f.db")}
    env.pop("FARM_FLOWER_AUTH", None)
    port = free_port()
    proc = flower("--port", str(port), env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert "FARM_FLOWER_AUTH=user:password" in err and "--no-auth" in err
    assert not listening(port)
    for bad in ("operator", "op: secret", "op:pw,,x"):
        proc = flower("--port", str(port), env={**env, "FARM_FLOWER_AUTH": bad})
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3 and "FARM_FLOWER_AUTH" in err, bad
        assert "secret" not in err
    both = flower("--port", str(port), "--no-auth", env={**env, "FARM_FLOWER_AUTH": "a:b"})
    _, err = both.communicate(timeout=60)
    assert both.returncode == 3 and "choose one" in err


def test_flower_runs_open_only_when_told(farm_cluster, tmp_path):
    env = {**os.environ, **farm_cluster.env(), "FARM_FLOWER_DB": str(tmp_path / "f.db")}
    env.pop("FARM_FLOWER_AUTH", None)
    port = free_port()
    proc = flower("--port", str(port), "--no-auth", env=env)
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.2)
        assert requests.get(f"http://127.0.0.1:{port}/workers", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert (tmp_path / "f.db.dat").exists() or (tmp_path / "f.db").exists()  # state saved


def test_task_arguments_are_shown_by_scene_and_shot():
    assert describe_args("farm.final", "('s1', 'intro', 'b0')") == "scene=s1 shot=intro binding=b0"
    assert (
        describe_args("farm.score_shot", "['s1', 'intro', 't2']")
        == "scene=s1 shot=intro scoring=t2"
    )
    assert describe_args("farm.score_scene", "({'video': 'v.mp4'}, 's1')") == "scene=s1"
    body = "({'video': 'v.mp4'}, 's1', 2)"  # a body task of the scene's second run
    assert describe_args("farm.score_scene", body) == "scene=s1 run=2"
    record = "({'scene_id': 's1', 'shot_id': 'intro', 'state': 'failed'},)"
    assert describe_args("farm.close_shot", record) == "scene=s1 shot=intro"
    cut = "([{'scene_id': 's1', 'shot_id': 'a', 'outputs': {'final': '/x..."
    assert describe_args("farm.assemble_scene", cut) == "scene=s1"
    assert describe_args("celery.chord_unlock", "('x',)") is None
    assert describe_args("farm.final", "('only-one',)") is None


def test_the_task_list_shows_each_tasks_result_where_a_shot_says_what_became_of_it():
    env = flower_env(Settings.from_env({}), no_auth=True)
    columns = env["FLOWER_TASKS_COLUMNS"].split(",")
    assert columns.index("state") < columns.index("result") < columns.index("args")
