"""What each emulated ComfyUI node class does when it runs, and the values it passes on.

Each node runs as an async function of a :class:`NodeContext` (timing, progress, CPU
threads) and its inputs. "Model" work sleeps per the profile's cost models; the decoder
makes real frames with :mod:`farm.emulators.synth` and the save nodes write real files
with ComfyUI's naming rule. The class definitions that point at these runners live in
:mod:`farm.emulators.comfy_nodes`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np
from PIL import Image, ImageOps

from farm.emulators.profile import (
    ModelSize,
    NodeProfile,
    activations_gb,
    failure_step,
    fits_in_vram,
    load_seconds,
    model_size,
    resident_gb,
    step_seconds,
    unit_hash,
    workload,
)
from farm.emulators.synth import ClipSpec, preview, synthesize
from farm.errors import InvalidInput
from farm.media import write_video
from farm.trajectory import parse_tracks

PREVIEW_SIDE = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: share of a diffusion model's load time that other model files take
LOAD_SHARE = {"text_encoders": 0.3, "clip_vision": 0.1, "vae": 0.05}
CUDA_SUFFIX = (
    "\nCUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\nFor debugging consider passing "
    "CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
CUDA_ERRORS = ("an illegal memory access was encountered", "unspecified launch failure")


# --- values flowing through a graph ------------------------------------------------------


class _Opaque:
    """An emulated value; ``str()`` reads like the ComfyUI object it stands for."""

    comfy_type: ClassVar[str] = "object"

    def __str__(self) -> str:
        return f"<{self.comfy_type} object at 0x{id(self):012x}>"


@dataclass(frozen=True, eq=False)
class Model(_Opaque):
    comfy_type: ClassVar[str] = "comfy.model_patcher.ModelPatcher"
    file: str
    size: ModelSize
    shift: float | None = None
    loras: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Clip(_Opaque):
    comfy_type: ClassVar[str] = "comfy.sd.CLIP"
    files: tuple[str, ...]
    type: str


@dataclass(frozen=True, eq=False)
class Vae(_Opaque):
    comfy_type: ClassVar[str] = "comfy.sd.VAE"
    file: str


@dataclass(frozen=True, eq=False)
class ClipVision(_Opaque):
    comfy_type: ClassVar[str] = "comfy.clip_vision.ClipVisionModel"
    file: str


@dataclass(frozen=True, eq=False)
class ClipVisionOutput(_Opaque):
    comfy_type: ClassVar[str] = "comfy.clip_vision.Output"
    image_shape: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Encoded text plus what video nodes attach to it (start image, tracks, guidance)."""

    text: str
    start_image: np.ndarray | None = None
    tracks: tuple[tuple[tuple[float, float], ...], ...] = ()
    guidance: float | None = None

    def __str__(self) -> str:
        return "[[tensor(...), {'pooled_output': tensor(...)}]]"


@dataclass(frozen=True, eq=False)
class Latent:
    """A video latent: the requested pixel size and length; ``clip`` once sampled, and its
    ``frames`` (an asyncio future), synthesized while the sampler's GPU time passes (None
    while noise is left for a later pass)."""

    width: int
    height: int
    length: int
    batch: int = 1
    clip: ClipSpec | None = None
    frames: Any = field(default=None, repr=False)
    #: an image encoded into its first frames (Wan22ImageToVideoLatent)
    start_image: np.ndarray | None = field(default=None, repr=False)

    def __str__(self) -> str:
        shape = [self.batch, 16, (self.length - 1) // 4 + 1, self.height // 8, self.width // 8]
        return f"{{'samples': tensor(shape={shape})}}"


@dataclass(frozen=True, eq=False)
class Video(_Opaque):
    comfy_type: ClassVar[str] = "comfy_api.latest._input_impl.video_types.VideoFromComponents"
    frames: np.ndarray
    fps: float


@dataclass(frozen=True)
class Output:
    """What a node returns: its output values and, for output nodes, its UI result."""

    values: tuple = ()
    ui: dict[str, Any] | None = None


class NodeFailure(Exception):
    """A run-time failure as ComfyUI reports it (``exception_type`` is the full type name)."""

    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


class Interrupted(Exception):
    """The running prompt was interrupted (ComfyUI's InterruptProcessingException)."""


@dataclass(frozen=True)
class Dirs:
    """The node's absolute input, output and temp folders."""

    input: Path
    output: Path
    temp: Path

    def by_type(self, kind: str | None) -> Path | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind or "")


