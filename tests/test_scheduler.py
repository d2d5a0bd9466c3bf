"""The dispatch policy, pure: every rule of :func:`farm.scheduler.assign`, one per test."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np

from farm.catalog import load_catalog
from farm.planning import MODEL_SWITCH_COST, Job, NodeInfo, plan_scene
from farm.scene import parse_scene
from farm.scheduler import (
    CLASS_SPAN,
    LOAD_STEPS,
    SCARCITY_BAND,
    Assignment,
    Burst,
    Group,
    NodeLoad,
    _capacity,
    _rounded,
    assign,
    can_run,
    class_of,
    group_id,
    job_cost,
    local_start,
    rank_class,
    score,
)

CAT = load_catalog()


def job(
    model: str = "m1",
    backend: str = "comfyui",
    workflow: str = "wan22_ti2v",
    cost: float = 0.0,
    *more: str,
) -> Job:
    """A job needing only its model files (ComfyUI diffusion models, ``model`` and ``more``,
    or a WanGP model id), costing ``cost`` reference sampler steps (0: no size given; the
    scheduler counts 1)."""
    models = (model, *more)
    files = {"diffusion_models": list(models)} if backend == "comfyui" else {"wangp": [model]}
    params = {"steps": cost, "width": 832, "height": 480, "length": 81} if cost else {}
    return Job("s", "a", "preview", "wan", workflow, model, files, params, backend=backend,
               models=models)  # fmt: skip


def pair(high: str = "hi", low: str = "lo", cost: float = 0.0) -> Job:
    """A two-model job (Wan 2.2 A14B: a high-noise and a low-noise model)."""
    return job(high, "comfyui", "wan22_t2v", cost, low)


def node(name: str, *models: str, speed: float = 1.0, kind: str = "comfyui", **info) -> NodeInfo:
    folder = "diffusion_models" if kind == "comfyui" else "wangp"
    return NodeInfo(name, kind, models={folder: models}, speed=speed, **info)


def load(
    info: NodeInfo,
    bound: int = 0,
    model: str | tuple[str, ...] = "",
    blocked: tuple[str, ...] = (),
) -> NodeLoad:
    """A node with ``model`` loaded (a name, or the names of a set)."""
    models = (model,) if isinstance(model, str) else model
    return NodeLoad(info, bound, frozenset(m for m in models if m), frozenset(blocked))


def group(
    *variants: Job,
    shots: list[tuple[float, str]],
    pin: str | None = None,
    exclude: tuple[str, ...] = (),
    waiting: int = 0,
) -> Group:
    """A group of ``shots``: ``[(score, "scene/shot"), ...]`` (sorted here, best first), the
    first of ``waiting`` (0: not known)."""
    gid = group_id(variants, pin, exclude)
    return Group(gid, tuple(variants), sorted(shots), pin, frozenset(exclude), waiting)


def many(scene: str, n: int, kind: str = "final", priority: int = 5) -> list[tuple[float, str]]:
    """``n`` waiting shots of ``scene``, oldest first."""
    return [(at(kind, priority, since=float(i)), f"{scene}/{i}") for i in range(n)]


def at(kind: str = "preview", priority: int = 5, since: float = 0.0) -> float:
    return score(kind, priority, since)


def bound_to(out: list[Assignment]) -> dict[str, str]:
    """Shot key → node name."""
    return {a.key: a.node for a in out}


# -- scores ---------------------------------------------------------------------------------
def test_scores_order_previews_then_priority_then_age():
    ordered = [
        at("preview", 9, 100.0),
        at("preview", 9, 200.0),
        at("preview", 0, 0.0),
        at("final", 9, 0.0),
        at("final", 0, 0.0),
    ]
    assert ordered == sorted(ordered)
    assert [class_of(s) for s in ordered] == [0, 0, 9, 10, 19]
    assert rank_class("final", 42) == rank_class("final", 9)  # priorities clamp to 0..9
    assert class_of(at("final", 3, CLASS_SPAN - 1)) == rank_class("final", 3)


# -- rule 1: only a capable node is a candidate ---------------------------------------------
def test_only_a_node_of_the_variants_backend_is_a_candidate():
    same_files = NodeInfo("wan", "wan2gp", models={"diffusion_models": ("m1",)}, speed=9.0)
    nodes = [load(same_files), load(node("comfy", "m1"))]
    out = assign([group(job("m1"), shots=[(at(), "s/1")])], nodes)
    assert bound_to(out) == {"s/1": "comfy"}


def test_a_node_lacking_a_file_of_the_job_is_not_a_candidate():
    needy = replace(job("m1"), files={"diffusion_models": ["m1"], "vae": ["v.st"]})
    partial = node("partial", "m1", speed=9.0)
    full = NodeInfo("full", models={"diffusion_models": ("m1",), "vae": ("v.st",)})
    out = assign([group(needy, shots=[(at(), "s/1")])], [load(partial), load(full)])
    assert bound_to(out) == {"s/1": "full"}


def test_a_wangp_node_lacking_the_model_is_not_a_candidate():
    nodes = [load(node("w1", "other", kind="wan2gp")), load(node("w2", "hunyuan", kind="wan2gp"))]
    out = assign([group(job("hunyuan", "wan2gp", "wangp"), shots=[(at(), "s/1")])], nodes)
    assert bound_to(out) == {"s/1": "w2"}


def test_a_node_that_cannot_run_the_workflow_or_offers_another_model_is_not_a_candidate():
    wanted = job("m1", workflow="wan_t2v")
    other_flow = node("a", "m1", speed=9.0, workflows={"wan_i2v": ("m1",)})
    other_model = node("b", "m1", speed=9.0, workflows={"wan_t2v": ("m2",)})
    able = node("c", "m1", workflows={"wan_t2v": ("m1",)})
    out = assign(
        [group(wanted, shots=[(at(), "s/1")])], [load(n) for n in (other_flow, other_model, able)]
    )
    assert bound_to(out) == {"s/1": "c"}


def test_an_undiscovered_node_is_trusted_with_any_workflow_of_its_files():
    assert can_run(node("a", "m1"), job("m1", workflow="anything"))


def test_a_dead_node_gets_nothing():
    dead = load(node("dead", "m1", speed=9.0, alive=False))
    out = assign([group(job(), shots=[(at(), "s/1"), (at(since=1), "s/2")])], [dead])
    assert out == [] and dead.bound == 0


def test_an_excluded_node_gets_nothing():
    g = group(job(), shots=[(at(), "s/1")], exclude=("failed",))
    out = assign([g], [load(node("failed", "m1", speed=9.0)), load(node("other", "m1"))])
    assert bound_to(out) == {"s/1": "other"}


def test_a_pinned_shot_goes_only_to_its_node():
    g = group(job(), shots=[(at(), "s/1")], pin="pinned")
    nodes = [load(node("fast", "m1", speed=9.0)), load(node("pinned", "m1"), bound=1)]
    out = assign([g], nodes)
    assert bound_to(out) == {"s/1": "pinned"}


def test_a_pinned_shot_waits_when_its_node_is_full():
    g = group(job(), shots=[(at(), "s/1")], pin="pinned")
    out = assign([g], [load(node("idle", "m1")), load(node("pinned", "m1"), bound=2)])
    assert out == [] and g.shots == [(at(), "s/1")]


def test_a_node_blocklisted_for_a_scene_takes_the_next_shot_of_another_scene():
    g = group(job(), shots=[(at(since=0), "bad/1"), (at(since=5), "good/1")])
    out = assign([g], [load(node("a", "m1"), blocked=("bad",))], depth=1)
    assert bound_to(out) == {"good/1": "a"} and g.shots == [(at(since=0), "bad/1")]


def test_a_node_blocklisted_for_every_waiting_scene_gets_nothing():
    g = group(job(), shots=[(at(), "bad/1")])
    out = assign([g], [load(node("a", "m1"), blocked=("bad",))])
    assert out == []


def test_a_node_holds_at_most_depth_shots():
    g = group(job(), shots=[(at(since=i), f"s/{i}") for i in range(10)])
    nodes = [load(node("a", "m1")), load(node("b", "m1"), bound=1), load(node("c", "m1"), bound=3)]
    out = assign([g], nodes, depth=3)
    assert [n.bound for n in nodes] == [3, 3, 3] and len(out) == 5
    assert len(g.shots) == 5 and g.shots[0] == (at(since=5), "s/5")


def test_a_node_described_anew_is_asked_again():
    """What each node can run is kept between calls while its description is the same."""
    g = group(job("m1"), shots=[(at(), "s/1")])
    assert bound_to(assign([g], [load(node("a", "m1"))])) == {"s/1": "a"}
    g = group(job("m1"), shots=[(at(), "s/1")])
    assert assign([g], [load(node("a", "m2"))]) == []
    assert assign([g], [load(node("a", "m1", alive=False))]) == []
    assert bound_to(assign([g], [load(node("a", "m1"))])) == {"s/1": "a"}


def test_nothing_waits_or_no_room_binds_nothing():
    assert assign([group(job(), shots=[])], [load(node("a", "m1"))]) == []
    assert assign([group(job(), shots=[(at(), "s/1")])], [load(node("a", "m1"), bound=2)]) == []
    assert assign([], []) == []


# -- rule 2: idle nodes first ---------------------------------------------------------------
def test_an_idle_node_is_filled_before_a_busy_node_queues_more():
    busy = load(node("busy", "m1", speed=9.0), bound=1, model="m1")  # faster, model loaded
    idle = load(node("idle", "m1"), model="m2")
    out = assign([group(job("m1"), shots=[(at(), "s/1")])], [busy, idle])
    assert bound_to(out) == {"s/1": "idle"}


def test_an_idle_node_takes_a_lower_class_before_a_busy_node_takes_a_higher_one():
    busy = load(node("busy", "m1", "m2"), bound=1)
    idle = load(node("idle", "m2"))
    groups = [group(job("m1"), shots=[(at("preview"), "p/1")]),
              group(job("m2"), shots=[(at("final"), "f/1")])]  # fmt: skip
    out = assign(groups, [busy, idle])
    assert [(a.key, a.node) for a in out] == [("f/1", "idle"), ("p/1", "busy")]


def test_every_node_gets_one_shot_before_any_gets_a_second():
    g = group(job(), shots=[(at(since=i), f"s/{i}") for i in range(4)])
    nodes = [load(node(n, "m1", speed=s)) for n, s in (("a", 1.0), ("b", 2.0), ("c", 3.0))]
    out = assign([g], nodes)
    assert [a.node for a in out] == ["c", "b", "a", "c"]


def test_a_busy_node_does_not_queue_a_shot_of_a_thin_group():
    """Fewer than ``depth`` waiting shots per capable node: the shot waits for the first of
    them to free up, not behind the running shot of the first with room."""
    g = group(job(), shots=many("s", 3), waiting=3)  # 3 < 2 x 2 capable nodes
    nodes = [load(node("a", "m1"), bound=1), load(node("b", "m1"), bound=1)]
    assert assign([g], nodes) == [] and len(g.shots) == 3


def test_a_busy_node_queues_a_shot_of_a_deep_group():
    g = group(job(), shots=many("s", 2), waiting=10)
    nodes = [load(node("a", "m1"), bound=1), load(node("b", "m1"), bound=1)]
    assert len(assign([g], nodes)) == 2 and [n.bound for n in nodes] == [2, 2]


def test_an_idle_node_takes_a_shot_of_a_thin_group_and_a_busy_one_does_not():
    g = group(job(), shots=many("s", 2), waiting=2)  # both hold m1: neither is its only holder
    nodes = [load(node("a", "m1"), bound=1, model="m1"), load(node("b", "m1"), model="m1")]
    out = assign([g], nodes)
    assert bound_to(out) == {"s/0": "b"} and g.shots == many("s", 2)[1:]


def test_a_busy_node_whose_best_shot_is_thin_queues_nothing_else():
    """Queuing the next shot instead would hold the thin group's shot back: previews would
    wait behind finals."""
    preview = group(job("m1"), shots=many("p", 1, "preview"), waiting=1)
    final = group(job("m2"), shots=many("f", 1), waiting=50)
    nodes = [load(node("a", "m1", "m2"), bound=1), load(node("b", "m1"), bound=1)]
    assert assign([preview, final], nodes) == []


def test_a_group_only_one_node_can_run_is_never_thin():
    g = group(job(), shots=many("s", 1), pin="p", waiting=1)
    nodes = [load(node("p", "m1"), bound=1), load(node("q", "m1"))]
    assert bound_to(assign([g], nodes)) == {"s/0": "p"}


def test_a_group_whose_waiting_shots_are_not_known_is_never_thin():
    g = group(job(), shots=many("s", 2))
    nodes = [load(node("a", "m1"), bound=1), load(node("b", "m1"), bound=1)]
    assert len(assign([g], nodes)) == 2


# -- rules 3 and 5: previews, then priority -------------------------------------------------
def test_previews_go_before_finals():
    groups = [group(job("m1"), shots=[(at("final", 9, since=0), "f/1")]),
              group(job("m2"), shots=[(at("preview", 0, since=50), "p/1")])]  # fmt: skip
    out = assign(groups, [load(node("a", "m1", "m2"), model="m1")], depth=1)
    assert bound_to(out) == {"p/1": "a"}


def test_higher_priority_goes_first():
    groups = [group(job("m1"), shots=[(at("final", 3, since=0), "low/1")]),
              group(job("m2"), shots=[(at("final", 7, since=50), "high/1")])]  # fmt: skip
    out = assign(groups, [load(node("a", "m1", "m2"), model="m3")], depth=1)
    assert bound_to(out) == {"high/1": "a"}


def test_a_loaded_model_weighs_as_scarcity_not_as_priority_alone():
    """A node with m1 loaded: one m1 shot and one m2 shot of a higher priority wait.
    Staying saves a load of LOAD_STEPS against a cost of 1 step, which stretches m1's
    drain time 2.5 times: a band above m2's, so the node keeps its model. With m2's
    group 8 times deeper, m2 is the scarcer and goes first."""
    m1 = group(job("m1"), shots=[(at("final", 5), "loaded/1")], waiting=1)
    m2 = group(job("m2"), shots=[(at("final", 6, since=50), "other/1")], waiting=1)
    out = assign([m1, m2], [load(node("a", "m1", "m2"), model="m1")], depth=1)
    assert bound_to(out) == {"loaded/1": "a"}
    m1 = group(job("m1"), shots=[(at("final", 5), "loaded/1")], waiting=1)
    m2 = group(job("m2"), shots=[(at("final", 6, since=50), "other/1")], waiting=8)
    out = assign([m1, m2], [load(node("a", "m1", "m2"), model="m1")], depth=1)
    assert bound_to(out) == {"other/1": "a"}


# -- rule 4: the scarcer group first --------------------------------------------------------
def test_a_node_serves_the_group_no_other_node_can_before_a_higher_priority_one():
    """``a`` alone can run the m2 finals while five nodes can run the m1 ones: it takes
    m2's, though m1's are of a higher priority (the others will take those)."""
    common = group(job("m1"), shots=many("hi", 40, priority=9), waiting=40)
    scarce = group(job("m2"), shots=many("lo", 40, priority=0), waiting=40)
    others = [load(node(f"n{i}", "m1"), bound=2) for i in range(4)]
    out = assign([common, scarce], [load(node("a", "m1", "m2")), *others])
    assert [(x.key, x.node) for x in out] == [("lo/0", "a"), ("lo/1", "a")]


def test_scarcity_never_puts_a_final_before_a_preview():
    preview = group(job("m1"), shots=many("p", 1, "preview"), waiting=1)
    scarce = group(job("m2"), shots=many("f", 100), waiting=100)
    out = assign([preview, scarce], [load(node("a", "m1", "m2"))], depth=1)
    assert bound_to(out) == {"p/0": "a"}


def test_groups_in_the_same_scarcity_band_keep_the_priority_order():
    """Drain times of 20.2 (``x``: 10 shots, ``d`` alone) and 19.9 (``y``: 30 shots, ``d``
    and ``e``), in one band of a factor 2: the priority decides, not the slightly scarcer."""
    x = group(job("m1"), shots=many("x", 10, priority=0), waiting=10)
    y = group(job("m2"), shots=many("y", 30, priority=9), waiting=30)
    nodes = [load(node("d", "m1", "m2")), load(node("e", "m2"), bound=1)]
    assert bound_to(assign([x, y], nodes, depth=1)) == {"y/0": "d"}


def test_capacity_counts_a_shared_node_mostly_for_the_group_no_other_node_can_run():
    """Equal work; node 0 runs both groups, nodes 1 and 2 only the first: the second group
    can expect most of node 0 (0.86 of it, against 0.5 for an equal split)."""
    speeds = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    capacity = _capacity(speeds, np.array([10.0, 10.0]))
    assert math.isclose(capacity.sum(), 3.0) and capacity[1] > 0.8


# -- rule 7: model affinity -----------------------------------------------------------------
def test_the_only_node_holding_both_experts_finishes_their_thin_group_first():
    """Rule 4: ``a`` alone has the Wan 2.2 A14B pair loaded; two A14B finals are left (a
    thin group) and 40 m1 finals are scarcer. It renders the pair's shots before switching,
    so nobody loads the pair again for them later."""
    a14b = group(pair(cost=3), shots=many("pair", 2), waiting=2)
    scarce = group(job("m1", cost=3), shots=many("m1", 40), waiting=40)
    nodes = [load(node("a", "hi", "lo", "m1"), model=("hi", "lo")), load(node("b", "hi", "lo"), 2)]
    assert [x.key for x in assign([a14b, scarce], nodes)] == ["pair/0", "pair/1"]
    a14b = group(pair(cost=3), shots=many("pair", 2), waiting=2)
    scarce = group(job("m1", cost=3), shots=many("m1", 40), waiting=40)
    both = [load(node("a", "hi", "lo", "m1"), model=("hi", "lo")),
            load(node("b", "hi", "lo"), 2, model=("hi", "lo"))]  # fmt: skip
    assert [x.key for x in assign([a14b, scarce], both)] == ["m1/0", "m1/1"]


def test_a_busy_node_queues_a_thin_group_s_shot_when_no_other_node_holds_its_models():
    """Rule 2: a busy node leaves a thin group's shot to the next node to free up, unless
    it is the only one with the group's models loaded: then it queues it, and no node has
    to load the pair again for it."""
    g = group(pair(), shots=many("s", 3), waiting=3)
    holder = load(node("a", "hi", "lo"), 1, model=("hi", "lo"))
    assert bound_to(assign([g], [holder, load(node("b", "hi", "lo"), 1)])) == {"s/0": "a"}
    g = group(pair(), shots=many("s", 3), waiting=3)
    half = load(node("a", "hi", "lo"), 1, model="hi")  # would load the low-noise expert
    assert assign([g], [half, load(node("b", "hi", "lo"), 1)]) == []
    g = group(pair(), shots=many("s", 3), waiting=3)
    two = [load(node(n, "hi", "lo"), 1, model=("hi", "lo")) for n in "ab"]
    assert assign([g], two) == []


def test_within_a_class_the_loaded_model_beats_age():
    groups = [group(job("m1"), shots=[(at(since=0), "old/1")]),
              group(job("m2"), shots=[(at(since=50), "new/1")])]  # fmt: skip
    out = assign(groups, [load(node("a", "m1", "m2"), model="m2")], depth=1)
    assert bound_to(out) == {"new/1": "a"}


def test_the_model_a_node_will_have_loaded_counts_for_its_next_shot():
    groups = [group(job("m1"), shots=[(at(since=0), "a/1"), (at(since=9), "a/2")], waiting=20),
              group(job("m2"), shots=[(at(since=5), "b/1")], waiting=20)]  # fmt: skip
    n = load(node("a", "m1", "m2"))
    out = assign(groups, [n])
    assert [a.key for a in out] == ["a/1", "a/2"] and n.models == {"m1"}


def test_a_node_with_the_model_loaded_beats_a_faster_one_on_a_short_render():
    """Rule 8: the least (load + cost) / speed: 5 on the loaded node, (20 + 5) / 2 on the
    fast one."""
    nodes = [load(node("fast", "m1", speed=2.0)), load(node("loaded", "m1"), model="m1")]
    out = assign([group(job("m1", cost=5), shots=[(at(), "s/1")])], nodes)
    assert MODEL_SWITCH_COST == 20.0 and bound_to(out) == {"s/1": "loaded"}


def test_a_faster_node_beats_one_with_the_model_loaded_on_a_long_render():
    """30 on the loaded node, (20 + 30) / 2 = 25 on the fast one."""
    nodes = [load(node("loaded", "m1"), model="m1"), load(node("fast", "m1", speed=2.0))]
    out = assign([group(job("m1", cost=30), shots=[(at(), "s/1")])], nodes)
    assert bound_to(out) == {"s/1": "fast"}


# -- two-model jobs (Wan 2.2 A14B) ------------------------------------------------------------
def test_a_two_model_job_goes_only_to_a_node_holding_both_models():
    g = group(pair(), shots=[(at(), "s/1")])
    half, both = node("half", "hi"), node("both", "hi", "lo")
    assert not can_run(half, g.variants[0]) and can_run(both, g.variants[0])
    out = assign([g], [load(half), load(both)])
    assert bound_to(out) == {"s/1": "both"}


def test_a_node_holding_a_two_model_set_has_it_loaded_once_bound():
    n = load(node("a", "hi", "lo", "m1"), model="m1")
    g = group(pair(), shots=[(at(), "s/1")])
    out = assign([g], [n], depth=1)
    assert out == [Assignment("s/1", "a", 0, "hi", g.id)] and n.models == {"hi", "lo"}


def test_the_load_cost_counts_each_model_a_node_lacks():
    """Rule 8 with two models: (20 per model to load + cost) / speed. The node holding
    only the high-noise model: (20 + 10) / 1 = 30; the empty fast node: (40 + 10) / 2 = 25;
    the node holding both: 10."""

    def nodes(*extra):
        return [load(node("one", "hi", "lo"), model="hi"),
                load(node("fast", "hi", "lo", speed=2.0)), *extra]  # fmt: skip

    out = assign([group(pair(cost=10), shots=[(at(), "s/1")])], nodes())
    assert bound_to(out) == {"s/1": "fast"}
    both = load(node("both", "hi", "lo"), model=("hi", "lo"))
    out = assign([group(pair(cost=10), shots=[(at(), "s/1")])], nodes(both))
    assert bound_to(out) == {"s/1": "both"}


def test_a_node_with_both_models_loaded_prefers_their_shots():
    """Rule 7 with sets: a node with the pair loaded takes the pair's newer shot before an
    older shot of a model it does not hold; one with only half the pair loaded does not."""

    def groups():
        return [group(job("m1"), shots=[(at(since=0), "old/1")]),
                group(pair(), shots=[(at(since=50), "new/1")])]  # fmt: skip

    out = assign(groups(), [load(node("a", "m1", "hi", "lo"), model=("hi", "lo"))], depth=1)
    assert bound_to(out) == {"new/1": "a"}
    out = assign(groups(), [load(node("a", "m1", "hi", "lo"), model="hi")], depth=1)
    assert bound_to(out) == {"old/1": "a"}


def test_each_node_takes_the_model_it_has_loaded():
    groups = [group(job("m1"), shots=[(at(since=0), "a/1")]),
              group(job("m2"), shots=[(at(since=1), "b/1")])]  # fmt: skip
    nodes = [
        load(node("x", "m1", "m2", speed=2.0), model="m2"),
        load(node("y", "m1", "m2"), model="m1"),
    ]
    out = assign(groups, nodes)
    assert bound_to(out) == {"a/1": "y", "b/1": "x"}


# -- rule 6: the backend's advantage --------------------------------------------------------
def test_a_node_takes_the_group_its_backend_runs_best_compared_with_the_others():
    """ComfyUI renders ``a`` at a third of WanGP's cost and ``b`` at the same: the ComfyUI
    node takes ``a`` and the WanGP node ``b``, though ``b``'s shot is older."""
    a = group(job("m1", cost=10), job("w1", "wan2gp", "wangp", cost=30),
              shots=[(at(since=5), "a/1")])  # fmt: skip
    b = group(job("m2", cost=10), job("w2", "wan2gp", "wangp", cost=10),
              shots=[(at(since=0), "b/1")])  # fmt: skip
    nodes = [load(node("c", "m1", "m2")), load(node("w", "w1", "w2", kind="wan2gp"))]
    assert bound_to(assign([a, b], nodes)) == {"a/1": "c", "b/1": "w"}


