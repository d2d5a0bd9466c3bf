"""Writing a file whole: into a temporary file beside it, moved into place once complete,
so no reader ever sees half a file.

The temporary file is created like any new file (mode 0666 less the process's umask:
0644 by default), so outputs are as readable as the clips beside them; not with the
0600 of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


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
