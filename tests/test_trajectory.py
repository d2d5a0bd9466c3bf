import json
from dataclasses import dataclass

import pytest

from farm.errors import InvalidInput
from farm.trajectory import parse_tracks, track_at

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
    # 121 samples but not 81 frames: plain resampling, last sample at the last frame
    long = [(float(i), 0.0) for i in range(121)]
    assert track_at(long, 32, 33)[0] == pytest.approx(120.0)


def test_single_point_track_is_static():
    assert {track_at([(3.0, 4.0)], k, 33) for k in range(33)} == {(3.0, 4.0)}


def test_parse_tracks_accepts_point_objects_in_tuples():
    @dataclass(frozen=True)
    class Point:
        x: float
        y: float

    assert parse_tracks(((Point(1, 2), Point(3, 4)),)) == [[(1.0, 2.0), (3.0, 4.0)]]
