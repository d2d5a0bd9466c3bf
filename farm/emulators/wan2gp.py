"""An emulated WanGP GPU node: an MCP server speaking WanGP's tools, and its GPU runtime.

    python -m farm.emulators.wan2gp --port 7866 --profile deploy/nodes/wan-a.json --data DIR

The server is built with the ``mcp`` package (``MCPServer``, streamable HTTP, stateless, JSON
responses) at ``/mcp``, as ``wgp.py --mcp --mcp-transport streamable-http`` serves it: one
JSON-RPC POST per call, no session handshake needed. Tools: ``wangp_generate``,
``wangp_get_job``, ``wangp_cancel_job``, ``wangp_list_models``,
``wangp_get_model_availability``, ``wangp_get_default_settings``,
``wangp_create_gallery_upload`` and ``wangp_create_gallery_download`` (one-use URLs under
``/wangp_api/gallery/``, served by the same app). Emulator-only: ``GET/PUT /emulator/faults``
and ``GET /emulator/jobs`` (every job started, :mod:`farm.emulators.joblog`).

:class:`Engine` is the GPU runtime, shared with the batch CLI (:mod:`farm.emulators.wgp_cli`):
it runs one planned task (:mod:`farm.emulators.wan2gp_settings`) and reports events as WanGP's
in-process API does (``progress`` with phases ``loading_model`` (only when the model changes),
``encoding_text``, ``inference`` or ``inference_stage_1/2``, ``decoding``; ``stream``;
``output``). GPU waits sleep per the profile's cost model; the video is real: frames from
:func:`farm.emulators.synth.synthesize`, H.264 through ffmpeg, the settings as JSON in the mp4
``comment`` tag. See docs/emulators.md, "WanGP node".
"""

from __future__ import annotations

import argparse
import copy
import functools
import ipaddress
import itertools
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2

from farm.emulators.joblog import JobLog
from farm.emulators.profile import (
    Fault,
    NodeProfile,
    Pace,
    failure_step,
    fault_hits,
    faults_json,
    http_500_hits,
    load_profile,
    load_seconds,
    parse_faults,
    step_seconds,
)
from farm.emulators.synth import ClipSpec, synthesize
from farm.emulators.wan2gp_settings import (
    DEFAULT_MEMORY_PROFILE,
    MAX_SEED,
    MEMORY_PROFILES,
    PROFILE_STEP_FACTOR,
    Task,
    ValidationFailed,
    default_settings,
    file_arguments,
    model_info,
    model_record,
    node_catalogue,
    oom_message,
    output_name,
    plan_task,
    task_entries,
    unique_path,
    vram_needed,
)
from farm.errors import ConfigError, FarmError
from farm.media import write_video

log = logging.getLogger("farm.emulators.wan2gp")

# --- the GPU runtime -------------------------------------------------------------------------

CRASH_EXIT_CODE = 70  # EX_SOFTWARE: the ``crash`` fault's exit status, as the ComfyUI emulator
WANGP_FOLDER = "wangp"  # the profile's ``models`` folder listing the WanGP model ids on disk
ENCODE_SHARE = 0.1  # text encoding costs this share of a model load
HANG_POLL_S = 0.05

Emit = Callable[[str, dict[str, Any]], None]


