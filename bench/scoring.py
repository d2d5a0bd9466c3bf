"""Scoring speed: frames per second per core of a full metrics pass over one clip.

A synthetic clip (``--frames`` x ``--width`` x ``--height`` at 16 fps, a textured object on
a trajectory, the camera panning right) is written to H.264 once. A pass is
:func:`farm.metrics.score_clip` on it with that trajectory: decode and every metric,
trajectory adherence with one track included. It runs first in one process with
``cv2.setNumThreads(1)`` (best of ``--repeat`` passes after a warm-up, with the stages of
that pass), then in ``--processes`` processes at once (one per core by default, each with
``cv2.setNumThreads(1)``), which is how CPU workers share a machine. The goal is
>= 60 frames/s/core on 81 frames of 832x480. See docs/benchmarks.md.

    .venv/bin/python -m bench.scoring [--frames 81] [--width 832] [--height 480]
                                      [--repeat 5] [--processes N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import machine, machine_line, table

GOAL_FPS = 60.0
FPS = 16
PROMPT = "a red fox runs, camera pans right, smooth movement"


def trajectory(frames: int, width: int, height: int) -> list[tuple[float, float]]:
    """One point per frame: left to right across half the frame on a gentle wave."""
    a = np.linspace(0.0, 1.0, frames)
    x = width * (200 + 400 * a) / 832
    y = height * (240 + 100 * np.sin(3 * a)) / 480
    return [(float(u), float(v)) for u, v in zip(x, y, strict=True)]


def make_clip(folder: Path, frames: int, width: int, height: int) -> Path:
    """Synthesize and encode the bench clip; its path."""
    from farm.emulators.synth import ClipSpec, synthesize
    from farm.media import write_video

    track = tuple(trajectory(frames, width, height))
    spec = ClipSpec(width, height, frames, FPS, 3, PROMPT, tracks=(track,))
    path = folder / f"scoring-{width}x{height}x{frames}.mp4"
    write_video(path, synthesize(spec), FPS)
    return path


def passes(path: Path, track: list, repeat: int, barrier: Any = None) -> list[dict[str, Any]]:
    """``repeat`` timed passes after one warm-up, in this process with one OpenCV thread:
    wall and CPU seconds and the stages of each."""
    import cv2

    from farm.metrics import score_clip

    cv2.setNumThreads(1)
    score_clip(path, [track])
    if barrier is not None:
        barrier.wait()
    out = []
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        result = score_clip(path, [track])
        seconds, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out.append({"seconds": seconds, "cpu_seconds": cpu, "stages": result["stage_seconds"]})
    return out


def _worker(path: Path, track: list, repeat: int, barrier: Any, queue: Any) -> None:
    queue.put(passes(path, track, repeat, barrier))


def all_cores(path: Path, track: list, repeat: int, processes: int) -> list[list[dict]]:
    """The passes of ``processes`` processes started together (spawned, so each has its own
    fresh OpenCV)."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    args = (path, track, repeat, barrier, queue)
    procs = [ctx.Process(target=_worker, args=args) for _ in range(processes)]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    return results


def run(frames: int, width: int, height: int, repeat: int, processes: int) -> dict[str, Any]:
    """Every figure of the bench, as a dict."""
    track = trajectory(frames, width, height)
    with tempfile.TemporaryDirectory(prefix="farm-bench-scoring-") as folder:
        path = make_clip(Path(folder), frames, width, height)
        single = passes(path, track, repeat)
        parallel = all_cores(path, track, repeat, processes) if processes > 0 else []
    best = min(single, key=lambda p: p["seconds"])
    medians = [statistics.median(p["seconds"] for p in runs) for runs in parallel]
    out: dict[str, Any] = {
        "frames": frames, "width": width, "height": height, "repeat": repeat,
        "single": {
            "best_seconds": best["seconds"],
            "median_seconds": statistics.median(p["seconds"] for p in single),
            "best_cpu_seconds": min(p["cpu_seconds"] for p in single),
            "stages": best["stages"],
        },
    }  # fmt: skip
    out["single"]["fps"] = frames / best["seconds"]
    if parallel:
        per_core = frames / statistics.median(medians)
        out["all_cores"] = {
            "processes": processes,
            "median_seconds_per_process": medians,
            "fps_per_core": per_core,
            "fps_total": per_core * processes,
        }
    goal = out.get("all_cores", {}).get("fps_per_core", out["single"]["fps"])
    out["goal_met"] = goal >= GOAL_FPS
    return out


def report(result: dict[str, Any]) -> str:
    """The figures as text."""
    n, single = result["frames"], result["single"]
    size = f"{result['width']}x{result['height']}"
    head = f"clip {size}, {n} frames; timed passes per process: {result['repeat']}"
    rows = [
        ["one process, best", f"{single['best_seconds']:.3f} s", f"{single['fps']:.1f}"],
        ["one process, median", f"{single['median_seconds']:.3f} s",
         f"{n / single['median_seconds']:.1f}"],
        ["one process, best CPU time", f"{single['best_cpu_seconds']:.3f} s",
         f"{n / single['best_cpu_seconds']:.1f}"],
    ]  # fmt: skip
    if "all_cores" in result:
        cores = result["all_cores"]
        seconds = statistics.median(cores["median_seconds_per_process"])
        rate = f"{cores['fps_per_core']:.1f} per core, {cores['fps_total']:.1f} in all"
        rows.append([f"{cores['processes']} processes at once, median", f"{seconds:.3f} s", rate])
    stages = sorted(single["stages"].items(), key=lambda kv: -kv[1])
    stage_rows = [[name, f"{s * 1000:.1f} ms", f"{s * 1000 / n:.2f} ms"] for name, s in stages]
    basis = "all cores busy" if "all_cores" in result else "one process"
    fps = result.get("all_cores", {}).get("fps_per_core", single["fps"])
    verdict = "met" if result["goal_met"] else "MISSED"
    return "\n".join([
        head, table(["pass", "seconds", "frames/s"], rows), "",
        "stages of the best single pass:", table(["stage", "time", "per frame"], stage_rows), "",
        f"goal >= {GOAL_FPS:.0f} frames/s/core ({basis}): {fps:.1f} ({verdict})",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scoring", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per process")
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="processes at once for the all-cores figure (default: one per core; 0: skip it)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    info = machine()
    result = run(args.frames, args.width, args.height, max(1, args.repeat), args.processes)
    info["load_avg_end"] = machine()["load_avg"]
    if args.json:
        print(json.dumps({"machine": info, **result}, indent=1))
        return
    print(machine_line(info))
    print(report(result))


if __name__ == "__main__":
    main()
