"""Reading the farm's JSON input files with errors a user can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from farm.errors import FarmError


def read_json(path: Path, what: str, error: type[FarmError]) -> Any:
    """Parse ``path``; a missing file or bad JSON raises ``error`` naming ``what`` and where."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} {path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
