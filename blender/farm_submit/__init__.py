"""farm: submit camera-marker shots to the render farm, follow them, get the clips back.

Talks to the farm through its Redis only (a submissions stream and the farm's state
keys, see docs/submissions.md); never imports Celery or the farm package. Packaged as a
Blender 4.2+ extension (``blender_manifest.toml``, redis wheels bundled) and as a legacy
zip add-on (redis vendored in ``_vendor``): ``make addon``.
"""

bl_info = {
    "name": "Render Farm Submit",
    "author": "farm",
    "version": (1, 0, 0),
    "blender": (4, 2, 0),
    "location": "3D Viewport / Sequencer ▸ Sidebar ▸ Farm",
    "description": "Submit camera-marker shots to the AI video render farm; clips come back as strips",
    "category": "Render",
}

import bpy  # noqa: E402

from . import ops, prefs, props, ui  # noqa: E402

CLASSES = (*prefs.CLASSES, *props.CLASSES, *ops.CLASSES, *ui.CLASSES)


def register() -> None:
    for cls in prefs.CLASSES:
        bpy.utils.register_class(cls)
    props.register()
    for cls in (*ops.CLASSES, *ui.CLASSES):
        bpy.utils.register_class(cls)


def unregister() -> None:
    ops.unregister_timers()
    for cls in reversed((*ops.CLASSES, *ui.CLASSES)):
        bpy.utils.unregister_class(cls)
    props.unregister()
    for cls in reversed(prefs.CLASSES):
        bpy.utils.unregister_class(cls)
