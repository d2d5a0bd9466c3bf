"""The farm's state in Redis: scenes, shots, their progress and a per-scene event stream.

Keys (all under the settings' prefix, ``farm`` by default)::

    farm:scenes                 sorted set, scene id -> creation time
    farm:scene:{scene}          hash: id, title, quality, priority, state, spec, shots, outputs,
                                metrics, submission (the id it came in by, if any), ...
    farm:shot:{scene}:{shot}    hash: id, state, progress, node, attempts, outputs, error, ...
    farm:events:{scene}         stream of {type, shot?, ...} events, capped
    farm:preview:{scene}:{shot} hash: the newest preview frame of a running shot
                                (mime, data = base64 image, bytes, at)

Names and numbers are stored as plain text, everything else as JSON text.
"""

from __future__ import annotations

import base64
import json
import re
import time
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from farm.errors import ConfigError, InvalidInput
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
}


class SceneState(StrEnum):
    QUEUED = "queued"
    RENDERING = "rendering"
    ASSEMBLING = "assembling"
    SCORING = "scoring"
    DONE = "done"  # every shot rendered
    PARTIAL = "partial"  # assembled, some shots failed
    FAILED = "failed"  # no shot rendered
    CANCELLED = "cancelled"  # `farm cancel`


class ShotState(StrEnum):
    QUEUED = "queued"  # waiting in the backlog, or bound to a node's queue
    RUNNING = "running"
    RETRYING = "retrying"
    SCORING = "scoring"  # rendered; the quality gate scores the take (farm.gate)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_SCENE = frozenset(
    {SceneState.DONE, SceneState.PARTIAL, SceneState.FAILED, SceneState.CANCELLED}
)
TERMINAL_SHOT = frozenset({ShotState.DONE, ShotState.FAILED, ShotState.CANCELLED})


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
    """Reads and writes scene and shot records; every change also goes to the event stream."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.s = settings

    # keys
    def scene_key(self, scene_id: str) -> str:
        return self.s.key("scene", scene_id)

    def shot_key(self, scene_id: str, shot_id: str) -> str:
        return self.s.key("shot", scene_id, shot_id)

    def events_key(self, scene_id: str) -> str:
        return self.s.key("events", scene_id)

    # scenes
    def create_scene(
        self,
        spec: dict[str, Any],
        jobs: list[dict[str, Any]],
        quality: str,
        *,
        replace: bool = False,
        submission: str | None = None,
    ) -> None:
        """Record a new scene and its queued shots; refuse to clobber an unfinished one.
        ``submission``: the id of the submission it came in by (:mod:`farm.ingest`)."""
        scene_id = spec["id"]
        existing = self.r.hget(self.scene_key(scene_id), "state")
        if existing is not None:
            if existing not in TERMINAL_SCENE:
                raise InvalidInput(
                    f"scene {scene_id!r} is already {existing}; wait for it to finish or use another id"
                )
            if not replace:
                raise InvalidInput(
                    f"scene {scene_id!r} already exists ({existing}); pass --replace to render it again"
                )
            self.delete_scene(scene_id)
        now = time.time()
        pipe = self.r.pipeline()
        pipe.hset(
            self.scene_key(scene_id),
            mapping=_encode(
                {
                    "id": scene_id,
                    "title": spec.get("title", ""),
                    "quality": quality,
                    "priority": spec.get("priority", 5),
                    "state": SceneState.QUEUED,
                    "spec": spec,
                    "shots": [j["shot_id"] for j in jobs],
                    "outputs": {},
                    "metrics": {},
                    "created": now,
                    "updated": now,
                    "submission": submission,
                }
            ),
        )
        for job in jobs:
            pipe.hset(
                self.shot_key(scene_id, job["shot_id"]),
                mapping=_encode(
                    {
                        "id": job["shot_id"],
                        "state": ShotState.QUEUED,
                        "progress": 0.0,
                        "node": job["node"],
                        "kind": job["kind"],
                        "attempts": 0,
                        "outputs": {},
                        "error": None,
                        "used_fallback": False,
                        "primary_error": None,
                        "attempt_log": [],
                        "updated": now,
                    }
                ),
            )
        pipe.zadd(self.s.key("scenes"), {scene_id: now})
        pipe.execute()
        self.event(scene_id, "scene_queued", shots=len(jobs), quality=quality)

    def delete_scene(self, scene_id: str) -> None:
        shots = self.scene(scene_id).get("shots", []) if self.exists(scene_id) else []
        keys = [self.scene_key(scene_id), self.events_key(scene_id)]
        keys += [self.shot_key(scene_id, s) for s in shots]
        keys += [self.preview_key(scene_id, s) for s in shots]
        self.r.delete(*keys)
        self.r.zrem(self.s.key("scenes"), scene_id)

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
        fields["updated"] = time.time()
        self.r.hset(self.scene_key(scene_id), mapping=_encode(fields))
        if event:
            self.event(
                scene_id, event, **{k: v for k, v in fields.items() if k in {"state", "error"}}
            )

    def list_scenes(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.r.zrevrange(self.s.key("scenes"), 0, limit - 1)
        out = []
        for scene_id in ids:
            raw = self.r.hmget(
                self.scene_key(scene_id), ["id", "title", "state", "quality", "created", "shots"]
            )
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
        fields["updated"] = time.time()
        self.r.hset(self.shot_key(scene_id, shot_id), mapping=_encode(fields))
        if event:
            data = {
                k: v
                for k, v in fields.items()
                if k in {"state", "node", "error", "progress", "attempts"}
            }
            self.event(scene_id, event, shot=shot_id, **data)

    def log_attempt(
        self, scene_id: str, shot_id: str, entry: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Append ``entry`` to the shot's attempt log and return the whole log."""
        log = self.shot(scene_id, shot_id).get("attempt_log", []) or []
        log.append(entry)
        self.update_shot(scene_id, shot_id, attempt_log=log, attempts=len(log))
        return log

    # previews
    def preview_key(self, scene_id: str, shot_id: str) -> str:
        return self.s.key("preview", scene_id, shot_id)

    def set_preview(self, scene_id: str, shot_id: str, image: bytes, mime: str, path: str) -> bool:
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
        pipe.hset(
            self.shot_key(scene_id, shot_id),
            mapping=_encode({"preview": path, "preview_at": now, "updated": now}),
        )
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
        """The scene as ``farm status --json`` prints it."""
        scene = self.scene(scene_id)
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
                "take": s.get("take", 0),
                "gate": s.get("gate"),
                "preview": s.get("preview"),
                "preview_at": s.get("preview_at"),
            }
            for s in self.shots(scene_id)
        ]
        return {
            "id": scene["id"],
            "title": scene.get("title", ""),
            "state": scene["state"],
            "paused": scene.get("paused") == "1",
            "quality": scene.get("quality"),
            "shots": shots,
            "outputs": scene.get("outputs", {}),
            "metrics": scene.get("metrics", {}),
            "submission": scene.get("submission"),
            "created": scene.get("created", 0.0),
            "updated": scene.get("updated", 0.0),
        }
