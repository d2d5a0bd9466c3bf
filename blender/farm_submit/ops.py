"""Operators: submit the scene, follow it, load its clips, edit path mappings.

Two ways to run, as Blender needs:

* ``execute()`` is synchronous: it works in background mode and scripts
  (``bpy.ops.farm.submit()``, then ``bpy.ops.farm.refresh()`` as often as wanted);
* ``invoke()`` (a button in the interface) does the network work in a :class:`Watcher`
  thread that sees only plain data, and a 0.25 s timer applies what it found to the scene,
  so the interface never waits on the network.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from typing import Any

import bpy
from bpy.props import IntProperty

from . import client, export, prefs, props, results

POLL_SECONDS = 1.0
TICK_SECONDS = 0.25
ERROR_PATH = re.compile(r"^\$\.scene\.shots\[(\d+)\](\S*):\s*(.*)$")


# -- applying what the farm says, on the main thread -------------------------------------


def _shot_for_index(scene, index: int):
    """The shot settings of the submitted scene's ``index``-th shot."""
    submitted = sorted((s for s in scene.farm.shots if s.farm_id), key=lambda s: s.frame_start)
    return submitted[index] if index < len(submitted) else None


def plain_errors(scene, errors: list[str]) -> list[str]:
    """The farm's ``$.scene.shots[i].field: message`` errors in the artist's words
    (``Shot 'intro' (action): ...``); each is also set on its shot."""
    lines = []
    for error in errors:
        m = ERROR_PATH.match(error)
        shot = _shot_for_index(scene, int(m.group(1))) if m else None
        if shot is None:
            lines.append(error)
            continue
        field = m.group(2).lstrip(".") or "shot"
        text = f"Shot {shot.marker!r} ({field}): {m.group(3)}"
        shot.error = text if not shot.error else shot.error
        lines.append(text)
    return lines


def apply_snapshot(context, scene, snap: dict[str, Any]) -> list[str]:
    """Copy a :func:`client.poll` snapshot into ``scene.farm`` and put finished clips on
    the sequencer. Returns problems worth reporting."""
    farm = scene.farm
    sub = snap["submission"]
    farm.submission_state = sub["state"]
    farm.farm_scene = sub.get("scene") or farm.farm_scene
    problems: list[str] = []
    if sub["state"] == "rejected":
        for s in farm.shots:
            if s.farm_id:
                s.state, s.error = "rejected", ""
        problems = plain_errors(scene, list(sub["errors"]) or [f"rejected ({sub['reason']})"])
        farm.errors = "\n".join(problems)
        farm.status = f"The farm refused the scene ({sub['reason'] or 'invalid'})"
        return problems
    if sub["state"] != "accepted" or snap["scene"] is None:
        farm.status = "Waiting for the farm to take the scene…"
        return problems
    info = snap["scene"]
    farm.scene_state = info["state"]
    if info["state"] == "replaced":
        farm.status = f"Farm scene {info['id']} was replaced by another submission"
        return problems
    p = prefs.get(context)
    by_id = {s.farm_id: s for s in farm.shots if s.farm_id}
    for shot_id, remote in snap["shots"].items():
        s = by_id.get(shot_id)
        if s is None:
            continue
        s.state, s.progress, s.node = remote["state"], remote["progress"], remote["node"]
        # an error on a shot not over is its last attempt's: the farm is trying the next rung
        s.error = remote["error"] or "" if remote["state"] not in ("done", "scoring") else ""
        gate = remote.get("gate") or {}
        decision, kept = str(gate.get("decision") or ""), gate.get("kept")
        s.gate = f"{decision} (take {kept})" if decision and kept else decision  # from 1
        preview = snap["previews"].get(shot_id)
        if preview is not None:
            s.preview_image = results.show_preview(
                info["id"], shot_id, preview["mime"], preview["data"]
            )
            s.preview_at = preview["at"]
        clip = remote["outputs"].get("final") or remote["outputs"].get("preview")
        if remote["state"] == "done" and clip:
            problems += _load_clip(scene, s, clip, results.map_path(clip, p.path_maps))
    video = info["outputs"].get("video")
    if video and info["state"] in ("done", "partial"):
        local = results.map_path(video, p.path_maps)
        if farm.scene_video != local:
            if os.path.isfile(local):
                # the scene ends where its last shot does: clips snapped to the model's
                # frame grid make the video a few frames longer than the timeline
                start = min((s.frame_start for s in by_id.values()), default=scene.frame_start)
                end = max((s.frame_end for s in by_id.values()), default=scene.frame_end)
                results.place_clip(scene, results.SCENE_STRIP, local, farm.channel + 1, start, end)
                farm.scene_video = local
            else:
                problems.append(_missing(local, video))
    if info["error"]:
        problems.append(f"Scene: {info['error']}")
    failed = [f"Shot {s.marker!r}: {s.error}" for s in by_id.values() if s.error]
    farm.errors = "\n".join(dict.fromkeys(problems + failed))
    done = sum(1 for s in by_id.values() if s.state == "done")
    farm.status = f"Scene {info['id']}: {info['state']} ({done}/{len(by_id)} shots done)"
    return problems


