"""Scene format: schema validation with JSON paths, defaults, and prompt building."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from farm.errors import InvalidInput
from farm.scene import CAMERA_PHRASES, build_prompt, default_seed, load_scene, parse_scene

from .conftest import EXAMPLES


def shot(**kw):
    return {"id": "s1", "action_description": "A fox runs", **kw}


def image(path: Path, size=(64, 48), fmt="PNG") -> Path:
    """Write a real image file at ``path``."""
    Image.new("RGB", size, (200, 120, 40)).save(path, fmt)
    return path


def problems(data, **kw) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        parse_scene(data, **kw)
    return info.value.problems


def test_example_scene_is_valid_and_covers_the_demo_cases():
    scene = load_scene(EXAMPLES / "demo_scene.json")
    assert len(scene.shots) >= 4
    assert any(s.trajectories for s in scene.shots)
    assert any(s.camera_movements for s in scene.shots)
    assert any(s.start_image and not s.trajectories for s in scene.shots)
    assert any(s.backend == "wan2gp" for s in scene.shots)  # the demo's WanGP node renders it
    for s in scene.shots:
        if s.start_image:
            assert s.start_image.startswith(str(EXAMPLES))  # resolved against the scene file


def test_defaults_are_filled_in():
    scene = parse_scene({"id": "x", "shots": [shot()]})
    s = scene.shots[0]
    assert (scene.quality, scene.priority, scene.title) == ("preview", 5, "")
    assert (s.width, s.height, s.fps, s.template) == (832, 480, 16, "standard_generation")
    assert s.seed == default_seed("x", "s1")


def test_duration_and_fps_give_frames():
    s = parse_scene({"id": "x", "shots": [shot(duration_s=2.5, fps=24)]}).shots[0]
    assert s.frames == 60


def test_every_problem_is_listed_with_its_path():
    data = {
        "id": "bad id",
        "quality": "ultra",
        "shots": [
            shot(camera_movements=["pan_up"], frames=10, duration_s=1, colour="red"),
        ],
    }
    found = problems(data)
    assert any(p.startswith("$.id:") for p in found)
    assert any(p.startswith("$.quality:") and "preview_then_final" in p for p in found)
    assert any(p.startswith("$.shots[0].camera_movements[0]:") and "pan_left" in p for p in found)
    assert any(p.startswith("$.shots[0]:") and "'colour'" in p for p in found)
    assert any("frames or duration_s" in p for p in found)


@pytest.mark.parametrize(
    "bad, path",
    [
        ({"id": "x", "shots": []}, "$.shots"),
        ({"id": "x"}, "$"),
        ({"id": "x", "shots": [shot(width=4000)]}, "$.shots[0].width"),
        ({"id": "x", "shots": [shot(template="cinematic")]}, "$.shots[0].template"),
        ({"id": "x", "shots": [shot(seed=-1)]}, "$.shots[0].seed"),
        ({"id": "x", "shots": [shot(characters="fox")]}, "$.shots[0].characters"),
        (
            {"id": "x", "shots": [shot(trajectories=[[{"x": 1, "y": 1}]], start_image="a.png")]},
            "$.shots[0].trajectories[0]",
        ),
        (
            {
                "id": "x",
                "shots": [shot(trajectories=[[{"x": 1}, {"x": 2, "y": 2}]], start_image="a.png")],
            },
            "$.shots[0].trajectories[0][0]",
        ),
        ({"id": "x", "version": 2, "shots": [shot()]}, "$.version"),
    ],
)
def test_schema_errors_name_the_field(bad, path):
    found = problems(bad, check_files=False)
    assert any(p.startswith(path + ":") for p in found), found


def test_duplicate_shot_ids_are_refused():
    found = problems({"id": "x", "shots": [shot(), shot()]})
    assert found == [found[0]] and found[0].startswith("$.shots[1].id:") and "unique" in found[0]


def test_trajectory_points_must_be_inside_the_canvas(tmp_path):
    img = image(tmp_path / "a.png")
    data = {
        "id": "x",
        "shots": [
            shot(
                width=320,
                height=192,
                start_image=str(img),
                trajectories=[[{"x": 10, "y": 10}, {"x": 400, "y": 10}]],
            )
        ],
    }
    found = problems(data)
    assert found == [  # per frame: the default 33 frames, straight to (400, 10) on the last
        "$.shots[0].trajectories[0]: leaves the 320x192 canvas on frames 27-33 of 33, because "
        "point [1] (400, 10) is outside it; keep every point within 0 <= x <= 320, "
        "0 <= y <= 192 (pixels)"
    ]


def test_an_off_canvas_track_is_reported_by_the_frames_it_is_off(tmp_path):
    """Frames count from 1, from the shot's length (duration_s x fps) and interpolation."""
    off = [{"x": 10, "y": 100}, {"x": 300, "y": 100}, {"x": -50, "y": 100}, {"x": 100, "y": 100},
           {"x": 100, "y": 250}]  # fmt: skip
    tracks = [[{"x": 10, "y": 10}, {"x": 20, "y": 20}], off]
    # 16 frames over 4 segments: point [2] is at frame 8.5, point [4] on frame 16; the straight
    # path is off the left edge on frames 8-9 and below the bottom from frame 15, the smooth
    # one (flat into point [3], steep out of it) only on frame 16
    for method, frames in (("linear", "frames 8-9, 15-16"), ("smooth", "frames 8-9, 16")):
        shot = tracked(tmp_path, width=320, height=192, duration_s=2, fps=8, trajectories=tracks,
                       trajectory_interpolation=method)  # fmt: skip
        assert problems({"id": "x", "shots": [shot]}) == [
            f"$.shots[0].trajectories[1]: leaves the 320x192 canvas on {frames} of 16, "
            "because points [2] (-50, 100), [4] (100, 250) are outside it; keep every point "
            "within 0 <= x <= 320, 0 <= y <= 192 (pixels)"
        ], method


