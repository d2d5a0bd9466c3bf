"""What ``farm templates`` shows: every template of the catalogue, where it is defined,
how each tier renders each input kind, and which live nodes can — or what each lacks.

Pure: it takes the catalogue and the nodes as the planner sees them (:class:`NodeInfo`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

from farm.catalog import KINDS, TIERS, Catalog
from farm.planning import Job, NodeInfo


def routes(catalog: Catalog, template: str, tier: str) -> list[dict[str, Any]]:
    """The ways ``template`` renders at ``tier``: per input kind, its ComfyUI workflow and
    model files, and its WanGP model id."""
    out: list[dict[str, Any]] = []
    for kind in KINDS:
        image, tracks = kind != "text", kind == "trajectories"
        model = catalog.model_for(template, tier, start_image=image, trajectories=tracks)
        if model is not None:
            out.append({"kind": kind, "backend": "comfyui", "workflow": model.engine.workflow,
                        "models": list(model.files),
                        "files": {k: list(v) for k, v in model.required_files().items()}})  # fmt: skip
        wan = catalog.wan_model_for(template, tier, start_image=image, trajectories=tracks)
        if wan is not None:
            out.append({"kind": kind, "backend": "wan2gp", "workflow": "wangp",
                        "models": [wan.id], "files": {"wangp": [wan.id]}})  # fmt: skip
    return out


def lacks(node: NodeInfo, route: dict[str, Any]) -> str | None:
    """What keeps ``node`` from rendering ``route`` (None: it can)."""
    if not node.alive:
        return "down (no heartbeat)"
    missing = node.missing(route["files"])
    if missing:
        return f"lacks {', '.join(missing)}"
    if node.workflows is None and route["backend"] == "comfyui":
        return "not discovered yet"
    primary = route["models"][0] if route["models"] else ""
    job = Job("", "", "final", "", route["workflow"], primary, route["files"], {},
              backend=route["backend"])  # fmt: skip
    return node.cannot_run(job)


def publish(client: redis.Redis, key: str, catalog: Catalog) -> None:
    """Replace the hash ``key`` with every template's description and source (what the
    Blender add-on offers its artists)."""
    entries = {name: json.dumps({"description": catalog.description(name),
                                 "source": catalog.source(name)})
               for name in catalog.templates}  # fmt: skip
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=entries)
    pipe.execute()


def report(catalog: Catalog, nodes: Iterable[NodeInfo]) -> list[dict[str, Any]]:
    """Every template with its source, description and tiers; each tier's routes with the
    nodes that can render them (``nodes``) and what every other node of the route's kind
    lacks (``lacks``: node → reason)."""
    nodes = list(nodes)
    out = []
    for name in sorted(catalog.templates):
        tiers: dict[str, list[dict[str, Any]]] = {}
        for tier in TIERS:
            tiers[tier] = []
            for route in routes(catalog, name, tier):
                why = {n.name: lacks(n, route) for n in nodes if n.backend == route["backend"]}
                able = sorted(n for n, reason in why.items() if reason is None)
                tiers[tier].append({**route, "nodes": able,
                                    "lacks": {n: r for n, r in why.items() if r}})  # fmt: skip
        out.append({"name": name, "source": catalog.source(name),
                    "description": catalog.description(name), "tiers": tiers})  # fmt: skip
    return out
