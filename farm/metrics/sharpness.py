"""Sharpness: variance of the 3x3 Laplacian of every full-size grey frame.

A blur removes the fine detail the Laplacian responds to: on the synthetic 832x480 clip a
Gaussian blur of sigma 1 takes the variance from ~365 to ~43, sigma 2 to ~17. The score is
1 - exp(-mean variance / ``SCALE``): 0.5 at a variance of 35, 0.9 at 115. The variance
grows with contrast, fine texture and grain (noise raises it) and depends on resolution,
so it ranks takes of one shot better than it compares different shots.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from farm.metrics.frames import Clip

SCALE = 50.0


def laplacian_var(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of a grey image (E[x^2] - E[x]^2: twice as fast as
    ``meanStdDev`` on its 16-bit result)."""
    lap = cv2.Laplacian(gray, cv2.CV_16S)
    mean = cv2.sumElems(lap)[0] / lap.size
    return cv2.norm(lap, cv2.NORM_L2SQR) / lap.size - mean * mean


def sharpness(clip: Clip) -> tuple[float, dict]:
    """Score and raw values: mean and least Laplacian variance, and the least's frame."""
    values = np.array([laplacian_var(g) for g in clip.gray])
    least = int(np.argmin(values))
    raw = {
        "laplacian_var": float(values.mean()),
        "laplacian_var_min": float(values[least]),
        "min_frame": least,
    }
    return 1.0 - math.exp(-raw["laplacian_var"] / SCALE), raw
