"""Visual consistency and cut detection.

Per frame t >= 1: HSV-histogram correlation with the first frame, and SSIM of the
thumbnail with the previous thumbnail warped by the global motion (a similarity
transform fitted to the corner tracks with RANSAC). The score is the mean over t of
(max(0, hist_to_first) + max(0, ssim_to_previous)) / 2, the shape of VBench's formula,
halved for every cut. A cut is a frame whose SSIM or histogram correlation with the
previous frame is below ``CUT_BELOW``. A shot is one continuous take (cuts are between
shots), so a cut inside a clip is a defect wherever it falls; without the halving, a
clip cut in two still averages about 0.96, since each half is consistent with itself.
"""

from __future__ import annotations

import cv2
import numpy as np

from farm.metrics.features import FeatureTracks
from farm.metrics.frames import Clip
from farm.metrics.image import hist_corr, hsv_hist, ssim

CUT_BELOW = 0.5
CUT_FACTOR = 0.5  # the score is multiplied by this for every cut
MIN_POINTS = 6
BORDER = 3  # thumbnail pixels of the warped frame's edge left out of SSIM


def global_motion(tracks: FeatureTracks, t: int) -> np.ndarray | None:
    """2x3 similarity transform taking frame t-1 to frame t, or None when unknown."""
    a, b = tracks.pair(t)
    if len(a) < MIN_POINTS:
        return None
    m, inliers = cv2.estimateAffinePartial2D(a, b, method=cv2.RANSAC, ransacReprojThreshold=2.0)
    if m is None or inliers is None or int(inliers.sum()) < MIN_POINTS:
        return None
    return m


def compensated_ssim(clip: Clip, tracks: FeatureTracks, t: int) -> float:
    """SSIM of thumbnail t with thumbnail t-1 moved by the global motion."""
    prev, cur = clip.gray_thumbs[t - 1], clip.gray_thumbs[t]
    m = global_motion(tracks, t)
    if m is None:
        return ssim(prev, cur)
    m = m.copy()
    m[:, 2] *= clip.thumb_scale
    h, w = cur.shape
    warped = cv2.warpAffine(prev, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.full((h, w), 255, np.uint8), m, (w, h))
    valid = cv2.erode(valid, np.ones((2 * BORDER + 1, 2 * BORDER + 1), np.uint8)) > 0
    return ssim(warped, cur, valid)


def visual_consistency(clip: Clip, tracks: FeatureTracks) -> tuple[float, dict, list[int]]:
    """Score, raw values and cut candidates (indices of the first frame after a cut)."""
    if len(clip) < 2:
        return 1.0, {"cuts": 0, "hist_to_first_mean": 1.0, "ssim_to_prev_mean": 1.0}, []
    hists = [hsv_hist(t) for t in clip.thumbs]
    to_first = np.array([hist_corr(hists[0], h) for h in hists[1:]])
    to_prev = np.array([hist_corr(a, b) for a, b in zip(hists, hists[1:], strict=False)])
    ssims = np.array([compensated_ssim(clip, tracks, t) for t in range(1, len(clip))])
    per_frame = (np.clip(to_first, 0, 1) + np.clip(ssims, 0, 1)) / 2
    cuts = [int(t) + 1 for t in np.flatnonzero((ssims < CUT_BELOW) | (to_prev < CUT_BELOW))]
    uncut = float(per_frame.mean())
    raw = {
        "cuts": len(cuts),
        "score_without_cuts": uncut,
        "hist_to_first_mean": float(to_first.mean()),
        "hist_to_first_min": float(to_first.min()),
        "hist_to_prev_min": float(to_prev.min()),
        "ssim_to_prev_mean": float(ssims.mean()),
        "ssim_to_prev_min": float(ssims.min()),
    }
    return uncut * CUT_FACTOR ** len(cuts), raw, cuts
