"""What an emulated GPU node holds and how it behaves: its profile and its cost models.

A profile is a JSON file (see ``deploy/nodes/*.json`` and docs/emulators.md)::

    {"name": "gpu-a", "gpu": "NVIDIA GeForce RTX 4090", "vram_gb": 24,
     "models": {"diffusion_models": [...], "text_encoders": [...], "vae": [...]},
     "speed": 1.0, "model_load_s": 2.0, "step_s": 0.15, "failure_rate": 0.0,
     "faults": {"hang": {"rate": 0.1, "at_step": 2}}, "api": "0.38"}

``faults`` (optional) injects node failures for tests: ``crash``, ``hang``, ``slow``,
``http_500``, ``ws_drop`` and ``jitter`` (a shaky camera on a request's first takes; see
docs/emulators.md, "Fault injection"). ``api`` (ComfyUI nodes, optional) picks the server
generation: ``"0.3"`` (the default, ComfyUI 0.3.64's routes), ``"0.38"`` (the job API,
409 on a duplicate ``prompt_id``, ``/interrupt`` by ``prompt_id``) or ``"2024"`` (ComfyUI
of March 2024: prompt ids of its own choosing; see docs/emulators.md).
``finetunes`` (WanGP nodes, optional) is a folder of the node's own WanGP models, one
``<model_type>.json`` each in WanGP's finetune format; list the ids under ``models.wangp``
when their weights are on the node.

The cost models are pure functions of the profile and the job, so tests need no server.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import ConfigError
from farm.jsonfile import read_json

MODEL_FOLDERS = (
    "diffusion_models", "text_encoders", "vae", "clip_vision", "checkpoints", "loras",
    "wangp",  # WanGP nodes: the model_type ids whose weights are on disk
)  # fmt: skip
#: the workload ``step_s`` is measured at: 832x480 pixels, 81 frames
REFERENCE_VOXELS = 832 * 480 * 81
MIN_STEP_S = 0.01
#: VRAM model (GB): CUDA context, VAE and allocator slack; and the smallest working set of
#: weights that must stay resident while the rest is offloaded to system RAM
VRAM_OVERHEAD_GB = 1.0
MIN_RESIDENT_GB = 2.0
#: activations at the reference workload: a base plus a part growing with model size
ACT_BASE_GB = 2.5
ACT_PER_BPARAM_GB = 0.15

_DEFAULTS: dict[str, Any] = {"speed": 1.0, "model_load_s": 2.0, "step_s": 0.15, "failure_rate": 0.0}
_FIELDS = ("name", "gpu", "vram_gb", "models", *_DEFAULTS, "faults", "api", "finetunes")
#: the ComfyUI server generations an emulated node can speak (``api`` in the profile)
API_GENERATIONS = {
    "0.3": "ComfyUI 0.3.64: no job API",
    "0.38": "the job API of late 2026",
    "2024": "ComfyUI of March 2024: its own prompt ids, no /models, /features or job API",
}
#: each fault and its settings (``rate`` is the share of prompts it hits)
FAULTS: dict[str, tuple[str, ...]] = {
    "crash": ("rate", "at_step"),
    "hang": ("rate", "at_step"),
    "slow": ("rate", "factor"),
    "http_500": ("rate",),
    "ws_drop": ("rate", "at_step"),
    "jitter": ("rate", "px", "takes"),
}
_FAULT_FIXES = {
    "rate": "a fraction between 0 and 1, e.g. 0.5 (default 1.0)",
    "at_step": "a sampler step >= 1 (a whole number), e.g. 2 (default 1)",
    "factor": "a slowdown multiplier > 0, e.g. 4.0 (default 4.0)",
    "px": "a camera shake in pixels > 0, e.g. 6.0 (default 6.0)",
    "takes": "how many takes of a request are shaken, a whole number >= 1 (default 1)",
}
#: settings that are whole numbers
_INT_SETTINGS = ("at_step", "takes")


@dataclass(frozen=True)
class Fault:
    """One injected fault: the share of prompts it hits, and its step, slowdown factor,
    or camera shake (``px``, on the first ``takes`` renders of a request)."""

    rate: float = 1.0
    at_step: int = 1
    factor: float = 4.0
    px: float = 6.0
    takes: int = 1


@dataclass(frozen=True)
class NodeProfile:
    """An emulated node: identity, GPU, model inventory and timing/failure knobs."""

    name: str
    gpu: str
    vram_gb: float
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    speed: float = 1.0
    model_load_s: float = 2.0
    step_s: float = 0.15
    failure_rate: float = 0.0
    faults: Mapping[str, Fault] = field(default_factory=dict)
    api: str = "0.3"
    #: WanGP nodes: the folder of the node's own models, ``<model_type>.json`` each in
    #: WanGP's finetune format (:func:`farm.emulators.wan2gp_settings.node_catalogue`)
    finetunes: Path | None = None

    @property
    def job_api(self) -> bool:
        """Whether the node speaks ComfyUI's newer generation (``/api/jobs`` and the rest)."""
        return self.api == "0.38"

    @property
    def legacy(self) -> bool:
        """Whether the node speaks ComfyUI of March 2024: it chooses every prompt id itself,
        sends neither ``progress_state`` nor ``execution_success`` nor timestamps, and has
        no ``/models`` or ``/features`` routes."""
        return self.api == "2024"

    def files(self, folder: str) -> list[str]:
        """The model files held in ``folder`` (empty for an unknown folder)."""
        return list(self.models.get(folder, ()))