# -- rule 8: oldest first; the node that finishes first -------------------------------------
def test_without_affinity_the_oldest_shot_goes_first():
    groups = [group(job("m1"), shots=[(at(since=50), "new/1")]),
              group(job("m2"), shots=[(at(since=10), "old/1")])]  # fmt: skip
    out = assign(groups, [load(node("a", "m1", "m2"), model="m3")], depth=1)
    assert bound_to(out) == {"old/1": "a"}


def test_a_group_binds_its_shots_oldest_first():
    g = group(job(), shots=[(at(since=30), "s/3"), (at(since=10), "s/1"), (at(since=20), "s/2")])
    out = assign([g], [load(node("a", "m1"))], depth=3)
    assert [a.key for a in out] == ["s/1", "s/2", "s/3"]


def test_the_faster_of_equal_idle_nodes_is_chosen():
    nodes = [load(node(n, "m1", speed=s)) for n, s in (("slow", 0.5), ("fast", 2.0), ("mid", 1.0))]
    out = assign([group(job(), shots=[(at(), "s/1")])], nodes)
    assert bound_to(out) == {"s/1": "fast"}


def test_between_identical_nodes_the_first_listed_is_chosen():
    nodes = [load(node(n, "m1")) for n in ("b", "a", "c")]
    out = assign([group(job(), shots=[(at(), "s/1")])], nodes)
    assert bound_to(out) == {"s/1": "b"}


