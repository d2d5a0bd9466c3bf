"""The node classes an emulated ComfyUI node knows: definitions, validation and execution.

Definitions mirror ComfyUI 0.3.64's ``INPUT_TYPES`` (input names, types, defaults, ranges,
order, outputs, categories); combo inputs list the model files of the node's profile.
:func:`validate_prompt` reproduces ComfyUI's validation and its error bodies. Each node
runs as an async function of a :class:`NodeContext` (timing, progress, CPU threads) and
its inputs; "model" work sleeps per the profile's cost models and the decoder makes
real frames with :mod:`farm.emulators.synth`.
"""

from __future__ import annotations

import json
import os
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping
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

MAX_RESOLUTION = 16384
PREVIEW_SIDE = 256
DEFAULT_FPS = 16.0
SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]  # fmt: skip
CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
    "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
    "hunyuan_image",
]  # fmt: skip
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
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
    """A video latent: the requested pixel size and length; ``clip`` once sampled."""

    width: int
    height: int
    length: int
    batch: int = 1
    clip: ClipSpec | None = None

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
    """What the emulated GPU holds: one diffusion model and any number of small models."""

    model: str | None = None
    weights_gb: float = 0.0
    small: set[str] = field(default_factory=set)

    def unload(self) -> None:
        self.model, self.weights_gb = None, 0.0
        self.small.clear()


