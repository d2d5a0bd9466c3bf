"""A farm spread over separate hosts: Linux network namespaces joined by a bridge.

Each host is a network namespace with its own address in 10.213.0.0/24, linked by a veth
pair to a bridge that lives in a namespace of its own (the "switch"), so nothing touches
this machine's own interfaces:

| host | address | runs |
|---|---|---|
| `tester` | 10.213.0.1 | the test process's clients (its main thread joins the namespace) |
| `redis` | 10.213.0.2 | `redis-server` with a password, TLS only (a throw-away CA), on 10.213.0.2:6379 |
| `cpu` | 10.213.0.3 | `farm worker --cpu`, `farm ingest` |
| `gpu1` | 10.213.0.11 | an emulated ComfyUI node on :8188 and `farm worker --node gpu1` |
| `gpu2` | 10.213.0.12 | `farm worker --node gpu2` |
| `gpu2n` | 10.213.0.22 | gpu2's emulated ComfyUI node on :8188 (a node server on its own machine) |
| `gpu3` | 10.213.0.13 | an emulated WanGP node on :7866 and `farm worker --node gpu3` |

Every farm process reads an env file written from ``deploy/env.example`` as docs/deploy.md
tells an operator to: the Redis URL with the password (``rediss://``: TLS, with
``FARM_REDIS_CA`` and a client certificate, as docs/redis.md has it for a Redis reached
from other machines), ``FARM_NODES`` with the hosts' addresses, ``FARM_STORAGE``, and the
install paths (``/opt/farm``) where this checkout is; it is sourced (``set -a; . farm.env; set +a``) before the command, as for a shell on a
farm machine. All hosts see the same ``FARM_STORAGE`` (namespaces share the file system):
the shared mount docs/deploy.md asks for.

A link is cut with ``ip link set v-HOST down`` on the switch side (the host keeps its
address and its loopback; it reaches no other host) and healed with ``up``.

By hand, as root: ``python -m tests.multihost up [FOLDER]`` starts it and prints how to
reach it, ``python -m tests.multihost down`` removes it (every process in its namespaces
and the namespaces).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import ConfigError
from farm.local import (
    emulator_argv,
    make_tls_files,
    node_ready,
    redis_server_argv,
    wait_for,
    wait_workers,
)
from farm.settings import Settings
from farm.state import connect

REPO = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = REPO / "deploy" / "env.example"
#: where docs/deploy.md installs the farm; the env file's paths under it point here instead
INSTALL = "/opt/farm"
SUBNET = "10.213.0"
REDIS_PORT = 6379
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Host:
    """A machine of the test bed: its namespace suffix and last address byte."""

    name: str
    octet: int

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.octet}"


HOSTS = {h.name: h for h in (Host("tester", 1), Host("redis", 2), Host("cpu", 3),
                             Host("gpu1", 11), Host("gpu2", 12), Host("gpu2n", 22),
                             Host("gpu3", 13))}  # fmt: skip


@dataclass(frozen=True)
class Node:
    """A GPU node: its name, kind, the host its server runs on and the host of its worker."""

    name: str
    kind: str
    server: str
    worker: str
    port: int
    profile: Path

    def url(self) -> str:
        scheme = "wan2gp+" if self.kind == "wan2gp" else ""
        return f"{scheme}http://{HOSTS[self.server].address}:{self.port}"

    def http(self) -> str:
        return f"http://{HOSTS[self.server].address}:{self.port}"


def namespaces_possible() -> str | None:
    """None when this process may create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"mhprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def read_env_example(path: Path = ENV_EXAMPLE) -> list[tuple[str, str | None]]:
    """``deploy/env.example`` as (line, name) pairs: ``name`` for a ``NAME=value`` line."""
    lines = []
    for line in path.read_text().splitlines():
        match = re.match(r"^(FARM_[A-Z0-9_]+)=", line)
        lines.append((line, match.group(1) if match else None))
    return lines


