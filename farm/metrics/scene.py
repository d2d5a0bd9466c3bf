"""Score a scene: every shot, plus continuity across each cut from one shot to the next.

Continuity compares the last frame of shot A with the first frame of shot B: HSV-histogram
correlation, the shift of mean CIE Lab colour (Delta E 76) and thumbnail SSIM. Its score
weighs colour over structure, since a cut is expected to change what is on screen:
0.4 * max(0, hist) + 0.4 * exp(-shift / 20) + 0.2 * max(0, ssim).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from farm.errors import InvalidInput
from farm.metrics.clip import score_loaded
from farm.metrics.frames import THUMB_SIDE, load_clip, thumbnail
from farm.metrics.image import gray, hist_corr, hsv_hist, mean_lab, ssim

LAB_SCALE = 20.0


def continuity(last: np.ndarray, first: np.ndarray) -> dict[str, float]:
    """How well ``first`` (BGR) follows ``last`` (BGR) across a cut."""
    a = thumbnail(last, min(1.0, THUMB_SIDE / max(last.shape[:2])))
    b = cv2.resize(first, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    hist = hist_corr(hsv_hist(a), hsv_hist(b))
    shift = float(np.linalg.norm(mean_lab(last) - mean_lab(first)))
    structure = ssim(gray(a), gray(b))
    score = 0.4 * max(0.0, hist) + 0.4 * math.exp(-shift / LAB_SCALE) + 0.2 * max(0.0, structure)
    return {"hist_corr": hist, "lab_shift": shift, "ssim": structure, "score": score}


def score_scene(shots: list[dict[str, Any]]) -> dict[str, Any]:
    """Score each shot ``{"id", "path", "trajectories"?, "canvas"?}`` and the cuts between."""
    start = time.perf_counter()
    results, ends = [], []
    for i, shot in enumerate(shots):
        shot_id = shot.get("id", str(i))
        if not shot.get("path"):
            raise InvalidInput(f"shot {shot_id}: no clip path")
        try:
            clip = load_clip(Path(shot["path"]))
        except InvalidInput as exc:
            raise InvalidInput(f"shot {shot_id}: {exc}") from None
        canvas = tuple(shot["canvas"]) if shot.get("canvas") else None
        result = score_loaded(clip, shot.get("trajectories"), canvas)
        results.append({"id": shot_id, "path": str(shot["path"]), **result})
        ends.append((clip.first, clip.last))
        del clip
    links = [
        {"from": a["id"], "to": b["id"], **continuity(ends[i][1], ends[i + 1][0])}
        for i, (a, b) in enumerate(zip(results, results[1:], strict=False))
    ]
    return {
        "shots": results,
        "continuity": links,
        "summary": summary(results, links),
        "seconds": round(time.perf_counter() - start, 4),
    }


def summary(results: list[dict], links: list[dict]) -> dict[str, float]:
    """Mean of each score over the shots that have it, and of continuity over the cuts."""
    names = sorted({name for r in results for name in r["scores"]})
    summary = {
        name: float(np.mean([r["scores"][name] for r in results if name in r["scores"]]))
        for name in names
    }
    if links:
        summary["continuity"] = float(np.mean([link["score"] for link in links]))
    return summary
