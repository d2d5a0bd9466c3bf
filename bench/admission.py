"""Admission: shots per second accepted by one submission of a large scene, and the Redis
memory held per waiting shot.

A fresh farm of the four bench nodes (``bench/nodes``) takes one ``preview_then_final``
scene of ``--shots`` shots (the 60 shots of ``bench/scenes`` over and over, new ids) through
:func:`farm.submit.enqueue` (what ``farm enqueue`` calls after reading the file: plan, check
every shot has a capable node, record, freeze the chord, fill the backlog, first dispatch).
The scene is also written to a file, and reading and validating that file
(:func:`farm.scene.load_scene`) is timed apart, so the two rates combine into what
``farm enqueue FILE`` reaches.
Memory is Redis ``INFO memory`` ``used_memory`` after minus before, over the shots, with a
breakdown by key family (``MEMORY USAGE``). ``--profile`` adds where the time goes
(cProfile). See docs/benchmarks.md.

    .venv/bin/python -m bench.admission [--shots 10000] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import (
    SCENES_DIR,
    bench_nodes,
    machine,
    machine_line,
    running_farm,
    table,
)
from farm.local import LocalFarm
from farm.runtime import Runtime
from farm.scene import Scene, load_scene
from farm.submit import enqueue

GOAL_RATE, GOAL_BYTES = 1000.0, 2048.0
#: a scene file's largest number of shots (schema ``maxItems``)
FILE_SHOTS = 10_000


def large_scene(shots: int, scene_id: str = "admission") -> Scene:
    """One scene of ``shots`` shots: the bench scenes' shots in turn, renamed."""
    pool = [shot for path in sorted(SCENES_DIR.glob("*.json")) for shot in load_scene(path).shots]
    made = tuple(replace(pool[i % len(pool)], id=f"s{i:05d}") for i in range(shots))
    return Scene(scene_id, made, "admission", "preview_then_final", 5)


def scene_file(folder: Path, shots: int) -> Path:
    """A scene file of ``shots`` shots (at most FILE_SHOTS), the bench shots in turn."""
    pool = []
    for path in sorted(SCENES_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        for raw in data["shots"]:
            if "start_image" in raw:
                raw["start_image"] = str((path.parent / raw["start_image"]).resolve())
            pool.append(raw)
    raws = [{**pool[i % len(pool)], "id": f"s{i:05d}"} for i in range(shots)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "large.json"
    path.write_text(json.dumps({"id": "large", "quality": "preview_then_final", "shots": raws}))
    return path


def key_family(key: str) -> str:
    """A key with its scene, shot, group and task ids replaced by ``*``."""
    key = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "*", key)
    key = re.sub(r"^(farm:shot:[^:]+:).*", r"\1*", key)
    return re.sub(r"^(farm:wait:).*", r"\1*", key)


def memory_by_family(rt: Runtime) -> dict[str, tuple[int, int]]:
    """Bytes and keys per key family, from ``MEMORY USAGE`` of every key."""
    keys = list(rt.redis.scan_iter(count=1000))
    pipe = rt.redis.pipeline()
    for key in keys:
        pipe.memory_usage(key, samples=0)
    out: dict[str, tuple[int, int]] = {}
    for key, used in zip(keys, pipe.execute(), strict=True):
        size, count = out.get(key_family(key), (0, 0))
        out[key_family(key)] = (size + (used or 0), count + 1)
    return out


def quiet(farm: LocalFarm) -> None:
    """Stop every worker at once (SIGKILL: its node stays registered, live for the raised
    node TTL), so that nothing renders, beats or dispatches while the scene is submitted."""
    for name in list(farm.procs):
        if name.startswith("worker-"):
            farm.kill(name)


def measure(rt: Runtime, scene: Scene, profile: bool) -> dict[str, Any]:
    """Submit ``scene``; its time, memory, and the profile if asked."""
    before = memory_by_family(rt)
    used0 = rt.redis.info("memory")["used_memory"]
    profiler = cProfile.Profile() if profile else None
    began = time.perf_counter()
    if profiler:
        profiler.enable()
    enqueue(scene, rt)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - began
    used1 = rt.redis.info("memory")["used_memory"]
    after = memory_by_family(rt)
    families = {
        name: (size - before.get(name, (0, 0))[0], count - before.get(name, (0, 0))[1])
        for name, (size, count) in after.items()
    }
    out = {"shots": len(scene.shots), "seconds": seconds, "used_memory": used1 - used0,
           "families": {k: v for k, v in families.items() if v[1] or abs(v[0]) > 1024}}  # fmt: skip
    if profiler:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(12)
        out["profile"] = text.getvalue()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.admission", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--shots", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help="show where the time goes")
    parser.add_argument("--root", type=Path, help="farm folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="farm-bench-admission-"))
    info = machine()
    path = scene_file(root, min(FILE_SHOTS, args.shots))
    began = time.perf_counter()
    parsed = load_scene(path)
    parse_s = time.perf_counter() - began
    scene = large_scene(args.shots)
    with running_farm(root / "farm", bench_nodes(), FARM_NODE_TTL="3600") as (farm, rt):
        quiet(farm)
        result = measure(rt, scene, args.profile)
    result |= {"file_shots": len(parsed.shots), "file_seconds": parse_s}
    info["load_avg_end"] = machine()["load_avg"]
    if args.json:
        print(json.dumps({"machine": info, **result}, indent=1))
        return
    print(machine_line(info))
    shots, seconds = result["shots"], result["seconds"]
    rate, per_shot = shots / seconds, result["used_memory"] / shots
    file_rate = result["file_shots"] / parse_s
    rows = [
        ["farm.submit.enqueue", f"{shots} shots", f"{seconds:.2f} s", f"{rate:.0f} shots/s"],
        [
            "load_scene (read + validate)",
            f"{len(parsed.shots)} shots",
            f"{parse_s:.2f} s",
            f"{file_rate:.0f} shots/s",
        ],  # fmt: skip
        ["both (farm enqueue FILE)", "", "", f"{1 / (1 / rate + 1 / file_rate):.0f} shots/s"],
        [
            "Redis used_memory delta",
            f"{result['used_memory'] / 2**20:.1f} MiB",
            "",
            f"{per_shot:.0f} B/shot",
        ],  # fmt: skip
    ]
    print(table(["", "", "", ""], rows))
    families = sorted(result["families"].items(), key=lambda kv: -kv[1][0])
    print("\nkeys added, by family (MEMORY USAGE):")
    print(table(["key family", "keys", "bytes", "B/shot"],
                [[k, str(n), str(b), f"{b / shots:.0f}"] for k, (b, n) in families[:12]]))  # fmt: skip
    if "profile" in result:
        print("\nfarm.submit.enqueue profile (cProfile, by own time):")
        print(result["profile"])
    ok_rate = "met" if rate >= GOAL_RATE else "MISSED"
    ok_mem = "met" if per_shot <= GOAL_BYTES else "MISSED"
    print(f"\ngoal >= {GOAL_RATE:.0f} shots/s: {rate:.0f} ({ok_rate}); goal <= {GOAL_BYTES:.0f}"
          f" B/shot: {per_shot:.0f} ({ok_mem})")  # fmt: skip


if __name__ == "__main__":
    main()
