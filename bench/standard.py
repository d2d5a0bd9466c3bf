"""The standard farm scenario on a real local farm: late binding against the naive baseline.

Four emulated nodes (``bench/nodes``: two ComfyUI, two WanGP, different speeds and models)
render three scenes (``bench/scenes``: 60 shots of mixed templates, ``preview_then_final``)
twice, each time on a fresh farm started by this process: with the farm's placement
(``FARM_PLACEMENT=late``) and with the naive baseline (``FARM_PLACEMENT=naive``:
round-robin among capable nodes when a shot is enqueued, first in first out, no affinity).
Prints the makespan against a lower bound (``bench/timing.py``), model loads and the time
until every preview is done, with where each node's time went. See docs/benchmarks.md.

    .venv/bin/python -m bench.standard [--json] [--policy late|naive|both] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.harness import (
    NODES_DIR,
    SCENES_DIR,
    EventLog,
    bench_nodes,
    cpu_groups,
    cpu_seconds,
    emulator_jobs,
    machine,
    machine_line,
    retimed,
    running_farm,
    table,
    wait_shots,
)
from bench.replay import replay
from bench.timing import (
    Bound,
    Render,
    lower_bound,
    plan_renders,
    startup_seconds,
    uniform_costs,
)
from farm.emulators.profile import load_profile
from farm.local import EmulatedNode
from farm.runtime import Runtime
from farm.scene import Scene, load_scene
from farm.submit import enqueue

GOAL_BOUND, GOAL_SPEEDUP = 1.10, 1.3


@dataclass(frozen=True)
class Run:
    """One render as it happened: its node, model, start (epoch seconds) and duration
    (the worker's time in the backend call); ``models``: every diffusion model it loads
    (empty: just ``model``)."""

    shot: str
    kind: str
    node: str
    model: str
    start: float
    seconds: float
    state: str
    models: tuple[str, ...] = ()

    @property
    def needs(self) -> tuple[str, ...]:
        return self.models or (self.model,)

    @property
    def end(self) -> float:
        return self.start + self.seconds


def timeline(
    shots: Mapping[str, Mapping[str, Any]], events: Sequence[Mapping[str, str]]
) -> list[Run]:
    """Every render of ``shots`` ("scene/shot" -> shot record): the i-th ``shot_started``
    event of a shot (its time) with the i-th entry of its attempt log (node, model, kind,
    seconds, state)."""
    starts: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("type") == "shot_started":
            starts[f"{e['scene']}/{e['shot']}"].append(float(e["time"]))
    runs = []
    for key, shot in shots.items():
        for at, entry in zip(starts[key], shot.get("attempt_log") or [], strict=False):
            runs.append(Run(key, entry["kind"], entry["node"], entry["model"], at,
                            float(entry["seconds"]), entry["state"],
                            tuple(entry.get("models") or ())))  # fmt: skip
    return sorted(runs, key=lambda r: r.start)


def loads_from_jobs(
    jobs: Mapping[str, Sequence[Mapping[str, Any]]], models: Mapping[str, Sequence[str]]
) -> dict[str, int]:
    """Model loads per node from the emulators' own execution logs (node -> jobs in start
    order), each job's model looked up by its id in ``models`` (from the attempt logs)."""
    runs = [Run(job["job_id"], "", node, "?", i, 0.0, "", tuple(models.get(job["job_id"], ())))
            for node, mine in jobs.items() for i, job in enumerate(mine)]  # fmt: skip
    return loads_by_node(runs)


def reported_loads(jobs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, int]:
    """Model loads per node as the emulators report them: the ``loaded_models`` of each job
    in their execution logs (every diffusion model file a ComfyUI prompt loaded; every
    transformer file a WanGP job loaded)."""
    return {
        node: sum(len((job.get("details") or {}).get("loaded_models") or ()) for job in mine)
        for node, mine in jobs.items()
    }


def loads_by_node(runs: Sequence[Run]) -> dict[str, int]:
    """Model loads each node made: each model of a render that the node's render before did
    not use (every emulator starts with none; Wan 2.2 A14B loads two), in start order, as
    the emulators decide."""
    held: dict[str, frozenset[str]] = {}
    loads: dict[str, int] = defaultdict(int)
    for run in sorted(runs, key=lambda r: r.start):
        missing = [m for m in run.needs if m not in held.get(run.node, ())]
        if missing:
            loads[run.node] += len(missing)
        held[run.node] = frozenset(run.needs)
    return dict(loads)


