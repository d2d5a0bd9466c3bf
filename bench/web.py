"""`farm web` under a big farm: page load times with 10,000 scenes, and the server's memory
while pages stay open and the farm keeps sending events.

A fresh redis-server gets ``--scenes`` scenes of 4 shots each, recorded the way
``farm enqueue`` records them (:func:`farm.lifecycle.create`; no nodes or workers run).
``farm web --no-auth`` then serves them. Each page is loaded ``--loads`` times: the first
page of scenes, a state filter and an id search (both read every scene's state), a scene.
Then ``--pages`` pages stay open on their event streams (scene lists and scenes in turn)
while the farm writes shot progress with its event (10 a second, on the open scenes) and a
new scene every 5 seconds, for ``--minutes``; the server's resident memory is sampled
every 30 seconds. See docs/benchmarks.md.

    .venv/bin/python -m bench.web [--scenes 10000] [--minutes 5] [--pages 4] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from bench.harness import machine, machine_line, percentile, table
from farm.local import free_port, redis_server_argv
from farm.settings import Settings

SHOTS = 4


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        kib = int(next(line for line in fh if line.startswith("VmRSS")).split()[1])
    return round(kib / 1024, 1)


def populate(rt: Any, count: int, start: int = 0) -> list[str]:
    """``count`` scenes of SHOTS queued shots, recorded as `farm enqueue` records them."""
    from farm import lifecycle

    ids = []
    for i in range(start, start + count):
        scene_id = f"bench-{i:05d}"
        shots = [{"shot_id": f"s{j}", "node": None, "kind": "final"} for j in range(SHOTS)]
        spec = {"id": scene_id, "title": f"scene {i}", "quality": "final", "priority": 5,
                "shots": [{"id": f"s{j}"} for j in range(SHOTS)]}  # fmt: skip
        lifecycle.create(rt, spec, shots, "final", enqueuer=uuid.uuid4().hex)
        ids.append(scene_id)
    return ids


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def load_times(base: str, paths: dict[str, str], loads: int) -> dict[str, list[float]]:
    session = requests.Session()
    session.get(base + "/scenes", timeout=30)  # the anonymous session's cookie
    out: dict[str, list[float]] = {}
    for name, path in paths.items():
        times = []
        for _ in range(loads):
            t0 = time.perf_counter()
            resp = session.get(base + path, timeout=60)
            resp.raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = times
    return out


def follow(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """Read one page's event stream until ``stop``, counting its updates."""
    with (contextlib.suppress(requests.RequestException),  # the server stopped
          requests.get(url, stream=True, timeout=(5, 60)) as resp):  # fmt: skip
        for line in resp.iter_lines():
            if stop.is_set():
                return
            if line.startswith(b"data:"):
                counts[url] = counts.get(url, 0) + 1


def run(scenes: int, minutes: float, pages: int, loads: int) -> dict[str, Any]:
    from farm import runtime
    from farm import settings as settings_mod
    from farm.runtime import get_runtime

    folder = Path(tempfile.mkdtemp(prefix="bench-web-"))
    rport, wport = free_port(), free_port()
    redis_proc = subprocess.Popen(redis_server_argv(folder, ["--port", str(rport)]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update({"FARM_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
                "FARM_STORAGE": str(folder / "storage")})  # fmt: skip
    web = None
    try:
        wait_port(rport)
        os.environ.update(env)
        settings_mod._current, runtime._runtime = None, None
        Settings.from_env(env)
        rt = get_runtime()
        t0 = time.monotonic()
        ids = populate(rt, scenes)
        made = time.monotonic() - t0
        web = subprocess.Popen([sys.executable, "-m", "farm", "web", "--no-auth", "--port",
                                str(wport)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
        wait_port(wport)
        base = f"http://127.0.0.1:{wport}"
        paths = {"scenes, first page": "/scenes", "scenes, page 100": "/scenes?page=100",
                 "filter by state": "/scenes?state=queued&page=2",
                 "search by id": "/scenes?q=bench-0999", "a scene": f"/scenes/{ids[0]}",
                 "nodes": "/nodes"}  # fmt: skip
        times = load_times(base, paths, loads)
        rss = [(0.0, rss_mib(web.pid))]
        stop, counts = threading.Event(), {}
        watched = ids[-pages:]
        urls = [f"{base}/events/scenes" if i % 2 == 0 else f"{base}/events/scenes/{watched[i]}"
                for i in range(pages)]  # fmt: skip
        readers = [threading.Thread(target=follow, args=(u, stop, counts), daemon=True)
                   for u in urls]  # fmt: skip
        for t in readers:
            t.start()
        start, events, added, next_scene = time.monotonic(), 0, 0, time.monotonic() + 5
        next_sample = start + 30
        while time.monotonic() - start < minutes * 60:
            scene_id = random.choice(watched)
            shot = f"s{random.randrange(SHOTS)}"
            rt.redis.hset(rt.state.shot_key(scene_id, shot), "progress", f"{random.random():.3f}")
            rt.state.event(scene_id, "shot_progress", shot=shot)
            events += 1
            now = time.monotonic()
            if now >= next_scene:
                populate(rt, 1, scenes + added)
                added, next_scene = added + 1, now + 5
            if now >= next_sample:
                rss.append((round((now - start) / 60, 2), rss_mib(web.pid)))
                next_sample += 30
            time.sleep(0.1)
        rss.append((round((time.monotonic() - start) / 60, 2), rss_mib(web.pid)))
        stop.set()
        return {"machine": machine(), "scenes": scenes, "populate_s": round(made, 1),
                "loads": {k: [round(t, 1) for t in v] for k, v in times.items()},
                "minutes": minutes, "pages": pages, "events": events, "scenes_added": added,
                "updates_received": sum(counts.values()), "rss_mib": rss}  # fmt: skip
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=10)
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


def report(result: dict[str, Any]) -> str:
    rows = [[name, f"{percentile(v, 0.5):.0f}", f"{percentile(v, 0.9):.0f}", f"{max(v):.0f}"]
            for name, v in result["loads"].items()]  # fmt: skip
    lines = [machine_line(result["machine"]),
             f"{result['scenes']} scenes of {SHOTS} shots (recorded in {result['populate_s']} s)",
             "", table(["page load, ms", "median", "p90", "max"], rows), "",
             f"{result['pages']} pages open for {result['minutes']:g} min: {result['events']} "
             f"events, {result['scenes_added']} new scenes, {result['updates_received']} "
             "updates received",
             table(["minutes", "server RSS, MiB"],
                   [[f"{m:g}", f"{r:.1f}"] for m, r in result["rss_mib"]])]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--loads", type=int, default=20, help="times each page is loaded")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.scenes, args.minutes, args.pages, args.loads)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