def write_env_file(path: Path, values: dict[str, str], example: Path = ENV_EXAMPLE) -> None:
    """Write a host's env file from ``example``: each ``NAME=`` line in ``values`` gets that
    value, paths under the install folder point at this checkout, the rest stays as it is.
    A name in ``values`` the example does not set is an error (the docs would not tell an
    operator to set it)."""
    lines = read_env_example(example)
    named = {name for _, name in lines if name}
    missing = sorted(set(values) - named)
    if missing:
        raise ConfigError(f"{example} has no NAME= line for {', '.join(missing)}")
    out = []
    for line, name in lines:
        if name in values:
            line = f"{name}={values[name]}"
        elif name and line.split("=", 1)[1].startswith(INSTALL + "/"):
            line = f"{name}={REPO}{line.split('=', 1)[1][len(INSTALL) :]}"
        out.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables a shell gets from sourcing ``path`` (``set -a; . path``)."""
    done = subprocess.run(["sh", "-c", 'set -a; . "$1"; set +a; env -0', "sh", str(path)],
                          capture_output=True, env=clean_env(), timeout=10, check=True)  # fmt: skip
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith("FARM_")}


def clean_env() -> dict[str, str]:
    """This process's environment without any FARM_* variable: a host's processes get
    their settings from its env file alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise ConfigError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


