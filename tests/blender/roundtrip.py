"""Run inside real Blender (the ``bpy`` module): install the built add-on in an isolated
user folder, build a scene with camera-marker shots, submit it to the farm and follow it
until it ends; write what Blender ended up with as JSON.

Usage: ``python roundtrip.py CONFIG.json`` (config written by tests/test_blender.py):
``addon`` (zip), ``kind`` (extension|legacy), ``redis_url``, ``password``, ``prefix``,
``path_maps`` [[farm, local]], ``mode`` (render|invalid|reopen|export|templates), ``blend``, ``out``,
``timeout``.
"""

import json
import os
import sys
import time
import traceback

import bpy

with open(sys.argv[1]) as f:
    cfg = json.load(f)
out: dict = {"version": bpy.app.version_string, "errors": []}


def install() -> str:
    bpy.context.preferences.system.use_online_access = True
    if cfg["kind"] == "extension":
        bpy.ops.extensions.package_install_files(
            filepath=cfg["addon"], repo="user_default", enable_on_install=True
        )
        return "bl_ext.user_default.farm_submit"
    bpy.ops.preferences.addon_install(filepath=cfg["addon"])
    bpy.ops.preferences.addon_enable(module="farm_submit")
    return "farm_submit"


def configure(module: str) -> None:
    p = bpy.context.preferences.addons[module].preferences
    p.redis_url, p.password, p.key_prefix = cfg["redis_url"], cfg["password"], cfg["prefix"]
    p.ingest_wait = 30.0
    for farm, local in cfg["path_maps"]:
        m = p.path_maps.add()
        m.farm_path, m.local_path = farm, local


def camera(name: str, location, rotation):
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    cam.location, cam.rotation_euler = location, rotation
    bpy.context.scene.collection.objects.link(cam)
    return cam


def build_scene() -> None:
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.fps, scene.render.fps_base = 16, 1.0
    scene.frame_start, scene.frame_end = 1, cfg.get("frame_end", 51)
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(-2.0, 0.0, 0.0))
    cube = bpy.context.active_object
    cube.name = "Runner"
    for frame, x in ((18, -2.0), (34, 2.0)):  # crosses the view during shot 2 (frames 18-34)
        cube.location.x = x
        cube.keyframe_insert("location", index=0, frame=frame)
    bpy.ops.mesh.primitive_plane_add(size=20.0, location=(0, 0, -0.6))
    cams = [
        camera("CamWide", (0, -12, 2), (1.45, 0, 0)),
        camera("CamSide", (0, -9, 0.5), (1.5708, 0, 0)),
        camera("CamClose", (3, -6, 1), (1.4, 0, 0.45)),
    ]
    for frame, name, cam in (
        (1, "intro", cams[0]),
        (18, "chase", cams[1]),
        (35, "close-up", cams[2]),
    ):
        marker = scene.timeline_markers.new(name, frame=frame)
        marker.camera = cam
    bpy.ops.farm.sync_shots()
    shots = {s.marker: s for s in scene.farm.shots}
    farm = scene.farm
    farm.scene_id, farm.quality, farm.title = cfg["scene_id"], "preview", "Blender round trip"
    farm.width, farm.height = 320, 192
    shots["intro"].action = "a wide establishing view of a quiet plain"
    shots["intro"].template = "quick_preview"
    shots["intro"].camera_movements = {"pan_right"}
    shots["chase"].action = "a red box slides across the field"
    shots["chase"].start_image = True
    shots["chase"].trajectory_objects.add().obj = bpy.data.objects["Runner"]
    shots["chase"].use_seed, shots["chase"].seed = True, 1234
    shots["close-up"].action = "the box comes to rest, close up"
    shots["close-up"].start_image = True
    shots["close-up"].characters = "Box; Plain"
    if cfg["mode"] == "invalid":  # the farm requires an action description
        shots["intro"].action = shots["close-up"].action = "  "


def strips_of(scene) -> list[dict]:
    editor = scene.sequence_editor
    if editor is None:
        return []
    coll = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all
    return sorted(
        (
            {
                "name": s.name,
                "type": s.type,
                "channel": s.channel,
                "start": s.frame_final_start,
                "end": s.frame_final_end,
                "filepath": os.path.normpath(bpy.path.abspath(s.filepath)),
            }
            for s in coll
        ),
        key=lambda s: (s["channel"], s["start"]),
    )


