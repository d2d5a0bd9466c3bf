"""Blender scene → farm submission (version 1). Reads Blender data on the main thread;
no network here.

The shot model: **one shot per camera marker**. A timeline marker bound to a camera
(Marker ▸ Bind Camera to Markers, Ctrl+B) starts a shot at its frame; the shot lasts until
the next camera marker, the last one until the scene's end frame. The shot is seen
through the marker's camera; its settings live in ``scene.farm.shots`` under the marker's
name.
"""

from __future__ import annotations

import base64
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import bpy
from bpy_extras.object_utils import world_to_camera_view

from . import client

MAX_FRAMES = 241  # the farm's limit per shot
MAX_POINTS = 1000  # the farm's limit per trajectory
ADDON_VERSION = "1.0.0"


class ExportError(Exception):
    """The Blender scene cannot be submitted as it is; the message says what to change."""


@dataclass(frozen=True)
class ShotRange:
    """One camera marker's shot: its marker, camera and frames (inclusive)."""

    marker: str
    camera: Any
    start: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.start + 1


def slug(text: str, fallback: str = "shot") -> str:
    """``text`` as a farm id: letters, digits, '.', '_', '-'; at most 64 characters."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")[:64]
    return s or fallback


def camera_shots(scene) -> list[ShotRange]:
    """The scene's shots, one per camera marker, in frame order."""
    markers = sorted(
        (m for m in scene.timeline_markers if m.camera is not None), key=lambda m: m.frame
    )
    shots = []
    for i, marker in enumerate(markers):
        end = markers[i + 1].frame - 1 if i + 1 < len(markers) else scene.frame_end
        if end < marker.frame:
            continue  # two markers on one frame, or a marker after the end frame
        shots.append(ShotRange(marker.name, marker.camera, marker.frame, end))
    return shots


def sync_shots(scene) -> list[ShotRange]:
    """Give every camera marker an entry in ``scene.farm.shots`` (settings of markers
    already there are kept); return the shots."""
    shots = camera_shots(scene)
    known = {s.marker for s in scene.farm.shots}
    for shot in shots:
        if shot.marker not in known:
            item = scene.farm.shots.add()
            item.marker = shot.marker
            item.action = shot.marker
    return shots


def default_scene_id(scene) -> str:
    blend = os.path.splitext(os.path.basename(bpy.data.filepath))[0] or "untitled"
    return slug(f"{blend}-{scene.name}", "scene")


def scene_id_of(scene) -> str:
    return (
        slug(scene.farm.scene_id, "scene")
        if scene.farm.scene_id.strip()
        else default_scene_id(scene)
    )


def fps_of(scene) -> int:
    return max(1, min(60, round(scene.render.fps / (scene.render.fps_base or 1.0))))


