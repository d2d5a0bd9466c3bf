"""Small image comparisons shared by the consistency and continuity metrics."""

from __future__ import annotations

import cv2
import numpy as np

SSIM_WIN = (7, 7)
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
HIST_BINS = [16, 8, 8]


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two grey images (box window)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    mu_a, mu_b = cv2.blur(a, SSIM_WIN), cv2.blur(b, SSIM_WIN)
    var_a = cv2.blur(a * a, SSIM_WIN) - mu_a * mu_a
    var_b = cv2.blur(b * b, SSIM_WIN) - mu_b * mu_b
    cov = cv2.blur(a * b, SSIM_WIN) - mu_a * mu_b
    num = (2 * mu_a * mu_b + C1) * (2 * cov + C2)
    return num / ((mu_a * mu_a + mu_b * mu_b + C1) * (var_a + var_b + C2))


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM of two grey images, over ``mask`` when given."""
    m = ssim_map(a, b)
    if mask is not None and mask.any():
        return float(m[mask].mean())
    return float(m.mean())


def gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img


def hsv_hist(img: np.ndarray) -> np.ndarray:
    """Normalised 3-D HSV histogram of a BGR image."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, HIST_BINS, [0, 180, 0, 256, 0, 256])
    return cv2.normalize(hist, None, 1.0, 0.0, cv2.NORM_L1)


def hist_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation (-1..1) of two histograms from :func:`hsv_hist`."""
    return float(cv2.compareHist(a, b, cv2.HISTCMP_CORREL))


def mean_lab(img: np.ndarray) -> np.ndarray:
    """Mean CIE L*a*b* colour of a BGR image (L in 0..100)."""
    lab = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    return lab.reshape(-1, 3).mean(axis=0)
