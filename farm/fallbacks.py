"""A shot's fallback in words: what its next attempt renders after a failure, and the
nodes blocked for its scene, for `farm status`, `farm watch` and their ``--json``.

Pure: it reads shot records (:mod:`farm.state`) and a scene's blocklist counts; the
decisions themselves are :func:`farm.planning.next_rung` and :mod:`farm.dispatch`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from farm.catalog import model_names

#: what an error kind (:mod:`farm.errors`) is called in a sentence
ERROR_WORDS = {
    "out_of_memory": "out of memory",
    "model_missing": "a missing model",
    "node_unavailable": "a lost connection",
    "timeout": "a timeout",
    "render_failed": "a render failure",
    "bad_response": "a bad answer",
    "error": "an internal error",
}
BACKEND_WORDS = {"comfyui": "ComfyUI", "wan2gp": "WanGP"}
#: the states in which a shot is on an attempt (waiting for it, or making it)
ON_AN_ATTEMPT = ("queued", "bound", "running")


def error_words(kind: str | None) -> str:
    """An error kind as words: ``out_of_memory`` → "out of memory"."""
    kind = kind or "error"
    return ERROR_WORDS.get(kind, kind.replace("_", " "))


def _model(variant: Mapping[str, Any]) -> str:
    """``ComfyUI high_noise + low_noise``: the backend and every model the job loads."""
    backend = BACKEND_WORDS.get(variant.get("backend", ""), variant.get("backend", ""))
    models = model_names([str(m) for m in variant.get("models") or [variant.get("model", "")]])
    return f"{backend} {' + '.join(m.removesuffix('.safetensors') for m in models)}"


def _attempt(shot: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """The attempt the shot waits for or makes and the failed or lost one before it, when
    it is on a retry (not after a preview, a gate retake or `farm retry`)."""
    state = shot.get("state")
    if state not in ON_AN_ATTEMPT:
        return None
    attempt = int(shot.get("attempt") or 0) + (1 if state == "queued" else 0)
    log = shot.get("attempt_log") or []
    last = log[-1] if log else {}
    if attempt < 2 or last.get("state") not in ("failed", "lost"):
        return None
    return (attempt, last) if last.get("attempt") == attempt - 1 else None


def _how(variants: list[dict[str, Any]], rung: Mapping[str, Any], last: Mapping[str, Any]) -> str:
    """What changed on this rung, in words: the size, the models, the node."""
    params = variants[0].get("params") or {}
    sizes = dict.fromkeys(f"{v['params']['width']}×{v['params']['height']}"
                          for v in variants if "width" in (v.get("params") or {}))  # fmt: skip
    words = f" at {' or '.join(sizes)}" if sizes else ""
    models = list(dict.fromkeys(_model(v) for v in variants))
    if models != [_model(last)]:
        words += f" with{' the fast-tier' if params.get('fast_tier') else ''} {' or '.join(models)}"
    if rung.get("pin"):
        profile = params.get("override_profile")
        words += f" on {rung['pin']} again" + (f" with WanGP memory profile {profile}"
                                               if profile else "")  # fmt: skip
    if rung.get("exclude"):
        words += f", not on {', '.join(rung['exclude'])}"
    return words


def retry_plan(shot: Mapping[str, Any], max_attempts: int) -> dict[str, Any] | None:
    """What a shot waiting for (queued) or on (bound, running) the attempt after a failed
    or lost one renders, and why; None when the shot is not on such a retry.

    ``text`` says it in one line, e.g. "attempt 2 of 3: final at 960×544 after out of
    memory on gpu-a", naming the models when they changed, the node a lower-memory
    retry stays on, and the nodes it avoids."""
    found = _attempt(shot)
    if found is None:
        return None
    attempt, last = found
    rung = shot.get("rung") or {}
    variants = rung.get("variants") or [shot.get("job") or {}]  # a first rung: as it ran
    kind = shot.get("kind") or variants[0].get("kind") or "render"
    node = last.get("node") or "its node"
    why = (f"{node} stopped answering (attempt {attempt - 1} lost)" if last["state"] == "lost"
           else f"{error_words(last.get('error_kind'))} on {node}")  # fmt: skip
    return {
        "attempt": attempt,
        "of": max_attempts,
        "kind": kind,
        "step": rung.get("step", "first"),
        "after": last.get("error_kind"),
        "failed_on": last.get("node"),
        "text": f"attempt {attempt} of {max_attempts}: {kind}{_how(variants, rung, last)} "
        f"after {why}",
    }


def blocked_nodes(
    counts: Mapping[str, Any], limit: int, shots: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The nodes blocked for a scene: ``counts`` is its blocklist (node → failed attempts),
    ``limit`` ``FARM_BLOCKLIST_AFTER``; why, from the failed attempts of its ``shots`` on
    each. ``text``: "gpu-a: blocked for this scene after 3 failures (out of memory ×3)"."""
    logs = [e for s in shots for e in s.get("attempt_log") or [] if e.get("state") == "failed"]
    out = []
    for node in sorted(counts):
        failures = int(counts[node])
        if failures < limit:
            continue
        kinds = Counter(e.get("error_kind") or "error" for e in logs if e.get("node") == node)
        why = ", ".join(
            error_words(k) + (f" ×{n}" if n > 1 else "") for k, n in kinds.most_common()
        )
        text = f"{node}: blocked for this scene after {failures} failures"
        out.append({"node": node, "failures": failures, "errors": dict(kinds),
                    "text": f"{text} ({why})" if why else text})  # fmt: skip
    return out
