"""The deployment files (docs/deploy.md): docker-compose.yml, deploy/Dockerfile and the
systemd units in deploy/systemd/ parse, run real `farm` commands (parsed by the CLI itself,
so an unknown command, option or bad value fails), name only real settings, and give a
render time to finish when a GPU worker is stopped. No Docker needed; `systemd-analyze
verify` runs on the units when the machine has it."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
import yaml

from farm.cli import cli
from farm.settings import Settings, documented_settings, parse_nodes

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
UNITS = REPO / "deploy" / "systemd"
INSTALL = "/opt/farm"  # where the units expect the checkout and its .venv
RENDER_LIMIT = Settings.from_env({}).render_time_limit
SETTINGS = {name for name, _default, _help in documented_settings()}
FARM_VARIABLE = re.compile(r"\bFARM_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


def farm_command(argv: list[str]) -> click.Context:
    """Parse ``farm ...`` as the CLI would, without running it: the leaf command's context
    (its ``info_name`` and ``params``). Unknown commands and options and bad values raise."""
    assert Path(argv[0]).name == "farm", argv
    command: click.Command = cli
    ctx = click.Context(cli, info_name="farm")
    args = list(argv[1:])
    while isinstance(command, click.Group):
        assert args, f"{argv}: no subcommand"
        name, args = args[0], args[1:]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"{argv}: `farm` has no command {name!r}"
        command = sub
        ctx = click.Context(sub, info_name=name, parent=ctx)
    try:
        return command.make_context(ctx.info_name, args, parent=ctx.parent)
    except click.ClickException as exc:
        raise AssertionError(f"{shlex.join(argv)}: {exc.format_message()}") from None


def seconds(duration: str | int) -> float:
    """A compose duration (``65m``, ``1h5m``, ``90s``) or systemd time span (``3900``,
    ``65min``, ``1h 5min``) in seconds."""
    text = str(duration).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"h": 3600, "m": 60, "min": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|h|m|s)", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), text
    return sum(float(n) * units[u] for n, u in parts)


# -- docker-compose.yml -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def farm_env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def gpu_workers(services: dict[str, dict]) -> dict[str, dict]:
    return {name: s for name, s in services.items() if re.fullmatch(r"gpu\d+-worker", name)}


def test_redis_keeps_an_append_only_file_behind_a_password_from_the_environment(services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    # the password is the container's REDIS_PASSWORD ($$ is compose's escaped $), which
    # compose fills from .env and refuses to start without
    assert re.search(r'--requirepass "?\$\$REDIS_PASSWORD\b', command), command
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", redis["environment"]["REDIS_PASSWORD"])
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis  # only the stack reaches it


def test_no_secret_is_written_in_the_compose_file(services):
    """The Redis password and Flower's login come from .env; compose refuses to start
    without them."""
    urls = {n: farm_env(s)["FARM_REDIS_URL"] for n, s in services.items() if "env_file" in s}
    assert len(urls) >= 6
    for name, url in urls.items():
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/\d+", url), name
    assert re.fullmatch(
        r"\$\{FARM_FLOWER_AUTH:\?[^}]+\}", farm_env(services["flower"])["FARM_FLOWER_AUTH"]
    )
    assert re.fullmatch(r"\$\{FARM_WEB_AUTH:\?[^}]+\}", farm_env(services["web"])["FARM_WEB_AUTH"])
    assert all(s["env_file"] == ".env" for n, s in services.items() if n in urls)


@pytest.mark.parametrize(
    "service, command",
    [("flower", "flower"), ("exporter", "exporter"), ("ingest", "ingest"),
     ("cpu-worker", "worker"), ("web", "web")],
)  # fmt: skip
def test_services_run_real_farm_commands(services, service, command, monkeypatch):
    monkeypatch.chdir(REPO)
    ctx = farm_command(services[service]["command"])
    assert ctx.info_name == command
    if service == "cpu-worker":
        assert ctx.params["cpu"] is True
    if service in ("flower", "exporter"):
        assert ctx.params["address"] == "0.0.0.0"  # inside the container; published on loopback
    if service == "web":
        assert ctx.params["host"] == "0.0.0.0" and ctx.params["no_auth"] is False


def test_every_farm_command_in_compose_parses(services, monkeypatch):
    monkeypatch.chdir(REPO)  # node profiles are relative to /opt/farm, the image's WORKDIR
    commands = {n: s["command"] for n, s in services.items() if s.get("command", [""])[0] == "farm"}
    assert len(commands) >= 8
    for argv in commands.values():
        farm_command(argv)  # fails on anything the CLI would refuse


def test_every_gpu_worker_has_its_node_service_and_nodes_entry(services, monkeypatch):
    monkeypatch.chdir(REPO)
    workers = gpu_workers(services)
    assert set(workers) >= {"gpu0-worker", "gpu1-worker"}
    nodes = {n.name: n for n in parse_nodes(farm_env(workers["gpu0-worker"])["FARM_NODES"])}
    kinds = {"comfyui": "comfyui", "wangp": "wan2gp"}
    for name, worker in workers.items():
        node_name = farm_command(worker["command"]).params["node_name"]
        assert node_name == name.removesuffix("-worker")
        node = nodes[node_name]
        url = urlsplit(node.url)
        assert url.hostname in services and url.hostname.startswith(f"{node_name}-"), node.url
        assert node.kind == kinds[url.hostname.rsplit("-", 1)[1]], node
        server = farm_command(services[url.hostname]["command"])
        assert (server.info_name, server.params["host"], server.params["port"]) == (
            node.kind,
            "0.0.0.0",
            url.port,
        )
        assert url.hostname in worker["depends_on"] and "redis" in worker["depends_on"]
        assert farm_env(worker)["FARM_NODES"] == farm_env(workers["gpu0-worker"])["FARM_NODES"]
    assert set(nodes) == {n.removesuffix("-worker") for n in workers}  # no node left unserved


def test_gpu_workers_are_given_longer_than_a_render_to_stop(services):
    for name, worker in gpu_workers(services).items():
        limit = int(farm_env(worker).get("FARM_RENDER_TIME_LIMIT", RENDER_LIMIT))
        assert seconds(worker["stop_grace_period"]) > max(limit, RENDER_LIMIT), name
        assert worker.get("init") is True, name  # SIGTERM reaches the farm process only


def test_workers_and_ingest_share_the_storage_volume(services):
    sharing = ["ingest", "cpu-worker", *gpu_workers(services)]
    for name in sharing:
        service = services[name]
        mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])
        assert mounts.get(farm_env(service)["FARM_STORAGE"]) == "storage", name


def test_only_flower_web_and_the_exporter_are_published_and_on_loopback(services):
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"flower", "web", "exporter"}
    assert all(str(p).startswith("127.0.0.1:") for ports in published.values() for p in ports)


def test_every_farm_variable_in_the_deploy_files_is_a_setting():
    files = [COMPOSE, DOCKERFILE, *UNITS.glob("*.service")]
    named = {v for f in files for v in FARM_VARIABLE.findall(f.read_text())}
    assert named and named <= SETTINGS, named - SETTINGS


# -- deploy/Dockerfile ------------------------------------------------------------------


def test_the_image_is_slim_has_ffmpeg_and_runs_as_a_user():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm\b", text, re.M)
    assert re.search(r"apt-get install[^\n]*\bffmpeg\b", text)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(rf"useradd\b[^\n]*\b{re.escape(users[-1])}\b", text)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored  # secrets and history stay out of images


# -- systemd units ----------------------------------------------------------------------

UNIT_FILES = sorted(UNITS.glob("*.service"))
EXPECTED = {
    "farm-worker@.service": ("worker", {"node_name": "gpu0"}),
    "farm-cpu-worker.service": ("worker", {"cpu": True}),
    "farm-ingest.service": ("ingest", {}),
    "farm-flower.service": ("flower", {}),
    "farm-web.service": ("web", {"host": "127.0.0.1", "port": 8088, "no_auth": False}),
    "farm-exporter.service": ("exporter", {}),
    "farm-emulator@.service": ("comfyui", {"port": 8188}),
}
INSTANCES = {"farm-worker@.service": "gpu0", "farm-emulator@.service": "gpu-a"}


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (keys may repeat); fails on a line that
    is neither a section, a setting, a comment nor blank."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if re.fullmatch(r"\[[A-Za-z]+\]", line):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and re.fullmatch(r"[A-Za-z]+", key.strip()), (
            f"{path.name}:{number}: {line!r}"
        )
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def exec_argv(path: Path, unit: dict) -> list[str]:
    """The unit's ExecStart as argv, for an example instance, with its default
    Environment= values put in and /opt/farm mapped to this checkout."""
    line = one(unit, "Service", "ExecStart").replace("%i", INSTANCES.get(path.name, ""))
    defaults = dict(
        pair.split("=", 1)
        for entry in unit["Service"].get("Environment", [])
        for pair in shlex.split(entry)
    )
    line = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], line)
    return [arg.replace(f"{INSTALL}/", f"{REPO}/") for arg in shlex.split(line)]


def test_every_service_has_a_unit():
    assert {p.name for p in UNIT_FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_units_parse_and_run_a_real_farm_command(path):
    unit = read_unit(path)
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "Unit", "Description")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert one(unit, "Service", "User") == "farm"
    assert one(unit, "Service", "EnvironmentFile").startswith("/etc/farm/")
    # always: a Celery worker that stops on an error it cannot recover from may exit 0
    assert one(unit, "Service", "Restart") == "always" and one(unit, "Service", "RestartSec")
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    argv = exec_argv(path, unit)
    assert argv[0] == f"{REPO}/.venv/bin/farm"  # /opt/farm/.venv/bin/farm once installed
    name, params = EXPECTED[path.name]
    ctx = farm_command(argv)
    assert ctx.info_name == name
    assert {k: ctx.params[k] for k in params} == params


def test_the_gpu_worker_unit_lets_a_render_finish_when_stopped():
    unit = read_unit(UNITS / "farm-worker@.service")
    assert one(unit, "Service", "ExecStart") == f"{INSTALL}/.venv/bin/farm worker --node %i"
    assert one(unit, "Service", "EnvironmentFile") == "/etc/farm/farm.env"
    # SIGTERM to the main process only: Celery's warm shutdown waits for the render
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > RENDER_LIMIT


def test_the_gpu_worker_unit_leaves_the_gpu_reachable():
    """A WanGP node in CLI mode runs CUDA inside this unit: no device sandboxing (and no
    ProtectClock=, which implies a device allow-list on older systemd)."""
    service = read_unit(UNITS / "farm-worker@.service")["Service"]
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock",
                "MemoryDenyWriteExecute"):  # fmt: skip
        assert service.get(key, ["no"]) == ["no"], key
    assert one({"Service": service}, "Service", "ProtectSystem") in ("full", "strict", "yes")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_units(tmp_path):
    """``systemd-analyze verify`` on an instance of each unit, with ExecStart pointed at
    this checkout's `farm` (verify checks that the program exists). Any message it prints
    about a unit (an unknown key, a bad value) fails the test."""
    farm = Path(sys.executable).with_name("farm")
    assert farm.exists()
    names = []
    for path in UNIT_FILES:
        (tmp_path / path.name).write_text(
            path.read_text().replace(f"{INSTALL}/.venv/bin/farm", str(farm))
        )
        names.append(path.name.replace("@.", f"@{INSTANCES.get(path.name, '')}."))
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if any(p.name.split("@")[0].removesuffix(".service") in line for p in UNIT_FILES)
    ]
    assert out.returncode == 0 and ours == [], out.stdout + out.stderr
