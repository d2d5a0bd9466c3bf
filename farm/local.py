"""A whole farm on this machine: its own Redis, emulated GPU nodes and workers.

Used by ``farm demo`` and by the test suite, so both run the same real processes:
``redis-server`` on a free loopback port with AOF, one emulator server per node, one
Celery worker per node queue, a CPU worker and ``farm ingest`` (submissions from the Redis
stream). Everything it starts, it stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from farm.errors import ConfigError, FarmError
from farm.ports import holds_port
from farm.settings import NODE_KINDS, Settings


@dataclass(frozen=True)
class EmulatedNode:
    """A node to emulate: its name, emulator profile file and backend kind
    (``comfyui``, ``wan2gp``: the WanGP MCP server, ``comfyv2``: an emulated ComfyUI
    behind a real comfy-api-proxy, the Comfy API v2); with ``url``, a node that already
    runs there (a real ComfyUI): the farm starts no emulator for it."""

    name: str
    profile: Path | None
    kind: str = "comfyui"
    url: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise ConfigError(
                f"node {self.name}: kind must be comfyui, wan2gp or comfyv2, not {self.kind!r}"
            )

    @property
    def emulates(self) -> str:
        """The emulator it runs: a ComfyUI for a comfyv2 node (the proxy goes in front)."""
        return "comfyui" if self.kind == "comfyv2" else self.kind


def proxy_argv(port: int, comfyui_url: str, state_dir: Path, token: str = "") -> list[str]:
    """comfy-api-proxy (the Comfy API v2 in front of a ComfyUI) on loopback ``port``,
    keeping its jobs, idempotency keys and assets in ``state_dir``."""
    argv = [sys.executable, "-m", "comfy_api_proxy.cli", "run", "--comfyui", comfyui_url,
            "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_dir)]  # fmt: skip
    return [*argv, "--token", token] if token else argv


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll ``check()`` until it is true; fail with the log tail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConfigError(f"{what} exited with code {proc.returncode}{_tail(log)}")
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise ConfigError(f"{what} was not ready after {timeout:g}s{_tail(log)}")


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    return (
        "\n--- "
        + str(log)
        + " ---\n"
        + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    )


#: What a farm process (worker, ingest, CLI, Flower) may do on a Redis of its own, as an
#: ACL user: every key and channel, no administration (docs/redis.md).
WORKER_ACL = "~* &* +@all -@dangerous"

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = farm
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost{addresses}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class TLSFiles:
    """A throw-away certificate authority and what it signed: a server certificate for
    this machine and a client certificate (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path, days: int = 30, addresses: tuple[str, ...] = ()) -> TLSFiles:
    """Make, with ``openssl``, a new CA (``ca.crt``) and two certificates it signs:
    ``redis.crt`` for a server on this machine (127.0.0.1, ::1, localhost, and the IP
    ``addresses``) and ``client.crt`` for a client (EC P-256 keys, valid for ``days``
    days). For local farms and tests; a real farm's certificates come from its own CA
    (docs/redis.md)."""
    exe = shutil.which("openssl")
    if exe is None:
        raise ConfigError("openssl is not installed: apt-get install openssl")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG.format(addresses="".join(f", IP:{a}" for a in addresses)))
    files = TLSFiles(*(folder / n for n in ("ca.crt", "redis.crt", "redis.key", "client.crt",
                                             "client.key")))  # fmt: skip
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise ConfigError(f"openssl {args[0]} failed: {done.stderr.strip()}")

    openssl("req", "-x509", "-new", *key, "-config", str(config), "-extensions", "ca",
            "-subj", "/CN=farm local CA", "-days", str(days),
            "-keyout", str(folder / "ca.key"), "-out", str(files.ca))  # fmt: skip
    for name, cert, private in (("server", files.server_cert, files.server_key),
                                ("client", files.client_cert, files.client_key)):  # fmt: skip
        request = folder / f"{name}.csr"
        openssl("req", "-new", *key, "-config", str(config), "-subj", f"/CN=farm {name}",
                "-keyout", str(private), "-out", str(request))  # fmt: skip
        openssl("x509", "-req", "-in", str(request), "-CA", str(files.ca),
                "-CAkey", str(folder / "ca.key"), "-CAcreateserial", "-days", str(days),
                "-extfile", str(config), "-extensions", name, "-out", str(cert))  # fmt: skip
    return files