class NodeContext(Protocol):
    """What a running node may use; the server provides it per node."""

    profile: NodeProfile
    gpu: GpuState
    dirs: Dirs
    prompt_id: str
    fps: float  # the frame rate the node's frames will be shown at (from CreateVideo)

    async def sleep(self, seconds: float) -> None: ...

    async def progress(self, value: int, total: int, preview_jpeg: bytes | None) -> None:
        """Report a step; raises :class:`Interrupted` if the prompt was interrupted."""

    async def cpu(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work in a worker thread."""


Runner = Callable[..., Awaitable[Output]]


# --- definitions ---------------------------------------------------------------------------


def _int(default: int, lo: int, hi: int, step: int | None = None, **extra: Any) -> tuple:
    spec = {"default": default, "min": lo, "max": hi, **({"step": step} if step else {})}
    return ("INT", {**spec, **extra})


def _float(default: float, lo: float, hi: float, step: float, **extra: Any) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra})


def _string(**extra: Any) -> tuple:
    return ("STRING", extra)


def _link(kind: str) -> tuple:
    return (kind,)


def _combo(options: list[str], **extra: Any) -> tuple:
    return (list(options), extra) if extra else (list(options),)


def _combo3(options: list[str], default: str) -> tuple:
    return ("COMBO", {"options": list(options), "default": default})


@dataclass(frozen=True)
class NodeDef:
    """One node class: its ``INPUT_TYPES``, outputs, UI metadata, runner and checks."""

    name: str
    category: str
    required: dict[str, tuple]
    run: Runner
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    optional: dict[str, tuple] = field(default_factory=dict)
    output_node: bool = False
    display_name: str | None = None
    description: str = ""
    module: str = "nodes"
    v3: bool = False
    #: custom per-input validation (ComfyUI's VALIDATE_INPUTS): True or an error string
    checks: Mapping[str, Callable[[Any], bool | str]] = field(default_factory=dict)
    #: ComfyUI's IS_CHANGED: a fingerprint of the node's outside state (e.g. a file hash)
    fingerprint: Callable[[dict[str, Any]], str] | None = None

    def input_types(self) -> dict[str, dict[str, Any]]:
        types: dict[str, dict[str, Any]] = {"required": dict(self.required)}
        if self.optional:
            types["optional"] = dict(self.optional)
        if self.output_node:
            hidden = ("PROMPT", "EXTRA_PNGINFO")
            values = [(h,) for h in hidden] if self.v3 else list(hidden)
            types["hidden"] = dict(zip(("prompt", "extra_pnginfo"), values, strict=True))
        return types

    def inputs(self) -> Iterator[tuple[str, str, Any, dict[str, Any]]]:
        """(name, "required"/"optional", type, options) of each input, in order."""
        for category, specs in (("required", self.required), ("optional", self.optional)):
            for name, spec in specs.items():
                yield name, category, spec[0], spec[1] if len(spec) > 1 else {}

    def info(self) -> dict[str, Any]:
        """This class as ``GET /object_info`` describes it."""
        types = self.input_types()
        n = len(self.outputs)
        info: dict[str, Any] = {
            "input": types,
            "input_order": {key: list(value) for key, value in types.items()},
            "output": list(self.outputs),
            "output_is_list": [False] * n,
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": self.module,
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.v3:
            info.update(
                output_tooltips=[None] * n, deprecated=False, experimental=False, api_node=False
            )
        return info


def definitions(profile: NodeProfile, dirs: Dirs) -> dict[str, NodeDef]:
    """Every node class the emulated node offers, with combos from its profile and inputs."""
    files = profile.files
    size = _int(832, 16, MAX_RESOLUTION, 16)
    video_size = {
        "width": size,
        "height": _int(480, 16, MAX_RESOLUTION, 16),
        "length": _int(81, 1, MAX_RESOLUTION, 4),
        "batch_size": _int(1, 1, 4096),
    }
    wan_in = {
        "positive": _link("CONDITIONING"),
        "negative": _link("CONDITIONING"),
        "vae": _link("VAE"),
    }
    wan_out = {
        "outputs": ("CONDITIONING", "CONDITIONING", "LATENT"),
        "output_names": ("positive", "negative", "latent"),
        "category": "conditioning/video_models",
        "module": "comfy_extras.nodes_wan",
        "v3": True,
    }
    image_prefix = _string(default="ComfyUI")
    defs = [
        NodeDef(
            "UNETLoader",
            "advanced/loaders",
            {"unet_name": _combo(files("diffusion_models")), "weight_dtype": _combo(WEIGHT_DTYPES)},
            _unet_loader,
            ("MODEL",),
        ),
        NodeDef(
            "CLIPLoader",
            "advanced/loaders",
            {"clip_name": _combo(files("text_encoders")), "type": _combo(CLIP_TYPES)},
            _clip_loader,
            ("CLIP",),
            optional={"device": _combo(["default", "cpu"], advanced=True)},
        ),
        NodeDef(
            "DualCLIPLoader",
            "advanced/loaders",
            {
                "clip_name1": _combo(files("text_encoders")),
                "clip_name2": _combo(files("text_encoders")),
                "type": _combo(DUAL_CLIP_TYPES),
            },
            _clip_loader,
            ("CLIP",),
            optional={"device": _combo(["default", "cpu"], advanced=True)},
        ),
        NodeDef("VAELoader", "loaders", {"vae_name": _combo(files("vae"))}, _vae_loader, ("VAE",)),
        NodeDef(
            "CLIPVisionLoader",
            "loaders",
            {"clip_name": _combo(files("clip_vision"))},
            _clip_vision_loader,
            ("CLIP_VISION",),
        ),
        NodeDef(
            "CheckpointLoaderSimple",
            "loaders",
            {"ckpt_name": _combo(files("checkpoints"))},
            _checkpoint_loader,
            ("MODEL", "CLIP", "VAE"),
        ),
        NodeDef(
            "LoraLoaderModelOnly",
            "loaders",
            {
                "model": _link("MODEL"),
                "lora_name": _combo(files("loras")),
                "strength_model": _float(1.0, -100.0, 100.0, 0.01),
            },
            _lora_loader,
            ("MODEL",),
        ),
        NodeDef(
            "ModelSamplingSD3",
            "advanced/model",
            {"model": _link("MODEL"), "shift": _float(3.0, 0.0, 100.0, 0.01)},
            _model_sampling,
            ("MODEL",),
            module="comfy_extras.nodes_model_advanced",
        ),
        NodeDef(
            "CLIPTextEncode",
            "conditioning",
            {"text": _string(multiline=True, dynamicPrompts=True), "clip": _link("CLIP")},
            _text_encode,
            ("CONDITIONING",),
        ),
        NodeDef(
            "FluxGuidance",
            "advanced/conditioning/flux",
            {"conditioning": _link("CONDITIONING"), "guidance": _float(3.5, 0.0, 100.0, 0.1)},
            _guidance,
            ("CONDITIONING",),
            module="comfy_extras.nodes_flux",
            v3=True,
        ),
        NodeDef(
            "CLIPVisionEncode",
            "conditioning",
            {
                "clip_vision": _link("CLIP_VISION"),
                "image": _link("IMAGE"),
                "crop": _combo(["center", "none"]),
            },
            _clip_vision_encode,
            ("CLIP_VISION_OUTPUT",),
        ),
        NodeDef(
            "LoadImage",
            "image",
            {"image": _combo(_input_images(dirs.input), image_upload=True)},
            _load_image,
            ("IMAGE", "MASK"),
            checks={"image": lambda v: _check_image(dirs, v)},
            fingerprint=lambda inputs: _file_digest(dirs, inputs.get("image")),
        ),
        NodeDef(
            "EmptyHunyuanLatentVideo",
            "latent/video",
            {
                **video_size,
                "width": _int(848, 16, MAX_RESOLUTION, 16),
                "length": _int(25, 1, MAX_RESOLUTION, 4),
            },
            _empty_latent,
            ("LATENT",),
            module="comfy_extras.nodes_hunyuan",
            v3=True,
        ),
        NodeDef(
            "WanImageToVideo",
            required={**wan_in, **video_size},
            run=_wan_image_to_video,
            optional={
                "clip_vision_output": _link("CLIP_VISION_OUTPUT"),
                "start_image": _link("IMAGE"),
            },
            **wan_out,
        ),
        NodeDef(
            "WanTrackToVideo",
            required={
                **wan_in,
                "tracks": _string(multiline=True, default="[]"),
                **video_size,
                "temperature": _float(220.0, 1.0, 1000.0, 0.1),
                "topk": _int(2, 1, 10),
                "start_image": _link("IMAGE"),
            },
            run=_wan_track_to_video,
            optional={"clip_vision_output": _link("CLIP_VISION_OUTPUT")},
            **wan_out,
        ),
        NodeDef(
            "KSampler",
            "sampling",
            {
                "model": _link("MODEL"),
                "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                "steps": _int(20, 1, 10000),
                "cfg": _float(8.0, 0.0, 100.0, 0.1, round=0.01),
                "sampler_name": _combo(SAMPLERS),
                "scheduler": _combo(SCHEDULERS),
                "positive": _link("CONDITIONING"),
                "negative": _link("CONDITIONING"),
                "latent_image": _link("LATENT"),
                "denoise": _float(1.0, 0.0, 1.0, 0.01),
            },
            _ksampler,
            ("LATENT",),
        ),
        NodeDef(
            "VAEDecode",
            "latent",
            {"samples": _link("LATENT"), "vae": _link("VAE")},
            _vae_decode,
            ("IMAGE",),
        ),
        NodeDef(
            "VAEDecodeTiled",
            "_for_testing",
            {
                "samples": _link("LATENT"),
                "vae": _link("VAE"),
                "tile_size": _int(512, 64, 4096, 32),
                "overlap": _int(64, 0, 4096, 32),
                "temporal_size": _int(64, 8, 4096, 4),
                "temporal_overlap": _int(8, 4, 4096, 4),
            },
            _vae_decode,
            ("IMAGE",),
        ),
        NodeDef(
            "CreateVideo",
            "image/video",
            {"images": _link("IMAGE"), "fps": _float(30.0, 1.0, 120.0, 1.0)},
            _create_video,
            ("VIDEO",),
            optional={"audio": _link("AUDIO")},
            display_name="Create Video",
            description="Create a video from images.",
            module="comfy_extras.nodes_video",
            v3=True,
        ),
        NodeDef(
            "SaveVideo",
            "image/video",
            {
                "video": _link("VIDEO"),
                "filename_prefix": _string(default="video/ComfyUI"),
                "format": _combo3(["auto", "mp4"], "auto"),
                "codec": _combo3(["auto", "h264"], "auto"),
            },
            _save_video,
            output_node=True,
            display_name="Save Video",
            description="Saves the input images to your ComfyUI output directory.",
            module="comfy_extras.nodes_video",
            v3=True,
        ),
        NodeDef(
            "EmptyImage",
            "image",
            {
                "width": _int(512, 1, MAX_RESOLUTION, 1),
                "height": _int(512, 1, MAX_RESOLUTION, 1),
                "batch_size": _int(1, 1, 4096),
                "color": _int(0, 0, 0xFFFFFF, 1, display="color"),
            },
            _empty_image,
            ("IMAGE",),
        ),
        NodeDef(
            "ImageBlur",
            "image/postprocessing",
            {
                "image": _link("IMAGE"),
                "blur_radius": _int(1, 1, 31, 1),
                "sigma": _float(1.0, 0.1, 10.0, 0.1),
            },
            _image_blur,
            ("IMAGE",),
            module="comfy_extras.nodes_post_processing",
        ),
        NodeDef(
            "PreviewImage",
            "image",
            {"images": _link("IMAGE")},
            _preview_image,
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "SaveImage",
            "image",
            {"images": _link("IMAGE"), "filename_prefix": image_prefix},
            _save_image,
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "SaveAnimatedWEBP",
            "image/animation",
            {
                "images": _link("IMAGE"),
                "filename_prefix": image_prefix,
                "fps": _float(6.0, 0.01, 1000.0, 0.01),
                "lossless": ("BOOLEAN", {"default": True}),
                "quality": _int(80, 0, 100),
                "method": _combo(["default", "fastest", "slowest"]),
            },
            _save_webp,
            output_node=True,
            module="comfy_extras.nodes_images",
        ),
    ]
    return {d.name: d for d in defs}


# --- validation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Validation:
    """ComfyUI's ``validate_prompt`` result: (ok, error, outputs to run, node_errors)."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


def _error(kind: str, message: str, details: str, extra: dict | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def full_type_name(cls: type) -> str:
    """``module.Qualname`` of an exception class, bare for builtins (as ComfyUI reports)."""
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def is_link(value: Any) -> bool:
    return isinstance(value, list)


def validate_prompt(
    prompt: dict[str, Any], defs: Mapping[str, NodeDef], targets: list[str] | None = None
) -> Validation:
    """Check an API graph as ComfyUI does; converts widget values in place (as ComfyUI does)."""
    outputs: list[str] = []
    for node_id in prompt:
        node = prompt[node_id]
        if "class_type" not in node:
            msg = "Cannot execute because a node is missing the class_type property."
            return Validation(False, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {})
        class_type = node["class_type"]
        d = defs.get(class_type)
        if d is None:
            msg = f"Cannot execute because node {class_type} does not exist."
            return Validation(False, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {})
        if d.output_node and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {})
    good: list[str] = []
    failed: list[tuple[str, list]] = []
    node_errors: dict[str, Any] = {}
    validated: dict[str, tuple[bool, list, str]] = {}
    for out in outputs:
        try:
            ok, reasons, _ = _validate_node(prompt, out, defs, validated)
        except Exception as ex:
            ok, reasons = (
                False,
                [_exception("exception_during_validation", "Exception when validating node", ex)],
            )
            validated[out] = (False, reasons, out)
        if ok:
            good.append(out)
            continue
        failed.append((out, reasons))
        for node_id, (node_ok, node_reasons, _) in validated.items():
            if not node_ok and node_reasons:
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(
            f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons
        )
        msg = "Prompt outputs failed validation"
        return Validation(
            False, _error("prompt_outputs_failed_validation", msg, details), [], node_errors
        )
    return Validation(True, None, good, node_errors)


def _exception(kind: str, message: str, ex: BaseException, **extra: Any) -> dict[str, Any]:
    info = {
        **extra,
        "exception_type": full_type_name(type(ex)),
        "traceback": traceback.format_tb(ex.__traceback__),
    }
    return _error(kind, message, str(ex), info)


def _validate_node(
    prompt: dict, node_id: Any, defs: Mapping[str, NodeDef], validated: dict
) -> tuple:
    if node_id in validated:
        return validated[node_id]
    inputs = prompt[node_id]["inputs"]
    d = defs[prompt[node_id]["class_type"]]
    errors: list[dict[str, Any]] = []
    valid = True
    for name, category, kind, extra in d.inputs():
        if name not in inputs:
            if category == "required":
                errors.append(
                    _error(
                        "required_input_missing",
                        "Required input is missing",
                        name,
                        {"input_name": name},
                    )
                )
            continue
        config = [kind, extra]
        if is_link(inputs[name]):
            ok = _validate_link(prompt, name, inputs[name], kind, config, defs, validated, errors)
            valid = valid and ok
        else:
            error = _validate_value(inputs, name, kind, extra, config, name in d.checks)
            if error:
                errors.append(error)
    for name, check in d.checks.items():
        if name in inputs and not is_link(inputs[name]):
            result = check(inputs[name])
            if result is not True:
                details = name if result is False else f"{name} - {result}"
                errors.append(
                    _error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        details,
                        {"input_name": name},
                    )
                )
    result = (not errors and valid, errors, node_id)
    validated[node_id] = result
    return result


