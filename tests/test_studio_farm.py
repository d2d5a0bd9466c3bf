"""A studio catalogue on a real farm: its templates render end to end on emulated nodes
(an API-format two-model workflow, an editor-format one of core nodes and no model, a
WanGP model the studio defines),
`farm templates` says which live node can render what, and a catalogue that is wrong
stops a scene before any shot runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from farm.local import EmulatedNode, LocalFarm
from farm.media import probe
from farm.runtime import get_runtime
from farm.scene import parse_scene
from farm.submit import enqueue

from .conftest import NODES, REPO, pointed_at
from .test_e2e import wait_done
from .test_e2e_wan2gp import embedded_settings

STUDIO = REPO / "examples" / "studio"
HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
#: a workflow whose class no node has (a custom node not installed anywhere)
GLOW = """
[workflows.glow]
file = "flows/glow.json"
frame_step = 1
[workflows.glow.bindings]
prompt = ""
negative_prompt = ""
seed = ""
steps = ""
width = "Canvas.width"
height = "Canvas.height"
frames = "Canvas.batch_size"
fps = "Encode.fps"
filename_prefix = "Save.filename_prefix"

[templates.glow]
text.preview = { workflow = "glow" }
text.final = { workflow = "glow" }
"""
#: a WanGP model of the studio's own (examples/studio/finetunes/t2v_2_2_dusk.json on the node)
DUSK_WAN = """
[wangp_models.t2v_2_2_dusk]
architecture = "t2v_2_2"
name = "Wan2.2 Text2video Dusk Lightning 14B"
tier = "fast"
steps = 4

[templates.dusk_wan]
description = "The dusk look on WanGP: our Wan 2.2 A14B finetune at both tiers"
text.preview = { wangp = "t2v_2_2_dusk" }
text.final = { wangp = "t2v_2_2_dusk" }
"""


def glow_graph() -> dict:
    def node(cls, title, **inputs):
        return {"class_type": cls, "inputs": inputs, "_meta": {"title": title}}

    return {
        "1": node("EmptyImage", "Canvas", width=64, height=64, batch_size=9, color=0),
        "2": node("FancyGlow", "Glow", image=["1", 0], strength=0.5),
        "3": node("CreateVideo", "Encode", images=["2", 0], fps=24.0),
        "4": node("SaveVideo", "Save", video=["3", 0], filename_prefix="glow", format="mp4",
                  codec="h264"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def studio_dir(tmp_path_factory) -> Path:
    """The test studio's folder with a template whose class no node has and one that
    renders with a WanGP model of the studio's own."""
    folder = tmp_path_factory.mktemp("studio") / "studio"
    shutil.copytree(STUDIO, folder)
    (folder / "flows" / "glow.json").write_text(json.dumps(glow_graph()))
    with (folder / "catalog.toml").open("a") as fh:
        fh.write(GLOW + DUSK_WAN)
    return folder


@pytest.fixture(scope="module")
def farm(tmp_path_factory, studio_dir):
    """A farm with FARM_CATALOG set: node-studio holds both Wan 2.2 A14B models, node-half
    the high-noise one only; WanGP node wan-studio has the studio's finetune t2v_2_2_dusk,
    wan-plain knows its definition but lacks its weights."""
    profiles = tmp_path_factory.mktemp("profiles")
    profile = json.loads((NODES / "node-studio.json").read_text())
    profile["name"] = "node-half"
    profile["models"]["diffusion_models"] = [HIGH]
    (profiles / "node-half.json").write_text(json.dumps(profile))
    plain = json.loads((NODES / "wan-studio.json").read_text())
    plain.update(name="wan-plain", finetunes=str(STUDIO / "finetunes"),
                 models={"wangp": ["t2v_2_2"]})  # fmt: skip
    (profiles / "wan-plain.json").write_text(json.dumps(plain))
    nodes = [EmulatedNode("node-studio", NODES / "node-studio.json"),
             EmulatedNode("node-half", profiles / "node-half.json"),
             EmulatedNode("wan-studio", NODES / "wan-studio.json", kind="wan2gp"),
             EmulatedNode("wan-plain", profiles / "wan-plain.json", kind="wan2gp")]  # fmt: skip
    env = {"FARM_CATALOG": str(studio_dir / "catalog.toml"), "FARM_HTTP_TIMEOUT": "10",
           "FARM_CACHE": "0"}  # fmt: skip
    farm = LocalFarm(tmp_path_factory.mktemp("studio-farm"), nodes, extra_env=env)
    with farm, pointed_at(farm.env()):
        yield farm