def state(scene) -> dict:
    farm = scene.farm
    return {
        "submission": farm.submission,
        "submission_state": farm.submission_state,
        "farm_scene": farm.farm_scene,
        "scene_state": farm.scene_state,
        "scene_video": farm.scene_video,
        "errors": farm.errors,
        "status": farm.status,
        "shots": [
            {
                k: getattr(s, k)
                for k in (
                    "marker",
                    "farm_id",
                    "frame_start",
                    "frame_end",
                    "state",
                    "progress",
                    "error",
                    "clip",
                    "gate",
                    "node",
                    "preview_image",
                )
            }
            for s in farm.shots
        ],
        "strips": strips_of(scene),
    }


try:
    module = install()
    out["module"] = module
    configure(module)
    if cfg["mode"] == "export":  # the message only, no network
        import importlib
        import struct

        bpy.ops.wm.read_homefile(use_empty=True)
        build_scene()
        export = importlib.import_module(module + ".export")
        message = export.build_message(bpy.context.scene, "bl-export-test")
        for name, data in message.get("files", {}).items():
            import base64

            png = base64.b64decode(data)
            with open(os.path.join(os.path.dirname(cfg["out"]), name), "wb") as f:
                f.write(png)  # kept beside the output, to look at
            message["files"][name] = {
                "bytes": len(png),
                "png": png[:8] == b"\x89PNG\r\n\x1a\n",
                "size": list(struct.unpack(">II", png[16:24])),
            }
        out["message"] = message
        out["frame_current"] = bpy.context.scene.frame_current
        out["resolution"] = [
            bpy.context.scene.render.resolution_x,
            bpy.context.scene.render.resolution_y,
        ]
    elif cfg["mode"] == "templates":  # the Template field's choices, before and after a read
        import importlib

        props = importlib.import_module(module + ".props")
        out["before"] = props.template_names()
        out["before_choices"] = [list(c) for c in props.template_choices()]
        bpy.ops.farm.templates()
        out["after"] = props.template_names()
        out["descriptions"] = dict(props.FARM_TEMPLATES)
        out["choices"] = [list(c) for c in props.template_choices()]  # the search list
        out["shown"] = props.template_description("dusk")  # the panel's line under the field
    elif cfg["mode"] == "reopen":
        bpy.ops.wm.open_mainfile(filepath=cfg["blend"])
        out["state"] = state(bpy.context.scene)
    else:
        bpy.ops.wm.read_homefile(use_empty=True)
        build_scene()
        scene = bpy.context.scene
        import importlib

        ops = importlib.import_module(module + ".ops")
        # Blender runs execute() for INVOKE_DEFAULT when it has no window (background
        # mode), so the interactive path is taken through the calls invoke() makes
        if cfg.get("submit") == "invoke":
            message = ops.prepare(scene)
            ops.start_watcher(scene, message["submission"], message)
        else:
            try:
                bpy.ops.farm.submit()
            except RuntimeError as exc:  # an operator's ERROR report, in background mode
                out["submit_error"] = str(exc)
        deadline = time.monotonic() + cfg["timeout"]
        seen_running = set()

        def following() -> bool:
            farm = scene.farm
            ended = farm.scene_state in ("done", "partial", "failed", "cancelled")
            return farm.submission_state in ("sending", "accepted") and not ended

        if cfg.get("follow") == "thread" and scene.farm.submission_state == "accepted":
            ops.start_watcher(scene, scene.farm.submission, None)  # Refresh's invoke()
        if ops.WATCHERS:
            out["timer_registered"] = bpy.app.timers.is_registered(ops.tick)
            # timers never fire in background mode: call the timer function as Blender would
            while ops.WATCHERS and time.monotonic() < deadline:
                time.sleep(ops.TICK_SECONDS)
                ops.tick()
                seen_running |= {s.farm_id for s in scene.farm.shots if s.state == "running"}
        while following() and time.monotonic() < deadline:
            time.sleep(0.5)
            bpy.ops.farm.refresh()
            seen_running |= {s.farm_id for s in scene.farm.shots if s.state == "running"}
        out["seen_running"] = sorted(seen_running)
        out["state"] = state(scene)
        bpy.ops.wm.save_as_mainfile(filepath=cfg["blend"])
except Exception:
    out["errors"].append(traceback.format_exc())
with open(cfg["out"], "w") as f:
    json.dump(out, f, indent=1)