def _validate_link(prompt, name, link, kind, config, defs, validated, errors) -> bool:
    """Check one linked input; False if the linked node is invalid (its errors are its own)."""
    if len(link) != 2:
        msg = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
        errors.append(
            _error(
                "bad_linked_input",
                msg,
                name,
                {"input_name": name, "input_config": config, "received_value": link},
            )
        )
        return True
    source = link[0]
    received = defs[prompt[source]["class_type"]].outputs[link[1]]
    if not types_match(received, kind):
        details = f"{name}, received_type({received}) mismatch input_type({kind})"
        errors.append(
            _error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                details,
                {
                    "input_name": name,
                    "input_config": config,
                    "received_type": received,
                    "linked_node": link,
                },
            )
        )
        return True
    try:
        return bool(_validate_node(prompt, source, defs, validated)[0])
    except Exception as ex:
        reason = _exception(
            "exception_during_inner_validation",
            "Exception when validating inner node",
            ex,
            input_name=name,
            input_config=config,
            exception_message=str(ex),
            linked_node=link,
        )
        validated[source] = (False, [reason], source)
        return False


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "INT": int,
    "FLOAT": float,
    "STRING": str,
    "BOOLEAN": bool,
}


def _validate_value(inputs, name, kind, extra, config, custom: bool) -> dict[str, Any] | None:
    """Convert a widget value in place and check its range and choices."""
    value = inputs[name]
    if isinstance(value, dict) and "__value__" in value:
        value = inputs[name] = value["__value__"]
    if isinstance(kind, str) and kind in _CONVERT:
        try:
            value = inputs[name] = _CONVERT[kind](value)
        except Exception as ex:
            return _error(
                "invalid_input_type",
                f"Failed to convert an input value to a {kind} value",
                f"{name}, {value}, {ex}",
                {
                    "input_name": name,
                    "input_config": config,
                    "received_value": value,
                    "exception_message": str(ex),
                },
            )
    if custom:
        return None
    info = {"input_name": name, "input_config": config, "received_value": value}
    if "min" in extra and value < extra["min"]:
        msg = "Value {} smaller than min of {}".format(value, extra["min"])
        return _error("value_smaller_than_min", msg, name, info)
    if "max" in extra and value > extra["max"]:
        msg = "Value {} bigger than max of {}".format(value, extra["max"])
        return _error("value_bigger_than_max", msg, name, info)
    if isinstance(kind, list) or kind == "COMBO":
        options = extra.get("options", []) if kind == "COMBO" else kind
        if value not in options:
            listing = f"(list of length {len(options)})" if len(options) > 20 else str(options)
            info["input_config"] = None if len(options) > 20 else config
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {listing}",
                info,
            )
    return None


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's link type rule: equal, ``*`` on either side, or a shared comma-separated type."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def format_value(value: Any) -> Any:
    """An input value as ``execution_error.current_inputs`` shows it."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    if isinstance(value, np.ndarray):
        return f"tensor(shape={list(value.shape)})"
    return str(value)


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


def _check_image(dirs: Dirs, name: Any) -> bool | str:
    path = resolve_input(dirs, name)
    return True if path is not None and path.exists() else f"Invalid image file: {name}"


def _file_digest(dirs: Dirs, name: Any) -> str:
    path = resolve_input(dirs, name)
    if path is None or not path.is_file():
        return ""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _input_images(folder: Path) -> list[str]:
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
    """Load ``model`` onto the GPU unless it is already there (one diffusion model at a time)."""
    if ctx.gpu.model == model.file:
        return
    await ctx.sleep(load_seconds(ctx.profile))
    ctx.gpu.model, ctx.gpu.weights_gb = model.file, resident_gb(model.size, ctx.profile.vram_gb)


async def _ensure_small(ctx: NodeContext, folder: str, files: tuple[str, ...]) -> None:
    missing = [f for f in files if f not in ctx.gpu.small]
    if missing:
        await ctx.sleep(load_seconds(ctx.profile, LOAD_SHARE[folder]) * len(missing))
        ctx.gpu.small.update(missing)


async def _unet_loader(ctx: NodeContext, unet_name: str, weight_dtype: str) -> Output:
    model = Model(unet_name, model_size(unet_name, weight_dtype))
    await ensure_model(ctx, model)
    return Output((model,))


async def _clip_loader(
    ctx: NodeContext, type: str, device: str = "default", **names: str
) -> Output:
    files = tuple(names[k] for k in sorted(names))
    await _ensure_small(ctx, "text_encoders", files)
    return Output((Clip(files, type),))


async def _vae_loader(ctx: NodeContext, vae_name: str) -> Output:
    await _ensure_small(ctx, "vae", (vae_name,))
    return Output((Vae(vae_name),))


async def _clip_vision_loader(ctx: NodeContext, clip_name: str) -> Output:
    await _ensure_small(ctx, "clip_vision", (clip_name,))
    return Output((ClipVision(clip_name),))


async def _checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> Output:
    model = Model(ckpt_name, model_size(ckpt_name))
    await ensure_model(ctx, model)
    return Output((model, Clip((ckpt_name,), "checkpoint"), Vae(ckpt_name)))


async def _lora_loader(
    ctx: NodeContext, model: Model, lora_name: str, strength_model: float
) -> Output:
    await ctx.sleep(load_seconds(ctx.profile, 0.05))
    return Output((replace(model, loras=(*model.loras, lora_name)),))


async def _model_sampling(ctx: NodeContext, model: Model, shift: float) -> Output:
    return Output((replace(model, shift=shift),))


# --- runners: conditioning and latents ---------------------------------------------------


async def _text_encode(ctx: NodeContext, text: str, clip: Clip) -> Output:
    await ctx.sleep(0.02)
    return Output((Conditioning(text),))


async def _guidance(ctx: NodeContext, conditioning: Conditioning, guidance: float) -> Output:
    return Output((replace(conditioning, guidance=guidance),))


async def _clip_vision_encode(
    ctx: NodeContext, clip_vision: ClipVision, image: np.ndarray, crop: str
) -> Output:
    await ctx.sleep(0.02)
    return Output((ClipVisionOutput(tuple(image.shape)),))


async def _empty_latent(
    ctx: NodeContext, width: int, height: int, length: int, batch_size: int
) -> Output:
    return Output((Latent(width, height, length, batch_size),))


async def _wan_image_to_video(
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


async def _wan_track_to_video(
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
        start_image=cond.start_image,
    )


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


async def _ksampler(
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
    fail_at = failure_step(ctx.profile, ctx.prompt_id, steps)
    tick = step_seconds(ctx.profile, lat.width, lat.height, lat.length, lat.batch)
    for step in range(1, steps + 1):
        await ctx.sleep(tick)
        if step == fail_at:
            reason = CUDA_ERRORS[int(unit_hash("cuda", ctx.prompt_id) * len(CUDA_ERRORS))]
            raise NodeFailure("RuntimeError", f"CUDA error: {reason}{CUDA_SUFFIX}")
        await ctx.progress(step, steps, await ctx.cpu(preview_jpeg, spec, step, steps))
    return Output((replace(lat, clip=spec),))


def render_frames(spec: ClipSpec, batch: int) -> np.ndarray:
    """All frames of a clip (and of its batch siblings, seeded one apart) as one array."""
    clips = [spec if b == 0 else replace(spec, seed=spec.seed + b) for b in range(batch)]
    return np.stack([frame for clip in clips for frame in synthesize(clip)])


async def _vae_decode(ctx: NodeContext, samples: Latent, vae: Vae, **tiling: int) -> Output:
    spec = samples.clip or clip_spec(samples, Conditioning(""), 0, ctx.fps)
    return Output((await ctx.cpu(render_frames, spec, samples.batch),))


# --- runners: images and video -------------------------------------------------------------


async def _load_image(ctx: NodeContext, image: str) -> Output:
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


async def _empty_image(
    ctx: NodeContext, width: int, height: int, batch_size: int, color: int
) -> Output:
    bgr = (color & 0xFF, (color >> 8) & 0xFF, (color >> 16) & 0xFF)
    return Output(
        (np.broadcast_to(np.array(bgr, np.uint8), (batch_size, height, width, 3)).copy(),)
    )


async def _image_blur(
    ctx: NodeContext, image: np.ndarray, blur_radius: int, sigma: float
) -> Output:
    size = 2 * blur_radius + 1
    return Output((np.stack([cv2.GaussianBlur(f, (size, size), sigma) for f in image]),))


async def _create_video(
    ctx: NodeContext, images: np.ndarray, fps: float, audio: Any = None
) -> Output:
    return Output((Video(images, float(fps)),))


async def _save_video(
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


async def _save_image(ctx: NodeContext, images: np.ndarray, filename_prefix: str) -> Output:
    _, height, width = images.shape[:3]
    folder, stem, counter, subfolder = save_path(ctx.dirs.output, filename_prefix, width, height)
    names = await ctx.cpu(_write_pngs, images, folder, stem, counter)
    return Output(ui={"images": [_saved(n, subfolder) for n in names]})


async def _preview_image(ctx: NodeContext, images: np.ndarray) -> Output:
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


async def _save_webp(
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


# --- graph helpers ---------------------------------------------------------------------------


def downstream_fps(prompt: Mapping[str, Any], node_id: str) -> float:
    """The fps of the first CreateVideo/SaveAnimatedWEBP fed (directly or not) by ``node_id``."""
    seen, frontier = {node_id}, [node_id]
    while frontier:
        current = frontier.pop(0)
        for nid, node in prompt.items():
            links = [
                v for v in node.get("inputs", {}).values() if is_link(v) and v and v[0] == current
            ]
            if not links or nid in seen:
                continue
            fps = node.get("inputs", {}).get("fps")
            if node.get("class_type") in ("CreateVideo", "SaveAnimatedWEBP") and _is_number(fps):
                return float(fps)
            seen.add(nid)
            frontier.append(nid)
    return DEFAULT_FPS


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def signature(
    prompt: Mapping[str, Any], defs: Mapping[str, NodeDef], node_id: str, memo: dict
) -> str:
    """A node's cache key: its class, constants, outside state and its inputs' keys."""
    if node_id in memo:
        return memo[node_id]
    memo[node_id] = "cycle"
    node = prompt[node_id]
    d = defs[node["class_type"]]
    inputs = node.get("inputs", {})
    parts: list[Any] = [node["class_type"], d.fingerprint(inputs) if d.fingerprint else None]
    for name in sorted(inputs):
        value = inputs[name]
        if is_link(value) and len(value) == 2 and value[0] in prompt:
            parts.append([name, signature(prompt, defs, value[0], memo), value[1]])
        else:
            parts.append([name, value])
    memo[node_id] = json.dumps(parts, sort_keys=True, default=str)
    return memo[node_id]


def traceback_lines(ex: BaseException) -> list[str]:
    """Traceback lines for an ``execution_error`` (synthetic for emulated failures)."""
    if isinstance(ex, NodeFailure):
        return [
            '  File "execution.py", line 496, in execute\n'
            "    output_data, output_ui, *_ = await get_output_data(...)\n"
        ]
    return traceback.format_tb(ex.__traceback__)
