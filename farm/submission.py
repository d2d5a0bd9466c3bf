"""Submissions, protocol version 1: the stream entry that carries a scene to the farm, read
(pure) and sent.

Keys (under the settings' prefix, ``farm`` by default)::

    farm:submissions            stream of {submission, body}; read by consumer group ``ingest``
    farm:submission:{id}        hash: the decision (state, scene, errors, reason, message, at,
                                duplicates, client); expires FARM_SUBMISSION_TTL after a write
    farm:submission:{id}:lock   held while one ingest decides submission {id}
    farm:submissions:dead       stream of every rejected message (capped)

:func:`read_submission` is pure: a stream entry in, a :class:`Submission` with every problem
(``$.path: message``, paths into the body) out. :func:`pack_submission`,
:func:`send_submission` and :func:`wait_status` are the sending side (``farm submit``,
``farm demo``). :mod:`farm.ingest` is the service that decides each entry. The protocol is
in docs/submissions.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from farm import __version__
from farm.errors import InvalidInput
from farm.images import image_problem
from farm.jsonfile import JSONTextError, decode, read_json
from farm.problems import capped, is_more, names, quoted, show
from farm.scene import parse_scene, start_image_problem
from farm.settings import Settings
from farm.studio import catalog_for

VERSION = 1
GROUP = "ingest"
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.(png|jpg|jpeg|webp)", re.IGNORECASE)
BODY_FIELDS = ("version", "submission", "scene", "files", "replace", "client")
CLIENT_MAX_KEYS, CLIENT_MAX_CHARS = 32, 1000


def stream_key(settings: Settings) -> str:
    return settings.keys.submissions()


def dead_key(settings: Settings) -> str:
    return settings.keys.dead_submissions()


def status_key(settings: Settings, submission_id: str) -> str:
    return settings.keys.submission(submission_id)


def lock_key(settings: Settings, submission_id: str) -> str:
    return settings.keys.submission_lock(submission_id)


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
        return value if isinstance(value, str) and ID.fullmatch(value) else ""


def read_submission(fields: Mapping[Any, Any], settings: Settings) -> Submission:
    """Read one stream entry (``submission`` and ``body`` fields, bytes or text) against
    protocol version 1; every problem is listed, none raised."""
    fields = {as_text(k): v for k, v in fields.items()}
    sub = Submission()
    problems = sub.problems
    given = fields.get("submission")
    if given is not None:
        text = _utf8(given)
        if text is not None and ID.fullmatch(text):
            sub.id = text
        else:
            shown = show(given if text is None else text)
            problems.append(f"$.submission: the entry's submission field {shown} {_ID_RULE}")
    data = _read_body(fields.get("body"), settings, problems)
    if data is None:
        if given is None:
            problems.insert(0, "$.submission: the entry has no submission field; " + _ID_HINT)
        return sub
    _read_id(data.get("submission"), given, sub)
    unknown = sorted(set(data) - set(BODY_FIELDS))
    if unknown:
        problems.append(f"$: unknown field(s) {names(unknown)}; "
                        f"allowed: {', '.join(BODY_FIELDS)}")  # fmt: skip
    version = data.get("version")
    if type(version) is not int or version != VERSION:
        problems.append(
            "$.version: is required; this farm reads version 1" if version is None
            else f"$.version: {show(version)} is not supported; this farm reads version 1"
        )  # fmt: skip
        return sub  # another version's body means something else: read no further
    _read_scene(data, sub)
    sub.files = read_files(data.get("files"), settings, problems)
    sub.replace = _read_replace(data.get("replace", False), problems)
    sub.client = _read_client(data.get("client", {}), problems)
    given = data.get("files")
    refused = set(given) - set(sub.files) if isinstance(given, dict) else set()
    problems += start_image_problems(sub.scene, sub.files, refused)
    if isinstance(sub.scene, dict):
        problems += scene_problems(sub.scene, templates=catalog_for(settings).templates)
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
        data = decode(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.append(f"$: the body is not UTF-8 text ({exc}); send JSON text")
        return None
    except JSONTextError as exc:
        problems.append(f"$: the body {exc}")
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
        sub.problems.append(f"$.submission: {show(value)} {_ID_RULE}")
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
    """The attachments with a valid name and size, base64-decoded; a problem for each other
    one (whether each is an image is checked with the shots that use it:
    :func:`start_image_problems`)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(
            f"$.files: must be an object of file name → base64 data, not {_kind(value)}"
        )
        return {}
    out: dict[str, bytes] = {}
    for name, data in value.items():
        where = f"$.files[{quoted(name)}]"
        if not FILE_NAME.fullmatch(name):
            problems.append(
                f"{where}: {show(name)} is not a bare image file name; use up to 100 letters, digits,"
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
        out[name] = blob
    return out


def _read_replace(value: Any, problems: list[str]) -> bool:
    if isinstance(value, bool):
        return value
    problems.append(f"$.replace: must be true or false, not {show(value)}")
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
        problems.append(f"$.client[{quoted(name)}]: must be a string of at most "
                        f"{CLIENT_MAX_CHARS} characters, not {show(value[name])}")  # fmt: skip
    return {} if bad else dict(value)


def start_image_problems(scene: Any, files: Mapping[str, bytes], refused: Collection[str] = ()
                         ) -> list[str]:  # fmt: skip
    """Each shot's ``start_image`` must be the bare name of an attached image; every
    attachment must be an image (:func:`farm.images.image_problem`, once per file). An
    attachment that is not is one problem at each shot that uses it (at ``$.files`` when
    none does). ``refused``: attachments :func:`read_files` reported already (bad base64,
    too big), not reported again as missing."""
    problems: list[str] = []
    bad = {name: p for name, blob in files.items() if (p := image_problem(blob))}
    used: set[str] = set()
    shots = scene.get("shots") if isinstance(scene, dict) else None
    for i, shot in enumerate(shots if isinstance(shots, list) else []):
        start = shot.get("start_image") if isinstance(shot, dict) else None
        if not isinstance(start, str) or not start:
            continue  # the schema reports a wrong type
        where = f"$.scene.shots[{i}].start_image"
        if "/" in start or "\\" in start or ".." in start or Path(start).is_absolute():
            problems.append(f"{where}: {show(start)} must be the bare name of a file attached under "
                            "files (no folders or absolute paths)")  # fmt: skip
        elif start in refused:
            continue  # its $.files problem says why
        elif start not in files:
            problems.append(f"{where}: {show(start)} is not attached to the submission; "
                            "add it under files, or remove start_image")  # fmt: skip
        elif start in bad:
            used.add(start)
            problems.append(f"{where}: the attached file {show(start)} {bad[start]}")
    problems += [f"$.files[{quoted(name)}]: {p}" for name, p in bad.items() if name not in used]
    return problems


def scene_problems(
    scene: dict[str, Any], base_dir: Path | None = None, templates: Collection[str] | None = None
) -> list[str]:
    """The scene's validation problems, with paths under ``$.scene`` (files not checked;
    ``templates``: the farm's, see :func:`farm.scene.parse_scene`)."""
    try:
        parse_scene(scene, base_dir, check_files=False, templates=templates)
    except InvalidInput as exc:
        return under_scene(exc)
    return []


def under_scene(exc: InvalidInput) -> list[str]:
    """A scene error's problems with their paths moved under ``$.scene``."""
    problems = exc.problems or [f"$: {exc}"]
    return [
        p if is_more(p) else "$.scene" + p[1:] if p.startswith("$") else f"$.scene: {p}"
        for p in problems
    ]


def entry_submission_id(fields: Mapping[Any, Any]) -> str | None:
    """The entry's submission field, when it is a usable id (read without the body)."""
    for key, value in fields.items():
        if as_text(key) == "submission":
            text = _utf8(value)
            return text if text is not None and ID.fullmatch(text) else None
    return None


def as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _utf8(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        return None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


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
    unreadable file, a bad id or a start image that is missing or not an image (checked as
    ``farm validate`` checks it); the rest of the scene is validated by ingest."""
    path = Path(scene_file)
    data = read_json(path, "scene file", InvalidInput)
    if quality is not None and isinstance(data, dict):
        data["quality"] = quality
    if submission_id is not None and not ID.fullmatch(submission_id):
        raise InvalidInput(f"submission id {show(submission_id)} {_ID_RULE}")
    files: dict[str, str] = {}
    names: dict[Path, str] = {}
    problems: list[str] = []
    checked: dict[Path, str | None] = {}
    shots = data.get("shots") if isinstance(data, dict) else None
    for i, shot in enumerate(shots if isinstance(shots, list) else []):
        start = shot.get("start_image") if isinstance(shot, dict) else None
        if not isinstance(start, str) or not start:
            continue
        problem = start_image_problem(start, path.resolve().parent, f"$.shots[{i}].start_image",
                                      memo=checked)  # fmt: skip
        if problem:
            problems.append(problem)
            continue
        source = (path.resolve().parent / Path(start).expanduser()).resolve()
        if source not in names:
            names[source] = attachment_name(source.name, set(names.values()))
            files[names[source]] = base64.b64encode(source.read_bytes()).decode()
        shot["start_image"] = names[source]
    if problems:
        raise InvalidInput(f"cannot attach the start images of {path}", capped(problems))
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
    """XADD a packed submission, with ``MAXLEN ~ FARM_SUBMISSIONS_MAXLEN`` (a backstop while
    no ingest runs); returns its stream entry id."""
    entry = client.xadd(
        stream_key(settings), dict(fields), maxlen=settings.submissions_maxlen, approximate=True
    )
    return as_text(entry)


def submission_status(client: redis.Redis, settings: Settings, submission_id: str
                      ) -> dict[str, Any] | None:  # fmt: skip
    """The decision on a submission (errors and client parsed), or None while undecided."""
    raw = {
        as_text(k): as_text(v)
        for k, v in client.hgetall(status_key(settings, submission_id)).items()
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
