"""Video I/O: H.264 encoding through ffmpeg, exact probing and decoding through OpenCV.

Frames are BGR ``uint8`` arrays of shape (height, width, 3). Every file is written to a
temporary name in its destination folder and moved into place, so readers never see a
half-written video.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import textwrap
import wave
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from farm.errors import ConfigError, InvalidInput
from farm.files import atomic_target

#: libx264 settings for every file the farm writes
ENCODE_ARGS = [
    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
    "-pix_fmt", "yuv420p", "-movflags", "+faststart",
]  # fmt: skip
STDERR_TAIL = 2000


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds; ``frames`` is an exact count of decoded frames."""

    frames: int
    width: int
    height: int
    fps: float
    duration_s: float


def ffmpeg_path() -> str:
    """Path of the ffmpeg binary, or ConfigError when it is not installed."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise ConfigError("ffmpeg is not installed: run `make setup` (or `apt-get install ffmpeg`)")
    return path


def _rate(fps: float) -> str:
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return str(Fraction(fps).limit_denominator(1001))


def _tail(stream) -> str:
    stream.seek(0)
    text = stream.read().decode("utf-8", "replace").strip()
    return text[-STDERR_TAIL:] or "(no output)"


def _run_ffmpeg(args: list[str]) -> None:
    cmd = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    with tempfile.TemporaryFile() as err:
        code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err).returncode
        if code != 0:
            raise RuntimeError(f"ffmpeg failed (exit {code}): {_tail(err)}")


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: float,
    metadata: Mapping[str, str] | None = None,
    audio: tuple[np.ndarray, int] | None = None,
) -> None:
    """Encode BGR frames of one even size to H.264 at ``path``, streaming them to ffmpeg;
    ``metadata``: container tags (e.g. ``comment``); ``audio``: a ``(waveform, sample
    rate)`` track muxed as AAC, the waveform float samples in [-1, 1] shaped
    (channels, samples)."""
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    height, width = _check_frame(first, None)
    with tempfile.TemporaryDirectory() as scratch:
        sound = ["-an"]
        if audio is not None:
            wav = Path(scratch) / "audio.wav"
            _write_wav(wav, *audio)
            sound = ["-i", str(wav), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac",
                     "-b:a", "128k"]  # fmt: skip
        args = [
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
            "-framerate", _rate(fps), "-i", "pipe:0", *sound, *ENCODE_ARGS, "-f", "mp4",
        ]  # fmt: skip
        for key, value in (metadata or {}).items():
            args += ["-metadata", f"{key}={value}"]
        _encode(path, args, first, it, (height, width))


def _write_wav(path: Path, waveform: np.ndarray, rate: int) -> None:
    """``waveform`` (channels, samples), floats in [-1, 1], as 16-bit PCM WAV."""
    if waveform.ndim != 2 or waveform.shape[1] == 0 or rate <= 0:
        raise ValueError(f"audio must be (channels, samples) at a rate > 0, got {waveform.shape}")
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767).astype("<i2").T
    with wave.open(str(path), "wb") as out:
        out.setnchannels(waveform.shape[0])
        out.setsampwidth(2)
        out.setframerate(int(rate))
        out.writeframes(np.ascontiguousarray(pcm).tobytes())


def _encode(path: Path, args: list[str], first: np.ndarray, it: Iterator[np.ndarray], size) -> None:
    """Run ffmpeg with ``args``, feeding it the frames, into ``path`` (atomically)."""
    height, width = size
    with atomic_target(path) as tmp, tempfile.TemporaryFile() as err:
        cmd = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y", *args, str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        stdin = proc.stdin
        assert stdin is not None
        try:
            with suppress(BrokenPipeError):  # ffmpeg died: its exit code and stderr say why
                _feed(stdin, first, it, (height, width))
                stdin.close()
        except BaseException:
            proc.kill()
            raise
        finally:
            with suppress(BrokenPipeError):
                stdin.close()
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"ffmpeg failed writing {path} (exit {code}): {_tail(err)}")


def _feed(stdin: IO[bytes], first: np.ndarray, rest: Iterator[np.ndarray], size) -> None:
    """Write frames to ffmpeg as they come, checking each has the first frame's size."""
    stdin.write(np.ascontiguousarray(first).data)
    for frame in rest:
        _check_frame(frame, size)
        stdin.write(np.ascontiguousarray(frame).data)


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be HxWx3 uint8 BGR, got {frame.shape} {frame.dtype}")
    height, width = frame.shape[:2]
    if size is None and (width % 2 or height % 2):
        raise ValueError(f"H.264 needs an even width and height, got {width}x{height}")
    if size is not None and (height, width) != size:
        raise ValueError(f"frame size changed from {size[1]}x{size[0]} to {width}x{height}")
    return height, width


