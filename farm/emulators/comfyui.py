"""An emulated ComfyUI GPU node: a real aiohttp server speaking ComfyUI's wire protocol.

It answers the routes a farm uses with ComfyUI 0.3.64's shapes and status codes (also
under ``/api``) or, with ``"api": "0.38"`` in the profile, as the newer generation does (the
job API of :mod:`farm.emulators.comfy_jobs`, 409 on a duplicate ``prompt_id``, ``/interrupt``
by ``prompt_id``; see docs/emulators.md, "API generations"), runs one prompt at a time from a FIFO heap queue, walks the graph in
ComfyUI's order with its caching, and streams the same websocket events (JSON and binary
previews). This module holds the routes, the websocket hub, the queue and history stores
and the CLI; the executor is :mod:`farm.emulators.comfy_executor`, node classes
:mod:`farm.emulators.comfy_nodes` (runners in ``comfy_runners``, validation in
``comfy_validation``) and the timing/VRAM/failure models :mod:`farm.emulators.profile`.
The emulator-only routes (:mod:`farm.emulators.comfy_admin`) switch the injected faults of
the profile on a running node (``/emulator/faults``) and list every execution it started
(``/emulator/jobs``) and counts the requests per route (``/emulator/requests``).

    python -m farm.emulators.comfyui --port 8188 --profile deploy/nodes/gpu-a.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import io
import ipaddress
import itertools
import json
import logging
import mimetypes
import os
import shutil
import socket
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web
from PIL import Image

from farm.emulators.comfy_admin import admin_routes
from farm.emulators.comfy_executor import CacheEntry, worker
from farm.emulators.comfy_jobs import canonical_id, job_routes
from farm.emulators.comfy_nodes import NodeDef, definitions
from farm.emulators.comfy_runners import Dirs, GpuState, annotated_path
from farm.emulators.comfy_validation import validate_prompt
from farm.emulators.joblog import JobLog
from farm.emulators.profile import Fault, NodeProfile, http_500_hits, load_profile
from farm.errors import FarmError

log = logging.getLogger("farm.emulators.comfyui")

COMFYUI_VERSION = "0.3.64"
#: what ``/system_stats`` reports for each server generation (profile ``api``)
VERSIONS = {"0.3": COMFYUI_VERSION, "0.38": "0.38.0"}
MAX_UPLOAD = 100 * 1024 * 1024
MAX_HISTORY = 10000
GIB = 1 << 30
CONTEXT_BYTES = 400 << 20  # CUDA context and allocator reserve, always in use
MODEL_FOLDER_NAMES = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker",
    "classifiers", "model_patches", "audio_encoders",
]  # fmt: skip
mimetypes.add_type("image/webp", ".webp")


class InjectedFault(RuntimeError):
    """Raised by a handler to answer as an unhandled exception does (the ``http_500`` fault)."""


# --- websocket clients ---------------------------------------------------------------------


class Hub:
    """The connected websockets by client id, with the feature flags each one sent.

    Events go to the newest socket of a client id (a second socket takes over, as in
    ComfyUI); ``open`` keeps every socket still open, superseded ones included.
    """

    def __init__(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.flags: dict[str, dict[str, Any]] = {}
        self.open: dict[str, set[web.WebSocketResponse]] = {}
        self._closing: set[asyncio.Task] = set()

    def connect(self, sid: str, ws: web.WebSocketResponse) -> None:
        self.sockets[sid], self.flags[sid] = ws, {}
        self.open.setdefault(sid, set()).add(ws)

    def disconnect(self, sid: str, ws: web.WebSocketResponse) -> None:
        self.open.get(sid, set()).discard(ws)
        if not self.open.get(sid):
            self.open.pop(sid, None)
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]
            self.flags.pop(sid, None)

    def drop(self, sid: str) -> None:
        """Close every socket of client ``sid`` now (closing handshakes run in the background)."""
        for ws in list(self.open.get(sid, ())):
            self.disconnect(sid, ws)
            task = asyncio.create_task(ws.close(code=WSCloseCode.GOING_AWAY, message=b"ws_drop"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def supports_metadata(self, sid: str | None) -> bool:
        return sid is not None and bool(self.flags.get(sid, {}).get("supports_preview_metadata"))

    def _targets(self, sid: str | None) -> list[web.WebSocketResponse]:
        if sid is None:
            return list(self.sockets.values())
        return [self.sockets[sid]] if sid in self.sockets else []

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Send ``{"type", "data"}`` to client ``sid``, or to every client when sid is None."""
        for ws in self._targets(sid):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"type": event, "data": data})

    async def send_bytes(self, payload: bytes, sid: str | None = None) -> None:
        for ws in self._targets(sid):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(payload)


