"""Start images: which files a shot can start from, checked the same way on every way in.

``farm validate`` and ``farm enqueue`` (:mod:`farm.scene`), ``farm submit``
(:func:`farm.submission.pack_submission`) and ingest (a submission's attachments) decode
each start image with :func:`image_problem` before anything is queued, and a worker checks
it again before a node gets the job (:mod:`farm.shots`): a file that is not an image is one
clear problem up front, never a render that fails on every node it is tried on.

A start image is a PNG, JPEG or WebP file that Pillow identifies, verifies and decodes
whole, from :data:`MIN_SIDE` to :data:`MAX_SIDE` pixels a side (shots render at most
1920 pixels wide: a bigger image is only downscaled, after costing memory on every node).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from farm.errors import InvalidInput
from farm.problems import clip, show_path

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
MIN_SIDE, MAX_SIDE = 16, 4096
WANT = f"use a PNG, JPEG or WebP image of {MIN_SIDE} to {MAX_SIDE:,} pixels a side"


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not a start image, and the fix (None: it is one)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
            image.verify()  # checks the structure (PNG chunk checksums) without decoding
        if kind not in FORMATS:
            return f"is a {kind} image; {WANT}"
        if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
            return f"is {width}x{height} pixels; {WANT}"
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: a truncated file fails here, not on a node
    except UnidentifiedImageError:
        return f"is not an image (Pillow cannot tell its format); {WANT}"
    except Image.DecompressionBombError:
        return f"has too many pixels to decode safely; {WANT}"
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ...) on junk
        return f"is a damaged image ({type(exc).__name__}: {clip(str(exc), 200)}); {WANT}"
    return None


def file_problem(path: Path) -> str | None:
    """Why the file at ``path`` is not a start image, and the fix (None: it is one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "does not exist; give the path of an image file (relative to the scene file)"
    except OSError as exc:  # a folder, no permission, a name too long for the file system
        return f"cannot be read ({exc.strerror or exc}); give the path of an image file"
    return image_problem(data)


def check_start_image(path: str) -> None:
    """Raise :class:`InvalidInput` when the start image at ``path`` cannot be rendered from
    (checked by a worker before it hands a job to a node: the file may have changed since
    the scene was validated)."""
    problem = file_problem(Path(path))
    if problem:
        raise InvalidInput(f"start image {show_path(path)} {problem}")
