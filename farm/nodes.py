"""The node registry in Redis: which GPU nodes exist, what they hold, whether they live.

Each node worker registers its node at start-up with what discovery found (models,
GPU, version) and then beats every ``FARM_HEARTBEAT`` seconds. A node whose last beat
is older than ``FARM_NODE_TTL``, or whose server did not answer the last probe, is down.

    farm:nodes          set of node names
    farm:node:{name}    hash: name, kind, url, queue, models (JSON), gpu, vram_total,
                        vram_free, devices (JSON), version, classes, workflows (JSON:
                        name -> {ok, missing, models}), described, last_seen, ok, reason,
                        started, rendered_models (JSON: the diffusion models its last
                        render loaded), loaded (JSON: those its last bound shot needs),
                        throughput, cloud (JSON: a cloud node's {concurrency,
                        price_per_second}, from its description)
    farm:node:{name}:renders   list: "cost seconds" of its last SPEED_WINDOW renders

Node speed is learned, not configured: after each render that loaded no model, the
node's worker records the render's work (:attr:`Job.cost`, in reference sampler steps) and
its seconds; a node's throughput is the work over the seconds of its last ``SPEED_WINDOW``
such renders, and :meth:`NodeRegistry.infos` gives the placement policy each node's speed
relative to the median of the nodes measured so far (1.0 until a node has rendered).

Discovery (``Backend.describe``) runs at registration and again every
``FARM_DISCOVERY_INTERVAL`` seconds and whenever the node comes back, so models added
to a node are seen without restarting anything.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import redis

from farm.catalog import Catalog, load_catalog
from farm.planning import NodeInfo
from farm.settings import Settings

#: renders a node's learned speed is taken over
SPEED_WINDOW = 20


def node_queue(name: str) -> str:
    """The Celery queue of GPU node ``name``: one queue per node."""
    return f"node.{name}"


def median_throughput(records: list[dict[str, Any]]) -> float:
    """The median learned throughput (reference steps per second) of the measured live
    local nodes (of every measured live node when no local one is; 0: none is measured).
    A cloud node's render time includes its uploads and its service's queue."""
    live = [r for r in records if r["alive"] and r["throughput"] > 0]
    measured = sorted(r["throughput"] for r in live if not r.get("cloud")) or sorted(
        r["throughput"] for r in live
    )
    if not measured:
        return 0.0
    mid = len(measured) // 2
    return measured[mid] if len(measured) % 2 else (measured[mid - 1] + measured[mid]) / 2


def relative_speeds(records: list[dict[str, Any]]) -> list[float]:
    """Each node's learned throughput over the median (:func:`median_throughput`: of the
    measured live local nodes) (1.0 for a node not measured yet, or when none is), to 1/8
    of an octave (9%): finer
    differences do not change a placement, and stable speeds keep the policy's caches."""
    median = median_throughput(records)
    if not median:
        return [1.0] * len(records)
    return [_octaves(r["throughput"] / median) if r["throughput"] > 0 else 1.0 for r in records]


def can_render(record: dict[str, Any], catalog: Catalog | None = None) -> list[str] | None:
    """What a registered node can render, by the catalogue's names (None: not discovered
    yet): a ComfyUI node's catalogue models whose workflow it runs, a WanGP node's model
    ids that a template renders at some tier."""
    if record["kind"] == "wan2gp":
        if not record["described"]:
            return None
        return (catalog or load_catalog()).wan_usable(record["models"].get("wangp", []))
    flows = record["workflows"]
    if flows is None:
        return None
    return sorted({m for cap in flows.values() if cap.get("ok") for m in cap["catalog"]})


