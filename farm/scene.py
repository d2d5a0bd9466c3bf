"""Scenes and shots: the versioned JSON format, its validation and prompt building.

Every way into the farm (CLI, Redis submissions, the Blender add-on) goes through
:func:`parse_scene`, which checks a scene against ``schemas/scene-v1.schema.json`` and
the rules a schema cannot express, and reports every problem with its JSON path.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from farm.errors import InvalidInput
from farm.images import SUFFIXES, file_problem
from farm.jsonfile import read_json
from farm.problems import MAX_PROBLEMS, SHOW_CHARS, capped, more_line, names, show, show_path
from farm.trajectory import track_problems

SCHEMA_FILE = "scene-v1.schema.json"

CAMERA_PHRASES: dict[str, str] = {
    "zoom_in": "slow zoom in, approaching subject",
    "zoom_out": "zoom out, revealing wider scene",
    "pan_left": "camera pans left, smooth movement",
    "pan_right": "camera pans right, following action",
    "tilt_up": "camera tilts up, low angle shot",
    "tilt_down": "camera tilts down, high angle shot",
    "tracking": "tracking shot, following subject movement",
    "dolly_forward": "dolly forward, smooth camera approach",
    "dolly_back": "dolly back, camera pulls away",
}


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class Shot:
    """One shot of a scene, with every default filled in."""

    id: str
    action_description: str
    camera_direction: str = ""
    camera_movements: tuple[str, ...] = ()
    style_description: str = ""
    characters: tuple[str, ...] = ()
    negative_prompt: str = ""
    template: str = "standard_generation"
    width: int = 832
    height: int = 480
    frames: int = 33
    fps: int = 16
    seed: int = 0
    start_image: str | None = None
    trajectories: tuple[tuple[Point, ...], ...] = ()
    trajectory_interpolation: str = "linear"
    #: the node kind to render on: ``any`` (the farm chooses), ``comfyui`` or ``wan2gp``
    backend: str = "any"

    @property
    def prompt(self) -> str:
        return build_prompt(self)

    def tracks_json(self) -> list[list[dict[str, float]]]:
        """Trajectories in the wire format ``[[{"x":..,"y":..}, ...], ...]``."""
        return [[{"x": p.x, "y": p.y} for p in track] for track in self.trajectories]


@dataclass(frozen=True)
class Scene:
    """A validated scene."""

    id: str
    shots: tuple[Shot, ...]
    title: str = ""
    quality: str = "preview"
    priority: int = 5
    version: int = 1

    def shot(self, shot_id: str) -> Shot:
        for shot in self.shots:
            if shot.id == shot_id:
                return shot
        raise KeyError(shot_id)

    def to_dict(self) -> dict[str, Any]:
        """The scene as canonical JSON data (defaults filled in, paths absolute)."""
        data = asdict(self)
        for shot, raw in zip(self.shots, data["shots"], strict=True):
            raw["trajectories"] = shot.tracks_json()
            for key in ("start_image", "trajectories"):
                if not raw[key]:
                    del raw[key]
            if not shot.trajectories and shot.trajectory_interpolation == "linear":
                del raw["trajectory_interpolation"]  # the default, and nothing to interpolate
            if shot.backend == "any":
                del raw["backend"]
        return data


def build_prompt(shot: Shot) -> str:
    """The generation prompt of a shot.

    Non-empty parts joined with " | ": action, ``Camera: ...``, ``Style: ...``,
    ``Characters: a, b``; then each camera movement's phrase after ", ".
    """
    parts = [
        shot.action_description.strip(),
        f"Camera: {shot.camera_direction.strip()}" if shot.camera_direction.strip() else "",
        f"Style: {shot.style_description.strip()}" if shot.style_description.strip() else "",
        "Characters: " + ", ".join(c.strip() for c in shot.characters) if shot.characters else "",
    ]
    prompt = " | ".join(p for p in parts if p)
    for move in shot.camera_movements:
        prompt += ", " + CAMERA_PHRASES[move]
    return prompt


@cache
def schema() -> dict[str, Any]:
    """The scene JSON Schema (version 1)."""
    text = resources.files("farm").joinpath("schemas", SCHEMA_FILE).read_text()
    return json.loads(text)


def load_scene(path: str | Path, templates: Collection[str] | None = None) -> Scene:
    """Read and validate a scene file; relative ``start_image`` paths are relative to it."""
    path = Path(path)
    data = read_json(path, "scene file", InvalidInput)
    return parse_scene(data, base_dir=path.resolve().parent, templates=templates)


def parse_scene(
    data: Any,
    base_dir: Path | None = None,
    *,
    check_files: bool = True,
    templates: Collection[str] | None = None,
) -> Scene:
    """Validate scene data and build a :class:`Scene`; raise :class:`InvalidInput` listing
    every problem as ``$.json.path: message`` (the first MAX_PROBLEMS of them and how many
    more, each value echoed short: see :mod:`farm.problems`). ``templates``: the names a
    shot may use (the farm's catalogue, :func:`farm.catalog.catalog_for`; default: the
    built-in ones)."""
    most = schema()["properties"]["shots"]["maxItems"]
    if isinstance(data, dict) and isinstance(data.get("shots"), list) and len(data["shots"]) > most:
        # checking every one of that many shots takes seconds, and the scene is refused anyway
        raise InvalidInput("scene is invalid", [_over("$.shots", data["shots"], most, "shots")])
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=_error_order)
    if errors:
        problems = [_describe(e) for e in errors[:MAX_PROBLEMS]]
        if len(errors) > MAX_PROBLEMS:
            problems.append(more_line(len(errors) - MAX_PROBLEMS))
        raise InvalidInput("scene is invalid", capped(problems))
    if templates is None:
        from farm.catalog import load_catalog

        templates = load_catalog().templates
    problems = _check_rules(data, base_dir, check_files, templates)
    if problems:
        raise InvalidInput("scene is invalid", capped(problems))
    shots = tuple(_shot(data["id"], raw, base_dir) for raw in data["shots"])
    return Scene(
        id=data["id"],
        title=data.get("title", ""),
        quality=data.get("quality", "preview"),
        priority=data.get("priority", 5),
        shots=shots,
    )


def _frames(raw: dict[str, Any]) -> int:
    """The shot's length in frames: ``frames``, else ``duration_s`` at its fps, else 33."""
    if raw.get("frames"):
        return raw["frames"]
    if "duration_s" in raw:
        return max(1, round(raw["duration_s"] * raw.get("fps", 16)))
    return Shot.frames


