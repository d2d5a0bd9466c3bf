"""WanGP (Wan2GP) nodes, two ways. See ../shared/reference/wan2gp-interface.md and
docs/wan2gp.md.

- :class:`WanClient` / :class:`Wan2GPBackend`: a long-running ``wgp.py --mcp`` server,
  driven over MCP streamable HTTP (one JSON-RPC 2.0 POST per call, ``requests``, a timeout
  on every call): submit with ``wangp_generate(wait=false)``, poll ``wangp_get_job``.
- :class:`~farm.backends.wgp_cli.WgpCliBackend` (its own module): ``python wgp.py --process
  job.json`` in a WanGP folder, one cold process per render; :func:`make_wan2gp_backend`
  picks it for a ``file://`` URL.

WanGP job ids are made by the server, so exactly-once cannot come from a derived id as
with ComfyUI: the id is written to ``wangp_job.json`` in the attempt's output folder right
after submitting, and a redelivered task follows that job instead of submitting again.

Errors (all from :mod:`farm.errors`): busy node → :class:`NodeBusy` (a
``NodeUnavailable``: retried), unknown model → ``ModelMissing`` (fall back), validation →
``NodeRejected``, out of memory → ``OutOfMemory``, cancelled → ``JobCancelled``, other
failures → ``RenderFailed``, HTTP 5xx / connection loss / job forgotten → ``NodeUnavailable``,
no progress for ``FARM_NODE_IDLE_TIMEOUT`` → ``NodeTimeout`` (the job is cancelled).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import shutil
import time
import urllib.parse
from itertools import count
from pathlib import Path
from typing import Any

import requests

from farm.backends.base import Backend, ProgressFn, RenderResult, image_mime, safe_name, save_stream
from farm.backends.wan2gp_common import EventFn, is_out_of_memory, job_key, model_facts
from farm.errors import (
    BadNodeResponse,
    ConfigError,
    FarmError,
    JobCancelled,
    ModelMissing,
    NodeRejected,
    NodeTimeout,
    NodeUnavailable,
    OutOfMemory,
    RenderFailed,
)
from farm.files import write_text
from farm.planning import Job
from farm.settings import Settings
from farm.wan_settings import build_settings

log = logging.getLogger(__name__)

RECORD = "wangp_job.json"  # the WanGP job id of an attempt, in its output folder
POLL_EVERY = 0.25  # seconds between wangp_get_job polls
BUSY_RETRY_EVERY = 1.0  # seconds between submissions while the node is busy
EVENT_WINDOW = 200  # events asked for per poll (deduplicated client-side)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv")
MCP_PROTOCOL = "2025-06-18"
#: failure texts meaning the node lacks the model or an input file: fall back elsewhere
MISSING = ("unknown model type", "is not available on this node", "unable to read start image",
           "no such file")  # fmt: skip
#: (spaces removed) texts of a PermissionError for a file path argument
PATHS_REFUSED = ("permissionerror", "accesstolocalfile", "allow-read-file-system")


class NodeBusy(NodeUnavailable):
    """The node is running another generation (one at a time per WanGP process)."""


class PathsRefused(NodeRejected):
    """The node refuses file paths in arguments (started without
    ``--mcp-allow-read-file-system``): upload the file instead."""


class UnknownJob(NodeUnavailable):
    """The node does not know the job id (it restarted: jobs live in memory)."""


# -- pure helpers ---------------------------------------------------------------------------


def tool_error(tool: str, text: str) -> FarmError:
    """A tool that raised (``isError``), as a farm error."""
    message = f"{tool}: {text.strip()[:500]}"
    low = text.lower()
    if "already has a generation in progress" in low:
        return NodeBusy(message)
    if "unknown wangp job_id" in low:
        return UnknownJob(message)
    if any(m in low for m in MISSING):
        return ModelMissing(message)
    if is_out_of_memory(text):
        return OutOfMemory(message)
    if any(m in low.replace(" ", "") for m in PATHS_REFUSED):
        return PathsRefused(message)
    return NodeRejected(message) if tool == "wangp_generate" else BadNodeResponse(message)


def failure(job_id: str, result: dict[str, Any]) -> FarmError:
    """The farm error of a finished job whose ``result.success`` is false."""
    errors = [e for e in result.get("errors") or [] if isinstance(e, dict)]
    stages = {str(e.get("stage", "")) for e in errors}
    text = "; ".join(
        f"{e.get('stage') or 'error'}: {str(e.get('message', '')).strip()}" for e in errors
    )
    text = f"WanGP job {job_id}: {text or 'failed without an error message'}"
    if result.get("cancelled") or "cancelled" in stages or any(e.get("cancelled") for e in errors):
        return JobCancelled(text)
    if is_out_of_memory(text):
        return OutOfMemory(text)
    if any(m in text.lower() for m in MISSING):
        return ModelMissing(text)
    if "validation" in stages:
        return NodeRejected(text)
    return RenderFailed(text)


def event_progress(data: dict[str, Any]) -> tuple[float, str] | None:
    """``(fraction, message)`` of a progress event's data, by phase."""
    phase = str(data.get("phase") or "")
    cur, total = data.get("current_step"), data.get("total_steps")
    if phase.startswith("inference") and isinstance(total, int | float) and total:
        step = min(1.0, float(cur or 0) / float(total))
        return 0.1 + 0.8 * step, f"{phase} step {int(cur or 0)}/{int(total)}"
    fixed = {"loading_model": 0.03, "encoding_text": 0.07, "decoding": 0.92,
             "downloading_output": 0.96}  # fmt: skip
    if phase in fixed:
        return fixed[phase], phase
    if phase.startswith("inference"):
        pct = float(data.get("progress") or 0) / 100
        return 0.1 + 0.8 * min(1.0, pct), phase
    return None