# -- variants -------------------------------------------------------------------------------
def test_a_shot_with_two_backends_binds_to_either_with_its_variant():
    sc = parse_scene(
        {
            "id": "sc",
            "quality": "preview",
            "shots": [{"id": f"s{i}", "action_description": "x"} for i in range(2)],
        },
        check_files=False,
    )
    variants = tuple(plan_scene(sc, catalog=CAT)[0])
    comfy, wan = variants
    assert (comfy.backend, wan.backend) == ("comfyui", "wan2gp")
    files = {k: tuple(v) for k, v in comfy.files.items()}
    nodes = [
        load(NodeInfo("c", models=files)),
        load(node("w", wan.model, kind="wan2gp", workflows={})),
    ]
    g = group(*variants, shots=[(at(since=0), "sc/s0"), (at(since=1), "sc/s1")])
    out = assign([g], nodes, depth=1)
    assert {(a.node, a.variant, a.model) for a in out} == {
        ("c", 0, comfy.model),
        ("w", 1, wan.model),
    }
    assert {n.info.name: n.models for n in nodes} == {"c": set(comfy.models), "w": {wan.model}}
    assert all(a.group == g.id for a in out)


def test_binding_pops_the_shot_and_advances_the_node():
    g = group(job("m1"), shots=[(at(since=0), "s/1"), (at(since=1), "s/2")])
    n = load(node("a", "m1"), model="m0")
    out = assign([g], [n], depth=1)
    assert out == [Assignment("s/1", "a", 0, "m1", g.id)]
    assert g.shots == [(at(since=1), "s/2")] and (n.bound, n.models) == (1, {"m1"})


