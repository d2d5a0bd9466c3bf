"""Submissions: scenes sent on a Redis stream (protocol version 1), and ``farm ingest``, the
service that validates each one and enqueues its scene exactly once.

Keys (under the settings' prefix, ``farm`` by default)::

    farm:submissions            stream of {submission, body}; read by consumer group ``ingest``
    farm:submission:{id}        hash: the decision (state, scene, errors, reason, message, at,
                                duplicates, client); expires FARM_SUBMISSION_TTL after a write
    farm:submission:{id}:lock   held while one ingest decides submission {id}
    farm:submissions:dead       stream of every rejected message (capped)

:func:`read_submission` is pure: a stream entry in, a :class:`Submission` with every problem
(``$.path: message``, paths into the body) out. :class:`Ingest` is the consumer;
:func:`pack_submission`, :func:`send_submission` and :func:`wait_status` are the sending
side (``farm submit``, ``farm demo``). The protocol is in docs/submissions.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError
from PIL import Image, UnidentifiedImageError

from farm import __version__
from farm.errors import InvalidInput, NoCapableNode
from farm.jsonfile import read_json
from farm.planning import place_any, plan_scene
from farm.runtime import Runtime
from farm.scene import IMAGE_SUFFIXES, Scene, parse_scene
from farm.settings import Settings
from farm.state import connect
from farm.submit import enqueue

log = logging.getLogger(__name__)

VERSION = 1
GROUP = "ingest"
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.(png|jpg|jpeg|webp)", re.IGNORECASE)
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
BODY_FIELDS = ("version", "submission", "scene", "files", "replace", "client")
CLIENT_MAX_KEYS, CLIENT_MAX_CHARS = 32, 1000
DEAD_MAXLEN = 10_000
DEAD_BODY_BYTES = 1024 * 1024
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


def stream_key(settings: Settings) -> str:
    return settings.key("submissions")


def dead_key(settings: Settings) -> str:
    return settings.key("submissions", "dead")


def status_key(settings: Settings, submission_id: str) -> str:
    return settings.key("submission", submission_id)


def lock_key(settings: Settings, submission_id: str) -> str:
    return settings.key("submission", submission_id, "lock")


def submission_folder(settings: Settings, submission_id: str) -> Path:
    """Where a submission's attachments are written (its scene's relative paths resolve here)."""
    return settings.storage / "submissions" / submission_id


# -- reading a message (pure) ------------------------------------------------------------


@dataclass
class Submission:
    """One stream entry as read: what was usable, and every problem found."""

    id: str | None = None
    scene: Any = None
    files: dict[str, bytes] = field(default_factory=dict)
    replace: bool = False
    client: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def scene_id(self) -> str:
        value = self.scene.get("id") if isinstance(self.scene, dict) else None
        return value if isinstance(value, str) else ""


def read_submission(fields: Mapping[Any, Any], settings: Settings) -> Submission:
    """Read one stream entry (``submission`` and ``body`` fields, bytes or text) against
    protocol version 1; every problem is listed, none raised."""
    fields = {_text(k): v for k, v in fields.items()}
    sub = Submission()
    problems = sub.problems
    given = fields.get("submission")
    if given is not None:
        text = _utf8(given)
        if text is not None and ID.fullmatch(text):
            sub.id = text
        else:
            shown = _show(given if text is None else text)
            problems.append(f"$.submission: the entry's submission field {shown} {_ID_RULE}")
    data = _read_body(fields.get("body"), settings, problems)
    if data is None:
        if given is None:
            problems.insert(0, "$.submission: the entry has no submission field; " + _ID_HINT)
        return sub
    _read_id(data.get("submission"), given, sub)
    unknown = sorted(set(data) - set(BODY_FIELDS))
    if unknown:
        problems.append(f"$: unknown field(s) {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(BODY_FIELDS)}")  # fmt: skip
    version = data.get("version")
    if type(version) is not int or version != VERSION:
        problems.append(
            "$.version: is required; this farm reads version 1" if version is None
            else f"$.version: {_show(version)} is not supported; this farm reads version 1"
        )  # fmt: skip
        return sub  # another version's body means something else: read no further
    _read_scene(data, sub)
    sub.files = read_files(data.get("files"), settings, problems)
    sub.replace = _read_replace(data.get("replace", False), problems)
    sub.client = _read_client(data.get("client", {}), problems)
    if isinstance(sub.scene, dict):
        problems += start_image_problems(sub.scene, sub.files)
        problems += scene_problems(sub.scene)
    return sub


_ID_RULE = "must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
_ID_HINT = "send the submission id in both the entry's submission field and the body"


def _read_body(body: Any, settings: Settings, problems: list[str]) -> dict[str, Any] | None:
    """The body as a JSON object, or None with the reason in ``problems``."""
    if body is None:
        problems.append("$: the entry has no body field; send the submission as JSON text in body")
        return None
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if len(raw) > settings.submission_max_bytes:
        problems.append(
            f"$: the body is {len(raw)} bytes, over the limit of {settings.submission_max_bytes}"
            " (FARM_SUBMISSION_MAX_BYTES); attach smaller images or split the scene"
        )
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.append(f"$: the body is not UTF-8 text ({exc}); send JSON text")
        return None
    except json.JSONDecodeError as exc:
        problems.append(
            f"$: the body is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        )
        return None
    except RecursionError:
        problems.append("$: the body is nested too deeply to read; send a plain scene")
        return None
    if not isinstance(data, dict):
        problems.append(
            f"$: the body must be a JSON object with version, submission and scene, not {_kind(data)}"
        )
        return None
    return data


def _read_id(value: Any, given: Any, sub: Submission) -> None:
    """Check the body's submission id against the entry's; use it when the entry has none."""
    if value is None:
        sub.problems.append(f"$.submission: is required; {_ID_HINT}")
    elif not isinstance(value, str) or not ID.fullmatch(value):
        sub.problems.append(f"$.submission: {_show(value)} {_ID_RULE}")
    elif given is None:
        sub.id = value
        sub.problems.append(f"$.submission: the entry has no submission field; {_ID_HINT}")
    elif sub.id is not None and value != sub.id:
        sub.problems.append(
            f"$.submission: {value!r} differs from the entry's submission field {sub.id!r};"
            " send the same id in both"
        )


def _read_scene(data: dict[str, Any], sub: Submission) -> None:
    if "scene" not in data:
        sub.problems.append("$.scene: is required; give the scene to render "
                            "(farm/schemas/scene-v1.schema.json)")  # fmt: skip
    elif not isinstance(data["scene"], dict):
        sub.problems.append(f"$.scene: must be a scene object, not {_kind(data['scene'])}")
    else:
        sub.scene = data["scene"]


def read_files(value: Any, settings: Settings, problems: list[str]) -> dict[str, bytes]:
    """The attachments that are valid images, decoded; a problem for each other one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(
            f"$.files: must be an object of file name → base64 data, not {_kind(value)}"
        )
        return {}
    out: dict[str, bytes] = {}
    for name, data in value.items():
        where = f"$.files[{name!r}]"
        if not FILE_NAME.fullmatch(name):
            problems.append(
                f"{where}: {name!r} is not a bare image file name; use up to 100 letters, digits,"
                " '.', '_' or '-' (no folders) ending in .png, .jpg, .jpeg or .webp"
            )
            continue
        if not isinstance(data, str):
            problems.append(f"{where}: must be base64 text, not {_kind(data)}")
            continue
        try:
            blob = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            problems.append(f"{where}: is not valid base64 ({exc}); send the file's bytes in "
                            "standard base64, without line breaks")  # fmt: skip
            continue
        if len(blob) > settings.submission_max_file_bytes:
            problems.append(
                f"{where}: {len(blob)} bytes is over the limit of "
                f"{settings.submission_max_file_bytes} (FARM_SUBMISSION_MAX_FILE_BYTES); "
                "attach a smaller image"
            )
            continue
        problem = image_problem(blob)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        out[name] = blob
    return out


