"""`farm up` / `farm down` / `farm ps` and the Flower it runs, as an operator uses them: real
subprocesses from a config file, a scene submitted with `farm submit`, Flower looked at in
headless Chromium."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from farm.local import free_port

from .cdp import Browser, chromium
from .conftest import NODES, REPO

ARTIFACTS = Path(os.environ.get("FARM_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))


def farm(*args: str, env: dict[str, str] | None = None, timeout: float = 180,
         cwd: Path | None = None):  # fmt: skip
    return subprocess.run([sys.executable, "-m", "farm", *args], capture_output=True,
                          text=True, env=env or os.environ, timeout=timeout, cwd=cwd)  # fmt: skip


def bare_env() -> dict[str, str]:
    """This environment without any FARM_* variable: a shell nobody pointed at a farm."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}


def write_config(folder: Path, **ports: int) -> Path:
    path = folder / "farm.toml"
    path.write_text(f"""
root = "root"
stop_timeout = 30
[redis]
port = {ports["redis"]}
[[node]]
name = "gpu-a"
emulate = "comfyui"
profile = "{NODES / "node-a.json"}"
port = {ports["gpu"]}
[[node]]
name = "wan-a"
emulate = "wan2gp"
profile = "{NODES / "wan-a.json"}"
port = {ports["wan"]}
[cpu]
concurrency = 1
[flower]
port = {ports["flower"]}
[web]
port = {ports["web"]}
[exporter]
port = {ports["exporter"]}
[env]
FARM_HEARTBEAT = "1"
FARM_NODE_TTL = "6"
""")
    return path


def ps(config: Path) -> dict:
    out = farm("ps", "--json", str(config))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout:g}s")


