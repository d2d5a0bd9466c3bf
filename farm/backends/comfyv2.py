"""Comfy API v2 nodes: Comfy Cloud, or comfy-api-proxy in front of any ComfyUI.

The jobs are the ComfyUI API graphs the ``comfyui`` backend builds
(:func:`farm.backends.comfyui.build_graph`); only the wire differs (docs/cloud.md):

- ``POST /api/v2/jobs`` submits, with the farm's job id (:func:`prompt_id_for`) as the
  ``Idempotency-Key`` and, as the job's ``metadata``, :data:`TAG` + that id. A key is
  single-use (``422 idempotency_key_reuse``): a redelivered task never submits again but
  finds the job (the id recorded beside the attempt's outputs, else by its metadata in
  ``GET /api/v2/jobs``) and follows it, so the service runs and bills it once.
- ``GET /api/v2/jobs/{id}`` is the job's truth (polled every :data:`POLL_EVERY`
  seconds); the SSE stream ``/events`` only adds live progress and previews, and the
  render goes on by polling when it is refused (``429 too_many_streams``) or drops.
- start images are assets, uploaded once by their blake3 hash (``HEAD by-hash``,
  ``from-hash``, else ``POST /api/v2/assets``) and put into the graph as ``core/ASSET``
  references.
- a ``429`` (rate limit, ``queue_full``) waits its ``Retry-After`` and asks again;
  ``401``/``403`` is a :class:`ConfigError` naming FARM_CLOUD_TOKEN; ``402`` (no credits)
  and ``5xx`` make the node unavailable.

The key is sent only as the ``Authorization`` header to the node's own origin; it is
never in a message, a log line, Redis or a task.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import mimetypes
import queue
import threading
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from farm.backends.base import ProgressFn, RenderResult, image_mime, save_stream, send
from farm.backends.comfyui import (
    build_graph,
    classify_execution_error,
    prompt_id_for,
    rejection,
    unique_dest,
    video_result,
)
from farm.discovery import listed_capabilities
from farm.errors import (
    BadNodeResponse,
    ConfigError,
    FarmError,
    JobCancelled,
    NodeTimeout,
    NodeUnavailable,
    WorkflowError,
)
from farm.files import write_text
from farm.planning import Job
from farm.settings import Settings
from farm.studio import catalog_for
from farm.workflows import Graph

log = logging.getLogger(__name__)

#: the job ``metadata`` prefix that carries the farm's job id
TAG = "farm:"
#: the file beside an attempt's outputs that records its v2 job id
RECORD = "comfyv2-job.json"
POLL_EVERY = 2.0  # seconds between GET /api/v2/jobs/{id}
RETRY_AFTER_MAX = 60.0  # at most this long for one Retry-After
LIST_LIMIT = 100  # the newest jobs a search by metadata reads (the contract's maximum)
SSE_READ_TIMEOUT = 60.0  # the service sends a heartbeat comment every 15 s
TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
#: v2 status → :meth:`Backend.find`'s words
FOUND = {"queued": "pending", "running": "running", "canceling": "running",
         "succeeded": "succeeded", "failed": "failed", "canceled": "failed",
         "expired": "failed"}  # fmt: skip


def retry_after(resp: requests.Response, default: float = 5.0) -> float:
    """Seconds a 429 asks to wait (``Retry-After``: seconds or an HTTP date), capped."""
    value = resp.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = default
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def envelope(resp: requests.Response) -> tuple[str, str, dict[str, Any]]:
    """``(code, message, details)`` of a v2 error answer (``{"error": {...}}``)."""
    try:
        error = resp.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return "", resp.text[:200], {}
    details = error.get("details")
    return (
        str(error.get("code", "")),
        str(error.get("message", "")),
        (details if isinstance(details, dict) else {}),
    )


def job_error(job: dict[str, Any]) -> FarmError:
    """The farm error of a v2 job that did not succeed."""
    status, jid = job.get("status"), job.get("id")
    if status == "canceled":
        return JobCancelled(f"job {jid} was cancelled on the node")
    if status == "expired":
        return NodeUnavailable(f"job {jid} expired on the node before it finished")
    error = job.get("error") if isinstance(job.get("error"), dict) else {}
    return classify_execution_error(
        {
            "exception_type": error.get("code", ""),
            "exception_message": error.get("message", "") or "failed (no message)",
            "node_type": error.get("class_type") or "?",
            "node_id": error.get("node_id") or "?",
        }
    )


def billed(job: dict[str, Any], seen: tuple[float, str] | None) -> dict[str, Any]:
    """``gpu_seconds`` of a job that ended and their ``gpu_seconds_source``: the service's
    figures first (:func:`reported_seconds`); else the time the worker saw it run
    (``seen``); else unknown, 0."""
    seconds, source = reported_seconds(job)
    if seconds is None and seen is not None:
        seconds, source = seen
    return {"gpu_seconds": round(seconds or 0.0, 3), "gpu_seconds_source": source or "unknown"}


def reported_seconds(job: dict[str, Any]) -> tuple[float | None, str]:
    """GPU-seconds the service reports for a finished job, and where they come from:
    ``metrics.execution_ms``, else ``completed_at - started_at``; ``(None, "")`` when it
    reports neither (comfy-api-proxy 0.1.6 leaves both null)."""
    metrics = job.get("metrics") if isinstance(job.get("metrics"), dict) else {}
    if isinstance(metrics.get("execution_ms"), int | float):
        return metrics["execution_ms"] / 1000.0, "metrics.execution_ms"
    try:
        start = datetime.fromisoformat(str(job["started_at"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(job["completed_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None, ""
    return max(0.0, (end - start).total_seconds()), "completed_at - started_at"


class V2Client:
    """One Comfy API v2 service: every call has a timeout; a 429 waits and asks again
    for at most ``patience`` seconds."""

    def __init__(self, url: str, token: str, timeout: float, patience: float) -> None:
        self.url = url.rstrip("/")
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.url))
        self.timeout = (min(5.0, timeout), timeout)
        self.patience = patience
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy or .netrc from the environment gets the key
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any):
        """One call; answers with a status in ``ok`` (or 404/409/422, left to the caller)
        are returned, the others raised as farm errors."""
        deadline = time.monotonic() + self.patience
        while True:
            resp = self._send(method, path, **kw)
            if resp.status_code != 429:
                break
            wait = retry_after(resp)
            code = envelope(resp)[0] or "rate_limited"
            if time.monotonic() + wait > deadline:
                raise NodeTimeout(
                    f"{method} {path}: {self.url} kept answering 429 ({code}) for "
                    f"{self.patience:g}s"
                )
            resp.close()
            log.info("%s %s: 429 %s, waiting %.1fs as asked", method, path, code, wait)
            time.sleep(wait)
        status = resp.status_code
        if status in ok or status in (404, 409, 422):
            return resp
        code, message, _ = envelope(resp)
        what = f"{method} {path} answered HTTP {status}"
        if status in (401, 403):
            raise ConfigError(
                f"{self.url} refused the farm's Comfy API key ({what}, {code or 'unauthorized'}):"
                " set FARM_CLOUD_TOKEN or FARM_CLOUD_TOKEN_FILE to a valid key for this node"
            )
        if status == 402:
            raise NodeUnavailable(f"{self.url}: the account has no credits left ({what})")
        if status >= 500:
            raise NodeUnavailable(f"{what}: {code} {message}".strip())
        raise BadNodeResponse(f"{what}: {code} {message}".strip())

    def _send(self, method: str, path: str, **kw: Any) -> requests.Response:
        """One HTTP exchange (:func:`~farm.backends.base.send`: a dropped GET is sent again)."""
        url = path if path.startswith(("http://", "https://")) else self.url + path
        return send(self.http, method, url, self.timeout, **kw)

    def json(self, resp: requests.Response) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BadNodeResponse(f"{resp.request.method} {resp.url}: not a JSON object")
        return data

    def job(self, job_id: str) -> dict[str, Any] | None:
        """``GET /api/v2/jobs/{id}``, or None when the service does not know it."""
        resp = self.call("GET", f"/api/v2/jobs/{job_id}")
        if resp.status_code != 200:
            if resp.status_code == 404:
                return None
            raise BadNodeResponse(f"GET /api/v2/jobs/{job_id} answered HTTP {resp.status_code}")
        job = self.json(resp)
        if job.get("status") not in FOUND:
            raise BadNodeResponse(f"job {job_id} has no known status: {job.get('status')!r}")
        return job

    def tagged(self, tag: str) -> dict[str, Any] | None:
        """The newest job whose ``metadata`` is ``tag``, among the newest
        :data:`LIST_LIMIT` jobs (``GET /api/v2/jobs``)."""
        resp = self.call("GET", "/api/v2/jobs", params={"limit": LIST_LIMIT})
        if resp.status_code != 200:
            raise BadNodeResponse(f"GET /api/v2/jobs answered HTTP {resp.status_code}")
        jobs = self.json(resp).get("jobs")
        if not isinstance(jobs, list):
            raise BadNodeResponse("GET /api/v2/jobs: no 'jobs' list")
        return next((j for j in jobs if isinstance(j, dict) and j.get("metadata") == tag), None)


class EventStream(threading.Thread):
    """The job's SSE stream, read into ``events`` as ``(event, data)``; reopened when it
    drops, after the ``Retry-After`` of a refusal, until stopped. Only a convenience:
    the follower polls whatever happens here."""

    def __init__(self, client: V2Client, job_id: str, events: queue.Queue) -> None:
        super().__init__(name=f"sse-{job_id}", daemon=True)
        self.client, self.job_id, self.events = client, job_id, events
        self.stopped = threading.Event()
        self.resp: requests.Response | None = None

    def stop(self) -> None:
        self.stopped.set()
        resp = self.resp
        if resp is not None:
            with contextlib.suppress(Exception):  # a socket another thread reads: best effort
                resp.close()

    def run(self) -> None:
        path = f"{self.client.url}/api/v2/jobs/{self.job_id}/events"
        while not self.stopped.is_set():
            try:
                resp = self.client.http.get(
                    path, stream=True, headers={"Accept": "text/event-stream"},
                    timeout=(self.client.timeout[0], SSE_READ_TIMEOUT),
                )  # fmt: skip
            except requests.RequestException:
                self.stopped.wait(2.0)
                continue
            if resp.status_code != 200:
                code = envelope(resp)[0] or f"HTTP {resp.status_code}"
                resp.close()
                self.events.put(("refused", {"code": code}))
                if resp.status_code != 429:
                    return  # e.g. a service without streams: polling only
                self.stopped.wait(retry_after(resp))
                continue
            self.resp = resp
            if self._read(resp):
                return

    def _read(self, resp: requests.Response) -> bool:
        """Read frames until the stream ends; True once the job's final status came."""
        event, final = "message", False
        try:
            for line in resp.iter_lines(decode_unicode=True):
                if self.stopped.is_set():
                    return True
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    try:
                        data = json.loads(line[5:].strip())
                    except ValueError:
                        continue
                    if isinstance(data, dict):
                        self.events.put((event, data))
                        final |= event == "status" and data.get("status") in TERMINAL
                elif not line:
                    event = "message"
        except (requests.RequestException, OSError, AttributeError, ValueError):
            pass  # dropped (or closed by stop()): reopen unless the job is over
        finally:
            resp.close()
        return final or self.stopped.is_set()


