"""``farm up`` / ``farm down``: a long-running farm on this machine, from a config file.

``farm up farm.toml`` starts a supervisor in the background. It starts, in order, Redis
(unless the config names an existing one), the emulated nodes listed, one Celery worker per
node queue, the CPU workers, ``farm ingest``, Flower, ``farm web`` and ``farm exporter``;
restarts any of them that dies (backing off from 1 s to 30 s); and writes every process's
output to ``ROOT/logs/NAME.log`` (its own to ``ROOT/logs/supervisor.log``).
``ROOT/run/state.json`` lists what it started: ``farm ps`` reads it. ``farm down`` stops
the supervisor, which stops its processes (workers first, with time to finish their
renders; Redis last). If
the supervisor itself was killed, ``farm down`` stops the processes listed in the state
file, each only while its command line still is the one recorded: it never stops anything
``farm up`` did not start.

Before it starts anything, ``farm up`` refuses ports that another program already holds
(Redis, emulated nodes, Flower, farm web, exporter), naming each port, its service and the config
key to change. A service counts as started only once the process it started is the one
listening on its port; an emulated node also has to answer as its kind does
(:func:`farm.local.node_ready`), so a foreign server is never taken for it. The
supervisor runs in ROOT, where :mod:`farm.running` finds it for commands given no config.

The config file (TOML; deploy/farm.toml is an example)::

    root = "var/farm"                 # logs/, run/, storage/, redis/, flower/
    [redis]                           # farm up runs redis-server on this port (AOF on) ...
    port = 6380
    # url = "redis://:pw@10.0.0.2/0"  # ... or uses this Redis, which it never starts or stops
    [[node]]                          # an emulated node: farm up runs the emulator too
    name = "gpu-a"
    emulate = "comfyui"               # comfyui or wan2gp
    profile = "deploy/nodes/gpu-a.json"
    port = 8288                       # not 8188: a real ComfyUI here would hold that
    [[node]]                          # an emulated ComfyUI behind comfy-api-proxy: a
    name = "cloud-a"                  # Comfy API v2 node (docs/cloud.md), no key, loopback
    emulate = "comfyv2"
    profile = "deploy/nodes/gpu-a.json"
    port = 8289                       # the proxy's: the farm talks to it
    comfyui_port = 8290               # the emulated ComfyUI's, behind it
    [[node]]                          # a real node: farm up runs only its worker
    name = "gpu-b"
    url = "http://10.0.0.5:8188"      # comfyui (http://), wan2gp+http://... or a Comfy
                                      # API v2 node, comfyv2+https://... (docs/cloud.md)
    [cpu]
    workers = 1
    concurrency = 2
    [ingest]
    workers = 1
    [flower]                          # login: FARM_FLOWER_AUTH, else one made for you
    port = 5555
    [web]                             # login: FARM_WEB_AUTH, else one made for you
    port = 8088
    [exporter]
    port = 9808
    [env]                             # any FARM_* setting, for every process
    FARM_HEARTBEAT = "5"
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import ConfigError, InvalidInput
from farm.local import (
    emulator_argv,
    node_ready,
    proxy_argv,
    redis_server_argv,
    wait_for,
    wait_workers,
)
from farm.ports import holds_port, port_taken
from farm.settings import NODE_KINDS, REPO_ROOT, Settings

BACKOFF_MIN, BACKOFF_MAX, HEALTHY_AFTER = 1.0, 30.0, 60.0
#: what points a shell at a farm: recorded in ROOT/run/state.json, printed by `farm env`
POINTER_KEYS = ("FARM_REDIS_URL", "FARM_NODES", "FARM_STORAGE", "FARM_REDIS_CA", "FARM_REDIS_CERT",
                "FARM_REDIS_KEY", "FARM_REDIS_SENTINEL_MASTER", "FARM_PREFIX")  # fmt: skip
STOP_ORDER = ("flower", "web", "exporter", "ingest", "worker", "cpu", "emulator", "redis")


@dataclass
class Service:
    """One supervised process."""

    name: str
    argv: list[str]
    role: str  # one of STOP_ORDER
    ready: Any = None  # a check: ready(pid) is True once that process serves
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0
    next_start: float = 0.0


@dataclass
class UpConfig:
    """A parsed and checked ``farm up`` config file."""

    path: Path
    root: Path
    redis_url: str | None
    redis_port: int
    nodes: list[dict[str, Any]]
    cpu_workers: int
    cpu_concurrency: int
    ingest_workers: int
    flower: dict[str, Any] | None
    exporter: dict[str, Any] | None
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 120.0
    web: dict[str, Any] | None = None

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


# -- config ---------------------------------------------------------------------------------
def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}{key}: must be a table ([{key}])")
    return value


def _int(table: dict, key: str, where: str, default: int, lo: int = 0, hi: int = 65535) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidInput(
            f"{where}.{key}: must be a whole number from {lo} to {hi}, not {value!r}"
        )
    return value


def _known(table: dict, keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise InvalidInput(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})"
        )


def load_config(path: Path) -> UpConfig:
    """Read and check a ``farm up`` config file; errors name the field and the fix."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such config file (see deploy/farm.toml)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"{path}: not a readable TOML file: {exc}") from None
    base = path.resolve().parent
    _known(data, {"root", "redis", "node", "cpu", "ingest", "flower", "web", "exporter", "env",
                  "stop_timeout"}, str(path))  # fmt: skip

    def resolve(value: object, where: str) -> Path:
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{where}: must be a path (text)")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    root = resolve(data.get("root", "var/farm"), "root")
    redis = _table(data, "redis", "")
    _known(redis, {"url", "port"}, "redis")
    url = redis.get("url")
    if url is not None and (not isinstance(url, str) or "://" not in url):
        raise InvalidInput(f"redis.url: {url!r} is not a Redis URL (redis://host:6379/0)")
    port = _int(redis, "port", "redis", 6380, 1)

    raw_nodes = data.get("node", [])
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise InvalidInput("node: list at least one GPU node as [[node]] (name, emulate or url)")
    nodes, names, ports = [], set(), {port}
    for i, n in enumerate(raw_nodes):
        where = f"node[{i}]"
        if not isinstance(n, dict):
            raise InvalidInput(f"{where}: must be a table ([[node]])")
        _known(n, {"name", "emulate", "profile", "port", "comfyui_port", "url"}, where)
        name = n.get("name")
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise InvalidInput(f"{where}.name: give a name of letters, digits, - and _")
        if name in names:
            raise InvalidInput(f"{where}.name: {name!r} is listed twice")
        names.add(name)
        if ("emulate" in n) == ("url" in n):
            raise InvalidInput(f"{where} ({name}): give either emulate = \"comfyui\"|\"wan2gp\"|\"comfyv2\" "
                               "(with profile and port) or url = \"http://...\" for a real node")  # fmt: skip
        if "emulate" in n:
            if n["emulate"] not in NODE_KINDS:
                raise InvalidInput(
                    f"{where}.emulate: must be comfyui, wan2gp or comfyv2, not {n['emulate']!r}"
                )
            if ("comfyui_port" in n) != (n["emulate"] == "comfyv2"):
                raise InvalidInput(f"{where}.comfyui_port: give it with emulate = \"comfyv2\" "
                                   "(the emulated ComfyUI's port, behind the proxy), and only then")  # fmt: skip
            profile = resolve(n.get("profile"), f"{where}.profile")
            if not profile.is_file():
                raise InvalidInput(f"{where}.profile: {profile} does not exist (see deploy/nodes/)")
            nport = _int(n, "port", where, 0, 1)
            if nport in ports:
                raise InvalidInput(f"{where}.port: {nport} is already used by another service")
            ports.add(nport)
            prefix = "" if n["emulate"] == "comfyui" else f"{n['emulate']}+"
            node = {"name": name, "emulate": n["emulate"], "profile": profile, "port": nport,
                    "url": f"{prefix}http://127.0.0.1:{nport}"}  # fmt: skip
            if "comfyui_port" in n:
                cport = _int(n, "comfyui_port", where, 0, 1)
                if cport in ports:
                    raise InvalidInput(
                        f"{where}.comfyui_port: {cport} is already used by another service"
                    )
                ports.add(cport)
                node["comfyui_port"] = cport
            nodes.append(node)
        else:
            if not isinstance(n["url"], str) or "://" not in n["url"]:
                raise InvalidInput(f"{where}.url: {n['url']!r} is not a node URL")
            nodes.append({"name": name, "url": n["url"]})

    cpu = _table(data, "cpu", "")
    _known(cpu, {"workers", "concurrency"}, "cpu")
    ingest = _table(data, "ingest", "")
    _known(ingest, {"workers"}, "ingest")
    services: dict[str, dict[str, Any] | None] = {}
    for key, default in (("flower", 5555), ("web", 8088), ("exporter", 9808)):
        table = _table(data, key, "")
        _known(table, {"enabled", "port", "address"}, key)
        if table.get("enabled", True) is False:
            services[key] = None
            continue
        sport = _int(table, "port", key, default, 1)
        if sport in ports:
            raise InvalidInput(f"{key}.port: {sport} is already used by another service")
        ports.add(sport)
        services[key] = {"port": sport, "address": str(table.get("address", "127.0.0.1"))}
    env = _table(data, "env", "")
    for key, value in env.items():
        if not key.startswith("FARM_") or not isinstance(value, str | int | float):
            raise InvalidInput(f'env.{key}: only FARM_* settings, as text (e.g. {key} = "5")')
    stop_timeout = data.get("stop_timeout", 120)
    if not isinstance(stop_timeout, int | float) or stop_timeout <= 0:
        raise InvalidInput("stop_timeout: seconds workers get to finish renders at farm down")
    return UpConfig(
        path=path.resolve(), root=root, redis_url=url, redis_port=port, nodes=nodes,
        cpu_workers=_int(cpu, "workers", "cpu", 1, 0, 64),
        cpu_concurrency=_int(cpu, "concurrency", "cpu", os.cpu_count() or 1, 1, 256),
        ingest_workers=_int(ingest, "workers", "ingest", 1, 0, 16),
        flower=services["flower"], exporter=services["exporter"], web=services["web"],
        env={k: str(v) for k, v in env.items()}, stop_timeout=float(stop_timeout),
    )  # fmt: skip


