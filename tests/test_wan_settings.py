"""WanGP settings built from farm jobs: pure, exact dicts."""

from __future__ import annotations

import pytest

from farm.planning import Job
from farm.wan_settings import (
    build_settings,
    clean_prompt,
    load_wan_models,
    output_name,
    snap_frames,
    snap_size,
)

MODELS = load_wan_models()


def job(model="t2v_1.3B", **params) -> Job:
    base = {"prompt": "a fox in the snow", "negative": "blurry", "seed": 7, "steps": 4,
            "width": 832, "height": 480, "length": 81, "fps": 16}  # fmt: skip
    return Job(scene_id="sc1", shot_id="s2", kind="preview", engine="wan2gp", workflow="",
               model=model, files={}, params={**base, **params}, attempt=2)  # fmt: skip


def test_a_text_to_video_job_becomes_exact_settings():
    assert build_settings(job(), MODELS["t2v_1.3B"]) == {
        "model_type": "t2v_1.3B",
        "prompt": "a fox in the snow",
        "multi_prompts_gen_type": "FG",
        "negative_prompt": "blurry",
        "resolution": "832x480",
        "video_length": 81,
        "seed": 7,
        "num_inference_steps": 4,
        "output_filename": "farm_sc1_s2_preview_a2",
    }


def test_size_and_length_snap_to_the_model_grid():
    settings = build_settings(job(width=1000, height=570, length=50), MODELS["ti2v_2_2_fastwan"])
    assert settings["resolution"] == "992x544"  # down to the 32-pixel block
    assert settings["video_length"] == 49  # 4n+1, nearest
    ltx = build_settings(job(model="ltxv_distilled", width=20, height=8, length=3),
                         MODELS["ltxv_distilled"])  # fmt: skip
    assert ltx["resolution"] == "32x32"  # never below one block
    assert ltx["video_length"] == 17  # LTX: 8n+1, at least 17


def test_start_image_override_profile_and_uploaded_names():
    settings = build_settings(
        job(model="i2v", start_image="/data/first.png"), MODELS["i2v"], override_profile=5
    )
    assert settings["image_prompt_type"] == "S"
    assert settings["image_start"] == "/data/first.png"
    assert settings["override_profile"] == 5
    uploaded = build_settings(
        job(model="i2v", start_image="/data/first.png"), MODELS["i2v"], start_image="up/abc.png"
    )
    assert uploaded["image_start"] == "up/abc.png" and "override_profile" not in uploaded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a fox\n\nin the snow", "a fox in the snow"),
        ("# Shot 3\na fox", "Shot 3 a fox"),
        ("  ## title  \n\n\n   \n#\nrun", "title run"),
        ("colour #3 paint", "colour #3 paint"),
        ("", ""),
    ],
)
def test_prompts_have_no_blank_lines_and_no_comment_lines(text, expected):
    assert clean_prompt(text) == expected


def test_helpers():
    assert snap_size(17, 16) == 16 and snap_size(15, 16) == 16 and snap_size(1279, 32) == 1248
    assert (
        snap_frames(16, 4, 5) == 17 and snap_frames(1, 4, 5) == 5 and snap_frames(100, 8, 17) == 97
    )
    odd = Job(scene_id="my scene/{x}", shot_id="s 1", kind="final", engine="", workflow="",
              model="t2v", files={}, params={})  # fmt: skip
    assert output_name(odd) == "farm_my-scene-x_s-1_final_a1"
    assert "{" not in output_name(odd) and "/" not in output_name(odd)