class TaskFailed(Exception):
    """A task ended without a video; ``stage`` is WanGP's error stage."""

    def __init__(self, message: str, stage: str, cancelled: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.cancelled = cancelled


class Engine:
    """One emulated GPU: the warm model, the output folder, the faults in force."""

    def __init__(
        self,
        profile: NodeProfile,
        output_dir: Path,
        *,
        memory_profile: int = 4,
        resolve_media: Callable[[str], Path] | None = None,
    ) -> None:
        self.profile = profile
        self.output_dir = Path(output_dir)
        self.memory_profile = memory_profile
        self.faults: Mapping[str, Fault] = dict(profile.faults)
        self.loaded: str | None = None
        #: the transformer files loaded since :meth:`begin` (the job log's ``loaded_models``)
        self.loads: list[str] = []
        self.resolve_media = resolve_media or Path
        self.lock = threading.Lock()
        self.pace = Pace()
        #: the models it knows: the catalogue's and the profile's finetunes
        self.models = node_catalogue(profile.finetunes)

    def begin(self) -> None:
        """A job starts: count its loads afresh."""
        self.loads = []

    def available(self, model_type: str) -> bool:
        """Whether the weights of ``model_type`` are on this node's disk."""
        return model_type in self.profile.files(WANGP_FOLDER)

    def random_seed(self) -> int:
        return random.randint(0, MAX_SEED)

    def run(
        self, task: Task, run_id: str, emit: Emit, cancel: threading.Event
    ) -> list[dict[str, Any]]:
        """Generate every prompt of ``task``; an artifact per saved file, or TaskFailed."""
        info = task.model
        if not self.available(info.model_type):
            raise TaskFailed(
                f"Model {info.model_type} is not available on this node: its weights are not "
                "in the checkpoints folder and this node does not download models",
                "validation",
            )
        slow = fault_hits(self.faults, "slow", run_id)
        factor = slow.factor if slow else 1.0
        self.pace = Pace()
        files = []
        for n, prompt in enumerate(task.prompts):
            self._load(task, emit, cancel, factor)
            files.append(self._generate(task, prompt, f"{run_id}:{n}", emit, cancel, factor))
        return files

    # --- phases -----------------------------------------------------------------------------

    def _load(self, task: Task, emit: Emit, cancel: threading.Event, factor: float) -> None:
        info = task.model
        if self.loaded != info.model_type:
            self.loaded = None
            _progress(emit, "loading_model", f"Loading model {info.name}", 0, 0, task.steps)
            # each transformer file loads (URLs, URLs2): Wan 2.2 A14B loads its two experts
            for name in info.files:
                self._wait(load_seconds(self.profile) * factor, cancel)
                self.loads.append(name)
            self.loaded = info.model_type
            emit("stream", {"stream": "stdout", "text": f"Model {info.model_type} loaded"})
        _progress(emit, "encoding_text", "Encoding Prompt", 2, 0, task.steps)
        self._wait(load_seconds(self.profile, ENCODE_SHARE) * factor, cancel)

    def _generate(
        self, task: Task, prompt: str, run_id: str, emit: Emit, cancel: threading.Event, factor
    ) -> dict[str, Any]:
        needed = vram_needed(task.model, task.width, task.height, task.frames, task.memory_profile)
        if needed > self.profile.vram_gb:
            raise TaskFailed(oom_message(needed, self.profile.vram_gb), "generation")
        frames = _FRAMES.submit(lambda: list(synthesize(self._spec(task, prompt))))
        step = step_seconds(self.profile, task.width, task.height, task.frames)
        step *= PROFILE_STEP_FACTOR[task.memory_profile] * factor
        fail_at = failure_step(self.profile, run_id, task.steps)
        phases = task.model.guidance_phases
        for i in range(1, task.steps + 1):
            self._wait(step, cancel)
            if fail_at == i:
                raise TaskFailed(
                    "CUDA error: an illegal memory access was encountered", "generation"
                )
            self._step_faults(run_id, i, cancel)
            phase = "inference"
            if phases > 1:
                phase = f"inference_stage_{min(phases, 1 + (i - 1) * phases // task.steps)}"
            pct = 5 + round(85 * i / task.steps)
            _progress(emit, phase, f"Denoising {i}/{task.steps}", pct, i, task.steps)
        _progress(emit, "decoding", "VAE Decoding", 95, task.steps, task.steps)
        path = self._save(task, prompt, frames.result())
        emit("stream", {"stream": "stdout", "text": f"New video saved to Path: {path}"})
        saved = artifact(path, task.model.fps)
        emit("output", saved)
        return saved

    def _step_faults(self, run_id: str, step: int, cancel: threading.Event) -> None:
        crash = fault_hits(self.faults, "crash", run_id)
        if crash and step == crash.at_step:
            print(
                f"emulated fault: crash at step {step} of job {run_id}; exit {CRASH_EXIT_CODE}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(CRASH_EXIT_CODE)
        hang = fault_hits(self.faults, "hang", run_id)
        if hang and step == hang.at_step:
            log.warning("emulated fault: job %s hangs at step %d until cancelled", run_id, step)
            while not cancel.wait(HANG_POLL_S):
                pass
            raise _cancelled()

    def _wait(self, seconds: float, cancel: threading.Event) -> None:
        if cancel.wait(self.pace.seconds(seconds)) or cancel.is_set():
            raise _cancelled()

    def _spec(self, task: Task, prompt: str) -> ClipSpec:
        start = None
        if task.image_start:
            start = cv2.imread(str(self.resolve_media(task.image_start)), cv2.IMREAD_COLOR)
            if start is None:
                raise TaskFailed(f"Unable to read Start Image {task.image_start}", "generation")
        return ClipSpec(
            width=task.width,
            height=task.height,
            frames=task.frames,
            fps=task.model.fps,
            seed=task.seed,
            prompt=prompt,
            start_image=start,
        )

    def _save(self, task: Task, prompt: str, frames: list[Any]) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        settings = {**task.settings, "prompt": prompt}
        with self.lock:  # names are claimed under the lock, so two savers never clash
            path = unique_path(self.output_dir, output_name(task, prompt, datetime.now()))
            path.touch()
        try:
            write_with_comment(path, frames, task.model.fps, json.dumps(settings))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path.resolve()


def artifact(path: Path, fps: float) -> dict[str, Any]:
    """WanGP's artifact record of a saved video."""
    return {
        "path": str(path),
        "media_type": "video/mp4",
        "client_id": None,
        "hdr": False,
        "audio_sampling_rate": None,
        "fps": fps,
    }


#: synthesizes a job's frames while its GPU time is waited out (``Engine._generate``)
_FRAMES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="frames")


def write_with_comment(path: Path, frames, fps: float, comment: str) -> None:
    """Encode ``frames`` to ``path`` (farm.media.write_video) with ``comment`` in the mp4
    metadata, as WanGP embeds the settings."""
    write_video(path, frames, fps, metadata={"comment": comment})


def _cancelled() -> TaskFailed:
    return TaskFailed("Generation was cancelled", "cancelled", cancelled=True)


def _progress(emit: Emit, phase: str, status: str, pct: int, step: int, total: int) -> None:
    emit(
        "progress",
        {
            "phase": phase,
            "status": status,
            "progress": pct,
            "current_step": step,
            "total_steps": total,
        },
    )


# --- jobs and the session --------------------------------------------------------------------

MAX_STORED_EVENTS = 500
DEFAULT_EVENT_LIMIT = 20
TRANSFER_TTL_S = 600
MAX_UPLOAD_BYTES = 8 << 30
BUSY = "WanGP session already has a generation in progress"
GALLERY_PREFIX = "/wangp_api/gallery"


class Job:
    """One ``wangp_generate`` call: its events (the last 500) and, once done, its result."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.created_at = self.updated_at = time.time()
        self.events: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.cancel = threading.Event()
        self.finished = threading.Event()
        self.lock = threading.Lock()

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.events.append({"kind": kind, "timestamp": time.time(), "data": data})
            del self.events[:-MAX_STORED_EVENTS]
            self.updated_at = time.time()

    def finish(self, result: dict[str, Any]) -> None:
        self.emit("completed", result)
        with self.lock:
            self.result = result
        self.finished.set()

    def snapshot(self, event_limit: int | None = None) -> dict[str, Any]:
        limit = DEFAULT_EVENT_LIMIT if event_limit is None else event_limit
        limit = max(0, min(int(limit), MAX_STORED_EVENTS))
        with self.lock:
            return copy.deepcopy(
                {
                    "job_id": self.job_id,
                    "done": self.finished.is_set(),
                    "cancel_requested": self.cancel.is_set(),
                    "created_at": self.created_at,
                    "updated_at": self.updated_at,
                    "events": self.events[-limit:] if limit else [],
                    "result": self.result,
                }
            )


class Session:
    """The WanGP session of one process: jobs (one generating at a time), the Gallery of
    generated and uploaded media, and the one-use transfer URLs."""

    def __init__(self, engine: Engine, data_dir: Path, allow_read_fs: bool = False) -> None:
        self.engine = engine
        self.uploads = Path(data_dir) / "uploads"
        self.allow_read_fs = allow_read_fs
        self.jobs: dict[str, Job] = {}
        self.active: Job | None = None
        self.gallery: dict[str, Path] = {}
        self.transfers: dict[str, tuple[str, str, float]] = {}
        self.lock = threading.Lock()
        self.log = JobLog(data_dir)
        engine.resolve_media = self.resolve_media

    # generation
    def submit(self, source: Any) -> Job:
        entries = task_entries(source)
        for _, settings in entries:
            for value in file_arguments(settings):
                self._check_readable(value)
        with self.lock:
            if self.active is not None:
                raise RuntimeError(BUSY)
            job = self.active = Job(uuid.uuid4().hex)
            self.jobs[job.job_id] = job
        threading.Thread(target=self._run, args=(job, entries), daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(str(job_id or "").strip())
        if job is None:
            raise KeyError(f"Unknown WanGP job_id: {job_id}")
        return job

    def _run(self, job: Job, entries: list[tuple[Any, Any]]) -> None:
        models = [s.get("model_type") for _, s in entries if isinstance(s, dict)]
        run = self.log.started(job.job_id, None, model_types=models)
        self.engine.begin()
        try:
            job.finish(run_tasks(self.engine, job.job_id, entries, job.emit, job.cancel, self))
        except BaseException as exc:  # a job always ends with a result
            log.exception("job %s failed in the emulator", job.job_id)
            job.finish(result_dict([], [error_dict(str(exc), None, None, "runtime")], 0, False))
        finally:
            status, error = _outcome(job.result)
            self.log.ended(run, status, error=error, loaded_models=list(self.engine.loads))
            with self.lock:
                self.active = None

    # media
    def register(self, path: Path) -> dict[str, Any]:
        media_id = uuid.uuid4().hex[:16]
        with self.lock:
            self.gallery[media_id] = Path(path)
        kind = "video" if Path(path).suffix.lower() in (".mp4", ".mkv", ".webm") else "image"
        return {
            "id": media_id,
            "media_id": media_id,
            "path": str(path),
            "media_type": kind,
            "filename": Path(path).name,
        }

    def resolve_media(self, value: str) -> Path:
        """A media argument: a Gallery media id, a Gallery file's path, or (with file-system
        access) any path."""
        value = str(value)
        if value in self.gallery:
            return self.gallery[value]
        if value.startswith("gallery:") and value[8:] in self.gallery:
            return self.gallery[value[8:]]
        return Path(value)

    def _check_readable(self, value: str) -> None:
        if (
            self.allow_read_fs
            or value in self.gallery
            or value.removeprefix("gallery:") in self.gallery
        ):
            return
        if str(Path(value)) in {str(p) for p in self.gallery.values()}:
            return
        raise PermissionError(
            f"Access to local file '{value}' is disabled: start WanGP with "
            "--mcp-allow-read-file-system, or upload it with wangp_create_gallery_upload and "
            "pass its media_id"
        )

    def create_transfer(self, kind: str, value: str) -> dict[str, Any]:
        token = uuid.uuid4().hex + uuid.uuid4().hex
        expires = time.time() + TRANSFER_TTL_S
        with self.lock:
            self.transfers[token] = (kind, value, expires)
        return {
            "url": f"{GALLERY_PREFIX}/{kind}/{token}",
            "method": "GET" if kind == "download" else "PUT",
            "expires_at": expires,
            "expires_in_s": TRANSFER_TTL_S,
        }

    def take_transfer(self, kind: str, token: str) -> str | None:
        with self.lock:
            entry = self.transfers.pop(token, None)
        if entry is None or entry[0] != kind or entry[2] < time.time():
            return None
        return entry[1]


def run_tasks(
    engine: Engine,
    run_id: str,
    entries: list[tuple[Any, Any]],
    emit: Emit,
    cancel: threading.Event,
    session: Session | None = None,
) -> dict[str, Any]:
    """Run a task list as WanGP's queue does (invalid tasks are skipped); the result dict."""
    emit("started", {"total_tasks": len(entries)})
    artifacts: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    succeeded = 0
    for index, (task_id, raw) in enumerate(entries):
        if cancel.is_set():
            break
        try:
            task = plan_task(
                index,
                task_id,
                raw,
                default_profile=engine.memory_profile,
                rng_seed=engine.random_seed(),
                models=engine.models,
            )
        except ValidationFailed as exc:
            errors.append(error_dict(str(exc), index, task_id, "validation"))
            emit("error", errors[-1])
            continue
        try:
            artifacts += engine.run(task, f"{run_id}:{index}", emit, cancel)
            succeeded += 1
        except TaskFailed as exc:
            errors.append(error_dict(str(exc), index, task_id, exc.stage, exc.cancelled))
            if exc.cancelled:
                emit(
                    "progress",
                    {
                        "phase": "cancelled",
                        "status": "Cancelled",
                        "progress": 0,
                        "current_step": 0,
                        "total_steps": task.steps,
                    },
                )
                break
            emit("error", errors[-1])
    cancelled = cancel.is_set()
    if cancelled and not any(e["cancelled"] for e in errors):
        errors.append(error_dict("Generation was cancelled", None, None, "cancelled", True))
    result = result_dict(artifacts, errors, len(entries), cancelled, succeeded)
    if session is not None:
        result["gallery_items"] = [session.register(Path(a["path"])) for a in artifacts]
    return result