def farm_env(cfg: UpConfig) -> dict[str, str]:
    """The FARM_* environment every process of this farm gets."""
    env = {k: v for k, v in os.environ.items() if k.startswith("FARM_")}
    env.update(
        {
            "FARM_REDIS_URL": cfg.redis_url or f"redis://127.0.0.1:{cfg.redis_port}/0",
            "FARM_STORAGE": str(cfg.root / "storage"),
            "FARM_FLOWER_DB": str(cfg.root / "flower" / "flower.db"),
        }
    )
    env.update(cfg.env)
    env["FARM_NODES"] = ",".join(f"{n['name']}={n['url']}" for n in cfg.nodes)
    if cfg.flower and not env.get("FARM_FLOWER_AUTH"):
        env["FARM_FLOWER_AUTH"] = flower_login(cfg)
    if cfg.web and not env.get("FARM_WEB_AUTH"):
        env["FARM_WEB_AUTH"] = flower_login(cfg, "web")
    Settings.from_env(env)  # every setting checked before anything starts
    return env


def pointer_env(env: dict[str, str]) -> dict[str, str]:
    """The variables of ``env`` that point a shell at the farm (:data:`POINTER_KEYS`)."""
    return {k: env[k] for k in POINTER_KEYS if env.get(k)}


def flower_login(cfg: UpConfig, service: str = "flower") -> str:
    """The login made for Flower (``farm web``) when FARM_FLOWER_AUTH (FARM_WEB_AUTH) is
    unset: ``farm:<random>``, kept in ROOT/SERVICE/login (readable by its owner only) and
    reused."""
    path = cfg.root / service / "login"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    login = f"farm:{secrets.token_urlsafe(12)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(login + "\n")
    return login


