"""Reading ComfyUI's job API (``GET /api/jobs/{id}``) in the client's terms.

A job's ``status`` is ``pending``, ``in_progress``, ``completed``, ``failed`` or
``cancelled`` (an interrupted run); a finished job carries the history entry's ``outputs``
and, as ``execution_status``, its ``status`` object. See docs/comfyui.md, "API generations".
"""

from __future__ import annotations

from typing import Any

#: where a job is, by its job API status: waiting, running, or over (anything else)
STATES = {"pending": "pending", "in_progress": "running"}


def job_state(job: dict[str, Any]) -> str:
    """``pending``, ``running`` or ``ended``."""
    return STATES.get(str(job.get("status")), "ended")


def history_entry(job: dict[str, Any]) -> dict[str, Any]:
    """The history entry of a finished job (``outputs`` and ``status``), as
    ``GET /history/{id}`` gives it; a missing ``execution_status`` is rebuilt from the
    job's status and error."""
    status = job.get("execution_status")
    if not isinstance(status, dict):
        ok = job.get("status") == "completed"
        if ok:
            messages: list[list[Any]] = []
        elif job.get("status") == "cancelled":
            messages = [["execution_interrupted", {"prompt_id": job.get("id")}]]
        else:
            messages = [["execution_error", job.get("execution_error") or {}]]
        status = {"status_str": "success" if ok else "error", "completed": ok,
                  "messages": messages}  # fmt: skip
    outputs = job.get("outputs")
    return {"outputs": outputs if isinstance(outputs, dict) else {}, "status": status}