def listing(registry: NodeRegistry, catalog: Catalog) -> list[dict[str, Any]]:
    """Every registered node as `farm nodes --json` lists it: its record with its learned
    ``speed`` and what it ``can_render``; a cloud node's with its ``spend`` (today, in all,
    GPU-seconds) and the farm's ``burst`` (policy, today's spend, budgets, open scenes'
    spend: :func:`farm.budget.summary`)."""
    from farm.budget import summary

    records = registry.records()
    clouds = [r["name"] for r in records if r["cloud"]]
    spend = summary(registry.r, registry.s, clouds) if clouds else None
    for r, speed in zip(records, relative_speeds(records), strict=True):
        r["speed"] = speed
        r["can_render"] = can_render(r, catalog)
        if r["cloud"] and spend is not None:
            r["spend"] = spend["nodes"][r["name"]]
            r["burst"] = {k: v for k, v in spend.items() if k != "nodes"}
    return records


def cloud_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A cloud node's described plan as its record keeps it: ``concurrency`` (at least 1)
    and ``price_per_second`` (0 or more)."""
    return {"concurrency": max(1, int(plan.get("concurrency") or 1)),
            "price_per_second": max(0.0, float(plan.get("price_per_second") or 0.0))}  # fmt: skip


def held_models(text: str | None) -> frozenset[str]:
    """The models in a node hash's JSON list field (``loaded``, ``rendered_models``)."""
    return frozenset(json.loads(text)) if text else frozenset()


def _octaves(ratio: float) -> float:
    return round(2.0 ** (round(math.log2(ratio) * 8) / 8), 3)


