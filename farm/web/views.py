"""What the pages of `farm web` show, read with the functions the CLI uses
(:meth:`farm.state.FarmState.status`, :func:`farm.nodes.listing`, :mod:`farm.watch`,
:mod:`farm.fallbacks`). Plain dicts for the templates; nothing here writes."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from farm.assembly import shot_clip
from farm.fallbacks import blocked_nodes, error_words
from farm.lifecycle import TERMINAL_SCENE, TERMINAL_SHOT
from farm.nodes import listing
from farm.planning import describe_adjusted
from farm.runtime import Runtime
from farm.watch import gate_text, note

PER_PAGE = 50
SCENE_FIELDS = ["id", "title", "state", "quality", "created", "shots", "priority",
                "submission", "paused", "updated"]  # fmt: skip
#: the badge colour of each state (report.html's classes)
TONE = {"done": "ok", "failed": "bad", "partial": "warn", "cancelled": "neutral",
        "running": "info", "rendering": "info", "bound": "info", "scoring": "info",
        "assembling": "info", "queued": "neutral"}  # fmt: skip


def file_url(storage: Path, path: str | None) -> str | None:
    """The ``/files/...`` address of a file under the farm's storage (None elsewhere)."""
    if not path:
        return None
    try:
        rel = Path(path).resolve().relative_to(storage.resolve())
    except ValueError:
        return None
    return "/files/" + rel.as_posix()


def ago(seconds: float) -> str:
    """``42 s``, ``3 min``, ``5 h``, ``2 d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


# -- scenes ---------------------------------------------------------------------------------
#: the ids of the scenes index (KEYS[1], newest first) whose id contains ARGV[2] (lower
#: case; "" for any) and whose record (ARGV[1] .. id) has state ARGV[3] ("" for any):
#: one call instead of a reply per scene
MATCHING = """
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  if ARGV[2] == '' or string.find(string.lower(id), ARGV[2], 1, true) then
    if ARGV[3] == '' or redis.call('HGET', ARGV[1] .. id, 'state') == ARGV[3] then
      table.insert(out, id)
    end
  end
end
return out
"""
#: the blocklists (node -> failures) of the open scenes (KEYS[1]) that have one, as
#: [scene, [node, count, ...], ...]; ARGV[1]: the blocklist key without the scene id
BLOCKLISTS = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local counts = redis.call('HGETALL', ARGV[1] .. id)
  if #counts > 0 then table.insert(out, id); table.insert(out, counts) end
end
return out
"""


def scene_ids(rt: Runtime, state: str = "", query: str = "") -> list[str]:
    """Every scene id, newest first, whose id contains ``query`` and (if given) whose
    state is ``state``; read in Redis in one call, no shot records."""
    keys = rt.settings.keys
    return rt.redis.eval(MATCHING, 1, keys.scenes(), keys.scene(""), query.lower(), state)


