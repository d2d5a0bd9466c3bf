"""ComfyUI nodes: HTTP (requests) to queue, cancel and fetch; websocket (websocket-client)
to follow. See ../shared/reference/comfyui-api.md for the protocol.

:class:`ComfyClient` runs any API graph on one server (``farm comfy run`` uses it directly);
:class:`ComfyUIBackend` turns a farm job into a graph, runs it and keeps the video.

The prompt id is derived from scene, shot, quality and attempt, so a redelivered task
finds its own queued, running or finished job on the node instead of rendering twice.

Two server generations are spoken (docs/comfyui.md, "API generations"): where the node
answers ``GET /api/jobs`` (probed once per client), status and history come from the job
API and a cancel is ``POST /api/jobs/{id}/cancel``; elsewhere from ``/history`` and
``/queue``, with a cancel that dequeues a waiting job and interrupts only a running one.
A 409 on submission means the node already has the prompt id: the client follows it.

A ComfyUI older than client-chosen prompt ids (before 2025) queues the job under an id of
its own. Every submission also carries the farm's id in ``extra_data`` (:data:`PROMPT_TAG`),
which such a server keeps in its queue and history entries, so the client finds the job by
that tag (:meth:`ComfyClient.node_id`) and follows, resumes and cancels it as on a newer
server (docs/comfyui.md, "Older ComfyUI servers").
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import websocket

from farm.backends.base import ProgressFn, RenderResult, image_mime, safe_name, save_stream, send
from farm.backends.comfy_jobs import history_entry, job_state
from farm.discovery import node_capabilities
from farm.errors import (
    BadNodeResponse,
    FarmError,
    InvalidInput,
    JobCancelled,
    ModelMissing,
    NodeRejected,
    NodeTimeout,
    NodeUnavailable,
    OutOfMemory,
    RenderFailed,
)
from farm.images import WANT
from farm.media import animation_to_video
from farm.planning import Job
from farm.settings import Settings
from farm.studio import catalog_for
from farm.workflows import Graph, bind, load_workflow, model_bindings, model_params

log = logging.getLogger(__name__)

PROMPT_NAMESPACE = uuid.UUID("6f1d7a3e-2b8c-4f5e-9a0d-3c2b1e4f5a6b")
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "clip_vision", "checkpoints", "loras")
#: loader inputs whose values are file names: a value the node lacks is a missing model
MODEL_INPUTS = frozenset(
    {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "lora_name",
     "image", "model_name", "text_encoder"}
)  # fmt: skip
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".webp")
#: animated images (``SaveAnimatedWEBP``, GIF): the worker turns them into an MP4 clip
ANIMATION_SUFFIXES = (".gif", ".webp")
WS_RECV_TIMEOUT = 2.0  # seconds a websocket receive may block
POLL_EVERY = 5.0  # seconds between /history + /queue reconciliations while following
RECONNECT_FOR = 30.0  # at most; never longer than the idle timeout
PREVIEW_MIME = {1: "image/jpeg", 2: "image/png"}
#: the ``extra_data`` key that carries the farm's prompt id on every submission
PROMPT_TAG = "farm_prompt_id"
#: how many of the newest history entries a search by tag reads (``/history?max_items=``)
TAG_SEARCH_HISTORY = 256
#: per server URL: True when it queues jobs under the client's prompt id, False when it
#: chooses its own (learnt from each submission; unknown until the first)
CLIENT_IDS: dict[str, bool] = {}

EventFn = Callable[[str, dict[str, Any]], None]


def prompt_id_for(job: Job) -> str:
    """The node-side id of a job: the same for every delivery of the same attempt."""
    return str(uuid.uuid5(PROMPT_NAMESPACE, job.attempt_id))


def parse_preview(frame: bytes, prompt_id: str) -> bytes | None:
    """The image of a binary preview frame of ``prompt_id`` (types 1 and 4), else None."""
    if len(frame) < 8:
        return None
    event = int.from_bytes(frame[:4], "big")
    if event == 1:  # >I image type, then the image
        image = frame[8:]
    elif event == 4:  # >I metadata length, JSON metadata, then the image
        size = int.from_bytes(frame[4:8], "big")
        try:
            meta = json.loads(frame[8 : 8 + size])
        except ValueError:
            return None
        if isinstance(meta, dict) and meta.get("prompt_id") not in (None, prompt_id):
            return None
        image = frame[8 + size :]
    else:
        return None
    return image if image_mime(image) else None


def gpu_label(device: str) -> str:
    """The GPU's name from a ComfyUI device name (``cuda:0 NVIDIA … : cudaMallocAsync``)."""
    name = re.sub(r"^[a-z]+:\d+\s+", "", device)
    return re.sub(r"\s+:\s+\w+$", "", name).strip()