@pytest.fixture(scope="module")
def upfarm(tmp_path_factory):
    """A farm run by `farm up` (2 emulated nodes, CPU worker, ingest, Flower, exporter),
    with one scene rendered through `farm submit`."""
    folder = tmp_path_factory.mktemp("up")
    ports = {k: free_port() for k in ("redis", "gpu", "wan", "flower", "web", "exporter")}
    config = write_config(folder, **ports)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    started = farm("up", str(config), env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        exports = farm("env", str(config), env=env).stdout
        pairs = [line.removeprefix("export ").split("=", 1) for line in exports.splitlines()]
        farm_env = {**env, **{k: shlex.split(v)[0] for k, v in pairs}}
        scene = folder / "scene.json"
        scene.write_text(json.dumps({"id": "up-scene", "quality": "final", "shots": [
            {"id": "intro", "action_description": "a paper kite", "width": 256, "height": 160,
             "frames": 9, "seed": 1, "backend": "comfyui"}]}))  # fmt: skip
        sent = farm("submit", str(scene), env=farm_env)
        assert sent.returncode == 0, sent.stderr

        def done():
            out = farm("status", "--json", "up-scene", env=farm_env)
            return out.returncode == 0 and json.loads(out.stdout)["state"] == "done"

        wait(done, 120, "scene up-scene done")
        yield {"config": config, "folder": folder, "ports": ports, "env": farm_env,
               "login": (folder / "root" / "flower" / "login").read_text().strip()}  # fmt: skip
    finally:
        farm("down", str(config), env=env)


def test_up_starts_every_service_and_logs_each_in_one_folder(upfarm):
    state = ps(upfarm["config"])
    names = set(state["services"])
    assert names == {"redis", "emulator-gpu-a", "emulator-wan-a", "worker-gpu-a",
                     "worker-wan-a", "cpu-0", "ingest-0", "flower", "web", "exporter"}  # fmt: skip
    assert all(s["running"] for s in state["services"].values())
    logs = upfarm["folder"] / "root" / "logs"
    assert {p.stem for p in logs.glob("*.log")} >= names | {"supervisor"}
    assert "celery@" in (logs / "worker-gpu-a.log").read_text() or (
        "gpu-a@" in (logs / "worker-gpu-a.log").read_text()
    )
    # the generated Flower login is readable by its owner only
    login = upfarm["folder"] / "root" / "flower" / "login"
    assert login.stat().st_mode & 0o077 == 0


def test_farm_web_runs_with_the_login_farm_up_made(upfarm):
    base = f"http://127.0.0.1:{upfarm['ports']['web']}"
    assert requests.get(f"{base}/scenes", timeout=5).status_code == 401
    login = upfarm["folder"] / "root" / "web" / "login"
    assert login.stat().st_mode & 0o077 == 0
    user, password = login.read_text().strip().split(":", 1)
    session = requests.Session()
    page = session.post(f"{base}/login", data={"user": user, "password": password}, timeout=10)
    assert page.status_code == 200 and 'data-scene="up-scene"' in page.text


def test_flower_requires_its_login(upfarm):
    base = f"http://127.0.0.1:{upfarm['ports']['flower']}"
    assert requests.get(f"{base}/workers", timeout=5).status_code == 401
    assert requests.get(f"{base}/workers", auth=("farm", "wrong"), timeout=5).status_code == 401
    user, password = upfarm["login"].split(":", 1)
    assert requests.get(f"{base}/api/workers", auth=(user, password), timeout=10).ok
    # Flower's own Prometheus figures stay at /metrics, with the render-sized buckets
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert 'flower_task_runtime_seconds_bucket{le="1800.0"' in metrics


@pytest.mark.skipif(
    chromium() is None, reason="chromium is not installed (`make test` installs it)"
)
def test_flower_in_chromium_shows_a_worker_per_node_and_the_finished_shot(upfarm):
    base = f"http://127.0.0.1:{upfarm['ports']['flower']}"
    user, password = upfarm["login"].split(":", 1)
    with Browser((user, password)) as browser:
        browser.open(f"{base}/workers")
        browser.wait_text("gpu-a@", "wan-a@", "cpu-0@")
        assert browser.auth_challenges >= 1  # it had to log in
        # the server renders the table, then Flower's script draws a badge per live worker
        # (plus the "Online workers" label): wait for the script, which lags under load
        browser.wait_until(lambda text: text.count("Online") >= 4, "an Online badge per worker")
        browser.screenshot(ARTIFACTS / "flower-workers.png")
        browser.open(f"{base}/tasks")
        text = browser.wait_text("scene=up-scene shot=intro", "SUCCESS", "farm.score_scene")
        assert "scene=up-scene run=1" in text  # the scene's body tasks
        shot_rows = [line for line in text.splitlines() if "shot=intro" in line]
        assert shot_rows, text
        # SUCCESS says the task ended; the Result column says what became of the shot
        assert any("shot done (gate" in line for line in shot_rows), shot_rows
        shot = ARTIFACTS / "flower-tasks.png"
        browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    # a wrong login gets nothing
    with Browser(("farm", "wrong")) as browser:
        browser.open(f"{base}/workers")
        browser.pump(2)
        assert "gpu-a@" not in browser.text()


def test_flower_keeps_its_history_across_a_restart(upfarm):
    base = f"http://127.0.0.1:{upfarm['ports']['flower']}"
    auth = tuple(upfarm["login"].split(":", 1))
    before = requests.get(f"{base}/api/tasks", auth=auth, timeout=10).json()
    assert before
    old = ps(upfarm["config"])["services"]["flower"]["pid"]
    os.killpg(old, signal.SIGTERM)  # Flower saves its state as it stops

    def back():
        svc = ps(upfarm["config"])["services"]["flower"]
        if svc["pid"] == old or not svc["running"]:
            return None
        try:
            return requests.get(f"{base}/api/tasks", auth=auth, timeout=5).json()
        except requests.RequestException:
            return None

    after = wait(back, 60, "Flower restarted")
    assert set(before) <= set(after)


def test_a_service_that_dies_is_restarted(upfarm):
    config = upfarm["config"]
    old = ps(config)["services"]["worker-gpu-a"]
    os.killpg(old["pid"], signal.SIGKILL)

    def restarted():
        svc = ps(config)["services"]["worker-gpu-a"]
        return svc if svc["pid"] != old["pid"] and svc["running"] else None

    svc = wait(restarted, 30, "worker-gpu-a restarted")
    assert svc["restarts"] == old["restarts"] + 1
    log = (upfarm["folder"] / "root" / "logs" / "supervisor.log").read_text()
    assert f"worker-gpu-a (pid {old['pid']}) exited with code -9" in log
    # and the restarted worker serves its node again
    out = farm("nodes", "--json", env=upfarm["env"])
    wait(lambda: any(n["name"] == "gpu-a" and n["alive"]
                     for n in json.loads(farm("nodes", "--json", env=upfarm["env"]).stdout)),
         30, "gpu-a alive")  # fmt: skip
    assert out.returncode == 0


def test_the_cli_without_farm_settings_finds_the_farm_farm_up_runs(upfarm, tmp_path):
    from farm.running import running_farms

    folder, env = upfarm["folder"], bare_env()
    assert farm("ps", str(upfarm["config"])).returncode == 0  # never ask this machine's Redis
    # from the config's folder (./farm.toml): status and nodes answer from the running farm,
    # not from the default Redis
    out = farm("status", "--json", "up-scene", env=env, cwd=folder)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "done"
    out = farm("nodes", "--json", env=env, cwd=folder)
    assert out.returncode == 0, out.stderr
    assert {"gpu-a", "wan-a"} <= {n["name"] for n in json.loads(out.stdout)}
    # from any other folder, farm env prints the running farm's settings, not those of
    # deploy/farm.toml
    farms = running_farms()
    assert str(upfarm["config"]) in [f["config"] for f in farms]
    out = farm("env", env=env, cwd=tmp_path)
    if len(farms) == 1:
        assert out.returncode == 0, out.stderr
        redis_url = f"redis://127.0.0.1:{upfarm['ports']['redis']}/0"
        assert f"export FARM_REDIS_URL={redis_url}\n" in out.stdout
        assert f"FARM_STORAGE={folder / 'root' / 'storage'}" in out.stdout
        ps = farm("ps", "--json", env=env, cwd=tmp_path)
        assert json.loads(ps.stdout)["config"] == str(upfarm["config"])
    else:  # other farms run on this machine too (another test session): name one
        assert out.returncode == 3 and out.stdout == ""
        assert "several farms run" in out.stderr and str(upfarm["config"]) in out.stderr


def test_up_twice_is_refused_and_down_stops_only_what_up_started(upfarm, tmp_path):
    config = upfarm["config"]
    again = farm("up", str(config))
    assert again.returncode == 3 and "already up" in again.stderr
    # a process farm up did not start, that looks like one of its own
    bystander = subprocess.Popen([sys.executable, "-m", "farm", "emulate", "comfyui", "--port",
                                  str(free_port()), "--profile", str(NODES / "node-a.json"),
                                  "--data", str(tmp_path / "bystander")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        pids = {n: s["pid"] for n, s in ps(config)["services"].items()}
        out = farm("down", "--json", str(config))
        assert out.returncode == 0, out.stderr
        assert set(json.loads(out.stdout)["stopped"]) == set(pids)
        for name, pid in pids.items():
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), name
        assert bystander.poll() is None  # still running
        assert farm("ps", str(config)).returncode == 3
        second = farm("down", str(config))
        assert second.returncode == 0 and "nothing to stop" in second.stdout
    finally:
        bystander.terminate()
        bystander.wait(timeout=10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_bad_config_names_the_field_and_starts_nothing(tmp_path):
    config = tmp_path / "farm.toml"
    config.write_text('[[node]]\nname = "gpu-a"\nemulate = "comfyui"\nprofile = "nope.json"\n')
    out = farm("up", str(config))
    assert out.returncode == 2
    assert "node[0].profile" in out.stderr and "nope.json" in out.stderr
    assert not (tmp_path / "var").exists()
    config.write_text(
        '[[node]]\nname = "gpu-a"\nurl = "http://127.0.0.1:9"\n[cpu]\nworkers = "two"\n'
    )
    out = farm("up", str(config))
    assert out.returncode == 2 and "cpu.workers" in out.stderr


def test_env_for_a_farm_that_is_down_says_so_and_prints_no_exports(tmp_path):
    ports = {k: free_port() for k in ("redis", "gpu", "wan", "flower", "web", "exporter")}
    config = write_config(tmp_path, **ports)
    for args, cwd in (((str(config),), None), ((), tmp_path)):  # named, and ./farm.toml
        out = farm("env", *args, env=bare_env(), cwd=cwd)
        assert out.returncode == 3, out.stdout
        assert out.stdout == ""
        assert "no `farm up` is running for" in out.stderr and str(config) in out.stderr
        assert f"farm up {config}" in out.stderr


def test_up_refuses_ports_other_programs_hold_and_starts_nothing(tmp_path):
    ports = {k: free_port() for k in ("redis", "gpu", "wan", "flower", "web", "exporter")}
    config = write_config(tmp_path, **ports)
    # a foreign web server on the ComfyUI node's port (it answers 404 to the emulator's
    # routes), and a program that only listens on the Flower port
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(ports["gpu"]), "--bind",
                            "127.0.0.1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    listener = socket.create_server(("127.0.0.1", ports["flower"]))
    try:
        wait(lambda: _answers(f"http://127.0.0.1:{ports['gpu']}/"), 20, "http.server up")
        out = farm("up", str(config), env=bare_env(), timeout=120)
        assert out.returncode == 3, out.stdout + out.stderr
        assert f"port {ports['gpu']} (node gpu-a) is taken" in out.stderr
        assert "set node[0].port to a free port" in out.stderr
        assert f"port {ports['flower']} (Flower) is taken" in out.stderr
        assert "set flower.port to a free port" in out.stderr
        assert "wan-a" not in out.stderr and "Redis" not in out.stderr  # free ports: not named
        assert not (tmp_path / "root" / "run" / "state.json").exists()
        assert farm("ps", str(config)).returncode == 3
        from farm.ports import port_taken

        assert not port_taken(ports["redis"])  # no Redis was started
    finally:
        listener.close()
        web.terminate()
        web.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False
