"""ComfyUI's job API, as the newer server generation (profile ``"api": "0.38"``) serves it.

    GET  /api/jobs                 every job: filter ``status`` (comma-separated: pending,
                                   in_progress, completed, failed, cancelled), ``workflow_id``;
                                   ``sort_by`` created_at | execution_duration, ``sort_order``
                                   asc | desc; ``limit``/``offset`` -> {"jobs", "pagination"}
    GET  /api/jobs/{job_id}        one job with its outputs, or 404 {"error": "Job not found"}
    POST /api/jobs/{job_id}/cancel {"cancelled": bool}: dequeue a pending job or interrupt the
                                   running one; a finished or unknown id is a no-op
    POST /api/jobs/cancel          {"job_ids": [...]}: the same for each (400 on a malformed id)

A job is a queue item or history entry seen through :func:`queue_job` and :func:`history_job`
(the field names, status values and pagination of ComfyUI's ``comfy_execution/jobs.py``).
The handlers need of the node only what :class:`JobNode` names.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
PREVIEWABLE = frozenset({"images", "video", "audio", "3d", "text"})


class QueuedJob(Protocol):
    """A queued or running prompt (``comfyui.QueueItem``)."""

    prompt_id: str

    def as_list(self) -> list[Any]: ...


class JobNode(Protocol):
    """What the job routes use of a node (``comfyui.EmulatedNode``)."""

    def running(self) -> list[QueuedJob]: ...

    def pending(self) -> list[QueuedJob]: ...

    def finished(self) -> dict[str, dict[str, Any]]:
        """History entries by prompt id, oldest first."""

    def dequeue(self, prompt_id: str) -> bool:
        """Remove a pending prompt; whether it was pending."""

    def interrupt_if_running(self, prompt_id: str) -> bool:
        """Interrupt the prompt if it is the one running; whether it was."""


def canonical_id(value: Any) -> bool:
    """Whether ``value`` is a UUID string in canonical lowercase hyphenated form."""
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _pruned(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if v is not None}


def _meta(extra: dict[str, Any]) -> tuple[Any, Any]:
    workflow = (extra.get("extra_pnginfo") or {}).get("workflow") or {}
    return extra.get("create_time"), workflow.get("id") if isinstance(workflow, dict) else None


def queue_job(item: list[Any], status: str, detail: bool = False) -> dict[str, Any]:
    """A queue item ``[number, prompt_id, prompt, extra_data, outputs]`` as a job."""
    number, prompt_id, prompt, extra, _ = item
    created, workflow_id = _meta(extra)
    job = _pruned({"id": prompt_id, "status": status, "priority": number,
                   "create_time": created, "outputs_count": 0, "previewable_outputs_count": 0,
                   "workflow_id": workflow_id})  # fmt: skip
    if detail:
        job["workflow"] = {"prompt": prompt, "extra_data": extra}
    return job


def _items(outputs: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (node_id, media, item)
        for node_id, node_out in outputs.items()
        if isinstance(node_out, dict)
        for media, items in node_out.items()
        if media != "animated" and isinstance(items, list)
        for item in items
        if isinstance(item, dict)
    ]


def history_job(prompt_id: str, entry: dict[str, Any], detail: bool = False) -> dict[str, Any]:
    """A history entry as a job: its status (``cancelled`` when interrupted), times, first
    error, output counts and preview; ``detail`` adds outputs, execution status and graph."""
    number, _, prompt, extra, _ = entry["prompt"]
    created, workflow_id = _meta(extra)
    status_info = entry.get("status") or {}
    started = ended = error = None
    interrupted = False
    for name, data in status_info.get("messages", []):
        if name == "execution_start":
            started = data.get("timestamp")
        elif name in ("execution_success", "execution_error", "execution_interrupted"):
            ended = data.get("timestamp")
            error = data if name == "execution_error" else error
            interrupted |= name == "execution_interrupted"
    if status_info.get("status_str") == "error":
        status = "cancelled" if interrupted else "failed"
    else:
        status = "completed"
    outputs = entry.get("outputs") or {}
    items = _items(outputs)
    previews = [(n, m, i) for n, m, i in items if m in PREVIEWABLE]
    saved = [p for p in previews if p[2].get("type") == "output"]
    first = (saved or previews or [None])[0]
    preview = {**first[2], "nodeId": first[0], "mediaType": first[1]} if first else None
    job = _pruned({"id": prompt_id, "status": status, "priority": number,
                   "create_time": created, "execution_start_time": started,
                   "execution_end_time": ended, "execution_error": error,
                   "outputs_count": len(items), "previewable_outputs_count": len(previews),
                   "preview_output": preview, "workflow_id": workflow_id})  # fmt: skip
    if detail:
        job.update(outputs=outputs, execution_status=status_info,
                   workflow={"prompt": prompt, "extra_data": extra})  # fmt: skip
    return job


def all_jobs(node: JobNode, statuses: list[str]) -> list[dict[str, Any]]:
    jobs = []
    if "in_progress" in statuses:
        jobs += [queue_job(i.as_list(), "in_progress") for i in node.running()]
    if "pending" in statuses:
        jobs += [queue_job(i.as_list(), "pending") for i in node.pending()]
    for prompt_id, entry in node.finished().items():
        job = history_job(prompt_id, entry)
        if job["status"] in statuses:
            jobs.append(job)
    return jobs


def find_job(node: JobNode, prompt_id: str) -> dict[str, Any] | None:
    """One job in full: from history first, then running, then pending."""
    entry = node.finished().get(prompt_id)
    if entry is not None:
        return history_job(prompt_id, entry, detail=True)
    for status, items in (("in_progress", node.running()), ("pending", node.pending())):
        for item in items:
            if item.prompt_id == prompt_id:
                return queue_job(item.as_list(), status, detail=True)
    return None


def cancel(node: JobNode, prompt_id: str) -> bool:
    """Interrupt the job if it runs, dequeue it if it waits (and interrupt it if it started
    meanwhile); False for a finished or unknown id."""
    if any(i.prompt_id == prompt_id for i in node.running()):
        return node.interrupt_if_running(prompt_id)
    if any(i.prompt_id == prompt_id for i in node.pending()):
        return node.dequeue(prompt_id) or node.interrupt_if_running(prompt_id)
    return False


def _bad(message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=400)


def _sort_key(sort_by: str) -> Callable[[dict[str, Any]], Any]:
    if sort_by == "execution_duration":

        def duration(job: dict[str, Any]) -> Any:
            start, end = job.get("execution_start_time", 0), job.get("execution_end_time", 0)
            return end - start if start and end else 0

        return duration
    return lambda job: job.get("create_time", 0)


def job_routes(node: JobNode) -> list[tuple[str, str, Callable]]:
    """(method, path, handler) of the job API of ``node``."""

    async def list_jobs(request: web.Request) -> web.Response:
        query = request.rel_url.query
        statuses = list(STATUSES)
        if query.get("status"):
            statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
            wrong = [s for s in statuses if s not in STATUSES]
            if wrong:
                return _bad(f"Invalid status value(s): {', '.join(wrong)}. "
                            f"Valid values: {', '.join(STATUSES)}")  # fmt: skip
        sort_by = query.get("sort_by", "created_at").lower()
        order = query.get("sort_order", "desc").lower()
        if sort_by not in ("created_at", "execution_duration"):
            return _bad("sort_by must be 'created_at' or 'execution_duration'")
        if order not in ("asc", "desc"):
            return _bad("sort_order must be 'asc' or 'desc'")
        limit = None
        if "limit" in query:
            try:
                limit = int(query["limit"])
            except ValueError:
                return _bad("limit must be an integer")
            if limit <= 0:
                return _bad("limit must be a positive integer")
        try:
            offset = max(0, int(query.get("offset", 0)))
        except ValueError:
            return _bad("offset must be an integer")
        jobs = all_jobs(node, statuses)
        if query.get("workflow_id"):
            jobs = [j for j in jobs if j.get("workflow_id") == query["workflow_id"]]
        jobs.sort(key=_sort_key(sort_by), reverse=order == "desc")
        total = len(jobs)
        page = jobs[offset:][:limit] if limit is not None else jobs[offset:]
        pagination = {"offset": offset, "limit": limit, "total": total,
                      "has_more": offset + len(page) < total}  # fmt: skip
        return web.json_response({"jobs": page, "pagination": pagination})

    async def get_job(request: web.Request) -> web.Response:
        job = find_job(node, request.match_info["job_id"])
        if job is None:
            return web.json_response({"error": "Job not found"}, status=404)
        return web.json_response(job)

    async def cancel_one(request: web.Request) -> web.Response:
        return web.json_response({"cancelled": cancel(node, request.match_info["job_id"])})

    async def cancel_many(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _bad("Request body must be valid JSON")
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list):
            return _bad("job_ids must be a list")
        invalid = [i if isinstance(i, str) else repr(i) for i in ids if not canonical_id(i)]
        if invalid:
            return _bad("job_ids contains invalid id(s)", invalid_ids=invalid)
        cancelled = [cancel(node, i) for i in ids]
        return web.json_response({"cancelled": any(cancelled)})

    return [
        ("GET", "/api/jobs", list_jobs),
        ("GET", "/api/jobs/{job_id}", get_job),
        ("POST", "/api/jobs/cancel", cancel_many),
        ("POST", "/api/jobs/{job_id}/cancel", cancel_one),
    ]
