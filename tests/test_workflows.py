"""Workflow files (API format) and parameter binding by node title."""

from __future__ import annotations

import json

import pytest

from farm.catalog import load_catalog
from farm.errors import WorkflowError
from farm.workflows import (
    BINDINGS,
    bind,
    check_api_format,
    find_titled,
    load_workflow,
    model_params,
)

from .conftest import REPO

WORKFLOWS = REPO / "workflows"
PARAMS = {
    "prompt": "a fox",
    "negative": "blur",
    "seed": 7,
    "steps": 4,
    "width": 320,
    "height": 192,
    "length": 17,
    "fps": 16,
    "model": "m.safetensors",
    "filename_prefix": "farm/x",
}
EXTRA = {
    "wan22_t2v": {"model2": "low.safetensors", "switch_step": 2},
    "wan22_i2v": {"model2": "low.safetensors", "switch_step": 2, "start_image": "farm/a.png"},
    "wan_ati": {"start_image": "farm/a.png", "tracks": '[[{"x": 1, "y": 2}]]'},
    "ltx2_i2v": {"start_image": "farm/a.png"},
}


def names():
    return sorted({e.workflow for e in load_catalog().engines.values()})


def test_every_catalogue_engine_has_its_workflow():
    assert names() == ["hunyuan15_t2v", "ltx2_i2v", "ltx2_t2v", "wan22_i2v", "wan22_t2v",
                       "wan22_ti2v", "wan_ati"]  # fmt: skip
    for name in names():
        assert (WORKFLOWS / f"{name}.json").is_file()


@pytest.mark.parametrize("name", names())
def test_binding_writes_every_parameter_into_its_titled_node(name):
    graph = load_workflow(name, WORKFLOWS)
    params = {**PARAMS, **EXTRA.get(name, {})}
    engine = load_catalog().bindings(name)
    bound = bind(graph, params, name, engine)
    for param, value in params.items():
        for title, input_name in engine[param] if param in engine else [BINDINGS[param]]:
            (node_id,) = find_titled(bound, title)
            assert bound[node_id]["inputs"][input_name] == value
    assert graph != bound and load_workflow(name, WORKFLOWS) == graph  # the original is untouched


def test_binding_does_not_depend_on_node_ids_or_order():
    graph = load_workflow("wan22_ti2v", WORKFLOWS)
    renumber = {old: str(100 + i) for i, old in enumerate(reversed(list(graph)))}

    def remap(value):
        return (
            [renumber[value[0]], value[1]]
            if isinstance(value, list) and len(value) == 2 and value[0] in renumber
            else value
        )

    shuffled = {
        renumber[k]: {**v, "inputs": {n: remap(x) for n, x in v["inputs"].items()}}
        for k, v in reversed(list(graph.items()))
    }
    a, b = bind(graph, PARAMS), bind(shuffled, PARAMS)
    titles = {t for t, _ in BINDINGS.values()} & {
        n.get("_meta", {}).get("title") for n in a.values()
    }
    assert len(titles) >= 6
    for title in titles:
        na, nb = a[find_titled(a, title)[0]], b[find_titled(b, title)[0]]
        assert na["class_type"] == nb["class_type"]
        assert {k: v for k, v in na["inputs"].items() if not isinstance(v, list)} == {
            k: v for k, v in nb["inputs"].items() if not isinstance(v, list)
        }


def test_missing_title_and_unknown_parameter_are_explained():
    graph = load_workflow("wan22_ti2v", WORKFLOWS)
    with pytest.raises(WorkflowError, match="no node titled 'Start Image'"):
        bind(graph, {"start_image": "x.png"}, "wan22_ti2v")
    with pytest.raises(WorkflowError, match="unknown workflow parameter 'colour'"):
        bind(graph, {"colour": 1})


def test_duplicate_titles_are_refused():
    graph = load_workflow("wan22_ti2v", WORKFLOWS)
    (sampler,) = find_titled(graph, "Sampler")
    graph["999"] = json.loads(json.dumps(graph[sampler]))
    with pytest.raises(WorkflowError, match="2 nodes are titled 'Sampler'"):
        bind(graph, {"seed": 1})