def test_trajectories_need_a_start_image():
    found = problems(
        {"id": "x", "shots": [shot(trajectories=[[{"x": 1, "y": 1}, {"x": 2, "y": 2}]])]}
    )
    assert found[0].startswith("$.shots[0].trajectories:") and "start_image" in found[0]


def test_missing_start_image_file_is_reported(tmp_path):
    found = problems({"id": "x", "shots": [shot(start_image="nope.png")]}, base_dir=tmp_path)
    assert found[0].startswith("$.shots[0].start_image:") and str(tmp_path / "nope.png") in found[0]


def test_unreadable_scene_files(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        load_scene(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "x",\n "shots": [}')
    with pytest.raises(InvalidInput, match="line 2"):
        load_scene(bad)
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InvalidInput, match="is not UTF-8 text .*; save it as UTF-8 JSON"):
        load_scene(bad)
    bad.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidInput, match="is nested too deeply to read"):
        load_scene(bad)
    with pytest.raises(InvalidInput, match="cannot be read: Is a directory"):
        load_scene(tmp_path)


def test_a_number_longer_than_python_reads_is_invalid_input(tmp_path):
    """Python converts at most 4,300 digits (sys.get_int_max_str_digits()); json.loads
    raises a plain ValueError past that, which must not escape as a traceback."""
    path = tmp_path / "big.json"
    path.write_text('{"id": "x", "shots": [{"id": "s1", "action_description": "a", "seed": '
                    + "9" * 5000 + "}]}")  # fmt: skip
    with pytest.raises(InvalidInput) as info:
        load_scene(path)
    assert str(info.value) == (
        f"scene file {path} has a number of more than 4,300 digits, the most this farm reads; "
        "use numbers of at most 4,300 digits"
    )
    seed = int("9" * 4000)  # within what Python reads, far over the schema's maximum
    assert problems({"id": "x", "shots": [shot(seed=seed)]}) == [
        "$.shots[0].seed: a number of 4,000 digits is greater than the maximum of 4294967295"
    ]
    track = [{"x": seed, "y": 1}, {"x": 1, "y": 1}]
    found = problems({"id": "x", "shots": [shot(start_image="a.png", trajectories=[track])]},
                     check_files=False)  # fmt: skip
    assert found == ["$.shots[0].trajectories[0][0].x: expected a finite number, got a number "
                     "of 4,000 digits; give x in pixels"]  # fmt: skip