def image_problem(blob: bytes) -> str | None:
    """Why ``blob`` is not a PNG, JPEG or WebP image Pillow can open (None: it is one)."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            kind = image.format
            image.verify()
    except UnidentifiedImageError:
        return "is not an image (Pillow cannot tell its format); attach a PNG, JPEG or WebP file"
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ...) on junk
        return (f"is a damaged image ({type(exc).__name__}: {exc}); "
                "attach a PNG, JPEG or WebP file")  # fmt: skip
    if kind not in IMAGE_FORMATS:
        return f"is a {kind} image; attach a PNG, JPEG or WebP file"
    return None


def _read_replace(value: Any, problems: list[str]) -> bool:
    if isinstance(value, bool):
        return value
    problems.append(f"$.replace: must be true or false, not {_show(value)}")
    return False


def _read_client(value: Any, problems: list[str]) -> dict[str, str]:
    rule = f"at most {CLIENT_MAX_KEYS} names with strings of at most {CLIENT_MAX_CHARS} characters"
    if not isinstance(value, dict) or len(value) > CLIENT_MAX_KEYS:
        what = _kind(value) if not isinstance(value, dict) else f"{len(value)} names"
        problems.append(f'$.client: must be an object of {rule} (e.g. {{"app": "blender"}}), '
                        f"not {what}")  # fmt: skip
        return {}
    bad = [k for k, v in value.items()
           if len(k) > CLIENT_MAX_CHARS or not isinstance(v, str) or len(v) > CLIENT_MAX_CHARS]  # fmt: skip
    for name in bad:
        problems.append(f"$.client[{name[:80]!r}]: must be a string of at most "
                        f"{CLIENT_MAX_CHARS} characters, not {_show(value[name])}")  # fmt: skip
    return {} if bad else dict(value)


def start_image_problems(scene: dict[str, Any], files: Mapping[str, bytes]) -> list[str]:
    """Each shot's ``start_image`` must name an attached file (a bare name)."""
    problems: list[str] = []
    shots = scene.get("shots")
    for i, shot in enumerate(shots if isinstance(shots, list) else []):
        start = shot.get("start_image") if isinstance(shot, dict) else None
        if not isinstance(start, str) or not start:
            continue  # the schema reports a wrong type
        where = f"$.scene.shots[{i}].start_image"
        if "/" in start or "\\" in start or ".." in start or Path(start).is_absolute():
            problems.append(f"{where}: {start!r} must be the bare name of a file attached under "
                            "files (no folders or absolute paths)")  # fmt: skip
        elif start not in files:
            problems.append(f"{where}: {start!r} is not attached to the submission; "
                            "add it under files, or remove start_image")  # fmt: skip
    return problems


