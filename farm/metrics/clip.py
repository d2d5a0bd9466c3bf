"""Score one clip: decode once, share the intermediates, return a JSON-ready dict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from farm.metrics.adherence import trajectory_adherence
from farm.metrics.consistency import visual_consistency
from farm.metrics.features import track_features
from farm.metrics.flicker import temporal_flicker
from farm.metrics.flow import Flows
from farm.metrics.frames import Clip, load_clip
from farm.metrics.motion import dynamic_degree, motion_smoothness
from farm.trajectory import Track, parse_tracks


def score_clip(
    path: Path | str,
    trajectories: list[Track] | None = None,
    canvas: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Scores (each 0..1, higher is better), raw values and cut candidates of a video file.

    ``trajectories`` are in pixels of a ``canvas`` (width, height) that defaults to the
    clip's own size; with them the result also has ``trajectory_adherence`` (unless no
    target point is ever visible after frame 0: then only ``raw`` says so).
    """
    start = time.perf_counter()
    return score_loaded(load_clip(Path(path)), trajectories, canvas, start)


def score_loaded(
    clip: Clip,
    trajectories: list[Track] | None = None,
    canvas: tuple[int, int] | None = None,
    start: float | None = None,
) -> dict[str, Any]:
    """:func:`score_clip` for an already decoded clip."""
    start = time.perf_counter() if start is None else start
    tracks = track_features(clip)
    flows = Flows(clip)
    smooth, smooth_raw = motion_smoothness(tracks)
    flicker, flicker_raw = temporal_flicker(clip, flows)
    consistency, consistency_raw, cuts = visual_consistency(clip, tracks)
    scores = {
        "motion_smoothness": smooth,
        "temporal_flicker": flicker,
        "visual_consistency": consistency,
    }
    raw: dict[str, Any] = {
        "motion_smoothness": smooth_raw,
        "temporal_flicker": flicker_raw,
        "visual_consistency": consistency_raw,
        "dynamic_degree": dynamic_degree(clip, flows),
    }
    if trajectories:
        adherence, raw["trajectory_adherence"] = trajectory_adherence(
            clip, parse_tracks(trajectories), canvas
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
        "seconds": round(time.perf_counter() - start, 4),
    }
