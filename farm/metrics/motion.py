"""Motion smoothness from tracked corners, and VBench's dynamic degree on DIS flow."""

from __future__ import annotations

import math

import cv2
import numpy as np

from farm.metrics.features import FeatureTracks
from farm.metrics.flow import Flows
from farm.metrics.frames import Clip

SG_WINDOW, SG_ORDER = 7, 3
MOVING_PX = 0.5  # a track moves if its median speed (px/frame) is above this
MIN_MOVING_TRACKS = 3  # fewer moving tracks than this: smoothness is not judged


def savgol_weights(window: int = SG_WINDOW, order: int = SG_ORDER) -> np.ndarray:
    """Savitzky-Golay weights that smooth the centre sample of a ``window``."""
    x = np.arange(window) - window // 2
    basis = np.vander(x, order + 1, increasing=True)
    return np.linalg.pinv(basis)[0]


def motion_smoothness(tracks: FeatureTracks) -> tuple[float, dict]:
    """exp(-4 * median |p - smoothed(p)| / (median speed + 1)) over moving tracks.

    A track covers consecutive frames (it is never revived), so every track is smoothed at
    once along the time axis: a window that runs past a track's ends holds a NaN, and so
    does its result.
    """
    p = tracks.points.astype(np.float64)
    p = p[:, np.count_nonzero(~np.isnan(p[:, :, 0]), axis=0) >= SG_WINDOW]
    speed = np.linalg.norm(np.diff(p, axis=0), axis=2)
    if p.shape[1]:
        keep = np.nanmedian(speed, axis=0) > MOVING_PX
        p, speed = p[:, keep], speed[:, keep]
    moving = int(p.shape[1])
    if not moving:
        raw = {"moving_tracks": 0, "ratio": 0.0, "note": "static clip: no moving tracks"}
        return 1.0, raw
    if moving < MIN_MOVING_TRACKS:  # one or two tracks of a short clip are no evidence
        note = f"only {moving} moving track(s): too few to judge (needs {MIN_MOVING_TRACKS})"
        return 1.0, {"moving_tracks": moving, "ratio": 0.0, "note": note}
    n, half = len(p), SG_WINDOW // 2
    smooth = sum(w * p[k : n - SG_WINDOW + 1 + k] for k, w in enumerate(savgol_weights()))
    residuals = np.linalg.norm(p[half : n - half] - smooth, axis=2)
    residual = float(np.median(residuals[~np.isnan(residuals)]))
    speed = float(np.median(speed[~np.isnan(speed)]))
    ratio = residual / (speed + 1.0)
    raw = {
        "moving_tracks": moving,
        "median_residual_px": residual,
        "median_speed_px": speed,
        "ratio": ratio,
    }
    return math.exp(-4.0 * ratio), raw


def dynamic_degree(clip: Clip, flows: Flows) -> tuple[float, dict]:
    """VBench's rule: pairs every round(fps/8) frames; moving if top-5% flow > 6*min(H,W)/256;
    the clip is dynamic when round(4 * sampled / 16) pairs move. Score: the share of moving
    pairs (how much of the clip moves, not a quality: a still shot may be right at 0)."""
    step = max(1, round(clip.fps / 8)) if clip.fps > 0 else 1
    sampled = list(range(0, len(clip), step))
    threshold = 6.0 * min(clip.width, clip.height) / 256
    scale = clip.width / clip.half[0].shape[1]  # half-res px -> px
    magnitudes = []
    for a, b in zip(sampled, sampled[1:], strict=False):
        flow = flows.back(b, a)
        mag = cv2.magnitude(flow[..., 0], flow[..., 1]).ravel()
        top = np.partition(mag, int(0.95 * mag.size))[int(0.95 * mag.size) :]
        magnitudes.append(float(top.mean()) * scale)
    moving = sum(m > threshold for m in magnitudes)
    needed = round(4 * len(sampled) / 16)
    raw = {
        "dynamic": bool(magnitudes) and moving >= needed,
        "moving_pairs": moving,
        "pairs": len(magnitudes),
        "pairs_needed": needed,
        "threshold_px": threshold,
        "top5_flow_px_median": float(np.median(magnitudes)) if magnitudes else 0.0,
    }
    return (moving / len(magnitudes) if magnitudes else 0.0), raw