# -- the supervisor ---------------------------------------------------------------------------
def services(cfg: UpConfig, env: dict[str, str]) -> list[Service]:
    """Every process this farm runs, in start order."""
    farm = [sys.executable, "-m", "farm"]
    out: list[Service] = []
    if cfg.redis_url is None:
        argv = redis_server_argv(cfg.root / "redis", ["--port", str(cfg.redis_port)])
        out.append(Service("redis", argv, "redis", ready=_redis_ready(env, cfg.redis_port)))
    for n in cfg.nodes:
        if "emulate" in n:
            kind, port = n["emulate"], n["port"]
            if kind == "comfyv2":  # the emulated ComfyUI, then comfy-api-proxy in front
                kind, port = "comfyui", n["comfyui_port"]
            argv = emulator_argv(kind, port, n["profile"], cfg.root / "nodes" / n["name"])
            out.append(Service(f"emulator-{n['name']}", argv, "emulator",
                               ready=lambda pid, k=kind, p=port: node_ready(k, p, pid)))  # fmt: skip
            if n["emulate"] == "comfyv2":
                argv = proxy_argv(n["port"], f"http://127.0.0.1:{port}",
                                  cfg.root / "proxies" / n["name"])  # fmt: skip
                out.append(Service(f"proxy-{n['name']}", argv, "emulator",
                                   ready=lambda pid, p=n["port"]: node_ready("comfyv2", p, pid)))  # fmt: skip
    for n in cfg.nodes:
        out.append(Service(f"worker-{n['name']}", [*farm, "worker", "--node", n["name"]], "worker"))
    for i in range(cfg.cpu_workers):
        out.append(Service(f"cpu-{i}", [*farm, "worker", "--cpu", "--name", f"cpu-{i}",
                                        "--concurrency", str(cfg.cpu_concurrency)], "cpu"))  # fmt: skip
    for i in range(cfg.ingest_workers):
        out.append(Service(f"ingest-{i}", [*farm, "ingest", "--name", f"up-ingest-{i}"], "ingest"))
    for key, role in (("flower", "flower"), ("exporter", "exporter")):
        svc = getattr(cfg, key)
        if svc:
            url = f"http://{svc['address']}:{svc['port']}/{'healthcheck' if key == 'flower' else 'metrics'}"
            out.append(Service(role, [*farm, key, "--address", svc["address"], "--port",
                                      str(svc["port"])], role, ready=_http_ready(url, svc["port"])))  # fmt: skip
    if cfg.web:
        url = f"http://{cfg.web['address']}:{cfg.web['port']}/login"
        out.append(Service("web", [*farm, "web", "--host", cfg.web["address"], "--port",
                                   str(cfg.web["port"])], "web",
                           ready=_http_ready(url, cfg.web["port"])))  # fmt: skip
    return out


