"""The pure parts of the real-farm benchmarks: timing model, lower bound, replay, figures."""

from __future__ import annotations

from math import comb

import pytest

from bench.admission import key_family
from bench.replay import replay
from bench.standard import Run, loads_by_node, loads_from_jobs, reported_loads, timeline
from bench.timing import (
    FewestModels,
    Render,
    _resolution,
    _simplex,
    job_work,
    lower_bound,
    startup_seconds,
)
from farm.planning import Job, NodeInfo


def job(model: str, **params: int) -> Job:
    files = {"diffusion_models": [model]}
    return Job("s", "x", "final", "wan_t2v", "wan_t2v", model, files, params)


def test_comfyui_work_is_steps_times_step_cost_times_workload():
    j = job("m", steps=30, width=832, height=480, length=81)
    assert job_work(j, step_s=0.5, model_load_s=9.0) == pytest.approx(15.0)
    half = job("m", steps=30, width=416, height=480, length=81)
    assert job_work(half, step_s=0.5, model_load_s=9.0) == pytest.approx(7.5)


def test_wan2gp_work_includes_the_prompt_encoding():
    j = Job("s", "x", "preview", "hunyuan", "wangp", "hunyuan_t2v_fast", {"wangp": ["h"]},
            {"steps": 6, "width": 320, "height": 176, "length": 25, "fps": 24, "seed": 1,
             "prompt": "p", "negative": ""}, backend="wan2gp")  # fmt: skip
    assert job_work(j, step_s=0.0, model_load_s=2.0) == pytest.approx(0.2)
    assert job_work(j, step_s=1.0, model_load_s=2.0) > 0.2


def two_node_shot() -> tuple[list[Render], dict[str, float]]:
    """Nodes a (speed 1) and b (speed 2); one shot: preview 2 s, final 4 s of work."""
    preview = Render("s/x", "preview", {"a": (("m1",), 2.0), "b": (("m1",), 2.0)})
    final = Render("s/x", "final", {"a": (("m2",), 4.0), "b": (("m2",), 4.0)})
    return [preview, final], {"a": 1.0, "b": 2.0}


def test_lower_bound_parts_on_a_small_case():
    renders, speed = two_node_shot()
    bound = lower_bound(renders, speed, load_s=1.0)
    assert bound.chain == pytest.approx((1 + 2) / 2 + 4 / 2)  # load + preview on b, final on b
    assert bound.area == pytest.approx((6 + 2 * 1) / 3)  # all work and two models over speed 3
    assert bound.fractional == pytest.approx(6 / 3, rel=1e-3)
    assert bound.value == pytest.approx(3.5)


def test_fractional_bound_counts_nodes_that_cannot_help():
    # only a can run the long render: the fractional bound sees it, the area one too
    renders = [Render("s/1", "final", {"a": (("m",), 10.0)}),
               Render("s/2", "final", {"a": (("m",), 1.0), "b": (("m",), 1.0)})]  # fmt: skip
    bound = lower_bound(renders, {"a": 1.0, "b": 1.0}, load_s=0.0)
    assert bound.fractional == pytest.approx(10.0, rel=1e-3)
    assert bound.value == pytest.approx(10.0, rel=1e-3)


def test_fewest_models_is_a_set_cover():
    fewest = FewestModels([frozenset({"m1", "m2"}), frozenset({"m2"}), frozenset({"m3"})])
    assert fewest([0]) == 1
    assert fewest([0, 1]) == 1
    assert fewest([0, 1, 2]) == 2


def test_simplex_grid_covers_the_simplex():
    grid = _simplex(3, 100)
    assert grid.sum(axis=1) == pytest.approx(1.0)
    assert (grid >= 0).all()
    steps = _resolution(3, 100)
    assert len(grid) == comb(steps + 2, 2) <= 100 < comb(steps + 3, 2)


def test_timeline_pairs_starts_with_attempts_and_counts_loads():
    shots = {"s/x": {"attempt_log": [
        {"kind": "preview", "node": "a", "model": "m1", "seconds": 1.0, "state": "done"},
        {"kind": "final", "node": "a", "model": "m2", "seconds": 2.0, "state": "done"}]},
        "s/y": {"attempt_log": [
        {"kind": "preview", "node": "a", "model": "m1", "seconds": 1.0, "state": "done"}]}}  # fmt: skip
    events = [{"type": "shot_started", "scene": "s", "shot": "x", "time": "10.0"},
              {"type": "shot_started", "scene": "s", "shot": "y", "time": "11.0"},
              {"type": "shot_progress", "scene": "s", "shot": "y", "time": "11.5"},
              {"type": "shot_started", "scene": "s", "shot": "x", "time": "12.0"}]  # fmt: skip
    runs = timeline(shots, events)
    assert [(r.shot, r.kind, r.start, r.end) for r in runs] == [
        ("s/x", "preview", 10.0, 11.0), ("s/y", "preview", 11.0, 12.0), ("s/x", "final", 12.0, 14.0)
    ]  # fmt: skip
    assert loads_by_node(runs) == {"a": 2}
    more = [*runs, Run("s/z", "final", "a", "m1", 20.0, 1.0, "done"),
            Run("s/w", "final", "b", "m1", 0.0, 1.0, "done")]  # fmt: skip
    assert loads_by_node(more) == {"a": 3, "b": 1}


def test_loads_from_the_emulators_job_logs():
    jobs = {"a": [{"job_id": "p1"}, {"job_id": "p2"}, {"job_id": "p3"}], "b": [{"job_id": "w1"}]}
    models = {"p1": ["m1"], "p2": ["m1"], "p3": ["m2"], "w1": ["m1"]}
    assert loads_from_jobs(jobs, models) == {"a": 2, "b": 1}