def scene_problems(scene: dict[str, Any], base_dir: Path | None = None) -> list[str]:
    """The scene's validation problems, with paths under ``$.scene`` (files not checked)."""
    try:
        parse_scene(scene, base_dir, check_files=False)
    except InvalidInput as exc:
        return under_scene(exc)
    return []


def under_scene(exc: InvalidInput) -> list[str]:
    """A scene error's problems with their paths moved under ``$.scene``."""
    problems = exc.problems or [f"$: {exc}"]
    return ["$.scene" + p[1:] if p.startswith("$") else f"$.scene: {p}" for p in problems]


def entry_submission_id(fields: Mapping[Any, Any]) -> str | None:
    """The entry's submission field, when it is a usable id (read without the body)."""
    for key, value in fields.items():
        if _text(key) == "submission":
            text = _utf8(value)
            return text if text is not None and ID.fullmatch(text) else None
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _utf8(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


# -- the service -------------------------------------------------------------------------


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
        of that), then read new ones."""
        self._handle_signals()
        log.info("ingest %s reading %s (group %s)", self.name, self.stream, GROUP)
        backoff, recover, next_claim = 0.0, True, 0.0
        while not self.stopping:
            try:
                if recover:
                    self.ensure_group()
                    self.drain_own()
                    recover = False
                if time.monotonic() >= next_claim:
                    self.claim()
                    next_claim = time.monotonic() + self.s.ingest_claim_idle / 2
                read = self.read_new(None if once else BLOCK_MS)
                backoff = 0.0
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
            if _text(start) == "0-0":
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
            self.handle(entry_id, fields, deliveries.get(_text(entry_id), 1))

    def _deliveries(self, ids: list[Any]) -> dict[str, int]:
        """How many times each entry was delivered (XPENDING)."""
        pipe = self.r.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.stream, GROUP, min=entry_id, max=entry_id, count=1)
        rows = [row for found in pipe.execute() for row in found]
        return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}

    # one message
    def handle(self, entry_id: Any, fields: Mapping[Any, Any], deliveries: int = 1
               ) -> Decision | None:  # fmt: skip
        """Decide one stream entry. None: nothing decided (the entry was deleted from the
        stream, or another ingest holds its submission: it stays pending and is claimed
        again later)."""
        message = _text(entry_id)
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

    @staticmethod
    def _materialise(sub: Submission, folder: Path) -> Scene:
        """Write the attachments to ``folder`` and parse the scene there (paths resolve)."""
        if sub.files:
            folder.mkdir(parents=True, exist_ok=True)
        for name, blob in sub.files.items():
            part = folder / f".{name}.part"
            part.write_bytes(blob)
            part.replace(folder / name)
        return parse_scene(sub.scene, base_dir=folder)

    def capability_problems(self, scene: Scene) -> list[str]:
        """One problem for each shot no live node can render."""
        nodes = self.rt.registry.infos()
        problems = []
        for i, variants in enumerate(plan_scene(scene)):
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
        body = next((v for k, v in fields.items() if _text(k) == "body"), b"")
        body = body.encode() if isinstance(body, str) else bytes(body)
        pipe = self.r.pipeline(transaction=True)
        if sub.id is not None:
            self._status(pipe, message, sub, "rejected", reason)
        pipe.xadd(
            dead_key(self.s),
            {"submission": sub.id or "", "message": message, "reason": str(reason),
             "errors": json.dumps(sub.problems), "body": cut(body, DEAD_BODY_BYTES), "at": _now()},
            maxlen=DEAD_MAXLEN, approximate=True,
        )  # fmt: skip
        pipe.xack(self.stream, GROUP, message)
        pipe.execute()
        n = len(sub.problems)
        log.warning("rejected submission %s (%s): %d error%s", sub.id or f"(no id, message {message})",
                    reason, n, "" if n == 1 else "s")  # fmt: skip
        for problem in sub.problems:
            log.info("  %s", problem[:500])
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


# -- the sending side --------------------------------------------------------------------


def pack_submission(
    scene_file: str | Path,
    submission_id: str | None = None,
    replace: bool = False,
    *,
    quality: str | None = None,
) -> dict[str, str]:
    """The stream entry (fields ``submission`` and ``body``) that submits ``scene_file``:
    each start image attached once, under its file name, and ``start_image`` rewritten to
    that name (``quality``: override the scene's). Raises :class:`InvalidInput` for an
    unreadable file, a bad id or a start image that cannot be attached; the scene itself is
    validated by ingest."""
    path = Path(scene_file)
    data = read_json(path, "scene file", InvalidInput)
    if quality is not None and isinstance(data, dict):
        data["quality"] = quality
    if submission_id is not None and not ID.fullmatch(submission_id):
        raise InvalidInput(f"submission id {submission_id!r} {_ID_RULE}")
    files: dict[str, str] = {}
    names: dict[Path, str] = {}
    problems: list[str] = []
    shots = data.get("shots") if isinstance(data, dict) else None
    for i, shot in enumerate(shots if isinstance(shots, list) else []):
        start = shot.get("start_image") if isinstance(shot, dict) else None
        if not isinstance(start, str) or not start:
            continue
        source = (path.resolve().parent / Path(start).expanduser()).resolve()
        if not start.lower().endswith(IMAGE_SUFFIXES):
            problems.append(f"$.shots[{i}].start_image: {start!r} must be a "
                            f"{', '.join(IMAGE_SUFFIXES)} image")  # fmt: skip
        elif not source.is_file():
            problems.append(f"$.shots[{i}].start_image: file {source} does not exist")
        else:
            if source not in names:
                names[source] = attachment_name(source.name, set(names.values()))
                files[names[source]] = base64.b64encode(source.read_bytes()).decode()
            shot["start_image"] = names[source]
    if problems:
        raise InvalidInput(f"cannot attach the start images of {path}", problems)
    sid = submission_id or new_submission_id(data)
    body = {"version": VERSION, "submission": sid, "scene": data, "files": files,
            "replace": replace, "client": {"app": "farm", "version": __version__}}  # fmt: skip
    return {"submission": sid, "body": json.dumps(body)}


def attachment_name(file_name: str, taken: set[str]) -> str:
    """A valid attachment name for ``file_name`` that is not in ``taken``."""
    stem, suffix = os.path.splitext(file_name)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip("._-")[:90] or "image"
    name, n = f"{stem}{suffix.lower()}", 2
    while name in taken:
        name, n = f"{stem}-{n}{suffix.lower()}", n + 1
    return name


def new_submission_id(scene: Any) -> str:
    """A fresh submission id: the scene id (when it has a usable one) and a random suffix."""
    scene_id = scene.get("id") if isinstance(scene, dict) else None
    suffix = uuid.uuid4().hex[:12]
    if isinstance(scene_id, str) and ID.fullmatch(scene_id):
        return f"{scene_id[:48]}-{suffix}"
    return f"submission-{suffix}"


def send_submission(client: redis.Redis, settings: Settings, fields: Mapping[str, str]) -> str:
    """XADD a packed submission; returns its stream entry id."""
    return _text(client.xadd(stream_key(settings), dict(fields)))


def submission_status(client: redis.Redis, settings: Settings, submission_id: str
                      ) -> dict[str, Any] | None:  # fmt: skip
    """The decision on a submission (errors and client parsed), or None while undecided."""
    raw = {
        _text(k): _text(v) for k, v in client.hgetall(status_key(settings, submission_id)).items()
    }
    if raw.get("state") not in ("accepted", "rejected"):
        return None
    return {
        "submission": submission_id,
        "state": raw["state"],
        "scene": raw.get("scene", ""),
        "reason": raw.get("reason", ""),
        "errors": json.loads(raw.get("errors") or "[]"),
        "message": raw.get("message", ""),
        "at": float(raw.get("at") or 0),
        "duplicates": int(raw.get("duplicates") or 0),
        "client": json.loads(raw.get("client") or "{}"),
    }


def wait_status(client: redis.Redis, settings: Settings, submission_id: str, timeout: float,
                poll: float = 0.2) -> dict[str, Any] | None:  # fmt: skip
    """Poll until ingest has decided ``submission_id``; None when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        status = submission_status(client, settings, submission_id)
        if status is not None or time.monotonic() >= deadline:
            return status
        time.sleep(poll)


def ingest_running(client: redis.Redis, settings: Settings, within: float = 10.0) -> bool:
    """Whether some ingest consumer has read the stream in the last ``within`` seconds."""
    try:
        consumers = client.xinfo_consumers(stream_key(settings), GROUP)
    except redis.ResponseError:  # no stream or no group: no ingest ever ran
        return False
    return any(int(c["idle"]) < within * 1000 for c in consumers)
