"""What a ComfyUI node can render, worked out from its ``/object_info``.

Pure: it takes the node's class definitions and the farm's workflows and says, per
workflow, whether the node can run it (every class installed, every fixed model file
present) and which diffusion models it offers for the workflow's model input. A Comfy
API v2 node lists neither classes nor models: :func:`listed_capabilities` works from the
model files its operator lists (FARM_CLOUD_MODELS) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from farm.catalog import Catalog, load_catalog
from farm.errors import WorkflowError
from farm.workflows import (
    Graph,
    Targets,
    bound_inputs,
    find_titled,
    load_workflow,
    target_problem,
    workflow_names,
)

#: loader inputs whose values name model files
FILE_INPUTS = frozenset(
    {
        "unet_name",
        "clip_name",
        "clip_name1",
        "clip_name2",
        "vae_name",
        "ckpt_name",
        "lora_name",
        "text_encoder",
    }  # fmt: skip
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


def check_graph(
    graph: Graph, info: dict[str, Any], bindings: Mapping[str, Targets] | None = None
) -> tuple[list[str], list[str]]:
    """``(problems, models)``: what keeps the node from running ``graph``, and the files it
    offers for the graph's bound diffusion-model inputs (``bindings``: the workflow's own)."""
    problems: list[str] = []
    bound = {(nid, name) for title, name in bound_inputs("model", bindings)
             for nid in find_titled(graph, title)}  # fmt: skip
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


def binding_problems(graph: Graph, bindings: Mapping[str, Targets], params: set[str]) -> list[str]:
    """Each bound input of ``params`` the graph lacks (its title or input)."""
    return [
        f"binding {param}: {problem}"
        for param in sorted(params)
        for title, name in bound_inputs(param, bindings)
        if (problem := target_problem(graph, title, name))
    ]


def node_capabilities(
    info: dict[str, Any], workflows_dir: Path, catalog: Catalog | None = None
) -> dict[str, dict[str, Any]]:
    """Per farm workflow (the catalogue's, a studio's own, and any other in
    ``workflows_dir``): ``{"ok", "missing": [reasons], "models": [diffusion model files
    offered], "catalog": [catalogue models it can render]}``."""
    return _capabilities(
        workflows_dir, catalog, lambda: info, lambda g, b: check_graph(g, info, b), None
    )


def listed_capabilities(
    files: list[str],
    offered: list[str],
    workflows_dir: Path,
    catalog: Catalog | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`node_capabilities` of a node known only by the model ``files`` it holds
    (``offered``: those its diffusion-model loaders offer): a workflow is runnable when
    every fixed model file it names is held; its classes are taken as installed (the v2
    API does not list them; a missing one fails the job at submission, as invalid)."""
    held = set(files)

    def check(graph: dict[str, Any], bindings: Any) -> tuple[list[str], list[str]]:
        bound = {(nid, n) for title, n in bound_inputs("model", bindings)
                 for nid in find_titled(graph, title)}  # fmt: skip
        problems = [
            f"node {nid} ({node['class_type']}): no file {value!r} for {inp} in FARM_CLOUD_MODELS"
            for nid, node in graph.items()
            for inp, value in node.get("inputs", {}).items()
            if inp in FILE_INPUTS and isinstance(value, str) and (nid, inp) not in bound
            and value not in held
        ]  # fmt: skip
        return problems, sorted(set(offered)) if bound else []

    return _capabilities(workflows_dir, catalog, None, check, held)


def _capabilities(
    workflows_dir: Path,
    catalog: Catalog | None,
    object_info: Callable[[], dict[str, Any]] | None,
    check: Callable[[dict[str, Any], Any], tuple[list[str], list[str]]],
    held: set[str] | None,
) -> dict[str, dict[str, Any]]:
    """Each workflow's capability entry: ``check(graph, bindings)`` gives the graph's
    problems and the diffusion models offered for its model input; a workflow without
    one offers the catalogue models it names (those in ``held``, when given)."""
    catalog = catalog or load_catalog()
    params = catalog.params()
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(catalog.workflows()) | set(workflow_names(workflows_dir))):
        path = catalog.workflow_file(name, workflows_dir)
        try:
            graph = load_workflow(name, workflows_dir, object_info, path)
        except WorkflowError as exc:
            out[name] = {"ok": False, "missing": [str(exc)], "models": [], "catalog": []}
            continue
        bindings = catalog.bindings(name)
        problems, models = check(graph, bindings)
        problems += binding_problems(graph, bindings, params.get(name, set()))
        mine = {k: m for k, m in catalog.models.items() if m.engine.workflow == name}
        if not any(find_titled(graph, t) for t, _ in bound_inputs("model", bindings)):
            models = sorted({f for m in mine.values() for f in m.files  # named in the graph
                             if held is None or f in held})  # fmt: skip
        usable = sorted(k for k, m in mine.items() if not problems
                        and all(f in models for f in m.files))  # fmt: skip
        out[name] = {"ok": not problems, "missing": problems, "models": models, "catalog": usable}
    return out
