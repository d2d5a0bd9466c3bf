"""A studio's own catalogue (FARM_CATALOG): loading, merging, binding, and one clear error
for each kind of mistake (file, key path and fix named)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from farm.catalog import load_catalog
from farm.errors import CatalogError
from farm.planning import plan_scene
from farm.scene import parse_scene
from farm.settings import Settings
from farm.studio import catalog_for, load_studio
from farm.workflows import bind, load_workflow, model_params

from .conftest import REPO

STUDIO = REPO / "examples" / "studio"
HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"


@pytest.fixture
def studio(tmp_path) -> Path:
    """A copy of the test studio's folder; returns its catalog.toml."""
    shutil.copytree(STUDIO, tmp_path / "studio")
    return tmp_path / "studio" / "catalog.toml"


def problem_of(path: Path) -> str:
    """The one problem loading ``path`` reports."""
    with pytest.raises(CatalogError) as err:
        load_studio(path)
    text = str(err.value)
    assert str(path) in text, text
    return text


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_a_studio_catalogue_adds_templates_over_the_built_in_ones():
    catalog = load_studio(STUDIO / "catalog.toml")
    built_in = load_catalog()
    assert set(catalog.templates) == {*built_in.templates, "dusk", "title_card"}
    assert catalog.source("dusk") == str(STUDIO / "catalog.toml")
    assert catalog.source("standard_generation") == "built-in"
    assert catalog.description("title_card").startswith("A plain title card")
    dusk = catalog.model_for("dusk", "final", start_image=False, trajectories=False)
    assert dusk.files == (HIGH, LOW) and dusk.file == HIGH
    assert dusk.required_files()["diffusion_models"] == (HIGH, LOW)
    assert dusk.engine.path == STUDIO / "flows" / "dusk_a14b.json"
    assert catalog.bindings("dusk_a14b")["model2"] == (("Low Noise Model", "unet_name"),)
    assert catalog.bindings("title_card")["prompt"] == ()  # prompt = "": not taken
    card = catalog.model_for("title_card", "preview", start_image=False, trajectories=False)
    assert card.files == () and "diffusion_models" not in card.required_files()
    # kinds a studio template leaves out render as the built-in ones do
    image = catalog.model_for("dusk", "final", start_image=True, trajectories=False)
    assert image.key == built_in.image_models["start_image"]
    assert catalog.wan_model_for("dusk", "final", start_image=False, trajectories=False) is None
    assert built_in.studio is None and "dusk" not in built_in.templates  # untouched


def test_settings_point_at_the_studio_catalogue(studio, tmp_path, monkeypatch):
    monkeypatch.chdir(studio.parent)
    settings = Settings.from_env({"FARM_CATALOG": "catalog.toml"})
    assert settings.catalog == str(studio)  # resolved where it was given: workers run elsewhere
    assert "dusk" in catalog_for(settings).templates
    assert catalog_for(Settings.from_env({})) is load_catalog()


def test_a_two_model_job_binds_each_model_and_every_titled_input():
    catalog = load_studio(STUDIO / "catalog.toml")
    scene = parse_scene({"id": "s", "quality": "final", "shots": [
        {"id": "a", "action_description": "a lighthouse", "template": "dusk", "seed": 5,
         "width": 320, "height": 192, "frames": 17}]}, templates=catalog.templates)  # fmt: skip
    (job,) = plan_scene(scene, catalog=catalog)[0]
    assert (job.workflow, job.model, job.params["steps"]) == ("dusk_a14b", HIGH, 8)
    assert job.files["diffusion_models"] == [HIGH, LOW]
    engine = catalog.engines["dusk_a14b"]
    graph = load_workflow("dusk_a14b", Path("unused"), path=engine.path)
    assert catalog.model_files(job.engine, job.model) == (HIGH, LOW)
    params = {**job.params, **model_params([HIGH, LOW])}
    bound = bind(graph, params, "dusk_a14b", engine.bindings)
    assert bound["1"]["inputs"]["unet_name"] == HIGH and bound["2"]["inputs"]["unet_name"] == LOW
    assert bound["10"]["inputs"]["seed"] == bound["11"]["inputs"]["seed"] == 5
    assert bound["10"]["inputs"]["steps"] == bound["11"]["inputs"]["steps"] == 8
    assert bound["7"]["inputs"]["text"] == job.params["prompt"]
    assert bound["9"]["inputs"]["width"] == 320 and bound["9"]["inputs"]["length"] == 17