def _shot(scene_id: str, raw: dict[str, Any], base_dir: Path | None) -> Shot:
    fps = raw.get("fps", 16)
    frames = _frames(raw)
    start = raw.get("start_image")
    return Shot(
        id=raw["id"],
        action_description=raw["action_description"],
        camera_direction=raw.get("camera_direction", ""),
        camera_movements=tuple(raw.get("camera_movements", ())),
        style_description=raw.get("style_description", ""),
        characters=tuple(raw.get("characters", ())),
        negative_prompt=raw.get("negative_prompt", ""),
        template=raw.get("template", "standard_generation"),
        width=raw.get("width", 832),
        height=raw.get("height", 480),
        frames=frames,
        fps=fps,
        seed=raw["seed"] if "seed" in raw else default_seed(scene_id, raw["id"]),
        start_image=str(_resolve(start, base_dir)) if start else None,
        trajectories=tuple(
            tuple(Point(float(p["x"]), float(p["y"])) for p in track)
            for track in raw.get("trajectories", ())
        ),
        trajectory_interpolation=raw.get("trajectory_interpolation", "linear"),
        backend=raw.get("backend", "any"),
    )


def default_seed(scene_id: str, shot_id: str) -> int:
    """A stable seed for a shot that names none (same scene and shot, same seed)."""
    return zlib.crc32(f"{scene_id}/{shot_id}".encode())


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p.resolve() if base_dir is not None or p.is_absolute() else p


