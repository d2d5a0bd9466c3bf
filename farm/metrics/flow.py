"""Dense optical flow between frame pairs: DIS on half-resolution grey frames."""

from __future__ import annotations

import cv2
import numpy as np

from farm.metrics.frames import Clip

PRESET = cv2.DISOPTICAL_FLOW_PRESET_FAST


class Flows:
    """Flow fields of a clip's half-size frames, computed on demand and cached."""

    def __init__(self, clip: Clip) -> None:
        self.clip = clip
        self._dis = cv2.DISOpticalFlow.create(PRESET)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, src: int, dst: int) -> np.ndarray:
        """Flow f on frame ``src`` such that half[src](x) ~ half[dst](x + f(x)), half-res px."""
        key = (src, dst)
        if key not in self._cache:
            half = self.clip.half
            self._cache[key] = self._dis.calc(half[src], half[dst], None)
        return self._cache[key]