def test_a_scene_may_name_studio_templates_only_where_the_catalogue_has_them():
    shot = {"id": "a", "action_description": "x", "template": "dusk"}
    parse_scene(
        {"id": "s", "shots": [shot]}, templates=load_studio(STUDIO / "catalog.toml").templates
    )
    with pytest.raises(Exception) as err:
        parse_scene({"id": "s", "shots": [shot]})  # the built-in catalogue
    assert "$.shots[0].template: 'dusk' is not a template of this farm" in str(err.value)


def test_a_missing_catalogue_file_says_how_to_fix_it(tmp_path):
    text = problem_of(tmp_path / "nope.toml")
    assert "does not exist" in text and "point FARM_CATALOG at" in text


def test_bad_toml_names_the_line(studio):
    edit(studio, "fps = 24", "fps = = 24")
    text = problem_of(studio)
    assert "is not valid TOML" in text and "line 22" in text


def test_an_unknown_key_is_named_with_its_path_and_the_known_keys(studio):
    edit(studio, 'text.final = { workflow = "title_card" }',
         'text.final = { workflow = "title_card", modles = [] }')  # fmt: skip
    text = problem_of(studio)
    assert "1 problem" in text
    assert "templates.title_card.text.final.modles: unknown key" in text
    assert "use one of: workflow, models, folder, wangp" in text


def test_a_missing_workflow_file_is_named(studio):
    (studio.parent / "flows" / "dusk_a14b.json").unlink()
    text = problem_of(studio)
    assert "1 problem" in text  # not again where the templates use it
    assert "workflows.dusk_a14b.file" in text and "dusk_a14b.json does not exist" in text


def test_a_bound_title_missing_from_an_api_workflow_is_named(studio):
    edit(studio, '"Low Noise Sampler.steps"', '"Low Noise Samplr.steps"')
    text = problem_of(studio)
    assert "1 problem" in text
    assert "workflows.dusk_a14b.bindings.steps: no node titled 'Low Noise Samplr'" in text
    assert 'or set steps = "" if the workflow does not take it' in text


def test_a_bound_title_missing_from_an_editor_workflow_is_named(studio):
    flow = studio.parent / "flows" / "title_card.json"
    data = json.loads(flow.read_text())
    del data["nodes"][3]["title"]  # the Save node: its title is now its class's
    flow.write_text(json.dumps(data))
    text = problem_of(studio)
    assert "workflows.title_card.bindings.filename_prefix: no node titled 'Save'" in text


def test_an_unbound_default_title_is_reported_not_ignored(studio):
    edit(studio, 'prompt = ""\n', "")  # the title card has no "Positive Prompt" node
    text = problem_of(studio)
    assert "workflows.title_card.bindings.prompt: no node titled 'Positive Prompt'" in text