def _http_ready(url: str, port: int):
    """Ready once that process listens on ``port`` and ``url`` answers."""

    def check(pid: int) -> bool:
        import requests

        return holds_port(pid, port) and requests.get(url, timeout=1).status_code < 500

    return check


def _redis_ready(env: dict[str, str], port: int):
    def check(pid: int) -> bool:
        from farm.state import connect

        client = connect(Settings.from_env(env), check=False)
        try:
            return bool(client.ping()) and holds_port(pid, port)
        finally:
            client.close()

    return check


def ports_wanted(cfg: UpConfig) -> list[tuple[int, str, str, str]]:
    """``(port, address, what, config key)`` of every server this farm starts."""
    wanted = []
    if cfg.redis_url is None:
        wanted.append((cfg.redis_port, "127.0.0.1", "Redis", "redis.port"))
    for i, n in enumerate(cfg.nodes):
        if "emulate" in n:
            wanted.append((n["port"], "127.0.0.1", f"node {n['name']}", f"node[{i}].port"))
        if "comfyui_port" in n:
            wanted.append((n["comfyui_port"], "127.0.0.1", f"node {n['name']}'s ComfyUI",
                           f"node[{i}].comfyui_port"))  # fmt: skip
    for key, what in (("flower", "Flower"), ("web", "farm web"), ("exporter", "Exporter")):
        svc = getattr(cfg, key)
        if svc:
            wanted.append((svc["port"], svc["address"], what, f"{key}.port"))
    return wanted


def refuse_taken_ports(cfg: UpConfig) -> None:
    """Raise, naming each, if another program already listens on a port this farm's
    servers need (it would answer in their place)."""
    taken = [f"port {port} ({what}) is taken on {address} by another program: set {key} "
             f"to a free port in {cfg.path}, or stop that program"
             for port, address, what, key in ports_wanted(cfg) if port_taken(port, address)]  # fmt: skip
    if taken:
        raise ConfigError("; ".join(taken))