def _missing(local: str, farm_path: str) -> str:
    return (
        f"the farm wrote {farm_path}, but {local} does not exist here: map the farm's storage "
        "folder to this machine in the add-on preferences (Farm storage → this machine)"
    )


def _load_clip(scene, s, farm_path: str, local: str) -> list[str]:
    if s.clip == local:
        return []
    if not os.path.isfile(local):
        s.error = _missing(local, farm_path)
        return [f"Shot {s.marker!r}: {s.error}"]
    results.place_clip(scene, results.STRIP_PREFIX + s.farm_id, local, scene.farm.channel,
                       s.frame_start, s.frame_end)  # fmt: skip
    s.clip = local
    return []


# -- the background path: a thread with plain data, a timer on the main thread -----------


class Watcher(threading.Thread):
    """Sends a prepared submission (if any) and polls its state every second; puts each
    snapshot (or a :class:`client.FarmClientError`) on ``inbox``. Never touches Blender data."""

    def __init__(self, scene_name: str, conn: dict[str, Any], submission: str,
                 message: dict[str, Any] | None) -> None:  # fmt: skip
        super().__init__(name=f"farm-watch-{scene_name}", daemon=True)
        self.scene_name, self.conn, self.submission, self.message = (
            scene_name,
            conn,
            submission,
            message,
        )
        self.inbox: queue.Queue = queue.Queue()
        self.stop = threading.Event()

    def run(self) -> None:
        seen: dict[str, str] = {}
        try:
            c = self.conn
            r = client.connect(c["url"], c["password"], c["timeout"], c["ca"])
            with contextlib.suppress(client.FarmClientError):  # the list is a convenience
                props.FARM_TEMPLATES[:] = client.templates(r, self.conn["prefix"])
            if self.message is not None:
                client.submit(r, self.conn["prefix"], self.message)
            while not self.stop.is_set():
                snap = client.poll(r, self.conn["prefix"], self.submission, seen)
                seen.update({k: v["at"] for k, v in snap["previews"].items()})
                self.inbox.put(snap)
                if client.finished(snap):
                    break
                self.stop.wait(POLL_SECONDS)
        except client.FarmClientError as exc:
            self.inbox.put(exc)
        except Exception as exc:  # noqa: BLE001 - a thread must report, not vanish
            self.inbox.put(client.FarmClientError(f"unexpected error: {exc!r}"))


WATCHERS: dict[str, Watcher] = {}


def tick() -> float | None:
    """Timer: apply what the watchers found; stop when none is left."""
    for name, w in list(WATCHERS.items()):
        scene = bpy.data.scenes.get(name)
        while True:
            try:
                item = w.inbox.get_nowait()
            except queue.Empty:
                break
            if scene is None:
                continue
            if isinstance(item, client.FarmClientError):
                scene.farm.errors = str(item)
                scene.farm.status = "Stopped following the farm"
            else:
                apply_snapshot(bpy.context, scene, item)
        if not w.is_alive() and w.inbox.empty():
            del WATCHERS[name]
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "SEQUENCE_EDITOR", "PROPERTIES"):
                area.tag_redraw()
    return TICK_SECONDS if WATCHERS else None


def start_watcher(scene, submission: str, message: dict[str, Any] | None) -> Watcher:
    old = WATCHERS.pop(scene.name, None)
    if old is not None:
        old.stop.set()
    w = Watcher(scene.name, _conn(), submission, message)
    WATCHERS[scene.name] = w
    w.start()
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_SECONDS)
    return w


