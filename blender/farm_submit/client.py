"""The add-on's only network code: talk to the farm's Redis. No ``bpy`` here, so it runs
in a worker thread and in plain Python.

Writes one submission to the farm's submissions stream and reads back what the farm
decided and how the scene is going (docs/submissions.md is the contract):

    {prefix}:submissions               stream; fields ``submission`` (id), ``body`` (JSON)
    {prefix}:submission:{id}           hash written by ``farm ingest``: state, scene, errors, reason
    {prefix}:scene:{scene}             hash: state, outputs (JSON), error (JSON)
    {prefix}:shot:{scene}:{shot}       hash: state, progress, node, error, outputs, gate (JSON)
    {prefix}:preview:{scene}:{shot}    hash: mime, data (base64), at
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import uuid
from typing import Any

FORMAT_VERSION = 1
MAX_BODY_BYTES = 32 * 1024 * 1024  # the farm's default FARM_SUBMISSION_MAX_BYTES
TERMINAL = {"done", "partial", "failed", "cancelled"}


class FarmClientError(Exception):
    """Something the artist can act on, said in plain words."""


def _redis():
    """The ``redis`` package: installed from the extension's wheels, or the legacy zip's
    ``_vendor`` folder."""
    try:
        import redis
    except ImportError:
        sys.path.append(os.path.join(os.path.dirname(__file__), "_vendor"))
        import redis
    return redis


def new_submission_id() -> str:
    """A fresh submission id (the farm makes one scene per id, however often it is sent)."""
    return "bl-" + uuid.uuid4().hex[:24]


def connect(url: str, password: str = "", timeout: float = 5.0, ca: str = ""):
    """A Redis client for ``url`` (``redis://``, or ``rediss://`` for TLS); ``password``
    overrides one in the URL. Over TLS the server's certificate and host name are always
    checked, against the CA certificate file ``ca`` (PEM) or, without one, the system's
    trusted CAs. Raises :class:`FarmClientError` when the farm is unreachable."""
    redis = _redis()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise FarmClientError(
            f"Redis URL {_safe(url)!r} must start with redis://, rediss:// (TLS) or unix:// "
            "(add-on preferences: Redis URL)"
        )
    tls = _tls(url, ca)
    try:
        client = redis.Redis.from_url(
            url,
            password=password or None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            **tls,
        )
        client.ping()
    except ValueError as exc:
        raise FarmClientError(f"Redis URL {_safe(url)!r} is not valid: {exc}") from exc
    except redis.AuthenticationError as exc:
        raise FarmClientError(
            f"the farm's Redis at {_safe(url)} refused the password: set the right one in the "
            "add-on preferences (Password)"
        ) from exc
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise FarmClientError(
                f"the farm's Redis at {_safe(url)} needs a password: set it in the add-on "
                "preferences (Password)"
            ) from exc
        raise FarmClientError(f"the farm's Redis at {_safe(url)} answered: {exc}") from exc
    except redis.RedisError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise FarmClientError(
                f"the farm's Redis at {_safe(url)} presented a TLS certificate this computer "
                "does not trust: set CA certificate in the add-on preferences to the farm's "
                f"CA file ({exc})"
            ) from exc
        raise FarmClientError(
            f"cannot reach the farm's Redis at {_safe(url)} ({exc}); check the Redis URL in the "
            "add-on preferences and that the farm is running"
        ) from exc
    return client


def _tls(url: str, ca: str) -> dict[str, Any]:
    """redis-py's TLS arguments for ``url``: certificates always verified."""
    if not url.startswith("rediss://"):
        if ca:
            raise FarmClientError(
                "a CA certificate is set in the add-on preferences but the Redis URL is not "
                "rediss://: use rediss:// for TLS, or clear CA certificate"
            )
        return {}
    tls: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca:
        path = os.path.expanduser(ca)
        if not os.path.isfile(path):
            raise FarmClientError(
                f"CA certificate {ca!r} is not a file (add-on preferences: CA certificate)"
            )
        tls["ssl_ca_certs"] = path
    return tls


def _safe(url: str) -> str:
    """``url`` without a password in it."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def submit(client, prefix: str, message: dict[str, Any]) -> str:
    """Add ``message`` (a version-1 submission) to the submissions stream; returns the
    stream entry id."""
    body = json.dumps(message, separators=(",", ":"))
    if len(body) > MAX_BODY_BYTES:
        raise FarmClientError(
            f"the submission is {len(body) / 2**20:.1f} MiB; the farm takes at most "
            f"{MAX_BODY_BYTES // 2**20} MiB: use fewer or smaller start images"
        )
    try:
        return client.xadd(
            f"{prefix}:submissions", {"submission": message["submission"], "body": body}
        )
    except _redis().RedisError as exc:
        raise FarmClientError(f"could not send the submission to the farm: {exc}") from exc


def templates(client, prefix: str) -> list[tuple[str, str]]:
    """The farm's templates as ``(name, description)``, sorted: what its ingest accepts,
    the built-in ones and a studio's own (the hash ``PREFIX:templates``)."""
    try:
        raw = client.hgetall(f"{prefix}:templates")
    except _redis().RedisError as exc:
        raise FarmClientError(f"could not read the farm's templates: {exc}") from exc
    found = []
    for name, value in raw.items():
        info = _json(value if isinstance(value, str) else value.decode(), {})
        name = name if isinstance(name, str) else name.decode()
        found.append((name, str(info.get("description", "")) if isinstance(info, dict) else ""))
    return sorted(found)


def _json(text: str | None, default: Any = None) -> Any:
    if text is None or text == "":
        return default
    try:
        return json.loads(text)
    except ValueError:
        return text


def error_text(error: Any) -> str:
    """A farm error value (text, or a record with ``message``) as one line of words."""
    if isinstance(error, dict):
        return str(error.get("message") or error.get("error") or error)
    return "" if error is None else str(error)


def poll(client, prefix: str, submission_id: str, seen_previews: dict[str, str] | None = None):
    """One snapshot of a submission and its scene, as plain data::

        {"submission": {"state": "pending"|"accepted"|"rejected", "scene", "errors", "reason"},
         "scene": {"id", "state", "outputs", "error"} | None,
         "shots": {shot id: {"state", "progress", "node", "error", "outputs", "gate"}},
         "previews": {shot id: {"mime", "data" (bytes), "at"}}}

    ``previews`` holds only frames newer than ``seen_previews`` (shot id -> ``at``)."""
    redis = _redis()
    try:
        status = client.hgetall(f"{prefix}:submission:{submission_id}")
        snap: dict[str, Any] = {
            "submission": {
                "state": status.get("state") or "pending",
                "scene": status.get("scene") or "",
                "errors": _json(status.get("errors"), []) or [],
                "reason": status.get("reason") or "",
            },
            "scene": None,
            "shots": {},
            "previews": {},
        }
        if snap["submission"]["state"] != "accepted":
            return snap
        scene_id = snap["submission"]["scene"]
        scene = client.hgetall(f"{prefix}:scene:{scene_id}")
        if not scene or scene.get("submission", submission_id) != submission_id:
            snap["scene"] = {"id": scene_id, "state": "replaced", "outputs": {}, "error": ""}
            return snap
        snap["scene"] = {
            "id": scene_id,
            "state": scene.get("state", ""),
            "outputs": _json(scene.get("outputs"), {}) or {},
            "error": error_text(_json(scene.get("error"))),
        }
        shot_ids = _json(scene.get("shots"), []) or []
        pipe = client.pipeline(transaction=False)
        for shot_id in shot_ids:
            pipe.hgetall(f"{prefix}:shot:{scene_id}:{shot_id}")
        for shot_id, shot in zip(shot_ids, pipe.execute(), strict=True):
            snap["shots"][shot_id] = {
                "state": shot.get("state", ""),
                "progress": float(shot.get("progress") or 0.0),
                "node": shot.get("node") or "",
                "error": error_text(_json(shot.get("error"))),
                "outputs": _json(shot.get("outputs"), {}) or {},
                "gate": _json(shot.get("gate")) or {},
                "preview_at": shot.get("preview_at") or "",
            }
        seen = seen_previews or {}
        for shot_id, shot in snap["shots"].items():
            at = shot["preview_at"]
            if shot["state"] == "running" and at and seen.get(shot_id) != at:
                frame = client.hgetall(f"{prefix}:preview:{scene_id}:{shot_id}")
                try:
                    data = base64.b64decode(frame.get("data", ""), validate=True)
                except (binascii.Error, ValueError):
                    continue
                if data:
                    snap["previews"][shot_id] = {
                        "mime": frame.get("mime", "image/png"),
                        "data": data,
                        "at": at,
                    }
        return snap
    except redis.RedisError as exc:
        raise FarmClientError(f"lost the connection to the farm's Redis: {exc}") from exc


def finished(snap: dict[str, Any]) -> bool:
    """True when nothing more will change: rejected, or the scene reached an end state."""
    if snap["submission"]["state"] == "rejected":
        return True
    scene = snap.get("scene")
    return bool(scene) and scene["state"] in TERMINAL | {"replaced"}
