"""The quality gate: each finished take of a shot is scored on the CPU queue, and a take
below its template's thresholds is rendered again with a new seed.

When a shot's last render (its final, or its preview in a preview-only scene) is ready,
the shot's chord slot goes to ``farm.score_shot`` on the CPU queue (one take per task, so
a farm's CPU worker processes score takes in parallel while other shots still render).
:func:`score_take` scores the take with :mod:`farm.metrics`, keeps its figures, contact
strip and trajectory plot beside its clip, and decides:

- ``passed``: the take reaches every threshold of its template: it is kept;
- a new take: below a threshold, with takes left: the shot goes back to the backlog with
  seed ``shot seed + take x SEED_STEP`` (a retake is a new request: it may be served from
  the render cache, and is never mixed up with an earlier take's files);
- ``kept_best``: no take passed and none is left: the best take is kept (fewest failed
  metrics, then the largest worst margin);
- ``not_gated``: no threshold applies to the shot (its scores are still kept);
- ``unscored``: scoring failed (an unreadable clip): the take is kept and the error said.

Thresholds are a data file (``farm/data/gate.json``, or FARM_GATE_FILE): a ``default``
rule and per-template rules merged over it, each ``{"takes": n, "min": {metric: score}}``.
FARM_GATE_TAKES caps the takes of every template (1: score only, never re-render).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from farm import telemetry
from farm.errors import ConfigError
from farm.jsonfile import read_json
from farm.runtime import Runtime
from farm.scene import Shot
from farm.state import ShotState
from farm.trajectory import resample

log = logging.getLogger(__name__)

#: metrics a threshold may name (each a score in [0, 1], higher is better)
METRICS = (
    "motion_smoothness", "temporal_flicker", "visual_consistency", "trajectory_adherence",
    "sharpness", "dynamic_degree",
)  # fmt: skip
SEED_STEP = 1_000_003
SEED_SPACE = 2**32
#: samples of a smooth target path handed to the metrics (not 121: that is the ATI grid)
TARGET_SAMPLES = 256
END_SIDE = 480  # longest side of the first / last frames kept for scene continuity


# -- the rules (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What a take of a template must reach, and how many takes the gate may render."""

    takes: int
    minimum: Mapping[str, float]


@dataclass(frozen=True)
class GateConfig:
    default: Rule
    templates: Mapping[str, Rule]
    source: str

    def rule(self, template: str, cap: int) -> Rule:
        """The rule of ``template`` (``default`` when it has none), takes capped at ``cap``."""
        rule = self.templates.get(template, self.default)
        return Rule(max(1, min(rule.takes, cap)), rule.minimum)


def parse_gate(data: Any, where: str = "gate file") -> GateConfig:
    """Check a decoded gate file; ConfigError lists every problem with its fix."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(f'{where}: a JSON object {{"default": {{...}}, "templates": {{...}}}}')
    for key in data:
        if key not in ("version", "description", "default", "templates"):
            problems.append(f"{key}: unknown field; remove it (known: default, templates)")
    default = _rule(data.get("default", {}), "default", None, problems)
    templates_raw = data.get("templates", {})
    templates: dict[str, Rule] = {}
    if not isinstance(templates_raw, dict):
        problems.append('templates: an object {"template name": {"takes": n, "min": {...}}}')
    else:
        for name, raw in templates_raw.items():
            templates[name] = _rule(raw, f"templates.{name}", default, problems)
    if problems:
        raise ConfigError("\n".join([f"invalid {where}:", *(f"  - {p}" for p in problems)]))
    return GateConfig(default, templates, where)


def _rule(raw: Any, where: str, base: Rule | None, problems: list[str]) -> Rule:
    fallback = base or Rule(3, {})
    if not isinstance(raw, dict):
        problems.append(
            f'{where}: an object such as {{"takes": 3, "min": {{"motion_smoothness": 0.6}}}}'
        )
        return fallback
    for key in raw:
        if key not in ("takes", "min"):
            problems.append(f"{where}.{key}: unknown field; remove it (known: takes, min)")
    takes = raw.get("takes", fallback.takes)
    if not isinstance(takes, int) or isinstance(takes, bool) or takes < 1:
        problems.append(f"{where}.takes: got {takes!r}; use a whole number >= 1, e.g. 3")
        takes = fallback.takes
    minimum = dict(fallback.minimum)
    given = raw.get("min", {})
    if not isinstance(given, dict):
        problems.append(
            f'{where}.min: an object {{metric: least score}}, e.g. {{"motion_smoothness": 0.6}}'
        )
        given = {}
    for metric, value in given.items():
        if metric not in METRICS:
            problems.append(
                f"{where}.min.{metric}: unknown metric; use one of {', '.join(METRICS)}"
            )
        elif value is None:
            minimum.pop(metric, None)  # a template may switch a default threshold off
        elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            problems.append(f"{where}.min.{metric}: got {value!r}; use a score between 0 and 1")
        else:
            minimum[metric] = float(value)
    return Rule(takes, minimum)


_loaded: dict[tuple[str, float], GateConfig] = {}


def load_gate(path: Path) -> GateConfig:
    """The gate file at ``path``, read again when it changes."""
    path = Path(path)
    try:
        stamp = path.stat().st_mtime
    except OSError:
        raise ConfigError(f"FARM_GATE_FILE {str(path)!r} does not exist; point it at a gate "
                          "file (farm/data/gate.json is the default)") from None  # fmt: skip
    config = _loaded.get((str(path), stamp))
    if config is None:
        config = parse_gate(read_json(path, "gate file", ConfigError), str(path))
        _loaded.clear()
        _loaded[(str(path), stamp)] = config
    return config


def failures(scores: Mapping[str, float], minimum: Mapping[str, float]) -> list[str]:
    """The thresholds a take misses, as ``"metric 0.41 < 0.60"`` (metrics it lacks aside)."""
    return [
        f"{m} {scores[m]:.2f} < {lo:.2f}"
        for m, lo in minimum.items()
        if m in scores and scores[m] < lo
    ]


def best(takes: list[dict[str, Any]], minimum: Mapping[str, float]) -> int:
    """Index of the take to keep: fewest failed thresholds, then the largest worst margin
    (score minus threshold), then the highest mean gated score; unscored takes last."""

    def key(take: dict[str, Any]) -> tuple:
        scores = take.get("scores")
        if not scores:
            return (1, 0, 0.0, 0.0)
        gated = [m for m in minimum if m in scores]
        margins = [scores[m] - minimum[m] for m in gated] or [0.0]
        mean = sum(scores[m] for m in gated) / len(gated) if gated else 0.0
        return (0, sum(x < 0 for x in margins), -min(margins), -mean)

    return min(range(len(takes)), key=lambda i: key(takes[i]))


def take_seed(seed: int, take: int) -> int:
    """The seed of a shot's ``take`` (0: its own seed)."""
    return (seed + take * SEED_STEP) % SEED_SPACE


