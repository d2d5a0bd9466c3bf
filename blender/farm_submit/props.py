"""Per-scene and per-shot settings (saved in the .blend; no secrets here) and the farm's
last known state of each shot."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

#: the farm's built-in templates and their descriptions (farm/data/catalog.json), offered
#: until the farm's own list is read
TEMPLATES = [
    ("quick_preview", "Cheapest drafts: Hunyuan Video 1.5 720p at both tiers on ComfyUI, 6 and 20 steps; on WanGP the Hunyuan Video 1.5 480p distilled models (lightx2v for text, step-distilled for a start image)."),
    ("standard_generation", "The everyday default: Wan 2.2 TI2V-5B previews and Wan 2.2 T2V A14B finals (a high-noise and a low-noise model) on ComfyUI, 8 and 30 steps; on WanGP Wan 2.2 FastWan 5B or I2V Lightning previews and Wan 2.2 A14B finals."),
    ("high_quality", "Most detail for finished shots: LTX-2 19B on ComfyUI (distilled previews, dev finals; start images through LTX-2 image-to-video), 10 and 40 steps; on WanGP LTX-2 22B (distilled previews, dev finals)."),
    ("character_focus", "Shots centred on characters, rendered as standard_generation is: Wan 2.2 TI2V-5B previews and Wan 2.2 T2V A14B finals on ComfyUI, 8 and 30 steps; Wan 2.2 on WanGP."),
    ("fantasy_content", "Stylised, imaginative looks: Hunyuan Video 1.5 720p at both tiers on ComfyUI, 8 and 30 steps; on WanGP Hunyuan Video 1.5 480p distilled previews and 720p finals."),
]  # fmt: skip
#: the farm's templates (built-in and the studio's own), as read by the last connection
FARM_TEMPLATES: list[tuple[str, str]] = []


def template_names(self=None, context=None, edit_text: str = "") -> list[str]:
    """The Template field's choices: the farm's list once read, else the built-in ones."""
    return [name for name, _ in FARM_TEMPLATES or TEMPLATES]


def template_choices(self=None, context=None, edit_text: str = "") -> list[tuple[str, str]]:
    """The Template field's search list: each choice with its description (what it is
    for, which engines render it), shown beside the name."""
    return list(FARM_TEMPLATES or TEMPLATES)


def template_description(name: str) -> str:
    """The description of template ``name`` ("" when the farm has not said)."""
    return dict(FARM_TEMPLATES or TEMPLATES).get(name.strip(), "")


MOVEMENTS = [
    ("zoom_in", "Zoom in", "", 1),
    ("zoom_out", "Zoom out", "", 2),
    ("pan_left", "Pan left", "", 4),
    ("pan_right", "Pan right", "", 8),
    ("tilt_up", "Tilt up", "", 16),
    ("tilt_down", "Tilt down", "", 32),
    ("tracking", "Tracking", "", 64),
    ("dolly_forward", "Dolly forward", "", 128),
    ("dolly_back", "Dolly back", "", 256),
]
QUALITIES = [
    ("preview", "Preview", "Fast draft renders"),
    ("final", "Final", "Final-quality renders"),
    ("preview_then_final", "Preview, then final", "A quick preview first, then the final"),
]


class FARM_PG_object(bpy.types.PropertyGroup):
    obj: PointerProperty(name="Object", type=bpy.types.Object,
                         description="An animated object whose path the shot's motion follows")  # fmt: skip


class FARM_PG_shot(bpy.types.PropertyGroup):
    """One camera marker's shot: what to generate, and what the farm did with it."""

    marker: StringProperty(name="Marker", description="The camera marker that starts this shot")
    action: StringProperty(name="Action", description="What happens in the shot (required)")
    camera_direction: StringProperty(
        name="Camera direction", description="How the camera frames the action"
    )
    camera_movements: EnumProperty(name="Camera movements", items=MOVEMENTS, options={"ENUM_FLAG"})
    style: StringProperty(name="Style", description="Look and mood")
    characters: StringProperty(
        name="Characters", description="Characters in the shot, separated by ';'"
    )
    negative_prompt: StringProperty(name="Avoid", description="What the shot must not show")
    template: StringProperty(
        name="Template",
        default="standard_generation",
        search=template_choices,
        search_options={"SORT", "SUGGESTION"},
        description="How the farm renders the shot: a template of the farm, built-in or the "
        "studio's own (Refresh Templates reads the farm's list)",
    )
    use_seed: BoolProperty(
        name="Fixed seed", description="Use this seed (else the farm picks a stable one)"
    )
    seed: IntProperty(name="Seed", min=0, default=0)
    duration: FloatProperty(
        name="Duration",
        min=0.0,
        max=15.0,
        default=0.0,
        unit="TIME_ABSOLUTE",
        description="Seconds to generate; 0 = the marker's frame range",
    )
    start_image: BoolProperty(
        name="Start image",
        description="Render the shot's first frame through its camera and animate it",
    )
    trajectory_objects: CollectionProperty(type=FARM_PG_object)
    active_object: IntProperty()
    # the farm's side, filled in by submit and refresh
    farm_id: StringProperty(name="Farm shot id")
    frame_start: IntProperty()
    frame_end: IntProperty()
    state: StringProperty(name="State")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    node: StringProperty(name="Node")
    error: StringProperty(name="Error")
    gate: StringProperty(name="Quality gate")
    clip: StringProperty(name="Clip", subtype="FILE_PATH")
    preview_image: StringProperty(name="Preview image")
    preview_at: StringProperty()  # fmt: skip


class FARM_PG_scene(bpy.types.PropertyGroup):
    """The scene's farm settings and its last submission."""

    scene_id: StringProperty(
        name="Scene id", description="The farm scene id; empty = <file>-<scene>"
    )
    title: StringProperty(name="Title")
    quality: EnumProperty(name="Quality", items=QUALITIES, default="preview")
    priority: IntProperty(name="Priority", min=0, max=9, default=5)
    replace: BoolProperty(name="Replace finished scene", default=True,
                          description="Render again over a finished farm scene of the same id (unchanged shots come from the farm's cache)")  # fmt: skip
    width: IntProperty(name="Width", min=128, max=1920, default=832)
    height: IntProperty(name="Height", min=128, max=1920, default=480)
    channel: IntProperty(name="Channel", min=1, max=127, default=2,
                         description="Sequencer channel of the shot clips; the assembled scene goes one above")  # fmt: skip
    shots: CollectionProperty(type=FARM_PG_shot)
    active_shot: IntProperty()
    # the last submission
    submission: StringProperty(name="Submission")
    submission_state: StringProperty(name="Submission state")
    farm_scene: StringProperty(name="Farm scene")
    scene_state: StringProperty(name="Scene state")
    scene_video: StringProperty(name="Scene video", subtype="FILE_PATH")
    errors: StringProperty(name="Errors", description="Problems, one per line")
    status: StringProperty(name="Status")


CLASSES = (FARM_PG_object, FARM_PG_shot, FARM_PG_scene)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.farm = PointerProperty(type=FARM_PG_scene)


def unregister() -> None:
    del bpy.types.Scene.farm
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
