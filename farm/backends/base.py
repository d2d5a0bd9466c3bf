"""The protocol every GPU node backend speaks, and what every backend shares."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests

from farm.errors import BadNodeResponse, NodeTimeout, NodeUnavailable
from farm.planning import Job

log = logging.getLogger(__name__)


def safe_name(name: str) -> str:
    """A file name from a node, made safe to write locally (no folders, no odd characters)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")
    return base[:120] or "output"


def image_mime(data: bytes) -> str | None:
    """``image/jpeg`` or ``image/png`` from the bytes' signature, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return None


class ProgressFn(Protocol):
    """``progress(fraction, message)``; ``progress(-1, "preview", image)`` for a preview
    frame. It may raise :class:`~farm.errors.JobCancelled` to stop the render."""

    def __call__(
        self, fraction: float, message: str = "", preview: bytes | None = None
    ) -> None: ...


@dataclass
class RenderResult:
    """What a finished render left in the farm's storage."""

    video: Path
    files: list[Path] = field(default_factory=list)
    backend_job_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """One GPU node as the farm drives it."""

    kind: str
    url: str

    def describe(self) -> dict[str, Any]:
        """Discovery: ``{"models": {folder: [files]}, "gpu", "vram_total", "vram_free",
        "devices", "version", "classes", "workflows": {name: {ok, missing, models}}}``."""
        ...

    def probe(self) -> None:
        """Raise :class:`~farm.errors.NodeUnavailable` unless the node answers now."""
        ...

    def render(self, job: Job, out_dir: Path, progress: ProgressFn) -> RenderResult:
        """Render ``job``, download its outputs into ``out_dir`` and return them. A job
        the node already has (a redelivery of the same attempt) is followed or collected,
        never started twice."""
        ...

    def find(self, job: Job, out_dir: Path) -> str:
        """What the node knows of ``job``'s attempt (asked by any farm process):
        ``pending``, ``running``, ``succeeded``, ``failed`` or ``absent``."""
        ...

    def collect(self, job: Job, out_dir: Path) -> RenderResult:
        """The outputs of ``job``'s attempt the node finished, downloaded into ``out_dir``;
        never starts it (:class:`~farm.errors.NodeUnavailable` if it is not finished)."""
        ...

    def cancel(self, job: Job, out_dir: Path | None = None) -> str:
        """Take ``job``'s attempt off the node: ``removed``, ``interrupted`` or
        ``not_found`` (any farm process may ask: ``out_dir`` holds what the renderer
        recorded of it)."""
        ...


def send(
    http: requests.Session, method: str, url: str, timeout: tuple[float, float], **kw: Any
) -> requests.Response:
    """One HTTP exchange with a node. A GET or HEAD whose connection drops (a kept-alive
    connection the network closed under it) is sent once more on a new one; never a
    POST. Raises :class:`NodeTimeout` or :class:`NodeUnavailable`."""
    for again in (True, False) if method in ("GET", "HEAD") else (False,):
        try:
            return http.request(method, url, timeout=timeout, **kw)
        except requests.Timeout as exc:
            raise NodeTimeout(f"{url}: no answer within {timeout[1]:g}s") from exc
        except requests.ConnectionError as exc:
            if not again:
                raise NodeUnavailable(f"{url}: {exc.__class__.__name__}: {exc}") from exc
            log.info("%s: connection dropped (%s); sent again", url, exc)
        except requests.RequestException as exc:
            raise NodeUnavailable(f"{url}: {exc.__class__.__name__}: {exc}") from exc
    raise AssertionError("unreachable")


def save_stream(resp: requests.Response, dest: Path, max_bytes: int, name: str) -> Path:
    """Write a streamed download of output ``name`` to ``dest`` (via ``dest.part``),
    refusing more than ``max_bytes`` (FARM_MAX_DOWNLOAD_MB); closes ``resp``."""
    with resp:
        if resp.status_code != 200:
            raise BadNodeResponse(f"download of {name} answered HTTP {resp.status_code}")
        size_text = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes}-byte"
        cap = f"the {size_text} download cap (FARM_MAX_DOWNLOAD_MB)"
        if int(resp.headers.get("Content-Length") or 0) > max_bytes:
            raise BadNodeResponse(f"output {name} exceeds {cap}")
        tmp = dest.with_name(dest.name + ".part")
        size, complete = 0, False
        try:
            with tmp.open("wb") as fh:
                for chunk in resp.iter_content(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise BadNodeResponse(f"output {name} exceeds {cap}")
                    fh.write(chunk)
            complete = True
        except requests.RequestException as exc:
            raise NodeUnavailable(f"download of {name} broke off: {exc}") from exc
        finally:
            if not complete:
                tmp.unlink(missing_ok=True)
    tmp.replace(dest)
    return dest