def load_profile(path: Path) -> NodeProfile:
    """Read and check a profile file; ConfigError names each bad field and its fix."""
    path = Path(path)
    data = read_json(path, "node profile", ConfigError)
    return parse_profile(data, str(path), path.resolve().parent)


def parse_profile(data: Any, where: str = "profile", folder: Path | None = None) -> NodeProfile:
    """Check a decoded profile and build it; every problem is reported at once. A relative
    ``finetunes`` folder is found in ``folder`` (the profile's; default: the current one)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: a node profile is a JSON object with fields {', '.join(_FIELDS)}"
        )
    problems = [
        f"unknown field {k!r}: remove it (known: {', '.join(_FIELDS)})"
        for k in data
        if k not in _FIELDS
    ]
    values = {**_DEFAULTS, **{k: v for k, v in data.items() if k in _FIELDS}}
    for key in ("name", "gpu"):
        if not isinstance(values.get(key), str) or not values[key].strip():
            problems.append(
                f'{key}: required non-empty string (e.g. "gpu-a", "NVIDIA GeForce RTX 4090")'
            )
    checks = {
        "vram_gb": (lambda v: v > 0, "a number of gigabytes > 0, e.g. 24"),
        "speed": (lambda v: v > 0, "a multiplier > 0 (1.0 = reference GPU, 0.5 = twice as slow)"),
        "model_load_s": (lambda v: v >= 0, "seconds >= 0, e.g. 2.0"),
        "step_s": (lambda v: v > 0, "seconds per sampler step at 832x480x81, > 0, e.g. 0.15"),
        "failure_rate": (lambda v: 0 <= v <= 1, "a fraction between 0 and 1, e.g. 0.05"),
    }
    for key, (ok, fix) in checks.items():
        value = values.get(key)
        if not _is_number(value) or not ok(value):
            problems.append(f"{key}: got {value!r}; use {fix}")
    api = values.get("api", "0.3")
    if api not in API_GENERATIONS:
        choices = "; ".join(f'"{k}" ({v})' for k, v in API_GENERATIONS.items())
        problems.append(f"api: got {api!r}; use {choices}")
    models = _parse_models(values.get("models"), problems)
    faults = _parse_faults(values.get("faults", {}), problems)
    finetunes = _parse_folder(values.get("finetunes"), folder, problems)
    if problems:
        raise ConfigError(
            "\n".join([f"invalid node profile {where}:", *(f"  - {p}" for p in problems)])
        )
    return NodeProfile(
        name=values["name"].strip(),
        gpu=values["gpu"].strip(),
        vram_gb=float(values["vram_gb"]),
        models=models,
        speed=float(values["speed"]),
        model_load_s=float(values["model_load_s"]),
        step_s=float(values["step_s"]),
        failure_rate=float(values["failure_rate"]),
        faults=faults,
        api=api,
        finetunes=finetunes,
    )


def _parse_folder(raw: Any, folder: Path | None, problems: list[str]) -> Path | None:
    """The ``finetunes`` folder (None when the profile has none)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        problems.append(f"finetunes: got {raw!r}; use the path of a folder of WanGP finetune "
                        'files (<model_type>.json), relative to the profile, e.g. "finetunes"')  # fmt: skip
        return None
    path = ((folder or Path.cwd()) / Path(raw).expanduser()).resolve()
    if not path.is_dir():
        problems.append(f"finetunes: {path} is not a folder; create it, or fix the path "
                        "(relative to the profile)")  # fmt: skip
        return None
    return path


