import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from farm.errors import InvalidInput
from farm.trajectory import (
    ATI_SAMPLES,
    ati_length_ok,
    ati_sample_index,
    ati_sample_times,
    ati_tracks,
    frame_path,
    parse_tracks,
    resample,
    scale_tracks,
    track_at,
    track_problems,
    validate_tracks,
)

RAW = [[{"x": 0, "y": 0}, {"x": 10, "y": 20}], [{"x": 5.5, "y": 6}]]


def test_parse_tracks_from_data_and_json():
    expected = [[(0.0, 0.0), (10.0, 20.0)], [(5.5, 6.0)]]
    assert parse_tracks(RAW) == expected
    assert parse_tracks(json.dumps(RAW)) == expected


def test_parse_tracks_accepts_pairs():
    assert parse_tracks([[(1, 2), [3, 4]]]) == [[(1.0, 2.0), (3.0, 4.0)]]


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (
            [[{"x": 0, "y": 0}], [{"x": 1, "y": 1}] * 3 + [{"x": "a", "y": 1}]],
            "trajectories[1][3].x",
        ),
        ([[{"x": 0}]], "trajectories[0][0].y"),
        ([[{"x": 0, "y": True}]], "trajectories[0][0].y"),
        ([[{"x": float("nan"), "y": 0}]], "trajectories[0][0].x"),
        ([[]], "trajectories[0]"),
        ([[1]], "trajectories[0][0]"),
        ({"x": 1}, "trajectories"),
        ("[[{", "trajectories"),
    ],
)
def test_parse_tracks_names_the_bad_element(raw, where):
    with pytest.raises(InvalidInput) as err:
        parse_tracks(raw)
    assert str(err.value).startswith(where + ":")


def test_track_at_ati_convention_uses_floor_one_and_a_half_k():
    track = [(float(i), 0.0) for i in range(121)]
    assert [track_at(track, k, 81)[0] for k in (0, 1, 2, 3, 80)] == [0, 1, 3, 4, 120]


def test_track_at_resamples_over_normalised_time():
    track = [(0.0, 0.0), (100.0, 50.0)]
    assert track_at(track, 0, 11) == (0.0, 0.0)
    assert track_at(track, 10, 11) == (100.0, 50.0)
    assert track_at(track, 5, 11) == pytest.approx((50.0, 25.0))


def test_single_point_track_is_static():
    assert {track_at([(3.0, 4.0)], k, 33) for k in range(33)} == {(3.0, 4.0)}


def test_parse_tracks_accepts_point_objects_in_tuples():
    @dataclass(frozen=True)
    class Point:
        x: float
        y: float

    assert parse_tracks(((Point(1, 2), Point(3, 4)),)) == [[(1.0, 2.0), (3.0, 4.0)]]


# --- ComfyUI's mapping of the 121 samples onto the clip -----------------------------------


def comfy_rows(length: int) -> list[int]:
    """Which sample each frame gets, computed the way comfy_extras/nodes_wan.py does it:
    ``torch.repeat_interleave(out[1:], b, dim=0)[1::a]`` after sample 0."""
    f = length - 1
    g = math.gcd(120, f)
    a, b = 120 // g, f // g
    return [0, *np.repeat(np.arange(1, 121), b)[1::a].tolist()]


@pytest.mark.parametrize("length", [5, 17, 33, 49, 81, 121, 161, 201, 241])
def test_ati_sample_index_follows_comfyui(length):
    rows = comfy_rows(length)
    shown = min(len(rows), length)
    assert [ati_sample_index(k, length) for k in range(shown)] == rows[:shown]


def test_ati_sample_index_is_floor_one_and_a_half_k_at_81_frames():
    assert [ati_sample_index(k, 81) for k in range(81)] == [int(1.5 * k) for k in range(81)]


def test_ati_sample_index_of_the_last_frame():
    assert [ati_sample_index(n - 1, n) for n in (17, 33, 49, 81)] == [114, 117, 119, 120]


