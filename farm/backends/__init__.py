"""GPU node backends behind one small protocol.

A backend renders one :class:`~farm.planning.Job` on one node and reports progress;
it raises only errors of :mod:`farm.errors`, so the tasks know what to retry, what to
fall back from and what is permanent. One module per backend kind; the protocol and what
every backend shares are in :mod:`farm.backends.base`, re-exported here.
"""

from __future__ import annotations

from farm.backends.base import Backend, ProgressFn, RenderResult, image_mime, safe_name
from farm.errors import ConfigError
from farm.settings import Settings

__all__ = [
    "Backend",
    "ProgressFn",
    "RenderResult",
    "detect_kind",
    "image_mime",
    "make_backend",
    "safe_name",
]


def make_backend(kind: str, url: str, settings: Settings) -> Backend:
    """The backend for a node of ``kind`` at ``url``."""
    if kind == "comfyui":
        from farm.backends.comfyui import ComfyUIBackend

        return ComfyUIBackend(url, settings)
    if kind == "wan2gp":
        from farm.backends.wan2gp import make_wan2gp_backend

        return make_wan2gp_backend(url, settings)
    if kind == "comfyv2":
        from farm.backends.comfyv2 import ComfyV2Backend

        return ComfyV2Backend(url, settings)
    raise ConfigError(f"no backend for node kind {kind!r} (supported: comfyui, wan2gp, comfyv2)")


def detect_kind(url: str, timeout: float = 5.0) -> str:
    """Which server answers at ``url``: ``comfyui`` (``GET /system_stats``), ``comfyv2``
    (a Comfy API v2 service: ``GET /api/v2/health``) or ``wan2gp`` (an MCP ``initialize``
    at ``/mcp``). A ``file://`` URL is a WanGP folder (CLI mode). Raises
    :class:`~farm.errors.NodeUnavailable` when none answers."""
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
    try:
        reply = requests.get(url.rstrip("/") + "/api/v2/health", timeout=timeout)
        if reply.ok and "status" in reply.json():
            return "comfyv2"
        tried.append(f"GET /api/v2/health: HTTP {reply.status_code}")
    except (requests.RequestException, ValueError, TypeError) as exc:
        tried.append(f"GET /api/v2/health: {type(exc).__name__}")
    from farm.backends.wan2gp import WanClient

    try:
        if WanClient(url, timeout).server_info():
            return "wan2gp"
        tried.append("MCP initialize at /mcp: no serverInfo")
    except FarmError as exc:
        tried.append(f"MCP initialize at /mcp: {exc}")
    raise NodeUnavailable(
        f"{url} is neither a ComfyUI server, a Comfy API v2 service nor a WanGP MCP server ({'; '.join(tried)});"
        " check the URL, or give --kind"
    )