# -- properties over random farms -----------------------------------------------------------
MODELS = ("m1", "m2", "m3", "m4")


def random_farm(rng: random.Random, depth: int) -> tuple[list[Group], list[NodeLoad]]:
    """A small random farm: nodes of both kinds with random models, speeds, load, liveness
    and blocklists; groups of one or two variants, some pinned or excluding a node."""
    names = [f"n{i}" for i in range(rng.randint(1, 6))]
    scenes = ["s0", "s1", "s2"]
    nodes = []
    for name in names:
        kind = rng.choice(("comfyui", "wan2gp"))
        held = rng.sample(MODELS, rng.randint(0, 3))
        info = node(
            name, *held, kind=kind, speed=rng.choice((0.5, 1.0, 2.0)), alive=rng.random() < 0.9
        )
        blocked = tuple(s for s in scenes if rng.random() < 0.15)
        loaded = rng.choice(("", *MODELS, tuple(rng.sample(MODELS, 2))))
        nodes.append(load(info, rng.randint(0, depth), loaded, blocked))
    groups = []
    for _ in range(rng.randint(1, 5)):
        two = rng.sample(MODELS, 2) if rng.random() < 0.3 else rng.sample(MODELS, 1)
        variants = [job(two[0], "comfyui", "wan22_ti2v", rng.choice((0, 5, 10, 30)), *two[1:])]
        if rng.random() < 0.5:
            variants.append(job(rng.choice(MODELS), "wan2gp", "wangp", rng.choice((0, 5, 30))))
        rng.shuffle(variants)
        pin = rng.choice(names) if rng.random() < 0.1 else None
        exclude = tuple(n for n in names if rng.random() < 0.1)
        shots = [
            (at(rng.choice(("preview", "final")), rng.choice((0, 5, 9)), float(rng.randint(0, 5))),
             f"{rng.choice(scenes)}/{len(groups)}-{k}")
            for k in range(rng.randint(0, 6))
        ]  # fmt: skip
        waiting = len(shots) + rng.randint(0, 12) if rng.random() < 0.6 else 0
        groups.append(group(*variants, shots=shots, pin=pin, exclude=exclude, waiting=waiting))
    return groups, nodes