class NodeRegistry:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.s = settings

    def key(self, name: str) -> str:
        return self.s.keys.node(name)

    def register(self, name: str, kind: str, url: str, description: dict[str, Any]) -> None:
        """Record node ``name`` with its discovered description and a first heartbeat."""
        now = time.time()
        self.r.hset(
            self.key(name),
            mapping={
                "name": name,
                "kind": kind,
                "url": url,
                "queue": node_queue(name),
                "started": str(now),
                "ok": "1",
                "reason": "",
            },
        )
        self.update_description(name, description)
        self.r.sadd(self.s.keys.nodes(), name)

    def update_description(self, name: str, description: dict[str, Any]) -> None:
        """Store what discovery found (an empty description: the node did not answer)."""
        now = time.time()
        fields = {
            "models": json.dumps(description.get("models", {})),
            "gpu": description.get("gpu", ""),
            "vram_total": str(description.get("vram_total", 0)),
            "vram_free": str(description.get("vram_free", 0)),
            "devices": json.dumps(description.get("devices", [])),
            "version": description.get("version", ""),
            "classes": str(description.get("classes", 0)),
            "last_seen": str(now),
        }
        if "workflows" in description:
            fields["workflows"] = json.dumps(description["workflows"])
            fields["described"] = str(now)
        if "cloud" in description:  # a cloud node's plan (farm.backends.comfyv2)
            fields["cloud"] = json.dumps(cloud_plan(description["cloud"]))
        self.r.hset(self.key(name), mapping=fields)

    def beat(self, name: str, ok: bool, reason: str = "") -> None:
        """A heartbeat: the worker lives; ``ok`` says whether its node server answered."""
        self.r.hset(
            self.key(name),
            mapping={"last_seen": str(time.time()), "ok": "1" if ok else "0", "reason": reason},
        )

    def record_render(
        self, name: str, models: Sequence[str], cost: float, seconds: float
    ) -> list[str]:
        """A render of ``cost`` reference steps with the diffusion models ``models`` took
        ``seconds`` on node ``name``; one that loaded a model (one its last render did not
        use) is not a sample of its speed. Returns the models it loaded."""
        key = self.key(name)
        last = held_models(self.r.hget(key, "rendered_models"))
        self.r.hset(key, "rendered_models", json.dumps(list(models)))
        loaded = [m for m in models if m not in last]
        if loaded or cost <= 0 or seconds <= 0:
            return loaded
        samples = self.s.keys.node_renders(name)
        pipe = self.r.pipeline()
        pipe.lpush(samples, f"{cost:.6g} {seconds:.6g}")
        pipe.ltrim(samples, 0, SPEED_WINDOW - 1)
        pipe.lrange(samples, 0, -1)
        rows = [tuple(map(float, row.split())) for row in pipe.execute()[-1]]
        work, busy = sum(c for c, _ in rows), sum(t for _, t in rows)
        self.r.hset(key, "throughput", f"{work / busy:.6g}")
        return []

    def mark_down(self, name: str, reason: str) -> None:
        self.r.hset(self.key(name), mapping={"ok": "0", "reason": reason, "last_seen": "0"})

    def remove(self, name: str) -> None:
        self.r.delete(self.key(name), self.s.keys.node_renders(name))
        self.r.srem(self.s.keys.nodes(), name)

    def records(self) -> list[dict[str, Any]]:
        """Every registered node with ``alive`` and ``age`` (seconds since its last beat)."""
        from farm.canvas import queue_lists

        names = sorted(self.r.smembers(self.s.keys.nodes()))
        pipe = self.r.pipeline()
        lists = [queue_lists(self.s, node_queue(name)) for name in names]  # every priority
        for name, keys in zip(names, lists, strict=True):
            pipe.hgetall(self.key(name))
            for key in keys:  # the queue `register` records for it, every priority
                pipe.llen(key)
        now = time.time()
        out = []
        replies = iter(pipe.execute())
        for keys in lists:
            raw = next(replies)
            queued = sum(next(replies) for _ in keys)
            if not raw:
                continue
            age = now - float(raw.get("last_seen") or 0)
            out.append(
                {
                    "name": raw["name"],
                    "kind": raw.get("kind", "comfyui"),
                    "url": raw.get("url", ""),
                    "queue": raw.get("queue", node_queue(raw["name"])),
                    "models": json.loads(raw.get("models") or "{}"),
                    "gpu": raw.get("gpu", ""),
                    "vram_total": int(float(raw.get("vram_total") or 0)),
                    "vram_free": int(float(raw.get("vram_free") or 0)),
                    "devices": json.loads(raw.get("devices") or "[]"),
                    "version": raw.get("version", ""),
                    "classes": int(raw.get("classes") or 0),
                    "workflows": json.loads(raw["workflows"]) if raw.get("workflows") else None,
                    "described": float(raw.get("described") or 0),
                    "alive": age <= self.s.node_ttl and raw.get("ok") == "1",
                    "ok": raw.get("ok") == "1",
                    "age": round(age, 1),
                    "reason": raw.get("reason", ""),
                    "queued": queued,
                    "throughput": float(raw.get("throughput") or 0),
                    "cloud": json.loads(raw["cloud"]) if raw.get("cloud") else None,
                }
            )
        return out

    def infos(self, records: list[dict[str, Any]] | None = None) -> list[NodeInfo]:
        """The registered nodes (their ``records``, default: read now) as the planner sees
        them."""
        records = self.records() if records is None else records
        return [
            NodeInfo(
                name=r["name"],
                kind=r["kind"],
                alive=r["alive"],
                models={k: tuple(v) for k, v in r["models"].items()},
                workflows=None
                if r["workflows"] is None
                else {w: tuple(c["models"]) for w, c in r["workflows"].items() if c.get("ok")},
                lacks={
                    w: tuple(c["missing"])
                    for w, c in (r["workflows"] or {}).items()
                    if not c.get("ok")
                },  # fmt: skip
                speed=speed,
                concurrency=(r["cloud"] or {}).get("concurrency", 0),
                price=(r["cloud"] or {}).get("price_per_second", 0.0),
            )
            for r, speed in zip(records, relative_speeds(records), strict=True)
        ]

    def loads(self) -> dict[str, float]:
        """Rough queued work per node (messages waiting in its queue)."""
        return {r["name"]: float(r["queued"]) * 10.0 for r in self.records()}
