"""Corner tracks through a clip: goodFeaturesToTrack + pyramidal LK, forward-backward checked.

Corners are (re)seeded every ``RESEED`` frames, and whenever too few tracks survive; a
track ends at its first failed forward-backward check and is never revived.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from farm.metrics.frames import Clip

RESEED = 8
MAX_CORNERS = 200
FB_MAX_PX = 0.5
LK_WIN = (21, 21)
LK_LEVELS = 3
LK_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.03)


@dataclass(frozen=True)
class FeatureTracks:
    """``points[t, i]`` is track i's (x, y) at frame t, NaN where the track is absent."""

    points: np.ndarray

    def pair(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Points seen at both frame t-1 and frame t, as two (n, 2) arrays."""
        a, b = self.points[t - 1], self.points[t]
        ok = ~(np.isnan(a[:, 0]) | np.isnan(b[:, 0]))
        return a[ok], b[ok]


def track_features(clip: Clip) -> FeatureTracks:
    """Track corners through every frame of ``clip``."""
    n, (h, w) = len(clip), clip.gray[0].shape
    min_dist = max(4, min(w, h) // 40)
    history: list[dict[int, tuple[float, float]]] = [{} for _ in range(n)]
    ids = np.zeros(0, np.int64)
    pts = np.zeros((0, 2), np.float32)
    next_id = 0
    for t in range(n):
        if t > 0 and len(pts):
            ids, pts = _advance(clip, t, ids, pts, (w, h))
        if t % RESEED == 0 or len(pts) < MAX_CORNERS // 4:
            new = _seed(clip.gray_matched[t], pts, min_dist)
            ids = np.concatenate([ids, np.arange(next_id, next_id + len(new))])
            pts = np.concatenate([pts, new])
            next_id += len(new)
        history[t] = {int(i): (float(x), float(y)) for i, (x, y) in zip(ids, pts, strict=True)}
    points = np.full((n, next_id, 2), np.nan, np.float32)
    for t, seen in enumerate(history):
        for i, xy in seen.items():
            points[t, i] = xy
    return FeatureTracks(points)


def _seed(gray: np.ndarray, live: np.ndarray, min_dist: int) -> np.ndarray:
    room = MAX_CORNERS - len(live)
    if room <= 0:
        return np.zeros((0, 2), np.float32)
    mask = np.full(gray.shape, 255, np.uint8)
    for x, y in live:
        cv2.circle(mask, (round(float(x)), round(float(y))), min_dist, 0, -1)
    found = cv2.goodFeaturesToTrack(gray, room, 0.01, min_dist, mask=mask, blockSize=7)
    return np.zeros((0, 2), np.float32) if found is None else found.reshape(-1, 2)


def _advance(clip: Clip, t: int, ids: np.ndarray, pts: np.ndarray, size: tuple[int, int]):
    prev, cur = clip.gray_matched[t - 1], clip.gray_matched[t]
    kw = {"winSize": LK_WIN, "maxLevel": LK_LEVELS, "criteria": LK_CRITERIA}
    p0 = pts.reshape(-1, 1, 2)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **kw)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **kw)
    fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
    p1 = p1.reshape(-1, 2)
    inside = (p1[:, 0] >= 0) & (p1[:, 1] >= 0) & (p1[:, 0] < size[0]) & (p1[:, 1] < size[1])
    ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < FB_MAX_PX) & inside
    return ids[ok], p1[ok]
