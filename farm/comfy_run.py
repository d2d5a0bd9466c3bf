"""Run any workflow on any ComfyUI server through the farm's client, outside Celery.

This is what ``farm comfy run`` calls: the operator's check of a new node. The workflow
may be in API or editor format; ``--set "TITLE.input=value"`` edits inputs by node title
(or node id), ``--upload [TITLE.input=]FILE`` sends an input image first.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from farm.backends import ProgressFn
from farm.backends.comfyui import ComfyClient
from farm.errors import FarmError, InvalidInput, JobCancelled, WorkflowError
from farm.jsonfile import read_json
from farm.workflows import Graph, as_api_graph, find_titled

IMAGE_INPUTS = ("image", "video", "file")


def parse_assignment(text: str, flag: str = "--set") -> tuple[str, str, str]:
    """``"TITLE.input=value"`` → ``(title, input, raw value)``; the title may hold dots."""
    key, eq, raw = text.partition("=")
    target, dot, name = key.rpartition(".")
    if not eq or not dot or not target.strip() or not name.strip():
        raise InvalidInput(
            f'{flag} {text!r}: expected TITLE.input=value, e.g. {flag} "Sampler.seed=42"'
        )
    return target.strip(), name.strip(), raw


def parse_value(raw: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, booleans, lists), else the text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def find_node(graph: Graph, target: str, flag: str) -> str:
    """The id of the node titled ``target`` (or with id ``target``)."""
    ids = find_titled(graph, target)
    if len(ids) > 1:
        raise InvalidInput(
            f"{flag}: {len(ids)} nodes are titled {target!r} (ids {', '.join(ids)}); "
            "use the node id instead"
        )
    if ids:
        return ids[0]
    if target in graph:
        return target
    titles = sorted({str(n.get("_meta", {}).get("title", "")) for n in graph.values()} - {""})
    raise InvalidInput(
        f"{flag}: no node titled or numbered {target!r}; titles: {', '.join(titles) or 'none'}"
    )


def assign(graph: Graph, target: str, name: str, value: Any, flag: str) -> None:
    """Set input ``name`` of node ``target`` (title or id); the input must exist."""
    node = graph[find_node(graph, target, flag)]
    inputs = node.setdefault("inputs", {})
    if name not in inputs:
        raise InvalidInput(
            f"{flag}: node {target!r} ({node['class_type']}) has no input {name!r}; "
            f"its inputs: {', '.join(inputs) or 'none'}"
        )
    inputs[name] = value


def apply_upload(client: ComfyClient, graph: Graph, spec: str) -> str:
    """Upload ``[TITLE.input=]FILE``; set that input, or every image input naming FILE."""
    target = name = None
    path_text = spec
    if "=" in spec:
        target, name, path_text = parse_assignment(spec, "--upload")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise InvalidInput(f"--upload {spec!r}: no file {path}")
    uploaded = client.upload(path)
    if target and name:
        assign(graph, target, name, uploaded, "--upload")
        return uploaded
    for node in graph.values():
        for key, value in node.get("inputs", {}).items():
            if key in IMAGE_INPUTS and value == path.name:
                node["inputs"][key] = uploaded
    return uploaded


def run_workflow(
    url: str,
    workflow: Path,
    out_dir: Path,
    *,
    sets: tuple[str, ...] = (),
    uploads: tuple[str, ...] = (),
    http_timeout: float = 30.0,
    idle_timeout: float = 300.0,
    max_bytes: int = 4 << 30,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run ``workflow`` on the server at ``url`` and download its outputs into ``out_dir``.

    Returns the summary ``farm comfy run`` prints: ``prompt_id``, ``status`` (``success``,
    ``failed`` or ``cancelled``), ``outputs`` (``path``, ``bytes``), ``events`` (count by
    type), ``seconds``, ``error`` and ``error_kind``. Input problems (bad flags, a workflow
    that cannot be converted) raise :class:`InvalidInput`; an unreachable server raises.
    """
    client = ComfyClient(url, http_timeout, idle_timeout)
    data = read_json(workflow, "workflow", InvalidInput)
    try:
        graph = as_api_graph(data, str(workflow), client.object_info)
    except WorkflowError as exc:
        raise InvalidInput(str(exc)) from None
    for spec in uploads:
        apply_upload(client, graph, spec)
    for spec in sets:
        target, name, raw = parse_assignment(spec)
        assign(graph, target, name, parse_value(raw), "--set")
    prompt_id = str(uuid.uuid4())
    events: Counter[str] = Counter()
    summary: dict[str, Any] = {"prompt_id": prompt_id, "url": url, "status": "success",
                               "outputs": [], "events": events, "seconds": 0.0,
                               "error": None, "error_kind": None}  # fmt: skip
    started = time.monotonic()
    try:
        entry = client.run(
            graph, prompt_id, progress or _quiet, lambda kind, _: events.update([kind])
        )
        files = client.collect(entry, out_dir, max_bytes, types=("output", "temp"))
        summary["outputs"] = [{"path": str(f), "bytes": f.stat().st_size} for f in files]
    except KeyboardInterrupt:
        summary.update(status="cancelled", error="interrupted by the user", error_kind="cancelled")
        try:
            summary["cancel"] = client.cancel(prompt_id)
        except FarmError as exc:
            summary["cancel"] = f"failed: {exc}"
    except FarmError as exc:
        cancelled = isinstance(exc, JobCancelled)
        summary.update(
            status="cancelled" if cancelled else "failed", error=str(exc), error_kind=exc.kind
        )
    summary["events"] = dict(sorted(events.items()))
    summary["seconds"] = round(time.monotonic() - started, 2)
    return summary


def _quiet(fraction: float, message: str = "", preview: bytes | None = None) -> None:
    """A progress callback that shows nothing."""
