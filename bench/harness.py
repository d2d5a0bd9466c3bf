"""What the real-farm benchmarks share: the machine, a local farm this process drives, the
farm's event streams, and a table printer.

Every benchmark starts its own :class:`farm.local.LocalFarm` (``redis-server`` on a free
loopback port, one emulator per node, one Celery worker per node queue, a CPU worker) and
points this process at it with :func:`attach`, as the test suite does; a second farm in the
same process gets a fresh attachment.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import requests

from farm.emulators.profile import NodeProfile, load_profile
from farm.lifecycle import TERMINAL_SHOT
from farm.local import EmulatedNode, LocalFarm
from farm.runtime import Runtime

BENCH = Path(__file__).resolve().parent
NODES_DIR = BENCH / "nodes"
SCENES_DIR = BENCH / "scenes"
#: every benchmark farm: no render cache (each shot renders), the given placement policy
FARM_ENV = {"FARM_CACHE": "0"}


# -- the machine ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, Python and Redis versions, and the load average now."""
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        kib = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    exe = shutil.which("redis-server")
    version = (
        subprocess.run([exe, "--version"], capture_output=True, text=True).stdout if exe else ""
    )
    redis_v = next((w[2:] for w in version.split() if w.startswith("v=")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(kib / 2**20, 1),
        "python": platform.python_version(),
        "redis": redis_v,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    load = " ".join(f"{x:.2f}" for x in info["load_avg"])
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, "
        f"Python {info['python']}, Redis {info['redis']}; load average {load}"
    )


# -- nodes ----------------------------------------------------------------------------------
def node_kind(profile: NodeProfile) -> str:
    """``wan2gp`` for a profile listing WanGP model ids, else ``comfyui``."""
    return "wan2gp" if profile.files("wangp") else "comfyui"


def bench_nodes(folder: Path = NODES_DIR) -> list[EmulatedNode]:
    """The emulated nodes of ``folder/*.json``, named after their files."""
    return [
        EmulatedNode(path.stem, path, node_kind(load_profile(path)))
        for path in sorted(folder.glob("*.json"))
    ]


def retimed(nodes: Sequence[EmulatedNode], folder: Path, **timing: float) -> list[EmulatedNode]:
    """Copies of ``nodes`` whose profiles, written to ``folder``, have the given timing
    fields replaced (e.g. ``model_load_s=0.2, step_s=0.05``)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for node in nodes:
        data = {**json.loads(node.profile.read_text()), **timing}
        path = folder / node.profile.name
        path.write_text(json.dumps(data, indent=1))
        out.append(EmulatedNode(node.name, path, node.kind))
    return out


# -- a farm this process drives -------------------------------------------------------------
def attach(farm: LocalFarm) -> Runtime:
    """Point this process (settings, runtime, the Celery app's broker, backend and
    connection pools) at ``farm``."""
    from farm import runtime, settings
    from farm.celery_app import app, celery_config

    os.environ.update(farm.env())
    settings._current = None
    runtime._runtime = None
    app.conf.update(celery_config(settings.get_settings()))
    app._pool = None  # what Celery resets after a fork: connections to the old broker
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)
    return runtime.get_runtime()


@contextmanager
def running_farm(
    root: Path, nodes: Sequence[EmulatedNode], placement: str = "late", **env: str
) -> Iterator[tuple[LocalFarm, Runtime]]:
    """A fresh farm under ``root`` (emptied first) with placement policy ``placement``,
    this process attached to it; stopped on exit."""
    if root.exists():
        shutil.rmtree(root)
    extra = {**FARM_ENV, "FARM_PLACEMENT": placement, **env}
    farm = LocalFarm(root, list(nodes), extra_env=extra)
    farm.start()
    try:
        rt = attach(farm)
        wait_nodes(rt, [n.name for n in nodes])
        yield farm, rt
    finally:
        detach()
        farm.stop()


def detach() -> None:
    """Drop the result subscriptions publishing tasks left in this process while the
    farm's Redis is still up (else they are dropped at exit, against a stopped server)."""
    from farm.celery_app import app

    gc.collect()
    consumer = getattr(app.backend, "result_consumer", None)
    subscribed = getattr(consumer, "subscribed_to", None)
    for key in list(subscribed or ()):
        subscribed.discard(key)
        if consumer._pubsub is not None:
            consumer._pubsub.unsubscribe(key)


def wait_nodes(rt: Runtime, names: Sequence[str], timeout: float = 60.0) -> None:
    """Wait until every node in ``names`` is registered, described and alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = {n.name for n in rt.registry.infos() if n.alive and n.models}
        if live >= set(names):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nodes not ready after {timeout:g}s: {sorted(set(names) - live)}")


def wait_shots(rt: Runtime, scenes: dict[str, list[str]], timeout: float) -> None:
    """Wait until every shot of ``scenes`` (scene id -> shot ids) is over."""
    keys = [rt.state.shot_key(s, shot) for s, shots in scenes.items() for shot in shots]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipe = rt.redis.pipeline()
        for key in keys:
            pipe.hget(key, "state")
        if all(state in TERMINAL_SHOT for state in pipe.execute()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"shots not over after {timeout:g}s")


def cpu_seconds(farm: LocalFarm) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process the farm started, with
    its children (each runs in its own session: Celery pool processes, ffmpeg)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {proc.pid: name for name, proc in farm.procs.items()}
    out = dict.fromkeys(farm.procs, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        session = int(fields[3])  # fields from the state on: state ppid pgrp session ...
        if session in names:
            used = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            out[names[session]] += used / tick
    return out


def cpu_groups(seconds: dict[str, float]) -> dict[str, float]:
    """CPU seconds by kind of process: emulators, node workers, CPU worker, Redis."""
    out: dict[str, float] = {}
    for name, value in seconds.items():
        kind = "node workers" if name.startswith("worker-") and name != "worker-cpu" else name
        kind = "emulators" if name.startswith("emulator-") else kind
        kind = {"worker-cpu": "cpu worker"}.get(kind, kind)
        out[kind] = out.get(kind, 0.0) + value
    return out


# -- events ---------------------------------------------------------------------------------
class EventLog(threading.Thread):
    """Reads the event streams ``keys`` as they are written (the streams are capped, so
    they are read live), keeping every event's fields and its stream."""

    def __init__(self, url: str, keys: Sequence[str]) -> None:
        super().__init__(name="event-log", daemon=True)
        self.url, self.keys = url, keys
        self.events: list[dict[str, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)
        after = dict.fromkeys(self.keys, "0")
        while True:
            stopping = self.stopped.is_set()
            for key, entries in client.xread(after, count=5000, block=100) or []:
                for entry_id, data in entries:
                    after[key] = entry_id
                    self.events.append({**data, "stream": key})
            if stopping:  # one last read after stop() was asked
                break
        client.close()

    def stop(self) -> list[dict[str, str]]:
        self.stopped.set()
        self.join(timeout=10)
        return self.events


def backend_start(kind: str, url: str, job_id: str) -> float | None:
    """When the node began executing job ``job_id`` (epoch seconds), from the node itself:
    ComfyUI's ``execution_start`` message in ``/history``, WanGP's first job event."""
    from farm.backends.comfyui import ComfyClient
    from farm.backends.wan2gp import WanClient

    if kind == "comfyui":
        entry = ComfyClient(url, 10.0).history(job_id) or {}
        for event, data in entry.get("status", {}).get("messages", []):
            if event == "execution_start":
                return data["timestamp"] / 1000.0
        return None
    snap = WanClient(url, 10.0).get_job(job_id)
    times = [e["timestamp"] for e in snap.get("events") or [] if e.get("kind") == "started"]
    return min(times) if times else snap.get("created_at")


def emulator_jobs(url: str) -> list[dict[str, Any]] | None:
    """The executions a node started, oldest first (the emulator-only ``GET
    /emulator/jobs``: job id, ``started_at``, status), or None if it has no such route."""
    resp = requests.get(url + "/emulator/jobs", timeout=10)
    return resp.json()["jobs"] if resp.ok else None


# -- figures --------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The value at rank ``floor(q * n)`` of the ``n`` sorted values (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [f"{row[0]:<{widths[0]}}"]
        cells += [f"{str(c):>{w}}" for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
