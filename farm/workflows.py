"""ComfyUI workflows, with parameters bound by node title.

Workflows are API-format graphs, or editor-format files converted with the node's
``/object_info`` (:mod:`farm.comfy_editor`). A workflow names its parameter nodes with
``_meta.title`` (the node's title in the editor); :data:`BINDINGS` maps each farm
parameter to ``(title, input name)``; an engine may bind a parameter elsewhere, to several
inputs or to none (its ``bindings``, e.g. a studio's, :mod:`farm.studio`). Nothing is ever
bound by node position.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from farm.comfy_editor import editor_to_api, is_editor_format
from farm.errors import WorkflowError
from farm.jsonfile import read_json

#: farm parameter -> (node title, input name)
BINDINGS: dict[str, tuple[str, str]] = {
    "prompt": ("Positive Prompt", "text"),
    "negative": ("Negative Prompt", "text"),
    "seed": ("Sampler", "seed"),
    "steps": ("Sampler", "steps"),
    "width": ("Video Latent", "width"),
    "height": ("Video Latent", "height"),
    "length": ("Video Latent", "length"),
    "tracks": ("Video Latent", "tracks"),
    "model": ("Diffusion Model", "unet_name"),
    "start_image": ("Start Image", "image"),
    "fps": ("Create Video", "fps"),
    "filename_prefix": ("Save Video", "filename_prefix"),
}
#: the node inputs a parameter is written to: ``((title, input name), ...)``
Targets = tuple[tuple[str, str], ...]

Graph = dict[str, dict[str, Any]]


def workflow_names(folder: Path) -> list[str]:
    """The workflows in ``folder`` (``*.json``), by name."""
    return sorted(p.stem for p in Path(folder).glob("*.json"))


def load_workflow(
    name: str,
    folder: Path,
    object_info: Callable[[], dict[str, Any]] | None = None,
    path: Path | None = None,
) -> Graph:
    """Read ``folder/name.json`` (or ``path``) as an API-format graph.

    An editor-format file is converted with ``object_info()`` (the node's class
    definitions); without it, it is refused with the export hint.
    """
    path = path or folder / f"{name}.json"
    data = read_json(path, f"workflow {name!r}", WorkflowError)
    return as_api_graph(data, str(path), object_info)


def as_api_graph(
    data: Any, where: str, object_info: Callable[[], dict[str, Any]] | None = None
) -> Graph:
    """``data`` as an API-format graph, converting the editor format when possible."""
    if is_editor_format(data) and object_info is not None:
        try:
            data = editor_to_api(data, object_info())
        except WorkflowError as exc:
            raise WorkflowError(f"{where}: editor-format workflow not converted:\n{exc}") from None
    check_api_format(data, where)
    return data


def check_api_format(data: Any, where: str) -> None:
    """Raise :class:`WorkflowError` unless ``data`` is an API-format graph."""
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(
            f"{where} is in the editor (UI) format; export it from ComfyUI with "
            "'Export (API)' / 'Save (API Format)'"
        )
    if not isinstance(data, dict) or not data:
        raise WorkflowError(f"{where}: an API-format workflow is a non-empty JSON object of nodes")
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"{where}: node {node_id!r} has no class_type")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{where}: node {node_id!r} inputs must be an object")


def find_titled(graph: Graph, title: str) -> list[str]:
    """Ids of the nodes whose ``_meta.title`` is ``title``."""
    return [nid for nid, node in graph.items() if node.get("_meta", {}).get("title") == title]


def model_params(models: Sequence[str]) -> dict[str, str]:
    """A job's diffusion models as parameters: the primary ``model``, then ``model2``, ..."""
    return {("model" if i == 0 else f"model{i + 1}"): m for i, m in enumerate(models)}


def targets(param: str, bindings: Mapping[str, Targets] | None = None) -> Targets:
    """Where ``param`` is written: ``bindings[param]`` (an engine's own; () for none),
    else its :data:`BINDINGS` input (() for a parameter no workflow takes)."""
    if bindings and param in bindings:
        return tuple(bindings[param])
    return (BINDINGS[param],) if param in BINDINGS else ()


def model_bindings(bindings: Mapping[str, Targets] | None = None) -> dict[str, Targets]:
    """The diffusion-model parameters a workflow takes (``model``, ``model2``, ...: one
    per loader) and where: none when the workflow names its model files itself."""
    out: dict[str, Targets] = {}
    while found := targets("model" if not out else f"model{len(out) + 1}", bindings):
        out["model" if not out else f"model{len(out) + 1}"] = found
    return out


def bound_inputs(param: str, bindings: Mapping[str, Targets] | None = None) -> Targets:
    """Every input ``param`` is written to; for ``model``, every model loader's."""
    if param == "model":
        return tuple(t for found in model_bindings(bindings).values() for t in found)
    return targets(param, bindings)


def bind(
    graph: Graph,
    params: dict[str, Any],
    name: str = "workflow",
    bindings: Mapping[str, Targets] | None = None,
) -> Graph:
    """A copy of ``graph`` with each parameter written into its titled node's input:
    every ``(title, input)`` of ``bindings[param]`` (the engine's own; none: the parameter
    is not taken), else :data:`BINDINGS`."""
    bound = copy.deepcopy(graph)
    for param, value in params.items():
        if param not in BINDINGS and param not in (bindings or {}):
            known = ", ".join(dict.fromkeys([*BINDINGS, *(bindings or {})]))
            raise WorkflowError(f"unknown workflow parameter {param!r}; known: {known}")
        for title, input_name in targets(param, bindings):
            node_id = target_node(bound, title, input_name, name, param)
            bound[node_id]["inputs"][input_name] = value
    return bound


def target_node(graph: Graph, title: str, input_name: str, name: str, param: str) -> str:
    """The id of the one node titled ``title``, which has the input ``input_name``."""
    problem = target_problem(graph, title, input_name)
    if problem:
        raise WorkflowError(f"{name}: {problem} to take parameter {param!r}")
    return find_titled(graph, title)[0]


def target_problem(graph: Graph, title: str, input_name: str) -> str | None:
    """Why ``graph`` has no one node titled ``title`` with input ``input_name`` (None: it
    has)."""
    ids = find_titled(graph, title)
    if not ids:
        return f"no node titled {title!r}"
    if len(ids) > 1:
        return (
            f"{len(ids)} nodes are titled {title!r} (ids {', '.join(ids)}); titles must be unique"
        )
    if input_name not in graph[ids[0]].get("inputs", {}):
        return (
            f"node {ids[0]} {title!r} ({graph[ids[0]]['class_type']}) has no input {input_name!r}"
        )
    return None