@pytest.mark.parametrize("length", [121, 241])
def test_lengths_comfyui_cannot_render_with_tracks(length):
    assert len(comfy_rows(length)) == length - 1  # one row short: patch_motion's view fails
    assert not ati_length_ok(length)
    with pytest.raises(ValueError, match="no track sample"):
        ati_sample_index(length - 1, length)
    with pytest.raises(InvalidInput, match=f"{length - 4} or {length + 4} frames"):
        ati_tracks([[(0, 0), (10, 10)]], 832, 480, length=length)


def test_ati_sample_index_rejects_frames_outside_the_clip():
    for frame in (-1, 33):
        with pytest.raises(ValueError, match="not in a 33-frame clip"):
            ati_sample_index(frame, 33)


def test_track_at_reads_a_121_sample_track_like_comfyui():
    samples = [(float(i), 0.0) for i in range(ATI_SAMPLES)]
    assert [track_at(samples, k, 33)[0] for k in (0, 1, 2, 32)] == [0, 1, 5, 117]
    # a clip ATI cannot render: plain resampling, last sample at the last frame
    assert track_at(samples, 120, 121)[0] == 120


# --- resampling ------------------------------------------------------------------------

ZIGZAG = [(0.0, 0.0), (832.0, 480.0), (0.0, 480.0), (832.0, 0.0), (830.0, 479.0)]


def test_linear_resampling_exact_values():
    track = [(0.0, 0.0), (10.0, 20.0), (40.0, 20.0)]
    assert resample(track, 5) == [(0, 0), (5, 10), (10, 20), (25, 20), (40, 20)]
    assert resample(track, 3, "linear") == track
    assert resample(track, 1) == [(0.0, 0.0)]


@pytest.mark.parametrize("method", ["linear", "smooth"])
@pytest.mark.parametrize("samples", [2, 7, 33, 121])
def test_endpoints_are_kept_exactly(method, samples):
    track = [(0.1, 0.7), (3.3, 9.9), (100.0 / 3, 1e-9), (831.99, 479.01)]
    out = resample(track, samples, method)
    assert len(out) == samples
    assert (out[0], out[-1]) == (track[0], track[-1])


@pytest.mark.parametrize("method", ["linear", "smooth"])
def test_resampling_passes_through_every_point(method):
    out = resample(ZIGZAG, 4 * (len(ZIGZAG) - 1) + 1, method)
    assert out[::4] == ZIGZAG


def test_smooth_never_leaves_the_canvas_nor_overshoots_a_segment():
    out = np.array(resample(ZIGZAG, 401, "smooth"))
    assert (out >= 0).all() and (out[:, 0] <= 832).all() and (out[:, 1] <= 480).all()
    for k in range(len(ZIGZAG) - 1):  # each coordinate stays between its segment's ends
        seg = out[100 * k : 100 * (k + 1) + 1]
        lo, hi = np.minimum(ZIGZAG[k], ZIGZAG[k + 1]), np.maximum(ZIGZAG[k], ZIGZAG[k + 1])
        assert (seg >= lo - 1e-9).all() and (seg <= hi + 1e-9).all()


def test_smooth_has_no_kinks_where_linear_has():
    track = [(0.0, 0.0), (100.0, 0.0), (200.0, 100.0)]
    smooth = np.array(resample(track, 201, "smooth"))
    linear = np.array(resample(track, 201, "linear"))
    step = lambda p: np.diff(p, axis=0)  # noqa: E731
    assert np.abs(np.diff(step(linear), axis=0)).max() == pytest.approx(1.0)  # the corner
    assert np.abs(np.diff(step(smooth), axis=0)).max() < 0.05


def test_smooth_of_two_points_is_the_straight_line():
    track = [(10.0, 20.0), (110.0, 70.0)]
    assert resample(track, 11, "smooth") == resample(track, 11, "linear")


def test_frame_path_is_the_position_at_each_frame():
    assert frame_path([(0.0, 0.0), (32.0, 64.0)], 33) == [(k, 2 * k) for k in range(33)]
    assert frame_path([(5.0, 5.0)], 4, "smooth") == [(5.0, 5.0)] * 4


