"""A shot's retry plan and a scene's blocked nodes in words (`farm status`), from shot
records as the farm writes them: rungs from the real fallback ladder, attempt-log entries
from the real renderer's function."""

from __future__ import annotations

from dataclasses import replace

from farm.catalog import load_catalog
from farm.dispatch import stored_rung
from farm.errors import NodeUnavailable, OutOfMemory
from farm.fallbacks import blocked_nodes, retry_plan
from farm.planning import NodeInfo, next_rung, plan_variants
from farm.scene import parse_scene
from farm.shots import attempt_entry

SCENE = parse_scene(
    {"id": "sc", "quality": "final",
     "shots": [{"id": "a", "action_description": "x", "width": 1280, "height": 720}]},
    check_files=False,
)  # fmt: skip
SHOT = SCENE.shots[0]
WAN_14B = load_catalog().models["wan22_t2v_a14b"].required_files()
NODES = [NodeInfo("fa", models=WAN_14B), NodeInfo("fb", models=WAN_14B),
         NodeInfo("fw", kind="wan2gp", models={"wangp": ("t2v_2_2",)}, workflows={})]  # fmt: skip
#: Wan 2.2 T2V A14B: both experts named
A14B = "wan2.2_t2v_high_noise_14B_fp8_scaled + wan2.2_t2v_low_noise_14B_fp8_scaled"


def failed(job, error, rung, state="queued", **fields):
    """The shot record after ``job`` failed with ``error`` and ``rung`` is next."""
    entry = {**attempt_entry(job, "failed", 1.0), "error_kind": error.kind, "error": str(error)}
    return {"id": "a", "state": state, "kind": job.kind, "attempt": job.attempt,
            "attempt_log": [entry], "rung": stored_rung(rung), "job": job.to_dict(), **fields}  # fmt: skip


def test_out_of_memory_on_comfyui_retries_smaller_with_every_engine_named():
    variants = plan_variants(SCENE, SHOT, "final")
    job = replace(variants[0], node="fa")
    error = OutOfMemory("Allocation on device 0 would exceed allowed memory.")
    rung = next_rung(job, error, variants, plan_variants(SCENE, SHOT, "preview"), NODES)
    plan = retry_plan(failed(job, error, rung), 3)
    assert plan["text"] == (
        f"attempt 2 of 3: final at 960×544 with ComfyUI {A14B} or "
        "WanGP t2v_2_2 after out of memory on fa"
    )
    assert (plan["attempt"], plan["of"], plan["after"], plan["failed_on"]) == (
        2, 3, "out_of_memory", "fa")  # fmt: skip
    # on the retry (bound, then running) the record's attempt is the retry's own
    bound = failed(job, error, rung, state="bound", attempt=2)
    assert retry_plan(bound, 3)["text"] == plan["text"]


def test_wangp_out_of_memory_stays_on_the_node_at_a_lower_memory_profile():
    wan = replace(plan_variants(SCENE, SHOT, "final")[1], node="fw")
    error = OutOfMemory("CUDA out of memory")
    rung = next_rung(wan, error, [wan], [], NODES)
    assert retry_plan(failed(wan, error, rung), 3)["text"] == (
        "attempt 2 of 3: final at 1280×720 on fw again with WanGP memory profile 5 "
        "after out of memory on fw"
    )


def test_a_node_failure_moves_on_and_says_which_node_it_avoids():
    variants = plan_variants(SCENE, SHOT, "final")
    job = replace(variants[1], node="fw")
    error = NodeUnavailable("connection refused")
    rung = next_rung(job, error, variants, [], NODES)
    assert retry_plan(failed(job, error, rung), 3)["text"] == (
        f"attempt 2 of 3: final at 1280×720 with ComfyUI {A14B} or WanGP t2v_2_2, "
        "not on fw after a lost connection on fw"
    )


def test_no_plan_when_the_shot_is_not_on_a_retry():
    variants = plan_variants(SCENE, SHOT, "final")
    job = replace(variants[0], node="fa")
    error = OutOfMemory("x")
    rung = next_rung(job, error, variants, [], NODES)
    assert retry_plan(failed(job, error, rung, state="failed"), 3) is None  # over
    assert retry_plan(failed(job, error, rung, state="running"), 3) is None  # attempt 1 itself
    # `farm retry` queued it again from the start: its old log is not a retry plan
    assert retry_plan(failed(job, error, rung, attempt=0), 3) is None
    done = failed(job, error, rung)
    done["attempt_log"][-1]["state"] = "done"  # a preview done, its final queued
    assert retry_plan(done, 3) is None


def test_a_lost_attempt_retries_the_same_rung():
    job = replace(plan_variants(SCENE, SHOT, "final")[0], node="fa")
    record = failed(job, NodeUnavailable("node fa stopped beating"), next_rung(
        job, NodeUnavailable("x"), [job], [], NODES))  # fmt: skip
    record["attempt_log"][-1]["state"] = "lost"
    record["rung"] = {"plan": "final", "then_final": False}  # a first rung, kept as its plan
    assert retry_plan(record, 3)["text"] == (
        "attempt 2 of 3: final at 1280×720 after fa stopped answering (attempt 1 lost)"
    )


def test_blocked_nodes_say_after_how_many_failures_and_of_what():
    log = [{"attempt": i, "state": "failed", "node": "fa", "error_kind": kind}
           for i, kind in enumerate(["out_of_memory", "out_of_memory", "timeout"], 1)]  # fmt: skip
    shots = [{"attempt_log": log}, {"attempt_log": [{"state": "done", "node": "fa"}]}]
    blocked = blocked_nodes({"fa": "3", "fb": "2"}, 3, shots)
    assert blocked == [{"node": "fa", "failures": 3,
                        "errors": {"out_of_memory": 2, "timeout": 1},
                        "text": "fa: blocked for this scene after 3 failures "
                                "(out of memory ×2, a timeout)"}]  # fmt: skip
    assert blocked_nodes({"fb": "2"}, 3, shots) == []