def error_dict(message, index, task_id, stage, cancelled: bool = False) -> dict[str, Any]:
    return {
        "message": message,
        "task_index": index,
        "task_id": task_id,
        "stage": stage,
        "cancelled": cancelled,
    }


def result_dict(artifacts, errors, total, cancelled, succeeded=0) -> dict[str, Any]:
    """WanGP's GenerationResult as a dict (plus ``gallery_items``, filled by the session)."""
    return {
        "success": not errors and not cancelled and total > 0,
        "cancelled": cancelled,
        "generated_files": [a["path"] for a in artifacts],
        "errors": errors,
        "total_tasks": total,
        "successful_tasks": succeeded,
        "failed_tasks": total - succeeded,
        "artifacts": artifacts,
        "gallery_items": [],
    }


# --- the MCP server --------------------------------------------------------------------------


def _surface_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a tool's exception text reach the caller (``isError`` with the message), as
    FastMCP 1.x did: mcp 2.x hides the text of exceptions other than ToolError."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(str(exc)) from exc

    return wrapper


def build_server(session: Session):
    """The MCPServer with WanGP's tools bound to ``session``."""
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("WanGP", log_level="WARNING")
    engine = session.engine

    def wangp_generate(
        source: dict[str, Any] | list[dict[str, Any]],
        wait: bool = False,
        timeout_s: float | None = None,
        event_limit: int | None = None,
    ) -> dict[str, Any]:
        """Start a WanGP generation from a settings dict, task dict, or task list."""
        job = session.submit(source)
        if wait:
            job.finished.wait(timeout_s)
        return job.snapshot(event_limit)

    def wangp_get_job(job_id: str, event_limit: int | None = None) -> dict[str, Any]:
        """Poll a WanGP generation job."""
        return session.get(job_id).snapshot(event_limit)

    def wangp_cancel_job(job_id: str, event_limit: int | None = None) -> dict[str, Any]:
        """Request cancellation of a WanGP generation job."""
        job = session.get(job_id)
        job.cancel.set()
        return job.snapshot(event_limit)

    def wangp_list_models() -> list[dict[str, Any]]:
        """List compact model metadata records."""
        return [model_record(m, engine.available(m.model_type)) for m in engine.models.values()]

    def wangp_get_model_availability(model_type: str) -> dict[str, Any]:
        """Return local file availability for one model (available or missing)."""
        info = _known_model(model_type, engine)
        ok = engine.available(info.model_type)
        return {
            "model_type": info.model_type,
            "status": "available" if ok else "missing",
            "available": ok,
        }

    def wangp_get_default_settings(model_type: str) -> dict[str, Any]:
        """Return generated default settings for a model."""
        return default_settings(_known_model(model_type, engine))

    def wangp_create_gallery_upload(filename: str) -> dict[str, Any]:
        """Create a short-lived HTTP PUT URL for uploading image, video, or audio media."""
        name = Path(str(filename)).name
        if not name or name in (".", ".."):
            raise ValueError("filename is required")
        return {
            **session.create_transfer("upload", name),
            "filename": name,
            "max_bytes": MAX_UPLOAD_BYTES,
        }

    def wangp_create_gallery_download(
        media_id: str | None = None, gallery_id: str | None = None
    ) -> dict[str, Any]:
        """Create a short-lived HTTP GET URL for downloading one Gallery item."""
        key = str(media_id or gallery_id or "")
        path = session.gallery.get(key)
        if path is None:
            raise KeyError(f"Unknown Gallery media_id: {key}")
        return {**session.create_transfer("download", key), "media_id": key, "filename": path.name}

    for tool in (
        wangp_generate,
        wangp_get_job,
        wangp_cancel_job,
        wangp_list_models,
        wangp_get_model_availability,
        wangp_get_default_settings,
        wangp_create_gallery_upload,
        wangp_create_gallery_download,
    ):
        mcp.add_tool(_surface_errors(tool))
    return mcp


