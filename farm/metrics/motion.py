"""Motion smoothness from tracked corners, and VBench's dynamic degree on DIS flow."""

from __future__ import annotations

import math

import numpy as np

from farm.metrics.features import FeatureTracks
from farm.metrics.flow import Flows
from farm.metrics.frames import Clip

SG_WINDOW, SG_ORDER = 7, 3
MOVING_PX = 0.5  # a track moves if its median speed (px/frame) is above this


def savgol_weights(window: int = SG_WINDOW, order: int = SG_ORDER) -> np.ndarray:
    """Savitzky-Golay weights that smooth the centre sample of a ``window``."""
    x = np.arange(window) - window // 2
    basis = np.vander(x, order + 1, increasing=True)
    return np.linalg.pinv(basis)[0]


def motion_smoothness(tracks: FeatureTracks) -> tuple[float, dict]:
    """exp(-4 * median |p - smoothed(p)| / (median speed + 1)) over moving tracks."""
    weights = savgol_weights()
    residuals, speeds, moving = [], [], 0
    for i in range(tracks.points.shape[1]):
        p = tracks.points[:, i]
        p = p[~np.isnan(p[:, 0])].astype(np.float64)
        if len(p) < SG_WINDOW:
            continue
        speed = np.linalg.norm(np.diff(p, axis=0), axis=1)
        if np.median(speed) <= MOVING_PX:
            continue
        smooth = np.stack([np.convolve(p[:, j], weights[::-1], "valid") for j in (0, 1)], 1)
        half = SG_WINDOW // 2
        residuals.append(np.linalg.norm(p[half:-half] - smooth, axis=1))
        speeds.append(speed)
        moving += 1
    if not moving:
        raw = {"moving_tracks": 0, "ratio": 0.0, "note": "static clip: no moving tracks"}
        return 1.0, raw
    residual = float(np.median(np.concatenate(residuals)))
    speed = float(np.median(np.concatenate(speeds)))
    ratio = residual / (speed + 1.0)
    raw = {
        "moving_tracks": moving,
        "median_residual_px": residual,
        "median_speed_px": speed,
        "ratio": ratio,
    }
    return math.exp(-4.0 * ratio), raw


def dynamic_degree(clip: Clip, flows: Flows) -> dict:
    """VBench's rule: pairs every round(fps/8) frames; moving if top-5% flow > 6*min(H,W)/256."""
    step = max(1, round(clip.fps / 8)) if clip.fps > 0 else 1
    sampled = list(range(0, len(clip), step))
    threshold = 6.0 * min(clip.width, clip.height) / 256
    magnitudes = []
    for a, b in zip(sampled, sampled[1:], strict=False):
        mag = np.linalg.norm(flows(b, a), axis=2).ravel() * 2.0  # half-res px -> px
        top = np.partition(mag, int(0.95 * mag.size))[int(0.95 * mag.size) :]
        magnitudes.append(float(top.mean()))
    moving = sum(m > threshold for m in magnitudes)
    needed = round(4 * len(sampled) / 16)
    return {
        "dynamic": bool(magnitudes) and moving >= needed,
        "moving_pairs": moving,
        "pairs": len(magnitudes),
        "pairs_needed": needed,
        "threshold_px": threshold,
    }