@dataclass
class GpuState:
    """What the emulated GPU holds: the diffusion models of the last prompt (file -> GB of
    weights kept in VRAM; Wan 2.2 A14B keeps both experts), and any number of small ones."""

    models: dict[str, float] = field(default_factory=dict)
    #: the diffusion models the running prompt used, and those it had to load
    used: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    small: set[str] = field(default_factory=set)

    @property
    def weights_gb(self) -> float:
        return sum(self.models.values())

    def begin(self) -> None:
        """A prompt starts: keep only the diffusion models the last prompt used."""
        if self.used:
            self.models = {f: gb for f, gb in self.models.items() if f in self.used}
        self.used, self.loads = set(), []

    def unload(self) -> None:
        self.models.clear()
        self.used.clear()
        self.small.clear()


class NodeContext(Protocol):
    """What a running node may use; the server provides it per node."""

    profile: NodeProfile
    gpu: GpuState
    dirs: Dirs
    prompt_id: str
    fps: float  # the frame rate the node's frames will be shown at (from CreateVideo)

    async def sleep(self, seconds: float) -> None:
        """Wait out emulated GPU work (longer on a node with the ``slow`` fault)."""

    async def progress(self, value: int, total: int, preview_jpeg: bytes | None) -> None:
        """Report a step; raises :class:`Interrupted` if the prompt was interrupted."""

    async def cpu(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work in a worker thread."""

    def shake(self, request: str) -> float:
        """Camera shake (px) of this render of ``request`` (the ``jitter`` fault), or 0."""


Runner = Callable[..., Awaitable[Output]]


# --- files -----------------------------------------------------------------------------------


def annotated_path(name: str) -> tuple[str, str | None]:
    """Split ComfyUI's ``"name [output]"`` annotation into (name, folder type)."""
    for kind in ("output", "input", "temp"):
        if name.endswith(f"[{kind}]"):
            return name[: -len(kind) - 3], kind
    return name, None


def resolve_input(dirs: Dirs, name: Any) -> Path | None:
    """The file a LoadImage value names (default folder: input), or None if outside it."""
    if not isinstance(name, str) or not name:
        return None
    name, kind = annotated_path(name)
    base = dirs.by_type(kind or "input")
    path = (base / name).resolve()
    return path if path.is_relative_to(base) else None


def check_image(dirs: Dirs, name: Any) -> bool | str:
    path = resolve_input(dirs, name)
    return True if path is not None and path.exists() else f"Invalid image file: {name}"


def file_digest(dirs: Dirs, name: Any) -> str:
    path = resolve_input(dirs, name)
    if path is None or not path.is_file():
        return ""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def input_images(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def save_path(
    output_dir: Path, prefix: str, width: int = 0, height: int = 0
) -> tuple[Path, str, int, str]:
    """ComfyUI's ``get_save_image_path``: (folder, file stem, next counter, subfolder)."""
    if "%" in prefix:
        now = time.localtime()
        for key, value in (
            ("width", width),
            ("height", height),
            ("year", now.tm_year),
            ("month", f"{now.tm_mon:02}"),
            ("day", f"{now.tm_mday:02}"),
        ):
            prefix = prefix.replace(f"%{key}%", str(value))
    base = str(output_dir)
    norm = os.path.normpath(prefix)
    subfolder, stem = os.path.dirname(norm), os.path.basename(norm)
    folder = os.path.abspath(os.path.join(base, subfolder))
    if os.path.commonpath((base, folder)) != base:
        raise NodeFailure(
            "Exception",
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {folder}\n         output_dir: {base}",
        )
    os.makedirs(folder, exist_ok=True)
    counters = [_counter(name, stem) for name in os.listdir(folder)]
    return Path(folder), stem, max([c for c in counters if c is not None], default=0) + 1, subfolder


def _counter(name: str, stem: str) -> int | None:
    head = name[: len(stem) + 1]
    if os.path.normcase(head[:-1]) != os.path.normcase(stem) or not head.endswith("_"):
        return None
    try:
        return int(name[len(stem) + 1 :].split("_")[0])
    except ValueError:
        return 0


def _saved(file: str, subfolder: str, kind: str = "output") -> dict[str, str]:
    return {"filename": file, "subfolder": subfolder, "type": kind}


# --- runners: loaders ------------------------------------------------------------------------


async def ensure_model(ctx: NodeContext, model: Model) -> None:
    """Load ``model`` unless the GPU holds it: each diffusion model a prompt loads costs a
    load, and the models the last prompt used stay (two for Wan 2.2 A14B)."""
    ctx.gpu.used.add(model.file)
    if model.file in ctx.gpu.models:
        return
    ctx.gpu.loads.append(model.file)
    await ctx.sleep(load_seconds(ctx.profile))
    room = ctx.profile.vram_gb - ctx.gpu.weights_gb  # a second model keeps what is left
    ctx.gpu.models[model.file] = resident_gb(model.size, room)


async def _ensure_small(ctx: NodeContext, folder: str, files: tuple[str, ...]) -> None:
    missing = [f for f in files if f not in ctx.gpu.small]
    if missing:
        await ctx.sleep(load_seconds(ctx.profile, LOAD_SHARE[folder]) * len(missing))
        ctx.gpu.small.update(missing)


async def unet_loader(ctx: NodeContext, unet_name: str, weight_dtype: str) -> Output:
    model = Model(unet_name, model_size(unet_name, weight_dtype))
    await ensure_model(ctx, model)
    return Output((model,))


async def clip_loader(ctx: NodeContext, type: str, device: str = "default", **names: str) -> Output:
    files = tuple(names[k] for k in sorted(names))
    await _ensure_small(ctx, "text_encoders", files)
    return Output((Clip(files, type),))


async def vae_loader(ctx: NodeContext, vae_name: str) -> Output:
    await _ensure_small(ctx, "vae", (vae_name,))
    return Output((Vae(vae_name),))


async def clip_vision_loader(ctx: NodeContext, clip_name: str) -> Output:
    await _ensure_small(ctx, "clip_vision", (clip_name,))
    return Output((ClipVision(clip_name),))


async def checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> Output:
    model = Model(ckpt_name, model_size(ckpt_name))
    await ensure_model(ctx, model)
    return Output((model, Clip((ckpt_name,), "checkpoint"), Vae(ckpt_name)))


async def lora_loader(
    ctx: NodeContext, model: Model, lora_name: str, strength_model: float
) -> Output:
    await ctx.sleep(load_seconds(ctx.profile, 0.05))
    return Output((replace(model, loras=(*model.loras, lora_name)),))


async def model_sampling(ctx: NodeContext, model: Model, shift: float) -> Output:
    return Output((replace(model, shift=shift),))


# --- runners: conditioning and latents ---------------------------------------------------


async def text_encode(ctx: NodeContext, text: str, clip: Clip) -> Output:
    await ctx.sleep(0.02)
    return Output((Conditioning(text),))


async def guidance(ctx: NodeContext, conditioning: Conditioning, guidance: float) -> Output:
    return Output((replace(conditioning, guidance=guidance),))


async def clip_vision_encode(
    ctx: NodeContext, clip_vision: ClipVision, image: np.ndarray, crop: str
) -> Output:
    await ctx.sleep(0.02)
    return Output((ClipVisionOutput(tuple(image.shape)),))


async def empty_latent(
    ctx: NodeContext, width: int, height: int, length: int, batch_size: int
) -> Output:
    return Output((Latent(width, height, length, batch_size),))


async def wan_image_to_video(
    ctx: NodeContext,
    positive: Conditioning,
    negative: Conditioning,
    vae: Vae,
    width: int,
    height: int,
    length: int,
    batch_size: int,
    clip_vision_output: Any = None,
    start_image: np.ndarray | None = None,
) -> Output:
    if start_image is not None:
        positive = replace(positive, start_image=start_image[0])
    return Output((positive, negative, Latent(width, height, length, batch_size)))


async def wan22_image_to_video_latent(
    ctx: NodeContext,
    vae: Vae,
    width: int,
    height: int,
    length: int,
    batch_size: int,
    start_image: np.ndarray | None = None,
) -> Output:
    """Wan 2.2 TI2V-5B's latent: empty, or with ``start_image`` encoded into its first frames
    (carried in the latent, as the node has no conditioning output)."""
    return Output((Latent(width, height, length, batch_size, start_image=_first(start_image)),))


def _first(images: np.ndarray | None) -> np.ndarray | None:
    return None if images is None else images[0]


async def wan_track_to_video(
    ctx: NodeContext,
    positive: Conditioning,
    negative: Conditioning,
    vae: Vae,
    tracks: str,
    width: int,
    height: int,
    length: int,
    batch_size: int,
    temperature: float,
    topk: int,
    start_image: np.ndarray,
    clip_vision_output: Any = None,
) -> Output:
    try:
        parsed = parse_tracks(tracks, "tracks")
    except InvalidInput:
        parsed = []  # ComfyUI logs the JSON error and renders without tracks
    points = tuple(tuple(track) for track in parsed)
    positive = replace(positive, start_image=start_image[0], tracks=points)
    return Output((positive, negative, Latent(width, height, length, batch_size)))


# --- runners: sampling and decoding --------------------------------------------------------


def decoded_frames(length: int) -> int:
    """Frames a Wan/Hunyuan VAE decodes from a latent made for ``length`` frames (4x temporal)."""
    return (length - 1) // 4 * 4 + 1


def clip_spec(latent: Latent, cond: Conditioning, seed: int, fps: float) -> ClipSpec:
    """The synthetic clip a sampled latent decodes to (the VAE works in 8-pixel cells)."""
    return ClipSpec(
        width=latent.width // 8 * 8,
        height=latent.height // 8 * 8,
        frames=decoded_frames(latent.length),
        fps=fps,
        seed=seed,
        prompt=cond.text,
        tracks=cond.tracks,
        start_image=cond.start_image if cond.start_image is not None else latent.start_image,
    )


def request_key(spec: ClipSpec) -> str:
    """Everything ``spec``'s clip depends on except its seed: a take of the same request."""
    h = hashlib.sha256(repr(replace(spec, seed=0, start_image=None)).encode())
    if spec.start_image is not None:
        h.update(np.ascontiguousarray(spec.start_image).tobytes())
    return h.hexdigest()[:16]


def preview_jpeg(spec: ClipSpec, step: int, steps: int) -> bytes:
    """A JPEG preview of ``spec`` at ``step``, rendered at preview size to stay cheap."""
    scale = min(1.0, PREVIEW_SIDE / max(spec.width, spec.height))
    small = replace(
        spec,
        width=max(8, round(spec.width * scale)),
        height=max(8, round(spec.height * scale)),
        tracks=tuple(tuple((x * scale, y * scale) for x, y in t) for t in spec.tracks),
    )
    image = preview(small, step, steps, max_side=PREVIEW_SIDE)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def oom_message(size: ModelSize, vram_gb: float, load: float) -> str:
    """A CUDA caching-allocator out-of-memory message for a run that does not fit."""
    requested = activations_gb(size, load) * 0.35
    limit = vram_gb * 0.9995
    allocated = max(0.0, limit - requested * 0.4)
    return (
        "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
        f"Currently allocated     : {allocated:.2f} GiB\n"
        f"Requested               : {requested:.2f} GiB\n"
        f"Device limit            : {limit:.2f} GiB\n"
        "Free (according to CUDA): 0 bytes\n"
        "PyTorch limit (set by user-supplied memory fraction)\n"
        "                        : 17179869184.00 GiB"
    )


async def ksampler(
    ctx: NodeContext,
    model: Model,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    denoise: float,
) -> Output:
    await ensure_model(ctx, model)
    lat = latent_image
    load = workload(lat.width, lat.height, lat.length, lat.batch)
    if not fits_in_vram(model.size, ctx.profile.vram_gb, load):
        ctx.gpu.unload()  # ComfyUI unloads every model after an OOM
        raise NodeFailure(
            "torch.OutOfMemoryError", oom_message(model.size, ctx.profile.vram_gb, load)
        )
    spec = clip_spec(lat, positive, seed, ctx.fps)
    spec = replace(spec, shake=ctx.shake(request_key(spec)))
    fail_at = failure_step(ctx.profile, ctx.prompt_id, steps)
    tick = step_seconds(ctx.profile, lat.width, lat.height, lat.length, lat.batch)
    frames = asyncio.ensure_future(ctx.cpu(render_frames, spec, lat.batch))
    for step in range(1, steps + 1):
        await ctx.sleep(tick)
        if step == fail_at:
            reason = CUDA_ERRORS[int(unit_hash("cuda", ctx.prompt_id) * len(CUDA_ERRORS))]
            raise NodeFailure("RuntimeError", f"CUDA error: {reason}{CUDA_SUFFIX}")
        await ctx.progress(step, steps, await ctx.cpu(preview_jpeg, spec, step, steps))
    return Output((replace(lat, clip=spec, frames=frames),))


async def ksampler_advanced(
    ctx: NodeContext,
    model: Model,
    add_noise: str,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    start_at_step: int,
    end_at_step: int,
    return_with_leftover_noise: str,
) -> Output:
    """Steps ``start_at_step`` to ``end_at_step`` (at most ``steps``) of a ``steps``-step
    schedule: Wan 2.2 A14B runs its high-noise model for the first half (noise added,
    leftover noise returned) and its low-noise model for the rest, on that latent."""
    await ensure_model(ctx, model)
    lat = latent_image
    load = workload(lat.width, lat.height, lat.length, lat.batch)
    if not fits_in_vram(model.size, ctx.profile.vram_gb, load):
        ctx.gpu.unload()
        raise NodeFailure(
            "torch.OutOfMemoryError", oom_message(model.size, ctx.profile.vram_gb, load)
        )
    first, last = max(0, start_at_step), min(end_at_step, steps)
    if lat.clip is not None and add_noise == "disable":  # continue the earlier pass
        spec = lat.clip
    else:
        spec = clip_spec(lat, positive, noise_seed, ctx.fps)
        spec = replace(spec, shake=ctx.shake(request_key(spec)))
    done = last >= steps or return_with_leftover_noise == "disable"
    frames = asyncio.ensure_future(ctx.cpu(render_frames, spec, lat.batch)) if done else None
    total = max(0, last - first)
    fail_at = failure_step(ctx.profile, f"{ctx.prompt_id}:{first}", total) if total else None
    tick = step_seconds(ctx.profile, lat.width, lat.height, lat.length, lat.batch)
    for step in range(1, total + 1):
        await ctx.sleep(tick)
        if step == fail_at:
            reason = CUDA_ERRORS[int(unit_hash("cuda", ctx.prompt_id) * len(CUDA_ERRORS))]
            raise NodeFailure("RuntimeError", f"CUDA error: {reason}{CUDA_SUFFIX}")
        await ctx.progress(step, total, await ctx.cpu(preview_jpeg, spec, first + step, steps))
    return Output((replace(lat, clip=spec, frames=frames),))


def render_frames(spec: ClipSpec, batch: int) -> np.ndarray:
    """All frames of a clip (and of its batch siblings, seeded one apart) as one array."""
    clips = [spec if b == 0 else replace(spec, seed=spec.seed + b) for b in range(batch)]
    return np.stack([frame for clip in clips for frame in synthesize(clip)])


async def vae_decode(ctx: NodeContext, samples: Latent, vae: Vae, **tiling: int) -> Output:
    if samples.frames is not None:
        return Output((await samples.frames,))
    spec = samples.clip or clip_spec(samples, Conditioning(""), 0, ctx.fps)
    return Output((await ctx.cpu(render_frames, spec, samples.batch),))


# --- runners: images and video -------------------------------------------------------------


async def load_image(ctx: NodeContext, image: str) -> Output:
    path = resolve_input(ctx.dirs, image)
    if path is None:
        raise NodeFailure("FileNotFoundError", f"[Errno 2] No such file or directory: '{image}'")
    return Output(await ctx.cpu(_read_image, path))


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        rgba = np.asarray(img.convert("RGBA"))
    mask = 1.0 - rgba[..., 3].astype(np.float32) / 255.0
    return cv2.cvtColor(rgba[..., :3], cv2.COLOR_RGB2BGR)[None], mask[None]


async def empty_image(
    ctx: NodeContext, width: int, height: int, batch_size: int, color: int
) -> Output:
    bgr = (color & 0xFF, (color >> 8) & 0xFF, (color >> 16) & 0xFF)
    return Output(
        (np.broadcast_to(np.array(bgr, np.uint8), (batch_size, height, width, 3)).copy(),)
    )


async def image_blur(ctx: NodeContext, image: np.ndarray, blur_radius: int, sigma: float) -> Output:
    size = 2 * blur_radius + 1
    return Output((np.stack([cv2.GaussianBlur(f, (size, size), sigma) for f in image]),))


async def image_invert(ctx: NodeContext, image: np.ndarray) -> Output:
    return Output((255 - image,))


#: ComfyUI's upscale methods (torch interpolate; PIL for lanczos) as OpenCV's nearest kin
SCALE_METHODS = {
    "nearest-exact": cv2.INTER_NEAREST_EXACT,
    "bilinear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def center_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """The middle of ``frames`` with the aspect of ``width`` x ``height`` (ComfyUI's rule)."""
    old_h, old_w = frames.shape[1:3]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return frames[:, y : old_h - y, x : old_w - x]


async def image_scale(
    ctx: NodeContext, image: np.ndarray, upscale_method: str, width: int, height: int, crop: str
) -> Output:
    if width == 0 and height == 0:
        return Output((image,))
    old_h, old_w = image.shape[1:3]
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    elif height == 0:
        height = max(1, round(old_h * width / old_w))
    frames = center_crop(image, width, height) if crop == "center" else image
    how = SCALE_METHODS[upscale_method]
    return Output((np.stack([cv2.resize(f, (width, height), interpolation=how) for f in frames]),))


async def image_batch(ctx: NodeContext, image1: np.ndarray, image2: np.ndarray) -> Output:
    """``image2`` after ``image1``, scaled (bilinear, centre crop) to its size if it differs."""
    height, width = image1.shape[1:3]
    if image2.shape[1:] != image1.shape[1:]:
        image2 = center_crop(image2, width, height)
        image2 = np.stack([cv2.resize(f, (width, height)) for f in image2])
    return Output((np.concatenate((image1, image2)),))


async def repeat_image_batch(ctx: NodeContext, image: np.ndarray, amount: int) -> Output:
    return Output((np.tile(image, (amount, 1, 1, 1)),))


async def image_from_batch(
    ctx: NodeContext, image: np.ndarray, batch_index: int, length: int
) -> Output:
    """``length`` images from ``batch_index`` on, both clamped to the batch (as ComfyUI)."""
    start = min(image.shape[0] - 1, batch_index)
    return Output((image[start : start + min(image.shape[0] - start, length)].copy(),))


async def create_video(
    ctx: NodeContext, images: np.ndarray, fps: float, audio: Any = None
) -> Output:
    return Output((Video(images, float(fps)),))


async def save_video(
    ctx: NodeContext, video: Video, filename_prefix: str, format: str, codec: str
) -> Output:
    _, height, width = video.frames.shape[:3]
    folder, stem, counter, subfolder = save_path(ctx.dirs.output, filename_prefix, width, height)
    if width % 2 or height % 2:
        side = "width" if width % 2 else "height"
        raise NodeFailure(
            "av.error.ValueError",
            "[Errno 22] Invalid argument; last error log: "
            f"[libx264] {side} not divisible by 2 ({width}x{height})",
        )
    file = f"{stem}_{counter:05}_.mp4"
    await ctx.cpu(write_video, folder / file, iter(video.frames), video.fps)
    return Output(ui={"images": [_saved(file, subfolder)], "animated": [True]})


def _write_pngs(frames: np.ndarray, folder: Path, stem: str, counter: int) -> list[str]:
    names = []
    for i, frame in enumerate(frames):
        name = f"{stem}_{counter + i:05}_.png"
        cv2.imwrite(str(folder / name), frame, [cv2.IMWRITE_PNG_COMPRESSION, 4])
        names.append(name)
    return names


async def save_image(ctx: NodeContext, images: np.ndarray, filename_prefix: str) -> Output:
    _, height, width = images.shape[:3]
    folder, stem, counter, subfolder = save_path(ctx.dirs.output, filename_prefix, width, height)
    names = await ctx.cpu(_write_pngs, images, folder, stem, counter)
    return Output(ui={"images": [_saved(n, subfolder) for n in names]})


async def preview_image(ctx: NodeContext, images: np.ndarray) -> Output:
    tag = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    _, height, width = images.shape[:3]
    folder, stem, counter, subfolder = save_path(
        ctx.dirs.temp, f"ComfyUI_temp_{tag}", width, height
    )
    names = await ctx.cpu(_write_pngs, images, folder, stem, counter)
    return Output(ui={"images": [_saved(n, subfolder, "temp") for n in names]})


def _write_webp(
    path: Path, frames: np.ndarray, fps: float, lossless: bool, quality: int, method: str
) -> None:
    pics = [Image.fromarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) for f in frames]
    methods = {"default": 4, "fastest": 0, "slowest": 6}
    pics[0].save(
        path,
        save_all=True,
        append_images=pics[1:],
        duration=int(1000.0 / fps),
        lossless=lossless,
        quality=quality,
        method=methods[method],
    )


async def save_webp(
    ctx: NodeContext,
    images: np.ndarray,
    filename_prefix: str,
    fps: float,
    lossless: bool,
    quality: int,
    method: str,
) -> Output:
    _, height, width = images.shape[:3]
    folder, stem, counter, subfolder = save_path(ctx.dirs.output, filename_prefix, width, height)
    file = f"{stem}_{counter:05}_.webp"
    await ctx.cpu(_write_webp, folder / file, images, fps, lossless, quality, method)
    return Output(ui={"images": [_saved(file, subfolder)], "animated": [True]})
