"""What both WanGP backends share: the MCP one (:mod:`farm.backends.wan2gp`) and the CLI
batch mode (:mod:`farm.backends.wgp_cli`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from farm.planning import Job
from farm.settings import Settings
from farm.studio import catalog_for

EventFn = Callable[[str, dict[str, Any]], None]


def job_key(job: Job) -> str:
    """What identifies one attempt of one job, across redeliveries."""
    return job.attempt_id


def is_out_of_memory(text: str) -> bool:
    low = text.lower()
    squeezed = low.replace(" ", "").replace("_", "")
    return "outofmemory" in squeezed or "allocation on device" in low or "oom" in low.split()


def model_facts(model_type: str, settings: Settings) -> dict[str, Any]:
    """The farm's facts for a WanGP model id (grid, block), from the catalogue of a farm
    with ``settings`` (a studio's ``[wangp_models]`` included); unknown ids get Wan's."""
    model = catalog_for(settings).wan_models.get(model_type)
    return asdict(model) if model else {"frame_step": 4, "min_frames": 5, "size_step": 16}
