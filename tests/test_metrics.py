"""Metrics on synthetic clips that each carry exactly one known defect (metrics.md)."""

import json

import cv2
import numpy as np
import pytest

from farm.emulators.synth import ClipSpec, synthesize
from farm.errors import InvalidInput
from farm.media import read_video, write_video
from farm.metrics import score_clip, score_loaded, score_scene
from farm.metrics.frames import Clip

W, H, N, FPS = 320, 192, 33, 16


def path(jitter: float = 0.0, frames: int = N) -> list[tuple[float, float]]:
    """A smooth curve at ~3 px/frame (over N frames), optionally with uniform +-jitter px
    per frame; ``frames`` samples it more finely."""
    t = np.linspace(0, 1, frames)
    pts = np.stack([W * (0.25 + 0.3 * t), H * (0.55 + 0.2 * np.sin(np.pi * t))], 1)
    if jitter:
        pts += np.random.default_rng(1).uniform(-jitter, jitter, pts.shape)
    return [(float(x), float(y)) for x, y in pts]


def render(track, seed: int = 3, width: int = W, frames: int = N) -> list[np.ndarray]:
    return list(synthesize(ClipSpec(width, H, frames, FPS, seed, "", tracks=(tuple(track),))))


def held(frames):
    return [frames[k - 1] if k % 4 == 3 else f for k, f in enumerate(frames)]


LONG = N * 4 // 3 + 1
KEPT = [k for k in range(LONG) if k % 4 != 3][:N]  # N frames, every 4th of LONG dropped


def dropped() -> list[np.ndarray]:
    """A LONG-frame render with every 4th frame removed: the object jumps."""
    frames = render(path(frames=LONG), frames=LONG)
    return [frames[k] for k in KEPT]


def dropped_path() -> list[tuple[float, float]]:
    return [path(frames=LONG)[k] for k in KEPT]


def scaled(frames, gain):
    return [np.clip(f * gain(k), 0, 255).astype(np.uint8) for k, f in enumerate(frames)]


