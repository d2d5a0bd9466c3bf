"""Node workers: one Celery worker per GPU node queue, registering and beating for its node.

``farm worker --node NAME`` discovers the node (models, GPU), registers it, keeps a
heartbeat thread probing it, and consumes only ``node.NAME`` with one process (a Comfy
API v2 node: FARM_CLOUD_CONCURRENCY processes) and prefetch 1. ``farm worker --cpu``
consumes the CPU queue (assembly, scoring).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import redis
from celery.signals import worker_process_init
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from farm.backends import make_backend
from farm.celery_app import app
from farm.errors import FarmError, NodeTimeout, NodeUnavailable
from farm.nodes import NodeRegistry, node_queue
from farm.runtime import get_runtime
from farm.settings import NodeConfig, Settings
from farm.state import connect

log = logging.getLogger(__name__)


def patient(client: redis.Redis) -> redis.Redis:
    """``client``, retrying a lost connection for about a minute (Redis restarting)
    instead of failing the render, the bookkeeping or the heartbeat that needed it."""
    client.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=60))
    return client


@worker_process_init.connect
def _patient_pool_process(**_: object) -> None:
    patient(get_runtime().redis)


class Heartbeat(threading.Thread):
    """Probes the node every ``settings.heartbeat`` seconds and records the result;
    re-discovers it every ``settings.discovery_interval`` seconds and when it comes back."""

    def __init__(self, node: NodeConfig, settings: Settings) -> None:
        super().__init__(name=f"heartbeat-{node.name}", daemon=True)
        self.node, self.settings = node, settings
        self.registry = NodeRegistry(patient(connect(settings, check=False)), settings)
        self.backend = make_backend(node.kind, node.url, settings)
        self.stopped = threading.Event()
        self.registered = False
        self.described_at: float | None = None  # None: describe at the next beat

    def beat(self) -> None:
        try:
            due = self.described_at is None or (
                time.monotonic() - self.described_at >= self.settings.discovery_interval
            )
            if due:
                description = self.backend.describe()
                if self.registered:
                    self.registry.update_description(self.node.name, description)
                else:
                    self.registry.register(
                        self.node.name, self.node.kind, self.node.url, description
                    )
                    self.registered = True
                self.described_at = time.monotonic()
            else:
                self.backend.probe()
            self.registry.beat(self.node.name, ok=True)
            self.cancel_strays()
        except FarmError as exc:
            log.warning("node %s does not answer: %s", self.node.name, exc)
            if not self.registered:
                self.registry.register(self.node.name, self.node.kind, self.node.url, {})
                self.registered = True
            self.described_at = None  # describe again once it answers
            self.registry.beat(self.node.name, ok=False, reason=str(exc))
        except Exception:  # Redis hiccups must not kill the heartbeat
            log.exception("heartbeat of %s failed", self.node.name)

    def cancel_strays(self) -> None:
        """Take off the node, now that it answers, the jobs renderers gave up on while it
        did not (:func:`farm.shots.mark_stray`): one still pending or running renders for
        nobody, beside the shot's next attempt elsewhere."""
        from farm.planning import Job
        from farm.shots import attempt_dir

        redis_client = self.registry.r
        key = self.settings.keys.node_strays(self.node.name)
        for field, value in redis_client.hgetall(key).items():
            job = Job.from_dict(json.loads(value))
            out_dir = attempt_dir(self.settings.storage, job)
            try:
                where = self.backend.find(job, out_dir)
                if where in ("pending", "running"):
                    how = self.backend.cancel(job, out_dir)
                    log.warning("node %s: job of shot %s/%s attempt %d was left %s there when "
                                "the node did not answer: %s", self.node.name, job.scene_id,
                                job.shot_id, job.attempt, where, how)  # fmt: skip
            except (NodeUnavailable, NodeTimeout):
                return  # away again: next beat
            except FarmError as exc:  # it answers, but not about this job: leave it be
                log.warning("node %s: cannot take job %s off: %s", self.node.name, field, exc)
            redis_client.hdel(key, field)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.beat()
            self.stopped.wait(self.settings.heartbeat)


class Housekeeping(threading.Thread):
    """The timeout checker (:mod:`farm.checker`) and a dispatch, every ``FARM_HEARTBEAT``
    seconds: in every farm worker, GPU and CPU alike, so the farm recovers with any one of
    them alive."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="housekeeping", daemon=True)
        self.settings = settings
        self.stopped = threading.Event()
        self._checker = None

    def once(self) -> None:
        from farm.checker import Checker
        from farm.dispatch import Dispatcher

        rt = get_runtime()
        patient(rt.redis)
        try:
            if self._checker is None:
                self._checker = Checker(rt, app)
            self._checker.tick()
            Dispatcher(rt, app).dispatch(periodic=True)
        except Exception:  # Redis away, a node not answering: next round
            log.exception("housekeeping failed")

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat):
            self.once()


def run_node_worker(node: NodeConfig, settings: Settings, loglevel: str = "INFO") -> None:
    """Run the Celery worker of GPU node ``node`` until it is stopped."""
    heartbeat = Heartbeat(node, settings)
    heartbeat.beat()  # registered before the first task can arrive
    heartbeat.start()
    # the farm's housekeeping runs in every worker, beside the heartbeat, never in its way:
    # on a slow link a pass can outlast FARM_NODE_TTL, and a late beat marks the node down
    keeper = Housekeeping(settings)
    keeper.start()
    try:
        run_worker(node_queue(node.name), f"{node.name}@%h", node_concurrency(node, settings),
                   loglevel)  # fmt: skip
    finally:
        keeper.stopped.set()
        heartbeat.stopped.set()
        heartbeat.registry.mark_down(node.name, "worker stopped")


def node_concurrency(node: NodeConfig, settings: Settings) -> int:
    """Renders a node's worker runs at once: one on a GPU node; a Comfy API v2 node's plan
    limit (FARM_CLOUD_CONCURRENCY)."""
    return settings.cloud_concurrency if node.kind == "comfyv2" else 1


def run_cpu_worker(
    settings: Settings,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    name: str | None = None,
) -> None:
    """Run a worker for the CPU queue (assembly and scoring), named ``NAME@host``
    (default ``cpuPID``), with the farm's housekeeping."""
    keeper = Housekeeping(settings)
    keeper.start()
    try:
        run_worker(
            settings.cpu_queue,
            f"{name or f'cpu{os.getpid()}'}@%h",
            concurrency or os.cpu_count() or 1,
            loglevel,
        )
    finally:
        keeper.stopped.set()


def run_worker(queue: str, name: str, concurrency: int, loglevel: str) -> None:
    """A prefork Celery worker on one queue, sending events (for Flower). Raises
    ``SystemExit`` with Celery's exit status when the worker stopped on an error (an
    "Unrecoverable error" exits with 0 otherwise, and a supervisor that restarts only
    failed services would leave it down)."""
    code = app.start(["worker", "-Q", queue, "-n", name, "-c", str(concurrency), "--pool",
                      "prefork", "-E", "-l", loglevel, "--without-mingle", "--without-gossip"])  # fmt: skip
    if code:
        raise SystemExit(code)