class ComfyV2Backend:
    """Render farm jobs on a Comfy API v2 service (Comfy Cloud, comfy-api-proxy)."""

    kind = "comfyv2"

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        token = settings.cloud_api_key()
        if not token and self.url.startswith("https://"):
            raise ConfigError(
                f"the Comfy API v2 node at {self.url} needs an API key: set "
                "FARM_CLOUD_TOKEN_FILE (a file holding it) or FARM_CLOUD_TOKEN"
            )
        patience = max(settings.node_idle_timeout, 60.0)
        self.client = V2Client(self.url, token, settings.http_timeout, patience)
        self._assets: dict[str, str] = {}  # blake3 hash -> asset id
        self._jobs: dict[str, str] = {}  # the farm's job id -> the v2 job id

    # discovery
    def probe(self) -> None:
        resp = self.client.call("GET", "/api/v2/health")
        if resp.status_code != 200 or "status" not in self.client.json(resp):
            raise NodeUnavailable(f"{self.url}/api/v2/health answered HTTP {resp.status_code}")

    def describe(self) -> dict[str, Any]:
        """What the node can render: the model files FARM_CLOUD_MODELS lists (the v2 API
        lists none), the workflows those allow, and its plan (``cloud``)."""
        self.probe()
        self.client.call("GET", "/api/v2/jobs", params={"limit": 1})  # the key works
        models = self.settings.cloud_model_files()
        files = [f for names in models.values() for f in names]
        offered = [f for k in ("diffusion_models", "checkpoints") for f in models.get(k, [])]
        catalog = catalog_for(self.settings)
        return {
            "models": models,
            "gpu": "cloud",
            "vram_total": 0,
            "vram_free": 0,
            "devices": [],
            "version": "Comfy API v2",
            "classes": 0,
            "workflows": listed_capabilities(files, offered, self.settings.workflows_dir, catalog),
            "cloud": {
                "concurrency": self.settings.cloud_concurrency,
                "price_per_second": self.settings.cloud_price,
            },
        }

    # assets
    def asset(self, path: Path) -> dict[str, Any]:
        """A ``core/ASSET`` reference to the file's bytes on the service, uploaded once."""
        from blake3 import blake3

        data = path.read_bytes()
        digest = "blake3:" + blake3(data).hexdigest()
        name = digest[7:23] + path.suffix.lower()
        asset_id = self._assets.get(digest)
        if asset_id is None:
            asset_id = self._existing_asset(digest) or self._upload(path, data, digest, name)
            self._assets[digest] = asset_id
        return {"__type": "core/ASSET", "info": {"id": asset_id, "hash": digest, "file_path": name}}

    def _existing_asset(self, digest: str) -> str | None:
        if self.client.call("HEAD", f"/api/v2/assets/by-hash/{digest}").status_code != 200:
            return None
        resp = self.client.call("POST", "/api/v2/assets/from-hash", ok=(200, 201),
                                json={"hash": digest})  # fmt: skip
        if resp.status_code == 404:
            return None  # gone since the HEAD
        return self._asset_id(resp, "from-hash")

    def _upload(self, path: Path, data: bytes, digest: str, name: str) -> str:
        mime = image_mime(data) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        resp = self.client.call(
            "POST", "/api/v2/assets", ok=(200, 201),
            files={"file": (name, data, mime)},
            data={"file_path": f"input/farm/{name}", "expected_hash": digest},
        )  # fmt: skip
        return self._asset_id(resp, f"upload of {path.name}")

    def _asset_id(self, resp: requests.Response, what: str) -> str:
        if resp.status_code not in (200, 201):
            code, message, _ = envelope(resp)
            raise BadNodeResponse(f"{what} answered HTTP {resp.status_code}: {code} {message}")
        asset_id = self.client.json(resp).get("id")
        if not isinstance(asset_id, str) or not asset_id:
            raise BadNodeResponse(f"{what}: the answer names no asset id")
        return asset_id

    # jobs
    def graph_for(self, job: Job) -> Graph:
        """The job's ComfyUI API graph; a start image as a ``core/ASSET`` reference."""
        return build_graph(job, self.settings, self.asset, None)

    def render(self, job: Job, out_dir: Path, progress: ProgressFn) -> RenderResult:
        farm_id = prompt_id_for(job)
        found = self.locate(farm_id, out_dir)
        if found is None:
            found = self.submit(job, farm_id, out_dir)
            progress(0.02, "queued on node")
        else:
            log.info("job %s is already on %s as %s: following it", farm_id, self.url, found["id"])
        try:
            final, seen = self.follow(found, progress)
        except Exception as exc:  # cancelled, hung, or the task's soft time limit: stop paying
            if isinstance(exc, JobCancelled | NodeTimeout) or not isinstance(exc, FarmError):
                self._abandon(found["id"], exc)
            raise
        if final["status"] != "succeeded":
            error = job_error(final)
            error.details = billed(final, seen)  # a job that ran is paid for, failed or not
            raise error
        return self._result(job, final, out_dir, seen)

    def submit(self, job: Job, farm_id: str, out_dir: Path | None) -> dict[str, Any]:
        """Submit the job once: its farm id is the idempotency key; a key already used
        means the service has the job, which is then found and returned."""
        for fresh_assets in (False, True):
            if fresh_assets:
                self._assets.clear()  # the service lost an asset: upload again
            body = {"workflow": self.graph_for(job), "metadata": TAG + farm_id}
            resp = self._post_job(body, farm_id)
            if resp.status_code in (200, 201, 202):
                found = self.client.json(resp)
                if not isinstance(found.get("id"), str):
                    raise BadNodeResponse("POST /api/v2/jobs: the answer names no job id")
                self._remember(farm_id, found["id"], out_dir)
                return found
            code, message, details = envelope(resp)
            if code == "idempotency_key_reuse":
                return self._reused(farm_id, out_dir)
            if code == "missing_asset" and not fresh_assets:
                log.info(
                    "%s lost an asset of job %s (%s): uploading again", self.url, farm_id, message
                )
                continue
            if code == "workflow_format_ui":
                raise WorkflowError(f"{self.url}: {message}")
            if code in ("invalid_workflow", "missing_asset"):
                errors = details.get("node_errors") or {}
                body = {"error": {"message": message or code, "type": code}, "node_errors": errors}
                raise rejection(400, body)
            raise BadNodeResponse(
                f"POST /api/v2/jobs answered HTTP {resp.status_code}: {code} {message}"
            )
        raise AssertionError("unreachable")

    def _post_job(self, body: dict[str, Any], farm_id: str) -> requests.Response:
        """``POST /api/v2/jobs``, sent again (the same key) when its answer was lost: the
        service may have taken the job, and then refuses the key, which :meth:`submit`
        follows."""
        for tries in range(3):
            try:
                return self.client.call("POST", "/api/v2/jobs", ok=(200, 201, 202), json=body,
                                        headers={"Idempotency-Key": farm_id})  # fmt: skip
            except (NodeTimeout, NodeUnavailable) as exc:
                lost = isinstance(exc.__cause__, requests.RequestException)
                if not lost or tries == 2:
                    raise
                log.info("submission of job %s to %s: %s; sending it again", farm_id, self.url, exc)
                time.sleep(1.0 + tries)
        raise AssertionError("unreachable")

    def _reused(self, farm_id: str, out_dir: Path | None) -> dict[str, Any]:
        """The job a used idempotency key belongs to (listed a moment later at worst)."""
        for _ in range(5):
            found = self.locate(farm_id, out_dir)
            if found is not None:
                log.info("job %s was already submitted to %s: following it", farm_id, self.url)
                return found
            time.sleep(1.0)
        raise NodeUnavailable(
            f"{self.url} has used the idempotency key of job {farm_id} but lists no job for it "
            f"among its newest {LIST_LIMIT}; not submitting it twice"
        )

    def locate(self, farm_id: str, out_dir: Path | None) -> dict[str, Any] | None:
        """The v2 job of the farm's job ``farm_id``: by the id this process or the record
        beside the outputs holds, else by its metadata among the service's newest jobs."""
        job_id = self._jobs.get(farm_id) or _read_record(out_dir, farm_id)
        if job_id is not None:
            found = self.client.job(job_id)
            if found is not None:
                self._jobs[farm_id] = job_id
                return found
        found = self.client.tagged(TAG + farm_id)
        if found is not None and isinstance(found.get("id"), str):
            self._remember(farm_id, found["id"], out_dir)
            return found
        return None

    def _remember(self, farm_id: str, job_id: str, out_dir: Path | None) -> None:
        self._jobs[farm_id] = job_id
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            record = {"farm_id": farm_id, "job_id": job_id, "node": self.url}
            write_text(out_dir / RECORD, json.dumps(record))

    def follow(
        self, found: dict[str, Any], progress: ProgressFn
    ) -> tuple[dict[str, Any], tuple[float, str] | None]:
        """Poll the job until it is over, reporting the stream's progress and previews
        meanwhile; returns its final state and the seconds this process saw it run (from
        when it was first seen running, else from when it was first seen at all)."""
        job_id = found["id"]
        if found["status"] in TERMINAL:
            return found, None
        began = time.monotonic()
        events: queue.Queue = queue.Queue()
        stream = EventStream(self.client, job_id, events)
        stream.start()
        running_since: float | None = None
        state, last_poll, done = found["status"], time.monotonic(), 0.0
        try:
            while True:
                wait = max(0.0, last_poll + POLL_EVERY - time.monotonic())
                try:
                    event, data = events.get(timeout=wait)
                except queue.Empty:
                    event, data = "", {}
                if event == "status" and data.get("status") == "running" and running_since is None:
                    running_since = time.monotonic()
                    progress(0.05, "started")
                elif event == "progress" and isinstance(data.get("value"), int | float):
                    running_since = running_since or time.monotonic()
                    step, steps = data.get("step"), data.get("steps")
                    text = f"step {step}/{steps}" if step is not None and steps else "running"
                    done = max(done, min(1.0, float(data["value"])))  # node and step snapshots mix
                    progress(0.05 + 0.85 * done, text)
                elif event == "preview":
                    image = _preview(data)
                    if image is not None:
                        progress(-1, "preview", image)
                elif event == "refused":
                    log.info("%s refused the event stream of %s (%s): polling", self.url, job_id,
                             data.get("code"))  # fmt: skip
                polling_due = time.monotonic() - last_poll >= POLL_EVERY
                if not (polling_due or (event == "status" and data.get("status") in TERMINAL)):
                    continue
                last_poll = time.monotonic()
                current = self.client.job(job_id)
                if current is None:
                    raise NodeUnavailable(f"job {job_id} vanished from {self.url}")
                if current["status"] != state:
                    state = current["status"]
                    if state == "running" and running_since is None:
                        running_since = time.monotonic()
                        progress(0.05, "started")
                if state in TERMINAL:
                    if running_since is not None:
                        return current, (time.monotonic() - running_since, "observed running")
                    return current, (time.monotonic() - began, "observed queued and running")
                if state == "queued":
                    position = current.get("queue_position")
                    progress(
                        0.02,
                        f"queued on node (position {position})" if position else "queued on node",
                    )
        finally:
            stream.stop()

    def _result(
        self, job: Job, final: dict[str, Any], out_dir: Path, seen: tuple[float, str] | None
    ) -> RenderResult:
        """The downloaded outputs, and in ``details`` the job's GPU-seconds and their
        source (the service's figures first; what the worker saw; else unknown, 0)."""
        files = self._download(final, out_dir)
        result = video_result(job, files, str(final["id"]))
        result.details.update(billed(final, seen))
        return result

    def _download(self, final: dict[str, Any], out_dir: Path) -> list[Path]:
        """Every output of the finished job, under the same size cap and name containment
        as a ComfyUI node's; the key goes only to the node's own origin (a signed URL
        elsewhere is fetched without it)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        root, files = out_dir.resolve(), []
        for item in final.get("outputs") or []:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise BadNodeResponse(f"job {final['id']}: an output without a name")
            url = item.get("url") or f"/api/v2/assets/{item.get('id')}/content"
            if not isinstance(url, str) or not url.startswith(("/", "http://", "https://")):
                raise BadNodeResponse(f"job {final['id']}: output {item['name']!r} has no URL")
            dest = unique_dest(out_dir, root, item["name"], files)
            own = f"/api/v2/assets/{item.get('id')}/content"
            if url.startswith("/") or url.startswith(self.client.origin + "/"):
                resp = self.client.call("GET", url, stream=True)
            else:
                resp = self._plain_get(url)
                if resp.status_code in (401, 403) and item.get("id"):
                    resp.close()  # not a signed URL: the service's own address for it
                    resp = self.client.call("GET", own, stream=True)
            files.append(save_stream(resp, dest, self.settings.max_download_bytes, item["name"]))
        return files

    def _plain_get(self, url: str) -> requests.Response:
        try:
            return requests.get(url, stream=True, timeout=self.client.timeout)
        except requests.RequestException as exc:
            raise NodeUnavailable(
                f"download from {urlsplit(url).netloc}: {type(exc).__name__}"
            ) from exc

    def find(self, job: Job, out_dir: Path | None = None) -> str:
        found = self.locate(prompt_id_for(job), out_dir)
        return "absent" if found is None else FOUND[found["status"]]

    def collect(self, job: Job, out_dir: Path) -> RenderResult:
        farm_id = prompt_id_for(job)
        found = self.locate(farm_id, out_dir)
        if found is None or found["status"] not in TERMINAL:
            raise NodeUnavailable(f"job {farm_id} has not finished on {self.url}")
        if found["status"] != "succeeded":
            error = job_error(found)
            error.details = billed(found, None)
            raise error
        return self._result(job, found, out_dir, None)

    def cancel(self, job: Job, out_dir: Path | None = None) -> str:
        found = self.locate(prompt_id_for(job), out_dir)
        if found is None or found["status"] in TERMINAL:
            return "not_found"
        return self._cancel(found)

    def _cancel(self, found: dict[str, Any]) -> str:
        resp = self.client.call("POST", f"/api/v2/jobs/{found['id']}/cancel", ok=(200, 202))
        if resp.status_code == 404:
            return "not_found"
        if resp.status_code not in (200, 202):
            code, message, _ = envelope(resp)
            raise BadNodeResponse(
                f"cancel of job {found['id']}: HTTP {resp.status_code} {code} {message}"
            )
        return "removed" if found["status"] == "queued" else "interrupted"

    def _abandon(self, job_id: str, why: Exception) -> None:
        """Take a job the farm gives up on (cancelled, or hung) off the service."""
        try:
            found = self.client.job(job_id)
            if found is not None and found["status"] not in TERMINAL:
                log.info("job %s on %s: %s (%s)", job_id, self.url, self._cancel(found), why)
        except FarmError as exc:
            log.warning("could not cancel job %s on %s: %s", job_id, self.url, exc)


def _preview(data: dict[str, Any]) -> bytes | None:
    try:
        image = base64.b64decode(str(data.get("data_base64", "")), validate=True)
    except ValueError:
        return None
    return image if image_mime(image) else None


def _read_record(out_dir: Path | None, farm_id: str) -> str | None:
    """The v2 job id recorded beside the attempt's outputs, if it is this job's."""
    if out_dir is None:
        return None
    try:
        record = json.loads((out_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("farm_id") == farm_id:
        job_id = record.get("job_id")
        return job_id if isinstance(job_id, str) else None
    return None