def test_loads_the_emulators_report():
    jobs = {"cf": [{"details": {"loaded_models": ["hi", "lo"]}}, {"details": {}}],
            "wan": [{"details": {"loaded_models": ["t2v_2_2", "t2v_2_2:URLs2"]}},
                    {"details": {"loaded_models": []}}, {"details": {"loaded_models": ["x"]}}]}  # fmt: skip
    assert reported_loads(jobs) == {"cf": 2, "wan": 3}


def test_a_two_model_render_loads_each_model_the_node_lacks():
    """Wan 2.2 A14B loads a high-noise and a low-noise model: two loads on a node that
    held neither, none on one that rendered the same pair last, one when it held half."""
    pair = ("hi", "lo")
    runs = [Run("s/1", "final", "a", "hi", 0.0, 1.0, "done", pair),
            Run("s/2", "final", "a", "hi", 1.0, 1.0, "done", pair),
            Run("s/3", "final", "a", "hi", 2.0, 1.0, "done", ("hi", "other")),
            Run("s/4", "final", "b", "hi", 0.0, 1.0, "done", pair)]  # fmt: skip
    assert loads_by_node(runs) == {"a": 3, "b": 2}
    jobs = {"a": [{"job_id": "p1"}, {"job_id": "p2"}, {"job_id": "p3"}]}
    assert loads_from_jobs(jobs, {"p1": pair, "p2": pair, "p3": ["m1"]}) == {"a": 3}


def test_replay_of_one_shot_on_one_node():
    preview = Render("s/x", "preview", {"a": (("m1",), 2.0)}, (job("m1"),))
    final = Render("s/x", "final", {"a": (("m2",), 4.0)}, (job("m2"),))
    node = NodeInfo("a", models={"diffusion_models": ("m1", "m2")})
    for naive in (False, True):
        out = replay([preview, final], [node], {"a": 2.0}, load_s=1.0, naive=naive)
        assert out.makespan == pytest.approx((1 + 2) / 2 + (1 + 4) / 2)
        assert out.previews_done == pytest.approx(1.5)
        assert out.loads == 2


def test_replay_loads_each_model_of_a_two_model_render():
    a14b = Render("s/x", "final", {"a": (("hi", "lo"), 4.0)}, (job("hi"),))
    node = NodeInfo("a", models={"diffusion_models": ("hi", "lo")})
    out = replay([a14b], [node], {"a": 1.0}, load_s=1.0)
    assert out.loads == 2 and out.makespan == pytest.approx(1 + 1 + 4)


def test_key_families():
    assert key_family("farm:shot:admission:s00001") == "farm:shot:admission:*"
    assert (
        key_family("celery-task-meta-0f8e2d8c-1b2a-4c3d-9e8f-0123456789ab") == "celery-task-meta-*"
    )
    assert key_family("farm:wait:g0123") == "farm:wait:*"
    assert key_family("farm:scene:admission") == "farm:scene:admission"


def test_fractional_bound_counts_each_node_s_startup_loads():
    # 6 s of work splittable over two nodes that each load for 1 s first: 1 + 3 = 4
    renders = [
        Render(f"s/{i}", "final", {"a": (("m",), 1.0), "b": (("m",), 1.0)}) for i in range(6)
    ]
    plain = lower_bound(renders, {"a": 1.0, "b": 1.0}, load_s=1.0)
    started = lower_bound(renders, {"a": 1.0, "b": 1.0}, 1.0, {"a": 1.0, "b": 1.0})
    assert plain.fractional == pytest.approx(3.0, rel=1e-3)
    assert started.fractional == pytest.approx(4.0, rel=1e-3)
    # a startup longer than the chain and area bounds may exceed the makespan: left out
    huge = lower_bound(renders, {"a": 1.0, "b": 1.0}, 1.0, {"a": 100.0, "b": 1.0})
    assert huge.fractional == pytest.approx(3.0, rel=1e-3)


def test_startup_seconds_count_comfyui_s_text_encoder_and_vae():
    got = startup_seconds({"c": "comfyui", "w": "wan2gp"}, {"c": 2.0, "w": 0.5}, load_s=1.0)
    assert got["w"] == pytest.approx(2.0)
    assert got["c"] == pytest.approx((1.0 + 0.3 + 0.05) / 2.0)


def test_scoring_bench_runs_on_a_small_clip(capsys):
    from bench.scoring import main

    main(["--frames", "9", "--width", "160", "--height", "96", "--repeat", "1", "--processes", "1"])
    out = capsys.readouterr().out
    assert "frames/s/core" in out and "decode" in out


def test_the_burst_simulation_sends_overflow_and_keeps_the_budget():
    """bench.simulate --burst on a small farm: never spends nothing, always sends the cloud
    node the most, overflow less; a budget is kept up to the estimates' error (the cloud
    estimates a render at the workload's mean seconds per step)."""
    from math import inf

    from bench.simulate import LateBinding, make_workload, step_seconds, with_cloud
    from farm.scheduler import Burst

    work = with_cloud(make_workload(6, 240, 3, 3600.0, 2), 4, 2.0, 0.001)
    step = step_seconds(work)

    def run(policy: str, cap: float = inf):
        return LateBinding(work, burst=Burst(policy, 1800.0, step, day_cap=cap)).run()

    never, overflow, always = run("never"), run("overflow"), run("always")
    assert never.spend == 0 and never.cloud_renders == 0
    assert 0 < overflow.cloud_renders < always.cloud_renders
    assert always.makespan < never.makespan and overflow.makespan < never.makespan
    capped = run("overflow", overflow.spend / 2)
    assert 0 < capped.spend <= overflow.spend / 2 * 1.05
    assert capped.cloud_renders < overflow.cloud_renders
