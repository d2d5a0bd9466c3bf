"""GPU node backends behind one small protocol.

A backend renders one :class:`~farm.planning.Job` on one node and reports progress;
it raises only errors of :mod:`farm.errors`, so the tasks know what to retry, what to
fall back from and what is permanent. One module per backend kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from farm.errors import ConfigError
from farm.planning import Job
from farm.settings import Settings


class ProgressFn(Protocol):
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
        """Discovery: ``{"models": {folder: [files]}, "gpu", "vram_total", "version"}``."""
        ...

    def probe(self) -> None:
        """Raise :class:`~farm.errors.NodeUnavailable` unless the node answers now."""
        ...

    def render(self, job: Job, out_dir: Path, progress: ProgressFn) -> RenderResult:
        """Render ``job``, download its outputs into ``out_dir`` and return them."""
        ...


def make_backend(kind: str, url: str, settings: Settings) -> Backend:
    """The backend for a node of ``kind`` at ``url``."""
    if kind == "comfyui":
        from farm.backends.comfyui import ComfyUIBackend

        return ComfyUIBackend(url, settings)
    raise ConfigError(f"no backend for node kind {kind!r} (supported: comfyui)")
