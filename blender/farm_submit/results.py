"""Farm results into Blender: farm paths mapped to local ones, clips as movie strips,
preview frames as images. Main thread only."""

from __future__ import annotations

import os
import tempfile

import bpy

STRIP_PREFIX = "farm:"
SCENE_STRIP = "farm:scene"


def map_path(path: str, mappings) -> str:
    """``path`` as seen on this machine: the longest matching farm prefix in ``mappings``
    (items with ``farm_path`` and ``local_path``) replaced by its local path."""
    best = None
    for m in mappings:
        farm = m.farm_path.rstrip("/\\")
        inside = path == farm or path.startswith((farm + "/", farm + "\\"))
        if farm and inside and (best is None or len(farm) > len(best[0])):
            best = (farm, m.local_path)
    if best is None:
        return path
    rest = path[len(best[0]) :].lstrip("/\\")
    return os.path.join(bpy.path.abspath(best[1]), *rest.replace("\\", "/").split("/"))


def strips(editor):
    """The editor's top-level strips: ``strips`` in Blender 4.4+ and 5.x, ``sequences``
    before."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def all_strips(editor):
    return editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all


def place_clip(scene, name: str, filepath: str, channel: int, start: int, end: int | None):
    """Put ``filepath`` on the sequencer as movie strip ``name`` at frame ``start`` on
    ``channel``, cut at ``end`` (inclusive) when the clip is longer; replaces a strip of
    the same name."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    old = all_strips(editor).get(name)
    if old is not None:
        strips(editor).remove(old)
    strip = strips(editor).new_movie(name, filepath, channel, start)
    if end is not None and strip.frame_final_end > end + 1:
        strip.frame_final_end = end + 1
    return strip


def preview_folder() -> str:
    """Where preview frames are kept: the extension's user folder, else a temp folder
    (legacy add-on)."""
    try:
        base = bpy.utils.extension_path_user(__package__, create=True)
    except (ValueError, AttributeError, TypeError):
        base = os.path.join(tempfile.gettempdir(), "farm_submit")
    folder = os.path.join(base, "previews")
    os.makedirs(folder, exist_ok=True)
    return folder


def show_preview(scene_id: str, shot_id: str, mime: str, data: bytes) -> str:
    """Save a preview frame and (re)load it as image ``Farm preview <shot>``; returns the
    image's name."""
    ext = {"image/jpeg": ".jpg", "image/webp": ".webp"}.get(mime, ".png")
    path = os.path.join(preview_folder(), f"{scene_id}--{shot_id}{ext}")
    with open(path, "wb") as f:
        f.write(data)
    name = f"Farm preview {shot_id}"
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(path, check_existing=False)
        image.name = name
    else:
        image.filepath = path
        image.reload()
    image.use_fake_user = False
    return image.name