class Supervisor:
    """Runs the services of one config until told to stop."""

    def __init__(self, cfg: UpConfig) -> None:
        self.cfg = cfg
        self.env = farm_env(cfg)
        self.services = services(cfg, self.env)
        self.stopping = False
        self.log = (cfg.logs / "supervisor.log").open("a", buffering=1)

    def say(self, text: str) -> None:
        self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def spawn(self, svc: Service) -> None:
        log = (self.cfg.logs / f"{svc.name}.log").open("ab")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("FARM_")},
               **self.env, "PYTHONUNBUFFERED": "1"}  # fmt: skip
        svc.proc = subprocess.Popen(svc.argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=self.cfg.root,
                                    start_new_session=True)  # fmt: skip
        log.close()
        svc.started = time.monotonic()
        self.say(f"started {svc.name} (pid {svc.proc.pid}): {' '.join(svc.argv)}")
        self.write_state()

    def write_state(self, phase: str = "running") -> None:
        state = {
            "pid": os.getpid(),
            "phase": phase,
            "config": str(self.cfg.path),
            "root": str(self.cfg.root),
            "env": pointer_env(self.env),
            "services": {
                s.name: {
                    "pid": s.proc.pid if s.proc else None,
                    "start_time": start_time(s.proc.pid) if s.proc else None,
                    "argv": s.argv,
                    "running": bool(s.proc and s.proc.poll() is None),
                    "restarts": s.restarts,
                    "log": str(self.cfg.logs / f"{s.name}.log"),
                }
                for s in self.services
            },
        }  # fmt: skip
        tmp = self.cfg.run / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.cfg.run / "state.json")

    def start_all(self) -> None:
        for svc in self.services:
            if self.stopping:
                return
            self.spawn(svc)
            if svc.ready is not None:
                pid = svc.proc.pid
                wait_for(lambda s=svc, p=pid: s.ready(p), 60, svc.name, svc.proc,
                         self.cfg.logs / f"{svc.name}.log")  # fmt: skip
        wait_workers(Settings.from_env(self.env), [n["name"] for n in self.cfg.nodes],
                     self.cfg.cpu_workers, 60, self.cfg.logs / "cpu-0.log")  # fmt: skip
        self.say("all services started")
        self.write_state("ready")

    def watch(self) -> None:
        """Restart what dies, with backoff, until :meth:`stop` is asked for."""
        while not self.stopping:
            now = time.monotonic()
            for svc in self.services:
                if self.stopping or svc.proc is None or svc.proc.poll() is None:
                    continue
                if svc.next_start == 0.0:
                    healthy = now - svc.started >= HEALTHY_AFTER
                    delay = BACKOFF_MIN if healthy else min(
                        BACKOFF_MAX, BACKOFF_MIN * 2 ** min(svc.restarts, 5))  # fmt: skip
                    svc.next_start = now + delay
                    self.say(f"{svc.name} (pid {svc.proc.pid}) exited with code "
                             f"{svc.proc.returncode}; restarting in {delay:g}s")  # fmt: skip
                    self.write_state("ready")
                elif now >= svc.next_start:
                    svc.next_start, svc.restarts = 0.0, svc.restarts + 1
                    self.spawn(svc)
                    self.write_state("ready")
            time.sleep(0.2)

    def stop(self, *_: object) -> None:
        self.stopping = True

    def stop_all(self) -> None:
        """Stop every service, role by role (workers get ``stop_timeout`` to finish)."""
        self.write_state("stopping")
        for role in STOP_ORDER:
            group = [
                s for s in self.services if s.role == role and s.proc and s.proc.poll() is None
            ]
            for svc in group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.proc.pid, signal.SIGTERM)
            timeout = self.cfg.stop_timeout if role in ("worker", "cpu") else 20
            deadline = time.monotonic() + timeout
            for svc in group:
                try:
                    svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(f"{svc.name} did not stop in {timeout:g}s: killed")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(svc.proc.pid, signal.SIGKILL)
                    svc.proc.wait(timeout=10)
                self.say(f"stopped {svc.name}")

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            self.start_all()
            self.watch()
        except Exception as exc:
            self.say(f"failed: {exc}")
            raise
        finally:
            self.stop_all()
            self.say("farm down")
            for name in ("state.json", "supervisor.pid"):
                with contextlib.suppress(FileNotFoundError):
                    (self.cfg.run / name).unlink()