def farm_cli(farm: LocalFarm, *args: str, catalog: Path | None = None):
    env = {**os.environ, **farm.env()}
    if catalog is not None:
        env["FARM_CATALOG"] = str(catalog)
    return subprocess.run([sys.executable, "-m", "farm", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def scene_file(folder: Path, scene_id: str, *shots: dict) -> Path:
    path = folder / f"{scene_id}.json"
    path.write_text(json.dumps({"id": scene_id, "quality": "final", "shots": list(shots)}))
    return path


def test_a_studio_scene_renders_end_to_end(farm):
    rt = get_runtime()
    base = {"width": 320, "height": 192, "frames": 17}
    scene = parse_scene(
        {"id": "studio-e2e", "quality": "final", "shots": [
            {"id": "dusk1", "action_description": "a lighthouse at dusk", "template": "dusk",
             "seed": 1, "fps": 16, **base},
            {"id": "card", "action_description": "title", "template": "title_card", "fps": 24,
             **base},
            {"id": "dusk2", "action_description": "waves on rocks", "template": "dusk",
             "seed": 2, "fps": 16, **base},
        ]},
        templates=rt.catalog.templates,
    )  # fmt: skip
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", json.dumps(
        {k: v for k, v in status.items() if k != "shots"}, indent=1, default=str
    )
    shots = {s["id"]: s for s in status["shots"]}
    # only node-studio holds both models of the two-model job
    assert shots["dusk1"]["node"] == shots["dusk2"]["node"] == "node-studio"
    for shot_id, fps in (("dusk1", 16), ("dusk2", 16), ("card", 24)):
        info = probe(Path(shots[shot_id]["outputs"]["final"]))
        assert (info.frames, info.width, info.height) == (17, 320, 192)
        assert round(info.fps) == fps
    records = {s["id"]: s for s in rt.state.shots(scene.id)}
    for shot_id, seed in (("dusk1", 1), ("dusk2", 2)):
        (attempt,) = [a for a in records[shot_id]["attempt_log"] if a.get("backend_job_id")]
        assert attempt["workflow"] == "dusk_a14b"
        node = farm.node_url(shots[shot_id]["node"])
        prompt_id = attempt["backend_job_id"]
        entry = requests.get(f"{node}/history/{prompt_id}", timeout=10).json()[prompt_id]
        graph = entry["prompt"][2]  # what the node was sent: each model in its loader
        assert graph["1"]["inputs"]["unet_name"] == HIGH
        assert graph["2"]["inputs"]["unet_name"] == LOW
        assert graph["10"]["inputs"]["seed"] == graph["11"]["inputs"]["seed"] == seed
        assert graph["10"]["inputs"]["steps"] == graph["11"]["inputs"]["steps"] == 8
        assert graph["9"]["inputs"]["length"] == 17
    card = next(a for a in records["card"]["attempt_log"] if a.get("backend_job_id"))
    node = farm.node_url(shots["card"]["node"])
    entry = requests.get(f"{node}/history/{card['backend_job_id']}", timeout=10).json()
    graph = next(iter(entry.values()))["prompt"][2]  # converted from the editor format
    canvas = next(n for n in graph.values() if n["_meta"]["title"] == "Canvas")
    assert (canvas["class_type"], canvas["inputs"]["batch_size"]) == ("EmptyImage", 17)
    assert {n["class_type"] for n in graph.values()} == {
        "EmptyImage", "ImageBlur", "CreateVideo", "SaveVideo"}  # fmt: skip


def test_a_studio_wangp_model_renders_on_the_wangp_node_that_has_it(farm):
    """A WanGP model the studio defines ([wangp_models.t2v_2_2_dusk], a finetune of Wan 2.2
    T2V A14B) renders a scene on the node that reports it, never on the one that lacks its
    weights, with the farm's facts of it (its frame grid and 4 steps)."""
    rt = get_runtime()
    shot = {"action_description": "a harbour at dusk", "template": "dusk_wan", "width": 320,
            "height": 192, "frames": 17, "fps": 16}  # fmt: skip
    scene = parse_scene(
        {"id": "studio-wangp", "quality": "preview_then_final", "shots": [
            {"id": "w1", "seed": 3, **shot}, {"id": "w2", "seed": 4, **shot}]},
        templates=rt.catalog.templates,
    )  # fmt: skip
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done", json.dumps(status, indent=1, default=str)
    for s in status["shots"]:
        assert s["node"] == "wan-studio"
        for tier in ("preview", "final"):
            info = probe(Path(s["outputs"][tier]))
            assert (info.frames, info.width, info.height, round(info.fps)) == (17, 320, 192, 16)
            sent = embedded_settings(s["outputs"][tier])  # what the node rendered
            assert (sent["model_type"], sent["num_inference_steps"]) == ("t2v_2_2_dusk", 4)
    runs = requests.get(f"{farm.node_url('wan-studio')}/emulator/jobs", timeout=10).json()["jobs"]
    ours = [r for r in runs if r["details"].get("model_types") == ["t2v_2_2_dusk"]]
    assert len(ours) == 4 and all(r["status"] == "success" for r in ours)  # 2 shots x 2 tiers
    plain = requests.get(f"{farm.node_url('wan-plain')}/emulator/jobs", timeout=10).json()
    assert plain["jobs"] == []
    records = {s["id"]: s for s in rt.state.shots(scene.id)}
    attempts = [a for a in records["w1"]["attempt_log"] if a.get("backend_job_id")]
    assert attempts and all(a["workflow"] == "wangp" for a in attempts)


def test_farm_templates_says_which_live_node_renders_each_tier(farm, studio_dir):
    out = farm_cli(farm, "templates", "--json")
    assert out.returncode == 0, out.stderr
    found = {t["name"]: t for t in json.loads(out.stdout)}
    assert found["dusk"]["source"] == str(studio_dir / "catalog.toml")
    assert found["standard_generation"]["source"] == "built-in"
    for tier in ("preview", "final"):
        (dusk,) = [r for r in found["dusk"]["tiers"][tier] if r["kind"] == "text"]
        assert (dusk["workflow"], dusk["models"], dusk["nodes"]) == (
            "dusk_a14b", [HIGH, LOW], ["node-studio"])  # fmt: skip
        assert dusk["lacks"] == {"node-half": f"lacks diffusion_models/{LOW}"}
        (card,) = [r for r in found["title_card"]["tiers"][tier] if r["kind"] == "text"]
        assert card["models"] == [] and card["nodes"] == ["node-half", "node-studio"]
        (glow,) = [r for r in found["glow"]["tiers"][tier] if r["kind"] == "text"]
        assert glow["nodes"] == [] and set(glow["lacks"]) == {"node-half", "node-studio"}
        assert all("class FancyGlow is not installed" in why for why in glow["lacks"].values())
    # the built-in preview tier (Wan 2.2 TI2V-5B): a model no node of this farm holds
    routes = {
        (r["kind"], r["backend"]): r for r in found["standard_generation"]["tiers"]["preview"]
    }
    wan = routes[("text", "comfyui")]
    assert wan["nodes"] == [] and "wan2.2_ti2v_5B_fp16.safetensors" in wan["lacks"]["node-studio"]
    assert routes[("text", "wan2gp")]["nodes"] == []  # no WanGP node here has FastWan
    for tier in ("preview", "final"):  # the studio's WanGP model: where its weights are
        (dusk_wan,) = [r for r in found["dusk_wan"]["tiers"][tier] if r["kind"] == "text"]
        assert (dusk_wan["backend"], dusk_wan["models"]) == ("wan2gp", ["t2v_2_2_dusk"])
        assert dusk_wan["nodes"] == ["wan-studio"]
        assert dusk_wan["lacks"] == {"wan-plain": "lacks wangp/t2v_2_2_dusk"}
    text = farm_cli(farm, "templates")
    assert text.returncode == 0 and "dusk_a14b" in text.stdout and "FancyGlow" in text.stdout


def test_ingest_publishes_the_templates_for_the_blender_addon(farm, studio_dir):
    rt = get_runtime()
    published = {
        k: json.loads(v) for k, v in rt.redis.hgetall(rt.settings.keys.templates()).items()
    }
    assert set(published) == set(rt.catalog.templates)
    assert published["dusk"] == {"description": "Wan 2.2 A14B, high-noise then low-noise model",
                                 "source": str(studio_dir / "catalog.toml")}  # fmt: skip
    assert published["quick_preview"]["source"] == "built-in"


def test_a_workflow_whose_class_no_node_has_stops_the_scene_before_any_shot_runs(farm, tmp_path):
    rt = get_runtime()
    shot = {"id": "g", "action_description": "glow", "template": "glow", "frames": 9}
    out = farm_cli(farm, "enqueue", str(scene_file(tmp_path, "studio-glow", shot)))
    assert out.returncode == 3, out.stderr
    assert "cannot run workflow glow" in out.stderr
    assert "class FancyGlow is not installed" in out.stderr
    assert not rt.redis.exists(rt.settings.keys.scene("studio-glow"))


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        ("missing bound title", "workflows.dusk_a14b.bindings.steps: no node titled 'Low Noise Samplr'"),
        ("bad TOML", "is not valid TOML: Invalid value (at line 22"),
        ("unknown key", "templates.title_card.text.final.modles: unknown key"),
        ("missing file", "workflows.title_card.file"),
        ("missing catalogue", "does not exist: point FARM_CATALOG at your catalog.toml"),
    ],
)  # fmt: skip
def test_a_wrong_catalogue_gives_its_one_error_and_no_scene_runs(farm, tmp_path, mistake, expected):
    folder = tmp_path / "bad"
    shutil.copytree(STUDIO, folder)
    catalog = folder / "catalog.toml"
    text = catalog.read_text()
    if mistake == "missing bound title":
        text = text.replace('"Low Noise Sampler.steps"', '"Low Noise Samplr.steps"')
    elif mistake == "bad TOML":
        text = text.replace("fps = 24", "fps = = 24")
    elif mistake == "unknown key":
        text = text.replace('text.final = { workflow = "title_card" }',
                            'text.final = { workflow = "title_card", modles = [] }')  # fmt: skip
    elif mistake == "missing file":
        (folder / "flows" / "title_card.json").unlink()
    catalog.write_text(text)
    if mistake == "missing catalogue":
        catalog = folder / "no-such-catalog.toml"
    rt = get_runtime()
    scene_id = f"studio-bad-{uuid.uuid4().hex[:6]}"
    shot = {"id": "d", "action_description": "dusk", "template": "dusk", "frames": 9}
    path = scene_file(tmp_path, scene_id, shot)
    for command in ("validate", "enqueue"):
        out = farm_cli(farm, command, str(path), catalog=catalog)
        assert out.returncode == 2, (command, out.stderr)
        assert str(catalog) in out.stderr and expected in out.stderr, out.stderr
        assert out.stderr.count(f"{catalog}: ") <= 1, out.stderr  # one problem, one line
    assert not rt.redis.exists(rt.settings.keys.scene(scene_id))