def test_long_values_are_echoed_short_with_the_limit_they_break(tmp_path):
    """jsonschema's own messages echo the whole value (4.5 MB for a scene of 100,000
    shots, 5 MB for a 5 MB string): the farm's name the path, the size and the limit."""
    mb5 = 5 * 1024 * 1024
    assert problems({"id": "x", "title": "t" * mb5, "shots": [shot()]}) == [
        f"$.title: '{'t' * 60}…' (a string of {mb5:,} characters) is over the limit of 200 "
        "characters; give at most 200 characters"
    ]
    assert problems({"id": "x", "title": "t" * 201, "shots": [shot()]})[0].endswith(
        "(a string of 201 characters) is over the limit of 200 characters; give at most 200 "
        "characters"
    )
    (found,) = problems({"id": "x", "shots": [shot()] * 100_000})
    assert found.startswith("$.shots: [{") and found.endswith(
        "(a list of 100,000 items) is over the limit of 10,000 shots; give at most 10,000 "
        "shots; split the scene into scenes of fewer shots"
    )
    found = problems({"id": "x", "shots": [shot(id=f"s{i}", colour="red") for i in range(10_000)]})
    assert len(found) == 51 and found[-1] == "… and 9,950 more problems"
    assert found[0].startswith("$.shots[0]: unknown field(s) 'colour'")
    (found,) = problems({"id": "x", "shots": [shot(characters=["c" * mb5])]})
    assert found.startswith("$.shots[0].characters[0]: 'ccc") and "over the limit of 500" in found
    (found,) = problems({"id": "x", "shots": [shot(width="w" * mb5)]})
    assert (
        found
        == f"$.shots[0].width: '{'w' * 60}…' (a string of {mb5:,} characters) is not of type 'integer'"
    )
    (found,) = problems({"id": "x", "shots": [shot(start_image="s" * mb5 + ".png")]},
                        base_dir=tmp_path)  # fmt: skip
    assert found.startswith("$.shots[0].start_image: 'sss") and found.endswith(
        f"(a string of {mb5 + 4:,} characters) is over the limit of 1,000 characters; "
        "give at most 1,000 characters"
    )
    many = [shot(id=f"s{i}", characters=["c"] * 21, trajectories=[[{"x": 1, "y": 1}] * 1001])
            for i in range(3)]  # fmt: skip
    found = problems({"id": "x", "shots": many})
    assert "is over the limit of 20 names; give at most 20 names" in found[0]
    assert "is over the limit of 1,000 points; give at most 1,000 points" in found[1]


def test_scene_round_trips_through_its_dict():
    scene = load_scene(EXAMPLES / "demo_scene.json")
    again = parse_scene(json.loads(json.dumps(scene.to_dict())), check_files=False)
    assert again == scene


def test_prompt_joins_parts_in_order():
    s = parse_scene(
        {
            "id": "x",
            "shots": [
                shot(
                    camera_direction="wide shot",
                    style_description="watercolor",
                    characters=["a fox", "a crow"],
                    camera_movements=["pan_left", "zoom_in"],
                )
            ],
        }
    ).shots[0]
    assert build_prompt(s) == (
        "A fox runs | Camera: wide shot | Style: watercolor | Characters: a fox, a crow"
        ", camera pans left, smooth movement, slow zoom in, approaching subject"
    )


def test_prompt_skips_empty_parts():
    s = parse_scene(
        {"id": "x", "shots": [shot(camera_direction="  ", style_description="noir")]}
    ).shots[0]
    assert build_prompt(s) == "A fox runs | Style: noir"


@pytest.mark.parametrize("move", sorted(CAMERA_PHRASES))
def test_every_camera_movement_has_its_phrase(move):
    s = parse_scene({"id": "x", "shots": [shot(camera_movements=[move])]}).shots[0]
    assert build_prompt(s) == "A fox runs, " + CAMERA_PHRASES[move]


def tracked(tmp_path, **kw):
    img = image(tmp_path / "a.png")
    return shot(start_image=str(img), **kw)


def test_trajectory_interpolation_defaults_to_linear(tmp_path):
    track = [[{"x": 1, "y": 1}, {"x": 2, "y": 2}]]
    s = parse_scene({"id": "x", "shots": [tracked(tmp_path, trajectories=track)]}).shots[0]
    assert s.trajectory_interpolation == "linear"


def test_smooth_trajectories_round_trip(tmp_path):
    track = [[{"x": 1, "y": 1}, {"x": 20, "y": 30}, {"x": 2, "y": 2}]]
    raw = tracked(tmp_path, trajectories=track, trajectory_interpolation="smooth")
    scene = parse_scene({"id": "x", "shots": [raw, shot(id="s2")]})
    assert scene.shots[0].trajectory_interpolation == "smooth"
    data = scene.to_dict()
    assert data["shots"][0]["trajectory_interpolation"] == "smooth"
    assert "trajectory_interpolation" not in data["shots"][1]  # no tracks, default: left out
    assert parse_scene(json.loads(json.dumps(data))) == scene


def test_interpolation_without_trajectories_survives_the_round_trip():
    scene = parse_scene({"id": "x", "shots": [shot(trajectory_interpolation="smooth")]})
    assert parse_scene(json.loads(json.dumps(scene.to_dict()))) == scene