def test_editor_format_and_garbage_are_refused(tmp_path):
    with pytest.raises(WorkflowError, match="editor"):
        check_api_format({"nodes": [], "links": []}, "x.json")
    with pytest.raises(WorkflowError, match="class_type"):
        check_api_format({"1": {"inputs": {}}}, "x.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        load_workflow("bad", tmp_path)
    with pytest.raises(WorkflowError, match="not found"):
        load_workflow("nope", tmp_path)


def test_a_parameter_may_be_bound_to_several_inputs_or_to_none():
    graph = load_workflow("wan22_ti2v", WORKFLOWS)
    (sampler,) = find_titled(graph, "Sampler")
    graph["999"] = {**json.loads(json.dumps(graph[sampler])), "_meta": {"title": "Second"}}
    bindings = {"seed": (("Sampler", "seed"), ("Second", "seed")), "negative": (),
                "model2": (("Second", "model"),)}  # fmt: skip
    params = {"seed": 9, "negative": "ignored", **model_params(["a.safetensors", "b"])}
    bound = bind(graph, params, "wan22_ti2v", bindings)
    assert bound[sampler]["inputs"]["seed"] == bound["999"]["inputs"]["seed"] == 9
    (loader,) = find_titled(graph, "Diffusion Model")
    assert bound[loader]["inputs"]["unet_name"] == "a.safetensors"  # model: the default title
    assert bound["999"]["inputs"]["model"] == "b"  # model2: where the engine binds it
    assert bound == bind(graph, {k: v for k, v in params.items() if k != "negative"}, "x", bindings)
    with pytest.raises(WorkflowError, match="unknown workflow parameter 'model2'"):
        bind(graph, model_params(["a", "b"]))


def test_a_two_model_workflow_takes_both_models_and_splits_the_steps():
    """Wan 2.2 A14B: the high-noise model samples the first half of the steps (noise
    added, leftover noise returned), the low-noise model the rest."""
    graph = load_workflow("wan22_t2v", WORKFLOWS)
    params = {"model": "hi.safetensors", "model2": "lo.safetensors", "seed": 9, "steps": 8,
              "switch_step": 4}  # fmt: skip
    bound = bind(graph, params, "wan22_t2v", load_catalog().bindings("wan22_t2v"))
    (hi,), (lo,) = find_titled(bound, "High Noise Sampler"), find_titled(bound, "Low Noise Sampler")
    (hm,), (lm,) = find_titled(bound, "High Noise Model"), find_titled(bound, "Low Noise Model")
    assert bound[hm]["inputs"]["unet_name"] == "hi.safetensors"
    assert bound[lm]["inputs"]["unet_name"] == "lo.safetensors"
    high, low = bound[hi]["inputs"], bound[lo]["inputs"]
    assert (high["noise_seed"], high["steps"], high["start_at_step"], high["end_at_step"]) == (
        9,
        8,
        0,
        4,
    )
    assert (low["steps"], low["start_at_step"], low["add_noise"]) == (8, 4, "disable")
    assert low["latent_image"] == [hi, 0]


def test_a_job_s_bindings_and_file_come_from_its_own_engine():
    """Two engines may render one workflow with different bindings and files: a job gets
    its own engine's, a caller naming no engine the first engine's."""
    from dataclasses import replace as replaced
    from pathlib import Path

    from farm.catalog import load_catalog

    catalog = load_catalog()
    base = catalog.engines["wan22_t2v"]
    alt = replaced(base, name="alt", bindings={"seed": (("Other Sampler", "seed"),)},
                   path=Path("/studio/alt.json"))  # fmt: skip
    catalog = replaced(catalog, engines={**catalog.engines, "alt": alt})
    assert catalog.bindings("wan22_t2v", "alt") == alt.bindings
    assert catalog.bindings("wan22_t2v", "wan22_t2v") == base.bindings
    assert catalog.bindings("wan22_t2v") == base.bindings
    assert catalog.workflow_file("wan22_t2v", Path("/wf"), "alt") == Path("/studio/alt.json")
    assert catalog.workflow_file("wan22_t2v", Path("/wf")) == Path("/wf/wan22_t2v.json")
    assert catalog.bindings("nowhere", "alt") == {}


def test_ltx2_takes_frames_fps_and_checkpoint_everywhere_its_graph_needs_them():
    """LTX-2's audio latent needs the frame count and rate of the video, its conditioning
    the rate, and its checkpoint feeds the model, audio VAE and text encoder loaders."""
    for name in ("ltx2_t2v", "ltx2_i2v"):
        graph = load_workflow(name, WORKFLOWS)
        params = {"length": 49, "fps": 30, "model": "ltx-2-19b-distilled-fp8.safetensors"}
        bound = bind(graph, params, name, load_catalog().bindings(name))
        node = {n["_meta"]["title"]: n["inputs"] for n in bound.values()}
        assert node["Video Latent"]["length"] == node["Audio Latent"]["frames_number"] == 49
        assert node["Create Video"]["fps"] == node["Conditioning"]["frame_rate"] == 30
        assert node["Audio Latent"]["frame_rate"] == 30
        for title in ("Load Checkpoint", "Load Audio VAE", "Text Encoder"):
            assert node[title]["ckpt_name"] == "ltx-2-19b-distilled-fp8.safetensors"