@dataclass
class Outcome:
    """What one policy did with the scenario (seconds from the first submission)."""

    policy: str
    makespan: float = 0.0
    previews_done: float = 0.0
    loads: int = 0
    failed: int = 0
    submit_seconds: float = 0.0
    renders: dict[str, int] = field(default_factory=dict)
    node_loads: dict[str, int] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)  # seconds rendering
    modelled: dict[str, float] = field(default_factory=dict)  # emulator sleeps, loads included
    excess: list[float] = field(default_factory=list)  # per render: its time - the model's
    gaps: dict[str, float] = field(default_factory=dict)  # mean time between two renders
    first_start: dict[str, float] = field(default_factory=dict)
    last_end: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds during the run
    replayed: float = 0.0  # makespan of the same policy in virtual time, no farm overhead
    replayed_speeds: float = 0.0  # the same, the dispatcher knowing each node's speed
    emulator_loads: int | None = None  # the same count, in the emulators' execution order
    reported_loads: int | None = None  # the loads the emulators report they made
    runs: list[Run] = field(default_factory=list)  # every render, start in seconds from t0


def analyse(
    policy: str,
    t0: float,
    shots: Mapping[str, Mapping[str, Any]],
    events: Sequence[Mapping[str, str]],
    plan: Sequence[Render],
    speed: Mapping[str, float],
    load_s: float,
) -> Outcome:
    """The figures of one run from its shot records and events."""
    runs = timeline(shots, events)
    out = Outcome(policy)
    out.makespan = max(float(s.get("finished") or 0.0) for s in shots.values()) - t0
    previews = [float(e["time"]) for e in events if e.get("type") == "shot_preview_done"]
    out.previews_done = max(previews, default=t0) - t0
    out.failed = sum(s.get("state") != "done" for s in shots.values())
    out.runs = [replace(r, start=r.start - t0) for r in runs]
    out.node_loads = loads_by_node(runs)
    out.loads = sum(out.node_loads.values())
    work = {(r.shot, r.kind): r.options for r in plan}
    held: dict[str, frozenset[str]] = {}
    by_node: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_node[run.node].append(run)
    for node, mine in sorted(by_node.items()):
        out.renders[node] = len(mine)
        out.busy[node] = sum(r.seconds for r in mine)
        modelled = 0.0
        for r in mine:
            option = work.get((r.shot, r.kind), {}).get(node)
            model = option[1] / speed[node] if option else 0.0
            missing = [m for m in r.needs if m not in held.get(node, ())]
            model += len(missing) * load_s / speed[node]
            held[node] = frozenset(r.needs)
            modelled += model
            out.excess.append(r.seconds - model)
        out.modelled[node] = modelled
        gaps = [b.start - a.end for a, b in zip(mine, mine[1:], strict=False)]
        out.gaps[node] = sum(gaps) / len(gaps) if gaps else 0.0
        out.first_start[node] = mine[0].start - t0
        out.last_end[node] = mine[-1].end - t0
    return out