def _known_model(model_type: str, engine: Engine):
    try:
        return model_info(model_type, engine.models)
    except ValidationFailed as exc:
        raise ValueError(str(exc)) from None


def _outcome(result: dict[str, Any] | None) -> tuple[str, str]:
    """A job's outcome for the job log: status and the first error message."""
    result = result or {}
    errors = result.get("errors") or [{}]
    if result.get("success"):
        return "success", ""
    return ("interrupted" if result.get("cancelled") else "error"), str(errors[0].get("message"))


def _routes(mcp, session: Session) -> None:
    """The Gallery transfer routes and the emulator-only faults and jobs routes."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse

    @mcp.custom_route(f"{GALLERY_PREFIX}/download/{{token}}", methods=["GET"])
    async def download(request: Request):
        media_id = session.take_transfer("download", request.path_params["token"])
        path = session.gallery.get(media_id or "")
        if path is None or not path.is_file():
            return PlainTextResponse("Unknown or expired download token", status_code=404)
        return FileResponse(path, filename=path.name)

    @mcp.custom_route(f"{GALLERY_PREFIX}/upload/{{token}}", methods=["PUT"])
    async def upload(request: Request):
        name = session.take_transfer("upload", request.path_params["token"])
        if name is None:
            return PlainTextResponse("Unknown or expired upload token", status_code=404)
        session.uploads.mkdir(parents=True, exist_ok=True)
        path = unique_path(session.uploads, name)
        size = 0
        with path.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    out.close()
                    path.unlink()
                    return PlainTextResponse("Upload exceeds 8 GiB", status_code=413)
                out.write(chunk)
        return JSONResponse({**session.register(path.resolve()), "size": size})

    def loopback(request: Request) -> bool:
        host = request.client.host if request.client else ""
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @mcp.custom_route("/emulator/jobs", methods=["GET"])
    async def jobs(request: Request):
        if not loopback(request):
            return PlainTextResponse("Not Found", status_code=404)
        return JSONResponse({"jobs": session.log.snapshot()})

    @mcp.custom_route("/emulator/faults", methods=["GET", "PUT"])
    async def faults(request: Request):
        if not loopback(request):
            return PlainTextResponse("Not Found", status_code=404)
        if request.method == "PUT":
            try:
                session.engine.faults = parse_faults(json.loads(await request.body()))
            except json.JSONDecodeError as exc:
                return PlainTextResponse(f"invalid faults: the body is not JSON ({exc})", 400)
            except ConfigError as exc:
                return PlainTextResponse(str(exc), status_code=400)
            log.info("emulated faults now %s", json.dumps(faults_json(session.engine.faults)))
        return JSONResponse(faults_json(session.engine.faults))


class FaultGate:
    """ASGI wrapper: the ``http_500`` fault answers a ``tools/call`` POST with Starlette's
    plain-text 500 (what an unhandled exception gives) and runs nothing. Decided per
    (tool name, n-th call of that tool), like ``POST /prompt`` on the ComfyUI emulator."""

    def __init__(self, app, engine: Engine) -> None:
        self.app = app
        self.engine = engine
        self.calls: dict[str, itertools.count] = {}

    async def __call__(self, scope, receive, send) -> None:
        is_post = scope["type"] == "http" and scope["method"] == "POST"
        if not (is_post and scope["path"] == "/mcp" and "http_500" in self.engine.faults):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self._hits(body):
            log.warning("emulated fault: http_500 on tools/call")
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
            return
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _hits(self, body: bytes) -> bool:
        try:
            message = json.loads(body)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("method") != "tools/call":
            return False
        name = str((message.get("params") or {}).get("name"))
        attempt = next(self.calls.setdefault(name, itertools.count(1)))
        return http_500_hits(self.engine.faults, name, attempt)


def make_app(
    profile: NodeProfile,
    data_dir: Path,
    allow_read_fs: bool = False,
    *,
    memory_profile: int = DEFAULT_MEMORY_PROFILE,
    host: str = "127.0.0.1",
):
    """The node as an ASGI app: ``/mcp``, the Gallery transfer routes, ``/emulator/faults``.
    Outputs land in ``data_dir/outputs``, uploads in ``data_dir/uploads``."""
    data_dir = Path(data_dir)
    engine = Engine(profile, data_dir / "outputs", memory_profile=memory_profile)
    session = Session(engine, data_dir, allow_read_fs)
    mcp = build_server(session)
    _routes(mcp, session)
    app = mcp.streamable_http_app(json_response=True, stateless_http=True, host=host)
    gate = FaultGate(app, engine)
    gate.session = session  # for in-process callers and tests
    return gate


def serve(
    profile: NodeProfile,
    host: str,
    port: int,
    data_dir: Path,
    allow_read_fs: bool = False,
    memory_profile: int = DEFAULT_MEMORY_PROFILE,
) -> None:
    """Run the node until SIGINT/SIGTERM (blocking)."""
    import uvicorn

    app = make_app(profile, data_dir, allow_read_fs, memory_profile=memory_profile, host=host)
    log.info(
        "emulated WanGP node %s (%s, %s GB, profile %d) on http://%s:%d/mcp, outputs in %s",
        profile.name,
        profile.gpu,
        profile.vram_gb,
        memory_profile,
        host,
        port,
        Path(data_dir) / "outputs",
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> int:
    from farm.settings import REPO_ROOT

    parser = argparse.ArgumentParser(
        prog="python -m farm.emulators.wan2gp", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", required=True, type=Path, help="node profile JSON")
    parser.add_argument("--port", type=int, default=7866, help="TCP port (default 7866)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--data", type=Path, help="folder for outputs/ and uploads/")
    parser.add_argument(
        "--allow-read-file-system",
        action="store_true",
        help="accept file paths in arguments (WanGP's --mcp-allow-read-file-system)",
    )
    parser.add_argument(
        "--memory-profile",
        type=int,
        default=DEFAULT_MEMORY_PROFILE,
        choices=sorted(MEMORY_PROFILES),
        help="WanGP's --profile N (default 4, LowRAM_LowVRAM)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("mcp").setLevel(logging.WARNING)
    try:
        profile = load_profile(args.profile)
        node_catalogue(profile.finetunes)  # refuse bad finetunes now, not at the first job
    except FarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = args.data or REPO_ROOT / "var" / "nodes" / profile.name
    serve(profile, args.host, args.port, data, args.allow_read_file_system, args.memory_profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
