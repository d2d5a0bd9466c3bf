"""The images kept beside each scored take, and embedded in the scene report: its contact
strip (:func:`contact_strip`) and its trajectory plot (:func:`trajectory_plot`), as JPEG
bytes. OpenCV is imported inside the functions that draw, so importing this module stays
cheap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

JPEG_QUALITY = 80

# BGR colours of the trajectory plot
TARGET_BGR = (255, 255, 0)  # cyan, dashed
TRACKED_BGR = (0, 140, 255)  # orange, solid
LOST_BGR = (0, 0, 255)  # red x
DIM = 0.5  # the frame under a trajectory plot is darkened to this fraction


def contact_strip(frames: list[np.ndarray], count: int = 6, height: int = 96) -> bytes:
    """JPEG of ``count`` thumbnails sampled evenly (first and last included), each labelled."""
    if not frames:
        raise ValueError("contact_strip needs at least one frame")
    if count < 1 or height < 8:
        raise ValueError(f"count must be >= 1 and height >= 8, got {count} and {height}")
    picks = sorted({round(i) for i in np.linspace(0, len(frames) - 1, min(count, len(frames)))})
    gap = np.full((height, 2, 3), 24, np.uint8)
    tiles: list[np.ndarray] = []
    for k in picks:
        tiles += [gap] if tiles else []
        tiles.append(_label(_thumb(frames[k], height), str(k)))
    return _jpeg(np.hstack(tiles))


def trajectory_plot(frame: np.ndarray, tracks: list[dict], max_side: int = 480) -> bytes:
    """JPEG of ``frame`` dimmed, each track's target (dashed) and tracked path, and a legend.

    ``tracks`` are ``{"target": [[x, y], ...], "tracked": [[x, y], ...], "lost": [k, ...]}``
    in ``frame`` pixels, one point per frame; points may lie outside the frame and missing
    (``None``) or non-finite points break a path.
    """
    import cv2

    img = _bgr(frame)
    scale = min(1.0, max_side / max(img.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    img = cv2.convertScaleAbs(img, alpha=DIM)
    tracks = [t for t in tracks if isinstance(t, dict)]
    drawn = [
        _draw_track(img, t, scale, n + 1 if len(tracks) > 1 else None) for n, t in enumerate(tracks)
    ]
    if tracks:
        _legend(img, np.vstack(drawn))
    return _jpeg(img)


def _draw_track(img: np.ndarray, track: dict, scale: float, number: int | None) -> np.ndarray:
    """Draw one track's paths, start marks and lost frames; return every point drawn."""
    import cv2

    target = _points(track.get("target"), scale)
    tracked = _points(track.get("tracked"), scale)
    for run in _runs(target):
        _dashed(img, run, TARGET_BGR)
    for run in _runs(tracked):
        cv2.polylines(img, [_ints(run)], False, TRACKED_BGR, 2, cv2.LINE_AA)
    _mark_start(img, target, tracked, number)
    lost = [k for k in _list(track.get("lost")) if isinstance(k, int | np.integer)]
    for k in lost:
        if 0 <= k < len(tracked) and np.isfinite(tracked[k]).all():
            _cross(img, tracked[k], LOST_BGR)
    return np.vstack([target, tracked])


def _jpeg(img: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"cannot encode a {img.shape} image as JPEG")
    return data.tobytes()


