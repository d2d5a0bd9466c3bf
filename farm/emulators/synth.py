"""Synthetic "generation": real, deterministic video made on the CPU for emulated GPU nodes.

A clip is a seeded, non-periodic textured background (or the start image) seen through a
camera that follows the moves named in the prompt, one textured disk per trajectory (or
one on a seeded curve), the prompt in a banner at the top, and a little sensor noise.
With a start image, frame 0 is that image (under the banner, without noise). With a start
image and trajectories (Wan ATI), the subject under each track's first point is what moves:
it is lifted out of the picture, the place it leaves is filled in from its surroundings,
and it travels along its track, as ATI moves a subject rather than copying it.
The same :class:`ClipSpec` always gives the same frames.
"""

from __future__ import annotations

import hashlib
import math
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from statistics import NormalDist

import cv2
import numpy as np

from farm.trajectory import track_at

#: move name -> phrases that ask for it (the scene's camera phrase first, then short forms)
CAMERA_MOVES: dict[str, tuple[str, ...]] = {
    "zoom_in": ("slow zoom in, approaching subject", "zoom in", "zooms in"),
    "zoom_out": ("zoom out, revealing wider scene", "zoom out", "zooms out"),
    "pan_left": ("camera pans left, smooth movement", "pan left", "pans left"),
    "pan_right": ("camera pans right, following action", "pan right", "pans right"),
    "tilt_up": ("camera tilts up, low angle shot", "tilt up", "tilts up"),
    "tilt_down": ("camera tilts down, high angle shot", "tilt down", "tilts down"),
    "tracking": ("tracking shot, following subject movement", "tracking shot"),
    "dolly_forward": ("dolly forward, smooth camera approach", "dolly forward", "dolly in"),
    "dolly_back": ("dolly back, camera pulls away", "dolly back", "dolly out"),
}

PAN = 0.2  # total pan or tilt over a clip, as a fraction of the frame
ZOOM = 1.3  # total zoom factor over a clip
DOLLY = 1.25  # total dolly factor over a clip (eased)
MARGIN = 0.35  # texture margin around the canvas, as a fraction of the frame
NOISE_SIGMA = 2.0
#: uniform byte -> Gaussian noise value (inverse CDF), so a frame's noise costs one byte a sample
NOISE_LUT = np.array(
    [round(NormalDist(0, NOISE_SIGMA).inv_cdf((b + 0.5) / 256)) for b in range(256)], np.int16
)


@dataclass(frozen=True)
class ClipSpec:
    """Everything a synthetic clip depends on; tracks are in output-frame pixels."""

    width: int
    height: int
    frames: int
    fps: float
    seed: int
    prompt: str
    tracks: tuple[tuple[tuple[float, float], ...], ...] = ()
    start_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    shake: float = 0.0  # camera shake: a seeded random offset of up to +-shake px per frame


def camera_moves(prompt: str) -> list[str]:
    """Camera moves named in ``prompt``, in the order they appear."""
    text = " ".join(prompt.lower().split())
    found: list[tuple[int, str]] = []
    for move, phrases in CAMERA_MOVES.items():
        hits = [m.start() for p in phrases for m in re.finditer(rf"\b{re.escape(p)}\b", text)]
        if hits:
            found.append((min(hits), move))
    return [move for _, move in sorted(found)]


def synthesize(spec: ClipSpec) -> Iterator[np.ndarray]:
    """Yield the ``spec.frames`` BGR frames of the clip, one at a time."""
    renderer = _Renderer(spec)
    for k in range(spec.frames):
        yield renderer.frame(k)


