"""WanGP settings for one farm job: pure, no I/O beyond reading the model facts once.

A WanGP generation is one settings dict (``model_type``, ``prompt``, ``resolution``,
``video_length``, ...; see ../shared/reference/wan2gp-interface.md). :func:`build_settings`
makes it from a :class:`~farm.planning.Job` and the model's facts in
``farm/data/wan2gp_models.json`` (frame grid, resolution block), so the node renders
exactly the size and length the farm asked for instead of silently snapping them.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from farm.planning import Job

MODELS_FILE = Path(__file__).resolve().parent / "data" / "wan2gp_models.json"
#: never split a multi-line prompt into several generations (the default fails headless)
PROMPT_MODE = "FG"


@cache
def _models_text() -> str:
    return MODELS_FILE.read_text()


def load_wan_models() -> dict[str, dict[str, Any]]:
    """The WanGP model facts by ``model_type`` (a fresh copy each call)."""
    return json.loads(_models_text())["models"]


def snap_size(value: int, step: int) -> int:
    """``value`` rounded down to a multiple of ``step`` (WanGP's block), at least one block."""
    return max(step, int(value) // step * step)


def snap_frames(frames: int, step: int, minimum: int) -> int:
    """``frames`` on the grid ``step·n + 1`` (nearest, ties up), at least ``minimum``."""
    return max(minimum, int((int(frames) - 1) / step + 0.5) * step + 1)


def clean_prompt(text: str) -> str:
    """The prompt as one line: blank lines would split it into several generations and a
    line starting with ``#`` would be dropped as a comment, so lines are joined with a
    space and leading ``#`` marks removed."""
    lines = (line.strip().lstrip("#").strip() for line in str(text or "").splitlines())
    return " ".join(line for line in lines if line)


def _label(text: object) -> str:
    """An id made safe for a file name and WanGP's ``{...}`` filename template."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def output_name(job: Job) -> str:
    """The ``output_filename`` template: literal scene, shot, quality and attempt (no
    placeholders, no braces), so every clip on the node names the job that made it."""
    parts = (_label(job.scene_id), _label(job.shot_id), _label(job.kind), f"a{job.attempt}")
    return "farm_" + "_".join(parts)


def build_settings(
    job: Job,
    model: dict[str, Any],
    *,
    override_profile: int | None = None,
    start_image: str | None = None,
) -> dict[str, Any]:
    """WanGP settings that render ``job`` with ``model`` (its entry in the model facts).

    ``start_image`` is what the node should read for the job's start image (a path it can
    open, or the name of an uploaded file); by default the job's own path.
    ``override_profile`` picks a lighter memory profile (1-5) for this generation.
    """
    p = job.params
    step = int(model["size_step"])
    width, height = snap_size(p["width"], step), snap_size(p["height"], step)
    settings: dict[str, Any] = {
        "model_type": job.model,
        "prompt": clean_prompt(p.get("prompt", "")),
        "multi_prompts_gen_type": PROMPT_MODE,
        "negative_prompt": clean_prompt(p.get("negative", "")),
        "resolution": f"{width}x{height}",
        "video_length": snap_frames(p["length"], model["frame_step"], model["min_frames"]),
        "seed": int(p.get("seed", -1)),
        "num_inference_steps": int(p["steps"]),
        "output_filename": output_name(job),
    }
    image = start_image or p.get("start_image")
    if image:
        settings.update(image_prompt_type="S", image_start=str(image))
    if override_profile is not None:
        settings["override_profile"] = int(override_profile)
    return settings