def test_unknown_method_and_empty_track():
    with pytest.raises(ValueError, match="use one of: linear, smooth"):
        resample([(0.0, 0.0), (1.0, 1.0)], 5, "cubic")
    with pytest.raises(ValueError, match="empty track"):
        resample([], 5)
    with pytest.raises(ValueError, match="at least 1"):
        resample([(0.0, 0.0)], 0)


# --- WanTrackToVideo tracks ------------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "smooth"])
def test_ati_tracks_are_121_samples_from_start_to_end(method):
    tracks = [[{"x": 10, "y": 20}, {"x": 300, "y": 400}], ZIGZAG]
    out = ati_tracks(tracks, 832, 480, method, length=33)
    assert [len(t) for t in out] == [ATI_SAMPLES, ATI_SAMPLES]
    assert out[0][0] == {"x": 10, "y": 20} and out[0][-1] == {"x": 300, "y": 400}
    assert out[1][-1] == {"x": 830, "y": 479}
    values = [v for t in out for p in t for v in p.values()]
    assert all(v == round(v, 2) for v in values)


def test_ati_tracks_scale_from_the_shot_canvas():
    track = [[(0, 0), (832, 480)], [(416, 240), (416, 240)]]
    out = ati_tracks(track, 416, 240, src_size=(832, 480), length=81)
    assert (out[0][0], out[0][-1]) == ({"x": 0, "y": 0}, {"x": 416, "y": 240})
    assert out[0][60] == {"x": 208, "y": 120}  # frame 40 of 81 reads sample 60: mid-clip
    assert {(p["x"], p["y"]) for p in out[1]} == {(208, 120)}


def test_ati_tracks_validate_in_the_shot_canvas():
    with pytest.raises(InvalidInput) as err:
        ati_tracks([[(0, 0), (900, 10)]], 416, 240, src_size=(832, 480), length=33)
    assert err.value.problems == [
        "trajectories[0]: leaves the 832x480 canvas on frames 31-33 of 33, because point [1] "
        "(900, 10) is outside it; keep every point within 0 <= x <= 832, 0 <= y <= 480 (pixels)"
    ]


def comfy_shows(track: list[dict], length: int) -> list[tuple[float, float]]:
    """The point ComfyUI's process_tracks puts on each frame."""
    return [(track[r]["x"], track[r]["y"]) for r in comfy_rows(length)[:length]]


@pytest.mark.parametrize("method", ["linear", "smooth"])
@pytest.mark.parametrize("length", [5, 17, 33, 49, 81, 117])
def test_each_frame_shows_the_frame_path(method, length):
    track = [(100.0, 400.0), (260.0, 370.0), (420.0, 130.0), (560.0, 310.0), (690.0, 300.0)]
    ati = ati_tracks([track], 832, 480, method, length=length)[0]
    expected = np.array(frame_path(track, length, method))
    assert np.abs(np.array(comfy_shows(ati, length)) - expected).max() <= 0.005
    as_tuples = [(p["x"], p["y"]) for p in ati]
    got = np.array([track_at(as_tuples, k, length) for k in range(length)])
    assert np.abs(got - expected).max() <= 0.005


@pytest.mark.parametrize("length", [125, 161, 201, 237])
def test_longer_clips_than_the_grid_stay_within_half_a_frame(length):
    """Over 121 frames some frames share a sample, which sits at their mean time; the
    sample of the last frame is the end point, even when the frame before shares it."""
    track = [(0.0, 0.0), (float(length - 1), 0.0)]  # one pixel per frame
    ati = ati_tracks([track], 832, 480, length=length)[0]
    shown = np.array(comfy_shows(ati, length))[:, 0]
    at_end = np.array(comfy_rows(length)[:length]) == ATI_SAMPLES - 1
    assert np.abs(shown - np.arange(length))[~at_end].max() <= 0.5 + 0.005
    assert (shown[at_end] == length - 1).all() and at_end.sum() <= 2


