"""Add-on preferences: where the farm is and how its paths look from here. Kept in
Blender's user preferences, never in a .blend (the password included)."""

from __future__ import annotations

import bpy
from bpy.props import CollectionProperty, FloatProperty, IntProperty, StringProperty


class FARM_PG_path_map(bpy.types.PropertyGroup):
    farm_path: StringProperty(
        name="Farm path", description="A folder as the farm names it, e.g. /srv/farm/storage"
    )
    local_path: StringProperty(name="Local path", subtype="DIR_PATH",
                               description="The same folder on this machine, e.g. //farm or Z:\\farm")  # fmt: skip


class FarmPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    redis_url: StringProperty(name="Redis URL", default="redis://127.0.0.1:6379/0",
                              description="The farm's Redis: redis://host:port/db, or rediss:// for TLS")  # fmt: skip
    password: StringProperty(name="Password", subtype="PASSWORD",
                             description="The farm's Redis password (kept in preferences, never in .blend files)")  # fmt: skip
    ca_cert: StringProperty(name="CA certificate", subtype="FILE_PATH",
                            description="For rediss:// (TLS): the CA certificate file (PEM) that signed the farm's Redis certificate; empty: this computer's trusted CAs")  # fmt: skip
    key_prefix: StringProperty(
        name="Key prefix", default="farm", description="The farm's FARM_PREFIX"
    )
    timeout: FloatProperty(name="Timeout", default=5.0, min=0.5, max=120.0, unit="TIME_ABSOLUTE",
                           description="Seconds to wait for Redis on each call")  # fmt: skip
    ingest_wait: FloatProperty(name="Wait for the farm", default=15.0, min=0.0, max=600.0, unit="TIME_ABSOLUTE",
                               description="Seconds Submit waits for the farm to accept or reject the scene")  # fmt: skip
    path_maps: CollectionProperty(type=FARM_PG_path_map)
    active_map: IntProperty()

    def draw(self, context) -> None:
        layout = self.layout
        layout.prop(self, "redis_url")
        layout.prop(self, "password")
        layout.prop(self, "ca_cert")
        row = layout.row()
        row.prop(self, "key_prefix")
        row.prop(self, "timeout")
        row.prop(self, "ingest_wait")
        layout.label(text="Farm storage → this machine:")
        for i, m in enumerate(self.path_maps):
            row = layout.row(align=True)
            row.prop(m, "farm_path", text="")
            row.prop(m, "local_path", text="")
            row.operator("farm.path_map_remove", text="", icon="X").index = i
        layout.operator("farm.path_map_add", icon="ADD")


def get(context=None):
    """This add-on's preferences."""
    return (context or bpy.context).preferences.addons[__package__].preferences


CLASSES = (FARM_PG_path_map, FarmPreferences)
