"""A decoded clip and the per-frame intermediates every metric shares (computed once)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from farm.media import read_video

THUMB_SIDE = 160  # longest side of the thumbnails used for SSIM and histograms


class Clip:
    """BGR frames of one video plus lazily computed grey, half-size and thumbnail views."""

    def __init__(self, frames: list[np.ndarray], fps: float, path: Path | None = None) -> None:
        if not frames:
            raise ValueError("a clip needs at least one frame")
        self.frames = frames
        self.fps = fps
        self.path = path
        self.height, self.width = frames[0].shape[:2]

    def __len__(self) -> int:
        return len(self.frames)

    @cached_property
    def gray(self) -> list[np.ndarray]:
        return [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in self.frames]

    @cached_property
    def gray_matched(self) -> list[np.ndarray]:
        """Grey frames with mean and contrast matched to frame 0, so LK ignores flicker."""
        m0, s0 = cv2.meanStdDev(self.gray[0])
        out = []
        for g in self.gray:
            m, s = cv2.meanStdDev(g)
            alpha = float(s0[0, 0] / max(s[0, 0], 1e-3))
            out.append(cv2.convertScaleAbs(g, alpha=alpha, beta=float(m0[0, 0] - alpha * m[0, 0])))
        return out

    @cached_property
    def half(self) -> list[np.ndarray]:
        """Grey frames at half resolution (INTER_AREA)."""
        size = (max(1, self.width // 2), max(1, self.height // 2))
        return [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in self.gray]

    @cached_property
    def thumb_scale(self) -> float:
        return min(1.0, THUMB_SIDE / max(self.width, self.height))

    @cached_property
    def thumbs(self) -> list[np.ndarray]:
        """Small BGR frames for histograms and SSIM."""
        return [thumbnail(f, self.thumb_scale) for f in self.frames]

    @cached_property
    def luma(self) -> np.ndarray:
        """Mean luminance of each frame."""
        return np.array([float(g.mean()) for g in self.half])


def thumbnail(frame: np.ndarray, scale: float) -> np.ndarray:
    h, w = frame.shape[:2]
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def load_clip(path: Path, max_frames: int | None = None) -> Clip:
    """Decode ``path`` once; InvalidInput when it is missing or unreadable."""
    frames, fps = read_video(Path(path), max_frames)
    return Clip(frames, fps, Path(path))