def build_message(scene, submission_id: str) -> dict[str, Any]:
    """The submission for ``scene``: every camera-marker shot with its settings, start
    images rendered from the shot cameras and trajectories projected through them.
    Records each shot's farm id and frames in its settings, for the results."""
    shots = sync_shots(scene)
    if not shots:
        raise ExportError(
            "the scene has no camera markers: add a timeline marker at each shot's first frame "
            "and bind a camera to it (Marker ▸ Bind Camera to Markers, Ctrl+B)"
        )
    settings = {s.marker: s for s in scene.farm.shots}
    for s in scene.farm.shots:  # only this submission's shots carry a farm id
        s.farm_id = ""
    farm = scene.farm
    width, height = farm.width, farm.height
    files: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    saved = _Saved(scene)
    try:
        scene.render.resolution_x, scene.render.resolution_y = width, height
        scene.render.resolution_percentage = 100
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
        for shot in shots:
            s = settings[shot.marker]
            shot_id = slug(shot.marker)
            while shot_id in used:
                shot_id = slug(f"{shot_id[:60]}-{len(used)}")
            used.add(shot_id)
            s.farm_id, s.frame_start, s.frame_end = shot_id, shot.start, shot.end
            s.state, s.progress, s.error, s.clip = "sending", 0.0, "", ""
            item: dict[str, Any] = {
                "id": shot_id,
                "action_description": s.action.strip(),
                "template": s.template.strip() or "standard_generation",
                "width": width,
                "height": height,
                "fps": fps_of(scene),
            }
            for key, value in (
                ("camera_direction", s.camera_direction.strip()),
                ("style_description", s.style.strip()),
                ("negative_prompt", s.negative_prompt.strip()),
            ):
                if value:
                    item[key] = value
            if s.camera_movements:
                item["camera_movements"] = sorted(s.camera_movements)
            characters = [c.strip() for c in s.characters.split(";") if c.strip()]
            if characters:
                item["characters"] = characters
            if s.use_seed:
                item["seed"] = s.seed
            if s.duration > 0:
                item["duration_s"] = round(s.duration, 3)
            else:
                item["frames"] = min(shot.frames, MAX_FRAMES)
            if s.start_image:
                name = f"{shot_id}.png"
                files[name] = base64.b64encode(render_still(scene, shot)).decode()
                item["start_image"] = name
            tracks = [
                trajectory(scene, shot, o.obj, width, height)
                for o in s.trajectory_objects
                if o.obj is not None
            ]
            if tracks:
                item["trajectories"] = tracks
            out.append(item)
    finally:
        saved.restore()
    message: dict[str, Any] = {
        "version": client.FORMAT_VERSION,
        "submission": submission_id,
        "scene": {
            "version": 1,
            "id": scene_id_of(scene),
            "title": farm.title or scene.name,
            "quality": farm.quality,
            "priority": farm.priority,
            "shots": out,
        },
        "replace": farm.replace,
        "client": {
            "app": "blender",
            "version": bpy.app.version_string,
            "addon": ADDON_VERSION,
            "file": os.path.basename(bpy.data.filepath) or "untitled.blend",
            "scene": scene.name,
        },
    }
    if files:
        message["files"] = files
    return message


class _Saved:
    """Scene settings the export changes, put back afterwards."""

    def __init__(self, scene) -> None:
        r = scene.render
        self.scene = scene
        self.values = (scene.frame_current, scene.camera, r.resolution_x, r.resolution_y,
                       r.resolution_percentage, r.pixel_aspect_x, r.pixel_aspect_y,
                       r.filepath, r.image_settings.file_format)  # fmt: skip

    def restore(self) -> None:
        s, r = self.scene, self.scene.render
        (frame, s.camera, r.resolution_x, r.resolution_y, r.resolution_percentage,
         r.pixel_aspect_x, r.pixel_aspect_y, r.filepath, r.image_settings.file_format) = self.values  # fmt: skip
        s.frame_set(frame)


def render_still(scene, shot: ShotRange) -> bytes:
    """The shot's first frame rendered through its camera with the scene's render engine,
    at the farm canvas size, as PNG bytes."""
    scene.camera = shot.camera
    scene.frame_set(shot.start)
    fd, path = tempfile.mkstemp(prefix="farm-start-", suffix=".png")
    os.close(fd)
    try:
        scene.render.filepath = path
        scene.render.image_settings.file_format = "PNG"
        bpy.ops.render.render(write_still=True, scene=scene.name)
        with open(path, "rb") as f:
            data = f.read()
    finally:
        os.unlink(path)
    if not data:
        raise ExportError(f"shot {shot.marker!r}: rendering the start image produced no file")
    return data


def trajectory(scene, shot: ShotRange, obj, width: int, height: int) -> list[dict[str, float]]:
    """``obj``'s path over the shot's frames seen through the shot's camera, in pixels of
    the farm canvas (origin top-left), at most MAX_POINTS points equally spaced in time."""
    frames = list(range(shot.start, shot.end + 1))
    if len(frames) > MAX_POINTS:
        step = (len(frames) - 1) / (MAX_POINTS - 1)
        frames = [shot.start + round(i * step) for i in range(MAX_POINTS)]
    if len(frames) < 2:
        frames = [shot.start, shot.start]
    points = []
    for frame in frames:
        scene.frame_set(frame)
        ndc = world_to_camera_view(scene, shot.camera, obj.matrix_world.translation)
        points.append({"x": round(ndc.x * width, 2), "y": round((1.0 - ndc.y) * height, 2)})
    return points
