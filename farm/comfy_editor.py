"""Editor-format ComfyUI workflows converted to the API format, as the browser does it.

The editor saves ``{"nodes": [...], "links": [...]}``; ``/prompt`` takes the API format.
:func:`editor_to_api` does what the frontend's ``graphToPrompt`` does when it queues a
prompt (Comfy-Org/ComfyUI_frontend: ``utils/executionUtil.ts``, ``ExecutableNodeDTO.ts``,
``LGraphNode.configure``, ``scripts/widgets.ts``, ``use{Int,Float,Combo,String}Widget.ts``,
``extensions/core/{uploadImage,uploadAudio,widgetInputs,dynamicPrompts,
saveImageExtraOutput}.ts``), with the class definitions from the node's ``/object_info``:

- ``widgets_values`` fill the class's widgets in order; frontend-only widgets take a value
  too and are never sent: ``control_after_generate`` (after an INT ``seed``/``noise_seed``
  or any input flagged with it; a flagged COMBO also gets ``control_filter_list``) and the
  ``upload`` button of media loaders (stored as ``"image"`` or ``""``). ``forceInput``
  inputs have no widget.
- Links resolve through Reroutes and bypassed nodes (mode 4) to the real output; muted
  nodes (mode 2) are dropped with every input linked from them. Reroute, PrimitiveNode,
  Note and MarkdownNote are never sent; a PrimitiveNode's value is written into each widget
  it feeds.
- Dynamic prompts (``{a|b}``) and ``%date:…%``/``%Node.widget%`` file names, which the
  browser resolves at queue time, are refused when they would need a random pick or the
  clock; comments in dynamic-prompt text are stripped as the browser does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from farm.errors import WorkflowError

MUTED, BYPASSED = 2, 4
VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_TYPES = frozenset({"IMAGEUPLOAD", "AUDIOUPLOAD"})  # the media loaders' upload button
IMAGE_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
SEED_NAMES = ("seed", "noise_seed")
#: classes whose ``filename_prefix`` the browser runs through its %…% substitution
SAVE_NODE_TYPES = frozenset({
    "SaveImage", "SaveImageAdvanced", "SaveSVGNode", "SaveVideo", "SaveAnimatedWEBP",
    "SaveWEBM", "SaveAudio", "SaveAudioMP3", "SaveAudioOpus", "SaveAudioAdvanced", "SaveGLB",
    "SaveAnimatedPNG", "CLIPSave", "VAESave", "ModelSave", "LoraSave", "SaveLatent",
})  # fmt: skip
REPLACE_PROPERTY = "Run widget replace on values"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")
ESCAPED = re.compile(r"\\([{}|])")
SUBSTITUTION = re.compile(r"%([^%]+)%")

Slot = tuple[str, int]  # (origin node id, output index)


@dataclass(frozen=True)
class Widget:
    """One widget the frontend creates for a class; ``sent`` is False for frontend-only ones."""

    name: str
    sent: bool = True
    dynamic: bool = False  # a STRING with dynamicPrompts: {a|b} choices, comments stripped


@dataclass(frozen=True)
class Link:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int


def is_editor_format(data: Any) -> bool:
    """True for the editor's saved format ({"nodes": [...], "links": [...], ...})."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("nodes"), list)
        and ("links" in data or "state" in data or "last_node_id" in data)
    )


