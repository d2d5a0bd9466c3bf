"""Run any WanGP settings file on any WanGP node through the farm's client, outside Celery.

This is what ``farm wan run`` calls: the operator's check of a new node. The file holds one
settings object or a list of them (WanGP's own format: ``model_type``, ``prompt``,
``resolution``, ``video_length``, ...). The node is an MCP server (``http://host:7866``)
or a WanGP folder run in CLI mode (``file:///opt/Wan2GP``).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from farm.backends import ProgressFn
from farm.backends.wan2gp import (
    WanClient,
    collect,
    failure,
    make_wan2gp_backend,
)
from farm.backends.wgp_cli import WgpCliBackend
from farm.errors import BadNodeResponse, FarmError, InvalidInput, JobCancelled, NodeTimeout
from farm.jsonfile import read_json
from farm.settings import Settings


def load_source(path: Path) -> dict[str, Any] | list[dict[str, Any]]:
    """The settings in ``path``: an object with a ``model_type``, or a list of them."""
    data = read_json(path, "WanGP settings", InvalidInput)
    items = data if isinstance(data, list) else [data]
    problems = [
        f"item {i}: " + ("not an object" if not isinstance(s, dict) else "no model_type")
        for i, s in enumerate(items)
        if not isinstance(s, dict) or not s.get("model_type")
    ]
    if problems or not items:
        raise InvalidInput(f"{path} is not WanGP settings", problems or ["the list is empty"])
    return data


def run_settings(
    url: str,
    settings_file: Path,
    out_dir: Path,
    settings: Settings,
    *,
    shared: bool | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run the settings in ``settings_file`` on the node at ``url`` into ``out_dir``.

    Returns the summary ``farm wan run`` prints: ``job_id``, ``url``, ``status``
    (``success``, ``failed`` or ``cancelled``), ``outputs`` (``path``, ``bytes``), ``events``
    (count by kind), ``seconds``, ``error`` and ``error_kind``. A bad file raises
    :class:`InvalidInput`; an unreachable node is reported in the summary.
    """
    source = load_source(settings_file)
    backend = make_wan2gp_backend(url, settings)
    events: Counter[str] = Counter()
    summary: dict[str, Any] = {"job_id": None, "url": url, "status": "success", "outputs": [],
                               "events": events, "seconds": 0.0, "error": None,
                               "error_kind": None}  # fmt: skip
    started = time.monotonic()
    on_event = lambda kind, _: events.update([kind])  # noqa: E731
    try:
        if isinstance(backend, WgpCliBackend):
            summary["job_id"] = f"cli:{settings_file.name}"
            files = backend.run(source, out_dir, progress or _quiet, on_event)
        else:
            files = _run_mcp(backend.client, source, out_dir, settings, shared, summary,
                             progress or _quiet, on_event)  # fmt: skip
        summary["outputs"] = [{"path": str(f), "bytes": f.stat().st_size} for f in files]
    except KeyboardInterrupt:
        summary.update(status="cancelled", error="interrupted by the user", error_kind="cancelled")
    except FarmError as exc:
        cancelled = isinstance(exc, JobCancelled)
        summary.update(
            status="cancelled" if cancelled else "failed", error=str(exc), error_kind=exc.kind
        )
    summary["events"] = dict(sorted(events.items()))
    summary["seconds"] = round(time.monotonic() - started, 2)
    return summary


def _run_mcp(
    client: WanClient,
    source: Any,
    out_dir: Path,
    settings: Settings,
    shared: bool | None,
    summary: dict[str, Any],
    progress: ProgressFn,
    on_event: Any,
) -> list[Path]:
    snap = client.submit(source, settings.node_idle_timeout)
    job_id = summary["job_id"] = str(snap["job_id"])
    try:
        snap = client.follow(job_id, progress, on_event, settings.node_idle_timeout)
    except (KeyboardInterrupt, JobCancelled, NodeTimeout) as exc:
        client.abandon(job_id, exc)
        raise
    result = snap.get("result")
    if not isinstance(result, dict):
        raise BadNodeResponse(f"WanGP job {job_id} is done without a result")
    if not result.get("success"):
        raise failure(job_id, result)
    return collect(client, result, out_dir, settings.max_download_bytes, shared)


def _quiet(fraction: float, message: str = "", preview: bytes | None = None) -> None:
    """A progress callback that shows nothing."""
