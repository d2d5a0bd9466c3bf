"""Panels: in the 3D viewport's and the sequencer's sidebar, tab "Farm"."""

from __future__ import annotations

import textwrap

import bpy

from . import export, ops, props

STATE_ICONS = {
    "queued": "TIME", "sending": "EXPORT", "bound": "LINKED", "running": "RENDER_ANIMATION",
    "scoring": "SEQ_HISTOGRAM", "done": "CHECKMARK", "failed": "ERROR", "cancelled": "CANCEL",
    "rejected": "ERROR",
}  # fmt: skip


class FARM_UL_shots(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.label(text=item.marker, icon=STATE_ICONS.get(item.state, "SEQUENCE"))
        if item.state == "running":
            row.progress(factor=item.progress, type="BAR", text=f"{item.progress:.0%}")
        else:
            row.label(text=item.state or "-")


def _errors(layout, text: str) -> None:
    if not text:
        return
    box = layout.box()
    for line in text.splitlines():
        box.label(text=line, icon="ERROR")


def _wrapped(layout, text: str, width: int = 48) -> None:
    """``text`` as dimmed labels of at most ``width`` characters (a label does not wrap)."""
    col = layout.column(align=True)
    col.enabled = False
    for line in textwrap.wrap(text, width):
        col.label(text=line)


class _Sidebar:
    bl_region_type = "UI"
    bl_category = "Farm"


class FARM_PT_main(_Sidebar):
    bl_label = "Render Farm"

    def draw(self, context) -> None:
        layout = self.layout
        farm = context.scene.farm
        col = layout.column(align=True)
        col.prop(farm, "scene_id", placeholder=export.default_scene_id(context.scene))
        col.prop(farm, "title")
        row = layout.row(align=True)
        row.prop(farm, "quality", text="")
        row.prop(farm, "priority")
        row = layout.row(align=True)
        row.prop(farm, "width")
        row.prop(farm, "height")
        layout.prop(farm, "replace")
        layout.prop(farm, "channel")
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("farm.submit", icon="EXPORT")
        row = layout.row(align=True)
        row.operator("farm.refresh", icon="FILE_REFRESH")
        row.operator("farm.stop_watching", text="", icon="PAUSE")
        if farm.status:
            layout.label(text=farm.status, icon="INFO")
        _errors(layout, farm.errors)


class FARM_PT_shots(_Sidebar):
    bl_label = "Shots"

    def draw(self, context) -> None:
        layout = self.layout
        farm = context.scene.farm
        row = layout.row()
        row.template_list("FARM_UL_shots", "", farm, "shots", farm, "active_shot", rows=3)
        row.operator("farm.sync_shots", text="", icon="MARKER_HLT")
        if not (0 <= farm.active_shot < len(farm.shots)):
            return
        s = farm.shots[farm.active_shot]
        col = layout.column()
        col.prop(s, "action")
        col.prop(s, "camera_direction")
        col.prop(s, "camera_movements")
        col.prop(s, "style")
        col.prop(s, "characters")
        col.prop(s, "negative_prompt")
        row = col.row(align=True)
        row.prop(s, "template")
        row.operator("farm.templates", text="", icon="FILE_REFRESH")
        description = props.template_description(s.template)
        if description:
            _wrapped(col, description)
        row = col.row(align=True)
        row.prop(s, "use_seed")
        sub = row.row()
        sub.enabled = s.use_seed
        sub.prop(s, "seed")
        col.prop(s, "duration")
        col.prop(s, "start_image")
        box = col.box()
        box.label(text="Trajectories (objects the motion follows):")
        for i, o in enumerate(s.trajectory_objects):
            r = box.row(align=True)
            r.prop(o, "obj", text="")
            r.operator("farm.object_remove", text="", icon="X").index = i
        box.operator("farm.object_add", icon="ADD")
        if s.state:
            box = layout.box()
            box.label(text=f"{s.state} on {s.node or '-'}  gate: {s.gate or '-'}")
            if s.state == "running":
                box.progress(factor=s.progress, type="BAR", text=f"{s.progress:.0%}")
            if s.clip:
                box.label(text=s.clip, icon="FILE_MOVIE")
            _errors(box, s.error)
            image = bpy.data.images.get(s.preview_image) if s.preview_image else None
            if image is not None:
                box.template_icon(icon_value=image.preview_ensure().icon_id, scale=8.0)


def _panels():
    made = []
    for space in ("VIEW_3D", "SEQUENCE_EDITOR"):
        for base in (FARM_PT_main, FARM_PT_shots):
            name = f"{base.__name__}_{space.lower()}"
            made.append(type(name, (base, bpy.types.Panel),
                             {"bl_space_type": space, "bl_idname": name}))  # fmt: skip
    return made


CLASSES = (FARM_UL_shots, *_panels())
_ = ops  # the panels' buttons are ops' operators