def _conn() -> dict[str, Any]:
    p = prefs.get()
    return {"url": p.redis_url.strip(), "password": p.password, "prefix": p.key_prefix.strip() or "farm",
            "timeout": p.timeout, "wait": p.ingest_wait,
            "ca": bpy.path.abspath(p.ca_cert.strip()) if p.ca_cert.strip() else ""}  # fmt: skip


def _online(op) -> bool:
    if getattr(bpy.app, "online_access", True):
        return True
    op.report({"ERROR"}, "Blender's online access is off: allow it in Preferences ▸ System ▸ "
              "Network (Allow Online Access) to send scenes to the farm")  # fmt: skip
    return False


def prepare(scene) -> dict[str, Any]:
    """Build ``scene``'s submission (main thread: it renders start images) and reset the
    scene's farm state for it. Raises :class:`export.ExportError`."""
    farm = scene.farm
    message = export.build_message(scene, client.new_submission_id())
    farm.submission, farm.submission_state = message["submission"], "sending"
    farm.farm_scene = message["scene"]["id"]
    farm.scene_state = farm.scene_video = farm.errors = ""
    farm.status = "Sending the scene to the farm…"
    return message


# -- operators ---------------------------------------------------------------------------


class FARM_OT_submit(bpy.types.Operator):
    """Send this scene's camera-marker shots to the render farm"""

    bl_idname = "farm.submit"
    bl_label = "Submit to Farm"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context) -> bool:
        scene = context.scene
        if scene is None or not export.camera_shots(scene):
            cls.poll_message_set(
                "Bind a camera to a timeline marker for each shot (Ctrl+B in the timeline)"
            )
            return False
        if (
            scene.name in WATCHERS
            and WATCHERS[scene.name].message is not None
            and WATCHERS[scene.name].is_alive()
        ):
            cls.poll_message_set("This scene is being sent")
            return False
        return True

    def _prepare(self, context) -> dict[str, Any] | None:
        try:
            return prepare(context.scene)
        except export.ExportError as exc:
            self.report({"ERROR"}, str(exc))
            return None

    def execute(self, context):
        if not _online(self):
            return {"CANCELLED"}
        message = self._prepare(context)
        if message is None:
            return {"CANCELLED"}
        scene, conn = context.scene, _conn()
        try:
            r = client.connect(conn["url"], conn["password"], conn["timeout"], conn["ca"])
            client.submit(r, conn["prefix"], message)
            snap = client.poll(r, conn["prefix"], message["submission"])
            deadline = time.monotonic() + conn["wait"]
            while snap["submission"]["state"] == "pending" and time.monotonic() < deadline:
                time.sleep(0.2)
                snap = client.poll(r, conn["prefix"], message["submission"])
        except client.FarmClientError as exc:
            scene.farm.errors, scene.farm.submission_state = str(exc), "failed"
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        problems = apply_snapshot(context, scene, snap)
        if snap["submission"]["state"] == "rejected":
            self.report({"ERROR"}, "The farm refused the scene:\n" + "\n".join(problems))
            return {"CANCELLED"}
        if snap["submission"]["state"] == "pending":
            self.report(
                {"WARNING"}, "Sent; the farm has not taken it yet (is `farm ingest` running?)"
            )
        else:
            self.report({"INFO"}, f"Farm scene {message['scene']['id']} queued")
        return {"FINISHED"}

    def invoke(self, context, event):
        """The interface's path: build here, send and follow in a :class:`Watcher`.
        (Blender calls ``execute`` instead when it has no window, as in background mode.)"""
        if not _online(self):
            return {"CANCELLED"}
        message = self._prepare(context)
        if message is None:
            return {"CANCELLED"}
        start_watcher(context.scene, message["submission"], message)
        self.report({"INFO"}, "Sending the scene to the farm")
        return {"FINISHED"}