def classify_execution_error(data: dict[str, Any]) -> FarmError:
    """An ``execution_error`` event as a farm error: out of memory, a file that is not an
    image (final: no node can decode it), missing file, or other."""
    etype = str(data.get("exception_type", ""))
    message = str(data.get("exception_message", "")).strip()
    where = f"{data.get('node_type', '?')} (node {data.get('node_id', '?')})"
    text = f"{where}: {etype}: {message}"
    low = f"{etype} {message}".lower()
    squeezed = low.replace(" ", "").replace("_", "")
    if "outofmemory" in squeezed or "allocation on device" in low or "oom" in low.split():
        return OutOfMemory(text)
    if "unidentifiedimageerror" in squeezed or "cannot identify image file" in low:
        return InvalidInput(f"{text}; the node cannot decode the start image: {WANT}")
    if (
        "filenotfound" in squeezed
        or "no such file" in low
        or "model not found" in low
        or ("safetensors" in low and "not found" in low)
    ):
        return ModelMissing(text)
    return RenderFailed(text)


def rejection(status: int, body: Any) -> FarmError:
    """A refused ``POST /prompt`` (400, or 200 with node_errors) as a farm error that
    names each node, its class and the input at fault."""
    if not isinstance(body, dict):
        text = str(body).strip().replace("\n\n", ": ")
        return BadNodeResponse(f"node refused the prompt (HTTP {status}): {text[:300]}")
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    parts, missing = [], False
    for node_id, node in (body.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            extra = e.get("extra_info") or {}
            name = extra.get("input_name") or "?"
            got = f" (got {extra['received_value']!r})" if "received_value" in extra else ""
            details = f" — {e['details']}" if e.get("details") not in (None, "", name) else ""
            parts.append(
                f"node {node_id} ({node.get('class_type', '?')}) input {name!r}: "
                f"{e.get('message')}{got}{details} [{e.get('type')}]"
            )
            missing |= (
                e.get("type") in {"value_not_in_list", "custom_validation_failed"}
                and name in MODEL_INPUTS
            )
    message = error.get("message") or "node refused the prompt"
    if error.get("type") and error.get("type") != "prompt_outputs_failed_validation":
        message = f"{message} [{error['type']}]"
    detail = "; ".join(parts) or str(error.get("details") or "")
    if status == 200:
        message = f"node would run only part of the workflow: {message}"
    text = f"{message}: {detail}" if detail else message
    return ModelMissing(text) if missing else NodeRejected(text)


class ComfyClient:
    """One ComfyUI server: every HTTP call and websocket receive has a timeout.

    ``url`` may carry a path prefix (``http://host:8188/api``, or a reverse proxy's path);
    every route, the websocket included, is addressed below it.
    """

    def __init__(self, url: str, timeout: float, idle_timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.ws_url = re.sub(r"^http", "ws", self.url) + "/ws"
        self.timeout = (min(5.0, timeout), timeout)
        self.idle_timeout = idle_timeout
        self.http = requests.Session()
        self._job_api: bool | None = None  # probed on first use
        self._job_cancel = True  # until the node shows it lacks POST /api/jobs/{id}/cancel
        self._taken_off: set[str] = set()  # prompt ids this client cancelled
        self._ids: dict[str, str] = {}  # the farm's prompt id -> an old server's own id

    def job_api(self) -> bool:
        """Whether the node serves ComfyUI's job API (``GET /api/jobs``), probed once."""
        if self._job_api is None:
            resp = self._call("GET", "/api/jobs", params={"limit": 1})
            if resp.status_code >= 500:
                raise NodeUnavailable(f"GET /api/jobs answered HTTP {resp.status_code}")
            self._job_api = resp.status_code == 200 and "jobs" in _json_object(resp)
            log.info("%s: %s", self.url, "job API" if self._job_api else "no job API (/queue)")
        return self._job_api

    def job(self, prompt_id: str) -> dict[str, Any] | None:
        """The job API's record of ``prompt_id``, or None if the node does not know it."""
        resp = self._call("GET", f"/api/jobs/{prompt_id}")
        if resp.status_code == 404 and "error" in _json_object(resp):
            return None
        if resp.status_code != 200:
            raise (NodeUnavailable if resp.status_code >= 500 else BadNodeResponse)(
                f"GET /api/jobs/{prompt_id} answered HTTP {resp.status_code}: {resp.text[:200]}"
            )
        job = _json_object(resp)
        if not job:
            raise BadNodeResponse(f"/api/jobs/{prompt_id} is not a job: {resp.text[:200]}")
        return job

    def status(self, prompt_id: str) -> tuple[str, dict[str, Any] | None]:
        """Where the node has ``prompt_id``: ``pending``, ``running``, ``ended`` (with its
        history entry) or ``absent``."""
        if self.job_api():
            job = self.job(prompt_id)
            if job is None:
                return "absent", None
            state = job_state(job)
            return state, history_entry(job) if state == "ended" else None
        node_id = self.node_id(prompt_id)
        entry = self._history(node_id)
        if entry is not None:
            return "ended", entry
        state = self._queue_state(node_id)
        if state is None and (entry := self._history(node_id)) is not None:
            return "ended", entry  # it ended between the two calls
        return state or "absent", None

    def node_id(self, prompt_id: str) -> str:
        """The id the node knows the farm's job ``prompt_id`` by: the same id, except on a
        server that chose its own (found by :data:`PROMPT_TAG` in its queue and newest
        history entries when this client did not submit the job itself)."""
        if prompt_id in self._ids or self.job_api() or CLIENT_IDS.get(self.url):
            return self._ids.get(prompt_id, prompt_id)
        found = self._find_tagged(prompt_id)
        if found is not None and found != prompt_id:
            self._ids[prompt_id] = found
        return found or prompt_id

    def _find_tagged(self, prompt_id: str) -> str | None:
        """The node's id of the job whose ``extra_data`` carries ``prompt_id``, or None."""
        queue = self.get_json("/queue")
        items = [
            item
            for key in ("queue_running", "queue_pending")
            for item in (queue.get(key) or [] if isinstance(queue, dict) else [])
        ]
        history = self.get_json("/history", params={"max_items": TAG_SEARCH_HISTORY})
        if isinstance(history, dict):
            items += [e.get("prompt") for e in history.values() if isinstance(e, dict)]
        for item in items:
            if (
                isinstance(item, list)
                and len(item) > 3
                and isinstance(item[3], dict)
                and item[3].get(PROMPT_TAG) == prompt_id
            ):
                return str(item[1])
        return None

    # plain HTTP
    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        """One HTTP call (:func:`~farm.backends.base.send`: a dropped GET is sent again)."""
        return send(self.http, method, self.url + path, self.timeout, **kw)

    def get_json(self, path: str, **kw: Any) -> Any:
        resp = self._call("GET", path, **kw)
        if resp.status_code >= 500:
            raise NodeUnavailable(f"GET {path} answered HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            raise BadNodeResponse(f"GET {path} answered HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError:
            raise BadNodeResponse(f"GET {path} did not answer JSON: {resp.text[:200]}") from None

    def post_json(self, path: str, body: dict[str, Any]) -> None:
        resp = self._call("POST", path, json=body)
        if resp.status_code != 200:
            raise BadNodeResponse(
                f"POST {path} answered HTTP {resp.status_code}: {resp.text[:200]}"
            )

    def submit(self, graph: Graph, prompt_id: str, client_id: str) -> bool:
        """Queue ``graph`` as ``prompt_id``: True, or False when the node already has that
        prompt id (409, newer servers); a refusal raises with every node error."""
        body = {"prompt": graph, "prompt_id": prompt_id, "client_id": client_id,
                "extra_data": {PROMPT_TAG: prompt_id}}  # fmt: skip
        resp = self._call("POST", "/prompt", json=body)
        if resp.status_code == 409:
            log.info("job %s is already on %s (409): following it", prompt_id, self.url)
            return False
        try:
            data: Any = resp.json()
        except ValueError:
            data = resp.text
        if resp.status_code == 200 and isinstance(data, dict) and not data.get("node_errors"):
            self._learn_id(prompt_id, data.get("prompt_id"))
            return True
        if resp.status_code == 200:  # queued without its invalid outputs: not what was asked
            error = rejection(200, data)
            self._abandon(prompt_id, error)
            raise error
        if resp.status_code >= 500:
            text = str(data).strip().replace("\n\n", ": ")[:300]
            raise NodeUnavailable(
                f"node failed to take the prompt (HTTP {resp.status_code}): {text}"
            )
        raise rejection(resp.status_code, data)

    def _learn_id(self, asked: str, given: Any) -> None:
        """Note whether the server queued the job under the farm's id or its own."""
        own = given is not None and str(given) != asked
        if own:
            self._ids[asked] = str(given)
        if CLIENT_IDS.get(self.url) is not (not own):
            log.info("%s queues jobs under %s", self.url,
                     "its own prompt ids: following them by the farm's tag" if own
                     else "the client's prompt ids")  # fmt: skip
        CLIENT_IDS[self.url] = not own

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished job, or None (pending, running or unknown)."""
        return self.status(prompt_id)[1]

    def queue_state(self, prompt_id: str) -> str | None:
        """``"running"``, ``"pending"`` or None for a prompt id on the node's queue."""
        state = self.status(prompt_id)[0]
        return state if state in ("pending", "running") else None

    def _history(self, prompt_id: str) -> dict[str, Any] | None:
        data = self.get_json(f"/history/{prompt_id}")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        if entry is not None and not isinstance(entry, dict):
            raise BadNodeResponse(f"/history/{prompt_id} is not an object: {str(entry)[:200]}")
        return entry

    def _queue_state(self, prompt_id: str) -> str | None:
        data = self.get_json("/queue")
        if not isinstance(data, dict):
            raise BadNodeResponse(f"/queue is not an object: {str(data)[:200]}")
        for state in ("running", "pending"):
            items = data.get(f"queue_{state}") or []
            if any(isinstance(i, list) and len(i) > 1 and i[1] == prompt_id for i in items):
                return state
        return None

    def cancel(self, prompt_id: str) -> str:
        """Take ``prompt_id`` off the node, and only it: ``removed`` from the queue,
        ``interrupted`` while running, or ``not_found`` (finished or unknown)."""
        self._taken_off.add(prompt_id)
        if self.job_api() and self._job_cancel:
            outcome = self._cancel_job(prompt_id)
            if outcome is not None:
                return outcome
        # no job API: dequeue a waiting job; /interrupt only the running one (servers before
        # ComfyUI 0.3.56 ignore its prompt_id and stop whatever runs)
        node_id = self.node_id(prompt_id)
        state = self._queue_state(node_id)
        if state == "pending":
            self.post_json("/queue", {"delete": [node_id]})
            state = self._queue_state(node_id)  # it may have started meanwhile
            if state != "running":
                return "removed"
        if state == "running":
            self.post_json("/interrupt", {"prompt_id": node_id})
            return "interrupted"
        return "not_found"

    def _cancel_job(self, prompt_id: str) -> str | None:
        """Cancel through ``POST /api/jobs/{id}/cancel`` (dequeues or interrupts that job
        atomically); None when the node lacks the route."""
        state = self.status(prompt_id)[0]
        if state not in ("pending", "running"):
            return "not_found"
        resp = self._call("POST", f"/api/jobs/{prompt_id}/cancel")
        if resp.status_code in (404, 405) and "cancelled" not in _json_object(resp):
            log.info("%s has the job API but no per-job cancel: /queue and /interrupt", self.url)
            self._job_cancel = False
            return None
        if resp.status_code != 200:
            raise BadNodeResponse(
                f"POST /api/jobs/{prompt_id}/cancel answered HTTP {resp.status_code}: "
                f"{resp.text[:200]}"
            )
        if not _json_object(resp).get("cancelled"):
            return "not_found"  # it ended meanwhile
        if state == "pending" and self.status(prompt_id)[0] == "absent":
            return "removed"
        return "interrupted"

    def upload(self, path: Path, subfolder: str = "farm") -> str:
        """Upload an input file (content-addressed name) and return its LoadImage value."""
        data = path.read_bytes()
        name = hashlib.sha256(data).hexdigest()[:16] + path.suffix.lower()
        resp = self._call(
            "POST",
            "/upload/image",
            files={"image": (name, data)},
            data={"type": "input", "subfolder": subfolder},
        )
        if resp.status_code != 200:
            raise BadNodeResponse(
                f"upload of {path.name} answered HTTP {resp.status_code}: {resp.text[:200]}"
            )
        try:
            body = resp.json()
            return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]
        except (ValueError, KeyError, TypeError):
            raise BadNodeResponse(
                f"upload of {path.name}: unexpected answer {resp.text[:200]}"
            ) from None

    def download(self, item: dict[str, Any], dest: Path, max_bytes: int) -> Path:
        """Fetch one output through ``/view`` into ``dest``, refusing more than ``max_bytes``."""
        params = {
            "filename": str(item["filename"]),
            "subfolder": str(item.get("subfolder", "")),
            "type": str(item.get("type", "output")),
        }
        resp = self._call("GET", "/view", params=params, stream=True)
        return save_stream(resp, dest, max_bytes, params["filename"])

    # discovery
    def object_info(self) -> dict[str, Any]:
        data = self.get_json("/object_info")
        if not isinstance(data, dict):
            raise BadNodeResponse("/object_info is not an object")
        return data

    def model_folders(self) -> list[str] | None:
        """The node's model folders (``GET /models``), or None on a server without the
        route (ComfyUI before mid 2024)."""
        try:
            folders = self.get_json("/models")
        except BadNodeResponse:
            return None
        return [str(f) for f in folders] if isinstance(folders, list) else list(MODEL_FOLDERS)

    def models(self, folder: str) -> list[str]:
        try:
            files = self.get_json(f"/models/{folder}")
        except BadNodeResponse:
            return []
        return [str(f) for f in files] if isinstance(files, list) else []

    # running a graph
    def run(
        self,
        graph: Graph,
        prompt_id: str,
        progress: ProgressFn,
        on_event: EventFn | None = None,
    ) -> dict[str, Any]:
        """Run ``graph`` as ``prompt_id`` (or follow/collect it if the node already has it)
        and return its history entry. A failed or interrupted run raises its farm error.

        ``progress`` may raise :class:`JobCancelled`: the job is then taken off the node.
        """
        entry = self.history(prompt_id)
        if entry is None:
            # derived from the job: a second delivery following the job (its first worker
            # died) takes the session over and gets the job's progress events (ComfyUI
            # sends them only to the prompt's client id), so it does not look hung
            client_id = uuid.uuid5(PROMPT_NAMESPACE, f"client/{prompt_id}").hex
            ws = self._connect(client_id)
            try:
                if self.queue_state(prompt_id) is None:
                    if self.submit(graph, prompt_id, client_id):
                        progress(0.02, "queued on node")
                else:
                    log.info("job %s is already on %s: following it", prompt_id, self.url)
                passes = SamplerPasses(graph)
                ws = self._follow(prompt_id, client_id, ws, progress, on_event, passes)
            except (JobCancelled, NodeTimeout) as exc:
                self._abandon(prompt_id, exc)
                raise
            finally:
                ws.close()
            entry = self._final_history(prompt_id)
        raise_for_status(prompt_id, entry)
        return entry

    def _abandon(self, prompt_id: str, why: Exception) -> None:
        """Free the node of a job the farm gives up on (cancelled, or hung)."""
        try:
            outcome = self.cancel(prompt_id)
            log.info("job %s on %s: %s (%s)", prompt_id, self.url, outcome, why)
        except FarmError as exc:
            log.warning("could not cancel job %s on %s: %s", prompt_id, self.url, exc)

    def _connect(self, client_id: str) -> websocket.WebSocket:
        try:
            ws = websocket.create_connection(
                f"{self.ws_url}?clientId={client_id}", timeout=WS_RECV_TIMEOUT
            )
            flags = {"supports_preview_metadata": True}
            ws.send(json.dumps({"type": "feature_flags", "data": flags}))
            return ws
        except (OSError, websocket.WebSocketException) as exc:
            raise NodeUnavailable(f"{self.ws_url}: websocket connection failed: {exc}") from exc

    def _reconnect(self, client_id: str) -> websocket.WebSocket:
        deadline = time.monotonic() + min(RECONNECT_FOR, self.idle_timeout)
        while True:
            try:
                return self._connect(client_id)
            except NodeUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _follow(
        self,
        prompt_id: str,
        client_id: str,
        ws: websocket.WebSocket,
        progress: ProgressFn,
        on_event: EventFn | None,
        passes: SamplerPasses | None = None,
    ) -> websocket.WebSocket:
        """Follow the job's events until it ends; returns the (possibly new) socket."""
        node_id = self.node_id(prompt_id)  # the id in the node's events
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
                if on_event:
                    on_event("reconnected", {})
                last_poll = 0.0  # reconcile at once: events while away are not replayed
                msg = None
            now = time.monotonic()
            if isinstance(msg, bytes):
                image = parse_preview(msg, node_id)
                if image is not None:
                    last_activity = now
                    if on_event:
                        on_event("preview_image", {"bytes": len(image)})
                    progress(-1, "preview", image)
                continue
            if msg:
                try:
                    event = json.loads(msg)
                    kind, data = str(event["type"]), event.get("data") or {}
                except (ValueError, KeyError, TypeError):
                    raise BadNodeResponse(
                        f"websocket sent a malformed message: {msg[:200]}"
                    ) from None
                if not isinstance(data, dict) or data.get("prompt_id") != node_id:
                    continue
                last_activity = now
                if on_event:
                    on_event(kind, data)
                if _handle(kind, data, progress, passes):
                    return ws
            if now - last_poll >= POLL_EVERY:
                last_poll = now
                state = self._reconcile(prompt_id)
                if state == "ended":
                    return ws
                if state == "pending":
                    last_activity = now  # waiting behind other work is not a hang
            if now - last_activity > self.idle_timeout:
                raise NodeTimeout(
                    f"job {prompt_id} on {self.url} made no progress for {self.idle_timeout:g}s"
                )

    def _reconcile(self, prompt_id: str) -> str:
        """``ended``, ``running`` or ``pending`` (the job API, or /history and /queue)."""
        state = self.status(prompt_id)[0]
        if state != "absent":
            return state
        if prompt_id in self._taken_off:
            raise JobCancelled(f"job {prompt_id} was taken off the queue of {self.url}")
        raise NodeUnavailable(f"job {prompt_id} vanished from {self.url} (node restarted?)")

    def _final_history(self, prompt_id: str) -> dict[str, Any]:
        for _ in range(20):  # history is written just before the final event; allow a beat
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            time.sleep(0.25)
        raise BadNodeResponse(f"job {prompt_id} ended but /history has no entry for it")

    def collect(
        self,
        entry: dict[str, Any],
        out_dir: Path,
        max_bytes: int,
        types: tuple[str, ...] = ("output",),
    ) -> list[Path]:
        """Download every file listed in the entry's outputs, under any key, into ``out_dir``.

        Names from the node are untrusted: each is reduced to a plain file name inside
        ``out_dir`` and made unique.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        root = out_dir.resolve()
        files: list[Path] = []
        for item in output_items(entry, types):
            dest = unique_dest(out_dir, root, str(item["filename"]), files)
            files.append(self.download(item, dest, max_bytes))
        return files


def unique_dest(out_dir: Path, root: Path, name: str, taken: list[Path]) -> Path:
    """Where an output a node calls ``name`` (untrusted) goes: a plain file name inside
    ``out_dir`` (whose resolved path is ``root``), made unique among ``taken`` and what is
    already there."""
    dest = out_dir / safe_name(name)
    n = 1
    while dest in taken or dest.exists():
        dest = out_dir / f"{Path(safe_name(name)).stem}_{n}{dest.suffix}"
        n += 1
    if dest.resolve().parent != root:  # cannot happen after safe_name; kept as a guard
        raise BadNodeResponse(f"output name {name!r} escapes {out_dir}")
    return dest


def build_graph(
    job: Job,
    settings: Settings,
    upload: Callable[[Path], Any],
    object_info: Callable[[], dict[str, Any]] | None,
) -> Graph:
    """The job's workflow (the catalogue's, a studio's own) with its parameters bound; a
    start image becomes what ``upload(path)`` returns (a LoadImage file name, or a v2
    ``core/ASSET`` reference). ``object_info``: the node's class definitions, to convert
    an editor-format workflow (None: such a workflow is refused with the export hint)."""
    catalog = catalog_for(settings)
    bindings = catalog.bindings(job.workflow, job.engine)
    loaders = model_bindings(bindings)
    models = model_params(job.models)
    params = {**job.params, **{k: v for k, v in models.items() if k in loaders}}
    params["filename_prefix"] = f"farm/{job.scene_id}/{job.shot_id}_{job.label}"
    if "start_image" in params:
        params["start_image"] = upload(Path(params["start_image"]))
    if "tracks" in params:
        params["tracks"] = json.dumps(params["tracks"], separators=(",", ":"))
    path = catalog.workflow_file(job.workflow, settings.workflows_dir, job.engine)
    graph = load_workflow(job.workflow, settings.workflows_dir, object_info, path)
    return bind(graph, params, name=job.workflow, bindings=bindings)


def video_result(job: Job, files: list[Path], backend_job_id: str) -> RenderResult:
    """The render's result from its downloaded ``files``: the first video, an animated
    WebP or GIF turned into an MP4 clip."""
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    if not videos:
        raise BadNodeResponse(
            f"job {backend_job_id} finished without a video output "
            f"(outputs: {[f.name for f in files]})"
        )
    video = videos[0]
    if video.suffix.lower() in ANIMATION_SUFFIXES:  # e.g. an older ComfyUI's only way
        fps = job.params.get("fps")
        video = animation_to_video(video, video.with_suffix(".mp4"), fps or None)
        files.append(video)
    return RenderResult(video=video, files=files, backend_job_id=backend_job_id)


def _json_object(resp: requests.Response) -> dict[str, Any]:
    """The response's JSON object, or {} when it is not one."""
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def output_items(entry: dict[str, Any], types: tuple[str, ...] = ("output",)) -> list[dict]:
    """Every ``{filename, subfolder, type}`` listed under any key of the entry's outputs."""
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict):
        return []
    return [
        item
        for node_out in outputs.values()
        if isinstance(node_out, dict)
        for values in node_out.values()
        if isinstance(values, list)
        for item in values
        if isinstance(item, dict)
        and isinstance(item.get("filename"), str)
        and item.get("type", "output") in types
    ]


def raise_for_status(prompt_id: str, entry: dict[str, Any]) -> None:
    """Raise the farm error recorded in a history entry whose run failed."""
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return
    for name, data in status.get("messages", []):
        if name == "execution_error":
            raise classify_execution_error(data)
        if name == "execution_interrupted":
            raise JobCancelled(f"job {prompt_id} was interrupted on the node")
    raise RenderFailed(f"job {prompt_id} failed on the node (no error message recorded)")


#: classes whose ``progress`` events are sampling steps
SAMPLER_CLASSES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom",
                             "SamplerCustomAdvanced"})  # fmt: skip