def test_sample_times_rise_from_first_frame_to_last():
    for length in (5, 33, 81, 161):
        times = ati_sample_times(length)
        assert len(times) == ATI_SAMPLES and times[0] == 0 and times[-1] == 1
        assert all(a <= b for a, b in zip(times, times[1:], strict=False))


def test_scale_tracks_keeps_samples_and_clamps():
    tracks = [[{"x": 832, "y": 480}, {"x": 100.123, "y": 0}]]
    assert scale_tracks(tracks, (832, 480), (624, 352)) == [
        [{"x": 624, "y": 352}, {"x": 75.09, "y": 0}]
    ]


# --- validation ------------------------------------------------------------------------

POINT = {"x": 1, "y": 1}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            "[[",
            "trajectories: not valid JSON (Expecting value: line 1 column 3 (char 2))",
        ),
        (
            {"x": 1},
            'trajectories: expected a list of tracks, each a list of {"x": .., "y": ..} points',
        ),
        (
            [],
            "trajectories: no tracks; give at least one track of 2 or more points, "
            "or leave trajectories out",
        ),
        (
            [POINT],
            "trajectories[0]: expected a list of {\"x\": .., \"y\": ..} points, got {'x': 1, 'y': 1}",
        ),
        (
            [[POINT]],
            "trajectories[0]: has 1 point(s); give at least 2 (where it starts and where it "
            "ends; repeat a point to hold it still)",
        ),
        ([[POINT, 7]], 'trajectories[0][1]: expected a point {"x": .., "y": ..}, got 7'),
        ([[POINT, {"x": 1}]], "trajectories[0][1].y: missing; give y in pixels"),
        (
            [[POINT, {"x": "10", "y": 1}]],
            "trajectories[0][1].x: expected a number, got '10'; give x in pixels",
        ),
        (
            [[POINT, {"x": 1, "y": True}]],
            "trajectories[0][1].y: expected a number, got True; give y in pixels",
        ),
        (
            [[POINT, {"x": float("inf"), "y": 1}]],
            "trajectories[0][1].x: expected a finite number, got inf; give x in pixels",
        ),
        (
            [[POINT, {"x": 1, "y": float("nan")}]],
            "trajectories[0][1].y: expected a finite number, got nan; give y in pixels",
        ),
        (
            [[POINT, {"x": -0.5, "y": 1}]],
            "trajectories[0][1]: point (-0.5, 1) is outside the 832x480 canvas; "
            "points are pixels with 0 <= x <= 832, 0 <= y <= 480",
        ),
        (
            [[POINT, {"x": 1, "y": 480.01}]],
            "trajectories[0][1]: point (1, 480.01) is outside the 832x480 canvas; "
            "points are pixels with 0 <= x <= 832, 0 <= y <= 480",
        ),
    ],
)
def test_each_validation_problem_says_where_and_how_to_fix_it(raw, problem):
    assert track_problems(raw, 832, 480) == [problem]
    with pytest.raises(InvalidInput) as err:
        validate_tracks(raw, 832, 480)
    assert err.value.problems == [problem]
    assert str(err.value).startswith("trajectories are invalid\n  - ")


def test_every_problem_is_listed_at_once_in_path_order():
    raw = [[{"x": 1, "y": "a"}, {"x": 900, "y": 1}], [POINT], 5]
    problems = track_problems(raw, 832, 480, name="$.shots[2].trajectories")
    assert [p.split(":")[0] for p in problems] == [
        "$.shots[2].trajectories[0][0].y",
        "$.shots[2].trajectories[0][1]",
        "$.shots[2].trajectories[1]",
        "$.shots[2].trajectories[2]",
    ]


def test_validate_tracks_returns_float_tracks_and_accepts_the_edges():
    raw = [[{"x": 0, "y": 0}, (832, 480)]]
    assert validate_tracks(raw, 832, 480) == [[(0.0, 0.0), (832.0, 480.0)]]
    assert track_problems(raw, 832, 480) == []
