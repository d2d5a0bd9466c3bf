"""``farm ingest``: the service that reads the submissions stream (consumer group
``ingest``), validates each entry (:func:`farm.submission.read_submission`), enqueues its
scene exactly once, writes the decision, and trims from the stream what every consumer
group has acknowledged. The protocol and its keys are in
:mod:`farm.submission` and docs/submissions.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

from farm.catalog import Catalog
from farm.errors import InvalidInput, NoCapableNode
from farm.planning import place_any, plan_scene
from farm.problems import capped
from farm.runtime import Runtime
from farm.scene import Scene, parse_scene
from farm.state import connect
from farm.submission import (
    GROUP,
    Submission,
    as_text,
    dead_key,
    entry_submission_id,
    lock_key,
    read_submission,
    status_key,
    stream_key,
    submission_folder,
    under_scene,
)
from farm.submit import enqueue, resume
from farm.templates import publish

log = logging.getLogger(__name__)

#: the dead-letter stream keeps about this many entries (XADD MAXLEN ~) ...
DEAD_MAXLEN = 1_000
#: ... each with at most this much of the body as sent, so it stays under DEAD_MAXLEN x
#: (DEAD_BODY_BYTES + the capped errors, see farm.problems): about 42 MB at most
DEAD_BODY_BYTES = 16 * 1024
#: seconds between two trims of the entries every group has acknowledged
TRIM_SECONDS = 2.0
LOCK_SECONDS = 120
READ_COUNT, BLOCK_MS = 10, 1000
MAX_BACKOFF = 10.0
#: errors that mean "Redis (or the broker) is away": back off, acknowledge nothing
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OperationalError)


class Reason(StrEnum):
    """Why a submission was rejected."""

    INVALID = "invalid"  # the message or its scene fails validation
    REFUSED = "refused"  # valid, but the farm cannot take it now
    INTERNAL = "internal"  # ingest failed unexpectedly (its log has the traceback)
    POISON = "poison"  # delivered more than FARM_INGEST_MAX_DELIVERIES times


@dataclass
class Decision:
    """What ingest decided about one message."""

    state: str  # accepted, rejected or duplicate
    submission: str | None = None
    reason: str = ""
    errors: list[str] = field(default_factory=list)
    scene: str = ""
    shots: int = 0


def default_name() -> str:
    """The default consumer name: host and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Ingest:
    """One consumer of the submissions stream (group ``ingest``): decides each message once
    (accepted and enqueued, rejected, or a duplicate of an id already decided), writes the
    submission's status and acknowledges the message in one transaction."""

    def __init__(self, rt: Runtime, name: str | None = None, client: redis.Redis | None = None):
        self.rt, self.s = rt, rt.settings
        self.name = name or default_name()
        self.r = client or connect(self.s, check=False, decode=False)
        self.stream = stream_key(self.s)
        self._stop = threading.Event()
        self._trim_failed = False
        self._published: Catalog | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop after the message being decided (safe from a signal handler)."""
        self._stop.set()

    # the loop
    def run(self, once: bool = False) -> None:
        """Serve until :meth:`stop` (SIGTERM, SIGINT) or, with ``once``, until nothing waits.

        At start and after Redis comes back: re-read this consumer's own unacknowledged
        entries, then claim those idle longer than FARM_INGEST_CLAIM_IDLE (again every half
        of that), then read new ones. Every TRIM_SECONDS (and before ``once`` ends), delete
        the entries every group has acknowledged (:meth:`trim`)."""
        self._handle_signals()
        log.info("ingest %s reading %s (group %s)", self.name, self.stream, GROUP)
        backoff, recover, next_claim, next_trim = 0.0, True, 0.0, 0.0
        while not self.stopping:
            try:
                if recover:
                    self._published = None
                    self.ensure_group()
                    self.drain_own()
                    recover = False
                self.publish_templates()
                if time.monotonic() >= next_claim:
                    self.claim()
                    next_claim = time.monotonic() + self.s.ingest_claim_idle / 2
                read = self.read_new(None if once else BLOCK_MS)
                backoff = 0.0
                if time.monotonic() >= next_trim or (once and not read):
                    self.trim()
                    next_trim = time.monotonic() + TRIM_SECONDS
                if once and not read:
                    break
            except UNAVAILABLE as exc:
                backoff = min(MAX_BACKOFF, backoff * 2 or 0.5)
                log.warning("Redis is unavailable (%s); trying again in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                recover = True
            except Exception as exc:  # a Redis error reply, or a bug: never die, retry later
                if "NOGROUP" in str(exc):
                    log.warning("the stream or its group is gone (%s); creating it again", exc)
                else:
                    log.exception("ingest failed; trying again in %.1fs", MAX_BACKOFF)
                    self._stop.wait(MAX_BACKOFF)
                recover = True
        log.info("ingest %s stopped", self.name)

    def publish_templates(self) -> None:
        """Publish the templates this ingest accepts (the Blender add-on's list), again
        when the catalogue changed (``FARM_CATALOG`` edited) or Redis came back."""
        catalog = self.rt.catalog
        if catalog is not self._published:
            publish(self.r, self.s.keys.templates(), catalog)
            self._published = catalog

    def _handle_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())

    def ensure_group(self) -> None:
        """Create the group at id 0 (so entries written before any ingest ran are read)."""
        try:
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def trim(self) -> int:
        """Delete the entries every consumer group of the stream has acknowledged
        (``XTRIM MINID ~``, see :func:`trim_point`); how many went. Never an entry that a
        group has not read yet or has pending. ``~`` deletes whole stream nodes only, so up
        to one node of acknowledged entries stays (fewer than ``stream-node-max-entries``,
        100, of fewer than ``stream-node-max-bytes``, 4 KB: a bigger entry has a node of
        its own)."""
        try:
            groups = self.r.xinfo_groups(self.stream)  # before XPENDING: see trim_point
            pipe = self.r.pipeline(transaction=False)
            for group in groups:
                pipe.xpending(self.stream, group["name"])
            summaries = pipe.execute()
            point = trim_point(
                [(g["last-delivered-id"], p["min"] if p["pending"] else None)
                 for g, p in zip(groups, summaries, strict=True)]
            )  # fmt: skip
            return 0 if point is None else self.r.xtrim(self.stream, minid=point, approximate=True)
        except redis.ResponseError as exc:  # no stream (read_new recreates it), or an ACL
            if "no such key" not in str(exc) and not self._trim_failed:  # without XTRIM
                log.warning("cannot trim %s (%s); acknowledged entries stay in it", self.stream,
                            exc)  # fmt: skip
                self._trim_failed = True
            return 0

    def drain_own(self) -> None:
        """Decide the entries this consumer read before and never acknowledged."""
        start: Any = "0"
        while not self.stopping:
            reply = self.r.xreadgroup(GROUP, self.name, {self.stream: start}, count=READ_COUNT)
            entries = reply[0][1] if reply else []
            if not entries:
                return
            self._handle_all(entries, self._deliveries([e[0] for e in entries]))
            start = entries[-1][0]

    def claim(self) -> None:
        """Claim entries other (dead) consumers left unacknowledged for longer than
        FARM_INGEST_CLAIM_IDLE, and decide them."""
        start: Any = "0-0"
        idle_ms = int(self.s.ingest_claim_idle * 1000)
        while not self.stopping:
            reply = self.r.xautoclaim(self.stream, GROUP, self.name, idle_ms, start, READ_COUNT)
            start, entries = reply[0], [e for e in reply[1] if e]
            if entries:
                self._handle_all(entries, self._deliveries([e[0] for e in entries]))
            if as_text(start) == "0-0":
                return

    def read_new(self, block_ms: int | None) -> int:
        """Read and decide up to READ_COUNT new entries; how many were read."""
        reply = self.r.xreadgroup(
            GROUP, self.name, {self.stream: ">"}, count=READ_COUNT, block=block_ms
        )
        entries = reply[0][1] if reply else []
        self._handle_all(entries, {})
        return len(entries)

    def _handle_all(self, entries: list[tuple[Any, Any]], deliveries: dict[str, int]) -> None:
        for entry_id, fields in entries:
            if self.stopping:
                return
            self.handle(entry_id, fields, deliveries.get(as_text(entry_id), 1))

    def _deliveries(self, ids: list[Any]) -> dict[str, int]:
        """How many times each entry was delivered (XPENDING)."""
        pipe = self.r.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.stream, GROUP, min=entry_id, max=entry_id, count=1)
        rows = [row for found in pipe.execute() for row in found]
        return {as_text(row["message_id"]): int(row["times_delivered"]) for row in rows}

    # one message
    def handle(self, entry_id: Any, fields: Mapping[Any, Any], deliveries: int = 1
               ) -> Decision | None:  # fmt: skip
        """Decide one stream entry. None: nothing decided (the entry was deleted from the
        stream, or another ingest holds its submission: it stays pending and is claimed
        again later)."""
        message = as_text(entry_id)
        if not fields:  # deleted from the stream after it was delivered
            self.r.xack(self.stream, GROUP, message)
            return None
        sub, reason = self._read(message, fields, deliveries)
        if sub.id is None:
            return self._reject(message, fields, sub, reason or Reason.INVALID)
        lock = self.r.lock(lock_key(self.s, sub.id), timeout=LOCK_SECONDS, blocking=False)
        if not lock.acquire():
            log.info("submission %s is being decided by another ingest; message %s waits",
                     sub.id, message)  # fmt: skip
            return None
        try:
            state = self.r.hget(status_key(self.s, sub.id), "state")
            if state in (b"accepted", b"rejected"):
                return self._duplicate(message, sub, state.decode())
            if reason is not None:
                return self._reject(message, fields, sub, reason)
            try:
                return self._decide(message, fields, sub)
            except UNAVAILABLE:
                raise
            except Exception as exc:
                log.exception("submission %s (message %s) failed in ingest", sub.id, message)
                if self._enqueued(sub):  # it went in: decided (accepted) on a later delivery
                    raise
                shutil.rmtree(submission_folder(self.s, sub.id), ignore_errors=True)
                sub.problems = [_internal(exc)]
                return self._reject(message, fields, sub, Reason.INTERNAL)
        finally:
            with contextlib.suppress(redis.exceptions.LockError, *UNAVAILABLE):
                lock.release()

    def _read(self, message: str, fields: Mapping[Any, Any], deliveries: int
              ) -> tuple[Submission, Reason | None]:  # fmt: skip
        """The submission and, when it is to be rejected already, why."""
        limit = self.s.ingest_max_deliveries
        if deliveries > limit:
            log.error("message %s was delivered %d times; rejecting it as poison", message,
                      deliveries)  # fmt: skip
            problem = (f"$: delivered {deliveries} times without a decision (more than "
                       f"FARM_INGEST_MAX_DELIVERIES = {limit}); the ingest log says why")  # fmt: skip
            return Submission(id=entry_submission_id(fields), problems=[problem]), Reason.POISON
        try:
            sub = read_submission(fields, self.s)
        except Exception as exc:
            log.exception("message %s could not be read", message)
            return Submission(id=entry_submission_id(fields), problems=[_internal(exc)]), (
                Reason.INTERNAL
            )
        return sub, Reason.INVALID if sub.problems else None

    def _decide(self, message: str, fields: Mapping[Any, Any], sub: Submission) -> Decision:
        """Enqueue a valid submission's scene (once), or refuse it."""
        assert sub.id is not None
        rt = self.rt
        if self._enqueued(sub):  # by an ingest that died before writing the status
            shots = len(rt.state.scene(sub.scene_id).get("shots", []))
            log.info("submission %s was enqueued before a restart", sub.id)
            if resume(rt, sub.scene_id):  # it died before every shot had started: finish
                log.warning("submission %s: finished the enqueue of scene %s", sub.id,
                            sub.scene_id)  # fmt: skip
            return self._accept(message, sub, shots)
        folder = submission_folder(self.s, sub.id)
        try:
            scene = self._materialise(sub, folder)
        except InvalidInput as exc:
            shutil.rmtree(folder, ignore_errors=True)
            sub.problems = under_scene(exc)
            return self._reject(message, fields, sub, Reason.INVALID)
        refusal = self.capability_problems(scene)
        if not refusal:
            try:
                jobs = enqueue(scene, rt, replace=sub.replace, submission=sub.id)
            except (InvalidInput, NoCapableNode) as exc:
                refusal = [_refusal(exc)]
        if refusal:
            shutil.rmtree(folder, ignore_errors=True)
            sub.problems = refusal
            return self._reject(message, fields, sub, Reason.REFUSED)
        return self._accept(message, sub, len(jobs))

    def _enqueued(self, sub: Submission) -> bool:
        """Whether the scene record names this submission (it was enqueued)."""
        key = self.rt.state.scene_key(sub.scene_id)
        return bool(sub.scene_id) and self.rt.redis.hget(key, "submission") == sub.id

    def _materialise(self, sub: Submission, folder: Path) -> Scene:
        """Write the attachments to ``folder`` and parse the scene there (paths resolve)."""
        if sub.files:
            folder.mkdir(parents=True, exist_ok=True)
        for name, blob in sub.files.items():
            part = folder / f".{name}.part"
            part.write_bytes(blob)
            part.replace(folder / name)
        return parse_scene(sub.scene, base_dir=folder, templates=self.rt.catalog.templates)

    def capability_problems(self, scene: Scene) -> list[str]:
        """One problem for each shot no live node can render."""
        nodes = self.rt.registry.infos()
        problems = []
        for i, variants in enumerate(plan_scene(scene, catalog=self.rt.catalog)):
            try:
                place_any(variants, nodes)
            except NoCapableNode as exc:
                problems.append(f"$.scene.shots[{i}]: {exc}")
        return problems

    # decisions: status, dead letter and acknowledgement in one transaction
    def _accept(self, message: str, sub: Submission, shots: int) -> Decision:
        pipe = self.r.pipeline(transaction=True)
        self._status(pipe, message, sub, "accepted", "")
        pipe.xack(self.stream, GROUP, message)
        pipe.execute()
        log.info("accepted submission %s → scene %s (%d shot%s)", sub.id, sub.scene_id, shots,
                 "" if shots == 1 else "s")  # fmt: skip
        return Decision("accepted", sub.id, scene=sub.scene_id, shots=shots)

    def _reject(self, message: str, fields: Mapping[Any, Any], sub: Submission, reason: Reason
                ) -> Decision:  # fmt: skip
        body = next((v for k, v in fields.items() if as_text(k) == "body"), b"")
        body = body.encode() if isinstance(body, str) else bytes(body)
        sub.problems = capped(sub.problems)
        pipe = self.r.pipeline(transaction=True)
        if sub.id is not None:
            self._status(pipe, message, sub, "rejected", reason)
        pipe.xadd(
            dead_key(self.s),
            {"submission": sub.id or "", "message": message, "reason": str(reason),
             "errors": json.dumps(sub.problems), "body": cut(body, DEAD_BODY_BYTES),
             "body_bytes": len(body), "at": _now()},
            maxlen=DEAD_MAXLEN, approximate=True,
        )  # fmt: skip
        pipe.xack(self.stream, GROUP, message)
        pipe.execute()
        n = len(sub.problems)
        log.warning("rejected submission %s (%s): %d error%s", sub.id or f"(no id, message {message})",
                    reason, n, "" if n == 1 else "s")  # fmt: skip
        for problem in sub.problems:
            log.info("  %s", problem)
        return Decision("rejected", sub.id, str(reason), list(sub.problems), sub.scene_id)

    def _duplicate(self, message: str, sub: Submission, state: str) -> Decision:
        assert sub.id is not None
        key = status_key(self.s, sub.id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(key, "duplicates", 1)
        pipe.expire(key, self.s.submission_ttl)
        pipe.xack(self.stream, GROUP, message)
        pipe.execute()
        log.info("duplicate submission %s (message %s): already %s", sub.id, message, state)
        return Decision("duplicate", sub.id, scene=sub.scene_id)

    def _status(self, pipe: Any, message: str, sub: Submission, state: str, reason: str) -> None:
        assert sub.id is not None
        key = status_key(self.s, sub.id)
        fields = {"state": state, "errors": json.dumps(sub.problems), "reason": reason,
                  "message": message, "at": _now(), "duplicates": 0,
                  "client": json.dumps(sub.client)}  # fmt: skip
        if sub.scene_id:
            fields["scene"] = sub.scene_id
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.s.submission_ttl)


def trim_point(groups: list[tuple[Any, Any]]) -> str | None:
    """The ``MINID`` to trim the stream to: every entry below it has been read and
    acknowledged by every group. ``groups`` holds each group's last delivered id and its
    oldest pending id (None: nothing pending). None: no group, trim nothing.

    Read the last delivered ids before the pending ones: an entry delivered in between is
    newer than the last delivered id read, so it is kept either way."""
    keep = []
    for last_delivered, oldest_pending in groups:
        ms, seq = _stream_id(last_delivered)
        keep.append((ms, seq + 1))  # the next entry may be unread
        if oldest_pending is not None:
            keep.append(_stream_id(oldest_pending))
    if not keep:
        return None
    ms, seq = min(keep)
    return f"{ms}-{seq}"


def _stream_id(value: Any) -> tuple[int, int]:
    ms, _, seq = as_text(value).partition("-")
    return int(ms), int(seq or 0)


def _internal(exc: BaseException) -> str:
    return (f"$: internal error in ingest ({type(exc).__name__}: {str(exc)[:300]}); "
            "the ingest log has the traceback")  # fmt: skip


def _refusal(exc: InvalidInput | NoCapableNode) -> str:
    """Why the farm refused a valid scene (the scene id is in use, or no node can render)."""
    if isinstance(exc, NoCapableNode):
        return f"$.scene: {exc}"
    return "$.scene.id: " + str(exc).replace("pass --replace", 'send "replace": true')


def cut(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``data``, not ending inside a UTF-8 character."""
    if len(data) <= limit:
        return data
    end = limit
    while end > limit - 3 and data[end] & 0xC0 == 0x80:  # a continuation byte
        end -= 1
    return data[:end]


def _now() -> str:
    return f"{time.time():.3f}"
