"""The farm's state in Redis: scenes, shots, their progress and a per-scene event stream.

Records (keys in :mod:`farm.keys`): ``scene:{scene}`` (id, title, quality, priority,
state, spec, shots, outputs, metrics, submission, run, open, ...), ``shot:{scene}:{shot}``
(id, state, progress, node, attempts, attempt_log, outputs, error, binding, ...), the event
stream ``events:{scene}`` and the newest preview frame ``preview:{scene}:{shot}``. Names
and numbers are stored as plain text, everything else as JSON text.

A record's ``state`` is written by :mod:`farm.lifecycle` alone; this module reads records
and writes what is not state: flags, progress, previews and events.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from farm.budget import scene_spend
from farm.errors import ConfigError, InvalidInput
from farm.fallbacks import blocked_nodes, retry_plan
from farm.settings import Settings

EVENTS_MAXLEN = 2000
MAX_PREVIEW_BYTES = 512 * 1024
PLAIN = frozenset(
    {
        "id",
        "title",
        "state",
        "quality",
        "kind",
        "node",
        "binding",
        "group",
        "task_id",
        "chord_id",
        "cancel",
        "paused",
        "force",
        "scoring",
        "submission",
        "stage",
        "on_node",
        "queue",
        "enqueued",
        "enqueuer",
    }
)
NUMBERS: dict[str, type] = {
    "progress": float,
    "attempts": int,
    "priority": int,
    "created": float,
    "updated": float,
    "started": float,
    "finished": float,
    "preview_at": float,
    "attempt": int,
    "slot": int,
    "retries": int,
    "take": int,
    "version": int,
    "since": float,
    "run": int,
    "open": int,
    "stage_tries": int,
    "stage_sent": float,
    "shots_over_at": float,
}


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (a sentinel URL's, a ``password=``
    query option's too)."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hosts}"
    return url


def connect(settings: Settings, *, check: bool = True, decode: bool = True) -> redis.Redis:
    """A Redis client for ``settings.redis_url``: ``redis://``, ``rediss://`` (TLS, the
    server's certificate verified; :meth:`Settings.redis_ssl`), ``unix://``, or
    ``sentinel(s)://``: the master the sentinels name, asked again whenever a connection is
    lost or the master turns replica (a failover). With ``check``, fail fast with one clear
    line. ``decode``: replies as text (False: bytes, for data that may not be UTF-8)."""
    options: dict[str, Any] = {
        "decode_responses": decode,
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        **settings.redis_ssl(),
    }
    url = settings.redis_sentinel
    if url is None:
        client = redis.Redis.from_url(settings.redis_url, **options)
    else:
        sentinels = Sentinel(
            list(url.sentinels),
            sentinel_kwargs=settings.redis_sentinel_kwargs(),
            username=url.username,
            password=url.password,
            db=url.db,
            ssl=url.tls,
            # a failover: connections are dropped or the old master answers READONLY; ask
            # the sentinels again for a few seconds
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=10),
            **options,
        )
        if check and (problems := _sentinel_problems(sentinels, settings.redis_sentinel_master)):
            raise unavailable(settings, MasterNotFoundError("; ".join(problems)))
        client = sentinels.master_for(settings.redis_sentinel_master)
    if check:
        try:
            if url is not None:
                _refused(sentinels, settings.redis_sentinel_master)
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise unavailable(settings, exc) from None
    return client


def _refused(sentinels: Sentinel, name: str) -> None:
    """Raise at once when the master refuses the credentials (the client's retries, meant
    for a failover, would ask again for seconds); any other failure is left to them."""
    probe = sentinels.master_for(name, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
    except redis.AuthenticationError:
        raise
    except (redis.RedisError, OSError):
        pass
    finally:
        probe.close()


def _sentinel_problems(sentinels: Sentinel, name: str) -> list[str]:
    """Why no sentinel names a usable master ``name``, one reason per sentinel; empty when
    one does."""
    problems = []
    for sentinel in sentinels.sentinels:
        where = "{host}:{port}".format(**sentinel.get_connection_kwargs())
        try:
            state = sentinel.sentinel_masters().get(name)
        except (redis.RedisError, OSError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        if state and sentinels.check_master_state(state, name):
            return []
        problems.append(f"{where}: {'the master is down' if state else f'no master {name!r}'}")
    return problems


def unavailable(settings: Settings, exc: BaseException) -> ConfigError:
    """One line that says why Redis at ``settings.redis_url`` cannot be used and what to
    set; never a password."""
    where, text = redacted(settings.redis_url), str(exc)
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        why = (
            f"Redis at {where} refused the credentials ({text}): set the right user and "
            "password in FARM_REDIS_URL (redis://user:password@host:port/db)"
        )
    elif "CERTIFICATE_VERIFY_FAILED" in text:
        why = (
            f"Redis at {where} presented a TLS certificate this machine does not trust "
            f"({text}); set FARM_REDIS_CA to the CA certificate that signed it"
        )
    elif isinstance(exc, MasterNotFoundError):
        why = (
            f"no sentinel of {where} names a reachable master "
            f"{settings.redis_sentinel_master!r} ({text}); check the sentinels' addresses, "
            "FARM_REDIS_SENTINEL_MASTER and FARM_REDIS_SENTINEL_PASSWORD"
        )
    elif "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        why = (
            f"Redis at {where} does not speak TLS ({text}): use redis:// (sentinel://), "
            "not rediss:// (sentinels://)"
        )
    elif (
        settings.redis_tls
        and not settings.redis_cert
        and ("certificate required" in text or "EOF occurred in violation of protocol" in text)
    ):
        why = (
            f"Redis at {where} ended the TLS handshake ({text}); it probably asks for a client "
            "certificate: set FARM_REDIS_CERT and FARM_REDIS_KEY"
        )
    elif not settings.redis_tls and ("closed by server" in text or "reset by peer" in text):
        why = (
            f"Redis at {where} dropped the connection ({text}); if it accepts only TLS, use "
            "rediss:// (and FARM_REDIS_CA)"
        )
    else:
        why = (
            f"cannot reach Redis at {where} ({text}); start one "
            "(e.g. `redis-server --port 6379 --appendonly yes`) or set FARM_REDIS_URL"
        )
    url = settings.redis_url
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    passwords = [
        userinfo.partition(":")[2] if at else "",
        *re.findall(r"[?&]password=([^&#]*)", url),
    ]
    for secret in (*passwords, *map(unquote, passwords), settings.redis_sentinel_password):
        if secret:
            why = why.replace(secret, "***")
    return ConfigError(" ".join(why.split()))


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    """Plain text for names and numbers (readable in redis-cli), JSON for everything else."""
    return {
        key: str(value) if key in PLAIN or key in NUMBERS else json.dumps(value)
        for key, value in fields.items()
        if not (key in PLAIN and value is None)
    }


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in PLAIN:
            out[key] = value
        elif key in NUMBERS:
            out[key] = NUMBERS[key](float(value))
        else:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
    return out


class FarmState:
    """Reads scene and shot records; writes what is not their state (flags, progress,
    previews) and events."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.s = settings
        self.keys = settings.keys

    # keys
    def scene_key(self, scene_id: str) -> str:
        return self.keys.scene(scene_id)

    def shot_key(self, scene_id: str, shot_id: str) -> str:
        return self.keys.shot(scene_id, shot_id)

    def events_key(self, scene_id: str) -> str:
        return self.keys.events(scene_id)

    # scenes
    def delete_scene(self, scene_id: str) -> None:
        """Delete every key of the scene (records, events, previews, leases, backlog
        parking, blocklist) and its entries in the scene indexes."""
        shots = self.scene(scene_id).get("shots", []) if self.exists(scene_id) else []
        pipe = self.r.pipeline()
        for key in self.keys.scene_keys(scene_id, shots):
            pipe.delete(key)
        pipe.zrem(self.keys.active(), *[f"{scene_id}/{s}" for s in shots] or ["-"])
        pipe.zrem(self.keys.scenes(), scene_id)
        pipe.srem(self.keys.open_scenes(), scene_id)
        pipe.zrem(self.keys.over_scenes(), scene_id)
        pipe.execute()

    def exists(self, scene_id: str) -> bool:
        return bool(self.r.exists(self.scene_key(scene_id)))

    def scene(self, scene_id: str) -> dict[str, Any]:
        raw = self.r.hgetall(self.scene_key(scene_id))
        if not raw:
            raise InvalidInput(
                f"no scene {scene_id!r} in the farm (see `farm status` for the list)"
            )
        return _decode(raw)

    def update_scene(self, scene_id: str, event: str | None = None, **fields: Any) -> None:
        """Write fields that are not the scene's state (flags, outputs)."""
        if "state" in fields:
            raise ValueError("a scene's state changes only through farm.lifecycle")
        fields["updated"] = time.time()
        self.r.hset(self.scene_key(scene_id), mapping=_encode(fields))
        if event:
            self.event(scene_id, event, **{k: v for k, v in fields.items() if k == "error"})

    def list_scenes(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.r.zrevrange(self.keys.scenes(), 0, limit - 1)
        pipe = self.r.pipeline()
        for scene_id in ids:
            pipe.hmget(self.scene_key(scene_id), ["id", "title", "state", "quality", "created",
                                                  "shots"])  # fmt: skip
        out = []
        for raw in pipe.execute():
            if raw[0]:
                out.append(
                    {
                        "id": raw[0],
                        "title": raw[1] or "",
                        "state": raw[2],
                        "quality": raw[3],
                        "created": float(raw[4] or 0),
                        "shots": len(json.loads(raw[5] or "[]")),
                    }
                )
        return out

    # shots
    def shot(self, scene_id: str, shot_id: str) -> dict[str, Any]:
        return _decode(self.r.hgetall(self.shot_key(scene_id, shot_id)))

    def shots(self, scene_id: str) -> list[dict[str, Any]]:
        ids = self.scene(scene_id).get("shots", [])
        pipe = self.r.pipeline()
        for shot_id in ids:
            pipe.hgetall(self.shot_key(scene_id, shot_id))
        return [_decode(raw) for raw in pipe.execute()]

    def update_shot(
        self, scene_id: str, shot_id: str, event: str | None = None, **fields: Any
    ) -> None:
        """Write fields that are not the shot's state (flags such as ``cancel``)."""
        if "state" in fields:
            raise ValueError("a shot's state changes only through farm.lifecycle")
        fields["updated"] = time.time()
        self.r.hset(self.shot_key(scene_id, shot_id), mapping=_encode(fields))
        if event:
            self.event(scene_id, event, shot=shot_id)

    # previews
    def preview_key(self, scene_id: str, shot_id: str) -> str:
        return self.keys.preview(scene_id, shot_id)

    def set_preview(self, scene_id: str, shot_id: str, image: bytes, mime: str) -> bool:
        """Keep ``image`` as the shot's newest preview (False if over MAX_PREVIEW_BYTES)."""
        if len(image) > MAX_PREVIEW_BYTES:
            return False
        now = time.time()
        pipe = self.r.pipeline()
        key = self.preview_key(scene_id, shot_id)
        pipe.hset(
            key,
            mapping={"mime": mime, "data": base64.b64encode(image).decode(),
                     "bytes": len(image), "at": f"{now:.3f}"},
        )  # fmt: skip
        pipe.expire(key, self.s.result_expires)
        pipe.execute()
        return True

    def preview(self, scene_id: str, shot_id: str) -> dict[str, Any] | None:
        """The shot's newest preview: ``{"mime", "image": bytes, "bytes", "at"}`` or None."""
        raw = self.r.hgetall(self.preview_key(scene_id, shot_id))
        if not raw:
            return None
        return {"mime": raw["mime"], "image": base64.b64decode(raw["data"]),
                "bytes": int(raw["bytes"]), "at": float(raw["at"])}  # fmt: skip

    # events
    def event(self, scene_id: str, type_: str, **data: Any) -> str:
        fields = {"type": type_, "time": f"{time.time():.3f}", **_encode(data)}
        return self.r.xadd(
            self.events_key(scene_id), fields, maxlen=EVENTS_MAXLEN, approximate=True
        )

    def events(
        self, scene_id: str, after: str = "0", count: int = 500
    ) -> list[tuple[str, dict[str, str]]]:
        return self.r.xrange(
            self.events_key(scene_id), min=f"({after}" if after != "0" else "-", count=count
        )

    # the public view
    def status(self, scene_id: str) -> dict[str, Any]:
        """The scene as ``farm status --json`` prints it, with each shot's retry plan
        (``plan``), why it waits when the burst budget kept it from a cloud node
        (``waiting``), the nodes blocked for the scene (``blocked``; :mod:`farm.fallbacks`)
        and the scene's cloud spend (``cloud_spend``: total and per node)."""
        scene = self.scene(scene_id)
        records = self.shots(scene_id)
        shots = [
            {
                "id": s["id"],
                "state": s.get("state"),
                "node": s.get("node"),
                "attempts": s.get("attempts", 0),
                "outputs": s.get("outputs", {}),
                "error": s.get("error"),
                "progress": s.get("progress", 0.0),
                "kind": s.get("kind"),
                "used_fallback": s.get("used_fallback", False),
                "primary_error": s.get("primary_error"),
                "fallback": s.get("fallback"),
                "cache_hit": s.get("cache_hit", False),
                "retries": s.get("retries", 0),
                "take": s.get("take") or 1,
                "gate": s.get("gate"),
                "preview": s.get("preview"),
                "preview_at": s.get("preview_at"),
                "adjusted": _adjusted(s),
                "plan": retry_plan(s, self.s.max_attempts),
                #: why a waiting shot was kept from a cloud node (farm.dispatch), till bound
                "waiting": s.get("waiting"),
            }
            for s in records
        ]
        counts = self.r.hgetall(self.keys.blocklist(scene_id))
        return {
            "id": scene["id"],
            "title": scene.get("title", ""),
            "state": scene["state"],
            "paused": scene.get("paused") == "1",
            "quality": scene.get("quality"),
            "shots": shots,
            "outputs": scene.get("outputs", {}),
            "metrics": scene.get("metrics", {}),
            "blocked": blocked_nodes(counts, self.s.blocklist_after, records),
            "cloud_spend": scene_spend(self.r, self.s, scene_id),
            "submission": scene.get("submission"),
            "created": scene.get("created", 0.0),
            "updated": scene.get("updated", 0.0),
        }


def _adjusted(shot: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the shot's render differs from what it asked (frames, fps) and why: its kept
    take's, else its newest job's (``farm.planning.adjustments``)."""
    kept = (shot.get("gate") or {}).get("kept")
    take = next((t for t in shot.get("takes") or [] if t.get("take") == kept), None)
    return list((take or shot.get("job") or {}).get("adjusted") or [])