def preview_image(data: dict[str, Any]) -> bytes | None:
    """The JPEG/PNG of a ``preview`` event, when it carries one (base64, maybe a data URL)."""
    for key in ("image", "preview", "data"):
        value = data.get(key)
        if isinstance(value, str) and value:
            try:
                raw = base64.b64decode(value.split(",", 1)[-1], validate=False)
            except ValueError:
                continue
            if image_mime(raw):
                return raw
    return None


def parse_sse(text: str) -> list[Any]:
    """The JSON messages of a ``text/event-stream`` body (``data:`` lines per event)."""
    messages, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("data:"):
            lines.append(line[5:].lstrip())
        elif not line.strip() and lines:
            with contextlib.suppress(ValueError):
                messages.append(json.loads("\n".join(lines)))
            lines = []
    return messages


def tool_result(tool: str, result: Any) -> Any:
    """The value of a ``tools/call`` result: ``structuredContent`` or the JSON text."""
    if not isinstance(result, dict):
        raise BadNodeResponse(f"{tool}: result is not an object: {str(result)[:200]}")
    texts = [
        c.get("text", "")
        for c in result.get("content") or []
        if isinstance(c, dict) and c.get("type", "text") == "text"
    ]
    if result.get("isError"):
        raise tool_error(tool, "\n".join(texts) or "the tool failed without a message")
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        return structured["result"] if set(structured) == {"result"} else structured
    for text in texts:
        try:
            return json.loads(text)
        except ValueError:
            continue
    raise BadNodeResponse(f"{tool}: no JSON in the result: {str(result)[:200]}")


# -- the MCP client -------------------------------------------------------------------------


