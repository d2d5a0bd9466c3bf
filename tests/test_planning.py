"""Pure planning: scene → jobs, snapping, placement and the next attempt after a failure."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from farm.catalog import load_catalog
from farm.errors import (
    BadNodeResponse,
    InternalError,
    InvalidInput,
    JobCancelled,
    ModelMissing,
    NoCapableNode,
    NodeRejected,
    NodeTimeout,
    NodeUnavailable,
    OutOfMemory,
    RenderFailed,
    WorkflowError,
)
from farm.planning import (
    Job,
    NodeInfo,
    Rung,
    describe_adjusted,
    loads_needed,
    next_rung,
    place,
    place_scene,
    plan_job,
    plan_scene,
    plan_wan_job,
    snap_frames,
)
from farm.scene import parse_scene
from farm.trajectory import track_at

CAT = load_catalog()


def node(name, *models, alive=True, speed=1.0):
    files: dict[str, set[str]] = {}
    for key in models:
        for folder, names in CAT.models[key].required_files().items():
            files.setdefault(folder, set()).update(names)
    return NodeInfo(name, alive=alive, speed=speed, models={k: tuple(v) for k, v in files.items()})


def scene(quality="preview", **shot):
    return parse_scene(
        {
            "id": "sc",
            "quality": quality,
            "priority": 7,
            "shots": [{"id": "a", "action_description": "x", **shot}],
        },
        check_files=False,
    )


def test_frames_snap_to_the_4n_plus_1_grid():
    assert [snap_frames(f, 4) for f in (1, 2, 33, 34, 35, 48, 49, 81)] == [
        1,
        1,
        33,
        33,
        37,
        49,
        49,
        81,
    ]


def test_preview_job_uses_the_fast_model_at_reduced_size():
    sc = scene()
    job = plan_job(sc, sc.shots[0], "preview", CAT)
    assert job.model == "wan2.2_ti2v_5B_fp16.safetensors" and job.workflow == "wan22_ti2v"
    assert job.models == (job.model,) and "switch_step" not in job.params
    assert (job.params["width"], job.params["height"]) == (416, 256)  # TI2V-5B: 32-pixel block
    assert job.params["steps"] == CAT.steps("standard_generation", "preview")
    assert job.params["prompt"] == "x" and job.priority == 7


def test_final_job_uses_the_full_model_at_full_size():
    sc = scene(width=830, height=470, frames=50)
    job = plan_job(sc, sc.shots[0], "final", CAT)
    assert job.model == "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
    assert (job.params["width"], job.params["height"], job.params["length"]) == (832, 464, 49)


def test_a_wan_2_2_a14b_job_needs_both_experts():
    """The final tier's Wan 2.2 A14B loads a high-noise and a low-noise model: the job
    names both (primary first), needs both files, and switches at half its steps."""
    sc = scene("final")
    job = plan_job(sc, sc.shots[0], "final", CAT)
    high, low = (f"wan2.2_t2v_{n}_noise_14B_fp8_scaled.safetensors" for n in ("high", "low"))
    assert job.models == (high, low) and job.model == high
    assert job.files["diffusion_models"] == [high, low]
    assert job.params["switch_step"] == job.params["steps"] // 2 == 15
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    with_image = scene("final", start_image="/a.png")
    i2v = plan_job(with_image, with_image.shots[0], "final", CAT)
    assert i2v.workflow == "wan22_i2v" and len(i2v.models) == 2 and "i2v_low" in i2v.models[1]


def test_start_image_and_trajectories_choose_image_engines():
    tracks = [[{"x": 100, "y": 100}, {"x": 800, "y": 400}]]
    sc = scene(start_image="/a.png", trajectories=tracks)
    job = plan_job(sc, sc.shots[0], "preview", CAT)
    assert job.workflow == "wan_ati" and job.params["start_image"] == "/a.png"
    [track] = job.params["tracks"]  # scaled to 416x240, on WanTrackToVideo's 121 samples
    assert len(track) == 121
    assert track[0] == {"x": 50.0, "y": 50.0} and track[-1] == {"x": 400.0, "y": 200.0}
    length = job.params["length"]
    for k in range(length):  # each frame reads the straight line's position at its time
        x, y = track_at([(p["x"], p["y"]) for p in track], k, length)
        t = k / (length - 1)
        assert abs(x - (50 + 350 * t)) < 0.02 and abs(y - (50 + 150 * t)) < 0.02
    long = scene(start_image="/a.png", trajectories=tracks, frames=121)
    job = plan_job(long, long.shots[0], "final", CAT)
    assert job.params["length"] == 117  # not 121: WanTrackToVideo fails there
    assert job.adjusted == ({"field": "frames", "asked": 121, "rendered": 117,
                             "why": "ComfyUI's WanTrackToVideo (trajectories) fails at 121 "
                                    "frames (120n+1), so 4 fewer"},)  # fmt: skip
    sc = scene(start_image="/a.png")
    assert plan_job(sc, sc.shots[0], "final", CAT).workflow == "wan22_i2v"


def test_quality_decides_the_first_job():
    assert {v.kind for v in plan_scene(scene("final"))[0]} == {"final"}
    variants = plan_scene(scene("preview_then_final"))[0]
    assert all(v.kind == "preview" and v.then_final for v in variants)


def wan_node(name, *models, alive=True):
    return NodeInfo(name, kind="wan2gp", alive=alive, models={"wangp": models}, workflows={})


def test_a_wangp_a14b_job_counts_each_transformer_file_it_loads():
    """WanGP's t2v_2_2 loads two transformer files (its definition's URLs and URLs2): the
    job names both as its models, so a node switching to it counts two loads, as the
    emulator and WanGP load them; the node needs only the model id."""
    sc = scene("final")
    job = plan_wan_job(sc, sc.shots[0], "final", CAT)
    assert job.model == "t2v_2_2" and job.models == ("t2v_2_2", "t2v_2_2:URLs2")
    assert job.files == {"wangp": ["t2v_2_2"]}
    assert loads_needed(job, ()) == 2 and loads_needed(job, job.models) == 0
    assert loads_needed(job, ("i2v_2_2", "i2v_2_2:URLs2")) == 2
    preview = plan_wan_job(sc, sc.shots[0], "preview", CAT)
    assert preview.models == ("ti2v_2_2_fastwan",) and loads_needed(preview, job.models) == 1
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_wangp_tiers_follow_the_templates():
    expected = {  # template -> (preview, final) for text-only shots
        "quick_preview": ("hunyuan_1_5_480_t2v_lightx2v", "hunyuan_1_5_480_t2v_lightx2v"),
        "standard_generation": ("ti2v_2_2_fastwan", "t2v_2_2"),
        "high_quality": ("ltx2_22B_distilled", "ltx2_22B"),
        "fantasy_content": ("hunyuan_1_5_480_t2v_lightx2v", "hunyuan_1_5_t2v"),
    }
    for template, tiers in expected.items():
        sc = scene(template=template)
        got = tuple(plan_wan_job(sc, sc.shots[0], k, CAT).model for k in ("preview", "final"))
        assert got == tiers, template
    portrait = scene(template="character_focus", start_image="/a.png")
    assert plan_wan_job(portrait, portrait.shots[0], "final", CAT).model == "i2v_2_2"
    fantasy = scene(template="fantasy_content", start_image="/a.png")
    job = plan_wan_job(fantasy, fantasy.shots[0], "final", CAT)
    assert job.model == "hunyuan_1_5_i2v" and job.params["start_image"] == "/a.png"
    tracks = [[{"x": 1, "y": 1}, {"x": 9, "y": 9}]]
    ati = scene(start_image="/a.png", trajectories=tracks)
    assert plan_wan_job(ati, ati.shots[0], "final", CAT) is None  # Wan ATI is ComfyUI's


def test_wangp_jobs_use_the_models_grid_block_and_fps():
    sc = scene(template="high_quality", width=840, height=470, frames=33, fps=16)
    job = plan_wan_job(sc, sc.shots[0], "final", CAT)  # LTX-2: 8n+1 frames, 32-pixel block, 24 fps
    assert job.backend == "wan2gp" and job.files == {"wangp": ["ltx2_22B"]}
    assert (job.params["width"], job.params["height"]) == (832, 480)
    assert job.params["fps"] == 24 and job.params["length"] == 49  # 33 at 16 fps ≈ 49.5 at 24
    assert job.params["steps"] == 40
    # the shot's record says what was asked, what is rendered and why
    assert job.adjusted == (
        {"field": "fps", "asked": 16, "rendered": 24,
         "why": "WanGP model ltx2_22B renders at 24 fps only"},
        {"field": "frames", "asked": 33, "rendered": 49,
         "why": "the shot's 2.06 s at 24 fps, on its 8n+1 frame grid"},
    )  # fmt: skip
    assert describe_adjusted(job.adjusted) == (
        "fps 16 → 24, frames 33 → 49 (WanGP model ltx2_22B renders at 24 fps only; "
        "the shot's 2.06 s at 24 fps, on its 8n+1 frame grid)")  # fmt: skip
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    # a shot the node renders as asked has nothing to say
    asked = scene(frames=33, fps=16)
    assert plan_job(asked, asked.shots[0], "final", CAT).adjusted == ()


def test_frames_off_the_grid_are_noted_on_comfyui_too():
    sc = scene(frames=48)
    job = plan_job(sc, sc.shots[0], "final", CAT)
    assert job.params["length"] == 49 and job.adjusted == (
        {"field": "frames", "asked": 48, "rendered": 49, "why": "wan22_t2v renders 4n+1 frames"},
    )


def test_placement_picks_a_backend_that_can_render_the_shot():
    sc = scene()
    variants = plan_scene(sc)[0]
    assert [v.backend for v in variants] == ["comfyui", "wan2gp"]
    wan = wan_node("w", "ti2v_2_2_fastwan")
    placed = place_scene([variants], [node("a", "hunyuan15_t2v", alive=False), wan])[0]
    assert (placed.node, placed.backend, placed.model) == ("w", "wan2gp", "ti2v_2_2_fastwan")
    placed = place_scene([variants], [node("a", "wan22_ti2v_5b"), wan], load={"w": 500.0})[0]
    assert (placed.node, placed.backend) == ("a", "comfyui")  # the idle node wins
    with pytest.raises(NoCapableNode) as info:
        place_scene([variants], [wan_node("w", "t2v_2_2")])
    assert "w: lacks wangp/ti2v_2_2_fastwan" in str(info.value)


def test_wangp_out_of_memory_lowers_the_memory_profile_on_the_same_node():
    sc = scene()
    job = replace(plan_wan_job(sc, sc.shots[0], "final", CAT), node="w")
    nodes = [wan_node("w", job.model), wan_node("v", job.model)]
    first = next_rung(job, OutOfMemory("CUDA out of memory"), [job], [], nodes)
    # the node ran WanGP's default profile 4, so the next lower-memory one is 5, same node
    (retry,) = first.variants
    assert first.pin == "w" and retry.params["override_profile"] == 5
    assert (retry.params["width"], retry.params["height"]) == (
        job.params["width"], job.params["height"])  # fmt: skip
    second = next_rung(
        replace(retry, node="w", attempt=2), OutOfMemory("CUDA out of memory"), [retry], [], nodes
    )
    # no lower profile left: a smaller render, anywhere
    assert second.pin is None and second.variants[0].params["width"] < job.params["width"]
    assert second.variants[0].params["override_profile"] == 5
    at_three = replace(job, params={**job.params, "override_profile": 3})
    lower = next_rung(at_three, OutOfMemory("CUDA out of memory"), [at_three], [], nodes)
    assert lower.variants[0].params["override_profile"] == 4


def test_place_prefers_capable_idle_nodes():
    sc = scene()
    job = plan_job(sc, sc.shots[0], "preview", CAT)
    nodes = [
        node("busy", "wan22_ti2v_5b"),
        node("idle", "wan22_ti2v_5b"),
        node("other", "hunyuan15_t2v"),
    ]
    assert place(job, nodes, load={"busy": 50}) == "idle"
    assert place(job, nodes, load={"busy": 0, "idle": 50}) == "busy"


def test_place_prefers_a_node_with_the_model_loaded():
    sc = scene()
    job = plan_job(sc, sc.shots[0], "preview", CAT)
    nodes = [node("a", "wan22_ti2v_5b"), node("b", "wan22_ti2v_5b")]
    assert place(job, nodes, last_model={"b": job.model}) == "b"


def test_no_capable_node_says_what_each_node_lacks():
    sc = scene(template="quick_preview")
    job = plan_job(sc, sc.shots[0], "preview", CAT)
    with pytest.raises(NoCapableNode) as info:
        place(job, [node("a", "wan22_ti2v_5b"), node("b", "hunyuan15_t2v", alive=False)])
    text = str(info.value)
    assert (
        "a: lacks" in text
        and "hunyuanvideo1.5_720p_t2v_fp16.safetensors" in text
        and "b: down" in text
    )


def test_discovered_workflows_decide_what_a_node_can_run():
    sc = scene()
    job = plan_job(sc, sc.shots[0], "preview", CAT)
    files = node("x", "wan22_ti2v_5b").models
    undiscovered = NodeInfo("a", models=files)
    no_workflow = NodeInfo("b", models=files, workflows={"wan22_i2v": (job.model,)})
    other_model = NodeInfo("c", models=files, workflows={job.workflow: ("other.safetensors",)})
    able = NodeInfo("d", models=files, workflows={job.workflow: (job.model,)})
    assert undiscovered.cannot_run(job) is None and able.cannot_run(job) is None
    with pytest.raises(NoCapableNode) as info:
        place(job, [no_workflow, other_model])
    text = str(info.value)
    assert f"b: cannot run workflow {job.workflow} (see `farm nodes`)" in text
    assert f"c: offers no {job.model} to workflow {job.workflow}" in text
    assert place(job, [no_workflow, other_model, able]) == "d"


def test_place_scene_balances_and_groups_models():
    sc = parse_scene(
        {"id": "s", "shots": [{"id": f"s{i}", "action_description": "x"} for i in range(4)]}
    )
    jobs = place_scene(plan_scene(sc), [node("a", "wan22_ti2v_5b"), node("b", "wan22_ti2v_5b")])
    assert sorted(j.node for j in jobs) == ["a", "a", "b", "b"]


def test_node_failure_moves_the_work_to_another_node():
    sc = scene()
    variants = plan_scene(sc)[0]
    job = replace(variants[0], node="a")
    nodes = [node("a", "wan22_ti2v_5b"), node("b", "wan22_ti2v_5b")]
    rung = next_rung(job, NodeUnavailable("refused"), variants, [], nodes)
    assert rung.exclude == ("a",) and rung.pin is None and rung.step == "another node"
    assert [v.backend for v in rung.variants] == ["comfyui", "wan2gp"]  # either engine
    assert all(v.tried_nodes == ("a",) and v.node is None for v in rung.variants)
    # no other live node can take it: the shot fails now
    assert (
        next_rung(job, NodeUnavailable("refused"), variants, [], [node("a", "wan22_ti2v_5b")])
        is None
    )
    dead_b = [node("a", "wan22_ti2v_5b"), node("b", "wan22_ti2v_5b", alive=False)]
    assert next_rung(job, NodeTimeout("no progress"), variants, [], dead_b) is None


def test_model_missing_falls_back_to_another_engine():
    sc = scene()
    variants = plan_scene(sc)[0]
    job = replace(variants[0], node="a")
    wan = wan_node("w", variants[1].model)
    rung = next_rung(
        job, ModelMissing("no such model"), variants, [], [node("a", "wan22_ti2v_5b"), wan]
    )
    assert rung.exclude == ("a",) and variants[1].model in [v.model for v in rung.variants]


def test_out_of_memory_shrinks_then_takes_the_fast_tier():
    sc = scene("final")
    finals = plan_scene(sc)[0]
    fast = plan_scene(sc, "preview")[0]
    job = replace(finals[0], node="a")
    nodes = [node("a", "wan22_t2v_a14b", "wan22_ti2v_5b")]
    shrunk = next_rung(job, OutOfMemory("CUDA out of memory"), finals, fast, nodes)
    small = shrunk.variants[0]
    assert (
        small.params["width"] < job.params["width"]
        and small.params["height"] < job.params["height"]
    )
    assert small.model == job.model and small.kind == "final"
    tier = next_rung(
        replace(small, node="a", attempt=2), OutOfMemory("oom"), shrunk.variants, fast, nodes
    )
    assert tier.step == "fast tier" and tier.variants[0].model == fast[0].model
    assert tier.variants[0].kind == "final"  # still the shot's final, on the faster model
    assert tier.variants[0].params["width"] == small.params["width"]
    spent = replace(tier.variants[0], node="a", attempt=3)
    assert (
        next_rung(
            spent, OutOfMemory("CUDA out of memory"), tier.variants, fast, nodes, max_attempts=5
        )
        is None
    )


def test_the_error_class_decides_not_its_kind_string():
    """A subclass the ladder has never heard of is handled as its base class says: the
    decision follows the exception tree, never a kind string."""

    class GpuFellOff(NodeUnavailable):
        kind = "gpu_fell_off"

    class StrangeRefusal(NodeRejected):
        kind = "node_unavailable"  # a misleading kind string changes nothing

    variants = plan_scene(scene())[0]
    job = replace(variants[0], node="a")
    nodes = [node("a", "wan22_ti2v_5b"), node("b", "wan22_ti2v_5b")]
    assert next_rung(job, GpuFellOff("gone"), variants, [], nodes).step == "another node"
    assert next_rung(job, StrangeRefusal("no"), variants, [], nodes) is None


def test_permanent_errors_and_exhausted_attempts_stop():
    sc = scene()
    variants = plan_scene(sc)[0]
    job = replace(variants[0], node="a")
    nodes = [node("a", "wan22_ti2v_5b"), node("b", "wan22_ti2v_5b")]
    final = (NodeRejected("refused"), InvalidInput("bad"), WorkflowError("unbound"),
             JobCancelled("cancelled"), BadNodeResponse("junk"), InternalError("a bug"))  # fmt: skip
    for error in final:
        assert next_rung(job, error, variants, [], nodes) is None
    again = next_rung(job, RenderFailed("CUDA error"), variants, [], nodes)
    assert again.exclude == ("a",)  # elsewhere when another node can
    alone = next_rung(job, RenderFailed("CUDA error"), variants, [], [node("a", "wan22_ti2v_5b")])
    assert alone.exclude == () and alone.step == "again"
    last = replace(job, attempt=3)
    assert next_rung(last, RenderFailed("CUDA error"), variants, [], nodes, max_attempts=3) is None


def test_rungs_round_trip_through_json():
    import json

    variants = plan_scene(scene())[0]
    rung = Rung(tuple(variants), pin="w", exclude=("a",), step="x")
    assert Rung.from_dict(json.loads(json.dumps(rung.to_dict()))) == rung


def test_jobs_round_trip_through_json_dicts():
    job = place_scene(plan_scene(scene()), [node("a", "wan22_ti2v_5b")])[0]
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_a_shot_pinned_to_a_backend_is_planned_only_there():
    assert [v.backend for v in plan_scene(scene(backend="comfyui"))[0]] == ["comfyui"]
    assert [v.backend for v in plan_scene(scene(backend="wan2gp"))[0]] == ["wan2gp"]
    pinned = plan_scene(scene(backend="wan2gp"))[0]
    with pytest.raises(NoCapableNode) as info:  # a ComfyUI node with the model is no use
        place_scene([pinned], [node("a", "hunyuan15_t2v", "wan22_ti2v_5b")])
    assert "no live node" in str(info.value)
    placed = place_scene([pinned], [node("a", "wan22_ti2v_5b"), wan_node("w", pinned[0].model)])
    assert (placed[0].node, placed[0].backend) == ("w", "wan2gp")


def test_a_two_model_job_needs_every_model_on_the_node():
    sc = scene("final")
    job = plan_job(sc, sc.shots[0], "final", CAT)
    high, low = job.models
    files = node("x", "wan22_t2v_a14b").models
    half = {**files, "diffusion_models": (high,)}
    with pytest.raises(NoCapableNode) as info:
        place(job, [NodeInfo("half", models=half)])
    assert f"half: lacks diffusion_models/{low}" in str(info.value)
    offers_high = NodeInfo("d", models=files, workflows={job.workflow: (high,)})
    assert offers_high.cannot_run(job) == f"offers no {low} to workflow {job.workflow}"
    assert (
        NodeInfo("e", models=files, workflows={job.workflow: (high, low)}).cannot_run(job) is None
    )


def test_the_model_load_cost_counts_each_model_a_node_lacks():
    """A node holding only the high-noise expert must still load the low-noise one: it is
    one load away, a node holding neither two; a node holding both none."""
    sc = scene("final")
    job = plan_job(sc, sc.shots[0], "final", CAT)
    high, low = job.models
    nodes = [node("one", "wan22_t2v_a14b"), node("none", "wan22_t2v_a14b")]
    # one: 25 queued + 1 load (20) = 45 > none: 0 + 2 loads (40)
    assert place(job, nodes, load={"one": 25.0}, last_model={"one": {high}}) == "none"
    # one: 15 + 20 = 35 < 40
    assert place(job, nodes, load={"one": 15.0}, last_model={"one": {high}}) == "one"
    both = {"one": {high, low}}
    assert place(job, nodes, load={"one": 39.0}, last_model=both) == "one"


def test_high_quality_renders_on_ltx2_on_comfyui_from_its_checkpoint():
    """LTX-2's jobs name one checkpoint (in models/checkpoints, with Gemma 3 as text
    encoder), on its 8n+1 frame grid and 32-pixel blocks; a start image takes its
    image-to-video graph; trajectories still go to Wan ATI."""
    sc = scene(template="high_quality", width=840, height=470, frames=30, fps=24)
    final = plan_job(sc, sc.shots[0], "final", CAT)
    assert (final.workflow, final.models) == ("ltx2_t2v", ("ltx-2-19b-dev-fp8.safetensors",))
    assert final.files == {"text_encoders": ["gemma_3_12B_it_fp4_mixed.safetensors"],
                           "checkpoints": ["ltx-2-19b-dev-fp8.safetensors"]}  # fmt: skip
    assert (final.params["width"], final.params["height"], final.params["length"]) == (832, 480, 33)
    preview = plan_job(sc, sc.shots[0], "preview", CAT)
    assert preview.models == ("ltx-2-19b-distilled-fp8.safetensors",)
    i2v = scene(template="high_quality", start_image="/a.png")
    assert plan_job(i2v, i2v.shots[0], "final", CAT).workflow == "ltx2_i2v"
    tracks = [[{"x": 1, "y": 1}, {"x": 9, "y": 9}]]
    ati = scene(template="high_quality", start_image="/a.png", trajectories=tracks)
    assert plan_job(ati, ati.shots[0], "final", CAT).workflow == "wan_ati"
