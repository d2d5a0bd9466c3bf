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
import math
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
from farm.emulators.synth import ClipSpec, preview, soundtrack, synthesize
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
    while noise is left for a later pass). Its VAE's compression: Wan and Hunyuan 4x in
    time and 8x in space with 16 channels; LTX-2 8x, 32x and 128 channels."""

    width: int
    height: int
    length: int
    batch: int = 1
    clip: ClipSpec | None = None
    frames: Any = field(default=None, repr=False)
    #: an image encoded into its first frames (Wan22ImageToVideoLatent, LTXVImgToVideoInplace)
    start_image: np.ndarray | None = field(default=None, repr=False)
    time_scale: int = 4
    space_scale: int = 8
    channels: int = 16

    @property
    def shape(self) -> list[int]:
        t, s = self.time_scale, self.space_scale
        return [
            self.batch,
            self.channels,
            (self.length - 1) // t + 1,
            self.height // s,
            self.width // s,
        ]

    def __str__(self) -> str:
        return f"{{'samples': tensor(shape={self.shape})}}"


#: LTX-2's audio VAE: 8 latent channels x 16 frequency bins, 25 latents a second (16 kHz
#: mel frames, hop 160, 4x downsampled), decoded by its vocoder at 24 kHz
AUDIO_CHANNELS, AUDIO_BINS, AUDIO_LATENTS_PER_S, AUDIO_RATE = 8, 16, 25.0, 24000


@dataclass(frozen=True, eq=False)
class AudioLatent:
    """LTX-2's audio latent (LTXVEmptyLatentAudio): ``latents`` time steps; ``clip`` the
    request it was sampled with (None while empty)."""

    latents: int
    batch: int = 1
    clip: ClipSpec | None = None

    def __str__(self) -> str:
        shape = [self.batch, AUDIO_CHANNELS, self.latents, AUDIO_BINS]
        return f"{{'samples': tensor(shape={shape}), 'type': 'audio'}}"


@dataclass(frozen=True, eq=False)
class AVLatent:
    """LTX-2's audio-video latent (LTXVConcatAVLatent): a nested tensor of both."""

    video: Latent
    audio: AudioLatent

    def __str__(self) -> str:
        return (
            f"{{'samples': NestedTensor(shapes=[{self.video.shape}, "
            f"{[self.audio.batch, AUDIO_CHANNELS, self.audio.latents, AUDIO_BINS]}])}}"
        )


@dataclass(frozen=True, eq=False)
class Noise(_Opaque):
    comfy_type: ClassVar[str] = "comfy_extras.nodes_custom_sampler.Noise_RandomNoise"
    seed: int


@dataclass(frozen=True, eq=False)
class Sampler(_Opaque):
    comfy_type: ClassVar[str] = "comfy.samplers.KSAMPLER"
    name: str


@dataclass(frozen=True, eq=False)
class Guider(_Opaque):
    comfy_type: ClassVar[str] = "comfy.samplers.CFGGuider"
    model: Model
    positive: Conditioning
    negative: Conditioning
    cfg: float


@dataclass(frozen=True, eq=False)
class Sigmas:
    """A noise schedule: ``steps`` = its length - 1."""

    values: tuple[float, ...]

    @property
    def steps(self) -> int:
        return len(self.values) - 1

    def __str__(self) -> str:
        return "tensor([" + ", ".join(f"{v:.4f}" for v in self.values) + "])"


@dataclass(frozen=True, eq=False)
class Video(_Opaque):
    comfy_type: ClassVar[str] = "comfy_api.latest._input_impl.video_types.VideoFromComponents"
    frames: np.ndarray
    fps: float
    #: ComfyUI's AUDIO: {"waveform": (batch, channels, samples), "sample_rate": int}
    audio: dict[str, Any] | None = None


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


def decoded_frames(length: int, time_scale: int = 4) -> int:
    """Frames a VAE decodes from a latent made for ``length`` frames (Wan/Hunyuan: 4x
    temporal compression, 4n+1; LTX-2: 8x, 8n+1)."""
    return (length - 1) // time_scale * time_scale + 1