def run_policy(
    policy: str, root: Path, nodes: Sequence[EmulatedNode], scenes: Sequence[Scene], timeout: float
) -> tuple[Outcome, list[Render], Bound, dict[str, float], float]:
    """Render ``scenes`` on a fresh farm with ``policy``; the outcome, the plan and bound
    (from the farm's registry as the dispatcher sees it), node speeds and load time."""
    profiles = {n.name: load_profile(n.profile) for n in nodes}
    step_s, load_s = uniform_costs(profiles.values())
    speed = {name: p.speed for name, p in profiles.items()}
    with running_farm(root, nodes, policy) as (farm, rt):
        infos = rt.registry.infos()
        plan = plan_renders(scenes, infos, step_s, load_s)
        kinds = {n.name: n.kind for n in nodes}
        bound = lower_bound(plan, speed, load_s, startup_seconds(kinds, speed, load_s))
        replayed = replay(plan, infos, speed, load_s, naive=policy == "naive").makespan
        known = [replace(n, speed=speed.get(n.name, n.speed)) for n in infos]
        informed = replay(plan, known, speed, load_s, naive=policy == "naive").makespan
        log = EventLog(farm.env()["FARM_REDIS_URL"], [rt.state.events_key(s.id) for s in scenes])
        log.start()
        cpu0, self0 = cpu_seconds(farm), _self_cpu()
        t0 = time.time()
        for scene in scenes:
            enqueue(scene, rt)
        submitted = time.time() - t0
        wait_shots(rt, {s.id: [shot.id for shot in s.shots] for s in scenes}, timeout)
        cpu1, self1 = cpu_seconds(farm), _self_cpu()
        events = log.stop()
        shots = _records(rt, scenes)
        jobs = {n.name: emulator_jobs(farm.node_url(n.name)) for n in nodes}
    for e in events:
        e["scene"] = e["stream"].rsplit(":", 1)[1]
        if "shot" in e:
            e["shot"] = json.loads(e["shot"])  # event fields other than names are JSON
    out = analyse(policy, t0, shots, events, plan, speed, load_s)
    out.submit_seconds = submitted
    out.replayed, out.replayed_speeds = replayed, informed
    if all(mine is not None for mine in jobs.values()):
        models = {entry.get("backend_job_id"): entry.get("models") or [entry["model"]]
                  for shot in shots.values() for entry in shot.get("attempt_log") or []}  # fmt: skip
        out.emulator_loads = sum(loads_from_jobs(jobs, models).values())  # type: ignore[arg-type]
        out.reported_loads = sum(reported_loads(jobs).values())  # type: ignore[arg-type]
    used = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    out.cpu = {**cpu_groups(used), "bench process": self1 - self0}
    return out, plan, bound, speed, load_s


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _records(rt: Runtime, scenes: Sequence[Scene]) -> dict[str, dict[str, Any]]:
    return {f"{s.id}/{shot['id']}": shot for s in scenes for shot in rt.state.shots(s.id)}


def report(outcomes: Sequence[Outcome], bound: Bound, speed: Mapping[str, float]) -> str:
    """The comparison table, where each node's time went, and the goals."""

    def per_node(values: Mapping[str, float], fmt: str) -> str:
        return " ".join(format(values.get(n, 0), fmt) for n in sorted(speed))

    rows = [
        ["makespan (s)", *(f"{o.makespan:.1f}" for o in outcomes)],
        ["lower bound (s)", *(f"{bound.value:.1f}" for _ in outcomes)],
        ["makespan / bound", *(f"{o.makespan / bound.value:.3f}" for o in outcomes)],
        ["same policy replayed, no overhead (s)", *(f"{o.replayed:.1f}" for o in outcomes)],
        ["  replayed / bound", *(f"{o.replayed / bound.value:.3f}" for o in outcomes)],
        ["  the same, node speeds known (s)", *(f"{o.replayed_speeds:.1f}" for o in outcomes)],
        ["model loads", *(str(o.loads) for o in outcomes)],
        ["  in the emulators' execution order", *(str(o.emulator_loads) for o in outcomes)],
        ["  as the emulators report them", *(str(o.reported_loads) for o in outcomes)],
        ["all previews done (s)", *(f"{o.previews_done:.1f}" for o in outcomes)],
        [
            "render time - model, min / mean (s)",
            *(
                f"{min(o.excess, default=0):.2f} / {sum(o.excess) / max(1, len(o.excess)):.2f}"
                for o in outcomes
            ),
        ],
        ["shots not done", *(str(o.failed) for o in outcomes)],
        ["submitting 3 scenes (s)", *(f"{o.submit_seconds:.2f}" for o in outcomes)],
    ]
    names = " ".join(sorted(speed))
    rows += [
        [f"per node ({names}):", *("" for _ in outcomes)],
        ["  renders", *(per_node(o.renders, "d") for o in outcomes)],
        ["  model loads", *(per_node(o.node_loads, "d") for o in outcomes)],
        ["  rendering (s)", *(per_node(o.busy, ".0f") for o in outcomes)],
        ["  emulator model (s)", *(per_node(o.modelled, ".0f") for o in outcomes)],
        ["  mean gap between renders (s)", *(per_node(o.gaps, ".2f") for o in outcomes)],
        ["  first render starts (s)", *(per_node(o.first_start, ".1f") for o in outcomes)],
        ["  last render ends (s)", *(per_node(o.last_end, ".0f") for o in outcomes)],
    ]
    kinds = sorted({k for o in outcomes for k in o.cpu})
    rows += [["CPU seconds during the run:", *("" for _ in outcomes)]]
    rows += [[f"  {k}", *(f"{o.cpu.get(k, 0):.1f}" for o in outcomes)] for k in kinds]
    text = table(["", *(o.policy for o in outcomes)], rows)
    lines = [text, ""]
    late = next((o for o in outcomes if o.policy == "late"), None)
    naive = next((o for o in outcomes if o.policy == "naive"), None)
    if late:
        ratio = late.makespan / bound.value
        ok = "met" if ratio <= GOAL_BOUND else "MISSED"
        lines.append(f"goal makespan <= {GOAL_BOUND:.2f} x bound: {ratio:.3f} ({ok})")
    if late and naive:
        speedup = naive.makespan / late.makespan
        ok = "met" if speedup >= GOAL_SPEEDUP else "MISSED"
        lines.append(
            f"goal >= {GOAL_SPEEDUP:.1f}x faster than naive: x{speedup:.2f} ({ok}); previews"
            f" x{naive.previews_done / max(late.previews_done, 1e-9):.2f} sooner, model loads"
            f" x{naive.loads / max(1, late.loads):.2f} fewer"
        )
    return "\n".join(lines)


