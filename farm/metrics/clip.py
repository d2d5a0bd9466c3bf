"""Score one clip: decode once, share the intermediates, return a JSON-ready dict."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from farm.metrics.adherence import trajectory_adherence
from farm.metrics.consistency import visual_consistency
from farm.metrics.features import track_features
from farm.metrics.flicker import temporal_flicker
from farm.metrics.flow import Flows
from farm.metrics.frames import Clip, load_clip
from farm.metrics.motion import dynamic_degree, motion_smoothness
from farm.metrics.sharpness import sharpness
from farm.trajectory import Track, parse_tracks

T = TypeVar("T")


class Stages:
    """Seconds spent per named stage of one scoring pass."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def score_clip(
    path: Path | str,
    trajectories: list[Track] | None = None,
    canvas: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Scores (each 0..1), raw values, cut candidates and seconds per stage of a video file.

    ``trajectories`` are in pixels of a ``canvas`` (width, height) that defaults to the
    clip's own size; with them the result also has ``trajectory_adherence`` (unless no
    target point is ever visible after frame 0: then only ``raw`` says so) and ``tracks``,
    the target and tracked path of each trajectory.
    """
    start, stages = time.perf_counter(), Stages()
    clip = stages.run("decode", load_clip, Path(path))
    return score_loaded(clip, trajectories, canvas, start, stages)


def score_loaded(
    clip: Clip,
    trajectories: list[Track] | None = None,
    canvas: tuple[int, int] | None = None,
    start: float | None = None,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """:func:`score_clip` for an already decoded clip."""
    start = time.perf_counter() if start is None else start
    stages = stages or Stages()
    stages.run("prepare", _prepare, clip)
    tracks = stages.run("features", track_features, clip)
    flows = stages.run("flow", _flows, clip)
    scores: dict[str, float] = {}
    raw: dict[str, Any] = {}
    for name, fn, args in (
        ("motion_smoothness", motion_smoothness, (tracks,)),
        ("temporal_flicker", temporal_flicker, (clip, flows)),
        ("dynamic_degree", dynamic_degree, (clip, flows)),
        ("sharpness", sharpness, (clip,)),
    ):
        scores[name], raw[name] = stages.run(name, fn, *args)
    consistency, raw["visual_consistency"], cuts = stages.run(
        "visual_consistency", visual_consistency, clip, tracks
    )
    scores["visual_consistency"] = consistency
    result: dict[str, Any] = {}
    if trajectories:
        adherence, raw["trajectory_adherence"], result["tracks"] = stages.run(
            "trajectory_adherence", trajectory_adherence, clip, parse_tracks(trajectories), canvas
        )
        if adherence is not None:
            scores["trajectory_adherence"] = adherence
    return {
        "frames": len(clip),
        "width": clip.width,
        "height": clip.height,
        "fps": float(clip.fps),
        "scores": {k: min(1.0, max(0.0, float(v))) for k, v in scores.items()},
        "raw": raw,
        "cuts": cuts,
        **result,
        "seconds": round(time.perf_counter() - start, 4),
        "stage_seconds": {k: round(v, 4) for k, v in stages.seconds.items()},
    }


def _prepare(clip: Clip) -> None:
    """The shared derived frames: half-size, gain-matched, grey thumbnails."""
    _ = clip.half_matched, clip.gray_thumbs


def _flows(clip: Clip) -> Flows:
    """Flows between consecutive frames, which every flow-based metric shares."""
    flows = Flows(clip)
    for t in range(1, len(clip)):
        flows(t, t - 1)
    return flows
