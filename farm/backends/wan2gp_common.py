"""What both WanGP backends share: the MCP one (:mod:`farm.backends.wan2gp`) and the CLI
batch mode (:mod:`farm.backends.wgp_cli`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from farm.planning import Job
from farm.wan_settings import load_wan_models

EventFn = Callable[[str, dict[str, Any]], None]


def job_key(job: Job) -> str:
    """What identifies one attempt of one job, across redeliveries."""
    return job.attempt_id


def is_out_of_memory(text: str) -> bool:
    low = text.lower()
    squeezed = low.replace(" ", "").replace("_", "")
    return "outofmemory" in squeezed or "allocation on device" in low or "oom" in low.split()


def model_facts(model_type: str) -> dict[str, Any]:
    """The farm's facts for a WanGP model id (grid, block); unknown ids get Wan's."""
    facts = load_wan_models().get(model_type)
    return facts or {"frame_step": 4, "min_frames": 5, "size_step": 16}
