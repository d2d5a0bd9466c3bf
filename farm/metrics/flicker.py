"""Temporal flicker: luminance pumping and motion-compensated warping error.

The combined ``temporal_flicker`` score is the minimum of the two: either defect alone
(brightness pumping, or texture that boils under motion compensation) makes a clip flicker.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from farm.metrics.flow import Flows
from farm.metrics.frames import Clip

TRIM = 0.05  # fraction of the largest warping errors (occlusions) left out of the mean


def pumping(luma: np.ndarray) -> tuple[float, float]:
    """Score exp(-index/2) and index mean |L[t+1] - 2 L[t] + L[t-1]| / 2."""
    if len(luma) < 3:
        return 1.0, 0.0
    index = float(np.abs(np.diff(luma, 2)).mean() / 2)
    return math.exp(-index / 2), index


def warping_error(clip: Clip, flows: Flows) -> tuple[float, float]:
    """Score (255 - e)/255 and e, the trimmed mean |F[t+1] - warp(F[t])| on half-size grey."""
    if len(clip) < 2:
        return 1.0, 0.0
    h, w = clip.half[0].shape
    errors = []
    for t in range(len(clip) - 1):
        where = flows.grid + flows(t + 1, t)
        warped = cv2.remap(clip.half[t], where, None, cv2.INTER_LINEAR)
        inside = cv2.inRange(where, (0.0, 0.0), (w - 1.0, h - 1.0))
        diff = cv2.absdiff(clip.half[t + 1], warped)
        errors.append(trimmed_mean(cv2.calcHist([diff], [0], inside, [256], [0, 256]).ravel()))
    error = float(np.mean(errors))
    return (255.0 - error) / 255.0, error


def trimmed_mean(counts: np.ndarray) -> float:
    """Mean of the values 0..255 counted in ``counts``, without the largest ``TRIM``."""
    counts = counts.astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    keep = total * (1 - TRIM)
    kept = np.minimum(counts, np.maximum(keep - (np.cumsum(counts) - counts), 0))
    return float((kept * np.arange(256)).sum() / max(kept.sum(), 1.0))


def temporal_flicker(clip: Clip, flows: Flows) -> tuple[float, dict]:
    pump_score, index = pumping(clip.luma)
    warp_score, error = warping_error(clip, flows)
    raw = {
        "pumping_index": index,
        "pumping_score": pump_score,
        "warping_error": error,
        "warping_score": warp_score,
    }
    return min(pump_score, warp_score), raw
