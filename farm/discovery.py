"""What a ComfyUI node can render, worked out from its ``/object_info``.

Pure: it takes the node's class definitions and the farm's workflows and says, per
workflow, whether the node can run it (every class installed, every fixed model file
present) and which diffusion models it offers for the workflow's model input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from farm.catalog import Catalog, load_catalog
from farm.errors import WorkflowError
from farm.workflows import BINDINGS, Graph, find_titled, load_workflow, workflow_names

#: loader inputs whose values name model files
FILE_INPUTS = frozenset(
    {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "lora_name"}
)


def input_spec(info: dict[str, Any], class_type: str, name: str) -> Any:
    """The ``/object_info`` spec of input ``name`` of ``class_type`` (None if unknown)."""
    inputs = (info.get(class_type) or {}).get("input") or {}
    for group in ("required", "optional"):
        spec = (inputs.get(group) or {}).get(name)
        if spec is not None:
            return spec
    return None


def combo_options(spec: Any) -> list[str] | None:
    """The options of a combo input in either dialect, or None for other inputs."""
    if not isinstance(spec, list | tuple) or not spec:
        return None
    if isinstance(spec[0], list):
        return [str(o) for o in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return [str(o) for o in spec[1].get("options", [])]
    return None


def model_inputs(
    graph: Graph, bindings: Mapping[str, Sequence[tuple[str, str]]] | None = None
) -> set[tuple[str, str]]:
    """``(node id, input)`` of each input the farm binds a diffusion model to: the
    engine's ``model``, ``model2``, ... bindings, else :data:`BINDINGS` ``model``."""
    bindings = bindings or {}
    targets = [t for p, ts in bindings.items() if re.fullmatch(r"model\d*", p) for t in ts]
    return {
        (node_id, input_name)
        for title, input_name in targets or [BINDINGS["model"]]
        for node_id in find_titled(graph, title)
    }


def check_graph(
    graph: Graph,
    info: dict[str, Any],
    bindings: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> tuple[list[str], list[str]]:
    """``(problems, models)``: what keeps the node from running ``graph``, and the files it
    offers for the graph's bound diffusion-model inputs."""
    problems: list[str] = []
    bound = model_inputs(graph, bindings)
    for node_id, node in graph.items():
        cls = node["class_type"]
        if cls not in info:
            problems.append(f"node {node_id}: class {cls} is not installed")
            continue
        for name, value in node.get("inputs", {}).items():
            if name not in FILE_INPUTS or not isinstance(value, str) or (node_id, name) in bound:
                continue
            options = combo_options(input_spec(info, cls, name))
            if options is not None and value not in options:
                problems.append(f"node {node_id} ({cls}): no file {value!r} for {name}")
    models: list[str] = []
    for node_id, name in sorted(bound):
        options = combo_options(input_spec(info, graph[node_id]["class_type"], name)) or []
        models += [m for m in options if m not in models]
    return problems, models


def node_capabilities(
    info: dict[str, Any], workflows_dir: Path, catalog: Catalog | None = None
) -> dict[str, dict[str, Any]]:
    """Per farm workflow: ``{"ok", "missing": [reasons], "models": [diffusion model files
    offered], "catalog": [catalogue models it can render]}``."""
    catalog = catalog or load_catalog()
    out: dict[str, dict[str, Any]] = {}
    for name in workflow_names(workflows_dir):
        try:
            graph = load_workflow(name, workflows_dir, lambda: info)
        except WorkflowError as exc:
            out[name] = {"ok": False, "missing": [str(exc)], "models": [], "catalog": []}
            continue
        problems, models = check_graph(graph, info, catalog.bindings(name))
        usable = sorted(
            key
            for key, model in catalog.models.items()
            if model.engine.workflow == name and not problems
            and all(f in models for f in model.files)
        )  # fmt: skip
        out[name] = {"ok": not problems, "missing": problems, "models": models, "catalog": usable}
    return out
