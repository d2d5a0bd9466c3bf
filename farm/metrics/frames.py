"""A decoded clip reduced to what the metrics use, and the decoder that streams into it.

Each frame is kept as a full-size grey image (trajectory tracking, sharpness) and a small
BGR thumbnail (histograms, SSIM); half-size grey frames (corner tracks, dense flow,
luminance) are made from the grey ones on first use. Only the first and last frames are
kept in colour at full size (continuity across a cut), so a clip holds about half of its
decoded BGR size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from farm.errors import InvalidInput

THUMB_SIDE = 160  # longest side of the thumbnails used for SSIM and histograms


class Clip:
    """Grey frames, thumbnails and the end frames of one video (BGR ``frames`` in)."""

    def __init__(self, frames: Iterable[np.ndarray], fps: float, path: Path | None = None) -> None:
        self.fps, self.path = fps, path
        self.gray: list[np.ndarray] = []
        self.thumbs: list[np.ndarray] = []
        self.first = self.last = np.zeros((0, 0, 3), np.uint8)
        for frame in frames:
            if not self.gray:
                self.first = frame
                self.height, self.width = frame.shape[:2]
                self.thumb_scale = min(1.0, THUMB_SIDE / max(self.width, self.height))
            self.last = frame
            self.gray.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
            self.thumbs.append(fast_thumbnail(frame, self.thumb_scale))
        if not self.gray:
            raise ValueError("a clip needs at least one frame")

    def __len__(self) -> int:
        return len(self.gray)

    @cached_property
    def half(self) -> list[np.ndarray]:
        """Grey frames at half resolution (INTER_AREA)."""
        size = (max(1, self.width // 2), max(1, self.height // 2))
        return [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in self.gray]

    @cached_property
    def gain(self) -> np.ndarray:
        """(alpha, beta) per frame matching its grey mean and contrast to frame 0's."""
        stats = np.array([np.ravel(cv2.meanStdDev(h)) for h in self.half])
        alpha = stats[0, 1] / np.maximum(stats[:, 1], 1e-3)
        return np.stack([alpha, stats[0, 0] - alpha * stats[:, 0]], 1)

    @cached_property
    def half_matched(self) -> list[np.ndarray]:
        """Half-size grey frames with the :attr:`gain` applied, so LK ignores flicker."""
        return [self.matched(h, t) for t, h in enumerate(self.half)]

    def matched(self, img: np.ndarray, t: int) -> np.ndarray:
        """``img`` (a part of frame t's grey) with frame t's :attr:`gain` applied."""
        alpha, beta = self.gain[t]
        return cv2.convertScaleAbs(img, alpha=float(alpha), beta=float(beta))

    @cached_property
    def gray_thumbs(self) -> list[np.ndarray]:
        return [cv2.cvtColor(t, cv2.COLOR_BGR2GRAY) for t in self.thumbs]

    @cached_property
    def luma(self) -> np.ndarray:
        """Mean luminance of each frame."""
        return np.array([cv2.mean(h)[0] for h in self.half])


def thumbnail(frame: np.ndarray, scale: float) -> np.ndarray:
    """``frame`` scaled by ``scale`` (INTER_AREA), at least 8 px a side."""
    h, w = frame.shape[:2]
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def fast_thumbnail(frame: np.ndarray, scale: float) -> np.ndarray:
    """:func:`thumbnail` by exact halvings (OpenCV's fast INTER_AREA path), then a bilinear
    resize by a factor between 0.5 and 1: about 5x cheaper than INTER_AREA by a fraction."""
    while scale <= 0.5 and min(frame.shape[:2]) >= 32:
        h, w = frame.shape[:2]
        frame = cv2.resize(
            frame[: h - h % 2, : w - w % 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA
        )
        scale *= 2
    h, w = frame.shape[:2]
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)


def decode(path: Path) -> tuple[Iterator[np.ndarray], float]:
    """BGR frames of ``path`` as they are decoded, and its fps; InvalidInput when it is
    missing or unreadable. The decoder uses as many threads as OpenCV may
    (``cv2.setNumThreads``), so a worker pinned to one core decodes on one."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"video not found: {path}")
    params = [cv2.CAP_PROP_N_THREADS, max(1, cv2.getNumThreads())]
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        raise InvalidInput(f"cannot read video: {path}")
    return _frames(cap), float(cap.get(cv2.CAP_PROP_FPS) or 0.0)


def _frames(cap: cv2.VideoCapture) -> Iterator[np.ndarray]:
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def load_clip(path: Path, max_frames: int | None = None) -> Clip:
    """Decode ``path`` once into a :class:`Clip`; InvalidInput when it is missing,
    unreadable or holds no frame."""
    frames, fps = decode(path)
    if max_frames is not None:
        frames = (f for _, f in zip(range(max_frames), frames, strict=False))
    try:
        return Clip(frames, fps, Path(path))
    except ValueError:
        raise InvalidInput(f"cannot read video (no frames decoded): {path}") from None
