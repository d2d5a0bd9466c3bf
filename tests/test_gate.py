"""The quality gate's rules (pure) and the emulator's ``jitter`` fault it is tested with."""

import json

import numpy as np
import pytest

from farm.emulators.profile import parse_faults, shake_px
from farm.emulators.synth import ClipSpec, synthesize
from farm.errors import ConfigError
from farm.gate import (
    SEED_SPACE,
    GateConfig,
    Rule,
    best,
    failures,
    load_gate,
    parse_gate,
    score_file,
    take_seed,
)
from farm.media import write_video
from farm.metrics import score_clip
from farm.scene import Shot
from farm.settings import REPO_ROOT


def test_the_shipped_gate_file_is_valid_and_merges_templates_over_the_default():
    config = load_gate(REPO_ROOT / "farm" / "data" / "gate.json")
    default = config.rule("standard_generation", cap=9)
    assert default.takes == 3 and default.minimum["motion_smoothness"] == 0.6
    hq = config.rule("high_quality", cap=9)
    assert hq.takes == 4 and hq.minimum["motion_smoothness"] == 0.7
    assert hq.minimum["temporal_flicker"] == default.minimum["temporal_flicker"]  # inherited
    assert config.rule("quick_preview", cap=9).takes == 1
    assert config.rule("high_quality", cap=2).takes == 2  # FARM_GATE_TAKES caps every template


def test_a_template_may_switch_a_default_threshold_off():
    config = parse_gate({"default": {"min": {"sharpness": 0.3, "temporal_flicker": 0.5}},
                         "templates": {"soft": {"min": {"sharpness": None}}}})  # fmt: skip
    assert config.rule("soft", 3).minimum == {"temporal_flicker": 0.5}


def test_a_bad_gate_file_names_every_field_and_its_fix():
    with pytest.raises(ConfigError) as err:
        parse_gate(
            {
                "default": {"takes": 0, "min": {"smoothness": 0.5, "temporal_flicker": 2}},
                "templates": {"x": {"min": [], "retakes": 2}},
                "thresholds": {},
            }
        )
    text = str(err.value)
    for expected in (
        "default.takes: got 0; use a whole number >= 1",
        "default.min.smoothness: unknown metric; use one of motion_smoothness",
        "default.min.temporal_flicker: got 2; use a score between 0 and 1",
        "templates.x.min: an object",
        "templates.x.retakes: unknown field",
        "thresholds: unknown field",
    ):
        assert expected in text, text


def test_a_missing_gate_file_says_which_setting_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="FARM_GATE_FILE"):
        load_gate(tmp_path / "nope.json")
    bad = tmp_path / "gate.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="gate file"):
        load_gate(bad)


def test_failures_name_the_metric_score_and_threshold_and_skip_absent_metrics():
    minimum = {"motion_smoothness": 0.6, "trajectory_adherence": 0.6, "temporal_flicker": 0.5}
    scores = {"motion_smoothness": 0.41, "temporal_flicker": 0.9}
    assert failures(scores, minimum) == ["motion_smoothness 0.41 < 0.60"]
    assert failures({"motion_smoothness": 0.6}, minimum) == []  # at the threshold passes


def test_a_take_with_a_hard_cut_misses_the_default_gate_which_says_where(tmp_path):
    spec = ClipSpec(320, 192, 25, 16, 7, "a lighthouse at dusk")
    other = ClipSpec(320, 192, 25, 16, 8, "a lighthouse at dusk")  # another angle, same look
    clean, cut = tmp_path / "clean.mp4", tmp_path / "cut.mp4"
    write_video(clean, synthesize(spec), 16)
    write_video(cut, list(synthesize(spec))[:12] + list(synthesize(other))[12:], 16)
    shot = Shot(id="s", action_description="a lighthouse at dusk", width=320, height=192)
    rule = load_gate(REPO_ROOT / "farm" / "data" / "gate.json").rule("standard_generation", 3)
    kept = score_file(clean, shot)
    assert kept["cuts"] == [] and failures(kept["scores"], rule.minimum, kept["cuts"]) == []
    taken = score_file(cut, shot)
    assert taken["cuts"] == [12]
    low = taken["scores"]["visual_consistency"]
    assert failures(taken["scores"], rule.minimum, taken["cuts"]) == [
        f"visual_consistency {low:.2f} < 0.70 (cut before frame 12)"
    ]


def test_best_take_has_fewest_failures_then_the_largest_worst_margin():
    minimum = {"motion_smoothness": 0.6, "temporal_flicker": 0.5}
    takes = [
        {"scores": {"motion_smoothness": 0.2, "temporal_flicker": 0.4}},  # fails both
        {"scores": {"motion_smoothness": 0.55, "temporal_flicker": 0.9}},  # fails one by 0.05
        {"scores": {"motion_smoothness": 0.3, "temporal_flicker": 0.99}},  # fails one by 0.3
        {"error": "unreadable clip"},
    ]
    assert best(takes, minimum) == 1
    assert best([{"error": "x"}, {"scores": {"motion_smoothness": 0.1}}], minimum) == 1


def test_each_take_has_its_own_seed_within_the_seed_range():
    seeds = [take_seed(SEED_SPACE - 5, n) for n in range(1, 5)]  # takes count from 1
    assert seeds[0] == SEED_SPACE - 5 and len(set(seeds)) == 4
    assert all(0 <= s < SEED_SPACE for s in seeds)


def test_rule_of_an_unknown_template_is_the_default():
    config = GateConfig(Rule(2, {"motion_smoothness": 0.5}), {}, "x")
    assert config.rule("anything", 5) == Rule(2, {"motion_smoothness": 0.5})


# -- the emulator's jitter fault ------------------------------------------------------------


def test_jitter_fault_is_checked_and_shakes_only_the_first_takes_of_a_request():
    faults = parse_faults({"jitter": {"px": 5.0, "takes": 2}})
    seen: dict[str, int] = {}
    assert [shake_px(faults, "req-a", seen) for _ in range(3)] == [5.0, 5.0, 0.0]
    assert shake_px(faults, "req-b", seen) == 5.0  # another request: its own first take
    assert shake_px({}, "req-c", seen) == 0.0
    with pytest.raises(ConfigError, match=r"faults.jitter.takes: got 0"):
        parse_faults({"jitter": {"takes": 0}})
    with pytest.raises(ConfigError, match=r"faults.jitter.px: got -1"):
        parse_faults({"jitter": {"px": -1}})


def test_a_shaken_clip_scores_far_less_smooth_than_its_steady_take(tmp_path):
    spec = ClipSpec(320, 192, 25, 16, 7, "a lighthouse, camera pans right, smooth movement")
    steady, shaken = tmp_path / "steady.mp4", tmp_path / "shaken.mp4"
    write_video(steady, list(synthesize(spec)), 16)
    frames = list(synthesize(ClipSpec(**{**spec.__dict__, "shake": 4.0})))
    write_video(shaken, frames, 16)
    a, b = score_clip(steady)["scores"], score_clip(shaken)["scores"]
    assert a["motion_smoothness"] > 2 * b["motion_smoothness"]
    assert a["motion_smoothness"] > 0.9
    first = next(iter(synthesize(spec)))
    assert np.array_equal(first, frames[0])  # frame 0 is where the camera starts
    json.dumps(a)