def test_model_files_must_match_the_bound_loaders(studio):
    edit(studio, f'text.final = {{ workflow = "dusk_a14b", models = ["{HIGH}", "{LOW}"] }}',
         f'text.final = {{ workflow = "dusk_a14b", models = ["{HIGH}"] }}')  # fmt: skip
    text = problem_of(studio)
    assert "templates.dusk.text.final.models: gives 1 model file(s)" in text
    assert "binds 2 (bindings.models)" in text


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('text.final = { workflow = "title_card" }', 'text.final = { workflow = "titlecard" }',
         "templates.title_card.text.final.workflow: 'titlecard' is not a workflow"),
        ("version = 1", "version = 2", "version: 2 is not supported"),
        ("frame_step = 1", "frame_step = 0", "workflows.title_card.frame_step: 0 must be"),
        ('text.preview = { workflow = "title_card" }\n', "",
         "templates.title_card.text.preview: is required"),
        ('text.final = { workflow = "title_card" }', 'text.final = { wangp = "no_such_model" }',
         "templates.title_card.text.final.wangp: 'no_such_model' is not a WanGP model"),
        ('seed = ""', 'seed = "Canvas"', "workflows.title_card.bindings.seed: 'Canvas' must be"),
    ],
)  # fmt: skip
def test_each_mistake_gets_its_one_problem(studio, old, new, expected):
    edit(studio, old, new)
    text = problem_of(studio)
    assert "1 problem:" in text and expected in text, text


def test_a_json_catalogue_reads_as_the_toml_one(studio):
    import tomllib

    as_json = studio.with_suffix(".json")
    as_json.write_text(json.dumps(tomllib.loads(studio.read_text())))
    assert load_studio(as_json).templates["dusk"] == load_studio(studio).templates["dusk"]


def test_an_edited_catalogue_is_read_again(studio):
    assert "A plain title card" in load_studio(studio).description("title_card")
    edit(studio, "A plain title card", "An edited title card, longer")
    assert load_studio(studio).description("title_card").startswith("An edited title card")


def test_templates_report_names_what_each_node_lacks():
    from farm.planning import NodeInfo
    from farm.templates import report

    catalog = load_studio(STUDIO / "catalog.toml")
    support = {"text_encoders": ("umt5_xxl_fp8_e4m3fn_scaled.safetensors",),
               "vae": ("wan_2.1_vae.safetensors",)}  # fmt: skip
    full = NodeInfo("full", models={**support, "diffusion_models": (HIGH, LOW)},
                    workflows={"dusk_a14b": (HIGH, LOW), "title_card": ()})  # fmt: skip
    half = NodeInfo("half", models={**support, "diffusion_models": (HIGH,)},
                    workflows={"dusk_a14b": (HIGH,)},
                    lacks={"title_card": ("node 2: class ImageBlur is not installed",)})  # fmt: skip
    down = NodeInfo("down", alive=False)
    found = {t["name"]: t for t in report(catalog, [full, half, down])}
    (dusk,) = [r for r in found["dusk"]["tiers"]["final"] if r["kind"] == "text"]
    assert dusk["nodes"] == ["full"]
    assert dusk["lacks"] == {"half": f"lacks diffusion_models/{LOW}", "down": "down (no heartbeat)"}
    (card,) = [r for r in found["title_card"]["tiers"]["preview"] if r["kind"] == "text"]
    assert card["nodes"] == ["full"] and card["models"] == []
    assert card["lacks"]["half"] == (
        "cannot run workflow title_card (node 2: class ImageBlur is not installed)")  # fmt: skip
    assert found["title_card"]["source"] == str(STUDIO / "catalog.toml")
    assert found["quick_preview"]["source"] == "built-in"


DUSK_WAN = """
[wangp_models.t2v_2_2_dusk]
architecture = "t2v_2_2"
name = "Wan2.2 Text2video Dusk Lightning 14B"
tier = "fast"
steps = 4

[wangp_models.clay]
name = "Clay 5B"
family = "clay"
tier = "full"
mode = "ti2v"
params_b = 5
fps = 24
frame_step = 8
min_frames = 17
size_step = 32
resolution = "1280x704"
frames = 121
steps = 20

[templates.dusk_wan]
text.preview = { wangp = "t2v_2_2_dusk" }
text.final = { wangp = "clay" }
start_image.preview = { wangp = "clay" }
start_image.final = { wangp = "clay" }
"""


