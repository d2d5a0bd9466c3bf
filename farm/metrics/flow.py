"""Dense optical flow between frame pairs: DIS on half-resolution grey frames."""

from __future__ import annotations

from functools import cached_property

import cv2
import numpy as np

from farm.metrics.frames import Clip

PRESET = cv2.DISOPTICAL_FLOW_PRESET_FAST
REPLICATE = cv2.BORDER_REPLICATE


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

    @cached_property
    def grid(self) -> np.ndarray:
        """(h, w, 2) pixel coordinates of a half-size frame: ``grid + flow`` is a remap map."""
        h, w = self.clip.half[0].shape
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        return np.dstack([xs, ys])

    def back(self, src: int, dst: int) -> np.ndarray:
        """Flow from frame ``src`` back to an earlier frame ``dst``, chained from the
        consecutive flows ``self(t, t - 1)`` (each computed once and shared)."""
        flow = self(src, src - 1)
        for t in range(src - 1, dst, -1):
            where = self.grid + flow
            step = cv2.remap(self(t, t - 1), where, None, cv2.INTER_LINEAR, borderMode=REPLICATE)
            flow = flow + step
        return flow