def describe(
    nodes: Sequence[EmulatedNode], plan: Sequence[Render], bound: Bound, speed: Mapping[str, float],
    load_s: float,
) -> str:  # fmt: skip
    """The farm, the workload and the bound, in a few lines."""
    farm = ", ".join(f"{n.name} ({n.kind}, speed {speed[n.name]:g})" for n in nodes)
    shots = len({r.shot for r in plan})
    groups = len({tuple(sorted((n, m) for n, (m, _) in r.options.items())) for r in plan})
    work = sum(min(w for _, w in r.options.values()) for r in plan)
    weights = " ".join(f"{n}={w:.2f}" for n, w in bound.weights.items())
    return "\n".join([
        f"nodes: {farm}; model load {load_s:g} s at speed 1",
        f"workload: {shots} shots, {len(plan)} renders in {groups} groups; least work"
        f" {work:.1f} s at speed 1",
        f"lower bound {bound.value:.1f} s = max(chain {bound.chain:.1f}, area {bound.area:.1f}"
        f" [{'+'.join(bound.area_nodes)}: {bound.area_work:.1f} s work + {bound.area_loads}"
        f" loads], fractional {bound.fractional:.1f} [y: {weights}])",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.standard", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--policy", choices=("late", "naive", "both"), default="both")
    parser.add_argument("--nodes", type=Path, default=NODES_DIR, help="folder of node profiles")
    parser.add_argument("--scenes", type=Path, default=SCENES_DIR, help="folder of scene files")
    parser.add_argument("--root", type=Path, help="farm folders (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every node's step_s and model_load_s"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    nodes = bench_nodes(args.nodes)
    scenes = [load_scene(p) for p in sorted(args.scenes.glob("*.json"))]
    root = args.root or Path(tempfile.mkdtemp(prefix="farm-bench-standard-"))
    if args.scale != 1.0:
        step_s, load_s = uniform_costs(load_profile(n.profile) for n in nodes)
        timing = {"step_s": step_s * args.scale, "model_load_s": load_s * args.scale}
        nodes = retimed(nodes, root / "profiles", **timing)
    info = machine()
    if not args.json:
        print(machine_line(info), flush=True)
    outcomes = []
    policies = ("late", "naive") if args.policy == "both" else (args.policy,)
    for policy in policies:
        out, plan, bound, speed, load_s = run_policy(
            policy, root / policy, nodes, scenes, args.timeout
        )
        outcomes.append(out)
        if not args.json:
            if len(outcomes) == 1:
                print(describe(nodes, plan, bound, speed, load_s), flush=True)
            print(f"{policy}: makespan {out.makespan:.1f} s", flush=True)
    info["load_avg_end"] = machine()["load_avg"]
    if args.json:
        data = {"machine": info, "bound": asdict(bound), "outcomes": [asdict(o) for o in outcomes]}
        print(json.dumps(data, indent=1))
        return
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in info['load_avg_end'])}\n")
    print(report(outcomes, bound, speed))
    print(f"\nlogs: {root}")


if __name__ == "__main__":
    main()
