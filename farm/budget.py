"""What cloud nodes cost: spend kept in Redis, and the budget the dispatcher checks.

A cloud node (``comfyv2``) bills GPU-seconds at its price (``FARM_CLOUD_PRICE``, in the
node record's ``cloud`` plan). When one of its renders finishes, the render task calls
:func:`charge` with the billed time (``RenderResult.details["gpu_seconds"]``): the cost
is added, in one Lua script, to the day's spend (UTC), the scene's and the node's, once
per attempt (a redelivered task that follows the same cloud job charges nothing more).

Before it binds a shot to a cloud node the dispatcher estimates its cost
(:meth:`farm.scheduler.Burst.estimate`) and holds it (:func:`hold`) until the render is
billed, so shots bound at once cannot pass a cap together: the budget counts what is
spent and what is held (:func:`state`). A held estimate whose shot is no longer bound to
its node (failed, cancelled, moved) is dropped on the next dispatch.

Keys (:mod:`farm.keys`): ``spend:day:{date}``, ``spend:scene:{scene}``,
``spend:node:{name}``, ``spend:held``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from farm.keys import member, split
from farm.planning import Job
from farm.settings import Settings

#: days a day's spend is kept
SPEND_DAYS = 400

#: add a billed render (KEYS: day, scene, node, held; ARGV: attempt, node, cost,
#: gpu_seconds, work, member, ttl)
CHARGE = """
if redis.call('HSETNX', KEYS[2], 'charged:' .. ARGV[1], ARGV[3]) == 0 then return 0 end
redis.call('HINCRBYFLOAT', KEYS[1], 'total', ARGV[3])
redis.call('HINCRBYFLOAT', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('HINCRBYFLOAT', KEYS[2], 'total', ARGV[3])
redis.call('HINCRBYFLOAT', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBYFLOAT', KEYS[3], 'total', ARGV[3])
redis.call('HINCRBYFLOAT', KEYS[3], 'gpu_seconds', ARGV[4])
redis.call('HINCRBYFLOAT', KEYS[3], 'work', ARGV[5])
redis.call('HDEL', KEYS[4], ARGV[6])
return 1
"""


def today(now: float | None = None) -> str:
    """The UTC day of ``now`` (default: now), ``YYYY-MM-DD``: a day's budget resets at
    midnight UTC."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def cap(value: float) -> float:
    """A budget setting as a cap: 0 means no cap (``inf``)."""
    return value if value > 0 else math.inf


def charge(r: redis.Redis, settings: Settings, job: Job, details: Mapping[str, Any], *,
           work: bool = True) -> float:  # fmt: skip
    """Add the cost of ``job``'s render on its cloud node: ``details["gpu_seconds"]`` (the
    billed time) times the node's price. ``work``: the render did the job's work (False for
    a job that failed after it ran: paid for, and its seconds count in the node's billed
    time, but not its work, so the node's rate per step, :func:`state`, prices failures
    in). Returns the cost added (0: not a billed render, or this attempt was charged
    already)."""
    seconds = details.get("gpu_seconds")
    if not isinstance(seconds, int | float) or seconds < 0 or not job.node:
        return 0.0
    price = node_price(r, settings, job.node)
    cost = float(seconds) * price
    keys = settings.keys
    added = r.register_script(CHARGE)(
        keys=[keys.spend_day(today()), keys.spend_scene(job.scene_id),
              keys.spend_node(job.node), keys.spend_held()],
        args=[job.attempt_id, job.node, repr(cost), repr(float(seconds)),
              repr(_work(job) if work else 0.0),
              member(job.scene_id, job.shot_id), SPEND_DAYS * 86400],
    )  # fmt: skip
    return cost if added else 0.0


def _work(job: Job) -> float:
    try:
        return job.cost
    except KeyError:
        return 0.0


def node_price(r: redis.Redis, settings: Settings, name: str) -> float:
    """The price per GPU-second of cloud node ``name`` (0: not a cloud node)."""
    plan = r.hget(settings.keys.node(name), "cloud")
    return float(json.loads(plan).get("price_per_second", 0.0)) if plan else 0.0


def hold(r: redis.Redis, settings: Settings, key: str, node: str, estimate: float) -> None:
    """Shot ``key`` ("scene/shot") was bound to cloud node ``node`` for about ``estimate``."""
    r.hset(settings.keys.spend_held(), key, json.dumps({"node": node, "estimate": estimate}))


@dataclass
class Spend:
    """What the budget counts now: spent today and per scene, plus the estimates held by
    shots bound to cloud nodes (``committed``); each cloud node's learned billing rate."""

    day: float = 0.0
    scenes: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)


def state(r: redis.Redis, settings: Settings, clouds: Iterable[str],
          scenes: Iterable[str]) -> Spend:  # fmt: skip
    """Spend of today and of ``scenes`` with the held estimates of shots still bound to
    their cloud node (the others' are dropped), and each of ``clouds``' GPU-seconds per
    reference step billed so far."""
    keys, clouds, scenes = settings.keys, list(clouds), set(scenes)
    held = {k: json.loads(v) for k, v in r.hgetall(keys.spend_held()).items()}
    scenes |= {split(k)[0] for k in held}
    pipe = r.pipeline()
    pipe.hget(keys.spend_day(today()), "total")
    for scene_id in sorted(scenes):
        pipe.hget(keys.spend_scene(scene_id), "total")
    for name in clouds:
        pipe.hmget(keys.spend_node(name), ["gpu_seconds", "work"])
    for key, entry in held.items():
        pipe.hexists(keys.bound(entry["node"]), key)
    replies = iter(pipe.execute())
    spend = Spend(float(next(replies) or 0))
    spend.scenes = {s: float(next(replies) or 0) for s in sorted(scenes)}
    for name in clouds:
        seconds, work = next(replies)
        if seconds and work and float(work) > 0:
            spend.rates[name] = float(seconds) / float(work)
    gone = []
    for key, entry in held.items():
        if not next(replies):
            gone.append(key)
            continue
        spend.day += entry["estimate"]
        scene_id = split(key)[0]
        spend.scenes[scene_id] += entry["estimate"]
    if gone:
        r.hdel(keys.spend_held(), *gone)
    return spend


def summary(r: redis.Redis, settings: Settings, nodes: Iterable[str]) -> dict[str, Any]:
    """Spend as `farm nodes` and the exporter show it: the policy, today's spend (total),
    the budgets (None: no cap), per cloud node in ``nodes`` its spend today, in all and
    its billed GPU-seconds, and each open scene's spend (those that spent)."""
    keys, nodes = settings.keys, list(nodes)
    scenes = sorted(r.smembers(keys.open_scenes()))
    pipe = r.pipeline()
    pipe.hgetall(keys.spend_day(today()))
    for name in nodes:
        pipe.hgetall(keys.spend_node(name))
    for scene_id in scenes:
        pipe.hget(keys.spend_scene(scene_id), "total")
    day, *rest = pipe.execute()
    per_node, per_scene = rest[: len(nodes)], rest[len(nodes) :]
    return {
        "policy": settings.burst,
        "day": today(),
        "today": float(day.get("total") or 0),
        "budget_day": settings.burst_budget_day or None,
        "budget_scene": settings.burst_budget_scene or None,
        "nodes": {
            name: {
                "today": float(day.get(name) or 0),
                "total": float(raw.get("total") or 0),
                "gpu_seconds": float(raw.get("gpu_seconds") or 0),
            }  # fmt: skip
            for name, raw in zip(nodes, per_node, strict=True)
        },
        "scenes": {
            scene_id: float(total)
            for scene_id, total in zip(scenes, per_scene, strict=True)
            if total and float(total) > 0
        },
    }


def scene_spend(r: redis.Redis, settings: Settings, scene_id: str) -> dict[str, float]:
    """A scene's cloud spend: ``total`` and per node."""
    raw = r.hgetall(settings.keys.spend_scene(scene_id))
    return {k: float(v) for k, v in raw.items() if not k.startswith("charged:")}