class Testbed:
    """Namespaces, links and processes of a multi-host farm under ``root``; ``prefix``
    names its namespaces (``PREFIX-HOST``). ``tunables``: settings written into every env
    file (short TTLs for tests)."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, root: Path, prefix: str, tunables: dict[str, str] | None = None,
                 node_profiles: dict[str, Path] | None = None, tls: bool = True) -> None:  # fmt: skip
        self.root = root.resolve()
        self.tls = (
            make_tls_files(self.root / "tls", addresses=(HOSTS["redis"].address,)) if tls else None
        )
        self.prefix = prefix
        self.tunables = tunables or {}
        self.password = secrets.token_hex(16)
        profiles = node_profiles or {}
        nodes = REPO / "tests" / "nodes"
        self.nodes = {
            "gpu1": Node("gpu1", "comfyui", "gpu1", "gpu1", 8188,
                         profiles.get("gpu1", nodes / "node-a.json")),
            "gpu2": Node("gpu2", "comfyui", "gpu2n", "gpu2", 8188,
                         profiles.get("gpu2", nodes / "node-a.json")),
            "gpu3": Node("gpu3", "wan2gp", "gpu3", "gpu3", 7866,
                         profiles.get("gpu3", nodes / "wan-a.json")),
        }  # fmt: skip
        self.procs: dict[str, subprocess.Popen] = {}
        self._home: int | None = None  # this thread's own network namespace, while away

    # -- layout --------------------------------------------------------------------------
    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    @property
    def switch(self) -> str:
        return f"{self.prefix}-switch"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def env_file(self, host: str) -> Path:
        return self.root / "hosts" / host / "farm.env"

    def redis_url(self, address: str | None = None, port: int = REDIS_PORT) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://:{self.password}@{address or HOSTS['redis'].address}:{port}/0"

    def settings_values(self, **override: str) -> dict[str, str]:
        """What an operator sets in the env file for this farm (docs/deploy.md)."""
        return {
            "FARM_REDIS_URL": self.redis_url(),
            "FARM_NODES": ",".join(f"{n.name}={n.url()}" for n in self.nodes.values()),
            "FARM_STORAGE": str(self.storage),
            **(self.tls_values() if self.tls else {}),
            **self.tunables,
            **override,
        }

    def tls_values(self) -> dict[str, str]:
        """TLS to Redis, as docs/redis.md has it for GPU workers on other machines."""
        assert self.tls is not None
        return {"FARM_REDIS_CA": str(self.tls.ca), "FARM_REDIS_CERT": str(self.tls.client_cert),
                "FARM_REDIS_KEY": str(self.tls.client_key)}  # fmt: skip

    def env(self, host: str = "tester") -> dict[str, str]:
        """The FARM_* variables a shell on ``host`` gets from its env file."""
        return read_env_file(self.env_file(host))

    def settings(self) -> Settings:
        return Settings.from_env(self.env())

    # -- network -------------------------------------------------------------------------
    def create_network(self) -> None:
        """The switch namespace with bridge ``br0``, and each host linked to it."""
        run("ip", "netns", "add", self.switch)
        sw = ["ip", "-n", self.switch]
        run(*sw, "link", "add", "br0", "type", "bridge")
        run(*sw, "link", "set", "br0", "up")
        for host in HOSTS.values():
            ns = self.ns(host.name)
            run("ip", "netns", "add", ns)
            run(*sw, "link", "add", f"v-{host.name}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
            run(*sw, "link", "set", f"v-{host.name}", "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", "eth0", "up")

    def cut(self, host: str) -> None:
        """Cut ``host`` off the network: it reaches no other host, nor they it."""
        run("ip", "-n", self.switch, "link", "set", f"v-{host}", "down")

    def heal(self, host: str) -> None:
        run("ip", "-n", self.switch, "link", "set", f"v-{host}", "up")

    def enter(self, host: str = "tester") -> None:
        """Move this thread (and threads it starts later) into ``host``'s network."""
        if self._home is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.ns(host)}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def on(self, host: str):
        """Run the block on ``host`` (its network), then back on the tester host."""
        self.enter(host)
        try:
            yield
        finally:
            self.enter("tester")

    def admin(self, node: str, method: str, path: str, body: Any = None) -> Any:
        """Call an emulator-only route of ``node`` (``/emulator/faults``, ``/emulator/jobs``),
        which answers loopback callers alone: from the node's own host, from 127.0.0.1."""
        spec = self.nodes[node]
        with self.on(spec.server):
            conn = http.client.HTTPConnection(HOSTS[spec.server].address, spec.port, timeout=10,
                                              source_address=("127.0.0.1", 0))  # fmt: skip
            try:
                data = None if body is None else json.dumps(body)
                conn.request(method, path, data, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                text = resp.read().decode()
            finally:
                conn.close()
        if resp.status != 200:
            raise ConfigError(f"{method} {path} on {node}: HTTP {resp.status} {text}")
        return json.loads(text)

    def leave(self) -> None:
        """Back into this thread's own network namespace."""
        if self._home is not None:
            _setns(self._home)
            os.close(self._home)
            self._home = None

    # -- processes -----------------------------------------------------------------------
    def spawn(self, name: str, host: str, argv: list[str], *, wrap: list[str] | None = None,
              env_file: Path | None = None) -> subprocess.Popen:  # fmt: skip
        """Run ``argv`` on ``host`` with its env file sourced, in a process group of its
        own, logging to logs/NAME.log; ``wrap``: a command run before it in the namespace
        (``unshare -m ...``) that ends by executing its arguments."""
        self.logs.mkdir(parents=True, exist_ok=True)
        env_file = env_file or self.env_file(host)
        shell = ["sh", "-c", 'set -a; . "$0"; set +a; exec "$@"', str(env_file), *argv]
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *(wrap or []), *shell],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=clean_env(), cwd=self.root, start_new_session=True)  # fmt: skip
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def start_redis(self) -> None:
        folder = self.root / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "auth.conf"
        conf.touch(mode=0o600)
        conf.write_text(f'requirepass "{self.password}"\n')
        listen = ["--port", str(REDIS_PORT)]
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(REDIS_PORT),
                      "--tls-cert-file", str(self.tls.server_cert),
                      "--tls-key-file", str(self.tls.server_key),
                      "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "optional"]  # fmt: skip
        argv = redis_server_argv(folder, listen, [str(conf)], bind=HOSTS["redis"].address)
        proc = self.spawn("redis", "redis", argv)
        client = connect(self.settings(), check=False)
        try:
            wait_for(client.ping, 15, "redis-server", proc, self.logs / "redis.log")
        finally:
            client.close()

    def start_node(self, name: str) -> None:
        node = self.nodes[name]
        argv = emulator_argv(node.kind, node.port, node.profile, self.root / "nodes" / name,
                             host=HOSTS[node.server].address)  # fmt: skip
        proc = self.spawn(f"node-{name}", node.server, argv)
        wait_for(lambda: node_ready(node.kind, node.port, proc.pid, HOSTS[node.server].address),
                 60, f"node {name}", proc, self.logs / f"node-{name}.log")  # fmt: skip

    def start_worker(self, name: str, env_file: Path | None = None) -> None:
        node = self.nodes[name]
        self.spawn(f"worker-{name}", node.worker,
                   [sys.executable, "-m", "farm", "worker", "--node", name], env_file=env_file)  # fmt: skip

    def start_cpu(self, wrap: list[str] | None = None) -> subprocess.Popen:
        return self.spawn("worker-cpu", "cpu", [sys.executable, "-m", "farm", "worker", "--cpu",
                                                "--concurrency", "1"], wrap=wrap)  # fmt: skip

    def start_ingest(self) -> None:
        self.spawn("ingest", "cpu", [sys.executable, "-m", "farm", "ingest"])

    def wait_workers(self, names: list[str] | None = None, timeout: float = 90) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ConfigError(f"{name} exited with code {proc.returncode}; see "
                                  f"{self.logs / (name + '.log')}")  # fmt: skip
        wait_workers(self.settings(), list(self.nodes) if names is None else names, 1, timeout,
                     self.logs / "worker-cpu.log")  # fmt: skip

    # -- the whole bed -------------------------------------------------------------------
    def start(self) -> Testbed:
        """Network, env files, then Redis, the nodes, the workers and ingest; this thread
        joins the tester host."""
        try:
            self.create_network()
            for host in HOSTS:
                write_env_file(self.env_file(host), self.settings_values())
            self.storage.mkdir(parents=True, exist_ok=True)
            self.enter("tester")
            self.start_redis()
            for name in self.nodes:
                self.start_node(name)
            for name in self.nodes:
                self.start_worker(name)
            self.start_cpu()
            self.start_ingest()
            self.wait_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (workers first, Redis last), then remove the namespaces."""
        self.leave()
        order = sorted(self.procs, key=lambda n: (n == "redis", n.startswith("node-")))
        for name in order:
            self.kill(name)
        remove_namespaces(self.prefix)

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def remove_namespaces(prefix: str) -> None:
    """Kill every process left in the namespaces named ``PREFIX-*`` and delete them (the
    switch last: deleting it removes the links)."""
    names = [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines()
             if line.startswith(prefix + "-")]  # fmt: skip
    names.sort(key=lambda n: n.endswith("-switch"))
    for ns in names:
        for _ in range(50):
            pids = [int(p) for p in run("ip", "netns", "pids", ns, check=False).stdout.split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        run("ip", "netns", "del", ns, check=False)


def main(argv: list[str]) -> int:
    """``up [FOLDER]`` / ``down``: the test bed by hand (prefix ``farmbed``)."""
    prefix = "farmbed"
    if argv[:1] == ["down"]:
        remove_namespaces(prefix)
        print(f"removed the namespaces {prefix}-*")
        return 0
    if argv[:1] != ["up"]:
        print(__doc__)
        return 2
    why = namespaces_possible()
    if why:
        print(f"cannot start the test bed: {why}", file=sys.stderr)
        return 1
    root = Path(argv[1] if len(argv) > 1 else REPO / "var" / "multihost")
    bed = Testbed(root, prefix).start()
    bed.leave()
    summary: dict[str, Any] = {
        "hosts": {h.name: h.address for h in HOSTS.values()},
        "env_file": str(bed.env_file("tester")),
        "logs": str(bed.logs),
    }
    print(json.dumps(summary, indent=1))
    print(f"\nA shell on the tester host:\n  ip netns exec {bed.ns('tester')} sh -c "
          f"'set -a; . {bed.env_file('tester')}; set +a; exec bash'\n"
          f"then e.g. `farm nodes`. Cut a host: ip -n {bed.switch} link set v-gpu1 down\n"
          f"Remove it all: python -m tests.multihost down")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