# --- queue and history ---------------------------------------------------------------------


@dataclass
class QueueItem:
    """One queued prompt: ``[number, prompt_id, graph, extra_data, outputs]`` on the wire."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    run: int = 0  # its execution's number in the node's job log, once started

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")


class PromptQueue:
    """A heap of pending prompts (lowest number first) and the one running."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, str, int, QueueItem]] = []
        self.running: list[QueueItem] = []
        self._tie = itertools.count()
        self._wake = asyncio.Event()

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self.heap, (item.number, item.prompt_id, next(self._tie), item))
        self._wake.set()

    async def get(self) -> QueueItem:
        while not self.heap:
            self._wake.clear()
            await self._wake.wait()
        item = heapq.heappop(self.heap)[-1]
        self.running.append(item)
        return item

    def pending(self) -> list[QueueItem]:
        """Pending items in heap order (as ComfyUI lists them)."""
        return [entry[-1] for entry in self.heap]

    def delete(self, prompt_id: str) -> bool:
        for i, entry in enumerate(self.heap):
            if entry[-1].prompt_id == prompt_id:
                self.heap.pop(i)
                heapq.heapify(self.heap)
                return True
        return False

    def remaining(self) -> int:
        return len(self.heap) + len(self.running)


class History:
    """Finished prompts by id, oldest first, capped like ComfyUI's."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def add(self, prompt_id: str, entry: dict[str, Any]) -> None:
        if len(self.entries) > MAX_HISTORY:
            self.entries.pop(next(iter(self.entries)))
        self.entries[prompt_id] = entry

    def page(self, max_items: int | None, offset: int) -> dict[str, Any]:
        """ComfyUI's ``get_history`` paging: the newest ``max_items`` unless an offset is given."""
        if offset < 0 and max_items is not None:
            offset = len(self.entries) - max_items
        out: dict[str, Any] = {}
        for i, (key, entry) in enumerate(self.entries.items()):
            if i >= offset:
                out[key] = entry
                if max_items is not None and len(out) >= max_items:
                    break
        return out


# --- the node --------------------------------------------------------------------------------


