"""GPU node backends behind one small protocol.

A backend renders one :class:`~farm.planning.Job` on one node and reports progress;
it raises only errors of :mod:`farm.errors`, so the tasks know what to retry, what to
fall back from and what is permanent. One module per backend kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from farm.errors import ConfigError
from farm.planning import Job
from farm.settings import Settings


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
        """Render ``job``, download its outputs into ``out_dir`` and return them."""
        ...

    def cancel(self, job: Job) -> str:
        """Take ``job``'s attempt off the node: ``removed``, ``interrupted`` or ``not_found``."""
        ...


def make_backend(kind: str, url: str, settings: Settings) -> Backend:
    """The backend for a node of ``kind`` at ``url``."""
    if kind == "comfyui":
        from farm.backends.comfyui import ComfyUIBackend

        return ComfyUIBackend(url, settings)
    if kind == "wan2gp":
        from farm.backends.wan2gp import make_wan2gp_backend

        return make_wan2gp_backend(url, settings)
    raise ConfigError(f"no backend for node kind {kind!r} (supported: comfyui, wan2gp)")


def detect_kind(url: str, timeout: float = 5.0) -> str:
    """Which server answers at ``url``: ``comfyui`` (``GET /system_stats``) or ``wan2gp``
    (an MCP ``initialize`` at ``/mcp``). A ``file://`` URL is a WanGP folder (CLI mode).
    Raises :class:`~farm.errors.NodeUnavailable` when neither answers."""
    import requests

    from farm.errors import FarmError, NodeUnavailable

    if url.startswith("file://"):
        return "wan2gp"
    tried = []
    try:
        reply = requests.get(url.rstrip("/") + "/system_stats", timeout=timeout)
        if reply.ok and isinstance(reply.json().get("system"), dict):
            return "comfyui"
        tried.append(f"GET /system_stats: HTTP {reply.status_code}")
    except (requests.RequestException, ValueError, AttributeError) as exc:
        tried.append(f"GET /system_stats: {type(exc).__name__}")
    from farm.backends.wan2gp import WanClient

    try:
        if WanClient(url, timeout).server_info():
            return "wan2gp"
        tried.append("MCP initialize at /mcp: no serverInfo")
    except FarmError as exc:
        tried.append(f"MCP initialize at /mcp: {exc}")
    raise NodeUnavailable(
        f"{url} is neither a ComfyUI server nor a WanGP MCP server ({'; '.join(tried)});"
        " check the URL, or give --kind"
    )
