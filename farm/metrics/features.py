"""Corner tracks through a clip: goodFeaturesToTrack + pyramidal LK, forward-backward checked.

Tracking runs on the half-size, gain-matched grey frames (a quarter of the pixels; LK
stays sub-pixel there) and the points are returned in full-size pixels. Corners are
(re)seeded every ``RESEED`` frames, and whenever too few tracks survive; a track ends at
its first failed forward-backward check and is never revived.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from farm.metrics.frames import Clip

RESEED = 8
MAX_CORNERS = 200
FB_MAX_PX = 0.25  # half-size px: 0.5 px at full size
LK_WIN = (11, 11)  # half-size px: 21 px at full size
LK_LEVELS = 2
LK_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.03)


@dataclass(frozen=True)
class FeatureTracks:
    """``points[t, i]`` is track i's (x, y) at frame t in clip pixels, NaN where absent."""

    points: np.ndarray

    def pair(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Points seen at both frame t-1 and frame t, as two (n, 2) arrays."""
        a, b = self.points[t - 1], self.points[t]
        ok = ~(np.isnan(a[:, 0]) | np.isnan(b[:, 0]))
        return a[ok], b[ok]


def track_features(clip: Clip) -> FeatureTracks:
    """Track corners through every frame of ``clip``."""
    frames = clip.half_matched
    h, w = frames[0].shape
    min_dist = max(2, min(w, h) // 40)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    ids, pts = np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
    next_id = 0
    for t, frame in enumerate(frames):
        if t > 0 and len(pts):
            ids, pts = _advance(frames[t - 1], frame, ids, pts)
        if t % RESEED == 0 or len(pts) < MAX_CORNERS // 4:
            new = _seed(frame, pts, min_dist)
            ids = np.concatenate([ids, np.arange(next_id, next_id + len(new))])
            pts = np.concatenate([pts, new])
            next_id += len(new)
        seen.append((ids, pts))
    points = np.full((len(frames), next_id, 2), np.nan, np.float32)
    for t, (i, p) in enumerate(seen):
        points[t, i] = p
    # half-size pixel centres -> full-size pixel centres
    scale = np.array([clip.width / w, clip.height / h], np.float32)
    return FeatureTracks((points + 0.5) * scale - 0.5)


def _seed(gray: np.ndarray, live: np.ndarray, min_dist: int) -> np.ndarray:
    room = MAX_CORNERS - len(live)
    if room <= 0:
        return np.zeros((0, 2), np.float32)
    mask = np.full(gray.shape, 255, np.uint8)
    for x, y in np.rint(live).astype(np.int32):
        cv2.circle(mask, (int(x), int(y)), min_dist, 0, -1)
    found = cv2.goodFeaturesToTrack(gray, room, 0.01, min_dist, mask=mask, blockSize=5)
    return np.zeros((0, 2), np.float32) if found is None else found.reshape(-1, 2)


def _advance(prev: np.ndarray, cur: np.ndarray, ids: np.ndarray, pts: np.ndarray):
    kw = {"winSize": LK_WIN, "maxLevel": LK_LEVELS, "criteria": LK_CRITERIA}
    p0 = pts.reshape(-1, 1, 2)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **kw)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **kw)
    fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
    p1 = p1.reshape(-1, 2)
    h, w = cur.shape
    inside = (p1[:, 0] >= 0) & (p1[:, 1] >= 0) & (p1[:, 0] < w) & (p1[:, 1] < h)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < FB_MAX_PX) & inside
    return ids[ok], p1[ok]
