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
    assert "use one of: workflow, models, wangp" in text


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