class SamplerPasses:
    """A job's progress over all its sampling passes: Wan 2.2 A14B samples twice (high
    noise, then low noise), each pass reporting its own steps from 1; the job's fraction
    goes up once over both."""

    def __init__(self, graph: Graph) -> None:
        count = sum(1 for n in graph.values() if n.get("class_type") in SAMPLER_CLASSES)
        self.total = max(1, count)
        self.seen: list[str] = []

    def fraction(self, node: str, value: float, maximum: float) -> float:
        if node not in self.seen:
            self.seen.append(node)
        done = min(self.seen.index(node), self.total - 1)
        return (done + min(1.0, value / maximum)) / self.total


def _handle(
    kind: str, data: dict[str, Any], progress: ProgressFn, passes: SamplerPasses | None = None
) -> bool:
    """React to one event of our job; True when the job has ended."""
    if kind == "execution_start":
        progress(0.05, "started")
    elif kind == "progress":
        value, maximum = float(data.get("value", 0)), float(data.get("max", 1) or 1)
        share = min(1.0, value / maximum)
        if passes is not None:
            share = passes.fraction(str(data.get("node")), value, maximum)
        progress(0.05 + 0.85 * share, f"step {int(value)}/{int(maximum)}")
    elif kind == "execution_error":
        raise classify_execution_error(data)
    elif kind == "execution_interrupted":
        raise JobCancelled(
            f"job interrupted on the node at {data.get('node_type', '?')} "
            f"(node {data.get('node_id', '?')})"
        )
    elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
        return True
    return False