def editor_to_api(workflow: dict, object_info: dict) -> dict[str, dict]:
    """Convert an editor-format workflow to an API-format graph using the node's /object_info.

    Raises farm.errors.WorkflowError listing EVERY problem at once (one per line), each naming
    the node id, its type/title and what could not be converted, and how to fix it."""
    if not is_editor_format(workflow):
        raise WorkflowError(
            'not an editor-format workflow: expected {"nodes": [...], "links": [...]}'
        )
    graph = _Graph(workflow, object_info)
    output: dict[str, dict] = {}
    for node in graph.nodes.values():
        converted = graph.convert(node)
        if converted is not None:
            output[str(node.get("id"))] = converted
    for converted in output.values():  # inputs linked from dropped (muted) nodes go too
        inputs = converted["inputs"]
        for name in [n for n, v in inputs.items() if _is_link(v) and v[0] not in output]:
            del inputs[name]
    if graph.problems:
        problems = list(dict.fromkeys(graph.problems))
        raise WorkflowError(
            f"cannot convert the editor-format workflow ({len(problems)} problem"
            f"{'s' if len(problems) > 1 else ''}):\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return output


def class_widgets(info: dict) -> list[Widget]:
    """The widgets the frontend creates for a class, in ``widgets_values`` order."""
    widgets: list[Widget] = []
    for name, spec in _ordered_inputs(info):
        kind, options = _kind(spec), _options(spec)
        if kind in UPLOAD_TYPES:
            widgets.append(Widget(name, sent=False))
        elif kind in WIDGET_TYPES and not options.get("forceInput"):
            dynamic = kind == "STRING" and options.get("dynamicPrompts") is True
            widgets.append(Widget(name, dynamic=dynamic))
            widgets += [Widget(c, sent=False) for c in _controls(name, kind, options)]
    return widgets


class _Graph:
    """One editor workflow being converted; problems are collected, never raised one by one."""

    def __init__(self, workflow: dict, object_info: dict) -> None:
        self.info = object_info
        self.problems: list[str] = []
        self.nodes = {str(n.get("id")): n for n in workflow["nodes"] if isinstance(n, dict)}
        self.links = self._link_table(workflow.get("links") or [])
        definitions = workflow.get("definitions") or {}
        self.subgraphs = {str(s.get("id")) for s in definitions.get("subgraphs") or []}
        self.primitives = self._primitive_values()

    def convert(self, node: dict) -> dict | None:
        """The API entry of ``node``, or None when the node is not sent."""
        kind = node.get("type")
        if kind in VIRTUAL_TYPES or node.get("mode") in (MUTED, BYPASSED):
            return None
        info = self.info.get(kind)
        if not isinstance(info, dict):
            self.problems.append(f"{self.label(node)}: {self._missing(kind)}")
            return None
        widgets = class_widgets(info)
        inputs = self._widget_inputs(node, widgets)
        names = {w.name for w in widgets if w.sent}
        for slot, spec in enumerate(node.get("inputs") or []):
            widget = spec.get("widget") or {}
            if widget and widget.get("name") not in names:
                continue  # the frontend removes inputs whose widget the class no longer has
            origin = self.resolve_input(node, slot, None, set())
            if origin is not None:
                inputs[spec.get("name")] = [origin[0], origin[1]]
        title = node.get("title") or info.get("display_name") or kind
        return {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}

    def resolve_input(self, node: dict, slot: int, kind: Any, seen: set) -> Slot | None:
        """The real output feeding input ``slot`` (ExecutableNodeDTO.resolveInput)."""
        if self._looped(node, "input", slot, seen):
            return None
        spec = (node.get("inputs") or [])[slot]
        link_id = spec.get("link")
        if link_id is None:
            return None
        link = self.links.get(link_id)
        origin = self.nodes.get(link.origin_id) if link else None
        if origin is None:
            name = spec.get("name")
            problem = (
                f"is linked (link {link_id}) from node {link.origin_id}, which is not in the "
                "workflow"
                if link
                else f"uses link {link_id}, which is not in the workflow's links"
            )
            self.problems.append(
                f"{self.label(node)}: input '{name}' {problem}; reconnect the input in the "
                "editor and save again"
            )
            return None
        kind = spec.get("type") if kind is None else kind
        return self.resolve_output(origin, link.origin_slot, kind, seen)

    def resolve_output(self, node: dict, slot: int, kind: Any, seen: set) -> Slot | None:
        """Where output ``slot`` really comes from (ExecutableNodeDTO.resolveOutput)."""
        if self._looped(node, "output", slot, seen):
            return None
        if node.get("mode") == BYPASSED:
            through = _bypass_slot(node, slot, kind)
            return None if through is None else self.resolve_input(node, through, None, seen)
        if node.get("type") in VIRTUAL_TYPES:
            has_input = slot < len(node.get("inputs") or [])
            return self.resolve_input(node, slot, kind, seen) if has_input else None
        return str(node.get("id")), int(slot)

    def label(self, node: dict) -> str:
        kind = node.get("type")
        info = self.info.get(kind)
        shown = info.get("display_name") if isinstance(info, dict) else None
        return f"node {node.get('id')} '{node.get('title') or shown or kind}' ({kind})"

    def _looped(self, node: dict, side: str, slot: int, seen: set) -> bool:
        key = (str(node.get("id")), side, slot)
        if key in seen:
            self.problems.append(
                f"{self.label(node)}: its links form a loop through Reroute or bypassed nodes; "
                "break the loop in the editor"
            )
            return True
        seen.add(key)
        return False

    def _missing(self, kind: Any) -> str:
        if str(kind) in self.subgraphs or UUID.match(str(kind)):
            return (
                "is a subgraph (definitions.subgraphs), which this converter does not expand; "
                "in the editor, right-click it, choose 'Unpack Subgraph' and save again"
            )
        if str(kind).startswith(("workflow>", "workflow/")):
            return (
                "is a group node, which this converter does not expand; in the editor, "
                "right-click it, choose 'Convert to nodes' and save again"
            )
        return (
            "class not installed on this ComfyUI server; install the custom node pack that "
            "provides it, or remove the node from the workflow"
        )

    def _widget_inputs(self, node: dict, widgets: list[Widget]) -> dict[str, Any]:
        """The values of the node's sent widgets, as the browser serialises them."""
        values = node.get("widgets_values")
        by_name = values if isinstance(values, dict) else None
        positional = values if isinstance(values, list) else []
        inputs: dict[str, Any] = {}
        for index, widget in enumerate(widgets):
            if not widget.sent:
                continue
            key = (str(node.get("id")), widget.name)
            if key in self.primitives:
                value = self.primitives[key]
            elif by_name is not None and widget.name in by_name:
                value = by_name[widget.name]
            elif by_name is None and index < len(positional):
                value = positional[index]
            else:
                self._too_few(node, widgets, values)
                return inputs
            inputs[widget.name] = self._serialised(node, widget, value)
        return inputs

    def _too_few(self, node: dict, widgets: list[Widget], values: Any) -> None:
        count = len(values) if isinstance(values, list | dict) else 0
        names = ", ".join(w.name for w in widgets)
        self.problems.append(
            f"{self.label(node)}: has {count} widget values but this server's "
            f"{node.get('type')} takes {len(widgets)} ({names}); the node changed since the "
            "workflow was saved: open the workflow in this server's editor and save it again"
        )

    def _serialised(self, node: dict, widget: Widget, value: Any) -> Any:
        """``value`` as the browser sends it (dynamic prompts, %…% names, arrays boxed)."""
        if widget.dynamic and isinstance(value, str):
            resolved = dynamic_prompt(value)
            if resolved is None:
                self.problems.append(
                    f"{self.label(node)}: {widget.name} has a dynamic-prompt choice {{a|b}}, which "
                    "the editor picks at random on every queue; keep one option, or escape the "
                    "braces as \\{ \\| \\}"
                )
            value = value if resolved is None else resolved
        if widget.name == "filename_prefix" and node.get("type") in SAVE_NODE_TYPES:
            self._check_substitution(node, widget.name, value)
        return {"__value__": value} if isinstance(value, list) else value

    def _check_substitution(self, node: dict, name: str, value: Any) -> None:
        if isinstance(value, str) and any(
            len(m.split(".")) == 2 or m.startswith("date:") for m in SUBSTITUTION.findall(value)
        ):
            self.problems.append(
                f"{self.label(node)}: {name} {value!r} uses the editor's %date:…% or "
                "%Node.widget% substitution, which only the browser performs; write it out"
            )

    def _primitive_values(self) -> dict[tuple[str, str], Any]:
        """(node id, widget name) -> value written by a PrimitiveNode (widgetInputs.ts)."""
        values: dict[tuple[str, str], Any] = {}
        for node in self.nodes.values():
            if node.get("type") != "PrimitiveNode":
                continue
            links = _output_links(node)
            stored = node.get("widgets_values")
            if not links:
                continue
            if not isinstance(stored, list) or not stored:
                self.problems.append(
                    f"{self.label(node)}: has no value (widgets_values is empty); set its value "
                    "in the editor and save the workflow again"
                )
                continue
            if (node.get("properties") or {}).get(REPLACE_PROPERTY):
                self._check_substitution(node, "value", stored[0])
            for target, widget in self._fed_widgets(links, set()):
                values[(target, widget)] = stored[0]
        return values

    def _fed_widgets(self, link_ids: list, seen: set) -> list[tuple[str, str]]:
        """(node id, widget name) of each widget input the links reach, through Reroutes."""
        fed: list[tuple[str, str]] = []
        for link_id in link_ids:
            link = self.links.get(link_id)
            node = self.nodes.get(link.target_id) if link else None
            if link is None or node is None or link_id in seen:
                continue
            seen.add(link_id)
            if node.get("type") == "Reroute":
                fed += self._fed_widgets(_output_links(node), seen)
                continue
            specs = node.get("inputs") or []
            slot = link.target_slot
            widget = specs[slot].get("widget") if slot < len(specs) else None
            if widget and widget.get("name"):
                fed.append((str(node.get("id")), widget["name"]))
        return fed

    def _link_table(self, raw: list) -> dict[Any, Link]:
        table: dict[Any, Link] = {}
        for index, item in enumerate(raw):
            if isinstance(item, dict):
                keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot")
                item = [item.get(k) for k in keys]
            try:
                link_id, origin, origin_slot, target, target_slot = item[:5]
                table[link_id] = Link(str(origin), int(origin_slot), str(target), int(target_slot))
            except (TypeError, ValueError):
                self.problems.append(
                    f"links[{index}] is not a link ([id, origin_id, origin_slot, target_id, "
                    "target_slot, type] or an object with those keys); save the workflow again"
                )
        return table


def dynamic_prompt(text: str) -> str | None:
    """The frontend's processDynamicPrompt when it picks nothing at random; else None.

    Strips ``//`` and ``/* */`` comments, unwraps single-option groups ``{a}`` and unescapes
    ``\\{ \\} \\|``; a group with two different options (``{a|b}``) gives None."""
    source = COMMENTS.sub("", text)
    pos, out = 0, ""
    while pos < len(source):
        char, pos = source[pos], pos + 1
        if char == "\\":
            out, pos = out + "\\" + source[pos : pos + 1], pos + 1
        elif char == "{":
            options, pos = _choice(source, pos)
            chosen = dynamic_prompt(options[0]) if len(set(options)) == 1 else None
            if chosen is None:
                return None
            out += chosen
        else:
            out += char
    return ESCAPED.sub(r"\1", out)


def _choice(source: str, pos: int) -> tuple[list[str], int]:
    """The options of the ``{…}`` group starting at ``pos`` and the position after it."""
    options, current, depth = [], "", 0
    while pos < len(source):
        char, pos = source[pos], pos + 1
        if char == "\\":
            current, pos = current + "\\" + source[pos : pos + 1], pos + 1
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if not depth:
                break
            depth -= 1
        elif char == "|" and not depth:
            options.append(current)
            current = ""
            continue
        current += char
    return [*options, current], pos


def _ordered_inputs(info: dict) -> list[tuple[str, Any]]:
    """The class's inputs in the frontend's order, with the upload button where it adds it.

    The upload input is appended to ``required`` (uploadImage.ts/uploadAudio.ts); with
    ``input_order`` it lands after every listed input (getOrderedInputSpecs)."""
    spec = info.get("input") or {}
    required = dict(spec.get("required") or {})
    optional = dict(spec.get("optional") or {})
    if _has_upload(required):
        required["upload"] = ("IMAGEUPLOAD", {})
    flat = {
        **{n: (s, False) for n, s in required.items()},
        **{n: (s, True) for n, s in optional.items()},
    }
    order = info.get("input_order")
    if not isinstance(order, dict):
        return [(name, spec) for name, (spec, _) in flat.items()]
    names = [n for n in order.get("required") or [] if n in flat and not flat[n][1]]
    names += [n for n in order.get("optional") or [] if n in flat and flat[n][1]]
    names += [n for n in flat if n not in names]
    return [(name, flat[name][0]) for name in names]


def _has_upload(required: dict) -> bool:
    image = any(
        _kind(spec) == "COMBO" and any(_options(spec).get(f) is True for f in IMAGE_UPLOAD_FLAGS)
        for spec in required.values()
    )
    return image or _options(required.get("audio")).get("audio_upload") is True


def _controls(name: str, kind: str, options: dict) -> tuple[str, ...]:
    """The control widgets the frontend adds after an input's widget."""
    flag = options.get("control_after_generate")
    if kind == "INT" and (flag if flag is not None else name in SEED_NAMES):
        return ("control_after_generate",)
    if kind == "FLOAT" and flag:
        return ("control_after_generate",)
    return ("control_after_generate", "control_filter_list") if kind == "COMBO" and flag else ()


def _bypass_slot(node: dict, slot: int, kind: Any) -> int | None:
    """The input a bypassed node passes output ``slot`` through (#getBypassSlotIndex)."""
    inputs = node.get("inputs") or []
    outputs = node.get("outputs") or []
    output_kind = outputs[slot].get("type") if slot < len(outputs) else None
    if not inputs:
        return None
    if kind in ("*", ""):
        return slot if slot < len(inputs) else 0
    types = [spec.get("type") for spec in inputs]
    if slot < len(types) and _fits(types[slot], output_kind) and _fits(types[slot], kind):
        return slot
    if kind in types:
        return types.index(kind)
    matches = [i for i, t in enumerate(types) if _fits(t, output_kind) and _fits(t, kind)]
    return matches[0] if matches else None


def _fits(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection: '*' and '' match all; 'A,B' lists match any member."""
    a, b = (0 if t in ("", "*") else t for t in (a, b))
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_fits(x, y) for x in a.split(",") for y in b.split(","))


def _kind(spec: Any) -> str | None:
    if not isinstance(spec, list | tuple) or not spec:
        return None
    return "COMBO" if isinstance(spec[0], list) else spec[0] if isinstance(spec[0], str) else None


def _options(spec: Any) -> dict:
    ok = isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], dict)
    return spec[1] if ok else {}


def _output_links(node: dict) -> list:
    return [i for output in node.get("outputs") or [] for i in output.get("links") or []]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2