def target_paths(shot: Shot) -> list[list[tuple[float, float]]]:
    """The shot's tracks as the paths it was asked to follow: the drawn points for linear
    interpolation, a dense resampling of the smooth curve otherwise (metrics interpolate
    linearly between the points they are given)."""
    tracks = [[(p.x, p.y) for p in t] for t in shot.trajectories]
    if shot.trajectory_interpolation == "linear":
        return tracks
    return [resample(t, TARGET_SAMPLES, shot.trajectory_interpolation) for t in tracks]


# -- scoring a take (I/O) -----------------------------------------------------------------


def score_file(clip_path: Path, shot: Shot) -> dict[str, Any]:
    """Score one take's clip and keep beside it: ``.score.json`` (every figure and the
    tracked paths), ``.contact.jpg`` (its contact strip), ``.tracks.jpg`` (target and
    tracked paths over its first frame) and ``.first.png`` / ``.last.png`` (for scene
    continuity). Returns the take's entry fields (file paths and scores)."""
    import cv2

    from farm import metrics
    from farm.metrics.frames import load_clip, thumbnail
    from farm.report import contact_strip, trajectory_plot

    clip = load_clip(clip_path)
    paths = target_paths(shot)
    result = metrics.score_loaded(clip, paths or None, (shot.width, shot.height))
    stem = clip_path.with_suffix("")
    files = {"result": stem.with_name(stem.name + ".score.json"),
             "contact": stem.with_name(stem.name + ".contact.jpg"),
             "first": stem.with_name(stem.name + ".first.png"),
             "last": stem.with_name(stem.name + ".last.png")}  # fmt: skip
    _write(files["result"], json.dumps(result).encode())
    _write(files["contact"], contact_strip(clip.thumbs, height=clip.thumbs[0].shape[0]))
    scale = min(1.0, END_SIDE / max(clip.width, clip.height))
    for name, frame in (("first", clip.first), ("last", clip.last)):
        _write(files[name], cv2.imencode(".png", thumbnail(frame, scale))[1].tobytes())
    if result.get("tracks"):
        files["trajectory_plot"] = stem.with_name(stem.name + ".tracks.jpg")
        _write(files["trajectory_plot"], trajectory_plot(clip.first, result["tracks"]))
    return {**{k: str(v) for k, v in files.items()}, "scores": result["scores"],
            "cuts": result.get("cuts", []), "score_seconds": result.get("seconds")}  # fmt: skip


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def score_take(rt: Runtime, scene_id: str, shot_id: str, token: str) -> dict[str, Any] | None:
    """Score the take the shot's ``scoring`` token names and apply the gate: the shot's
    chord record when it is over (kept a take), None when a new take was put in the
    backlog (the slot stays open for it) or this delivery is stale."""
    from farm.celery_app import app
    from farm.dispatch import Dispatcher
    from farm.shots import begin, cancelled, is_cancelled, scene_of

    state = rt.state
    shot = state.shot(scene_id, shot_id)
    if shot.get("scoring") != token or shot.get("state") != ShotState.SCORING:
        log.info("shot %s/%s: scoring %s is stale; ignored", scene_id, shot_id, token[:8])
        return None
    if is_cancelled(rt, scene_id, shot_id):
        return cancelled(rt, scene_id, shot_id, None)
    pending = dict(shot["pending_take"])
    scene = scene_of(rt, scene_id)
    spec = scene.shot(shot_id)
    rule = load_gate(rt.settings.gate_file).rule(spec.template, rt.settings.gate_takes)
    try:
        pending.update(score_file(Path(pending["clip"]), spec))
    except Exception as exc:  # scoring must never strand a rendered shot
        log.exception("scoring %s/%s take %s failed", scene_id, shot_id, pending.get("take"))
        pending["error"] = f"{exc.__class__.__name__}: {exc}"
    missed = failures(pending.get("scores") or {}, rule.minimum)
    pending.update(passed="error" not in pending and not missed, failed=missed)
    takes = [t for t in shot.get("takes") or [] if t.get("take") != pending["take"]]
    takes.append(pending)
    gate = {"takes_allowed": rule.takes, "thresholds": dict(rule.minimum),
            "reasons": [f"take {t['take']}: {', '.join(t['failed'])}" for t in takes
                        if t.get("failed")]}  # fmt: skip
    if "error" in pending:
        return _keep(rt, scene_id, shot_id, shot, takes, len(takes) - 1,
                     {**gate, "decision": "unscored", "error": pending["error"]})  # fmt: skip
    if not rule.minimum:
        return _keep(rt, scene_id, shot_id, shot, takes, len(takes) - 1,
                     {**gate, "decision": "not_gated"})  # fmt: skip
    if not missed:
        return _keep(rt, scene_id, shot_id, shot, takes, len(takes) - 1,
                     {**gate, "decision": "passed"})  # fmt: skip
    if len(takes) < rule.takes:
        n = int(shot.get("take") or 0) + 1
        seed = take_seed(spec.seed, n)
        state.update_shot(scene_id, shot_id, "shot_gate_retake", state=ShotState.QUEUED,
                          takes=takes, take=n, attempt=0, scoring="", progress=0.0,
                          gate={**gate, "decision": "retaking"}, error=None,
                          used_fallback=False, primary_error=None, fallback=None)  # fmt: skip
        state.event(scene_id, "shot_gate_rejected", shot=shot_id, take=pending["take"],
                    failed=", ".join(missed), next_seed=seed)  # fmt: skip
        telemetry.record_gate_rejection(rt.redis, rt.settings, spec.template, [m.split()[0] for m in missed])  # fmt: skip
        from farm.planning import plan_variants

        kind = pending["kind"]
        variants = [replace(v, params={**v.params, "seed": seed}, take=n)
                    for v in plan_variants(scene, spec, kind)]  # fmt: skip
        d = Dispatcher(rt, app)
        record = begin(rt, d, scene_id, shot_id, kind, variants, int(pending["priority"]),
                       force=False, step=f"take {n}: seed {seed}")  # fmt: skip
        d.dispatch()
        return record
    return _keep(rt, scene_id, shot_id, shot, takes, best(takes, rule.minimum),
                 {**gate, "decision": "kept_best"})  # fmt: skip


def _keep(
    rt: Runtime,
    scene_id: str,
    shot_id: str,
    shot: dict[str, Any],
    takes: list[dict[str, Any]],
    index: int,
    gate: dict[str, Any],
) -> dict[str, Any]:
    """Close the shot as done with take ``index``."""
    kept = takes[index]
    gate = {**gate, "kept": kept["take"], "takes": len(takes)}
    outputs = {**(shot.get("outputs") or {}), kept["kind"]: kept["clip"]}
    rt.state.update_shot(scene_id, shot_id, "shot_done", state=ShotState.DONE, outputs=outputs,
                         takes=takes, gate=gate, scoring="", progress=1.0, error=None,
                         finished=time.time(), cache_hit=bool(kept.get("cache_hit")),
                         node=kept.get("node"))  # fmt: skip
    rt.state.event(scene_id, "shot_gate", shot=shot_id, decision=gate["decision"],
                   kept=kept["take"], takes=len(takes))  # fmt: skip
    telemetry.record_shot_finished(rt.redis, rt.settings, ShotState.DONE, gate["decision"])
    return {"scene_id": scene_id, "shot_id": shot_id, "state": "done", "kind": kept["kind"],
            "node": kept.get("node"), "take": kept["take"], "clip": kept["clip"],
            "cache_hit": bool(kept.get("cache_hit")), "gate": gate["decision"]}  # fmt: skip