def scenes_page(rt: Runtime, state: str = "", query: str = "", page: int = 1,
                per_page: int = PER_PAGE) -> dict[str, Any]:  # fmt: skip
    """One page of the scene list: the page's scenes with their shot counts by state
    and progress (only this page's shots are read)."""
    keys = rt.settings.keys
    start = (max(1, page) - 1) * per_page
    if state or query:
        matched = scene_ids(rt, state, query)
        total, ids = len(matched), matched[start : start + per_page]
    else:
        total = rt.redis.zcard(keys.scenes())
        ids = rt.redis.zrevrange(keys.scenes(), start, start + per_page - 1)
    pipe = rt.redis.pipeline(transaction=False)
    for scene_id in ids:
        pipe.hmget(keys.scene(scene_id), SCENE_FIELDS)
    records = [dict(zip(SCENE_FIELDS, raw, strict=True)) for raw in pipe.execute()]
    records = [r for r in records if r["id"]]
    pipe = rt.redis.pipeline(transaction=False)
    for r in records:
        r["shot_ids"] = json.loads(r["shots"] or "[]")
        for shot_id in r["shot_ids"]:
            pipe.hmget(keys.shot(r["id"], shot_id), ["state", "progress"])
    replies = iter(pipe.execute())
    now = time.time()
    rows = []
    for r in records:
        shots = [next(replies) for _ in r["shot_ids"]]
        counts = Counter(s or "unknown" for s, _ in shots)
        done = sum(1.0 if s in TERMINAL_SHOT else float(p or 0) for s, p in shots)
        created = float(r["created"] or 0)
        rows.append({
            "id": r["id"], "title": r["title"] or "", "state": r["state"],
            "tone": TONE.get(r["state"] or "", "neutral"), "paused": r["paused"] == "1",
            "quality": r["quality"], "priority": int(float(r["priority"] or 5)),
            "shots": len(shots), "counts": dict(sorted(counts.items())),
            "progress": round(done / len(shots), 3) if shots else 0.0,
            "created": created, "age": ago(now - created),
            "submitter": f"submission {r['submission']}" if r["submission"] else "farm enqueue",
        })  # fmt: skip
    pages = max(1, -(-total // per_page))
    return {"rows": rows, "total": total, "page": max(1, page), "pages": pages,
            "state": state, "query": query}  # fmt: skip


# -- a scene --------------------------------------------------------------------------------
def attempt_words(entry: dict[str, Any]) -> str:
    """One attempt of a shot's log in words: ``attempt 1: final on node-a, failed (out of
    memory)``."""
    words = f"attempt {entry.get('attempt', '?')}: {entry.get('kind') or 'render'}"
    if entry.get("node"):
        words += f" on {entry['node']}"
    words += f", {entry.get('state', '?')}"
    if entry.get("state") in ("failed", "lost"):
        words += f" ({error_words(entry.get('error_kind'))})"
    return words


def scene_view(rt: Runtime, scene_id: str) -> dict[str, Any]:
    """A scene as its page shows it: ``farm status --json`` with, per shot, its clip and
    preview frame addresses, its gate decision and notes in words and its attempt log."""
    status = rt.state.status(scene_id)
    storage = rt.settings.storage
    pipe = rt.redis.pipeline(transaction=False)
    for shot in status["shots"]:
        pipe.hget(rt.state.shot_key(scene_id, shot["id"]), "attempt_log")
    logs = [json.loads(raw or "[]") for raw in pipe.execute()]
    cards = []
    for shot, log in zip(status["shots"], logs, strict=True):
        running = shot["state"] not in TERMINAL_SHOT and shot["state"] != "queued"
        gate = shot.get("gate") or {}
        noted = note(shot)
        cards.append({
            **shot,
            "tone": TONE.get(shot["state"] or "", "neutral"),
            "node_text": "cache" if shot.get("cache_hit") else shot.get("node") or "-",
            "clip": file_url(storage, shot_clip(shot)) if shot["state"] == "done" else None,
            "frame": (f"/scenes/{scene_id}/shots/{shot['id']}/preview?at={shot['preview_at']}"
                      if running and shot.get("preview_at") else None),  # fmt: skip
            "gate_text": gate_text(gate).plain if gate else "",
            "gate_reasons": [str(r) for r in gate.get("reasons") or []],
            "scores": gate.get("scores") or {},
            "note": noted.plain if noted else "",
            "note_tone": "warn" if shot.get("plan") else "bad",
            "adjusted_text": describe_adjusted(shot["adjusted"]) if shot.get("adjusted") else "",
            "fallback_text": _fallback_words(shot),
            "log": [attempt_words(e) for e in log],
        })  # fmt: skip
    outputs = status["outputs"]
    done = sum(1.0 if s["state"] in TERMINAL_SHOT else float(s["progress"] or 0)
               for s in status["shots"])  # fmt: skip
    return {
        **status,
        "cards": cards,
        "tone": TONE.get(status["state"], "neutral"),
        "over": status["state"] in TERMINAL_SCENE,
        "progress": round(done / len(cards), 3) if cards else 0.0,
        "counts": dict(sorted(Counter(s["state"] for s in status["shots"]).items())),
        "video": file_url(storage, outputs.get("video")),
        "report": file_url(storage, outputs.get("report_html")),
        "age": ago(time.time() - float(status["created"] or 0)),
        "priority": int(float(rt.redis.hget(rt.state.scene_key(scene_id), "priority") or 5)),
    }


def _fallback_words(shot: dict[str, Any]) -> str:
    if not shot.get("used_fallback"):
        return ""
    words = "rendered by its fallback"
    if shot.get("fallback"):
        words += f" ({shot['fallback']})"
    if shot.get("primary_error"):
        words += f" after: {str(shot['primary_error']).splitlines()[0][:200]}"
    return words


# -- nodes ----------------------------------------------------------------------------------
def nodes_view(rt: Runtime) -> list[dict[str, Any]]:
    """``farm nodes --json``'s records, with the models each node has loaded, the shots
    bound to it and the open scenes it is blocked for."""
    records = listing(rt.registry, rt.catalog)
    keys = rt.settings.keys
    pipe = rt.redis.pipeline(transaction=False)
    for r in records:
        pipe.hmget(keys.node(r["name"]), ["loaded", "rendered_models"])
        pipe.hkeys(keys.bound(r["name"]))
    replies = pipe.execute()
    found = rt.redis.eval(BLOCKLISTS, 1, keys.open_scenes(), keys.blocklist(""))
    blocked: dict[str, list[str]] = {}
    for scene_id, flat in sorted(zip(found[::2], found[1::2], strict=True)):
        counts = dict(zip(flat[::2], flat[1::2], strict=True))
        for b in blocked_nodes(counts, rt.settings.blocklist_after, []):
            blocked.setdefault(b["node"], []).append(scene_id)
    for i, r in enumerate(records):
        loaded, rendered = replies[2 * i]
        r["loaded"] = json.loads(loaded or rendered or "[]")
        r["rendering"] = sorted(replies[2 * i + 1])
        r["blocked_for"] = blocked.get(r["name"], [])
        r["heartbeat"] = ago(r["age"]) if r["age"] < 1e9 else "never"
        r["held"] = sorted({m for names in r["models"].values() for m in names})
    return records