def test_a_studio_defines_wangp_models_and_templates_render_with_them(studio):
    with studio.open("a") as fh:
        fh.write(DUSK_WAN + "\n[wangp_models.t2v_2_2]\nsteps = 20\n")
    catalog = load_studio(studio)
    dusk = catalog.wan_models["t2v_2_2_dusk"]  # a finetune: its architecture's facts, and its own
    a14b = load_catalog().wan_models["t2v_2_2"]
    assert (dusk.name, dusk.tier, dusk.steps) == ("Wan2.2 Text2video Dusk Lightning 14B", "fast", 4)
    assert (dusk.fps, dusk.frame_step, dusk.diffusion_models, dusk.mode) == (
        a14b.fps, a14b.frame_step, a14b.diffusion_models, a14b.mode)  # fmt: skip
    assert catalog.wan_models["t2v_2_2"].steps == 20  # a built-in id's facts overridden
    assert load_catalog().wan_models["t2v_2_2"].steps == a14b.steps  # the built-in untouched
    clay = catalog.wan_models["clay"]
    assert (clay.frame_step, clay.min_frames, clay.size_step, clay.resolution) == (
        8,
        17,
        32,
        "1280x704",
    )
    assert catalog.wan_usable(["clay", "t2v_2_2_dusk", "t2v_1.3B"]) == ["clay", "t2v_2_2_dusk"]
    scene = parse_scene({"id": "s", "shots": [
        {"id": "a", "action_description": "x", "template": "dusk_wan", "frames": 30, "fps": 24,
         "backend": "wan2gp", "width": 1000, "height": 600}]}, templates=catalog.templates)  # fmt: skip
    ((preview,),), ((final,),) = plan_scene(scene, "preview", catalog), plan_scene(scene, "final", catalog)  # fmt: skip
    assert (preview.model, preview.params["steps"], preview.params["fps"]) == (
        "t2v_2_2_dusk",
        4,
        16,
    )
    assert preview.params["length"] == 21  # 30 frames at 24 fps = 20 at 16, on the 4n+1 grid
    assert (final.model, final.params["length"], final.params["steps"]) == ("clay", 33, 20)
    assert final.params["width"] % 32 == 0 and final.params["height"] % 32 == 0


