"""Writing a file whole: into a temporary file beside it, moved into place once complete,
so no reader ever sees half a file; and waiting for a file another machine wrote.

The temporary file is created like any new file (mode 0666 less the process's umask:
0644 by default), so outputs are as readable as the clips beside them; not with the
0600 of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from farm.errors import FarmError

log = logging.getLogger(__name__)


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield a new empty file beside ``path`` (same suffix) to write; it replaces ``path``
    when the block succeeds and is removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


class ClipMissing(FarmError):
    """A clip the farm's records name is not in ``FARM_STORAGE`` on this machine."""


def visible(path: Path, wait: float, *others: Path) -> Path:
    """``path`` once it (or one of ``others``) is a file here: a clip another machine
    just wrote may show up late in a shared folder (NFS caches what a folder holds), so
    wait up to ``wait`` seconds (``FARM_CLIP_WAIT``), then raise :class:`ClipMissing`
    saying what to check."""
    deadline = time.monotonic() + wait
    told = False
    while not any(p.is_file() for p in (path, *others)):
        if time.monotonic() >= deadline:
            raise ClipMissing(
                f"clip {path} is not in FARM_STORAGE on this machine ({socket.gethostname()}) "
                f"after {wait:g}s: FARM_STORAGE must be one shared folder mounted at the same "
                "path on every farm machine (docs/deploy.md); if new files show up late "
                "there (NFS caching), raise FARM_CLIP_WAIT"
            )
        if not told:
            log.warning("clip %s is not visible here yet; waiting up to %gs for it", path, wait)
            told = True
        with suppress(OSError):
            os.listdir(path.parent)  # a listing makes NFS look at the folder again
        time.sleep(0.5)
    return path