def _check_rules(
    data: dict[str, Any], base_dir: Path | None, check_files: bool, templates: Collection[str]
) -> list[str]:
    """Rules beyond the schema: templates of the catalogue, unique shot ids, trajectories
    inside the canvas, start images that decode."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    decoded: dict[Path, str | None] = {}
    for i, shot in enumerate(data["shots"]):
        where = f"$.shots[{i}]"
        template = shot.get("template", Shot.template)
        if template not in templates:
            problems.append(f"{where}.template: {show(template)} is not a template of this farm; "
                            f"use one of: {', '.join(sorted(templates))} (`farm templates`)")  # fmt: skip
        if shot["id"] in seen:
            problems.append(
                f"{where}.id: shot id {shot['id']!r} is already used by $.shots[{seen[shot['id']]}]; shot ids must be unique"
            )
        seen.setdefault(shot["id"], i)
        if "trajectories" in shot:
            width, height = shot.get("width", 832), shot.get("height", 480)
            problems += track_problems(shot["trajectories"], width, height, f"{where}.trajectories",
                                       frames=_frames(shot),
                                       method=shot.get("trajectory_interpolation", "linear"))  # fmt: skip
        if shot.get("trajectories") and not shot.get("start_image"):
            problems.append(
                f"{where}.trajectories: trajectory control (Wan ATI) animates a start image; add start_image"
            )
        if shot.get("trajectories") and shot.get("backend") == "wan2gp":
            problems.append(
                f"{where}.backend: trajectory control (Wan ATI) runs on ComfyUI nodes only;"
                " set backend to comfyui or any, or remove the trajectories"
            )
        start = shot.get("start_image")
        if start:
            problem = start_image_problem(start, base_dir, f"{where}.start_image",
                                          check_file=check_files, memo=decoded)  # fmt: skip
            problems += [problem] if problem else []
    return problems


def start_image_problem(
    start: str,
    base_dir: Path | None,
    where: str,
    *,
    check_file: bool = True,
    memo: dict[Path, str | None] | None = None,
) -> str | None:
    """Why a shot's ``start_image`` (at JSON path ``where``) cannot be rendered from: not an
    image file name, or (``check_file``) a file that is missing, unreadable or not an image
    (:mod:`farm.images`; ``memo`` keeps each file's answer, so a file many shots share is
    decoded once). None: it can."""
    if not start.lower().endswith(SUFFIXES):
        return f"{where}: {show(start)} must name a {', '.join(SUFFIXES)} image file"
    if not check_file:
        return None
    try:
        path = _resolve(start, base_dir)
    except OSError as exc:  # a name too long for the file system, a loop of links, ...
        return (f"{where}: {show(start)} cannot be read ({exc.strerror or exc}); "
                "give the path of an image file")  # fmt: skip
    memo = {} if memo is None else memo
    if path not in memo:
        memo[path] = file_problem(path)
    return f"{where}: file {show_path(path)} {memo[path]}" if memo[path] else None


def _error_order(error: jsonschema.ValidationError) -> tuple[str, ...]:
    return tuple(str(p) for p in error.absolute_path)


def _describe(error: jsonschema.ValidationError) -> str:
    """One validation error as '$.path: what is wrong and how to fix it', the value in it
    shown short and the schema's limit named."""
    path = error.json_path
    v, limit, instance = error.validator, error.validator_value, error.instance
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(instance) - set(allowed))
        return f"{path}: unknown field(s) {names(extra)}; allowed: {', '.join(allowed)}"
    if v == "required":
        return f"{path}: {error.message.replace(' is a required property', '')} is required"
    if v == "enum":
        options = ", ".join(map(str, limit))
        return f"{path}: {show(instance)} is not allowed; use one of: {options}"
    if v == "not" and isinstance(instance, dict):
        return f"{path}: give either frames or duration_s (with fps), not both"
    if v == "pattern":
        return f"{path}: {show(instance)} must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
    if v == "const":
        return f"{path}: must be {limit!r}"
    if v == "uniqueItems":
        return f"{path}: has duplicate entries; list each once"
    if v in ("maxLength", "maxItems"):
        return _over(path, instance, limit, _unit(error))
    if v in ("minLength", "minItems") and limit > 1:
        unit = _unit(error)
        return (f"{path}: {show(instance, sized=True)} is under the minimum of {limit:,} {unit}; "
                f"give at least {limit:,} {unit}")  # fmt: skip
    return f"{path}: {_message(error)}"


#: what a list's items are called in a message, by the field that holds the list
ITEM_NAMES = {"shots": "shots", "trajectories": "tracks", "characters": "names"}


def _unit(error: jsonschema.ValidationError) -> str:
    """What the limit of a length error counts: characters, shots, tracks, points, items."""
    if error.validator in ("maxLength", "minLength"):
        return "characters"
    path = list(error.absolute_path)
    if path and isinstance(path[-1], int) and "trajectories" in path:
        return "points"
    return ITEM_NAMES.get(path[-1], "items") if path and isinstance(path[-1], str) else "items"


def _over(path: str, value: Any, limit: int, unit: str) -> str:
    fix = "; split the scene into scenes of fewer shots" if unit == "shots" else ""
    return (f"{path}: {show(value, sized=True)} is over the limit of {limit:,} {unit}; "
            f"give at most {limit:,} {unit}{fix}")  # fmt: skip


def _message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message with the value it starts with shown short (it echoes the
    value whole: a 5 MB string, a list of 100,000 shots)."""
    message = error.message
    if len(message) <= 2 * SHOW_CHARS:
        return message
    whole = repr(error.instance)
    if message.startswith(whole):
        return show(error.instance) + message[len(whole) :]
    return message
