"""ComfyUI workflows, with parameters bound by node title.

Workflows are API-format graphs, or editor-format files converted with the node's
``/object_info`` (:mod:`farm.comfy_editor`). A workflow names its parameter nodes with
``_meta.title`` (the node's title in the editor); :data:`BINDINGS` maps each farm
parameter to ``(title, input name)``. Nothing is ever bound by node position.
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

Graph = dict[str, dict[str, Any]]


def workflow_names(folder: Path) -> list[str]:
    """The workflows in ``folder`` (``*.json``), by name."""
    return sorted(p.stem for p in Path(folder).glob("*.json"))


def load_workflow(
    name: str, folder: Path, object_info: Callable[[], dict[str, Any]] | None = None
) -> Graph:
    """Read ``folder/name.json`` as an API-format graph.

    An editor-format file is converted with ``object_info()`` (the node's class
    definitions); without it, it is refused with the export hint.
    """
    path = folder / f"{name}.json"
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


def bind(
    graph: Graph,
    params: dict[str, Any],
    name: str = "workflow",
    bindings: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> Graph:
    """A copy of ``graph`` with each parameter written into its titled node's input:
    every ``(title, input)`` of ``bindings[param]`` (the engine's own), else
    :data:`BINDINGS`."""
    bindings = bindings or {}
    bound = copy.deepcopy(graph)
    for param, value in params.items():
        if param in bindings:
            for title, input_name in bindings[param]:
                _assign(bound, name, param, title, input_name, value)
            continue
        if param not in BINDINGS:
            known = ", ".join(dict.fromkeys([*BINDINGS, *bindings]))
            raise WorkflowError(f"unknown workflow parameter {param!r}; known: {known}")
        _assign(bound, name, param, *BINDINGS[param], value)
    return bound


def _assign(graph: Graph, name: str, param: str, title: str, input_name: str, value: Any) -> None:
    """Write ``value`` into input ``input_name`` of the one node titled ``title``."""
    ids = find_titled(graph, title)
    if not ids:
        raise WorkflowError(f"{name}: no node titled {title!r} to take parameter {param!r}")
    if len(ids) > 1:
        raise WorkflowError(
            f"{name}: {len(ids)} nodes are titled {title!r} (ids {', '.join(ids)}); titles must be unique"
        )
    inputs = graph[ids[0]].setdefault("inputs", {})
    if input_name not in inputs:
        cls = graph[ids[0]]["class_type"]
        raise WorkflowError(
            f"{name}: node {ids[0]} {title!r} ({cls}) has no input {input_name!r} for {param!r}"
        )
    inputs[input_name] = value
