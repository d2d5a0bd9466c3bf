"""Reading the farm's JSON input (files, submission bodies) with errors a user can act on."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from farm.errors import FarmError


class JSONTextError(ValueError):
    """JSON text that cannot be read; the message completes "the file ..." or "the body ..."."""


def decode(text: str) -> Any:
    """``json.loads`` for input from users. Every way the text can fail is a
    :class:`JSONTextError` saying what is wrong and the fix: not JSON (line and column), a
    number with more digits than Python converts (``sys.get_int_max_str_digits()``, 4,300
    by default), nesting too deep."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONTextError(
            f"is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise JSONTextError(
            "is nested too deeply to read; use fewer levels of lists and objects"
        ) from None
    except ValueError as exc:  # an integer longer than Python converts
        if "integer string conversion" not in str(exc):
            raise JSONTextError(f"is not valid JSON ({str(exc)[:200]})") from None
        limit = sys.get_int_max_str_digits()
        raise JSONTextError(
            f"has a number of more than {limit:,} digits, the most this farm reads; "
            f"use numbers of at most {limit:,} digits"
        ) from None


def read_json(path: Path, what: str, error: type[FarmError]) -> Any:
    """Parse ``path``; a missing or unreadable file or bad JSON raises ``error`` naming
    ``what`` and where."""
    try:
        return decode(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as "
            "UTF-8 JSON"
        ) from None
    except JSONTextError as exc:
        raise error(f"{what} {path} {exc}") from None
