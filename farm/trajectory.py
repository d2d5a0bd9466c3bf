"""Point trajectories: validation, resampling, and the Wan ATI sample grid.

A track is a list of (x, y) points in pixels of a canvas (0 <= x <= width, 0 <= y <= height),
equally spaced in time from the first frame of the shot to the last. Between points the
path is ``linear`` (piecewise linear) or ``smooth`` (a monotone cubic, PCHIP, per
coordinate: it passes through every point and never leaves the box of two neighbouring
points, so it cannot overshoot the canvas).

ComfyUI's ``WanTrackToVideo`` pads or truncates every track to exactly 121 samples
(``ATI_SAMPLES``, zeros marked invisible), then ``process_tracks`` puts sample 0 on frame 0
and spreads samples 1..120 over frames 1..length-1: frame j reads sample
:func:`ati_sample_index` (floor(1.5 j) for the native 81 frames). So a shorter track would
vanish part way through the clip and a longer one be cut short; :func:`ati_tracks` resamples
each track to 121 samples placed so that every frame reads the path's position at its time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from farm.errors import InvalidInput
from farm.problems import show

Track = list[tuple[float, float]]

ATI_SAMPLES = 121
ATI_FRAMES = 81  # the clip length Wan ATI was trained for: 121 samples at 24 fps = 81 at 16
METHODS = ("linear", "smooth")
POINT_FORMAT = '{"x": .., "y": ..}'


def parse_tracks(raw: Any, name: str = "trajectories") -> list[Track]:
    """Parse ``[[{"x": .., "y": ..}, ...], ...]`` (or its JSON text) into tracks.

    Points may also be ``(x, y)`` pairs or objects with ``x`` and ``y`` attributes.
    Raises :class:`InvalidInput` naming the first bad element.
    """
    reader = _Reader()
    tracks = reader.tracks(raw, name)
    if reader.problems:
        raise InvalidInput(reader.problems[0])
    return tracks


def validate_tracks(
    tracks: Any,
    width: float,
    height: float,
    name: str = "trajectories",
    *,
    frames: int | None = None,
    method: str = "linear",
) -> list[Track]:
    """:func:`parse_tracks` for user input, plus at least one track, at least 2 points
    per track and every point inside the ``width`` x ``height`` canvas. With ``frames``
    (the clip's length) a track that leaves the canvas is reported once, by the frames
    (counted from 1) on which its ``method`` path is off the canvas.

    Raises :class:`InvalidInput` listing every problem as ``path: what is wrong; the fix``.
    """
    problems = track_problems(tracks, width, height, name, frames=frames, method=method)
    if problems:
        raise InvalidInput(f"{name} are invalid", problems)
    return parse_tracks(tracks, name)


def track_problems(
    tracks: Any,
    width: float,
    height: float,
    name: str = "trajectories",
    *,
    frames: int | None = None,
    method: str = "linear",
) -> list[str]:
    """The problems :func:`validate_tracks` would raise, as a list (empty when valid)."""
    reader = _Reader(canvas=(width, height), frames=frames, method=method)
    reader.tracks(tracks, name)
    return reader.problems


@dataclass
class _Reader:
    """Reads tracks and notes every problem with its path; with a ``canvas`` it also wants
    at least one track, 2 points per track and every point inside the canvas (reported
    per track by the frames it is off the canvas when ``frames`` is known, else per point)."""

    canvas: tuple[float, float] | None = None
    frames: int | None = None
    method: str = "linear"
    problems: list[str] = field(default_factory=list)

    def tracks(self, raw: Any, name: str) -> list[Track]:
        if isinstance(raw, str | bytes):
            try:
                raw = json.loads(raw)
            except ValueError as exc:
                self.problems.append(f"{name}: not valid JSON ({exc})")
                return []
        if not isinstance(raw, list | tuple):
            self.problems.append(
                f"{name}: expected a list of tracks, each a list of {POINT_FORMAT} points"
            )
            return []
        if not raw and self.canvas:
            self.problems.append(
                f"{name}: no tracks; give at least one track of 2 or more points, or leave {name} out"
            )
        return [self.track(track, f"{name}[{i}]") for i, track in enumerate(raw)]

    def track(self, raw: Any, path: str) -> Track:
        if not isinstance(raw, list | tuple):
            self.problems.append(
                f"{path}: expected a list of {POINT_FORMAT} points, got {_short(raw)}"
            )
            return []
        if not raw and not self.canvas:
            self.problems.append(f"{path}: has no points; give at least one")
        elif len(raw) < 2 and self.canvas:
            self.problems.append(
                f"{path}: has {len(raw)} point(s); give at least 2 (where it starts and where "
                "it ends; repeat a point to hold it still)"
            )
        points = [self.point(point, f"{path}[{j}]") for j, point in enumerate(raw)]
        track = [p for p in points if p is not None]
        outside = [j for j, p in enumerate(points) if p is not None and not self.inside(p)]
        if outside:
            self.problems.extend(self.off_canvas(path, points, outside))
        return track

    def inside(self, point: tuple[float, float]) -> bool:
        """Whether ``point`` is on the canvas (any point is, without a canvas)."""
        if self.canvas is None:
            return True
        w, h = self.canvas
        return 0 <= point[0] <= w and 0 <= point[1] <= h

    def off_canvas(
        self, path: str, points: list[tuple[float, float] | None], outside: list[int]
    ) -> list[str]:
        """One problem for a track whose path leaves the canvas, naming the frames (from
        1) it is off; one per point outside when the frames are unknown or none is off."""
        w, h = self.canvas or (0, 0)
        fix = f"keep every point within 0 <= x <= {w:g}, 0 <= y <= {h:g} (pixels)"
        where = ", ".join(f"[{j}] ({points[j][0]:g}, {points[j][1]:g})" for j in outside)  # type: ignore[index]
        track = [p for p in points if p is not None]
        if self.frames and len(track) == len(points) >= 2 and self.method in METHODS:
            path_at = frame_path(track, self.frames, self.method)
            off = [k + 1 for k, p in enumerate(path_at) if not self.inside(p)]
            if off:
                return [
                    f"{path}: leaves the {w:g}x{h:g} canvas on {frame_ranges(off)} of "
                    f"{self.frames}, because point{'s' if len(outside) > 1 else ''} {where} "
                    f"{'are' if len(outside) > 1 else 'is'} outside it; {fix}"
                ]
        return [
            f"{path}[{j}]: point ({points[j][0]:g}, {points[j][1]:g}) is outside the "  # type: ignore[index]
            f"{w:g}x{h:g} canvas; points are pixels with 0 <= x <= {w:g}, 0 <= y <= {h:g}"
            for j in outside
        ]

    def point(self, raw: Any, path: str) -> tuple[float, float] | None:
        if isinstance(raw, list | tuple) and len(raw) == 2:
            raw = {"x": raw[0], "y": raw[1]}
        elif hasattr(raw, "x") and hasattr(raw, "y"):
            raw = {"x": raw.x, "y": raw.y}
        if not isinstance(raw, dict):
            self.problems.append(f"{path}: expected a point {POINT_FORMAT}, got {_short(raw)}")
            return None
        x, y = self.coord(raw, "x", path), self.coord(raw, "y", path)
        if x is None or y is None:
            return None
        return x, y

    def coord(self, point: dict, key: str, path: str) -> float | None:
        value = point.get(key)
        if key not in point:
            self.problems.append(f"{path}.{key}: missing; give {key} in pixels")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.append(
                f"{path}.{key}: expected a number, got {_short(value)}; give {key} in pixels"
            )
        elif not _finite(value):
            self.problems.append(
                f"{path}.{key}: expected a finite number, got {show(value)}; give {key} in pixels"
            )
        else:
            return float(value)
        return None


def frame_ranges(frames: list[int]) -> str:
    """Sorted frame numbers as ranges: ``frame 4``, ``frames 3-5, 9``."""
    runs: list[list[int]] = []
    for k in frames:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    return f"frame {text}" if len(frames) == 1 else f"frames {text}"


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a finite number a float can hold (a JSON integer may not be)."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of more than ~308 digits
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def resample(track: Track, samples: int, method: str = "linear") -> Track:
    """``samples`` positions along ``track``, equally spaced in time from its first point
    to its last (both kept exactly); the track's points are equally spaced in time too."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    at = path_function(track, method)
    if samples == 1:
        return [at(0)]
    return [at(Fraction(i, samples - 1)) for i in range(samples)]


def frame_path(track: Track, frames: int, method: str = "linear") -> Track:
    """The target position of ``track`` at each frame of a ``frames``-frame clip."""
    return resample(track, frames, method)


def path_function(
    track: Track, method: str = "linear"
) -> Callable[[Fraction | float], tuple[float, float]]:
    """``at(t)``: the position on ``track`` at normalised time t (0 first point, 1 last)."""
    if method not in METHODS:
        raise ValueError(f"unknown interpolation {method!r}; use one of: {', '.join(METHODS)}")
    if not track:
        raise ValueError("empty track")
    track = [(float(x), float(y)) for x, y in track]
    n = len(track)
    smooth = method == "smooth" and n > 2
    dx = _pchip_slopes([p[0] for p in track]) if smooth else []
    dy = _pchip_slopes([p[1] for p in track]) if smooth else []

    def at(t: Fraction | float) -> tuple[float, float]:
        s = t * (n - 1)  # exact at the points when t is a Fraction
        k = math.floor(s)
        if k < 0 or n == 1:
            return track[0]
        if k >= n - 1:
            return track[-1]
        u = float(s - k)
        if u == 0:
            return track[k]
        (x0, y0), (x1, y1) = track[k], track[k + 1]
        if not smooth:
            return (1 - u) * x0 + u * x1, (1 - u) * y0 + u * y1
        return _hermite(x0, x1, dx[k], dx[k + 1], u), _hermite(y0, y1, dy[k], dy[k + 1], u)

    return at


def _pchip_slopes(values: list[float]) -> list[float]:
    """Fritsch-Carlson slopes (per point step) that keep each segment monotone.

    Interior: the harmonic mean of the two neighbouring secants, 0 at a local extremum;
    ends: the three-point estimate, 0 if it points against the first secant and at most 3
    times that secant when the secants change sign (as SciPy's ``PchipInterpolator``).
    """
    m = [b - a for a, b in zip(values, values[1:], strict=False)]
    d = [0.0] * len(values)
    for i in range(1, len(values) - 1):
        if m[i - 1] * m[i] > 0:
            d[i] = 2 / (1 / m[i - 1] + 1 / m[i])
    d[0], d[-1] = _end_slope(m[0], m[1]), _end_slope(m[-1], m[-2])
    return d


def _end_slope(m0: float, m1: float) -> float:
    d = (3 * m0 - m1) / 2
    if d * m0 <= 0:
        return 0.0
    if m0 * m1 < 0 and abs(d) > 3 * abs(m0):
        return 3 * m0
    return d


def _hermite(p0: float, p1: float, d0: float, d1: float, u: float) -> float:
    """The cubic from ``p0`` (slope ``d0``) to ``p1`` (slope ``d1``) at ``u`` in [0, 1].

    With PCHIP slopes it stays between ``p0`` and ``p1``; the clamp only absorbs rounding.
    """
    u2, u3 = u * u, u * u * u
    value = p0 + (p1 - p0) * (3 * u2 - 2 * u3) + d0 * (u3 - 2 * u2 + u) + d1 * (u3 - u2)
    return min(max(value, min(p0, p1)), max(p0, p1))


def ati_length_ok(length: int) -> bool:
    """Whether WanTrackToVideo can render a ``length``-frame clip.

    When length - 1 is a multiple of 120 (121, 241) ``process_tracks`` yields one sample
    fewer than the clip has frames and ``patch_motion`` fails; use length - 4 or length + 4.
    """
    return length > 1 and (length - 1) % (ATI_SAMPLES - 1) != 0


def ati_sample_index(frame: int, length: int) -> int:
    """The sample of a 121-sample track that ComfyUI shows at ``frame`` of a ``length``-frame clip.

    Frame 0 reads sample 0. ``process_tracks`` repeats samples 1..120 ``b`` times each and
    keeps every ``a``-th from the second on, with F = length - 1, a = 120 / gcd(120, F) and
    b = F / gcd(120, F); so frame j >= 1 reads sample 1 + (1 + (j - 1) a) // b.
    Raises ValueError for a frame that gets no sample (see :func:`ati_length_ok`).
    """
    if not 0 <= frame < length:
        raise ValueError(f"frame {frame} is not in a {length}-frame clip")
    if frame == 0:
        return 0
    steps = ATI_SAMPLES - 1
    g = math.gcd(steps, length - 1)
    a, b = steps // g, (length - 1) // g
    row = 1 + (frame - 1) * a
    if row >= steps * b:
        raise ValueError(f"WanTrackToVideo has no track sample for frame {frame} of {length}")
    return 1 + row // b


def ati_sample_times(length: int) -> list[Fraction]:
    """The normalised time (0 first frame, 1 last) at which to take each of the 121 samples.

    A sample read by one frame takes that frame's time, by several (clips longer than 121
    frames) their mean; the sample the last frame reads, and those after it, take 1 so the
    track ends where it should; samples no frame reads are interpolated between.
    """
    if not ati_length_ok(length):
        raise ValueError(f"WanTrackToVideo cannot render {length} frames")
    readers: dict[int, list[int]] = {}
    for frame in range(length):
        readers.setdefault(ati_sample_index(frame, length), []).append(frame)
    last = ati_sample_index(length - 1, length)
    anchors = {s: Fraction(sum(js), len(js) * (length - 1)) for s, js in readers.items()}
    anchors.update({s: Fraction(1) for s in range(last, ATI_SAMPLES)})
    known = sorted(anchors)
    times = []
    for s in range(ATI_SAMPLES):
        if s in anchors:
            times.append(anchors[s])
            continue
        lo = max(k for k in known if k < s)
        hi = min(k for k in known if k > s)
        times.append(anchors[lo] + (anchors[hi] - anchors[lo]) * Fraction(s - lo, hi - lo))
    return times


def ati_tracks(
    tracks: Any,
    width: int,
    height: int,
    method: str = "linear",
    src_size: tuple[int, int] | None = None,
    *,
    length: int,
) -> list[list[dict[str, float]]]:
    """The ``tracks`` input of WanTrackToVideo for a ``length``-frame, ``width`` x ``height`` render.

    ``tracks`` (any form :func:`parse_tracks` reads) are in pixels of ``src_size`` (the
    shot's canvas; the render size when omitted) and are validated there. Each becomes
    exactly 121 samples along its ``method`` path, placed by :func:`ati_sample_times` so
    that frame k shows ``frame_path(track, length, method)[k]``, then scaled to the render
    size, clamped into it and rounded to 2 decimals. Raises :class:`InvalidInput` for
    invalid tracks or a length WanTrackToVideo cannot render.
    """
    src = src_size or (width, height)
    parsed = validate_tracks(tracks, *src, frames=length, method=method)
    if not ati_length_ok(length):
        raise InvalidInput(
            f"Wan ATI cannot render {length} frames: ComfyUI's WanTrackToVideo fails when "
            f"length - 1 is a multiple of 120; use {max(length - 4, 1)} or {length + 4} frames"
        )
    times = ati_sample_times(length)
    samples = [list(map(path_function(track, method), times)) for track in parsed]
    return scale_tracks(samples, src, (width, height))


def scale_tracks(
    tracks: Any, src_size: tuple[float, float], size: tuple[float, float]
) -> list[list[dict[str, float]]]:
    """``tracks`` moved from a ``src_size`` canvas to a ``size`` one (same samples, same
    timing), clamped into it and rounded to 2 decimals, in the ``{"x", "y"}`` wire format."""
    (sw, sh), (w, h) = src_size, size
    return [
        [
            {
                "x": round(min(max(x * w / sw, 0.0), w), 2),
                "y": round(min(max(y * h / sh, 0.0), h), 2),
            }
            for x, y in track
        ]
        for track in parse_tracks(tracks)
    ]


def track_at(track: Track, k: int, frames: int) -> tuple[float, float]:
    """Target position of ``track`` at generated frame ``k`` of a ``frames``-frame clip.

    A 121-sample track is read as WanTrackToVideo reads it (:func:`ati_sample_index`);
    any other track, or a clip ATI cannot render, is resampled linearly over normalised time.
    """
    n = len(track)
    if n == 0:
        raise ValueError("empty track")
    k = min(max(k, 0), frames - 1)
    if n == 1 or frames <= 1:
        return track[0]
    if n == ATI_SAMPLES and ati_length_ok(frames):
        return track[ati_sample_index(k, frames)]
    pos = k / (frames - 1) * (n - 1)
    i = min(int(pos), n - 2)
    t = pos - i
    (x0, y0), (x1, y1) = track[i], track[i + 1]
    return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