def test_the_wangp_backend_sends_a_studio_models_facts(studio):
    from farm.backends.wan2gp_common import model_facts
    from farm.wan_settings import build_settings

    with studio.open("a") as fh:
        fh.write(DUSK_WAN)
    settings = Settings.from_env({"FARM_CATALOG": str(studio)})
    facts = model_facts("clay", settings)
    assert (facts["frame_step"], facts["min_frames"], facts["size_step"]) == (8, 17, 32)
    scene = parse_scene({"id": "s", "shots": [
        {"id": "a", "action_description": "x", "template": "dusk_wan", "frames": 40, "fps": 24,
         "backend": "wan2gp", "width": 640, "height": 352}]},
        templates=catalog_for(settings).templates)  # fmt: skip
    ((job,),) = plan_scene(scene, "final", catalog_for(settings))
    sent = build_settings(job, facts)
    assert (sent["model_type"], sent["video_length"], sent["resolution"]) == ("clay", 41, "640x352")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('tier = "fast"', 'tier = "quick"',
         "wangp_models.t2v_2_2_dusk.tier: 'quick' is not a tier; use \"fast\" (previews), \"full\""),
        ('mode = "ti2v"', 'mode = "v2v"', "wangp_models.clay.mode: 'v2v' is not a mode; use"),
        ("steps = 4", "steps = 4\nsteps_count = 4", "wangp_models.t2v_2_2_dusk.steps_count: unknown key"),
        ("steps = 20", 'steps = "20"', "wangp_models.clay.steps: '20' must be a whole number"),
        ("params_b = 5", "params_b = -5", "wangp_models.clay.params_b: -5 must be the billions"),
        ("frames = 121", "frames = 120", "wangp_models.clay.frames: 120 is off the frame grid 8n+1 (at "
         "least min_frames 17); use 121"),
        ("min_frames = 17", "min_frames = 16", "wangp_models.clay.min_frames: 16 is off the frame grid 8n+1"),
        ('resolution = "1280x704"', 'resolution = "1280x720"',
         "wangp_models.clay.resolution: '1280x720' is not a multiple of size_step 32; use \"1280x704\""),
        ('resolution = "1280x704"', 'resolution = "wide"', "wangp_models.clay.resolution: 'wide' must be WIDTHxHEIGHT"),
        ('fps = 24\n', "", "wangp_models.clay: a new WanGP model needs fps; give them, or set architecture"),
        ('architecture = "t2v_2_2"', 'architecture = "t2v_9_9"',
         "wangp_models.t2v_2_2_dusk.architecture: 't2v_9_9' is not a WanGP model the farm knows"),
        ('text.preview = { wangp = "t2v_2_2_dusk" }', 'text.preview = { wangp = "t2v_2_2_dusky" }',
         "templates.dusk_wan.text.preview.wangp: 't2v_2_2_dusky' is not a WanGP model the farm "
         "knows; define it in [wangp_models.t2v_2_2_dusky]"),
        ('start_image.preview = { wangp = "clay" }', 'start_image.preview = { wangp = "t2v_2_2_dusk" }',
         "templates.dusk_wan.start_image.preview.wangp: WanGP model 't2v_2_2_dusk' takes text only "
         "(mode t2v); start_image shots need a model of mode i2v or ti2v"),
    ],
)  # fmt: skip
def test_each_wangp_model_mistake_gets_its_one_problem(studio, old, new, expected):
    with studio.open("a") as fh:
        fh.write(DUSK_WAN)
    edit(studio, old, new)
    text = problem_of(studio)
    assert "1 problem:" in text and expected in text, text


def test_a_built_in_wangp_model_cannot_take_an_architecture(studio):
    with studio.open("a") as fh:
        fh.write('[wangp_models.t2v_2_2]\narchitecture = "i2v_2_2"\n')
    text = problem_of(studio)
    assert "wangp_models.t2v_2_2.architecture: 't2v_2_2' is a built-in WanGP model" in text


def test_an_emulated_wangp_node_knows_its_finetunes(tmp_path):
    from farm.emulators.profile import load_profile
    from farm.emulators.wan2gp_settings import model_info, node_catalogue, plan_task

    profile = load_profile(REPO / "tests" / "nodes" / "wan-studio.json")
    models = node_catalogue(profile.finetunes)
    dusk = model_info("t2v_2_2_dusk", models)
    assert (dusk.name, dusk.steps, dusk.diffusion_models, dusk.fps) == (
        "Wan2.2 Text2video Dusk Lightning 14B", 4, 2, 16)  # fmt: skip
    task = plan_task(0, 1, {"model_type": "t2v_2_2_dusk", "prompt": "x", "video_length": 18},
                     models=models)  # fmt: skip
    assert (task.steps, task.frames) == (4, 17)
    with pytest.raises(ValueError, match="Unknown model type: t2v_2_2_dusk"):
        model_info("t2v_2_2_dusk")  # a node without the finetune does not know it


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{", "not readable JSON"),
        ('{"num_inference_steps": 4}', 'needs a "model" object with "name" and "architecture"'),
        ('{"model": {"name": "x", "architecture": "t2v_9"}}', "model.architecture 't2v_9' is not"),
        ('{"model": {"name": "x", "architecture": "t2v"}, "num_inference_steps": 0}',
         "num_inference_steps 0 must be a whole number of 1 or more"),
        ('{"model": {"name": "x", "architecture": "t2v"}, "resolution": "big"}',
         "resolution 'big' must be WIDTHxHEIGHT"),
    ],
)  # fmt: skip
def test_a_bad_finetune_file_is_named_with_its_fix(tmp_path, content, expected):
    from farm.emulators.profile import parse_profile
    from farm.emulators.wan2gp_settings import node_catalogue
    from farm.errors import ConfigError

    (tmp_path / "finetunes").mkdir()
    (tmp_path / "finetunes" / "mine.json").write_text(content)
    profile = parse_profile({"name": "w", "gpu": "g", "vram_gb": 24, "models": {},
                             "finetunes": "finetunes"}, "w.json", tmp_path)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        node_catalogue(profile.finetunes)
    text = str(err.value)
    assert str(tmp_path / "finetunes" / "mine.json") in text and expected in text, text


