"""Trajectory adherence: does the object at each track's first point follow the track?

Each object is followed frame to frame by an NCC template search (31x31 template, window
sized from the target's speed, never centred on the target) refined to sub-pixel by LK
when LK lands within 3 px of the NCC hit; a peak below 0.5 marks the frame lost. Errors
against the targets of :func:`farm.trajectory.track_at` give TAP-Vid's delta_avg (errors
mapped to a 256x256 frame; the share within 1, 2, 4, 8 and 16 px, averaged), which is the
score, plus ObjMC (mean error) in pixels and divided by the frame diagonal. Frame 0 (where
tracking starts) and targets outside the frame are not scored; lost frames count as misses
for delta_avg and at their last known position for ObjMC.
The paths themselves (target, tracked, lost frames) are returned for drawing.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from farm.metrics.frames import Clip
from farm.trajectory import Track, track_at

TEMPLATE = 31
LK_WIN = (21, 21)
LK_MARGIN = 2 * LK_WIN[0] + 8  # px around the points of the patch LK refines in
LOST_BELOW = 0.5
LK_ACCEPT_PX = 3.0
THRESHOLDS = (1, 2, 4, 8, 16)
TAPVID_SIDE = 256


def targets(track: Track, frames: int, scale: tuple[float, float]) -> np.ndarray:
    """Expected (x, y) of the track in each frame, in clip pixels."""
    pts = np.array([track_at(track, k, frames) for k in range(frames)], np.float64)
    return pts * np.asarray(scale)


def follow(clip: Clip, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Track the object from ``target[0]``; return positions (n, 2) and a lost flag per frame."""
    n = len(clip)
    pos = np.zeros((n, 2), np.float64)
    lost = np.zeros(n, bool)
    ref, ref_pos = 0, target[0].copy()
    pos[0] = ref_pos
    for k in range(1, n):
        speed = float(np.linalg.norm(target[k] - target[k - 1]))
        radius = int(math.ceil(2 * speed)) + 8 + 2 * (k - 1 - ref)
        hit, peak = _ncc(clip.gray[ref], clip.gray[k], ref_pos, radius)
        if peak < LOST_BELOW:
            lost[k], pos[k] = True, ref_pos
            continue
        pos[k] = _refine(clip, ref, k, ref_pos, hit)
        ref, ref_pos = k, pos[k]
    return pos, lost


def _ncc(prev: np.ndarray, cur: np.ndarray, at: np.ndarray, radius: int) -> tuple:
    centre = (float(at[0]), float(at[1]))
    tmpl = cv2.getRectSubPix(prev, (TEMPLATE, TEMPLATE), centre)
    side = TEMPLATE + 2 * radius
    region = cv2.getRectSubPix(cur, (side, side), centre)
    res = cv2.matchTemplate(region, tmpl, cv2.TM_CCOEFF_NORMED)
    _, peak, _, loc = cv2.minMaxLoc(res)
    return at + np.array(loc, np.float64) - radius, float(peak)


def _refine(clip: Clip, ref: int, k: int, ref_pos: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """LK from ``ref_pos`` in frame ``ref`` to near ``hit`` in frame k, on the gain-matched
    patch of both frames that holds the two points (an even corner keeps LK's pyramid
    levels aligned with the whole frame's)."""
    lo = np.maximum(np.floor(np.minimum(ref_pos, hit)).astype(int) - LK_MARGIN, 0) & ~1
    hi = np.maximum(np.ceil(np.maximum(ref_pos, hit)).astype(int) + LK_MARGIN, 0)
    box = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    if min(clip.gray[k][box].shape) < LK_WIN[0]:
        return hit  # the points are off the frame: nothing to refine on
    prev, cur = clip.matched(clip.gray[ref][box], ref), clip.matched(clip.gray[k][box], k)
    p0 = (ref_pos - lo).reshape(1, 1, 2).astype(np.float32)
    guess = (hit - lo).reshape(1, 1, 2).astype(np.float32)
    p1, st, _ = cv2.calcOpticalFlowPyrLK(
        prev, cur, p0, guess, winSize=LK_WIN, maxLevel=1, flags=cv2.OPTFLOW_USE_INITIAL_FLOW
    )
    p1 = p1.reshape(2).astype(np.float64) + lo
    if st[0, 0] == 1 and np.linalg.norm(p1 - hit) <= LK_ACCEPT_PX:
        return p1
    return hit


def trajectory_adherence(
    clip: Clip, tracks: list[Track], canvas: tuple[int, int] | None = None
) -> tuple[float | None, dict, list[dict]]:
    """delta_avg score (None when no target point is visible), raw values, and per track
    ``{"target", "tracked", "lost"}``: positions per frame in clip pixels (0.1 px) and
    the indices of the frames where the object was lost."""
    w, h = clip.width, clip.height
    cw, ch = canvas or (w, h)
    scale = (w / cw, h / ch)
    errors_256, errors_px, lost_all, paths = [], [], [], []
    for track in tracks:
        target = targets(track, len(clip), scale)
        pos, lost = follow(clip, target)
        paths.append(path_record(target, pos, lost))
        d = pos - target
        visible = (target[:, 0] >= 0) & (target[:, 0] < w) & (target[:, 1] >= 0)
        visible &= target[:, 1] < h
        visible[0] = False
        err = np.hypot(d[:, 0] * TAPVID_SIDE / w, d[:, 1] * TAPVID_SIDE / h)
        errors_256.append(np.where(lost, np.inf, err)[visible])
        errors_px.append(np.hypot(d[:, 0], d[:, 1])[visible])
        lost_all.append(lost[visible])
    e256 = np.concatenate(errors_256) if errors_256 else np.zeros(0)
    if e256.size == 0:
        raw = {"tracks": len(tracks), "points": 0, "note": "no visible target points"}
        return None, raw, paths
    epx, lost = np.concatenate(errors_px), np.concatenate(lost_all)
    within = {f"within_{t}px": float((e256 < t).mean()) for t in THRESHOLDS}
    delta = float(np.mean(list(within.values())))
    objmc = float(epx.mean())
    raw = {
        "tracks": len(tracks),
        "points": int(e256.size),
        "delta_avg": delta,
        **within,
        "objmc_px": objmc,
        "objmc_norm": objmc / math.hypot(w, h),
        "lost_fraction": float(lost.mean()),
    }
    return delta, raw, paths


def path_record(target: np.ndarray, tracked: np.ndarray, lost: np.ndarray) -> dict:
    """One track's paths for a report, JSON-ready, coordinates rounded to 0.1 px."""
    return {
        "target": np.round(target, 1).tolist(),
        "tracked": np.round(tracked, 1).tolist(),
        "lost": np.flatnonzero(lost).tolist(),
    }