# -- farm up / farm down / farm ps ---------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot): with the pid, it names one
    process for good, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def supervisor_pid(cfg: UpConfig) -> int | None:
    """The running supervisor of this config's root, if any."""
    try:
        pid = int((cfg.run / "supervisor.pid").read_text())
    except (OSError, ValueError):
        return None
    cmd = _cmdline(pid) or []
    return pid if _alive(pid) and "up" in cmd and "--foreground" in cmd else None


def read_state(cfg: UpConfig) -> dict[str, Any] | None:
    try:
        return json.loads((cfg.run / "state.json").read_text())
    except (OSError, ValueError):
        return None


def refuse_if_running(cfg: UpConfig) -> None:
    """Raise if a supervisor, or processes an earlier one left, run under this root."""
    if (pid := supervisor_pid(cfg)) is not None:
        raise ConfigError(f"a farm is already up under {cfg.root} (supervisor pid {pid}); "
                          "`farm down` first, or `farm ps` to see it")  # fmt: skip
    leftover = read_state(cfg)
    if leftover and any(_owned(s) for s in leftover["services"].values()):
        raise ConfigError(f"processes of an earlier `farm up` under {cfg.root} still run "
                          "(its supervisor was killed); `farm down` stops them")  # fmt: skip


def run_foreground(cfg: UpConfig) -> None:
    """Be the supervisor (``farm up --foreground``)."""
    for folder in (cfg.logs, cfg.run, cfg.root / "storage", cfg.root / "redis"):
        folder.mkdir(parents=True, exist_ok=True)
    refuse_if_running(cfg)
    refuse_taken_ports(cfg)
    os.chdir(cfg.root)  # where `farm.running` looks for a supervisor's farm
    supervisor = Supervisor(cfg)
    (cfg.run / "supervisor.pid").write_text(str(os.getpid()))
    supervisor.run()


def up(cfg: UpConfig, timeout: float = 120) -> dict[str, Any]:
    """Start the supervisor in the background and wait until every service is up."""
    farm_env(cfg)  # config and settings errors here, in the user's terminal
    refuse_if_running(cfg)
    refuse_taken_ports(cfg)
    for folder in (cfg.logs, cfg.run):
        folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (cfg.run / "state.json").unlink()
    log = (cfg.logs / "supervisor.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm", "up", str(cfg.path), "--foreground"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=cfg.root,
    )  # fmt: skip
    log.close()

    def ready() -> bool:
        state = read_state(cfg)
        return bool(state and state["phase"] == "ready")

    wait_for(ready, timeout, "farm up", proc, cfg.logs / "supervisor.log")
    return read_state(cfg) or {}


def _owned(svc: dict[str, Any]) -> bool:
    """Whether a recorded process is still the one farm up started (same pid and start
    time), so that nothing else is ever stopped."""
    return bool(svc.get("pid")) and start_time(svc["pid"]) == svc.get("start_time")


def down(cfg: UpConfig, timeout: float | None = None) -> list[str]:
    """Stop what ``farm up`` started under this config's root; the names stopped."""
    state = read_state(cfg) or {"services": {}}
    names = [n for n, s in state["services"].items() if _owned(s)]
    pid = supervisor_pid(cfg)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        limit = (timeout or cfg.stop_timeout) + 60
        deadline = time.monotonic() + limit
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            raise ConfigError(f"the supervisor (pid {pid}) did not stop in {limit:g}s; "
                              f"see {cfg.logs / 'supervisor.log'}")  # fmt: skip
        return names
    for name in reversed(names):  # no supervisor: stop its orphans ourselves, Redis last
        svc = state["services"][name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(svc["pid"], signal.SIGTERM)
        deadline = time.monotonic() + (timeout or cfg.stop_timeout)
        while _alive(svc["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(svc["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(svc["pid"], signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (cfg.run / "state.json").unlink()
    return names


def default_config() -> Path:
    """``farm.toml`` in the current folder, else the example deploy/farm.toml."""
    here = Path("farm.toml")
    return here if here.exists() else REPO_ROOT / "deploy" / "farm.toml"
