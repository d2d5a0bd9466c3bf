"""ComfyUI nodes: HTTP (requests) to queue and fetch, websocket (websocket-client) to follow.

The prompt id is derived from scene, shot, quality and attempt, so a redelivered task
finds its own queued, running or finished job on the node instead of rendering twice.
See ../shared/reference/comfyui-api.md for the protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import requests
import websocket

from farm.backends import ProgressFn, RenderResult
from farm.errors import (
    BadNodeResponse,
    FarmError,
    JobCancelled,
    ModelMissing,
    NodeRejected,
    NodeTimeout,
    NodeUnavailable,
    OutOfMemory,
    RenderFailed,
)
from farm.planning import Job
from farm.settings import Settings
from farm.workflows import bind, load_workflow

log = logging.getLogger(__name__)

PROMPT_NAMESPACE = uuid.UUID("6f1d7a3e-2b8c-4f5e-9a0d-3c2b1e4f5a6b")
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "clip_vision", "checkpoints", "loras")
MODEL_INPUTS = frozenset(
    {
        "unet_name",
        "clip_name",
        "clip_name1",
        "clip_name2",
        "vae_name",
        "ckpt_name",
        "lora_name",
        "image",
    }
)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".webp")
WS_RECV_TIMEOUT = 2.0
POLL_EVERY = 5.0
RECONNECT_FOR = 30.0  # at most; never longer than the idle timeout


def prompt_id_for(job: Job) -> str:
    """The node-side id of a job: the same for every delivery of the same attempt."""
    return str(
        uuid.uuid5(PROMPT_NAMESPACE, f"{job.scene_id}/{job.shot_id}/{job.kind}/{job.attempt}")
    )


def safe_name(name: str) -> str:
    """A file name from a node, made safe to write locally (no folders, no odd characters)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")
    return base[:120] or "output"


def classify_execution_error(data: dict[str, Any]) -> FarmError:
    """An ``execution_error`` event as a farm error: out of memory, missing file, or other."""
    etype = str(data.get("exception_type", ""))
    message = str(data.get("exception_message", "")).strip()
    where = f"{data.get('node_type', '?')} (node {data.get('node_id', '?')})"
    text = f"{where}: {etype}: {message}"
    low = f"{etype} {message}".lower()
    if (
        "outofmemory" in low.replace(" ", "")
        or "out of memory" in low
        or "allocation on device" in low
    ):
        return OutOfMemory(text)
    if "filenotfound" in low or "no such file" in low or "model not found" in low:
        return ModelMissing(text)
    return RenderFailed(text)