@dataclass
class EmulatedNode:
    """All state of one emulated node: profile, folders, queue, history, GPU and sockets."""

    profile: NodeProfile
    dirs: Dirs
    argv: list[str]
    hub: Hub = field(default_factory=Hub)
    queue: PromptQueue = field(default_factory=PromptQueue)
    history: History = field(default_factory=History)
    gpu: GpuState = field(default_factory=GpuState)
    cache: dict[str, CacheEntry] = field(default_factory=dict)
    number: int = 0
    interrupted: bool = False
    client_id: str | None = None
    last_node_id: str | None = None
    free_flags: dict[str, bool] = field(default_factory=dict)
    #: the active faults (the profile's until ``PUT /emulator/faults``) and POSTs per prompt id
    faults: Mapping[str, Fault] = field(init=False)
    posts: Counter[str] = field(default_factory=Counter)
    #: renders per request, seed aside (the ``jitter`` fault shakes a request's first takes)
    takes_seen: dict[str, int] = field(default_factory=dict)
    #: every prompt execution started (the emulator-only ``GET /emulator/jobs``)
    jobs: JobLog = field(default_factory=lambda: JobLog(None))
    #: requests answered per route, ``"POST /api/jobs/{job_id}/cancel"`` (``/emulator/requests``)
    hits: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.faults = dict(self.profile.faults)

    def definitions(self) -> dict[str, NodeDef]:
        return definitions(self.profile, self.dirs)

    # what the job API reads and does (comfy_jobs.JobNode)
    def running(self) -> list[QueueItem]:
        return list(self.queue.running)

    def pending(self) -> list[QueueItem]:
        return self.queue.pending()

    def finished(self) -> dict[str, dict[str, Any]]:
        return self.history.entries

    def dequeue(self, prompt_id: str) -> bool:
        return self.queue.delete(prompt_id)

    def interrupt_if_running(self, prompt_id: str) -> bool:
        if any(item.prompt_id == prompt_id for item in self.queue.running):
            self.interrupted = True
            return True
        return False

    def known(self, prompt_id: str) -> bool:
        """Whether a prompt id is queued, running or in history."""
        items = [*self.queue.running, *self.queue.pending()]
        return prompt_id in self.history.entries or any(i.prompt_id == prompt_id for i in items)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    async def queue_updated(self) -> None:
        await self.hub.send("status", {"status": self.queue_info()})

    async def next_job(self) -> QueueItem:
        item = await self.queue.get()
        item.run = self.jobs.started(item.prompt_id, item.client_id, number=item.number)
        await self.queue_updated()
        return item

    async def job_done(self, item: QueueItem, entry: dict[str, Any]) -> None:
        """Running -> history, then ``status`` and ``executing {node: null}``; apply /free."""
        self.queue.running.remove(item)
        self.history.add(item.prompt_id, entry)
        status, details = _outcome(entry)
        self.jobs.ended(item.run, status, loaded_models=list(self.gpu.loads), **details)
        await self.queue_updated()
        if item.client_id is not None:
            await self.hub.send(
                "executing", {"node": None, "prompt_id": item.prompt_id}, item.client_id
            )
        self.apply_free()

    def apply_free(self) -> None:
        """Honour ``POST /free`` flags between prompts."""
        flags, self.free_flags = self.free_flags, {}
        if flags.get("unload_models", flags.get("free_memory", False)):
            self.gpu.unload()
        if flags.get("free_memory"):
            self.cache.clear()

    def system_stats(self) -> dict[str, Any]:
        total = int(self.profile.vram_gb * GIB)
        weights = int(self.gpu.weights_gb * GIB)
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        device = {
            "name": f"cuda:0 {self.profile.gpu} : cudaMallocAsync",
            "type": "cuda",
            "index": 0,
            "vram_total": total,
            "vram_free": max(0, total - CONTEXT_BYTES - weights),
            "torch_vram_total": weights,
            "torch_vram_free": min(weights, 64 << 20),
        }
        system = {
            "os": os.name,
            "ram_total": pages * page,
            "ram_free": os.sysconf("SC_AVPHYS_PAGES") * page,
            "comfyui_version": VERSIONS.get(self.profile.api, ""),
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": sys.version,
            "pytorch_version": "2.8.0+cu128",
            "embedded_python": False,
            "argv": self.argv,
        }
        if self.profile.legacy:  # March 2024: no version, RAM or template fields yet
            system = {k: system[k] for k in ("os", "python_version", "embedded_python")}
        return {"system": system, "devices": [device]}