def parse_faults(data: Any) -> dict[str, Fault]:
    """Check a decoded ``faults`` object (as ``PUT /emulator/faults`` takes it)."""
    problems: list[str] = []
    faults = _parse_faults(data, problems)
    if problems:
        raise ConfigError("\n".join(["invalid faults:", *(f"  - {p}" for p in problems)]))
    return faults


def faults_json(faults: Mapping[str, Fault]) -> dict[str, dict[str, float]]:
    """The ``faults`` object of ``faults``, every setting spelled out."""
    return {name: {k: getattr(f, k) for k in FAULTS[name]} for name, f in faults.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_models(raw: Any, problems: list[str]) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        problems.append(
            f"models: required object {{folder: [file, ...]}}; folders: {', '.join(MODEL_FOLDERS)}"
        )
        return {}
    models: dict[str, tuple[str, ...]] = {folder: () for folder in MODEL_FOLDERS}
    for folder, files in raw.items():
        if folder not in MODEL_FOLDERS:
            problems.append(
                f"models.{folder}: unknown folder; use one of {', '.join(MODEL_FOLDERS)}"
            )
        elif not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            problems.append(f"models.{folder}: must be a list of file names (strings)")
        else:
            models[folder] = tuple(sorted(set(files)))
    return models


def _parse_faults(raw: Any, problems: list[str]) -> dict[str, Fault]:
    names = ", ".join(FAULTS)
    if not isinstance(raw, dict):
        problems.append(
            f'faults: got {raw!r}; use an object such as {{"hang": {{"rate": 1.0, "at_step": 2}}}}'
            f" (faults: {names})"
        )
        return {}
    faults: dict[str, Fault] = {}
    for name, settings in raw.items():
        if name not in FAULTS:
            problems.append(f"faults.{name}: unknown fault; use one of {names}")
            continue
        known = FAULTS[name]
        if not isinstance(settings, dict):
            example = json.dumps({"rate": 1.0, **{k: getattr(Fault(), k) for k in known[1:]}})
            problems.append(f"faults.{name}: got {settings!r}; use an object such as {example}")
            continue
        before = len(problems)
        for key in settings:
            if key not in known:
                problems.append(
                    f"faults.{name}.{key}: unknown setting; remove it (known: {', '.join(known)})"
                )
        for key in known:
            if key in settings and not _fault_setting_ok(key, settings[key]):
                problems.append(
                    f"faults.{name}.{key}: got {settings[key]!r}; use {_FAULT_FIXES[key]}"
                )
        if len(problems) == before:
            faults[name] = Fault(
                **{k: settings[k] if k in _INT_SETTINGS else float(settings[k]) for k in settings}
            )
    return faults


def _fault_setting_ok(key: str, value: Any) -> bool:
    if key in _INT_SETTINGS:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not _is_number(value):
        return False
    return 0 <= value <= 1 if key == "rate" else value > 0


# --- cost models -------------------------------------------------------------------------


def workload(width: int, height: int, length: int, batch: int = 1) -> float:
    """The job's size relative to the reference workload (832x480, 81 frames)."""
    return width * height * length * batch / REFERENCE_VOXELS


def step_seconds(
    profile: NodeProfile, width: int, height: int, length: int, batch: int = 1
) -> float:
    """Seconds per sampler step: ``step_s`` scaled by the workload, divided by ``speed``."""
    return max(MIN_STEP_S, profile.step_s * workload(width, height, length, batch) / profile.speed)


def load_seconds(profile: NodeProfile, share: float = 1.0) -> float:
    """Seconds to load ``share`` of a diffusion model's worth of weights."""
    return profile.model_load_s * share / profile.speed


class Pace:
    """The emulated GPU time of one job, kept on a schedule from its start: each wait ends
    when the waits so far add up, so the emulator's own CPU work between them (preview
    JPEGs, frames) is absorbed rather than added. A job thus takes its modelled time, as
    on a GPU whose host work overlaps its kernels, unless the CPU work alone takes longer."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.owed = 0.0

    def seconds(self, wait: float) -> float:
        """How long to sleep now for a further ``wait`` of GPU time."""
        self.owed += wait
        return max(0.0, self.start + self.owed - time.monotonic())


@dataclass(frozen=True)
class ModelSize:
    """Billions of parameters and bytes per parameter of a diffusion model file."""

    params_b: float
    bytes_per_param: float

    @property
    def weights_gb(self) -> float:
        return self.params_b * self.bytes_per_param


_KNOWN_PARAMS = (
    ("hunyuanvideo1.5", 8.3), ("hunyuan_video", 13.0), ("hunyuan", 13.0), ("ltx", 13.0),
    ("flux", 12.0),
)  # fmt: skip


def model_size(file: str, weight_dtype: str = "default") -> ModelSize:
    """Size of a model from its file name ("...14B_fp16..."), with UNETLoader's dtype override."""
    low = file.lower()
    match = re.search(r"(\d+(?:\.\d+)?)b(?![a-z])", low)
    params = (
        float(match.group(1)) if match else next((p for k, p in _KNOWN_PARAMS if k in low), 5.0)
    )
    if weight_dtype.startswith("fp8") or "fp8" in low:
        width = 1.0
    elif "fp32" in low:
        width = 4.0
    else:
        width = 2.0
    return ModelSize(params, width)


def activations_gb(size: ModelSize, load: float) -> float:
    """Activation memory of a sampling run: (ACT_BASE_GB + ACT_PER_BPARAM_GB x params) x load."""
    return (ACT_BASE_GB + ACT_PER_BPARAM_GB * size.params_b) * load


def fits_in_vram(size: ModelSize, vram_gb: float, load: float) -> bool:
    """Whether a run fits once ComfyUI offloads all but a minimal working set of weights.

    needed = min(weights, MIN_RESIDENT_GB) + activations + VRAM_OVERHEAD_GB <= vram_gb
    """
    floor = min(MIN_RESIDENT_GB, size.weights_gb)
    return floor + activations_gb(size, load) + VRAM_OVERHEAD_GB <= vram_gb


def vram_needed_gb(size: ModelSize, vram_gb: float, load: float) -> float:
    """Peak VRAM of a run: resident weights (as many as fit, at least the working set),
    activations and overhead."""
    act = activations_gb(size, load)
    room = vram_gb - act - VRAM_OVERHEAD_GB
    resident = min(size.weights_gb, max(min(MIN_RESIDENT_GB, size.weights_gb), room))
    return resident + act + VRAM_OVERHEAD_GB


def resident_gb(size: ModelSize, vram_gb: float) -> float:
    """VRAM the weights keep between jobs (what a reference-size job leaves them)."""
    return min(size.weights_gb, max(0.0, vram_gb - VRAM_OVERHEAD_GB - ACT_BASE_GB))


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def failure_step(profile: NodeProfile, prompt_id: str, steps: int) -> int | None:
    """The sampler step at which job ``prompt_id`` fails, or None (deterministic per id)."""
    if profile.failure_rate <= 0 or unit_hash("fail", prompt_id) >= profile.failure_rate:
        return None
    return max(1, math.ceil(steps / 2))


def fault_hits(faults: Mapping[str, Fault], name: str, prompt_id: str) -> Fault | None:
    """Fault ``name`` if it hits prompt ``prompt_id`` (deterministic per id, like failures)."""
    fault = faults.get(name)
    return fault if fault is not None and unit_hash(name, prompt_id) < fault.rate else None


def shake_px(faults: Mapping[str, Fault], request: str, takes_seen: dict[str, int]) -> float:
    """Camera shake (px) the ``jitter`` fault puts on this render of ``request`` (a key of
    everything the clip depends on but its seed), counting it in ``takes_seen``: a request
    is shaken on its first ``takes`` renders, so a re-render with a new seed comes out
    steady. 0.0 when the fault is off or misses the request."""
    takes_seen[request] = seen = takes_seen.get(request, 0) + 1
    fault = faults.get("jitter")
    if fault is None or unit_hash("jitter", request) >= fault.rate or seen > fault.takes:
        return 0.0
    return fault.px


def http_500_hits(faults: Mapping[str, Fault], prompt_id: str, attempt: int) -> bool:
    """Whether the ``attempt``-th ``POST /prompt`` (from 1) of ``prompt_id`` answers HTTP 500."""
    fault = faults.get("http_500")
    return fault is not None and unit_hash("http_500", prompt_id, str(attempt)) < fault.rate
