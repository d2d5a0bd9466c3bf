"""Editor-format workflows converted to the API format as ComfyUI's frontend does it."""

from __future__ import annotations

import copy
import json
import time

import pytest
import requests

from farm.comfy_editor import Widget, class_widgets, dynamic_prompt, editor_to_api, is_editor_format
from farm.emulators.comfy_nodes import definitions
from farm.emulators.comfyui import make_dirs
from farm.emulators.profile import load_profile
from farm.errors import WorkflowError

from .conftest import NODES, REPO
from .test_emulator_comfyui import TIMEOUT, node  # noqa: F401  (the emulated node fixture)

FIXTURES = REPO / "tests" / "fixtures" / "editor"
WORKFLOWS = REPO / "workflows"
HEADER = "cannot convert the editor-format workflow"


def load(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def object_info(tmp_path_factory):
    """``GET /object_info`` of an emulated node-a (Wan t2v/i2v), built in-process."""
    dirs = make_dirs(tmp_path_factory.mktemp("node-a"))
    defs = definitions(load_profile(NODES / "node-a.json"), dirs)
    return {name: d.info() for name, d in defs.items()}


@pytest.fixture
def t2v():
    return load(FIXTURES / "txt2video_wan.json")


def expected_t2v() -> dict:
    """The fixture's API export (a Wan 2.1 t2v graph) at test size, plus its LoadImage ->
    PreviewImage branch."""
    graph = load(FIXTURES / "txt2video_wan.api.json")
    graph["40"]["inputs"].update(width=160, height=96, length=9)
    graph["3"]["inputs"]["steps"] = 3
    graph["55"] = {
        "class_type": "LoadImage",
        "inputs": {"image": "example.png"},
        "_meta": {"title": "Reference"},
    }
    graph["57"] = {
        "class_type": "PreviewImage",
        "inputs": {"images": ["55", 0]},
        "_meta": {"title": "PreviewImage"},
    }
    return graph


def by_id(workflow: dict, node_id: int) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def refusal(workflow: dict, object_info: dict) -> str:
    with pytest.raises(WorkflowError) as caught:
        editor_to_api(workflow, object_info)
    return str(caught.value)


# --- whole workflows ---------------------------------------------------------------------


def test_is_editor_format():
    assert is_editor_format(load(FIXTURES / "txt2video_wan.json"))
    assert is_editor_format(load(FIXTURES / "img2video_wan_v1.json"))
    assert not is_editor_format(load(WORKFLOWS / "wan22_ti2v.json"))
    assert not is_editor_format([]) and not is_editor_format({"nodes": {}})


def test_t2v_fixture_converts_to_the_api_graph(t2v, object_info):
    """Reroute chain, seed from a PrimitiveNode, muted WEBP, bypassed blur, Note, upload widget."""
    assert editor_to_api(t2v, object_info) == expected_t2v()


def test_schema_1_workflow_with_link_objects_converts_to_the_api_graph(object_info):
    editor = load(FIXTURES / "img2video_wan_v1.json")
    assert editor_to_api(editor, object_info) == load(FIXTURES / "img2video_wan_v1.api.json")


def test_links_from_a_muted_node_are_dropped(t2v, object_info):
    by_id(t2v, 48)["mode"] = 2
    expected = expected_t2v()
    del expected["48"], expected["3"]["inputs"]["model"]
    assert editor_to_api(t2v, object_info) == expected


def test_bypassed_node_passes_the_first_input_of_the_linked_type(t2v, object_info):
    """A bypassed KSampler: its LATENT output slot 0 has a MODEL input opposite, so the
    link goes through the first LATENT input (latent_image, slot 3)."""
    by_id(t2v, 3)["mode"] = 4
    expected = expected_t2v()
    del expected["3"]
    expected["8"]["inputs"]["samples"] = ["40", 0]
    assert editor_to_api(t2v, object_info) == expected


def test_bypassed_node_without_a_matching_input_drops_the_link(t2v, object_info):
    by_id(t2v, 40)["mode"] = 4  # the latent source: nothing to pass through
    expected = expected_t2v()
    del expected["40"], expected["3"]["inputs"]["latent_image"]
    assert editor_to_api(t2v, object_info) == expected


def test_unlinked_required_input_is_left_for_the_server_to_report(t2v, object_info):
    by_id(t2v, 3)["inputs"][0]["link"] = None
    expected = expected_t2v()
    del expected["3"]["inputs"]["model"]
    assert editor_to_api(t2v, object_info) == expected


def test_widget_values_saved_by_name(t2v, object_info):
    by_id(t2v, 40)["widgets_values"] = {"batch_size": 1, "length": 9, "height": 96, "width": 160}
    assert editor_to_api(t2v, object_info) == expected_t2v()


def test_dynamic_prompt_comments_are_stripped_and_arrays_boxed(t2v, object_info):
    by_id(t2v, 6)["widgets_values"] = ["a {red} fox \\{sic\\} // TODO: fur\n/* draft */at dawn"]
    info = copy.deepcopy(object_info)
    info["CreateVideo"]["input"]["required"]["fps"] = ["FLOAT", {}]
    by_id(t2v, 49)["widgets_values"] = [[16, 24]]
    graph = editor_to_api(t2v, info)
    assert graph["6"]["inputs"]["text"] == "a red fox {sic} \nat dawn"
    assert graph["49"]["inputs"]["fps"] == {"__value__": [16, 24]}


# --- refusals ----------------------------------------------------------------------------


REFUSALS = {
    "not installed": (
        lambda w: w["nodes"].append({"id": 12, "type": "FooLoader", "title": "Load Checkpoint"}),
        "node 12 'Load Checkpoint' (FooLoader): class not installed on this ComfyUI server; "
        "install the custom node pack that provides it, or remove the node from the workflow",
    ),
    "subgraph": (
        lambda w: w["nodes"].append(
            {"id": 60, "type": "1f0a6e2c-93e4-4c1b-bb2a-6d6f0a9e8c21", "title": "Upscaler"}
        ),
        "node 60 'Upscaler' (1f0a6e2c-93e4-4c1b-bb2a-6d6f0a9e8c21): is a subgraph "
        "(definitions.subgraphs), which this converter does not expand; in the editor, "
        "right-click it, choose 'Unpack Subgraph' and save again",
    ),
    "group node": (
        lambda w: w["nodes"].append({"id": 61, "type": "workflow>Upscale"}),
        "node 61 'workflow>Upscale' (workflow>Upscale): is a group node, which this converter "
        "does not expand; in the editor, right-click it, choose 'Convert to nodes' and save again",
    ),
    "too few widget values": (
        lambda w: by_id(w, 3).update(widgets_values=[7, "fixed", 3]),
        "node 3 'Sampler' (KSampler): has 3 widget values but this server's KSampler takes 7 "
        "(seed, control_after_generate, steps, cfg, sampler_name, scheduler, denoise); the node "
        "changed since the workflow was saved: open the workflow in this server's editor and "
        "save it again",
    ),
    "link from a missing node": (
        lambda w: w["links"].__setitem__(9, [110, 99, 0, 8, 0, "LATENT"]),
        "node 8 'VAE Decode' (VAEDecode): input 'samples' is linked (link 110) from node 99, "
        "which is not in the workflow; reconnect the input in the editor and save again",
    ),
    "missing link": (
        lambda w: by_id(w, 8)["inputs"][1].update(link=404),
        "node 8 'VAE Decode' (VAEDecode): input 'vae' uses link 404, which is not in the "
        "workflow's links; reconnect the input in the editor and save again",
    ),
    "bad link": (
        lambda w: w["links"].append([118, 3]),
        "links[17] is not a link ([id, origin_id, origin_slot, target_id, target_slot, type] "
        "or an object with those keys); save the workflow again",
    ),
    "random dynamic prompt": (
        lambda w: by_id(w, 6).update(widgets_values=["a {red|grey} fox"]),
        "node 6 'Positive Prompt' (CLIPTextEncode): text has a dynamic-prompt choice {a|b}, "
        "which the editor picks at random on every queue; keep one option, or escape the "
        "braces as \\{ \\| \\}",
    ),
    "browser-side file name": (
        lambda w: by_id(w, 50).update(widgets_values=["farm/%date:yyyy-MM-dd%", "mp4", "h264"]),
        "node 50 'Save Video' (SaveVideo): filename_prefix 'farm/%date:yyyy-MM-dd%' uses the "
        "editor's %date:…% or %Node.widget% substitution, which only the browser performs; "
        "write it out",
    ),
    "empty primitive": (
        lambda w: by_id(w, 52).update(widgets_values=[]),
        "node 52 'Seed' (PrimitiveNode): has no value (widgets_values is empty); set its value "
        "in the editor and save the workflow again",
    ),
    "loop": (
        lambda w: (
            by_id(w, 58)["inputs"][0].update(link=119),
            w["links"].append([119, 58, 0, 58, 0, "*"]),
        ),
        "node 58 'Reroute' (Reroute): its links form a loop through Reroute or bypassed nodes; "
        "break the loop in the editor",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_names_the_node_the_problem_and_the_fix(case, t2v, object_info):
    break_it, problem = REFUSALS[case]
    break_it(t2v)
    assert refusal(t2v, object_info) == f"{HEADER} (1 problem):\n  - {problem}"


def test_every_problem_is_reported_at_once(t2v, object_info):
    cases = ["not installed", "too few widget values", "missing link", "random dynamic prompt"]
    for case in cases:
        REFUSALS[case][0](t2v)
    lines = refusal(t2v, object_info).splitlines()
    assert lines[0] == f"{HEADER} (4 problems):"
    assert sorted(lines[1:]) == sorted(f"  - {REFUSALS[c][1]}" for c in cases)


def test_muted_or_bypassed_nodes_need_no_installed_class(t2v, object_info):
    by_id(t2v, 56)["type"] = "FancyBlur"  # bypassed: only its slots matter
    by_id(t2v, 54)["type"] = "FancyPreview"  # muted
    assert editor_to_api(t2v, object_info) == expected_t2v()


def test_not_an_editor_workflow():
    with pytest.raises(WorkflowError, match="not an editor-format workflow"):
        editor_to_api(load(WORKFLOWS / "wan22_ti2v.json"), {})


# --- widgets and dynamic prompts -----------------------------------------------------------


def widgets(required: dict, optional: dict | None = None, order: dict | None = None) -> list:
    info: dict = {"input": {"required": required, "optional": optional or {}}}
    if order:
        info["input_order"] = order
    return [(w.name, w.sent) for w in class_widgets(info)]


CONTROL = ("control_after_generate", False)


def test_control_after_generate_widgets():
    assert widgets({"seed": ["INT", {}]}) == [("seed", True), CONTROL]
    assert widgets({"noise_seed": ["INT", {}]}) == [("noise_seed", True), CONTROL]
    assert widgets({"seed": ["INT", {"control_after_generate": False}]}) == [("seed", True)]
    assert widgets({"n": ["INT", {"control_after_generate": "fixed"}]}) == [("n", True), CONTROL]
    assert widgets({"x": ["FLOAT", {"control_after_generate": True}]}) == [("x", True), CONTROL]
    combo = widgets({"pick": [["a", "b"], {"control_after_generate": True}]})
    assert combo == [("pick", True), CONTROL, ("control_filter_list", False)]
    assert widgets({"seed": ["INT", {"forceInput": True}], "m": ["MODEL"]}) == []


def test_upload_widgets():
    image = {"image": [["a.png"], {"image_upload": True}], "channel": [["alpha", "red"]]}
    upload = ("upload", False)
    assert widgets(image) == [("image", True), ("channel", True), upload]
    video = {"file": ["COMBO", {"options": ["a.mp4"], "video_upload": True}]}
    assert widgets(video, {"n": ["INT", {}]}) == [("file", True), upload, ("n", True)]
    order = {"required": ["file"], "optional": ["n"]}
    assert widgets(video, {"n": ["INT", {}]}, order) == [("file", True), ("n", True), upload]
    assert widgets({"audio": [["a.wav"], {"audio_upload": True}]}) == [("audio", True), upload]


def test_dynamic_string_widgets():
    (text,) = class_widgets({"input": {"required": {"t": ["STRING", {"dynamicPrompts": True}]}}})
    assert text == Widget("t", dynamic=True)


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("plain", "plain"),
        ("a // note\nb /* x\ny */c", "a \nb c"),
        ("{one}{ two }", "one two "),
        ("{same|same}", "same"),
        ("\\{literal\\|x\\}", "{literal|x}"),
        ("{a|b}", None),
        ("{{a|b}}", None),
    ],
)
def test_dynamic_prompt(text, sent):
    assert dynamic_prompt(text) == sent


# --- end to end ----------------------------------------------------------------------------


def test_converted_workflow_runs_on_the_emulated_node(node):  # noqa: F811
    object_info = requests.get(node + "/object_info", timeout=TIMEOUT).json()
    graph = editor_to_api(load(FIXTURES / "txt2video_wan.json"), object_info)
    graph["37"]["inputs"]["unet_name"] = "wan2.2_ti2v_5B_fp16.safetensors"  # a model it holds
    body = {"prompt": graph, "client_id": "comfy-editor-test"}
    resp = requests.post(node + "/prompt", json=body, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["node_errors"] == {}
    prompt_id = resp.json()["prompt_id"]
    deadline = time.monotonic() + 30
    while not (entry := requests.get(f"{node}/history/{prompt_id}", timeout=TIMEOUT).json()):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.1)
    status = entry[prompt_id]["status"]
    assert status["status_str"] == "success" and status["completed"] is True
    assert set(entry[prompt_id]["outputs"]) == {"50", "57"}