def rejection(status: int, body: Any) -> FarmError:
    """A refused ``POST /prompt`` (400, or 200 with node_errors) as a farm error that
    names each node, its class and the input at fault."""
    if not isinstance(body, dict):
        return BadNodeResponse(f"node refused the prompt (HTTP {status}): {str(body)[:300]}")
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    parts, missing = [], False
    for node_id, node in (body.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            extra = e.get("extra_info") or {}
            name = extra.get("input_name") or e.get("details") or "?"
            got = f" (got {extra['received_value']!r})" if "received_value" in extra else ""
            parts.append(
                f"node {node_id} ({node.get('class_type', '?')}) input {name!r}: "
                f"{e.get('message')}{got} [{e.get('type')}]"
            )
            missing |= (
                e.get("type") in {"value_not_in_list", "custom_validation_failed"}
                and name in MODEL_INPUTS
            )
    message = error.get("message") or "node refused the prompt"
    detail = "; ".join(parts) or str(error.get("details") or "")
    text = f"{message}: {detail}" if detail else message
    return ModelMissing(text) if missing else NodeRejected(text)


class ComfyClient:
    """Thin HTTP client for one ComfyUI server; every call has a timeout."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = (min(5.0, timeout), timeout)
        self.http = requests.Session()

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            return self.http.request(method, self.url + path, timeout=self.timeout, **kw)
        except requests.Timeout as exc:
            raise NodeTimeout(f"{self.url}{path}: no answer within {self.timeout[1]:g}s") from exc
        except requests.RequestException as exc:
            raise NodeUnavailable(f"{self.url}: {exc.__class__.__name__}: {exc}") from exc

    def get_json(self, path: str, **kw: Any) -> Any:
        resp = self._call("GET", path, **kw)
        if resp.status_code != 200:
            raise BadNodeResponse(f"GET {path} answered HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError:
            raise BadNodeResponse(f"GET {path} did not answer JSON: {resp.text[:200]}") from None

    def submit(self, graph: dict[str, Any], prompt_id: str, client_id: str) -> None:
        body = {"prompt": graph, "prompt_id": prompt_id, "client_id": client_id}
        resp = self._call("POST", "/prompt", json=body)
        try:
            data = resp.json()
        except ValueError:
            data = resp.text
        if resp.status_code == 200 and isinstance(data, dict) and not data.get("node_errors"):
            return
        if resp.status_code >= 500:
            raise RenderFailed(
                f"node failed to take the prompt (HTTP {resp.status_code}): {str(data)[:300]}"
            )
        raise rejection(resp.status_code, data)

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        data = self.get_json(f"/history/{prompt_id}")
        return data.get(prompt_id) if isinstance(data, dict) else None

    def queue_state(self, prompt_id: str) -> str | None:
        """``"running"``, ``"pending"`` or None for a prompt id on the node's queue."""
        data = self.get_json("/queue")
        for state in ("running", "pending"):
            if any(
                len(item) > 1 and item[1] == prompt_id for item in data.get(f"queue_{state}", [])
            ):
                return state
        return None

    def upload_image(self, path: Path) -> str:
        """Upload a start image (content-addressed name) and return its LoadImage value."""
        data = path.read_bytes()
        name = hashlib.sha256(data).hexdigest()[:16] + path.suffix.lower()
        resp = self._call(
            "POST",
            "/upload/image",
            files={"image": (name, data)},
            data={"type": "input", "subfolder": "farm"},
        )
        if resp.status_code != 200:
            raise BadNodeResponse(
                f"image upload answered HTTP {resp.status_code}: {resp.text[:200]}"
            )
        body = resp.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    def download(self, item: dict[str, Any], dest: Path, max_bytes: int) -> Path:
        params = {
            "filename": item["filename"],
            "subfolder": item.get("subfolder", ""),
            "type": item.get("type", "output"),
        }
        try:
            resp = self.http.get(
                self.url + "/view", params=params, timeout=self.timeout, stream=True
            )
        except requests.RequestException as exc:
            raise NodeUnavailable(
                f"{self.url}: download of {item['filename']} failed: {exc}"
            ) from exc
        if resp.status_code != 200:
            raise BadNodeResponse(f"/view {item['filename']} answered HTTP {resp.status_code}")
        tmp = dest.with_suffix(dest.suffix + ".part")
        size = 0
        with tmp.open("wb") as fh:
            for chunk in resp.iter_content(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    tmp.unlink(missing_ok=True)
                    raise BadNodeResponse(
                        f"output {item['filename']} exceeds the {max_bytes >> 20} MiB download cap (FARM_MAX_DOWNLOAD_MB)"
                    )
                fh.write(chunk)
        tmp.replace(dest)
        return dest


class ComfyUIBackend:
    """Render farm jobs on a ComfyUI server."""

    kind = "comfyui"

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self.client = ComfyClient(self.url, settings.http_timeout)
        self.ws_url = re.sub(r"^http", "ws", self.url) + "/ws"

    # discovery
    def probe(self) -> None:
        self.client.get_json("/system_stats")

    def describe(self) -> dict[str, Any]:
        stats = self.client.get_json("/system_stats")
        devices = stats.get("devices") or [{}]
        models: dict[str, list[str]] = {}
        for folder in MODEL_FOLDERS:
            resp = self.client._call("GET", f"/models/{folder}")
            if resp.status_code == 200 and isinstance(resp.json(), list):
                models[folder] = [str(m) for m in resp.json()]
        return {
            "models": models,
            "gpu": str(devices[0].get("name", "")),
            "vram_total": int(devices[0].get("vram_total", 0) or 0),
            "version": str((stats.get("system") or {}).get("comfyui_version", "")),
        }

    # rendering
    def graph_for(self, job: Job) -> dict[str, Any]:
        params = dict(job.params)
        params["model"] = job.model
        params["filename_prefix"] = f"farm/{job.scene_id}/{job.shot_id}_{job.kind}_a{job.attempt}"
        if "start_image" in params:
            params["start_image"] = self.client.upload_image(Path(params["start_image"]))
        if "tracks" in params:
            params["tracks"] = json.dumps(params["tracks"])
        graph = load_workflow(job.workflow, self.settings.workflows_dir)
        return bind(graph, params, name=job.workflow)

    def render(self, job: Job, out_dir: Path, progress: ProgressFn) -> RenderResult:
        prompt_id = prompt_id_for(job)
        entry = self.client.history(prompt_id)
        if entry is None:
            client_id = uuid.uuid4().hex
            ws = self._connect(client_id)
            try:
                if self.client.queue_state(prompt_id) is None:
                    self.client.submit(self.graph_for(job), prompt_id, client_id)
                    progress(0.02, "queued on node")
                else:
                    log.info("job %s is already on %s: following it", prompt_id, self.url)
                ws = self._follow(prompt_id, client_id, ws, progress)
            finally:
                ws.close()
            entry = self._final_history(prompt_id)
        return self._collect(prompt_id, entry, out_dir)

    def _connect(self, client_id: str) -> websocket.WebSocket:
        try:
            return websocket.create_connection(
                f"{self.ws_url}?clientId={client_id}", timeout=WS_RECV_TIMEOUT
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise NodeUnavailable(f"{self.ws_url}: websocket connection failed: {exc}") from exc

    def _reconnect(self, client_id: str) -> websocket.WebSocket:
        deadline = time.monotonic() + min(RECONNECT_FOR, self.settings.node_idle_timeout)
        while True:
            try:
                return self._connect(client_id)
            except NodeUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _follow(
        self, prompt_id: str, client_id: str, ws: websocket.WebSocket, progress: ProgressFn
    ) -> websocket.WebSocket:
        """Follow the job's events until it ends; returns the (possibly new) socket."""
        last_activity = last_poll = time.monotonic()
        while True:
            try:
                msg = ws.recv()
            except websocket.WebSocketTimeoutException:
                msg = None
            except (OSError, websocket.WebSocketException):
                log.warning("websocket to %s dropped; reconnecting", self.url)
                ws.close()
                ws = self._reconnect(client_id)
                last_poll = 0.0  # reconcile at once: events while away are not replayed
                msg = None
            now = time.monotonic()
            if isinstance(msg, bytes):
                if len(msg) > 8 and int.from_bytes(msg[:4], "big") == 1:
                    progress(-1, "preview", msg[8:])
                continue
            if msg:
                event = json.loads(msg)
                data = event.get("data") or {}
                if data.get("prompt_id") != prompt_id:
                    continue
                last_activity = now
                if self._handle(event["type"], data, progress):
                    return ws
            if now - last_poll >= POLL_EVERY:
                last_poll = now
                if self.client.history(prompt_id) is not None:
                    return ws
                state = self.client.queue_state(prompt_id)
                if state is None:
                    raise NodeUnavailable(
                        f"job {prompt_id} vanished from {self.url} (node restarted?)"
                    )
                if state == "pending":
                    last_activity = now
            if now - last_activity > self.settings.node_idle_timeout:
                raise NodeTimeout(
                    f"job {prompt_id} on {self.url} made no progress for {self.settings.node_idle_timeout:g}s"
                )

    @staticmethod
    def _handle(kind: str, data: dict[str, Any], progress: ProgressFn) -> bool:
        """React to one event of our job; True when the job has ended."""
        if kind == "execution_start":
            progress(0.05, "started")
        elif kind == "progress":
            value, maximum = float(data.get("value", 0)), float(data.get("max", 1) or 1)
            progress(0.05 + 0.85 * min(1.0, value / maximum), f"step {int(value)}/{int(maximum)}")
        elif kind == "execution_error":
            raise classify_execution_error(data)
        elif kind == "execution_interrupted":
            raise JobCancelled(
                f"job interrupted on node at {data.get('node_type', '?')} (node {data.get('node_id', '?')})"
            )
        elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
            return True
        return False

    def _final_history(self, prompt_id: str) -> dict[str, Any]:
        for _ in range(20):  # history is written just before the final event; allow a beat
            entry = self.client.history(prompt_id)
            if entry is not None:
                return entry
            time.sleep(0.25)
        raise BadNodeResponse(f"job {prompt_id} ended but /history has no entry for it")

    def _collect(self, prompt_id: str, entry: dict[str, Any], out_dir: Path) -> RenderResult:
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            for name, data in status.get("messages", []):
                if name == "execution_error":
                    raise classify_execution_error(data)
                if name == "execution_interrupted":
                    raise JobCancelled(f"job {prompt_id} was interrupted on the node")
            raise RenderFailed(f"job {prompt_id} failed on the node (no error message recorded)")
        items = [
            item
            for node_out in (entry.get("outputs") or {}).values()
            for values in node_out.values()
            if isinstance(values, list)
            for item in values
            if isinstance(item, dict)
            and "filename" in item
            and item.get("type", "output") == "output"
        ]
        out_dir.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        for item in items:
            dest = out_dir / safe_name(str(item["filename"]))
            while dest in files:
                dest = dest.with_name(f"{dest.stem}_{len(files)}{dest.suffix}")
            files.append(self.client.download(item, dest, self.settings.max_download_bytes))
        videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
        if not videos:
            raise BadNodeResponse(
                f"job {prompt_id} finished without a video output (outputs: {[f.name for f in files]})"
            )
        return RenderResult(video=videos[0], files=files, backend_job_id=prompt_id)