def _open(path: Path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InvalidInput(f"cannot read video: {path}")
    return cap


def read_video(path: Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """Decode up to ``max_frames`` BGR frames of ``path`` and return them with the fps."""
    cap = _open(path)
    frames: list[np.ndarray] = []
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        while max_frames is None or len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise InvalidInput(f"cannot read video (no frames decoded): {path}")
    return frames, float(fps)


def animation_to_video(src: Path, dest: Path, fps: float | None = None) -> Path:
    """An animated WebP or GIF (ComfyUI's ``SaveAnimatedWEBP`` and the like) as an H.264
    MP4 at ``fps`` (default: its shortest frame time), each frame held for its duration, so
    equal neighbouring frames that the image encoder merged come back; an odd size is
    padded by one edge pixel (H.264 needs even sides)."""
    try:
        with Image.open(src) as image:
            frames, durations = [], []
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                image.load()
                frames.append(np.asarray(image.convert("RGB"))[:, :, ::-1])
                durations.append(float(image.info.get("duration") or 0))
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInput(f"cannot read animation {src.name}: {exc}") from exc
    timed = [d for d in durations if d > 0]
    frame_ms = 1000.0 / fps if fps else min(timed, default=1000.0 / 24)
    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))

    def held() -> Iterator[np.ndarray]:
        for frame, duration in zip(frames, durations, strict=True):
            frame = np.ascontiguousarray(np.pad(frame, pad, mode="edge"))
            for _ in range(max(1, round(duration / frame_ms)) if duration > 0 else 1):
                yield frame

    write_video(dest, held(), fps or 1000.0 / frame_ms)
    return dest


def read_frames(path: Path, max_frames: int | None = None) -> list[np.ndarray]:
    """Decode up to ``max_frames`` BGR frames of ``path``."""
    return read_video(path, max_frames)[0]


def probe(path: Path) -> VideoInfo:
    """Size, fps and exact frame count of ``path`` (every frame is decoded to count it)."""
    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = 0
        while cap.grab():
            count += 1
    finally:
        cap.release()
    if count == 0:
        raise InvalidInput(f"cannot read video (no frames decoded): {path}")
    duration = count / fps if fps > 0 else 0.0
    return VideoInfo(frames=count, width=width, height=height, fps=fps, duration_s=duration)


def slate_frames(text: str, width: int, height: int, frames: int) -> Iterator[np.ndarray]:
    """Yield ``frames`` copies of a dark card with ``text`` centred on it."""
    card = np.full((height, width, 3), 24, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, width / 1280)
    thick = max(1, round(scale * 1.5))
    char_w = cv2.getTextSize("n", font, scale, thick)[0][0]
    lines = textwrap.wrap(text, max(8, int(width * 0.85 / char_w))) or [""]
    line_h = int(cv2.getTextSize("Ag", font, scale, thick)[0][1] * 1.8)
    y = (height - line_h * len(lines)) // 2 + line_h // 2
    for line in lines:
        (tw, th), _ = cv2.getTextSize(line, font, scale, thick)
        org = ((width - tw) // 2, y + th // 2)
        cv2.putText(card, line, org, font, scale, (220, 220, 220), thick, cv2.LINE_AA)
        y += line_h
    for _ in range(frames):
        yield card.copy()


def concat_videos(
    clips: list[Path], out: Path, *, width: int, height: int, fps: float
) -> VideoInfo:
    """Join ``clips`` into one H.264 file, each letterboxed to width x height at ``fps``."""
    if not clips:
        raise ValueError("concat_videos needs at least one clip")
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"H.264 needs a positive even width and height, got {width}x{height}")
    for clip in clips:
        if not Path(clip).is_file():
            raise InvalidInput(f"video not found: {clip}")
    rate = _rate(fps)
    chains = [
        f"[{i}:v:0]scale={width}:{height}:force_original_aspect_ratio=decrease,"
        f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,"
        f"fps={rate},format=yuv420p,settb=AVTB,setpts=PTS-STARTPTS[v{i}]"
        for i in range(len(clips))
    ]
    joined = "".join(f"[v{i}]" for i in range(len(clips)))
    graph = ";".join([*chains, f"{joined}concat=n={len(clips)}:v=1:a=0[out]"])
    inputs = [arg for clip in clips for arg in ("-i", str(clip))]
    with atomic_target(out) as tmp:
        args = [*inputs, "-filter_complex", graph, "-map", "[out]", "-an", "-r", rate]
        _run_ffmpeg([*args, *ENCODE_ARGS, "-f", "mp4", str(tmp)])
    return probe(out)