def runnable(g: Group, n: NodeLoad, key: str) -> bool:
    """Whether ``n`` may take shot ``key`` of ``g`` at all (room aside)."""
    return (
        n.info.alive
        and n.info.name not in g.exclude
        and g.pin in (None, n.info.name)
        and key.split("/", 1)[0] not in n.blocked
        and any(can_run(n.info, v) for v in g.variants)
    )


def test_random_farms_leave_no_capable_idle_node_idle_and_no_node_over_depth():
    rng = random.Random(20240601)
    for _ in range(500):
        depth = rng.randint(1, 3)
        groups, nodes = random_farm(rng, depth)
        before = {n.info.name: n.bound for n in nodes}
        assign(groups, nodes, depth)
        for n in nodes:
            assert n.bound <= max(depth, before[n.info.name])
            if n.bound == 0:
                waiting = [k for g in groups for _, k in g.shots if runnable(g, n, k)]
                assert not waiting, (n.info.name, waiting)


def test_random_farms_bind_only_capable_nodes_with_the_first_variant_they_can_run():
    rng = random.Random(7)
    for _ in range(500):
        depth = rng.randint(1, 3)
        groups, nodes = random_farm(rng, depth)
        waiting = {k: g for g in groups for _, k in g.shots}
        by_name = {n.info.name: n for n in nodes}
        room = {n.info.name: depth - n.bound for n in nodes}
        out = assign(groups, nodes, depth)
        assert len({a.key for a in out}) == len(out)
        for a in out:
            g, n = waiting[a.key], by_name[a.node]
            assert runnable(g, n, a.key) and room[a.node] > 0
            first = next(i for i, v in enumerate(g.variants) if can_run(n.info, v))
            assert a.variant == first and a.model == g.variants[first].model
            assert all(k != a.key for _, k in g.shots)
            room[a.node] -= 1
        for n in nodes:  # a node with room leaves shots it could take only to wait (rule 2)
            left = [g for g in groups for _, k in g.shots if runnable(g, n, k)]
            if room[n.info.name] > 0 and left:
                assert n.bound > 0 and any(thin(g, nodes, depth, out) for g in left)