class FARM_OT_refresh(bpy.types.Operator):
    """Read the farm's progress for this scene's last submission and load finished clips"""

    bl_idname = "farm.refresh"
    bl_label = "Refresh from Farm"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context) -> bool:
        if context.scene is None or not context.scene.farm.submission:
            cls.poll_message_set("Submit the scene first")
            return False
        return True

    def execute(self, context):
        if not _online(self):
            return {"CANCELLED"}
        scene, conn = context.scene, _conn()
        try:
            r = client.connect(conn["url"], conn["password"], conn["timeout"], conn["ca"])
            seen = {s.farm_id: s.preview_at for s in scene.farm.shots if s.farm_id}
            snap = client.poll(r, conn["prefix"], scene.farm.submission, seen)
        except client.FarmClientError as exc:
            scene.farm.errors = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for problem in apply_snapshot(context, scene, snap):
            self.report({"WARNING"}, problem)
        return {"FINISHED"}

    def invoke(self, context, event):
        if not _online(self):
            return {"CANCELLED"}
        start_watcher(context.scene, context.scene.farm.submission, None)
        return {"FINISHED"}


class FARM_OT_templates(bpy.types.Operator):
    """Read the farm's templates (built-in and the studio's own) for the Template field"""

    bl_idname = "farm.templates"
    bl_label = "Refresh Templates"

    def execute(self, context):
        if not _online(self):
            return {"CANCELLED"}
        conn = _conn()
        try:
            r = client.connect(conn["url"], conn["password"], conn["timeout"], conn["ca"])
            props.FARM_TEMPLATES[:] = client.templates(r, conn["prefix"])
        except client.FarmClientError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{len(props.FARM_TEMPLATES)} templates on the farm")
        return {"FINISHED"}


class FARM_OT_stop_watching(bpy.types.Operator):
    """Stop following the farm (the farm goes on rendering)"""

    bl_idname = "farm.stop_watching"
    bl_label = "Stop Following"

    @classmethod
    def poll(cls, context) -> bool:
        return context.scene is not None and context.scene.name in WATCHERS

    def execute(self, context):
        w = WATCHERS.get(context.scene.name)
        if w is not None:
            w.stop.set()
        return {"FINISHED"}


class FARM_OT_sync_shots(bpy.types.Operator):
    """List a shot for every camera marker of the scene"""

    bl_idname = "farm.sync_shots"
    bl_label = "Shots from Camera Markers"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        shots = export.sync_shots(context.scene)
        self.report({"INFO"}, f"{len(shots)} shots")
        return {"FINISHED"}


class FARM_OT_object_add(bpy.types.Operator):
    """Follow the active object's path in the active shot (a trajectory)"""

    bl_idname = "farm.object_add"
    bl_label = "Add Trajectory Object"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context) -> bool:
        farm = context.scene.farm if context.scene else None
        if not farm or not (0 <= farm.active_shot < len(farm.shots)):
            cls.poll_message_set("Select a shot first")
            return False
        if context.active_object is None:
            cls.poll_message_set("Select the animated object first")
            return False
        return True

    def execute(self, context):
        shot = context.scene.farm.shots[context.scene.farm.active_shot]
        if any(o.obj == context.active_object for o in shot.trajectory_objects):
            return {"CANCELLED"}
        shot.trajectory_objects.add().obj = context.active_object
        return {"FINISHED"}


class FARM_OT_object_remove(bpy.types.Operator):
    """Stop following this object in the shot"""

    bl_idname = "farm.object_remove"
    bl_label = "Remove Trajectory Object"
    bl_options = {"REGISTER", "UNDO"}
    index: IntProperty()

    def execute(self, context):
        shot = context.scene.farm.shots[context.scene.farm.active_shot]
        shot.trajectory_objects.remove(self.index)
        return {"FINISHED"}


class FARM_OT_path_map_add(bpy.types.Operator):
    """Map a farm storage folder to a folder on this machine"""

    bl_idname = "farm.path_map_add"
    bl_label = "Add Path Mapping"

    def execute(self, context):
        prefs.get(context).path_maps.add()
        return {"FINISHED"}


class FARM_OT_path_map_remove(bpy.types.Operator):
    """Remove this path mapping"""

    bl_idname = "farm.path_map_remove"
    bl_label = "Remove Path Mapping"
    index: IntProperty()

    def execute(self, context):
        prefs.get(context).path_maps.remove(self.index)
        return {"FINISHED"}


CLASSES = (FARM_OT_submit, FARM_OT_refresh, FARM_OT_templates, FARM_OT_stop_watching, FARM_OT_sync_shots,
           FARM_OT_object_add, FARM_OT_object_remove, FARM_OT_path_map_add, FARM_OT_path_map_remove)  # fmt: skip


def unregister_timers() -> None:
    for w in WATCHERS.values():
        w.stop.set()
    WATCHERS.clear()
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
