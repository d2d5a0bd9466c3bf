"""Celery tasks: thin wrappers that decode ids, call a plain function and return a small dict."""

from __future__ import annotations

from typing import Any


def with_outcome(record: dict[str, Any]) -> dict[str, Any]:
    """A shot's chord record with ``outcome`` first: what became of the shot, in words.

    Celery (and Flower) shows a shot task that returns as SUCCESS whatever became of the
    shot: it must return, since a chord header task that raised would break the scene's
    chord. So its result says it: ``shot failed: <error>``, ``shot cancelled``, ``shot done
    (gate passed)``."""
    state = record.get("state") or "unknown"
    outcome = f"shot {state}"
    if state == "failed":
        outcome += f": {record.get('error') or 'no error given'}"
    elif state == "done" and record.get("gate"):
        outcome += f" (gate {record['gate']})"
    return {"outcome": outcome, **record}