def thin(g: Group, nodes: list[NodeLoad], depth: int, out: list[Assignment]) -> bool:
    """Whether ``g`` is thin after ``out``: its waiting shots known, fewer than ``depth``
    per capable node, and more than one capable node."""
    capable = [n for n in nodes if runnable(g, n, "any/x")]
    waiting = g.waiting - sum(a.group == g.id for a in out)
    return g.waiting > 0 and len(capable) > 1 and waiting < depth * len(capable)


def reference_assign(groups: list[Group], nodes: list[NodeLoad], depth: int) -> list[Assignment]:
    """The rules written plainly: every bind rescans every (node with room, group) pair.
    The capacity estimate (:func:`farm.scheduler._capacity`, its own test above) is the
    only part taken from the module."""
    live = [g for g in groups if g.shots]
    alive = [n for n in nodes if n.info.alive]
    index: dict[tuple[int, int], int] = {}  # (node, group) -> the variant the node runs
    for a, n in enumerate(alive):
        for j, g in enumerate(live):
            if n.info.name not in g.exclude and g.pin in (None, n.info.name):
                i = next((i for i, v in enumerate(g.variants) if can_run(n.info, v)), None)
                if i is not None:
                    index[a, j] = i
    capable = [[a for a in range(len(alive)) if (a, j) in index] for j in range(len(live))]
    backends = [{alive[a].info.kind for a in capable[j]} for j in range(len(live))]
    waiting = [g.waiting or len(g.shots) for g in live]
    costs = [[job_cost(v) for v in g.variants] for g in live]
    work = [_rounded(w * min(c)) for w, c in zip(waiting, costs, strict=True)]
    speeds = np.array([[n.info.speed * ((a, j) in index) for j in range(len(live))]
                       for a, n in enumerate(alive)])  # fmt: skip
    capacity = _capacity(speeds, np.array(work)) if alive and live else []
    known = [g.waiting > 0 for g in live]

    def thin_now(j: int) -> bool:
        return known[j] and len(capable[j]) > 1 and waiting[j] < depth * len(capable[j])

    holders = [  # when the call starts: capable nodes with the group's models loaded
        sum(not set(live[j].variants[index[a, j]].models) - alive[a].models for a in capable[j])
        for j in range(len(live))
    ]
    out: list[Assignment] = []
    while True:
        best = None
        for a, n in enumerate(alive):
            if n.bound >= depth:
                continue
            candidates = []
            for j, g in enumerate(live):
                head = next((s for s in g.shots if s[1].split("/", 1)[0] not in n.blocked), None)
                if (a, j) not in index or head is None:
                    continue
                i = index[a, j]
                drain = waiting[j] * min(costs[j]) / max(capacity[j], 1e-9)
                lacks = [m for m in g.variants[i].models if m not in n.models]
                affinity = len(lacks)
                if not affinity:  # the loads it saves stretch the group's drain time
                    drain *= 1 + LOAD_STEPS * len(g.variants[i].models) / costs[j][i]
                band = math.floor(math.log(drain, SCARCITY_BAND)) if drain > 0 else -(2**31)
                if not affinity and holders[j] == 1 and thin_now(j):
                    band = 2**30  # its only holder finishes a thin group first
                mine = g.variants[i].backend
                others = [c for v, c in zip(g.variants, costs[j], strict=True)
                          if v.backend != mine and v.backend in backends[j]]  # fmt: skip
                advantage = round(min(others) / costs[j][i], 1) if others else 1e9
                cls = class_of(head[0])
                candidates.append(
                    ((cls // 10, -band, cls, -advantage, affinity, head[0], j), i, head)
                )
            if not candidates:
                continue
            key, i, head = min(candidates)
            j = key[-1]
            if n.bound > 0 and thin_now(j) and (key[4] or holders[j] > 1):
                continue  # busy, and its best shot's group is thin (and not its only holder's)
            load = MODEL_SWITCH_COST * sum(m not in n.models for m in live[j].variants[i].models)
            rank = (
                n.bound > 0,
                key[0],
                key[1],
                key[2],
                (load + costs[j][i]) / n.info.speed,
                key[5],
            )
            if best is None or rank < best[0]:
                best = (rank, n, j, i, head)
        if best is None:
            return out
        _, n, j, i, head = best
        g = live[j]
        g.shots.remove(head)
        waiting[j] -= 1
        n.bound += 1
        n.models = frozenset(g.variants[i].models)
        out.append(Assignment(head[1], n.info.name, i, g.variants[i].model, g.id))


def test_assign_decides_as_the_plain_rules_on_random_farms():
    rng = random.Random(99)
    for trial in range(1500):
        depth = rng.randint(1, 3)
        state = rng.getstate()
        groups, nodes = random_farm(rng, depth)
        if trial % 3 == 0:  # the same shapes, unsorted, to pin "first in list order"
            for g in groups:
                rng.shuffle(g.shots)
        rng.setstate(state)
        ref_groups, ref_nodes = random_farm(rng, depth)
        for g, r in zip(groups, ref_groups, strict=True):
            r.shots[:] = g.shots
        got = assign(groups, nodes, depth)
        assert got == reference_assign(ref_groups, ref_nodes, depth), trial
        assert [g.shots for g in groups] == [g.shots for g in ref_groups]
        assert [(n.bound, n.models) for n in nodes] == [(n.bound, n.models) for n in ref_nodes]


def test_naive_baseline_binds_everything_round_robin_oldest_first():
    """The benchmark baseline ignores depth, classes and affinity: every waiting shot is
    bound at once, oldest first, to the next capable node in turn."""
    from farm.scheduler import assign_naive

    g = group(job("m1"), shots=[(at("final", since=3.0), "s/3"), (at("preview", since=1.0), "s/1"),
                                (at("final", since=2.0), "s/2")])  # fmt: skip
    loads = [load(node("a", "m1"), bound=2, model="other"), load(node("b", "m1")),
             load(node("c", "m2"))]  # fmt: skip
    out, turn = assign_naive([g], loads, 1)
    assert [(x.key, x.node) for x in out] == [("s/1", "b"), ("s/2", "a"), ("s/3", "b")]
    assert turn == 2 and loads[0].bound == 3 and loads[1].bound == 2 and loads[2].bound == 0


# -- cloud nodes: capacity and the burst policy ----------------------------------------------
def cloud(name: str = "cloud", *models: str, concurrency: int = 4, price: float = 0.01,
          speed: float = 1.0) -> NodeInfo:  # fmt: skip
    """A Comfy API v2 node holding ``models`` (default m1), running ``concurrency`` shots
    at once for ``price`` per GPU-second."""
    return NodeInfo(name, "comfyv2", models={"diffusion_models": models or ("m1",)},
                    speed=speed, concurrency=concurrency, price=price)  # fmt: skip


def test_a_cloud_node_runs_comfyui_jobs():
    assert can_run(cloud(), job("m1"))
    assert not can_run(cloud(), job("m1", "wan2gp", "wangp"))


def test_never_gives_a_cloud_node_nothing():
    g = group(job("m1", cost=10), shots=many("s", 6), waiting=6)
    out = assign([g], [load(node("a", "m1"), bound=2, model="m1"), load(cloud())],
                 burst=Burst("never"))  # fmt: skip
    assert out == []
    assert assign([g], [load(cloud())]) == []  # never is the default


def test_always_fills_a_cloud_node_up_to_its_concurrency_with_no_load():
    g = group(job("m1", cost=10), shots=many("s", 10), waiting=10)
    nodes = [load(node("a", "m1"), model="m1"), load(cloud(concurrency=5))]
    out = assign([g], nodes, burst=Burst("always"))
    placed = list(bound_to(out).values())
    assert placed.count("cloud") == 5 and placed.count("a") == 2
    assert nodes[1].bound == 5 and nodes[1].models == frozenset()  # no model counted loaded


def test_always_takes_a_thin_groups_shot_on_a_busy_cloud_node():
    """A cloud node runs its shots side by side: rule 2 does not hold it back."""
    g = group(job("m1", cost=10), shots=many("s", 1), waiting=1)
    nodes = [load(node("a", "m1"), bound=1, model="m1"), load(cloud(), bound=1)]
    assert bound_to(assign([g], nodes, burst=Burst("always"))) == {"s/0": "cloud"}


def test_overflow_sends_nothing_a_local_node_starts_within_burst_after():
    """Two busy local nodes, each with a 10-step shot bound (300 s at 30 s a step), three
    shots waiting (a thin group: they wait for the nodes to free up): the last starts
    locally at 300 s + 2 shots x 300 s / 2 nodes = 600 s."""
    g = group(job("m1", cost=10), shots=many("s", 3), waiting=3)
    busy = [load(node(n, "m1"), bound=1, model="m1") for n in ("a", "b")]
    for n in busy:
        n.work = 10.0
    nodes = [*busy, load(cloud())]
    assert assign([g], nodes, burst=Burst("overflow", after=600, step_seconds=30)) == []
    out = assign([g], nodes, burst=Burst("overflow", after=599, step_seconds=30))
    assert bound_to(out) == {"s/0": "cloud"}  # then the last starts at 300 + 300 / 2 s


def test_overflow_sends_the_shots_local_nodes_would_start_too_late():
    g = group(job("m1", cost=10), shots=many("s", 8), waiting=8)
    busy = [load(node(n, "m1"), bound=1, model="m1") for n in ("a", "b")]
    for n in busy:
        n.work = 10.0
    burst = Burst("overflow", after=600, step_seconds=30)
    out = assign([g], [*busy, load(cloud(concurrency=8))], burst=burst)
    placed = bound_to(out)
    # a and b queue one each (the oldest: a deep group), and are then free at 600 s; with
    # k shots left the last starts locally at 600 s + (k - 1) x 300 s / 2: after 600 s
    # unless k = 1, so the cloud takes the oldest five and one waits
    assert [placed[f"s/{i}"] for i in range(2)] == ["a", "b"]
    assert [placed.get(f"s/{i}") for i in range(2, 8)] == ["cloud"] * 5 + [None]
    assert burst.day_spent == 5 * 10 * 30 * 0.01


def test_overflow_sends_to_the_cloud_what_no_local_node_can_run():
    g = group(job("m9", cost=10), shots=many("s", 2), waiting=2)
    out = assign([g], [load(node("a", "m1")), load(cloud("cloud", "m9"))],
                 burst=Burst("overflow", after=3600))  # fmt: skip
    assert bound_to(out) == {"s/0": "cloud", "s/1": "cloud"}


def test_overflow_local_nodes_take_first():
    g = group(job("m1", cost=10), shots=many("s", 2), waiting=2)
    nodes = [load(cloud()), load(node("a", "m1"))]
    out = assign([g], nodes, burst=Burst("overflow", after=0))
    # a takes the oldest; the other would start on a after its 300 s: the cloud takes it
    assert bound_to(out) == {"s/0": "a", "s/1": "cloud"}


def test_local_start_pools_the_capable_nodes():
    assert local_start([], 0) == math.inf
    assert local_start([(100.0, 1.0), (50.0, 1.0)], 0) == 50.0
    # from 50 s one node works, from 100 s two: 100 s of work ahead is done at 125 s
    assert local_start([(100.0, 1.0), (50.0, 1.0)], 100.0) == 125.0
    assert local_start([(0.0, 2.0)], 100.0) == 50.0


def test_the_day_budget_holds_a_shot_back_and_says_why():
    """Each shot costs 10 steps x 30 s x 0.01 = 3; 7 of the day's 10 are spent."""
    g = group(job("m1", cost=10), shots=many("s", 3), waiting=3)
    burst = Burst("always", day_cap=10.0, day_spent=7.0)
    out = assign([g], [load(cloud())], burst=burst)
    assert bound_to(out) == {"s/0": "cloud"}
    assert burst.day_spent == 10.0
    assert set(burst.held) == {"s/1", "s/2"}  # each shot the cloud could take says why
    assert "FARM_BURST_BUDGET_DAY=10" in burst.held["s/1"] and "about 3," in burst.held["s/1"]


def test_a_scene_over_its_budget_waits_while_another_scenes_shot_goes():
    g = group(job("m1", cost=10), shots=many("rich", 1) + many("poor", 1), waiting=2)
    burst = Burst("always", scene_cap=5.0, scene_spent={"poor": 4.0})
    out = assign([g], [load(cloud())], burst=burst)
    assert bound_to(out) == {"rich/0": "cloud"}
    assert "FARM_BURST_BUDGET_SCENE=5" in burst.held["poor/0"]
    assert burst.scene_spent == {"poor": 4.0, "rich": 3.0}


def test_a_held_shot_goes_to_a_local_node_with_room():
    g = group(job("m1", cost=10), shots=many("s", 1), waiting=1)
    burst = Burst("always", day_cap=1.0)
    out = assign([g], [load(cloud()), load(node("a", "m1"), bound=1, model="m1")], burst=burst)
    assert bound_to(out) == {"s/0": "a"}


def test_two_cloud_nodes_never_commit_past_the_budget_together():
    g = group(job("m1", cost=10), shots=many("s", 6), waiting=6)
    burst = Burst("always", day_cap=10.0)
    out = assign([g], [load(cloud("c1")), load(cloud("c2"))], burst=burst)
    assert len(out) == 3 and burst.day_spent == 9.0 <= burst.day_cap


def test_a_cloud_nodes_learned_billing_rate_prices_its_shots():
    burst = Burst("always", rates={"cloud": 2.0})
    assert burst.estimate(cloud(price=0.5), job("m1", cost=10)) == 10.0
    assert Burst(step_seconds=30).estimate(cloud(price=0.5, speed=2.0), job("m1", cost=10)) == 75.0
