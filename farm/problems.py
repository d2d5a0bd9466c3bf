"""Problems as users see them: echoed values shown short, each text and each list capped.

A problem reaches a terminal (``farm validate``, ``farm enqueue``, ``farm submit``), the
ingest log, the submission's status hash (kept ``FARM_SUBMISSION_TTL``) and the dead-letter
stream, so its size must not grow with the input it describes:

- an echoed value longer than :data:`SHOW_CHARS` (a file path: :data:`SHOW_PATH_CHARS`)
  is shown as its start and its size:
  ``'xxxx…' (a string of 2,097,152 characters)``, ``a number of 5,000 digits``,
  ``[{'id': 's0', ...}, ...] (a list of 100,000 items)``;
- a problem is cut at :data:`MAX_PROBLEM_CHARS` characters;
- a list keeps its first :data:`MAX_PROBLEMS` problems and one line more:
  ``… and 99,950 more problems``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Sized
from typing import Any

SHOW_CHARS = 60
SHOW_PATH_CHARS = 300
MAX_PROBLEM_CHARS = 500
MAX_PROBLEMS = 50
MAX_NAMES = 10

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 2, 3, 3, 3
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 30


def show(value: Any, *, sized: bool = False) -> str:
    """``value`` as echoed in a message: its ``repr`` when that is short, else the first
    :data:`SHOW_CHARS` characters and its size (``sized``: a string's or list's size even
    when it is short)."""
    text, has_size = _show(value)
    if sized and not has_size and isinstance(value, str | list | tuple | dict):
        return f"{text} ({size_of(value)})"
    return text


def _show(value: Any) -> tuple[str, bool]:
    if isinstance(value, str):
        if len(value) <= SHOW_CHARS:
            return repr(value), False
        head = repr(value[:SHOW_CHARS])
        return f"{head[:-1]}…{head[-1]} ({size_of(value)})", True
    if isinstance(value, bytes):
        if len(value) <= SHOW_CHARS:
            return repr(value), False
        return f"{repr(value[:SHOW_CHARS])}… ({len(value):,} bytes)", True
    if isinstance(value, int) and not isinstance(value, bool):
        size = digits(value)
        return (
            (repr(value), False) if size <= SHOW_CHARS else (f"a number of {size:,} digits", True)
        )
    if isinstance(value, list | tuple | dict):
        text = _REPR.repr(value)
        if len(value) <= 3 and "..." not in text and len(text) <= SHOW_CHARS:
            return text, False
        if len(text) > SHOW_CHARS:
            text = text[:SHOW_CHARS] + "…"
        return f"{text} ({size_of(value)})", True
    text = repr(value)
    return (text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + "…"), False


def quoted(name: str) -> str:
    """A name as it stands in a JSON path (``$.files['a.png']``): quoted, and cut after
    :data:`SHOW_CHARS` characters."""
    if len(name) <= SHOW_CHARS:
        return repr(name)
    head = repr(name[:SHOW_CHARS])
    return f"{head[:-1]}…{head[-1]}"


def show_path(path: object) -> str:
    """A file path as echoed in a message: whole up to :data:`SHOW_PATH_CHARS` characters
    (a user needs all of it to find the file), else like :func:`show`."""
    text = str(path)
    return text if len(text) <= SHOW_PATH_CHARS else show(text)


def digits(number: int) -> int:
    """How many decimal digits ``number`` has (also past Python's int-to-text limit)."""
    try:
        return len(str(abs(number)))
    except ValueError:  # more digits than sys.get_int_max_str_digits(): estimate
        return int(abs(number).bit_length() * 0.30103) + 1


def size_of(value: Sized) -> str:
    """``a list of 3 items``, ``an object of 1 name``, ``a string of 5 characters``."""
    n = len(value)
    if isinstance(value, dict):
        return f"an object of {n:,} name{'' if n == 1 else 's'}"
    if isinstance(value, str):
        return f"a string of {n:,} character{'' if n == 1 else 's'}"
    return f"a list of {n:,} item{'' if n == 1 else 's'}"


def names(keys: Iterable[Any], limit: int = MAX_NAMES) -> str:
    """Field names for a message: each shown short, at most ``limit`` of them."""
    keys = list(keys)
    shown = ", ".join(show(k) for k in keys[:limit])
    return shown if len(keys) <= limit else f"{shown} and {len(keys) - limit:,} more"


def clip(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, ending in "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def capped(problems: Iterable[str], limit: int = MAX_PROBLEMS) -> list[str]:
    """At most ``limit`` problems, each clipped, then one line saying how many were left
    out (counting those a list capped before had left out)."""
    kept: list[str] = []
    hidden = 0
    for problem in problems:
        if is_more(problem):
            hidden += _count(problem)
        elif len(kept) < limit:
            kept.append(clip(problem))
        else:
            hidden += 1
    return [*kept, more_line(hidden)] if hidden else kept


def more_line(n: int) -> str:
    return f"… and {n:,} more problem{'' if n == 1 else 's'}"


def is_more(problem: str) -> bool:
    """Whether ``problem`` is the line :func:`capped` adds."""
    return problem.startswith("… and ") and " more problem" in problem


def _count(line: str) -> int:
    return int(line.removeprefix("… and ").split(" ", 1)[0].replace(",", ""))