#: loaders whose file list names a model folder's files: (class, input, folder)
LOADER_FOLDERS = (
    ("UNETLoader", "unet_name", "diffusion_models"),
    ("CLIPLoader", "clip_name", "text_encoders"),
    ("VAELoader", "vae_name", "vae"),
    ("CLIPVisionLoader", "clip_name", "clip_vision"),
    ("CheckpointLoaderSimple", "ckpt_name", "checkpoints"),
    ("LoraLoader", "lora_name", "loras"),
)


def loader_models(info: dict[str, Any]) -> dict[str, list[str]]:
    """Model files per folder as the loaders' choices in ``/object_info`` list them: what
    a server without ``GET /models`` holds (the older folder names ``unet`` and ``clip``
    are read as ``diffusion_models`` and ``text_encoders``)."""
    models: dict[str, list[str]] = {}
    for class_type, name, folder in LOADER_FOLDERS:
        spec = ((info.get(class_type) or {}).get("input") or {}).get("required", {}).get(name)
        choices = spec[0] if isinstance(spec, list) and spec else None
        if isinstance(choices, list):
            models.setdefault(folder, [])
            models[folder] += [str(c) for c in choices if str(c) not in models[folder]]
    return models


class ComfyUIBackend:
    """Render farm jobs on a ComfyUI server."""

    kind = "comfyui"

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self.client = ComfyClient(self.url, settings.http_timeout, settings.node_idle_timeout)
        self._object_info: dict[str, Any] | None = None

    def object_info(self) -> dict[str, Any]:
        if self._object_info is None:
            self._object_info = self.client.object_info()
        return self._object_info

    # discovery
    def probe(self) -> None:
        self.client.get_json("/system_stats")

    def describe(self) -> dict[str, Any]:
        """What the node is and can render: version, devices, model files, classes and the
        farm workflows it can run with which diffusion models."""
        stats = self.client.get_json("/system_stats")
        if not isinstance(stats, dict):
            raise BadNodeResponse("/system_stats is not an object")
        devices = [d for d in stats.get("devices") or [] if isinstance(d, dict)]
        self._object_info = None
        info = self.object_info()
        folders = self.client.model_folders()
        if folders is None:
            models = loader_models(info)
        else:
            models = {f: self.client.models(f) for f in folders}
        first = devices[0] if devices else {}
        return {
            "models": {k: v for k, v in models.items() if v},
            "gpu": gpu_label(str(first.get("name", ""))),
            "vram_total": int(first.get("vram_total", 0) or 0),
            "vram_free": int(first.get("vram_free", 0) or 0),
            "devices": [
                {k: d.get(k) for k in ("name", "type", "index", "vram_total", "vram_free")}
                for d in devices
            ],
            "version": str((stats.get("system") or {}).get("comfyui_version", "")),
            "classes": len(info),
            "workflows": node_capabilities(
                info, self.settings.workflows_dir, catalog_for(self.settings)
            ),  # fmt: skip
        }

    # rendering
    def graph_for(self, job: Job) -> Graph:
        """The job's workflow (the catalogue's, a studio's own), its parameters bound."""
        return build_graph(job, self.settings, self.client.upload, self.object_info)

    def render(self, job: Job, out_dir: Path, progress: ProgressFn) -> RenderResult:
        prompt_id = prompt_id_for(job)
        entry = self.client.run(self.graph_for(job), prompt_id, progress)
        return self._result(job, prompt_id, entry, out_dir)

    def _result(
        self, job: Job, prompt_id: str, entry: dict[str, Any], out_dir: Path
    ) -> RenderResult:
        files = self.client.collect(entry, out_dir, self.settings.max_download_bytes)
        return video_result(job, files, self.client.node_id(prompt_id))

    def find(self, job: Job, out_dir: Path | None = None) -> str:
        """Where the node has the job's attempt (by its prompt id): ``pending``,
        ``running``, ``succeeded``, ``failed`` or ``absent``."""
        state, entry = self.client.status(prompt_id_for(job))
        if entry is not None:
            failed = (entry.get("status") or {}).get("status_str") == "error"
            return "failed" if failed else "succeeded"
        return state

    def collect(self, job: Job, out_dir: Path) -> RenderResult:
        """The outputs of the attempt the node finished (never queues it)."""
        prompt_id = prompt_id_for(job)
        entry = self.client.history(prompt_id)
        if entry is None:
            raise NodeUnavailable(f"job {prompt_id} has not finished on {self.url}")
        raise_for_status(prompt_id, entry)
        return self._result(job, prompt_id, entry, out_dir)

    def cancel(self, job: Job, out_dir: Path | None = None) -> str:
        """Take the job's current attempt off the node (see :meth:`ComfyClient.cancel`)."""
        return self.client.cancel(prompt_id_for(job))