def _outcome(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A history entry's outcome for the job log: status and, for an error, its type."""
    status = entry["status"]
    if status["status_str"] == "success":
        return "success", {}
    for name, data in status["messages"]:
        if name == "execution_interrupted":
            return "interrupted", {}
        if name == "execution_error":
            return "error", {"exception_type": data.get("exception_type")}
    return "error", {}


# --- HTTP ------------------------------------------------------------------------------------


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for *_, addr in socket.getaddrinfo(host, None, family, socket.SOCK_STREAM):
                if not ipaddress.ip_address(addr[0]).is_loopback:
                    return loopback
                loopback = True
        except socket.gaierror:
            pass
    return loopback


@web.middleware
async def count_hits(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Count the request under its route (``GET /emulator/requests``)."""
    route = request.match_info.route.resource
    if route is not None:
        request.app["node"].hits[f"{request.method} {route.canonical}"] += 1
    return await handler(request)


@web.middleware
async def origin_check(request: web.Request, handler: Callable) -> web.StreamResponse:
    """ComfyUI's guard: on a loopback Host, an Origin naming another host gets 403."""
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host is not None and origin is not None:
        host_domain = host.lower()
        parsed = urllib.parse.urlparse(origin)
        origin_domain = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + host_domain)
        loopback = is_loopback(host_parsed.hostname)
        if parsed.port is None:
            host_domain = host_parsed.hostname
        if host_parsed.port is None:
            origin_domain = parsed.hostname
        if loopback and host_domain and origin_domain and host_domain != origin_domain:
            log.warning(
                "request with non matching host and origin %s != %s, returning 403",
                host_domain,
                origin_domain,
            )
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


class Routes:
    """The HTTP and websocket handlers of one emulated node."""

    def __init__(self, node: EmulatedNode) -> None:
        self.node = node

    def table(self) -> list[tuple[str, str, Callable]]:
        jobs = job_routes(self.node) if self.node.profile.job_api else []
        newer = [] if self.node.profile.legacy else [
            ("GET", "/models", self.models), ("GET", "/models/{folder}", self.models_in),
            ("GET", "/features", self.features),
        ]  # fmt: skip
        return jobs + newer + [
            ("GET", "/ws", self.websocket), ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt), ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue), ("POST", "/interrupt", self.interrupt),
            ("POST", "/free", self.free), ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history), ("GET", "/view", self.view),
            ("POST", "/upload/image", self.upload_image),
            ("GET", "/system_stats", self.system_stats), ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_one),
            ("GET", "/embeddings", self.embeddings),
        ]  # fmt: skip

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        node, hub = self.node, self.node.hub
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        hub.connect(sid, ws)
        try:
            await hub.send("status", {"status": node.queue_info(), "sid": sid}, sid)
            if node.client_id == sid and node.last_node_id is not None:
                await hub.send("executing", {"node": node.last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    with contextlib.suppress(ValueError, AttributeError):
                        data = json.loads(msg.data)
                        if first and data.get("type") == "feature_flags":
                            hub.flags[sid] = dict(data.get("data") or {})
                            await hub.send("feature_flags", self.server_features(), sid)
                    first = False
        finally:
            hub.disconnect(sid, ws)
        return ws

    def server_features(self) -> dict[str, Any]:
        flags: dict[str, Any] = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD}
        if self.node.profile.job_api:  # the newer core flags (none of them names the job API)
            flags.update(supports_model_type_tags=True, extension={"manager": {"supports_v4": True}},
                         node_replacements=True, assets=False)  # fmt: skip
        return flags

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(self.server_features())

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        node = self.node
        body = await request.json()  # malformed JSON: aiohttp's plain-text 500, as ComfyUI
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = -node.number if "front" in body and body["front"] else node.number
            node.number += 1
        if "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        if node.profile.legacy:  # ComfyUI of March 2024 always chose the id itself
            prompt_id = str(uuid.uuid4())
        if node.profile.job_api and body.get("prompt_id") is not None:
            refused = _refused_prompt_id(node, body["prompt_id"])
            if refused is not None:
                return refused
        node.posts[prompt_id] += 1
        if http_500_hits(node.faults, prompt_id, node.posts[prompt_id]):
            raise InjectedFault(f"http_500 fault: POST /prompt of {prompt_id}")  # aiohttp's 500
        valid = validate_prompt(prompt, node.definitions(), body.get("partial_execution_targets"))
        extra = body.get("extra_data", {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        if node.profile.job_api:
            extra["create_time"] = int(time.time() * 1000)
        if not valid.ok:
            log.warning("invalid prompt: %s", valid.error)
            return web.json_response(
                {"error": valid.error, "node_errors": valid.node_errors}, status=400
            )
        node.queue.put(QueueItem(number, prompt_id, prompt, extra, valid.outputs))
        await node.queue_updated()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": valid.node_errors}
        )

    async def get_queue(self, request: web.Request) -> web.Response:
        queue = self.node.queue
        return web.json_response(
            {
                "queue_running": [i.as_list() for i in queue.running],
                "queue_pending": [i.as_list() for i in queue.pending()],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body, queue = await request.json(), self.node.queue
        if "clear" in body and body["clear"]:
            queue.heap.clear()
            await self.node.queue_updated()
        for prompt_id in body.get("delete", []):
            if queue.delete(prompt_id):
                await self.node.queue_updated()
        return web.Response()

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id") if self.node.profile.job_api else None
        if not prompt_id:  # the old generation interrupts whatever runs, whoever asks
            self.node.interrupted = True
        else:
            self.node.interrupt_if_running(prompt_id)
        return web.Response()

    async def free(self, request: web.Request) -> web.Response:
        body = await request.json()
        for flag in ("unload_models", "free_memory"):
            if body.get(flag, False):
                self.node.free_flags[flag] = body[flag]
        if not self.node.queue.running:
            self.node.apply_free()
        return web.Response()

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(self.node.history.page(max_items, offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.node.history.entries.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body, entries = await request.json(), self.node.history.entries
        if "clear" in body and body["clear"]:
            entries.clear()
        for prompt_id in body.get("delete", []):
            entries.pop(prompt_id, None)
        return web.Response()

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, kind = annotated_path(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        base = self.node.dirs.by_type(kind or query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        folder = str(base)
        if "subfolder" in query:
            full = os.path.join(folder, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), folder)) != folder:
                return web.Response(status=403)
            folder = full
        filename = os.path.basename(filename)
        file = os.path.join(folder, filename)
        if not os.path.isfile(file):
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query or query.get("channel", "rgba") != "rgba":
            body, ctype = _converted_image(file, query)
            return web.Response(body=body, content_type=ctype, headers=disposition)
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if ctype in {
            "text/html",
            "text/html-sandboxed",
            "application/xhtml+xml",
            "text/javascript",
            "text/css",
        }:
            ctype = "application/octet-stream"
        return web.FileResponse(file, headers={**disposition, "Content-Type": ctype})

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        kind = post.get("type") or "input"
        base = self.node.dirs.by_type(str(kind))
        if base is None or not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        folder = os.path.join(str(base), os.path.normpath(subfolder))
        filename = image.filename
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((str(base), path)) != str(base):
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        stem, suffix = os.path.splitext(filename)
        duplicate = False
        if str(post.get("overwrite")) not in ("true", "1"):
            for i in itertools.count(1):
                if not os.path.exists(path):
                    break
                if _same_bytes(path, data):
                    duplicate = True
                    break
                filename = f"{stem} ({i}){suffix}"
                path = os.path.join(folder, filename)
        if not duplicate:
            with open(path, "wb") as fh:
                fh.write(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.system_stats())

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response({name: d.info() for name, d in self.node.definitions().items()})

    async def object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        defs = self.node.definitions()
        return web.json_response({name: defs[name].info()} if name in defs else {})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDER_NAMES)

    async def models_in(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDER_NAMES:
            return web.Response(status=404)
        return web.json_response(self.node.profile.files(folder))

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])


def _refused_prompt_id(node: EmulatedNode, prompt_id: Any) -> web.Response | None:
    """The newer generation's answer to a client-chosen ``prompt_id`` it will not take:
    400 unless a canonical lowercase UUID, 409 if the node already has it; else None."""
    if not canonical_id(prompt_id):
        error = {
            "type": "invalid_prompt_id",
            "message": "prompt_id must be a valid UUID",
            "details": "prompt_id must be a UUID string in canonical lowercase hyphenated "
            "form; omit it to let the server generate one",
            "extra_info": {},
        }
        return web.json_response({"error": error, "node_errors": {}}, status=400)
    if node.known(prompt_id):
        error = {
            "type": "duplicate_prompt_id",
            "message": "prompt_id is already in use",
            "details": f"a job with prompt_id {prompt_id} is queued, running or in history",
            "extra_info": {"prompt_id": prompt_id},
        }
        return web.json_response({"error": error, "node_errors": {}}, status=409)
    return None


def _same_bytes(path: str, data: bytes) -> bool:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest()


def _converted_image(file: str, query: Any) -> tuple[bytes, str]:
    """``/view`` with ``preview=webp;90`` or ``channel=rgb|a``: the image re-encoded."""
    buffer = io.BytesIO()
    with Image.open(file) as img:
        if "preview" in query:
            fmt, *rest = query["preview"].split(";")
            fmt = fmt if fmt in ("webp", "jpeg") and "a" not in query.get("channel", "") else "webp"
            quality = int(rest[-1]) if rest and rest[-1].isdigit() else 90
            out = img.convert("RGB") if fmt == "jpeg" or query.get("channel") == "rgb" else img
            out.save(buffer, format=fmt, quality=quality)
            return buffer.getvalue(), f"image/{fmt}"
        if query["channel"] == "rgb":
            img.convert("RGB").save(buffer, format="PNG")
        else:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
            out.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


# --- app and CLI -----------------------------------------------------------------------------


def make_dirs(data_dir: Path) -> Dirs:
    """The node's folders under ``data_dir``; input/ gets ComfyUI's example.png."""
    root = Path(data_dir).resolve()
    dirs = Dirs(input=root / "input", output=root / "output", temp=root / "temp")
    for folder in (dirs.input, dirs.output, dirs.temp):
        folder.mkdir(parents=True, exist_ok=True)
    example = dirs.input / "example.png"
    if not example.exists():
        ramp = np.linspace(40, 215, 512, dtype=np.float32)
        image = np.stack(
            [
                np.add.outer(ramp, ramp) / 2,
                np.add.outer(ramp[::-1], ramp) / 2,
                np.tile(ramp, (512, 1)),
            ],
            axis=-1,
        ).astype(np.uint8)
        cv2.imwrite(str(example), image)
    return dirs


def make_app(
    profile: NodeProfile, data_dir: Path, argv: list[str] | None = None
) -> web.Application:
    """The emulated node's aiohttp application (its worker starts with the app)."""
    node = EmulatedNode(
        profile,
        make_dirs(data_dir),
        argv or ["main.py", "--preview-method", "auto"],
        jobs=JobLog(Path(data_dir).resolve()),
    )
    app = web.Application(client_max_size=MAX_UPLOAD, middlewares=[origin_check, count_hits])
    for method, path, handler in Routes(node).table():
        app.router.add_route(method, "/api" + path, handler)
        app.router.add_route(method, path, handler)
    for method, path, handler in admin_routes(node):  # emulator-only: not under /api
        app.router.add_route(method, path, handler)
    app["node"] = node

    async def start(app: web.Application) -> None:
        shutil.rmtree(node.dirs.temp, ignore_errors=True)  # ComfyUI empties temp at start-up
        node.dirs.temp.mkdir(parents=True, exist_ok=True)
        app["worker"] = asyncio.create_task(worker(node))

    async def close_sockets(app: web.Application) -> None:
        for ws in [ws for sockets in node.hub.open.values() for ws in sockets]:
            await ws.close()

    async def stop(app: web.Application) -> None:
        app["worker"].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app["worker"]

    app.on_startup.append(start)
    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(stop)
    return app


def serve(profile: NodeProfile, host: str, port: int, data_dir: Path) -> None:
    """Run the emulated node until SIGINT/SIGTERM (blocking)."""
    argv = [
        "main.py",
        "--listen",
        host,
        "--port",
        str(port),
        "--preview-method",
        "auto",
        "--output-directory",
        str(Path(data_dir).resolve() / "output"),
    ]
    app = make_app(profile, data_dir, argv)
    log.info(
        "emulated ComfyUI node %r (%s, %g GB) on http://%s:%d, data in %s",
        profile.name,
        profile.gpu,
        profile.vram_gb,
        host,
        port,
        data_dir,
    )
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=5,
    )


def main(argv: list[str] | None = None) -> int:
    from farm.settings import REPO_ROOT

    parser = argparse.ArgumentParser(
        prog="python -m farm.emulators.comfyui", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--profile", required=True, type=Path, help="node profile JSON (deploy/nodes/*.json)"
    )
    parser.add_argument("--port", type=int, default=8188, help="TCP port (default 8188)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument(
        "--data", type=Path, help="folder for input/output/temp (default var/nodes/<name>)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        profile = load_profile(args.profile)
    except FarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(profile, args.host, args.port, args.data or REPO_ROOT / "var" / "nodes" / profile.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