def _bgr(frame: np.ndarray) -> np.ndarray:
    img = np.asarray(frame)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _thumb(frame: np.ndarray, height: int) -> np.ndarray:
    import cv2

    img = _bgr(frame)
    width = max(1, round(img.shape[1] * height / img.shape[0]))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """Draw ``text`` small, light on a dark box, in the bottom-left corner of ``img``."""
    import cv2

    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, img.shape[0] / 280)
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    y = img.shape[0] - 4
    cv2.rectangle(img, (0, y - th - 4), (tw + 7, img.shape[0]), (20, 20, 20), cv2.FILLED)
    cv2.putText(img, text, (4, y - 1), font, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return img


def _points(raw: Any, scale: float) -> np.ndarray:
    """(n, 2) float array of scaled points; invalid points become NaN rows."""
    rows = []
    for p in _list(raw):
        try:
            rows.append((float(p[0]) * scale, float(p[1]) * scale))
        except (TypeError, ValueError, IndexError, KeyError):
            rows.append((math.nan, math.nan))
    return np.array(rows, np.float64).reshape(-1, 2)


def _runs(points: np.ndarray) -> list[np.ndarray]:
    """The stretches of consecutive finite points."""
    ok = np.isfinite(points).all(axis=1)
    runs, start = [], None
    for i, good in enumerate([*ok, False]):
        if good and start is None:
            start = i
        elif not good and start is not None:
            runs.append(points[start:i])
            start = None
    return runs


def _ints(points: np.ndarray) -> np.ndarray:
    return np.clip(np.round(points), -32000, 32000).astype(np.int32).reshape(-1, 1, 2)


def _dashed(img: np.ndarray, run: np.ndarray, colour: tuple, dash: float = 7, gap: float = 5):
    """A dashed polyline; each segment is first clipped to the image."""
    import cv2

    h, w = img.shape[:2]
    on, left = True, dash
    for p, q in zip(_ints(run)[:-1, 0], _ints(run)[1:, 0], strict=True):
        inside, a, b = cv2.clipLine((0, 0, w, h), tuple(map(int, p)), tuple(map(int, q)))
        if not inside:
            continue
        a, b = np.array(a, float), np.array(b, float)
        length, pos = float(np.hypot(*(b - a))), 0.0
        while pos < length:
            step = min(left, length - pos)
            if on:
                u, v = a + (b - a) * pos / length, a + (b - a) * (pos + step) / length
                cv2.line(img, _pt(u), _pt(v), colour, 2, cv2.LINE_AA)
            pos, left = pos + step, left - step
            if left <= 0:
                on = not on
                left = dash if on else gap


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _mark_start(img: np.ndarray, target: np.ndarray, tracked: np.ndarray, number: int | None):
    """A ring at the target's first point (numbered when there are several), a dot at the
    tracked path's first point."""
    import cv2

    start = _first(target)
    if start is not None and _visible(img, start):
        cv2.circle(img, _pt(start), 6, TARGET_BGR, 2, cv2.LINE_AA)
        if number is not None:
            x, y = _pt(start)
            font = cv2.FONT_HERSHEY_SIMPLEX
            cv2.putText(img, str(number), (x + 8, y - 8), font, 0.45, TARGET_BGR, 1, cv2.LINE_AA)
    start = _first(tracked)
    if start is not None and _visible(img, start):
        cv2.circle(img, _pt(start), 3, TRACKED_BGR, cv2.FILLED, cv2.LINE_AA)


def _first(points: np.ndarray) -> np.ndarray | None:
    finite = points[np.isfinite(points).all(axis=1)]
    return finite[0] if len(finite) else None


def _visible(img: np.ndarray, p: np.ndarray) -> bool:
    return 0 <= p[0] < img.shape[1] and 0 <= p[1] < img.shape[0]


def _cross(img: np.ndarray, p: np.ndarray, colour: tuple, r: int = 4) -> None:
    import cv2

    x, y = _pt(p)
    cv2.line(img, (x - r, y - r), (x + r, y + r), colour, 2, cv2.LINE_AA)
    cv2.line(img, (x - r, y + r), (x + r, y - r), colour, 2, cv2.LINE_AA)


def _legend(img: np.ndarray, points: np.ndarray) -> None:
    """Target, tracked and lost keys on a dark box, in the corner with fewest path points."""
    import cv2

    font, scale, row, bw, bh = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 16, 94, 3 * 16 + 8
    h, w = img.shape[:2]
    corners = [(2, h - 2 - bh), (w - 2 - bw, h - 2 - bh), (w - 2 - bw, 2), (2, 2)]
    x, y = min(corners, key=lambda c: _inside(points, c[0], c[1], bw, bh))
    box = img[max(0, y) : y + bh, max(0, x) : x + bw]
    box[:] = (box * 0.35).astype(np.uint8)
    for i, name in enumerate(("target", "tracked", "lost")):
        cy, x0 = y + 4 + i * row + row // 2, x + 4
        if i == 0:
            _dashed(img, np.array([[x0, cy], [x0 + 22, cy]], float), TARGET_BGR, dash=5, gap=3)
        elif i == 1:
            cv2.line(img, (x0, cy), (x0 + 22, cy), TRACKED_BGR, 2, cv2.LINE_AA)
        else:
            _cross(img, np.array([x0 + 11, cy]), LOST_BGR)
        cv2.putText(img, name, (x0 + 30, cy + 4), font, scale, (235, 235, 235), 1, cv2.LINE_AA)


def _inside(points: np.ndarray, x: int, y: int, w: int, h: int) -> int:
    px, py = points[:, 0], points[:, 1]
    return int(((px >= x) & (px < x + w) & (py >= y) & (py < y + h)).sum())


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []
