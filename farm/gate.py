"""The quality gate: each finished take of a shot is scored on the CPU queue, and a take
below its template's thresholds is rendered again with a new seed.

When a shot's last render (its final, or its preview in a preview-only scene) is ready,
the shot's chord slot goes to ``farm.score_shot`` on the CPU queue (one take per task, so
a farm's CPU worker processes score takes in parallel while other shots still render).
:func:`score_take` scores the take with :mod:`farm.metrics`, keeps its figures, contact
strip and trajectory plot beside its clip, and decides:

- ``passed``: the take reaches every threshold of its template: it is kept;
- a new take: below a threshold, with takes left: the shot goes back to the backlog with
  seed ``shot seed + (take - 1) x SEED_STEP`` (takes count from 1; a retake is a new
  request: it may be served from the render cache, and is never mixed up with an earlier
  take's files);
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from farm import telemetry
from farm.errors import ConfigError
from farm.files import ClipMissing, visible
from farm.jsonfile import read_json
from farm.lifecycle import ShotState
from farm.runtime import Runtime
from farm.scene import Shot
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


def failures(
    scores: Mapping[str, float], minimum: Mapping[str, float], cuts: Sequence[int] = ()
) -> list[str]:
    """The thresholds a take misses, as ``"metric 0.41 < 0.60"`` (metrics it lacks aside);
    a missed visual_consistency names the take's ``cuts``, which halve it."""
    missed = []
    for m, lo in minimum.items():
        if m in scores and scores[m] < lo:
            why = f"{m} {scores[m]:.2f} < {lo:.2f}"
            if m == "visual_consistency" and cuts:
                why += f" (cut before frame {', '.join(map(str, cuts))})"
            missed.append(why)
    return missed


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
    """The seed of a shot's ``take``, counted from 1 (1: its own seed)."""
    return (seed + (take - 1) * SEED_STEP) % SEED_SPACE


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
    from farm.take_images import contact_strip, trajectory_plot

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
    backlog (the slot stays open for it) or this delivery is stale. The task holds the
    shot's lease while it scores, so the timeout checker sees it alive."""
    from farm import lifecycle

    keys = rt.settings.keys
    lease, record = keys.lease(scene_id, shot_id), keys.shot(scene_id, shot_id)
    if not lifecycle.hold(rt, lease, token, record, "scoring", wait_for=4 * rt.settings.lease_ttl):
        log.info("shot %s/%s: scoring %s is stale or scored elsewhere; ignored", scene_id,
                 shot_id, token[:8])  # fmt: skip
        return None
    keeper = lifecycle.Keeper(rt, lease, token, record, "scoring")
    keeper.start()
    try:
        return _gate(rt, scene_id, shot_id, token)
    finally:
        keeper.stop()
        lifecycle.release_lease(rt, lease, token)


def _gate(rt: Runtime, scene_id: str, shot_id: str, token: str) -> dict[str, Any] | None:
    from farm import lifecycle
    from farm.dispatch import cancelled_record, scene_of
    from farm.shots import is_cancelled, place_take

    shot = rt.state.shot(scene_id, shot_id)
    if shot.get("scoring") != token or shot.get("state") != ShotState.SCORING:
        return None
    if is_cancelled(rt, scene_id, shot_id):
        out = lifecycle.cancel(rt, scene_id, shot_id, state=ShotState.SCORING, token=token)
        return cancelled_record(scene_id, shot_id) if out else None
    pending = dict(shot["pending_take"])
    try:  # a take another machine rendered may show up here late (NFS)
        visible(Path(pending["clip"]), rt.settings.clip_wait,
                Path(pending.get("source") or pending["clip"]))  # fmt: skip
    except ClipMissing as exc:
        log.warning("shot %s/%s: %s", scene_id, shot_id, exc)  # scored as an error below
    place_take(pending)
    scene = scene_of(rt, scene_id)
    spec = scene.shot(shot_id)
    rule = load_gate(rt.settings.gate_file).rule(spec.template, rt.settings.gate_takes)
    try:
        pending.update(score_file(Path(pending["clip"]), spec))
    except Exception as exc:  # scoring must never strand a rendered shot
        log.exception("scoring %s/%s take %s failed", scene_id, shot_id, pending.get("take"))
        pending["error"] = f"{exc.__class__.__name__}: {exc}"
    missed = failures(pending.get("scores") or {}, rule.minimum, pending.get("cuts") or ())
    pending.update(passed="error" not in pending and not missed, failed=missed)
    takes = [t for t in shot.get("takes") or [] if t.get("take") != pending["take"]]
    takes.append(pending)
    gate = {"takes_allowed": rule.takes, "thresholds": dict(rule.minimum),
            "reasons": [f"take {t['take']}: {', '.join(t['failed'])}" for t in takes
                        if t.get("failed")]}  # fmt: skip
    if "error" in pending:
        return _keep(rt, scene_id, shot_id, token, shot, takes, len(takes) - 1,
                     {**gate, "decision": "unscored", "error": pending["error"]})  # fmt: skip
    if not rule.minimum:
        return _keep(rt, scene_id, shot_id, token, shot, takes, len(takes) - 1,
                     {**gate, "decision": "not_gated"})  # fmt: skip
    if not missed:
        return _keep(rt, scene_id, shot_id, token, shot, takes, len(takes) - 1,
                     {**gate, "decision": "passed"})  # fmt: skip
    if len(takes) < rule.takes:
        return _retake(rt, scene_id, shot_id, token, shot, spec, takes, pending, missed,
                       {**gate, "decision": "retaking"})  # fmt: skip
    return _keep(rt, scene_id, shot_id, token, shot, takes, best(takes, rule.minimum),
                 {**gate, "decision": "kept_best"})  # fmt: skip