def preview(spec: ClipSpec, step: int, total_steps: int, max_side: int = 256) -> np.ndarray:
    """A small denoising-style preview of the middle frame at ``step`` of ``total_steps``."""
    frame = _Renderer(spec).frame(spec.frames // 2)
    scale = min(1.0, max_side / max(spec.width, spec.height))
    size = (max(1, round(spec.width * scale)), max(1, round(spec.height * scale)))
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    t = math.sqrt(min(max(step / total_steps, 0.0), 1.0)) if total_steps > 0 else 1.0
    if t < 1.0:
        small = cv2.GaussianBlur(small, (0, 0), 0.3 + 3.0 * (1.0 - t))
    noise = _smooth_noise(_rng(spec.seed, "preview"), (size[1], size[0], 3), (1, 4)) * 60 + 128
    return np.clip(t * small + (1.0 - t) * noise, 0, 255).astype(np.uint8)


def _rng(seed: int, *salt: str | int) -> np.random.Generator:
    key = hashlib.sha256(repr((seed, salt)).encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:8], "little"))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: tuple) -> np.ndarray:
    """Multi-octave value noise (not periodic) with unit standard deviation."""
    h, w = shape[:2]
    total = np.zeros(shape, np.float32)
    for cell in cells:
        grid = rng.standard_normal((h // cell + 3, w // cell + 3, *shape[2:]), np.float32)
        up = cv2.resize(grid, (w + 3 * cell, h + 3 * cell), interpolation=cv2.INTER_CUBIC)
        total += up[cell : cell + h, cell : cell + w].reshape(shape) * cell**0.5
    return total / max(float(total.std()), 1e-6)


def _palette(prompt: str) -> np.ndarray:
    """Four BGR colours (float32) derived from the prompt text."""
    digest = hashlib.sha256(prompt.encode()).digest()
    hue = digest[0] / 255 * 180
    hsv = np.array(
        [
            [
                [hue, 140, 150],
                [(hue + 25) % 180, 120, 80],
                [(hue + 70) % 180, 160, 190],
                [(hue + 90) % 180, 200, 230],
            ]
        ],  # fmt: skip
        np.uint8,
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0].astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int, colours: np.ndarray) -> np.ndarray:
    """Colour gradient and blobs (made at 1/8 size), plus fine full-size detail."""
    sh, sw = h // 8 + 2, w // 8 + 2
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    g = xx * math.cos(angle) / sw + yy * math.sin(angle) / sh
    g = ((g - g.min()) / max(float(np.ptp(g)), 1e-6))[..., None]
    low = colours[0] * (1 - g) + colours[1] * g
    blobs = np.clip(0.5 + 0.35 * _smooth_noise(rng, (sh, sw), (12, 6)), 0, 1)[..., None]
    low += (colours[2] - low) * blobs * 0.7
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    img += 22 * _smooth_noise(rng, (h, w), (12, 6, 3))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _cover(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize ``image`` to fill w x h, cropping the overflow (centred)."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    ih, iw = image.shape[:2]
    scale = max(w / iw, h / ih)
    size = (max(w, math.ceil(iw * scale)), max(h, math.ceil(ih * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    big = cv2.resize(image[..., :3], size, interpolation=interp)
    x0, y0 = (size[0] - w) // 2, (size[1] - h) // 2
    return np.ascontiguousarray(big[y0 : y0 + h, x0 : x0 + w])


class _Renderer:
    """Precomputes the texture, sprites, paths and noise of a clip; renders any frame."""

    def __init__(self, spec: ClipSpec) -> None:
        if spec.width < 8 or spec.height < 8 or spec.frames < 1:
            raise ValueError(f"bad clip size {spec.width}x{spec.height}x{spec.frames}")
        self.spec = spec
        w, h = spec.width, spec.height
        rng = _rng(spec.seed, "content")
        colours = _palette(spec.prompt)
        self.mx, self.my = math.ceil(MARGIN * w), math.ceil(MARGIN * h)
        self.start = None if spec.start_image is None else _cover(spec.start_image, w, h)
        if self.start is None:
            self.texture = _background(rng, h + 2 * self.my, w + 2 * self.mx, colours)
        self.banner = _banner(spec.prompt, w, h)
        self.radius = max(4, round(min(w, h) / 10))
        self.paths = self._paths(rng)
        if self.start is not None:
            scenery = self.start
            if spec.tracks:  # trajectory control moves the subjects: what was behind them shows
                scenery = _without(self.start, [p[0] for p in self.paths], self.radius + 2)
            self.texture = cv2.copyMakeBorder(
                scenery, self.my, self.my, self.mx, self.mx, cv2.BORDER_REFLECT_101
            )
        self.sprites = [self._sprite(rng, colours, path[0]) for path in self.paths]
        self.alpha = _disk_alpha(self.radius)
        self.moves = camera_moves(spec.prompt)
        self.cameras = [self._camera(k) for k in range(spec.frames)]

    def _paths(self, rng: np.random.Generator) -> list[np.ndarray]:
        n, w, h = self.spec.frames, self.spec.width, self.spec.height
        if self.spec.tracks:
            return [
                np.array([track_at(list(track), k, n) for k in range(n)], np.float64)
                for track in self.spec.tracks
            ]
        t = np.linspace(0.0, 1.0, n)
        top = (self.banner.shape[0] if self.banner is not None else 0) + self.radius
        cx = rng.uniform(0.4, 0.6) * w
        cy = top + rng.uniform(0.4, 0.6) * (h - top)
        fx, fy = rng.uniform(0.4, 0.8, 2)
        px, py = rng.uniform(0, 2 * np.pi, 2)
        x = cx + 0.18 * w * (np.sin(2 * np.pi * fx * t + px) - math.sin(px))
        y = cy + 0.18 * h * (np.sin(2 * np.pi * fy * t + py) - math.sin(py))
        lo = 1.5 * self.radius
        x = np.clip(x, lo, w - lo)
        y = np.clip(y, top + self.radius * 0.5, h - lo)
        return [np.stack([x, y], axis=1)]

    def _sprite(self, rng: np.random.Generator, colours: np.ndarray, at) -> np.ndarray:
        size = 2 * self.radius + 5
        if self.start is not None:
            if not self.spec.tracks:  # image-to-video: a part of the picture comes alive
                centre = (float(round(at[0])), float(round(at[1])))
                return cv2.getRectSubPix(self.start, (size, size), centre)
            # trajectory control: the subject under the track's first point is what moves, lifted
            # from its surroundings (contrast and a rim) as a generated subject is
            patch = cv2.getRectSubPix(self.start, (size, size), (float(at[0]), float(at[1])))
            mean = patch.astype(np.float32).mean(axis=(0, 1))
            img = (patch.astype(np.float32) - mean) * 1.8 + mean + 25
        else:
            tex = _smooth_noise(rng, (size, size), (max(2, self.radius // 3), 2))[..., None]
            img = colours[3] + 45 * tex + 30 * _smooth_noise(rng, (size, size, 3), (3,))
        yy, xx = np.mgrid[0:size, 0:size] - size // 2
        rim = np.abs(np.hypot(xx, yy) - self.radius + 1.5) < max(1.0, self.radius / 10)
        img[rim] = 20
        return np.clip(img, 0, 255).astype(np.uint8)

    def _camera(self, k: int) -> np.ndarray | None:
        """Inverse affine map output pixel -> texture pixel for frame k (None: no move)."""
        spec = self.spec
        t = k / (spec.frames - 1) if spec.frames > 1 else 0.0
        ease = t * t * (3 - 2 * t)
        scale, dx, dy = 1.0, 0.0, 0.0
        for move in self.moves:
            if move == "zoom_in":
                scale *= ZOOM**t
            elif move == "zoom_out":
                scale /= ZOOM**t
            elif move == "dolly_forward":
                scale *= 1 + (DOLLY - 1) * ease
            elif move == "dolly_back":
                scale /= 1 + (DOLLY - 1) * ease
            elif move in ("pan_left", "pan_right"):
                dx += (1 if move == "pan_right" else -1) * PAN * spec.width * t
            elif move in ("tilt_up", "tilt_down"):
                dy += (1 if move == "tilt_down" else -1) * PAN * spec.height * t
            elif move == "tracking":
                lead = 0.6 * (self.paths[0][k] - self.paths[0][0])
                dx += float(np.clip(lead[0], -PAN * spec.width, PAN * spec.width))
                dy += float(np.clip(lead[1], -PAN * spec.height, PAN * spec.height))
        if spec.shake and k > 0:
            jx, jy = _rng(spec.seed, "shake", k).uniform(-spec.shake, spec.shake, 2)
            dx, dy = dx + jx, dy + jy
        if scale == 1.0 and dx == 0.0 and dy == 0.0:
            return None
        cx, cy = (spec.width - 1) / 2, (spec.height - 1) / 2
        return np.array(
            [
                [1 / scale, 0, cx + self.mx + dx - cx / scale],
                [0, 1 / scale, cy + self.my + dy - cy / scale],
            ],  # fmt: skip
            np.float64,
        )

    def frame(self, k: int) -> np.ndarray:
        w, h = self.spec.width, self.spec.height
        camera = self.cameras[k]
        if camera is None:
            out = self.texture[self.my : self.my + h, self.mx : self.mx + w].copy()
        else:
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            out = cv2.warpAffine(
                self.texture, camera, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT_101
            )
        first_of_image = k == 0 and self.start is not None
        if self.banner is not None:  # on every frame: it must not flicker in and out
            out[: self.banner.shape[0]] = self.banner
        for path, sprite in zip(self.paths, self.sprites, strict=True):
            _stamp(out, sprite, self.alpha, *path[k])
        if not first_of_image:
            raw = _rng(self.spec.seed, "noise", k).bytes(out.size)
            noise = cv2.LUT(np.frombuffer(raw, np.uint8).reshape(out.shape), NOISE_LUT)
            out = cv2.add(out, noise, dtype=cv2.CV_8U)
        return out


def _without(image: np.ndarray, centres: list, radius: float) -> np.ndarray:
    """``image`` with a disk of ``radius`` around each centre filled in from its surroundings."""
    mask = np.zeros(image.shape[:2], np.uint8)
    for x, y in centres:
        cv2.circle(mask, (round(x), round(y)), math.ceil(radius), 255, -1)
    return cv2.inpaint(image, mask, 5, cv2.INPAINT_TELEA)


def _disk_alpha(radius: int) -> np.ndarray:
    size = 2 * radius + 5
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    return np.clip(radius + 0.5 - np.hypot(xx, yy), 0, 1).astype(np.float32)


def _stamp(frame: np.ndarray, sprite: np.ndarray, alpha: np.ndarray, x: float, y: float) -> None:
    """Blend ``sprite`` (centred) into ``frame`` at sub-pixel position (x, y), clipped."""
    size = sprite.shape[0]
    ix, iy = math.floor(x), math.floor(y)
    shift = np.float32([[1, 0, x - ix], [0, 1, y - iy]])
    spr = cv2.warpAffine(sprite, shift, (size, size), borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, shift, (size, size), borderMode=cv2.BORDER_CONSTANT)
    x0, y0 = ix - size // 2, iy - size // 2
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + size, frame.shape[1]), min(y0 + size, frame.shape[0])
    if fx0 >= fx1 or fy0 >= fy1:
        return
    roi = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    s = spr[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32)
    m = a[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0, None]
    frame[fy0:fy1, fx0:fx1] = np.rint(roi + (s - roi) * m).astype(np.uint8)


def _banner(prompt: str, width: int, height: int) -> np.ndarray | None:
    """The prompt in small text on a dark strip, at most two lines; None for no prompt."""
    text = " ".join(prompt.split())
    if not text:
        return None
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, width / 1800)
    (char_w, char_h), base = cv2.getTextSize("n", font, scale, 1)
    char_w = cv2.getTextSize("the quick brown fox", font, scale, 1)[0][0] / 19
    lines = textwrap.wrap(text, max(10, int((width - 12) / char_w)), max_lines=2, placeholder="...")
    line_h = char_h + base + 6
    strip = np.full((line_h * len(lines) + 6, width, 3), 16, np.uint8)
    for i, line in enumerate(lines):
        org = (6, 4 + (i + 1) * line_h - base - 3)
        cv2.putText(strip, line, org, font, scale, (200, 200, 200), 1, cv2.LINE_AA)
    return strip if strip.shape[0] < height // 3 else None


def soundtrack(seed: int, prompt: str, seconds: float, rate: int) -> np.ndarray:
    """A quiet stereo chord for a clip's audio (LTX-2's audio-video graphs): its notes from
    the prompt, its phase and the slow swell of each channel from the seed. Returns float32
    samples in [-1, 1], shaped (2, samples)."""
    n = max(1, round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    digest = hashlib.sha256(prompt.encode()).digest()
    rng = _rng(seed, "audio", prompt)
    chord = np.zeros(n)
    for i in range(3):
        freq = 110.0 * 2 ** (digest[i] % 24 / 12)  # a note in the two octaves above A2
        chord += np.sin(2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi))
    channels = [
        chord * (0.6 + 0.4 * np.sin(2 * math.pi * rng.uniform(0.1, 0.5) * t)) for _ in range(2)
    ]
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05 + 1e-9)  # no click at either end
    return (0.1 * np.stack(channels) * fade).astype(np.float32)