def test_unknown_trajectory_interpolation_is_refused():
    found = problems({"id": "x", "shots": [shot(trajectory_interpolation="cubic")]})
    assert found == [
        "$.shots[0].trajectory_interpolation: 'cubic' is not allowed; use one of: linear, smooth"
    ]


def test_every_trajectory_point_problem_is_listed(tmp_path):
    tracks = [
        [{"x": -1, "y": 10}, {"x": 10, "y": 10}],
        [{"x": 10, "y": 10}, {"x": 10, "y": float("nan")}, {"x": 10, "y": 200}],
    ]
    found = problems(
        {"id": "x", "shots": [tracked(tmp_path, width=320, height=192, trajectories=tracks)]}
    )
    assert found == [
        "$.shots[0].trajectories[0]: leaves the 320x192 canvas on frames 1-3 of 33, because "
        "point [0] (-1, 10) is outside it; keep every point within 0 <= x <= 320, "
        "0 <= y <= 192 (pixels)",
        "$.shots[0].trajectories[1][1].y: expected a finite number, got nan; give y in pixels",
        # a track with a bad point has no path: its points outside are listed one by one
        "$.shots[0].trajectories[1][2]: point (10, 200) is outside the 320x192 canvas; "
        "points are pixels with 0 <= x <= 320, 0 <= y <= 192",
    ]


def test_backend_pins_a_shot_to_a_node_kind():
    s = parse_scene({"id": "x", "shots": [shot(backend="wan2gp")]})
    assert s.shots[0].backend == "wan2gp" and s.to_dict()["shots"][0]["backend"] == "wan2gp"
    default = parse_scene({"id": "x", "shots": [shot()]})
    assert default.shots[0].backend == "any" and "backend" not in default.to_dict()["shots"][0]
    assert any(
        p.startswith("$.shots[0].backend:")
        for p in problems({"id": "x", "shots": [shot(backend="gpu")]})
    )
    img = str(EXAMPLES / "images" / "meadow.jpg")
    track = [{"x": 10, "y": 10}, {"x": 100, "y": 100}]
    found = problems(
        {"id": "x", "shots": [shot(backend="wan2gp", start_image=img, trajectories=[track])]}
    )
    assert found == [
        "$.shots[0].backend: trajectory control (Wan ATI) runs on ComfyUI nodes only;"
        " set backend to comfyui or any, or remove the trajectories"
    ]


def test_a_start_image_that_is_not_an_image_is_one_problem_naming_shot_file_and_fix(tmp_path):
    """A start image is decoded when the scene is validated: before, any file with an image
    suffix passed, and the shot failed on every node it was tried on."""
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    gif = image(tmp_path / "anim.png", fmt="GIF")
    tiny = image(tmp_path / "tiny.jpg", size=(8, 8), fmt="JPEG")
    huge = image(tmp_path / "huge.webp", size=(5000, 20), fmt="WEBP")
    noise = io.BytesIO()
    Image.frombytes("RGB", (128, 96), os.urandom(128 * 96 * 3)).save(noise, "JPEG")
    whole = noise.getvalue()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 3 // 4])  # verify() passes it
    good = image(tmp_path / "good.webp", fmt="WEBP")
    shots = [shot(id=f"s{i}", start_image=p.name) for i, p in
             enumerate([text, gif, tiny, huge, tmp_path / "cut.jpg", good, text])]  # fmt: skip
    found = problems({"id": "x", "shots": shots}, base_dir=tmp_path)
    want = "use a PNG, JPEG or WebP image of 16 to 4,096 pixels a side"
    assert found[:4] == [
        f"$.shots[0].start_image: file {text} is not an image (Pillow cannot tell its format); {want}",
        f"$.shots[1].start_image: file {gif} is a GIF image; {want}",
        f"$.shots[2].start_image: file {tiny} is 8x8 pixels; {want}",
        f"$.shots[3].start_image: file {huge} is 5000x20 pixels; {want}",
    ]
    assert found[4].startswith(f"$.shots[4].start_image: file {tmp_path / 'cut.jpg'} is a "
                               "damaged image (OSError: image file is truncated")  # fmt: skip
    assert found[5] == found[0].replace("shots[0]", "shots[6]") and len(found) == 6
    assert parse_scene({"id": "x", "shots": [shots[5]]}, base_dir=tmp_path).shots[0].start_image
    # a re-read of a stored scene does not look at files
    assert parse_scene({"id": "x", "shots": shots}, base_dir=tmp_path, check_files=False)