class WanClient:
    """One WanGP MCP server (``http://host:7866``; the endpoint is ``/mcp`` below it)."""

    def __init__(self, url: str, timeout: float, *, http: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.endpoint = self.url + "/mcp"
        self.timeout = (min(5.0, timeout), timeout)
        self.http = http or requests.Session()
        self._ids = count(1)

    # transport
    def rpc(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One JSON-RPC 2.0 request; its ``result``."""
        rid = next(self._ids)
        body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        headers = {"Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json", "MCP-Protocol-Version": MCP_PROTOCOL}  # fmt: skip
        try:
            resp = self.http.post(self.endpoint, json=body, headers=headers, timeout=self.timeout)
        except requests.Timeout as exc:
            raise NodeTimeout(
                f"{self.endpoint} {method}: no answer within {self.timeout[1]:g}s"
            ) from exc
        except requests.RequestException as exc:
            raise NodeUnavailable(f"{self.url}: {exc.__class__.__name__}: {exc}") from exc
        what = f"{method} {params.get('name', '') if params else ''}".strip()
        if resp.status_code >= 500:
            raise NodeUnavailable(f"{what} answered HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            raise BadNodeResponse(f"{what} answered HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            found = [m for m in parse_sse(resp.text) if isinstance(m, dict) and m.get("id") == rid]
            if not found:
                raise BadNodeResponse(f"{what}: no answer in the event stream: {resp.text[:200]}")
            message = found[-1]
        else:
            try:
                message = resp.json()
            except ValueError:
                raise BadNodeResponse(f"{what} did not answer JSON: {resp.text[:200]}") from None
        if not isinstance(message, dict):
            raise BadNodeResponse(f"{what}: not a JSON-RPC message: {str(message)[:200]}")
        if isinstance(message.get("error"), dict):
            err = message["error"]
            raise BadNodeResponse(f"{what}: JSON-RPC error {err.get('code')}: {err.get('message')}")
        return message.get("result")

    def call(self, tool: str, **args: Any) -> Any:
        """Call a tool; its structured value. A tool that raised raises its farm error."""
        args = {k: v for k, v in args.items() if v is not None}
        return tool_result(tool, self.rpc("tools/call", {"name": tool, "arguments": args}))

    def server_info(self) -> dict[str, Any]:
        """``serverInfo`` from an MCP ``initialize`` (stateless servers answer it too)."""
        result = self.rpc("initialize", {"protocolVersion": MCP_PROTOCOL, "capabilities": {},
                                         "clientInfo": {"name": "farm", "version": "1"}})  # fmt: skip
        info = result.get("serverInfo") if isinstance(result, dict) else None
        return info if isinstance(info, dict) else {}

    # jobs
    def generate(self, source: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
        return self._snapshot(
            "wangp_generate", self.call("wangp_generate", source=source, wait=False)
        )

    def get_job(self, job_id: str) -> dict[str, Any]:
        snap = self.call("wangp_get_job", job_id=job_id, event_limit=EVENT_WINDOW)
        return self._snapshot("wangp_get_job", snap)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._snapshot("wangp_cancel_job", self.call("wangp_cancel_job", job_id=job_id))

    @staticmethod
    def _snapshot(tool: str, snap: Any) -> dict[str, Any]:
        if not isinstance(snap, dict) or not snap.get("job_id"):
            raise BadNodeResponse(f"{tool}: not a job snapshot: {str(snap)[:200]}")
        return snap

    def submit(self, source: Any, busy_for: float) -> dict[str, Any]:
        """``wangp_generate`` that waits (at most ``busy_for`` s) while the node is busy."""
        deadline = time.monotonic() + busy_for
        while True:
            try:
                return self.generate(source)
            except NodeBusy as exc:
                if time.monotonic() + BUSY_RETRY_EVERY > deadline:
                    raise NodeBusy(f"{exc} (still busy after {busy_for:g}s)") from None
                time.sleep(BUSY_RETRY_EVERY)

    def follow(
        self,
        job_id: str,
        progress: ProgressFn,
        on_event: EventFn | None = None,
        idle_timeout: float = 300.0,
    ) -> dict[str, Any]:
        """Poll the job until it is done; its final snapshot. No new event and no change of
        ``updated_at`` for ``idle_timeout`` s raises :class:`NodeTimeout`; ``progress`` may
        raise :class:`JobCancelled`. The caller takes the job off the node for both."""
        seen: set[str] = set()
        last_change, updated = time.monotonic(), None
        while True:
            snap = self.get_job(job_id)
            now = time.monotonic()
            fresh = [e for e in snap.get("events") or [] if _first_sight(e, seen)]
            if fresh or snap.get("updated_at") != updated:
                last_change, updated = now, snap.get("updated_at")
            for event in fresh:
                _report(event, progress, on_event)
            if snap.get("done"):
                return snap
            if now - last_change > idle_timeout:
                raise NodeTimeout(
                    f"WanGP job {job_id} on {self.url} made no progress for {idle_timeout:g}s"
                )
            time.sleep(POLL_EVERY)

    def abandon(self, job_id: str, why: Exception) -> None:
        """Cancel a job the farm gives up on (cancelled by the farm, or hung)."""
        try:
            self.cancel_job(job_id)
            log.info("WanGP job %s on %s cancelled (%s)", job_id, self.url, why)
        except FarmError as exc:
            log.warning("could not cancel WanGP job %s on %s: %s", job_id, self.url, exc)

    # media
    def upload(self, path: Path) -> str:
        """Upload an input file through a one-use gallery URL; the value to pass as a path."""
        ticket = self.call("wangp_create_gallery_upload", filename=safe_name(path.name))
        url = _field(ticket, "upload_url", "url")
        resp = self._transfer("PUT", url, data=path.read_bytes())
        with resp:
            if resp.status_code not in (200, 201):
                raise BadNodeResponse(f"upload of {path.name} answered HTTP {resp.status_code}")
            try:
                answer = resp.json()
            except ValueError:
                answer = {}
        for source in (answer, ticket):
            if isinstance(source, dict):
                for key in ("media_id", "gallery_id", "id", "path"):
                    if isinstance(source.get(key), str) and source[key]:
                        return source[key]
        raise BadNodeResponse(f"upload of {path.name}: no path in {str(answer)[:200]}")

    def download(self, gallery_id: str, dest: Path, max_bytes: int) -> Path:
        """Fetch one gallery item into ``dest``, refusing more than ``max_bytes``."""
        ticket = self.call("wangp_create_gallery_download", gallery_id=gallery_id)
        resp = self._transfer("GET", _field(ticket, "download_url", "url"), stream=True)
        return save_stream(resp, dest, max_bytes, dest.name)

    def _transfer(self, method: str, url: str, **kw: Any) -> requests.Response:
        full = urllib.parse.urljoin(self.url + "/", url)
        try:
            return self.http.request(method, full, timeout=self.timeout, **kw)
        except requests.Timeout as exc:
            raise NodeTimeout(f"{method} {full}: no answer within {self.timeout[1]:g}s") from exc
        except requests.RequestException as exc:
            raise NodeUnavailable(f"{method} {full}: {exc.__class__.__name__}: {exc}") from exc


def _field(data: Any, *keys: str) -> str:
    if isinstance(data, dict):
        for key in keys:
            if isinstance(data.get(key), str) and data[key]:
                return data[key]
    raise BadNodeResponse(f"expected {' or '.join(keys)} in {str(data)[:200]}")


def _first_sight(event: Any, seen: set[str]) -> bool:
    key = json.dumps(event, sort_keys=True, default=str)
    if key in seen:
        return False
    seen.add(key)
    return True


def _report(event: Any, progress: ProgressFn, on_event: EventFn | None) -> None:
    if not isinstance(event, dict):
        return
    kind, data = str(event.get("kind", "")), event.get("data")
    data = data if isinstance(data, dict) else {}
    if on_event:
        on_event(kind, data)
    if kind == "progress":
        step = event_progress(data)
        if step:
            progress(*step)
    elif kind == "preview":
        image = preview_image(data)
        if image:
            progress(-1, "preview", image)
    elif kind == "started":
        progress(0.02, "started")


# -- the MCP backend ------------------------------------------------------------------------


def collect(
    client: WanClient | None,
    result: dict[str, Any],
    out_dir: Path,
    max_bytes: int,
    shared: bool | None,
) -> list[Path]:
    """Bring every generated file into ``out_dir``: copied when the path exists here (a
    shared output folder; ``shared=None`` decides per file), else downloaded through the
    gallery. Names from the node are reduced to plain names inside ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    items = {
        str(i.get("path")): i for i in result.get("gallery_items") or [] if isinstance(i, dict)
    }
    files: list[Path] = []
    for raw in result.get("generated_files") or []:
        dest = out_dir / safe_name(str(raw))
        n = 1
        while dest in files:
            dest = out_dir / f"{Path(safe_name(str(raw))).stem}_{n}{dest.suffix}"
            n += 1
        source = Path(str(raw))
        if shared is not False and source.is_file():
            if source.stat().st_size > max_bytes:
                raise BadNodeResponse(f"output {source.name} exceeds the download cap")
            if source.resolve() != dest.resolve():
                shutil.copyfile(source, dest.with_name(dest.name + ".part"))
                dest.with_name(dest.name + ".part").replace(dest)
            files.append(dest)
            continue
        item = items.get(str(raw)) or {}
        gallery_id = item.get("media_id") or item.get("gallery_id") or item.get("id")
        if client is None or not gallery_id:
            raise BadNodeResponse(f"output {raw} is not readable here and has no gallery id")
        files.append(client.download(str(gallery_id), dest, max_bytes))
    return files


class Wan2GPBackend:
    """Render farm jobs on a WanGP MCP server (one generation at a time)."""

    kind = "wan2gp"

    def __init__(
        self,
        url: str,
        settings: Settings,
        *,
        shared: bool | None = None,
        client: WanClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self.client = client or WanClient(self.url, settings.http_timeout)
        #: None: read outputs directly when their path exists here; False: always download
        self.shared = shared
        #: None until a path argument was refused: then inputs are uploaded
        self.reads_files: bool | None = None
        self._jobs: dict[str, str] = {}

    # discovery
    def probe(self) -> None:
        self.client.server_info()

    def describe(self) -> dict[str, Any]:
        """Version and the WanGP model ids whose weights are on the node."""
        info = self.client.server_info()
        records = _model_records(self.client.call("wangp_list_models"))
        listed = [r["model_type"] for r in records]
        ready = [
            r["model_type"]
            for r in records
            if _available(
                r
                if "available" in r
                else self.client.call("wangp_get_model_availability", model_type=r["model_type"])
            )
        ]
        return {
            "models": {"wangp": sorted(ready)},
            "listed": len(listed),
            "gpu": str(info.get("gpu") or f"{info.get('name') or 'WanGP'} (GPU not reported)"),
            "version": str(info.get("version", "")),
            "mode": "mcp",
            "workflows": {},
        }

    # rendering
    def settings_for(self, job: Job, start_image: str | None = None) -> dict[str, Any]:
        profile = job.params.get("override_profile")
        return build_settings(
            job,
            model_facts(job.model, self.settings),
            override_profile=profile,
            start_image=start_image,
        )

    def render(self, job: Job, out_dir: Path, progress: ProgressFn) -> RenderResult:
        out_dir.mkdir(parents=True, exist_ok=True)
        job_id = self._resume(job, out_dir) or self._submit(job, out_dir)
        self._jobs[job_key(job)] = job_id
        try:
            snap = self.client.follow(
                job_id, progress, idle_timeout=self.settings.node_idle_timeout
            )
        except (JobCancelled, NodeTimeout) as exc:
            self.client.abandon(job_id, exc)
            raise
        result = self._outputs(job_id, snap, out_dir)
        progress(1.0, "done")
        return result

    def _outputs(self, job_id: str, snap: dict[str, Any], out_dir: Path) -> RenderResult:
        result = snap.get("result")
        if not isinstance(result, dict):
            raise BadNodeResponse(f"WanGP job {job_id} is done without a result")
        if not result.get("success"):
            raise failure(job_id, result)
        files = collect(self.client, result, out_dir, self.settings.max_download_bytes, self.shared)
        videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
        if not videos:
            raise BadNodeResponse(
                f"WanGP job {job_id} finished without a video (files: {[f.name for f in files]})"
            )
        return RenderResult(video=videos[0], files=files, backend_job_id=job_id)

    def _resume(self, job: Job, out_dir: Path) -> str | None:
        """The job id recorded by an earlier delivery of this attempt, if the node knows it."""
        job_id = self._recorded(job, out_dir)
        if job_id is None:
            return None
        try:
            self.client.get_job(job_id)
        except UnknownJob:
            log.info("WanGP job %s is gone from %s: submitting again", job_id, self.url)
            return None
        log.info("following WanGP job %s of %s (redelivered)", job_id, job_key(job))
        return job_id

    def _recorded(self, job: Job, out_dir: Path | None) -> str | None:
        """The node's job id of ``job``'s attempt: known to this process, or recorded in
        its attempt folder by the delivery that submitted it."""
        if job_key(job) in self._jobs:
            return self._jobs[job_key(job)]
        if out_dir is None:
            return None
        try:
            record = json.loads((out_dir / RECORD).read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(record, dict)
            or record.get("key") != job_key(job)
            or record.get("url") != self.url
        ):
            return None
        return str(record["job_id"])

    def find(self, job: Job, out_dir: Path) -> str:
        """Where the node has the job's attempt: ``running`` (WanGP does not tell queued
        from running), ``succeeded``, ``failed`` or ``absent``."""
        job_id = self._recorded(job, out_dir)
        if job_id is None:
            return "absent"
        try:
            snap = self.client.get_job(job_id)
        except UnknownJob:
            return "absent"
        if not snap.get("done"):
            return "running"
        result = snap.get("result")
        return "succeeded" if isinstance(result, dict) and result.get("success") else "failed"

    def collect(self, job: Job, out_dir: Path) -> RenderResult:
        """The outputs of the attempt the node finished (never submits it)."""
        job_id = self._recorded(job, out_dir)
        if job_id is None:
            raise NodeUnavailable(f"no WanGP job of {job_key(job)} is recorded in {out_dir}")
        snap = self.client.get_job(job_id)
        if not snap.get("done"):
            raise NodeUnavailable(f"WanGP job {job_id} has not finished on {self.url}")
        return self._outputs(job_id, snap, out_dir)

    def _submit(self, job: Job, out_dir: Path) -> str:
        image = job.params.get("start_image")
        source = self.settings_for(job, self._image_value(Path(image)) if image else None)
        busy_for = self.settings.node_idle_timeout
        try:
            snap = self.client.submit(source, busy_for)
        except PathsRefused:
            if not image or self.reads_files is False:
                raise
            self.reads_files = False  # the node refuses paths: send the file instead
            snap = self.client.submit(
                self.settings_for(job, self.client.upload(Path(image))), busy_for
            )
        job_id = str(snap["job_id"])
        record = {
            "job_id": job_id,
            "url": self.url,
            "key": job_key(job),
            "submitted_at": time.time(),
        }
        write_text(out_dir / RECORD, json.dumps(record))
        return job_id

    def _image_value(self, path: Path) -> str:
        if self.reads_files is False:
            return self.client.upload(path)
        return str(path.resolve())

    def cancel(self, job: Job, out_dir: Path | None = None) -> str:
        """Cancel the job's current attempt: ``interrupted``, or ``not_found``."""
        job_id = self._recorded(job, out_dir)
        if job_id is None:
            return "not_found"
        try:
            snap = self.client.cancel_job(job_id)
        except UnknownJob:
            return "not_found"
        return (
            "not_found" if snap.get("done") and not snap.get("cancel_requested") else "interrupted"
        )


def _model_records(data: Any) -> list[dict[str, Any]]:
    """``{"model_type", ...}`` records from ``wangp_list_models`` (objects or bare ids)."""
    if isinstance(data, dict):
        data = data.get("models", data.get("items", []))
    records = []
    for item in data if isinstance(data, list) else []:
        record = dict(item) if isinstance(item, dict) else {"model_type": item}
        value = record.get("model_type") or record.get("id")
        if isinstance(value, str) and value:
            records.append({**record, "model_type": value})
    return records


def _available(data: Any) -> bool:
    if isinstance(data, dict):
        for key in ("available", "is_available", "downloaded", "ready"):
            if key in data:
                return bool(data[key])
        return False
    return bool(data)


# -- the factory ----------------------------------------------------------------------------


def make_wan2gp_backend(url: str, settings: Settings) -> Backend:
    """The MCP backend for ``http(s)://host:port`` (``?download=1``: always fetch outputs
    through the gallery), the CLI backend for ``file:///folder`` (``?python=/path/to/python``
    picks WanGP's interpreter). A ``wan2gp+`` prefix is allowed."""
    url = url.removeprefix("wan2gp+")
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    if parts.scheme in ("http", "https"):
        base = urllib.parse.urlunsplit((*parts[:3], "", ""))
        shared = False if query.get("download", ["0"])[0] in ("1", "true", "yes") else None
        return Wan2GPBackend(base, settings, shared=shared)
    if parts.scheme == "file":
        from farm.backends.wgp_cli import WgpCliBackend

        python = query.get("python", [None])[0]
        return WgpCliBackend(urllib.parse.unquote(parts.path), settings, python=python)
    raise ConfigError(f"WanGP node URL {url!r} must start with http://, https:// or file://")