def redis_server_argv(
    folder: Path, listen: list[str], config: list[str] | None = None, bind: str = "127.0.0.1"
) -> list[str]:
    """``redis-server`` on ``bind`` (loopback) keeping its data in ``folder``: an append-only
    file fsynced every second, no snapshots, no eviction (a queue must never lose a message).
    ``listen``: its port options; ``config``: a config file, which must come first."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ConfigError(
            "redis-server is not installed: run `make setup` (or `apt-get install redis-server`)"
        )
    return [exe, *(config or []), *listen, "--bind", bind, "--dir", str(folder),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction", "--daemonize", "no"]  # fmt: skip


def emulator_argv(
    kind: str, port: int, profile: Path, data: Path, host: str = "127.0.0.1"
) -> list[str]:
    """``farm emulate KIND``: an emulated GPU node on ``host`` (loopback) ``port``."""
    return [sys.executable, "-m", "farm", "emulate", kind, "--host", host, "--port", str(port),
            "--profile", str(profile), "--data", str(data)]  # fmt: skip


def node_ready(kind: str, port: int, pid: int, host: str = "127.0.0.1") -> bool:
    """Whether emulator process ``pid`` serves ``host`` (loopback) ``port`` as a ``kind``
    node: it is the process that listens there, and the port answers as that kind does
    (ComfyUI's ``GET /system_stats``, WanGP's MCP ``initialize``), not merely with some
    HTTP status."""
    from farm.backends import detect_kind

    if not holds_port(pid, port):
        return False
    try:
        return detect_kind(f"http://{host}:{port}", 2.0) == kind
    except FarmError:  # it answers as neither kind
        return False


def wait_node(kind: str, port: int, proc: subprocess.Popen, what: str, log: Path | None,
              timeout: float = 60) -> None:  # fmt: skip
    """Wait until the emulator ``proc`` serves ``port`` (:func:`node_ready`)."""
    wait_for(lambda: node_ready(kind, port, proc.pid), timeout, what, proc, log)


def wait_workers(settings: Settings, nodes: list[str], cpu_workers: int, timeout: float,
                 log: Path | None = None) -> None:  # fmt: skip
    """Wait until the worker of each node in ``nodes`` and ``cpu_workers`` CPU workers
    answer a Celery ping (they then consume their queues)."""
    from farm.celery_app import make_app

    app = make_app(settings)

    def ready() -> bool:
        names = [next(iter(r)) for r in app.control.ping(timeout=0.5)]
        cpu = sum(n.startswith("cpu") for n in names)
        return cpu >= cpu_workers and all(any(n.startswith(f"{w}@") for n in names) for w in nodes)

    try:
        wait_for(ready, timeout, "celery workers", None, log)
    finally:
        app.close()


class LocalFarm:
    """Start and stop a complete local farm under ``root``.

    Redis: its own ``redis-server`` on a free loopback port, plain by default;
    ``redis_tls``: TLS only, with a throw-away CA (:func:`make_tls_files`; the farm's
    processes present the client certificate); ``redis_password``: the server asks for
    it; with ``redis_user`` too, the farm's processes log in as that ACL user
    (:data:`WORKER_ACL`) and the default user keeps every right with the same password
    (the tests' administrator). ``redis_url``: use that Redis (e.g. a ``sentinel://``
    URL; its settings in ``extra_env``) and start none. ``supervise``: restart a worker or
    ingest that exits on its own one second later, as `farm up` does (one stopped with
    :meth:`kill` stays down until it is started again).
    """

    def __init__(
        self,
        root: Path,
        nodes: list[EmulatedNode],
        *,
        cpu_concurrency: int = 1,
        heartbeat: float = 1.0,
        node_ttl: float = 6.0,
        extra_env: dict[str, str] | None = None,
        redis_tls: bool = False,
        redis_password: str = "",
        redis_user: str = "",
        redis_url: str | None = None,
        supervise: bool = False,
        cloud_token: str = "",
    ) -> None:
        self.root = root.resolve()
        # the key of the comfyv2 nodes' proxies: the farm reads it from a file only its
        # owner reads (FARM_CLOUD_TOKEN_FILE); the proxy, standing in for the cloud, takes it
        # as its own --token
        self.cloud_token = cloud_token
        self.supervise = supervise
        self.held: set[str] = set()  # stopped on purpose: not restarted
        self.restarts: dict[str, int] = {}
        self._watching: threading.Event | None = None
        self.nodes = nodes
        self.cpu_concurrency = cpu_concurrency
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.redis_port = 0
        self.redis_tls = redis_tls
        self.redis_password = redis_password
        self.redis_user = redis_user
        self.external_redis = redis_url
        self.tls: TLSFiles | None = None
        if redis_user and not redis_password:
            raise ConfigError("LocalFarm: redis_user needs a redis_password")
        self.extra_env = {
            "FARM_HEARTBEAT": str(heartbeat),
            "FARM_NODE_TTL": str(node_ttl),
            **(extra_env or {}),
        }

    # layout
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def cloud_token_file(self) -> Path:
        return self.root / "cloud-token"

    def node_url(self, name: str) -> str:
        """Where the farm reaches node ``name`` (a comfyv2 node: its proxy)."""
        node = next((n for n in self.nodes if n.name == name), None)
        if node is not None and node.url:
            return node.url.rstrip("/")
        if node is not None and node.kind == "comfyv2":
            return f"http://127.0.0.1:{self.ports[f'{name}/v2']}"
        return f"http://127.0.0.1:{self.ports[name]}"

    def emulator_url(self, name: str) -> str:
        """The emulated server of node ``name`` itself (behind the proxy of a comfyv2 node)."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def redis_url(self, user: str | None = None) -> str:
        """The URL of this farm's Redis, logged in as ``user`` (default: the farm's own,
        ``""``: the default user) when it has a password."""
        if self.external_redis is not None:
            return self.external_redis
        user = self.redis_user if user is None else user
        auth = f"{quote(user, safe='')}:{quote(self.redis_password, safe='')}@"
        scheme = "rediss" if self.redis_tls else "redis"
        return f"{scheme}://{auth if self.redis_password else ''}127.0.0.1:{self.redis_port}/0"

    def redis_env(self) -> dict[str, str]:
        """FARM_REDIS_URL, and the TLS files when Redis speaks TLS."""
        env = {"FARM_REDIS_URL": self.redis_url()}
        if self.tls is not None:
            env.update(FARM_REDIS_CA=str(self.tls.ca), FARM_REDIS_CERT=str(self.tls.client_cert),
                       FARM_REDIS_KEY=str(self.tls.client_key))  # fmt: skip
        return env

    def env(self) -> dict[str, str]:
        """The FARM_* variables that point a process at this farm."""
        return {
            **self.redis_env(),
            "FARM_STORAGE": str(self.storage),
            "FARM_NODES": ",".join(
                f"{n.name}={'' if n.kind == 'comfyui' else n.kind + '+'}{self.node_url(n.name)}"
                for n in self.nodes
            ),
            **({"FARM_CLOUD_TOKEN_FILE": str(self.cloud_token_file)} if self.cloud_token else {}),
            **self.extra_env,
        }

    def settings(self) -> Settings:
        return Settings.from_env(self.env())

    # processes
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        env = {**os.environ, **self.env(), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start(self) -> LocalFarm:
        for folder in (self.logs, self.storage, self.root / "redis"):
            folder.mkdir(parents=True, exist_ok=True)
        self.ports = {node.name: free_port() for node in self.nodes if not node.url}
        self.ports.update({f"{n.name}/v2": free_port() for n in self.nodes
                           if n.kind == "comfyv2" and not n.url})  # fmt: skip
        if self.cloud_token:
            self.cloud_token_file.touch(mode=0o600)
            self.cloud_token_file.write_text(self.cloud_token + "\n")
        try:
            if self.external_redis is None:
                self.start_redis()
            emulated = [node for node in self.nodes if not node.url]
            for node in emulated:
                self.start_emulator(node)
            for node in emulated:
                self._wait_emulator(node)
            for node in emulated:
                if node.kind == "comfyv2":
                    self.start_proxy(node.name)
            for node in self.nodes:
                self.start_worker(node.name)
            self.start_cpu_worker()
            self.wait_workers()
            self.start_ingest()
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self._watching = threading.Event()
            threading.Thread(target=self._watch, name="local-farm-supervisor", daemon=True).start()
        return self

    def _watch(self) -> None:
        """Restart workers and ingest that exited on their own (`farm up` does the same)."""
        assert self._watching is not None
        starts = {"worker-cpu": self.start_cpu_worker, "ingest": self.start_ingest}
        while not self._watching.wait(1.0):
            for name, proc in list(self.procs.items()):
                restartable = name.startswith("worker-") or name == "ingest"
                if not restartable or name in self.held or proc.poll() is None:
                    continue
                self.restarts[name] = self.restarts.get(name, 0) + 1
                with (self.logs / "supervisor.log").open("a") as log:
                    log.write(f"{time.strftime('%H:%M:%S')} {name} (pid {proc.pid}) exited with "
                              f"code {proc.returncode}; restarted\n")  # fmt: skip
                try:
                    starts.get(name, lambda n=name: self.start_worker(n[len("worker-") :]))()
                except ConfigError:  # it failed to start: try again next round
                    continue

    def start_redis(self) -> None:
        """Start ``redis-server`` (on a free port the first time, on the same port and folder
        after :meth:`restart_redis`) with an append-only file fsynced every second. A clean
        shutdown loses nothing; a killed server in practice nothing either (each write
        reaches the kernel before its reply, unless an fsync lags); a machine crash at most
        about the last second, which leases, reclaim and the watchdog recover from.
        ``appendfsync always`` would fsync on every broker operation. With TLS it listens
        on a TLS port only; a password and ACL user go in a config file only its owner
        reads (never on the command line)."""
        self.redis_port = self.redis_port or free_port()
        listen = ["--port", str(self.redis_port)]
        if self.redis_tls:
            self.tls = self.tls or make_tls_files(self.root / "tls")
            listen = ["--port", "0", "--tls-port", str(self.redis_port),
                      "--tls-cert-file", str(self.tls.server_cert),
                      "--tls-key-file", str(self.tls.server_key),
                      "--tls-ca-cert-file", str(self.tls.ca),
                      "--tls-auth-clients", "optional"]  # fmt: skip
        self._spawn(
            "redis", redis_server_argv(self.root / "redis", listen, self._redis_auth_file())
        )
        client = self._redis()
        proc = self.procs["redis"]
        try:
            wait_for(lambda: client.ping() and holds_port(proc.pid, self.redis_port), 15,
                     "redis-server", proc, self.logs / "redis.log")  # fmt: skip
        finally:
            client.close()

    def _redis_auth_file(self) -> list[str]:
        """``redis-server``'s first argument when it has a password: a config file."""
        if not self.redis_password:
            return []
        secret = '"' + self.redis_password.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines = [f"requirepass {secret}"]
        if self.redis_user:
            lines.append(f"user {self.redis_user} on {secret[0]}>{secret[1:]} {WORKER_ACL}")
        path = self.root / "redis" / "auth.conf"
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")
        return [str(path)]

    def _redis(self):
        """A client of this farm's Redis, made as every farm process makes one, that
        answers at once (no retries: the callers poll)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from farm.state import connect

        client = connect(self.settings(), check=False, decode=False)
        client.set_retry(Retry(NoBackoff(), 0))
        return client

    def restart_redis(self, sig: int = signal.SIGTERM, down_for: float = 0.0) -> None:
        """Stop Redis with ``sig`` (SIGTERM: a clean shutdown; SIGKILL: a crash), wait
        ``down_for`` seconds, and start it again on the same port and folder; it reloads
        its append-only file. Celery reconnects by itself; farm workers retry their Redis
        calls meanwhile (:func:`farm.worker.patient`)."""
        self.kill("redis", sig)
        time.sleep(down_for)
        self.start_redis()

    def start_emulator(self, node: EmulatedNode) -> None:
        if node.url or node.profile is None:
            raise ConfigError(f"node {node.name} runs at {node.url}: the farm does not start it")
        self._spawn(f"emulator-{node.name}", emulator_argv(
            node.emulates, self.ports[node.name], node.profile, self.root / "nodes" / node.name))  # fmt: skip

    def start_proxy(self, name: str, timeout: float = 30) -> None:
        """Start comfy-api-proxy in front of comfyv2 node ``name``'s emulator (its state
        in ``ROOT/proxies/NAME``, so a restarted proxy keeps its jobs and keys) and wait
        until it answers the Comfy API v2."""
        port, state = self.ports[f"{name}/v2"], self.root / "proxies" / name
        state.mkdir(parents=True, exist_ok=True)
        proc = self._spawn(f"proxy-{name}",
                           proxy_argv(port, self.emulator_url(name), state, self.cloud_token))  # fmt: skip
        wait_node("comfyv2", port, proc, f"comfy-api-proxy of {name}",
                  self.logs / f"proxy-{name}.log", timeout)  # fmt: skip

    def start_worker(self, name: str) -> None:
        self.held.discard(f"worker-{name}")
        self._spawn(f"worker-{name}", [sys.executable, "-m", "farm", "worker", "--node", name])

    def restart_emulator(self, name: str, profile: Path | None = None) -> None:
        """Stop node ``name``'s emulator if it runs, and start it again on the same port
        and data folder (with ``profile`` instead of its own, when given); wait until it
        answers."""
        node = next(n for n in self.nodes if n.name == name)
        if profile is not None:
            node = EmulatedNode(node.name, profile, node.kind)
        self.kill(f"emulator-{name}", signal.SIGTERM)
        self.start_emulator(node)
        self._wait_emulator(node)

    def _wait_emulator(self, node: EmulatedNode) -> None:
        name = f"emulator-{node.name}"
        wait_node(node.emulates, self.ports[node.name], self.procs[name],
                  f"emulator {node.name}", self.logs / f"{name}.log", 30)  # fmt: skip

    def start_cpu_worker(self) -> None:
        self.held.discard("worker-cpu")
        self._spawn(
            "worker-cpu",
            [
                sys.executable,
                "-m",
                "farm",
                "worker",
                "--cpu",
                "--concurrency",
                str(self.cpu_concurrency),
            ],
        )

    def start_ingest(self, timeout: float = 30) -> None:
        """Start ``farm ingest`` (the submissions service, :mod:`farm.ingest`) and wait until
        it reads the stream (its consumer, named after host and pid, is in the group)."""
        self.held.discard("ingest")
        proc = self._spawn("ingest", [sys.executable, "-m", "farm", "ingest"])
        settings = self.settings()
        name = f"{socket.gethostname()}-{proc.pid}".encode()
        client = self._redis()

        def reading() -> bool:
            consumers = client.xinfo_consumers(settings.keys.submissions(), "ingest")
            return any(c["name"] == name for c in consumers)

        try:
            wait_for(reading, timeout, "farm ingest", proc, self.logs / "ingest.log")
        finally:
            client.close()

    def wait_workers(self, timeout: float = 60) -> None:
        """Wait until every worker answers a ping (they then consume their queues)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ConfigError(
                    f"{name} exited with code {proc.returncode}{_tail(self.logs / f'{name}.log')}"
                )
        wait_workers(self.settings(), [n.name for n in self.nodes], 1, timeout,
                     self.logs / "worker-cpu.log")  # fmt: skip

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to process ``name`` and its children (e.g. ``emulator-gpu-a``); it
        stays down until started again."""
        self.held.add(name)
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop everything started, workers first, Redis last."""
        if self._watching is not None:
            self._watching.set()
        self.held.update(self.procs)
        order = sorted(self.procs, key=lambda n: (n == "redis", n.startswith("emulator")))
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self.procs.clear()

    def __enter__(self) -> LocalFarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