def _retake(
    rt: Runtime,
    scene_id: str,
    shot_id: str,
    token: str,
    shot: dict[str, Any],
    spec: Shot,
    takes: list[dict[str, Any]],
    pending: dict[str, Any],
    missed: list[str],
    gate: dict[str, Any],
) -> dict[str, Any] | None:
    """Render a new take with a new seed: from the cache when it has it, else through the
    backlog. None: the slot stays open for it (a cancelled record if the shot was)."""
    from farm import lifecycle
    from farm.cache import RenderCache
    from farm.celery_app import app
    from farm.dispatch import Dispatcher, backlog_entry, cancelled_record, scene_of
    from farm.planning import Rung, plan_variants
    from farm.shots import serve_from_cache

    n = int(shot.get("take") or 1) + 1
    seed = take_seed(spec.seed, n)
    kind, priority = pending["kind"], int(pending["priority"])
    variants = [replace(v, params={**v.params, "seed": seed}, take=n)
                for v in plan_variants(scene_of(rt, scene_id), spec, kind, rt.catalog)]  # fmt: skip
    fields = {"takes": takes, "take": n, "attempt": 0, "gate": gate, "error": None,
              "used_fallback": False, "primary_error": None, "fallback": None}  # fmt: skip
    d = Dispatcher(rt, app)
    hit = RenderCache(rt).lookup([variants])[0]
    if hit is not None:
        out = serve_from_cache(rt, d, scene_id, shot_id, hit, source=ShotState.SCORING,
                               token=token, **fields)  # fmt: skip
    else:
        backlog, stored = backlog_entry(Rung(tuple(variants), step=f"take {n}: seed {seed}"),
                                        kind, priority)  # fmt: skip
        out = lifecycle.retake(rt, scene_id, shot_id, token, backlog, stored,
                               data={"take": n, "seed": seed}, progress=0.0, **fields)  # fmt: skip
    if not out:
        return None
    rt.state.event(scene_id, "shot_gate_rejected", shot=shot_id, take=pending["take"],
                   failed=", ".join(missed), next_seed=seed)  # fmt: skip
    telemetry.record_gate_rejection(rt.redis, rt.settings, spec.template,
                                    [m.split()[0] for m in missed])  # fmt: skip
    if out.state == ShotState.CANCELLED:
        return cancelled_record(scene_id, shot_id)
    d.dispatch()
    return None


def _keep(
    rt: Runtime,
    scene_id: str,
    shot_id: str,
    token: str,
    shot: dict[str, Any],
    takes: list[dict[str, Any]],
    index: int,
    gate: dict[str, Any],
) -> dict[str, Any] | None:
    """Close the shot as done with take ``index`` (None: the scoring went stale)."""
    from farm import lifecycle

    kept = takes[index]
    gate = {**gate, "kept": kept["take"], "takes": len(takes)}
    outputs = {**(shot.get("outputs") or {}), kept["kind"]: kept["clip"]}
    out = lifecycle.keep(rt, scene_id, shot_id, token, gate, outputs=outputs, takes=takes,
                         cache_hit=bool(kept.get("cache_hit")), node=kept.get("node"))  # fmt: skip
    if not out:
        return None
    rt.state.event(scene_id, "shot_gate", shot=shot_id, decision=gate["decision"],
                   kept=kept["take"], takes=len(takes))  # fmt: skip
    telemetry.record_shot_finished(rt.redis, rt.settings, ShotState.DONE, gate["decision"])
    return {"scene_id": scene_id, "shot_id": shot_id, "state": "done", "kind": kept["kind"],
            "node": kept.get("node"), "take": kept["take"], "clip": kept["clip"],
            "cache_hit": bool(kept.get("cache_hit")), "gate": gate["decision"]}  # fmt: skip