def panned(px_per_frame: int = 8) -> list[np.ndarray]:
    wide = render([path()[0]], seed=5, width=W + px_per_frame * N)[0]
    return [
        np.ascontiguousarray(wide[:, px_per_frame * k : px_per_frame * k + W]) for k in range(N)
    ]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    smooth = render(path())
    variants = {
        "smooth": smooth,
        "jitter3": render(path(3)),
        "jitter8": render(path(8)),
        "held": held(smooth),
        "dropped": dropped(),
        "gain": scaled(smooth, lambda k: 1.06 if k % 2 else 0.94),
        "fade": scaled(smooth, lambda k: 1 - 0.4 * k / N),
        "cut": smooth[: N // 2] + render(path(), seed=99)[N // 2 :],
        "static": render([path()[0]]),
        "pan": panned(),
        "blurred": [cv2.GaussianBlur(f, (0, 0), 2) for f in smooth],
    }
    paths = {}
    for name, frames in variants.items():
        paths[name] = folder / f"{name}.mp4"
        write_video(paths[name], frames, FPS)
    return paths


@pytest.fixture(scope="module")
def scores(clips):
    tracks = {"dropped": dropped_path()}
    return {name: score_clip(p, [tracks.get(name, path())]) for name, p in clips.items()}


def score(scores, name, metric):
    return scores[name]["scores"][metric]


def test_result_shape_and_ranges(scores):
    result = scores["smooth"]
    assert (result["frames"], result["width"], result["height"]) == (N, W, H)
    assert result["fps"] == pytest.approx(FPS)
    json.dumps(result)  # JSON-serialisable
    for r in scores.values():
        assert set(r["scores"]) == {
            "motion_smoothness", "temporal_flicker", "visual_consistency", "trajectory_adherence",
            "dynamic_degree", "sharpness",
        }  # fmt: skip
        assert set(r["raw"]) == set(r["scores"])
        assert all(0.0 <= v <= 1.0 and isinstance(v, float) for v in r["scores"].values())
    assert {"decode", "features", "flow", "sharpness"} <= set(result["stage_seconds"])


def test_smoothness_orders_jitter_and_held_frames(scores):
    smooth, j3, j8 = (
        score(scores, n, "motion_smoothness") for n in ("smooth", "jitter3", "jitter8")
    )
    assert smooth > 0.9
    assert smooth > 1.5 * j3 and j3 > 1.2 * j8
    assert score(scores, "held", "motion_smoothness") < 0.7 * smooth
    assert score(scores, "dropped", "motion_smoothness") < 0.7 * smooth


def test_static_clip_is_perfectly_smooth(scores):
    r = scores["static"]
    assert r["scores"]["motion_smoothness"] == 1.0
    assert r["raw"]["motion_smoothness"]["moving_tracks"] == 0
    assert "static" in r["raw"]["motion_smoothness"]["note"]


def test_smoothness_ignores_flicker_and_camera_pan(scores):
    smooth = score(scores, "smooth", "motion_smoothness")
    assert score(scores, "gain", "motion_smoothness") > 0.9 * smooth
    assert score(scores, "pan", "motion_smoothness") > 0.9 * smooth


def test_gain_flicker_is_penalised_and_a_fade_is_not(scores):
    smooth, gain, fade = (score(scores, n, "temporal_flicker") for n in ("smooth", "gain", "fade"))
    assert gain < 0.1 * smooth
    assert fade > 0.8 and fade > 50 * gain
    raw = {n: scores[n]["raw"]["temporal_flicker"] for n in ("gain", "fade", "pan")}
    assert raw["fade"]["pumping_index"] < 0.05 * raw["gain"]["pumping_index"]
    assert raw["gain"]["warping_error"] > raw["fade"]["warping_error"]
    assert score(scores, "pan", "temporal_flicker") > 0.9  # motion is not flicker


def test_cut_is_found_at_the_right_frame(scores):
    assert scores["cut"]["cuts"] == [N // 2]
    for name in ("smooth", "pan", "gain", "fade", "jitter8", "held", "dropped", "blurred"):
        assert scores[name]["cuts"] == [], name


def test_a_cut_halves_visual_consistency(scores):
    cut, smooth = scores["cut"], score(scores, "smooth", "visual_consistency")
    # each half is consistent with itself: only the cut tells the clip from a clean one
    assert cut["raw"]["visual_consistency"]["score_without_cuts"] > 0.9 * smooth
    assert cut["raw"]["visual_consistency"]["cuts"] == 1
    assert score(scores, "cut", "visual_consistency") < 0.55 * smooth
    for name in ("smooth", "pan", "gain", "fade", "jitter8", "held", "dropped", "blurred"):
        assert scores[name]["raw"]["visual_consistency"]["cuts"] == 0, name


def test_pan_is_motion_compensated_in_consistency(scores):
    raw = scores["pan"]["raw"]["visual_consistency"]
    assert raw["ssim_to_prev_min"] > 0.8


def test_only_the_pan_is_dynamic(scores):
    dynamic = {n for n, r in scores.items() if r["raw"]["dynamic_degree"]["dynamic"]}
    assert "pan" in dynamic
    assert not dynamic & {"smooth", "static", "jitter3", "held", "dropped", "gain", "fade"}
    pan = score(scores, "pan", "dynamic_degree")
    assert pan > 0.5 and pan > 4 * score(scores, "smooth", "dynamic_degree")
    assert score(scores, "static", "dynamic_degree") == 0.0


def test_sharpness_drops_with_blur(scores):
    smooth, blurred = (score(scores, n, "sharpness") for n in ("smooth", "blurred"))
    assert smooth > 2 * blurred
    raw = {n: scores[n]["raw"]["sharpness"] for n in ("smooth", "blurred")}
    assert raw["smooth"]["laplacian_var"] > 5 * raw["blurred"]["laplacian_var"]
    for name in ("jitter8", "held", "dropped", "static"):  # motion defects are not blur
        assert score(scores, name, "sharpness") > 0.9 * smooth, name


def test_sharpness_finds_the_one_blurred_frame(clips, tmp_path):
    frames, fps = read_video(clips["smooth"])
    frames[20] = cv2.GaussianBlur(frames[20], (0, 0), 2)
    raw = score_loaded(Clip(frames, fps))["raw"]["sharpness"]
    assert raw["min_frame"] == 20
    assert raw["laplacian_var_min"] < 0.3 * raw["laplacian_var"]


def test_adherence_on_and_off_path(clips, scores):
    assert score(scores, "smooth", "trajectory_adherence") > 0.9
    assert score(scores, "static", "trajectory_adherence") < 0.2  # frozen object
    start = path()[0]
    mirrored = [(2 * start[0] - x, 2 * start[1] - y) for x, y in path()]
    off = score_clip(clips["smooth"], [mirrored])
    assert off["scores"]["trajectory_adherence"] < 0.2
    raw = scores["smooth"]["raw"]["trajectory_adherence"]
    assert raw["objmc_px"] < 1.5 and raw["lost_fraction"] == 0.0
    assert off["raw"]["trajectory_adherence"]["objmc_px"] > 20 * raw["objmc_px"]


def test_tracks_give_target_and_tracked_paths(clips, scores):
    (track,) = scores["smooth"]["tracks"]
    assert set(track) == {"target", "tracked", "lost"}
    target, tracked = np.array(track["target"]), np.array(track["tracked"])
    assert target.shape == tracked.shape == (N, 2)
    assert np.allclose(target, np.round(target, 1)) and np.allclose(tracked, np.round(tracked, 1))
    assert target[0] == pytest.approx(path()[0], abs=0.05)
    assert track["lost"] == []
    assert np.hypot(*(tracked - target).T).max() < 2.0  # on path
    start = path()[0]
    mirrored = [(2 * start[0] - x, 2 * start[1] - y) for x, y in path()]
    (off,) = score_clip(clips["smooth"], [mirrored])["tracks"]
    assert np.median(np.hypot(*(np.array(off["tracked"]) - np.array(off["target"])).T)) > 20
    assert "tracks" not in score_clip(clips["static"])


def test_adherence_degrades_with_jitter(scores):
    on, j3, j8 = (
        score(scores, n, "trajectory_adherence") for n in ("smooth", "jitter3", "jitter8")
    )
    assert on > j3 > j8


def test_adherence_scales_tracks_from_another_canvas(clips, scores):
    doubled = [(2 * x, 2 * y) for x, y in path()]
    r = score_clip(clips["smooth"], [doubled], canvas=(2 * W, 2 * H))
    assert r["scores"]["trajectory_adherence"] == pytest.approx(
        score(scores, "smooth", "trajectory_adherence"), abs=1e-9
    )


def test_no_trajectories_no_adherence(clips):
    assert "trajectory_adherence" not in score_clip(clips["static"])["scores"]


def test_missing_clip_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInput, match="gone.mp4"):
        score_clip(tmp_path / "gone.mp4")


def test_scene_scores_shots_and_continuity(clips, tmp_path):
    inverted = tmp_path / "inverted.mp4"
    write_video(inverted, (255 - f for f in render(path())), FPS)
    shots = [
        {
            "id": "a",
            "path": clips["smooth"],
            "trajectories": [[{"x": x, "y": y} for x, y in path()]],
        },
        {"id": "b", "path": clips["static"]},
        {"id": "c", "path": inverted},
    ]
    result = score_scene(shots)
    json.dumps(result, default=str)
    assert [s["id"] for s in result["shots"]] == ["a", "b", "c"]
    ab, bc = result["continuity"]
    assert (ab["from"], ab["to"], bc["from"], bc["to"]) == ("a", "b", "b", "c")
    assert ab["score"] > bc["score"] + 0.3 and ab["lab_shift"] < bc["lab_shift"]
    assert 0 <= bc["score"] <= 1
    summary = result["summary"]
    assert summary["trajectory_adherence"] == result["shots"][0]["scores"]["trajectory_adherence"]
    expected = np.mean([s["scores"]["motion_smoothness"] for s in result["shots"]])
    assert summary["motion_smoothness"] == pytest.approx(expected)
    assert summary["continuity"] == pytest.approx((ab["score"] + bc["score"]) / 2)


def test_scene_names_the_unreadable_shot(clips, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    with pytest.raises(InvalidInput, match="shot b.*bad.mp4"):
        score_scene([{"id": "a", "path": clips["smooth"]}, {"id": "b", "path": bad}])


def test_trajectory_never_in_frame_gives_no_adherence_score(clips):
    r = score_clip(clips["static"], [[(-50.0, -50.0), (-60.0, -40.0)]])
    assert "trajectory_adherence" not in r["scores"]
    assert r["raw"]["trajectory_adherence"]["points"] == 0