def clip_spec(latent: Latent, cond: Conditioning, seed: int, fps: float) -> ClipSpec:
    """The synthetic clip a sampled latent decodes to (the VAE works in cells of
    ``space_scale`` pixels: 8, LTX-2's 32)."""
    cell = latent.space_scale
    return ClipSpec(
        width=latent.width // cell * cell,
        height=latent.height // cell * cell,
        frames=decoded_frames(latent.length, latent.time_scale),
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
    return Output((await _sample(ctx, model, latent_image, positive, seed, steps),))


async def _sample(
    ctx: NodeContext, model: Model, lat: Latent, positive: Conditioning, seed: int, steps: int
) -> Latent:
    """A full ``steps``-step sampling run of ``lat``: the model loaded, its VRAM checked,
    progress and a preview each step, the frames synthesized meanwhile."""
    await ensure_model(ctx, model)
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
    return replace(lat, clip=spec, frames=frames)


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


# --- runners: LTX-2 (comfy_extras/nodes_lt.py, nodes_lt_audio.py, nodes_custom_sampler.py) ---


async def ltxv_audio_vae_loader(ctx: NodeContext, ckpt_name: str) -> Output:
    """The audio VAE and vocoder inside an LTX-2 checkpoint."""
    await _ensure_small(ctx, "vae", (f"{ckpt_name}:audio_vae",))
    return Output((Vae(ckpt_name),))


async def ltxav_text_encoder_loader(
    ctx: NodeContext, text_encoder: str, ckpt_name: str, device: str = "default"
) -> Output:
    """Gemma 3 plus the text projection inside the LTX-2 checkpoint."""
    await _ensure_small(ctx, "text_encoders", (text_encoder,))
    return Output((Clip((text_encoder, ckpt_name), "ltxv"),))


async def ltxv_conditioning(
    ctx: NodeContext, positive: Conditioning, negative: Conditioning, frame_rate: float
) -> Output:
    return Output((positive, negative))


async def empty_ltxv_latent(
    ctx: NodeContext, width: int, height: int, length: int, batch_size: int
) -> Output:
    """128 channels, ((length - 1) // 8 + 1) x height / 32 x width / 32."""
    return Output(
        (Latent(width, height, length, batch_size, time_scale=8, space_scale=32, channels=128),)
    )


def audio_latents(frames_number: int, frame_rate: float) -> int:
    """Audio latents for ``frames_number`` video frames at ``frame_rate`` (LTX-2's audio VAE)."""
    return math.ceil(frames_number / frame_rate * AUDIO_LATENTS_PER_S)


async def ltxv_empty_latent_audio(
    ctx: NodeContext, frames_number: int, frame_rate: int, batch_size: int, audio_vae: Vae
) -> Output:
    return Output((AudioLatent(audio_latents(frames_number, frame_rate), batch_size),))


async def ltxv_concat_av_latent(
    ctx: NodeContext, video_latent: Latent, audio_latent: AudioLatent
) -> Output:
    return Output((AVLatent(video_latent, audio_latent),))


async def ltxv_separate_av_latent(ctx: NodeContext, av_latent: Any) -> Output:
    if not isinstance(av_latent, AVLatent):  # a plain tensor unbinds to its batch items
        raise NodeFailure("IndexError", "tuple index out of range")
    return Output((av_latent.video, av_latent.audio))


def ltxv_sigmas(
    steps: int, max_shift: float, base_shift: float, stretch: bool, terminal: float, tokens: int
) -> tuple[float, ...]:
    """LTXVScheduler's schedule: 1 to 0 in ``steps``, shifted by the token count, the last
    non-zero sigma stretched to ``terminal``."""
    mm = (max_shift - base_shift) / (4096 - 1024)
    shift = tokens * mm + base_shift - mm * 1024
    lin = [1.0 - i / steps for i in range(steps + 1)]
    sig = [math.exp(shift) / (math.exp(shift) + (1 / v - 1)) if v else 0.0 for v in lin]
    nonzero = [v for v in sig if v]
    if stretch and nonzero and 1.0 - nonzero[-1] > 0:
        scale = (1.0 - nonzero[-1]) / (1.0 - terminal)
        sig = [1.0 - (1.0 - v) / scale if v else 0.0 for v in sig]
    return tuple(sig)


async def ltxv_scheduler(
    ctx: NodeContext,
    steps: int,
    max_shift: float,
    base_shift: float,
    stretch: bool,
    terminal: float,
    latent: Any = None,
) -> Output:
    video = latent.video if isinstance(latent, AVLatent) else latent
    tokens = math.prod(video.shape[2:]) if isinstance(video, Latent) else 4096
    return Output((Sigmas(ltxv_sigmas(steps, max_shift, base_shift, stretch, terminal, tokens)),))


async def random_noise(ctx: NodeContext, noise_seed: int) -> Output:
    return Output((Noise(noise_seed),))


async def ksampler_select(ctx: NodeContext, sampler_name: str) -> Output:
    return Output((Sampler(sampler_name),))


async def cfg_guider(
    ctx: NodeContext, model: Model, positive: Conditioning, negative: Conditioning, cfg: float
) -> Output:
    return Output((Guider(model, positive, negative, cfg),))


async def sampler_custom_advanced(
    ctx: NodeContext,
    noise: Noise,
    guider: Guider,
    sampler: Sampler,
    sigmas: Sigmas,
    latent_image: Any,
) -> Output:
    """One sampling run of ``sigmas.steps`` steps; an audio-video latent comes back with both
    parts sampled (its audio the same request's soundtrack)."""
    av = latent_image if isinstance(latent_image, AVLatent) else None
    video = av.video if av else latent_image
    sampled = await _sample(ctx, guider.model, video, guider.positive, noise.seed, sigmas.steps)
    out: Latent | AVLatent = sampled
    if av is not None:
        out = AVLatent(sampled, replace(av.audio, clip=sampled.clip))
    return Output((out, out))


async def ltxv_img_to_video_inplace(
    ctx: NodeContext,
    vae: Vae,
    image: np.ndarray,
    latent: Latent,
    strength: float,
    bypass: bool = False,
) -> Output:
    """``image`` encoded into the latent's first frame (scaled to its size by the VAE)."""
    return Output((latent if bypass else replace(latent, start_image=image[0]),))


def _h264_like(frame: np.ndarray, compression: int) -> np.ndarray:
    """A frame cropped to even sides and put through lossy compression (LTXVPreprocess
    round-trips it through H.264 at crf = ``img_compression``)."""
    frame = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, max(5, 100 - compression)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


async def ltxv_preprocess(ctx: NodeContext, image: np.ndarray, img_compression: int) -> Output:
    if img_compression == 0:
        return Output((image,))
    return Output((np.stack([_h264_like(f, img_compression) for f in image]),))


async def ltxv_audio_vae_decode(ctx: NodeContext, samples: Any, audio_vae: Vae) -> Output:
    """Audio from LTX-2's audio latent (or the audio part of an audio-video one): 4 mel
    frames a latent (the first 1, it being causal), 100 a second, at the vocoder's 24 kHz."""
    audio = samples.audio if isinstance(samples, AVLatent) else samples
    if not isinstance(audio, AudioLatent):
        raise NodeFailure(
            "RuntimeError",
            f"Given groups=1, weight of size [512, {AUDIO_CHANNELS}, 3, 3], expected input"
            f"{samples.shape} to have {AUDIO_CHANNELS} channels, but got "
            f"{samples.shape[1]} channels instead",
        )
    seconds = (4 * audio.latents - 3) / 100.0
    spec = audio.clip
    seed, prompt = (spec.seed, spec.prompt) if spec else (0, "")
    wave = await ctx.cpu(soundtrack, seed, prompt, seconds, AUDIO_RATE)
    batch = np.stack([wave] * audio.batch)
    return Output(({"waveform": batch, "sample_rate": AUDIO_RATE},))


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
    ctx: NodeContext, images: np.ndarray, fps: float, audio: dict[str, Any] | None = None
) -> Output:
    return Output((Video(images, float(fps), audio),))


def video_audio(video: Video) -> tuple[np.ndarray, int] | None:
    """The first batch item of ``video``'s audio, cut to the video's length as ComfyUI's
    SaveVideo muxes it; None without audio."""
    if video.audio is None:
        return None
    rate = int(video.audio["sample_rate"])
    keep = math.ceil(len(video.frames) / video.fps * rate)
    return video.audio["waveform"][0][:, :keep], rate


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
    await ctx.cpu(
        write_video, folder / file, iter(video.frames), video.fps, None, video_audio(video)
    )
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
