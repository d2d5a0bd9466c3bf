"""The node classes an emulated ComfyUI node offers, as ``GET /object_info`` shows them.

Definitions mirror ComfyUI's ``INPUT_TYPES`` (0.3.64, and the Wan 2.2 and Hunyuan Video 1.5
classes of ``comfy_extras/nodes_wan.py`` and ``nodes_hunyuan.py``, and LTX-2's of
``nodes_lt.py``, ``nodes_lt_audio.py`` and ``nodes_custom_sampler.py``) (input names, types,
defaults, ranges, order, outputs, categories); combo inputs list the model files of the
node's profile. Each
class points at its runner in :mod:`farm.emulators.comfy_runners`; graphs are checked by
:mod:`farm.emulators.comfy_validation` and run by :mod:`farm.emulators.comfy_executor`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from farm.emulators import comfy_runners as runners
from farm.emulators.comfy_runners import Dirs, Runner
from farm.emulators.profile import NodeProfile

MAX_RESOLUTION = 16384
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
DUAL_CLIP_TYPES = [
    "sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
]  # fmt: skip
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


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


def _combo3(options: list[str], default: str | None = None, **extra: Any) -> tuple:
    spec = {"options": list(options), **({"default": default} if default else {}), **extra}
    return ("COMBO", spec)


def _v3(kind: str, **spec: Any) -> tuple:
    """A v3 (``comfy_api.latest.io``) input: only the options its source sets."""
    return (kind, spec)


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
    ltx = {"module": "comfy_extras.nodes_lt", "v3": True}
    ltx_audio = {"module": "comfy_extras.nodes_lt_audio", "v3": True}
    custom = {"module": "comfy_extras.nodes_custom_sampler", "v3": True}
    two_cond = {
        "outputs": ("CONDITIONING", "CONDITIONING"),
        "output_names": ("positive", "negative"),
    }
    defs = [
        NodeDef(
            "UNETLoader",
            "advanced/loaders",
            {"unet_name": _combo(files("diffusion_models")), "weight_dtype": _combo(WEIGHT_DTYPES)},
            runners.unet_loader,
            ("MODEL",),
        ),
        NodeDef(
            "CLIPLoader",
            "advanced/loaders",
            {"clip_name": _combo(files("text_encoders")), "type": _combo(CLIP_TYPES)},
            runners.clip_loader,
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
            runners.clip_loader,
            ("CLIP",),
            optional={"device": _combo(["default", "cpu"], advanced=True)},
        ),
        NodeDef(
            "VAELoader", "loaders", {"vae_name": _combo(files("vae"))}, runners.vae_loader, ("VAE",)
        ),
        NodeDef(
            "CLIPVisionLoader",
            "loaders",
            {"clip_name": _combo(files("clip_vision"))},
            runners.clip_vision_loader,
            ("CLIP_VISION",),
        ),
        NodeDef(
            "CheckpointLoaderSimple",
            "loaders",
            {"ckpt_name": _combo(files("checkpoints"))},
            runners.checkpoint_loader,
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
            runners.lora_loader,
            ("MODEL",),
        ),
        NodeDef(
            "ModelSamplingSD3",
            "advanced/model",
            {"model": _link("MODEL"), "shift": _float(3.0, 0.0, 100.0, 0.01)},
            runners.model_sampling,
            ("MODEL",),
            module="comfy_extras.nodes_model_advanced",
        ),
        NodeDef(
            "CLIPTextEncode",
            "conditioning",
            {"text": _string(multiline=True, dynamicPrompts=True), "clip": _link("CLIP")},
            runners.text_encode,
            ("CONDITIONING",),
        ),
        NodeDef(
            "FluxGuidance",
            "advanced/conditioning/flux",
            {"conditioning": _link("CONDITIONING"), "guidance": _float(3.5, 0.0, 100.0, 0.1)},
            runners.guidance,
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
            runners.clip_vision_encode,
            ("CLIP_VISION_OUTPUT",),
        ),
        NodeDef(
            "LoadImage",
            "image",
            {"image": _combo(runners.input_images(dirs.input), image_upload=True)},
            runners.load_image,
            ("IMAGE", "MASK"),
            checks={"image": lambda v: runners.check_image(dirs, v)},
            fingerprint=lambda inputs: runners.file_digest(dirs, inputs.get("image")),
        ),
        NodeDef(
            "EmptyHunyuanLatentVideo",
            "latent/video",
            {
                **video_size,
                "width": _int(848, 16, MAX_RESOLUTION, 16),
                "length": _int(25, 1, MAX_RESOLUTION, 4),
            },
            runners.empty_latent,
            ("LATENT",),
            module="comfy_extras.nodes_hunyuan",
            v3=True,
        ),
        NodeDef(
            "EmptyHunyuanVideo15Latent",
            "latent/video",
            {
                **video_size,
                "width": _int(848, 16, MAX_RESOLUTION, 16),
                "length": _int(25, 1, MAX_RESOLUTION, 4),
            },
            runners.empty_latent,
            ("LATENT",),
            display_name="Empty HunyuanVideo 1.5 Latent",
            module="comfy_extras.nodes_hunyuan",
            v3=True,
        ),
        NodeDef(
            "Wan22ImageToVideoLatent",
            "conditioning/inpaint",
            {
                "vae": _link("VAE"),
                "width": _int(1280, 32, MAX_RESOLUTION, 32),
                "height": _int(704, 32, MAX_RESOLUTION, 32),
                "length": _int(49, 1, MAX_RESOLUTION, 4),
                "batch_size": _int(1, 1, 4096),
            },
            runners.wan22_image_to_video_latent,
            ("LATENT",),
            optional={"start_image": _link("IMAGE")},
            module="comfy_extras.nodes_wan",
            v3=True,
        ),
        NodeDef(
            "WanImageToVideo",
            required={**wan_in, **video_size},
            run=runners.wan_image_to_video,
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
            run=runners.wan_track_to_video,
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
            runners.ksampler,
            ("LATENT",),
        ),
        NodeDef(
            "KSamplerAdvanced",
            "sampling",
            {
                "model": _link("MODEL"),
                "add_noise": _combo(["enable", "disable"]),
                "noise_seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                "steps": _int(20, 1, 10000),
                "cfg": _float(8.0, 0.0, 100.0, 0.1, round=0.01),
                "sampler_name": _combo(SAMPLERS),
                "scheduler": _combo(SCHEDULERS),
                "positive": _link("CONDITIONING"),
                "negative": _link("CONDITIONING"),
                "latent_image": _link("LATENT"),
                "start_at_step": _int(0, 0, 10000),
                "end_at_step": _int(10000, 0, 10000),
                "return_with_leftover_noise": _combo(["disable", "enable"]),
            },
            runners.ksampler_advanced,
            ("LATENT",),
        ),
        NodeDef(
            "VAEDecode",
            "latent",
            {"samples": _link("LATENT"), "vae": _link("VAE")},
            runners.vae_decode,
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
            runners.vae_decode,
            ("IMAGE",),
        ),
        NodeDef(
            "CreateVideo",
            "image/video",
            {"images": _link("IMAGE"), "fps": _float(30.0, 1.0, 120.0, 1.0)},
            runners.create_video,
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
            runners.save_video,
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
            runners.empty_image,
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
            runners.image_blur,
            ("IMAGE",),
            module="comfy_extras.nodes_post_processing",
        ),
        NodeDef(
            "ImageInvert", "image", {"image": _link("IMAGE")}, runners.image_invert, ("IMAGE",)
        ),
        NodeDef(
            "ImageBatch",
            "image",
            {"image1": _link("IMAGE"), "image2": _link("IMAGE")},
            runners.image_batch,
            ("IMAGE",),
        ),
        NodeDef(
            "RepeatImageBatch",
            "image/batch",
            {"image": _link("IMAGE"), "amount": _int(1, 1, 4096)},
            runners.repeat_image_batch,
            ("IMAGE",),
            module="comfy_extras.nodes_images",
        ),
        NodeDef(
            "ImageFromBatch",
            "image/batch",
            {"image": _link("IMAGE"), "batch_index": _int(0, 0, 4095), "length": _int(1, 1, 4096)},
            runners.image_from_batch,
            ("IMAGE",),
            module="comfy_extras.nodes_images",
        ),
        NodeDef(
            "ImageScale",
            "image/upscaling",
            {
                "image": _link("IMAGE"),
                "upscale_method": _combo(list(runners.SCALE_METHODS)),
                "width": _int(512, 0, MAX_RESOLUTION, 1),
                "height": _int(512, 0, MAX_RESOLUTION, 1),
                "crop": _combo(["disabled", "center"]),
            },
            runners.image_scale,
            ("IMAGE",),
        ),
        NodeDef(
            "PreviewImage",
            "image",
            {"images": _link("IMAGE")},
            runners.preview_image,
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "SaveImage",
            "image",
            {"images": _link("IMAGE"), "filename_prefix": image_prefix},
            runners.save_image,
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
            runners.save_webp,
            output_node=True,
            module="comfy_extras.nodes_images",
        ),
        # --- LTX-2: audio-video latents, its loaders and custom sampling ---
        NodeDef(
            "LTXVAudioVAELoader",
            "model/loaders",
            {"ckpt_name": _combo3(files("checkpoints"), tooltip="Audio VAE checkpoint to load.")},
            runners.ltxv_audio_vae_loader,
            ("VAE",),
            output_names=("Audio VAE",),
            display_name="Load LTXV Audio VAE",
            **ltx_audio,
        ),
        NodeDef(
            "LTXAVTextEncoderLoader",
            "model/loaders",
            {
                "text_encoder": _combo3(files("text_encoders")),
                "ckpt_name": _combo3(files("checkpoints")),
                "device": _combo3(["default", "cpu"], advanced=True),
            },
            runners.ltxav_text_encoder_loader,
            ("CLIP",),
            display_name="Load LTXV Audio Text Encoder",
            description="Recipes:\nltxav: gemma 3 12B or matching gemma 4 model",
            **ltx_audio,
        ),
        NodeDef(
            "LTXVEmptyLatentAudio",
            "model/latent/ltxv",
            {
                "frames_number": _v3(
                    "INT",
                    default=97,
                    min=1,
                    max=1000,
                    step=1,
                    display="number",
                    tooltip="Number of frames.",
                ),
                "frame_rate": _v3(
                    "INT",
                    default=25,
                    min=1,
                    max=1000,
                    step=1,
                    display="number",
                    tooltip="Number of frames per second.",
                ),
                "batch_size": _v3(
                    "INT",
                    default=1,
                    min=1,
                    max=4096,
                    display="number",
                    tooltip="The number of latent audio samples in the batch.",
                ),
                "audio_vae": _v3(
                    "VAE",
                    display_name="Audio VAE",
                    tooltip="The Audio VAE model to get configuration from.",
                ),
            },
            runners.ltxv_empty_latent_audio,
            ("LATENT",),
            output_names=("Latent",),
            display_name="LTXV Empty Latent Audio",
            **ltx_audio,
        ),
        NodeDef(
            "LTXVAudioVAEDecode",
            "model/latent/ltxv",
            {
                "samples": _v3("LATENT", tooltip="The latent to be decoded."),
                "audio_vae": _v3(
                    "VAE",
                    display_name="Audio VAE",
                    tooltip="The Audio VAE model used for decoding the latent.",
                ),
            },
            runners.ltxv_audio_vae_decode,
            ("AUDIO",),
            output_names=("Audio",),
            display_name="LTXV Audio VAE Decode",
            **ltx_audio,
        ),
        NodeDef(
            "EmptyLTXVLatentVideo",
            "latent/video/ltxv",
            {
                "width": _v3("INT", default=768, min=64, max=MAX_RESOLUTION, step=32),
                "height": _v3("INT", default=512, min=64, max=MAX_RESOLUTION, step=32),
                "length": _v3("INT", default=97, min=1, max=MAX_RESOLUTION, step=8),
                "batch_size": _v3("INT", default=1, min=1, max=4096),
            },
            runners.empty_ltxv_latent,
            ("LATENT",),
            **ltx,
        ),
        NodeDef(
            "LTXVImgToVideoInplace",
            "conditioning/video_models",
            {
                "vae": _link("VAE"),
                "image": _link("IMAGE"),
                "latent": _link("LATENT"),
                "strength": _v3("FLOAT", default=1.0, min=0.0, max=1.0),
                "bypass": _v3("BOOLEAN", default=False, tooltip="Bypass the conditioning."),
            },
            runners.ltxv_img_to_video_inplace,
            ("LATENT",),
            output_names=("latent",),
            **ltx,
        ),
        NodeDef(
            "LTXVConditioning",
            "conditioning/video_models",
            {
                "positive": _link("CONDITIONING"),
                "negative": _link("CONDITIONING"),
                "frame_rate": _v3("FLOAT", default=25.0, min=0.0, max=1000.0, step=0.01),
            },
            runners.ltxv_conditioning,
            **two_cond,
            **ltx,
        ),
        NodeDef(
            "LTXVScheduler",
            "sampling/custom_sampling/schedulers",
            {
                "steps": _v3("INT", default=20, min=1, max=10000),
                "max_shift": _v3("FLOAT", default=2.05, min=0.0, max=100.0, step=0.01),
                "base_shift": _v3("FLOAT", default=0.95, min=0.0, max=100.0, step=0.01),
                "stretch": _v3(
                    "BOOLEAN",
                    default=True,
                    advanced=True,
                    tooltip="Stretch the sigmas to be in the range [terminal, 1].",
                ),
                "terminal": _v3(
                    "FLOAT",
                    default=0.1,
                    min=0.0,
                    max=0.99,
                    step=0.01,
                    advanced=True,
                    tooltip="The terminal value of the sigmas after stretching.",
                ),
            },
            runners.ltxv_scheduler,
            ("SIGMAS",),
            optional={"latent": _link("LATENT")},
            **ltx,
        ),
        NodeDef(
            "LTXVPreprocess",
            "video/preprocessors",
            {
                "image": _link("IMAGE"),
                "img_compression": _v3(
                    "INT",
                    default=35,
                    min=0,
                    max=100,
                    tooltip="Amount of compression to apply on image.",
                ),
            },
            runners.ltxv_preprocess,
            ("IMAGE",),
            output_names=("output_image",),
            display_name="LTXV Preprocess",
            **ltx,
        ),
        NodeDef(
            "LTXVConcatAVLatent",
            "latent/video/ltxv",
            {"video_latent": _link("LATENT"), "audio_latent": _link("LATENT")},
            runners.ltxv_concat_av_latent,
            ("LATENT",),
            output_names=("latent",),
            **ltx,
        ),
        NodeDef(
            "LTXVSeparateAVLatent",
            "latent/video/ltxv",
            {"av_latent": _link("LATENT")},
            runners.ltxv_separate_av_latent,
            ("LATENT", "LATENT"),
            output_names=("video_latent", "audio_latent"),
            description="LTXV Separate AV Latent",
            **ltx,
        ),
        NodeDef(
            "RandomNoise",
            "sampling/custom_sampling/noise",
            {
                "noise_seed": _v3(
                    "INT", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True
                )
            },
            runners.random_noise,
            ("NOISE",),
            **custom,
        ),
        NodeDef(
            "KSamplerSelect",
            "sampling/custom_sampling/samplers",
            {"sampler_name": _combo3(SAMPLERS)},
            runners.ksampler_select,
            ("SAMPLER",),
            **custom,
        ),
        NodeDef(
            "CFGGuider",
            "sampling/custom_sampling/guiders",
            {
                "model": _link("MODEL"),
                "positive": _link("CONDITIONING"),
                "negative": _link("CONDITIONING"),
                "cfg": _v3("FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            },
            runners.cfg_guider,
            ("GUIDER",),
            **custom,
        ),
        NodeDef(
            "SamplerCustomAdvanced",
            "sampling/custom_sampling",
            {
                "noise": _link("NOISE"),
                "guider": _link("GUIDER"),
                "sampler": _link("SAMPLER"),
                "sigmas": _link("SIGMAS"),
                "latent_image": _link("LATENT"),
            },
            runners.sampler_custom_advanced,
            ("LATENT", "LATENT"),
            output_names=("output", "denoised_output"),
            **custom,
        ),
    ]
    return {d.name: d for d in defs}


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


def is_link(value: Any) -> bool:
    return isinstance(value, list)


def full_type_name(cls: type) -> str:
    """``module.Qualname`` of an exception class, bare for builtins (as ComfyUI reports)."""
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
