"""Pickup latency: from a shot becoming runnable to its job starting on an idle capable node.

A fresh farm of the four bench nodes (``bench/nodes``, retimed so that renders take well
under a second: the latency does not depend on them) gets one single-shot
``preview_then_final`` scene per round, templates in turn, each round once every node is
idle and the previous scene is assembled. Two renders per round:

- the preview becomes runnable when this process puts it in the backlog
  (``Dispatcher.wait``, timed by wrapping it here);
- the final becomes runnable when its preview is done (the ``shot_preview_done`` event,
  written just before the worker puts the final in the backlog).

Each is measured to the worker starting the render (the ``shot_started`` event, written
just before the backend call) and to the node starting to execute it (ComfyUI's
``execution_start`` in ``/history``; WanGP's first job event). See docs/benchmarks.md.

    .venv/bin/python -m bench.pickup [--rounds 50] [--json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    EventLog,
    backend_start,
    bench_nodes,
    machine,
    machine_line,
    percentile,
    retimed,
    running_farm,
    table,
)
from farm.dispatch import Dispatcher
from farm.lifecycle import TERMINAL_SCENE
from farm.runtime import Runtime
from farm.scene import Scene, parse_scene
from farm.submit import enqueue

TEMPLATES = (
    "standard_generation", "fantasy_content", "high_quality", "quick_preview", "character_focus",
)  # fmt: skip
#: node timing for this benchmark: short renders
TIMING = {"model_load_s": 0.2, "step_s": 0.1}
GOAL_P50, GOAL_P99 = 0.050, 0.250


def pickup_scene(i: int) -> Scene:
    """Round ``i``'s scene: one small shot, rendered as a preview then a final."""
    shot = {"id": "s", "action_description": "a lighthouse at night", "width": 320,
            "height": 176, "frames": 17, "template": TEMPLATES[i % len(TEMPLATES)]}  # fmt: skip
    return parse_scene({"id": f"pickup-{i:03d}", "quality": "preview_then_final", "shots": [shot]})


def wait_idle(rt: Runtime, scene_id: str | None, timeout: float = 120.0) -> None:
    """Wait until ``scene_id`` (if any) is over and no node holds a shot."""
    keys = [rt.settings.keys.bound(n.name) for n in rt.registry.infos()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        over = scene_id is None or rt.state.scene(scene_id)["state"] in TERMINAL_SCENE
        if over and not any(rt.redis.hlen(k) for k in keys):
            return
        time.sleep(0.05)
    raise TimeoutError(f"farm not idle after {timeout:g}s (scene {scene_id})")


def measure(rt: Runtime, rounds: int, events: EventLog) -> list[dict[str, Any]]:
    """Run the rounds; one sample per render: kind, node, and its times."""
    runnable: dict[str, float] = {}
    original = Dispatcher.wait
    signature = inspect.signature(original)

    def timed_wait(self: Dispatcher, *args: Any, **kwargs: Any) -> Any:
        scene_id = signature.bind(self, *args, **kwargs).arguments["scene_id"]
        runnable[scene_id] = time.time()
        return original(self, *args, **kwargs)

    Dispatcher.wait = timed_wait  # type: ignore[method-assign]
    try:
        previous = None
        for i in range(rounds):
            wait_idle(rt, previous)
            scene = pickup_scene(i)
            enqueue(scene, rt)
            previous = scene.id
        wait_idle(rt, previous)
    finally:
        Dispatcher.wait = original  # type: ignore[method-assign]
    nodes = {r["name"]: r for r in rt.registry.records()}
    by_scene: dict[str, list[dict[str, str]]] = {}
    for e in events.stop():
        by_scene.setdefault(e["stream"].rsplit(":", 1)[1], []).append(e)
    samples = []
    for scene_id, mine in sorted(by_scene.items()):
        started = [float(e["time"]) for e in mine if e["type"] == "shot_started"]
        done = [float(e["time"]) for e in mine if e["type"] == "shot_preview_done"]
        log = rt.state.shot(scene_id, "s").get("attempt_log") or []
        for kind, ready, start, entry in zip(
            ("preview", "final"), [runnable[scene_id], *done], started, log, strict=False
        ):
            node = nodes[entry["node"]]
            on_node = backend_start(node["kind"], node["url"], entry["backend_job_id"])
            samples.append({"kind": kind, "node": entry["node"], "runnable": ready,
                            "worker": start, "node_start": on_node})  # fmt: skip
    return samples


def summary(samples: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows: latency percentiles (ms) per measure and kind."""
    rows = []
    measures = (
        ("runnable -> node executes", "runnable", "node_start"),
        ("runnable -> worker starts render", "runnable", "worker"),
        ("worker starts -> node executes", "worker", "node_start"),
    )
    for label, a, b in measures:
        for kind in ("all", "preview", "final"):
            values = [s[b] - s[a] for s in samples
                      if kind in ("all", s["kind"]) and s[a] and s[b]]  # fmt: skip
            rows.append([f"{label} ({kind})", str(len(values)),
                         *(f"{percentile(values, q) * 1e3:.0f}" for q in (0.5, 0.9, 0.99)),
                         f"{max(values, default=0) * 1e3:.0f}"])  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pickup", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=50, help="scenes, one after the other")
    parser.add_argument("--root", type=Path, help="farm folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print every sample as JSON")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="farm-bench-pickup-"))
    info = machine()
    nodes = retimed(bench_nodes(), root / "profiles", **TIMING)
    with running_farm(root / "farm", nodes) as (farm, rt):
        keys = [rt.state.events_key(f"pickup-{i:03d}") for i in range(args.rounds)]
        events = EventLog(farm.env()["FARM_REDIS_URL"], keys)
        events.start()
        samples = measure(rt, args.rounds, events)
    info["load_avg_end"] = machine()["load_avg"]
    if args.json:
        print(json.dumps({"machine": info, "samples": samples}, indent=1))
        return
    print(machine_line(info))
    print(f"{args.rounds} rounds, {len(samples)} renders on {len(nodes)} idle nodes;"
          f" load average at the end {' '.join(f'{x:.2f}' for x in info['load_avg_end'])}\n")  # fmt: skip
    rows = summary(samples)
    print(table(["latency (ms)", "n", "p50", "p90", "p99", "max"], rows))
    head = [s["node_start"] - s["runnable"] for s in samples if s["node_start"]]
    p50, p99 = percentile(head, 0.5), percentile(head, 0.99)
    verdict = "met" if p50 <= GOAL_P50 and p99 <= GOAL_P99 else "MISSED"
    print(f"\ngoal runnable -> node executes p50 <= {GOAL_P50 * 1e3:.0f} ms, p99 <="
          f" {GOAL_P99 * 1e3:.0f} ms: p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms ({verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