def test_a_profiles_finetunes_folder_must_exist(tmp_path):
    from farm.emulators.profile import parse_profile
    from farm.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_profile({"name": "w", "gpu": "g", "vram_gb": 24, "models": {},
                       "finetunes": "nope"}, "w.json", tmp_path)  # fmt: skip
    assert f"finetunes: {tmp_path / 'nope'} is not a folder" in str(err.value)


#: how a built-in description names each model family
FAMILY_NAMES = {"wan2.2": "Wan 2.2", "hunyuan1.5": "Hunyuan Video 1.5", "ltx2": "LTX-2"}


def test_every_built_in_template_says_what_renders_it():
    """A built-in template's description names the family of each model that renders its
    text shots, on ComfyUI and on WanGP, at each tier, and its ComfyUI steps."""
    catalog = load_catalog()
    for name, spec in catalog.templates.items():
        text = catalog.description(name)
        assert text, f"built-in template {name} has no description (farm/data/catalog.json)"
        steps = spec["steps"]
        assert f"{steps['preview']} and {steps['final']} steps" in text, (name, text)
        for tier in ("preview", "final"):
            comfy = catalog.model_for(name, tier, start_image=False, trajectories=False)
            for image in (False, True):
                wan = catalog.wan_model_for(name, tier, start_image=image, trajectories=False)
                for family in {comfy.engine.family, wan.family}:
                    label = FAMILY_NAMES.get(family, family)
                    assert label in text, f"{name} {tier}: {label!r} missing from {text!r}"


def test_a_studio_checkpoint_model_is_placed_by_its_folder(tmp_path):
    """A leaf's ``folder = "checkpoints"`` makes its files checkpoints (LTX-2 style): the
    job needs them there; any other folder is one clear problem."""
    flows = tmp_path / "flows"
    flows.mkdir()
    shutil.copy(REPO / "workflows" / "ltx2_t2v.json", flows / "ltx.json")
    leaf = '{ workflow = "ltx", models = ["my-ltx.safetensors"], folder = "%s" }'
    text = """version = 1
[workflows.ltx]
file = "flows/ltx.json"
fps = 24
frame_step = 8
size_step = 32
[workflows.ltx.bindings]
models = ["Load Checkpoint.ckpt_name"]
seed = "Noise.noise_seed"
steps = "Scheduler.steps"
frames = ["Video Latent.length", "Audio Latent.frames_number"]
fps = ["Create Video.fps", "Conditioning.frame_rate", "Audio Latent.frame_rate"]
[templates.mine]
text.preview = %s
text.final = %s
"""
    good = tmp_path / "good.toml"
    good.write_text(text % (leaf % "checkpoints", leaf % "checkpoints"))
    catalog = load_studio(good)
    model = catalog.models[catalog.templates["mine"]["final"]]
    assert model.required_files()["checkpoints"] == ("my-ltx.safetensors",)
    assert "my-ltx.safetensors" not in model.required_files().get("diffusion_models", ())
    bad = tmp_path / "bad.toml"
    bad.write_text(text % (leaf % "checkpoints", leaf % "unet"))
    assert (
        "templates.mine.text.final.folder: got 'unet'; use one of: diffusion_models, "
        "checkpoints" in problem_of(bad)
    )
