"""Point trajectories: parsing and the frame-to-sample rule shared by synthesis and metrics.

A track is a list of (x, y) points in pixels of the generation canvas. Wan ATI pads each
track to 121 samples at 24 fps and generated frame k (of 81 at 16 fps) uses sample
floor(1.5k); any other track is resampled linearly over normalised time.
"""

from __future__ import annotations

import json
import math
from typing import Any

from farm.errors import InvalidInput

Track = list[tuple[float, float]]

ATI_SAMPLES = 121
ATI_FRAMES = 81


def parse_tracks(raw: Any, name: str = "trajectories") -> list[Track]:
    """Parse ``[[{"x": .., "y": ..}, ...], ...]`` (or its JSON text) into tracks.

    Points may also be ``(x, y)`` pairs or objects with ``x`` and ``y`` attributes.
    """
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(raw, list | tuple):
        raise InvalidInput(f"{name}: expected a list of tracks")
    return [_parse_track(track, f"{name}[{i}]") for i, track in enumerate(raw)]


def _parse_track(raw: Any, path: str) -> Track:
    if not isinstance(raw, list | tuple) or not raw:
        raise InvalidInput(f"{path}: expected a non-empty list of points")
    return [_parse_point(point, f"{path}[{j}]") for j, point in enumerate(raw)]


def _parse_point(raw: Any, path: str) -> tuple[float, float]:
    if isinstance(raw, list | tuple) and len(raw) == 2:
        raw = {"x": raw[0], "y": raw[1]}
    elif hasattr(raw, "x") and hasattr(raw, "y"):
        raw = {"x": raw.x, "y": raw.y}
    if not isinstance(raw, dict):
        raise InvalidInput(f'{path}: expected an object {{"x": .., "y": ..}}')
    return _coord(raw, "x", path), _coord(raw, "y", path)


def _coord(point: dict, key: str, path: str) -> float:
    value = point.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{path}.{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidInput(f"{path}.{key}: expected a finite number, got {value!r}")
    return float(value)


def track_at(track: Track, k: int, frames: int) -> tuple[float, float]:
    """Target position of ``track`` at generated frame ``k`` of a ``frames``-frame clip."""
    n = len(track)
    if n == 0:
        raise ValueError("empty track")
    if n == 1 or frames <= 1:
        return track[0]
    if n == ATI_SAMPLES and frames == ATI_FRAMES:
        return track[min(int(1.5 * k), n - 1)]
    pos = min(max(k / (frames - 1), 0.0), 1.0) * (n - 1)
    i = min(int(pos), n - 2)
    t = pos - i
    (x0, y0), (x1, y1) = track[i], track[i + 1]
    return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
