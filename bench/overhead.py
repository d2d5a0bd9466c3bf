"""Farm overhead per shot: a shot's end-to-end time through the farm minus the time of the
same render called directly on the node's backend.

A fresh farm with one ComfyUI and one WanGP node (``cf-a`` and ``wan-a`` of ``bench/nodes``,
retimed so that a render takes about a second) renders single-shot ``final`` scenes, the
shot pinned to one kind of node (``backend``), and after each the same job straight through
``farm.backends.make_backend(kind, url).render(job, ...)`` on the same node (another seed,
so that the emulator's node cache cannot answer it). Each node first renders one shot of
the model, so both measurements find the model loaded. See docs/benchmarks.md.

    .venv/bin/python -m bench.overhead [--pairs 12] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import (
    bench_nodes,
    machine,
    machine_line,
    percentile,
    retimed,
    running_farm,
    table,
)
from farm.backends import make_backend
from farm.lifecycle import TERMINAL_SCENE
from farm.planning import plan_variants
from farm.runtime import Runtime
from farm.scene import Scene, parse_scene
from farm.submit import enqueue

NODES = ("cf-a", "wan-a")
TIMING = {"model_load_s": 0.2, "step_s": 1.0}
GOAL = 0.100


def one_shot(scene_id: str, backend: str, seed: int) -> Scene:
    shot = {"id": "s", "action_description": "a lighthouse at night", "width": 320,
            "height": 176, "frames": 17, "seed": seed, "backend": backend}  # fmt: skip
    return parse_scene({"id": scene_id, "quality": "final", "shots": [shot]})


def through_farm(rt: Runtime, scene: Scene, timeout: float = 120.0) -> dict[str, Any]:
    """Submit ``scene`` and wait until it is over; the shot's times."""
    t0 = time.time()
    enqueue(scene, rt)
    submitted = time.time()
    deadline = time.monotonic() + timeout
    while rt.state.scene(scene.id)["state"] not in TERMINAL_SCENE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"scene {scene.id} not over after {timeout:g}s")
        time.sleep(0.05)
    shot = rt.state.shot(scene.id, "s")
    entry = (shot.get("attempt_log") or [{}])[-1]
    return {"submit": t0, "enqueue": submitted - t0, "started": shot["started"],
            "finished": shot["finished"], "render": float(entry.get("seconds", 0.0)),
            "node": shot["node"], "state": shot["state"]}  # fmt: skip


def direct(rt: Runtime, scene: Scene, node: dict[str, Any], out: Path) -> float:
    """Seconds to render ``scene``'s shot straight through the node's backend."""
    job = next(v for v in plan_variants(scene, scene.shots[0], "final")
               if v.backend == node["kind"])  # fmt: skip
    job = replace(job, node=node["name"])
    backend = make_backend(node["kind"], node["url"], rt.settings)
    began = time.monotonic()
    backend.render(job, out, lambda *args, **kwargs: None)
    return time.monotonic() - began


def measure(rt: Runtime, pairs: int, root: Path) -> list[dict[str, Any]]:
    nodes = {r["kind"]: r for r in rt.registry.records()}
    samples = []
    for kind in ("comfyui", "wan2gp"):
        through_farm(rt, one_shot(f"warm-{kind}", kind, 1))  # the model loaded on the node
        for i in range(pairs):
            farm = through_farm(rt, one_shot(f"farm-{kind}-{i}", kind, 100 + 2 * i))
            scene = one_shot(f"direct-{kind}-{i}", kind, 101 + 2 * i)
            alone = direct(rt, scene, nodes[kind], root / "direct" / scene.id)
            samples.append({"kind": kind, **farm, "direct": alone,
                            "e2e": farm["finished"] - farm["submit"]})  # fmt: skip
    return samples


def summary(samples: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows: mean and median (ms) per measure, for each node kind and all."""
    measures = (
        ("end to end through the farm", lambda s: s["e2e"]),
        ("direct backend render", lambda s: s["direct"]),
        ("overhead (end to end - direct)", lambda s: s["e2e"] - s["direct"]),
        ("  submit: farm.submit.enqueue", lambda s: s["enqueue"]),
        ("  submitted -> worker starts render", lambda s: s["started"] - s["submit"] - s["enqueue"]),
        ("  render in the worker - direct", lambda s: s["render"] - s["direct"]),
        ("  render ends -> shot done", lambda s: s["finished"] - s["started"] - s["render"]),
    )  # fmt: skip
    rows = []
    for label, value in measures:
        row = [label]
        for kind in ("comfyui", "wan2gp", "all"):
            values = [value(s) for s in samples if kind in ("all", s["kind"])]
            row.append(f"{statistics.mean(values) * 1e3:.0f} / {percentile(values, 0.5) * 1e3:.0f}")
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pairs", type=int, default=12, help="farm/direct pairs per node kind")
    parser.add_argument("--root", type=Path, help="farm folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print every sample as JSON")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="farm-bench-overhead-"))
    info = machine()
    nodes = [n for n in bench_nodes() if n.name in NODES]
    nodes = retimed(nodes, root / "profiles", **TIMING)
    with running_farm(root / "farm", nodes) as (_, rt):
        samples = measure(rt, args.pairs, root)
    info["load_avg_end"] = machine()["load_avg"]
    if args.json:
        print(json.dumps({"machine": info, "samples": samples}, indent=1))
        return
    print(machine_line(info))
    print(f"{len(samples)} shots through the farm, each followed by the same render direct;"
          f" load average at the end {' '.join(f'{x:.2f}' for x in info['load_avg_end'])}\n")  # fmt: skip
    print(table(["ms per shot, mean / median", "comfyui", "wan2gp", "all"], summary(samples)))
    over = statistics.mean(s["e2e"] - s["direct"] for s in samples)
    verdict = "met" if over <= GOAL else "MISSED"
    print(f"\ngoal overhead <= {GOAL * 1e3:.0f} ms per shot: mean {over * 1e3:.0f} ms ({verdict})")


if __name__ == "__main__":
    main()
