"""The farm's own Prometheus metrics: what workers record, and ``farm exporter``.

Workers are many processes on many machines, so what happens once — a render ends, a
model is loaded, a shot falls back, the quality gate rejects a take, a shot finishes —
is counted in Redis, under the settings' prefix (one pipelined write; a failed write is
logged and the render goes on)::

    farm:telemetry:render_seconds        hash: ["model", "le"] -> renders in that bucket
    farm:telemetry:render_seconds_sum    hash: model -> seconds
    farm:telemetry:node_renders          hash: node -> renders
    farm:telemetry:node_render_seconds   hash: node -> seconds
    farm:telemetry:model_loads           hash: ["node", "model"] -> loads of each diffusion model
    farm:telemetry:fallbacks             hash: reason (error kind) -> shots sent down a rung
    farm:telemetry:gate_rejections       hash: template -> takes re-rendered by the gate
    farm:telemetry:gate_misses           hash: ["template", "metric"] -> thresholds missed
    farm:telemetry:gate_decisions        hash: decision -> shots kept with it
    farm:telemetry:shots_finished        hash: state (done, failed, cancelled) -> shots

Cloud nodes' spend is read from :mod:`farm.budget`'s keys.

The exporter (:func:`serve`) keeps nothing of its own: on each scrape
:class:`FarmCollector` reads those counters and the farm's state (scenes and shots by
state, the node registry, node queues and bindings, the backlog) and yields metric
families. A Redis outage gives ``farm_exporter_redis_up 0`` and a growing
``farm_exporter_scrape_errors_total``, never a failed scrape. Every metric is described
in docs/monitoring.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis

from farm.errors import ConfigError
from farm.settings import Settings

log = logging.getLogger(__name__)

#: upper bounds (seconds) of the render-time histogram's buckets: renders last minutes
RENDER_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)
#: shot states a shot finishes in, and the gate's decisions on a kept take
FINISHED_STATES = ("done", "failed", "cancelled")
GATE_DECISIONS = ("passed", "kept_best", "not_gated", "unscored")
#: error kinds that send a shot down its fallback ladder (planning.next_rung), listed at 0
FALLBACK_REASONS = ("out_of_memory", "model_missing", "node_unavailable", "timeout",
                    "render_failed")  # fmt: skip
#: parts of a scrape, each read on its own: one that fails is left out and counted
SECTIONS = ("redis", "scenes", "nodes", "backlog", "counters")
#: seconds the exporter waits for Redis (under Prometheus' default 10 s scrape timeout)
REDIS_TIMEOUT = 5.0
REDIS_CONNECT_TIMEOUT = 2.0
#: commands per pipeline when reading many scenes, shots or groups
CHUNK = 1000


def key(settings: Settings, name: str) -> str:
    """The Redis key of telemetry hash ``name``."""
    return settings.keys.telemetry(name)


# -- recording (workers) ------------------------------------------------------------------


@contextlib.contextmanager
def _recording(client: redis.Redis, what: str) -> Iterator[Any]:
    """A pipeline whose commands run at the end of the block; any failure is logged,
    never raised (telemetry must not fail the work it counts)."""
    try:
        pipe = client.pipeline(transaction=False)
        yield pipe
        pipe.execute()
    except Exception as exc:
        log.warning("telemetry: %s not recorded: %s: %s", what, exc.__class__.__name__, exc)


def bucket(seconds: float) -> str:
    """The render-time bucket ``seconds`` falls in: its upper bound, or ``+Inf``."""
    return next((f"{b:g}" for b in RENDER_BUCKETS if seconds <= b), "+Inf")


def record_render(
    client: redis.Redis,
    settings: Settings,
    model: str,
    node: str,
    seconds: float,
    loaded: Iterable[str],
) -> None:
    """A render of ``model`` (its primary diffusion model) on ``node`` finished in
    ``seconds``; ``loaded``: the models the node loaded for it (its previous render did not
    use them), each counted in ``model_loads``."""
    with _recording(client, "render") as pipe:
        pipe.hincrby(key(settings, "render_seconds"), _field(model, bucket(seconds)), 1)
        pipe.hincrbyfloat(key(settings, "render_seconds_sum"), model, seconds)
        pipe.hincrby(key(settings, "node_renders"), node, 1)
        pipe.hincrbyfloat(key(settings, "node_render_seconds"), node, seconds)
        for name in loaded:
            pipe.hincrby(key(settings, "model_loads"), _field(node, name), 1)


def record_fallback(client: redis.Redis, settings: Settings, reason: str) -> None:
    """A failed attempt sent its shot to the next rung of the fallback ladder; ``reason``
    is the error kind (``out_of_memory``, ``node_unavailable``, ...)."""
    with _recording(client, "fallback") as pipe:
        pipe.hincrby(key(settings, "fallbacks"), reason, 1)


def record_gate_rejection(
    client: redis.Redis, settings: Settings, template: str, metrics: Sequence[str]
) -> None:
    """The quality gate rejected a take of a ``template`` shot (a new take is rendered);
    ``metrics``: the thresholds it missed."""
    with _recording(client, "gate rejection") as pipe:
        pipe.hincrby(key(settings, "gate_rejections"), template, 1)
        for metric in metrics:
            pipe.hincrby(key(settings, "gate_misses"), _field(template, metric), 1)


def record_shot_finished(
    client: redis.Redis, settings: Settings, state: str, gate_decision: str | None = None
) -> None:
    """A shot finished ``done`` (with the gate's ``gate_decision``), ``failed`` or
    ``cancelled``."""
    with _recording(client, "finished shot") as pipe:
        pipe.hincrby(key(settings, "shots_finished"), str(state), 1)
        if gate_decision:
            pipe.hincrby(key(settings, "gate_decisions"), gate_decision, 1)


def _field(*parts: str) -> str:
    return json.dumps(list(parts))


def _parts(field: str, n: int) -> list[str] | None:
    try:
        parts = json.loads(field)
    except ValueError:
        return None
    ok = isinstance(parts, list) and len(parts) == n and all(isinstance(p, str) for p in parts)
    return parts if ok else None


# -- the collector (exporter) -------------------------------------------------------------

COUNTER_HASHES = ("render_seconds", "render_seconds_sum", "node_renders", "node_render_seconds",
                  "model_loads", "fallbacks", "gate_rejections", "gate_misses", "gate_decisions",
                  "shots_finished")  # fmt: skip


class FarmCollector:
    """A ``prometheus_client`` collector that reads the farm from Redis on every scrape."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.s = settings
        self.r = client or _client(settings)
        self.errors: Counter[str] = Counter({section: 0 for section in SECTIONS})
        #: shot states of finished scenes, by scene id: (scene's "updated", counts); a
        #: finished scene's shots change only with the scene (a retry), so they are not
        #: read again on every scrape
        self._finished: dict[str, tuple[str, Counter[str]]] = {}
        self._lock = threading.Lock()

    def collect(self) -> list[Any]:
        with self._lock:  # one scrape at a time: they share the cache above
            return list(self._collect())

    def _collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        started = time.monotonic()
        up = self._ping()
        if up:
            for section, read in (("scenes", self._scenes), ("nodes", self._nodes),
                                  ("backlog", self._backlog), ("counters", self._counters)):  # fmt: skip
                try:
                    families = list(read())
                except Exception as exc:  # a partial scrape beats none
                    self.errors[section] += 1
                    log.warning("scrape: %s left out: %s: %s", section,
                                exc.__class__.__name__, exc)  # fmt: skip
                    continue
                yield from families
        else:
            self.errors["redis"] += 1
        yield GaugeMetricFamily(
            "farm_exporter_redis_up",
            "1 if the exporter reached Redis on this scrape, else 0",
            value=1.0 if up else 0.0,
        )
        errors = CounterMetricFamily(
            "farm_exporter_scrape_errors",
            "Scrapes since the exporter started in which a section could not be read "
            "(redis: Redis unreachable, nothing read)",
            labels=["section"],
        )
        for section in SECTIONS:
            errors.add_metric([section], self.errors[section])
        yield errors
        yield GaugeMetricFamily(
            "farm_exporter_scrape_duration_seconds",
            "Seconds this scrape took to read Redis",
            value=round(time.monotonic() - started, 6),
        )

    def _ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except Exception as exc:
            log.warning("scrape: Redis unreachable: %s: %s", exc.__class__.__name__, exc)
            return False

    # scenes and shots
    def _scenes(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from farm.lifecycle import TERMINAL_SCENE, SceneState, ShotState
        from farm.state import FarmState

        state = FarmState(self.r, self.s)
        ids = self.r.zrange(self.s.keys.scenes(), 0, -1)
        rows = _pipelined(
            self.r, ids, lambda p, i: p.hmget(state.scene_key(i), ["state", "updated", "shots"])
        )
        scenes: Counter[str] = Counter({s.value: 0 for s in SceneState})
        shots: Counter[str] = Counter({s.value: 0 for s in ShotState})
        unread: list[tuple[str, str, str, list[str]]] = []
        for scene_id, (scene_state, updated, shot_ids) in zip(ids, rows, strict=True):
            if scene_state is None:
                continue  # deleted meanwhile
            scenes[scene_state] += 1
            cached = self._finished.get(scene_id)
            if scene_state in TERMINAL_SCENE and cached and cached[0] == updated:
                shots.update(cached[1])
            else:
                unread.append((scene_id, scene_state, updated or "", json.loads(shot_ids or "[]")))
        keys = [(scene_id, shot_id) for scene_id, _, _, ids_ in unread for shot_id in ids_]
        states = iter(_pipelined(self.r, keys, lambda p, k: p.hget(state.shot_key(*k), "state")))
        present = set(ids)
        finished = {i: v for i, v in self._finished.items() if i in present}
        for scene_id, scene_state, updated, shot_ids in unread:
            counts = Counter(s for s in (next(states) for _ in shot_ids) if s)
            shots.update(counts)
            if scene_state in TERMINAL_SCENE:
                finished[scene_id] = (updated, counts)
        self._finished = finished
        yield _gauge(GaugeMetricFamily, "farm_scenes", "Scenes in the farm by state",
                     ["state"], scenes.items())  # fmt: skip
        yield _gauge(GaugeMetricFamily, "farm_shots", "Shots of the farm's scenes by state",
                     ["state"], shots.items())  # fmt: skip

    # nodes
    def _nodes(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from farm.nodes import NodeRegistry

        records = NodeRegistry(self.r, self.s).records()
        bound = _pipelined(self.r, records, lambda p, r: p.hlen(self.s.keys.bound(r["name"])))
        queued = [r["queued"] for r in records]  # every priority list of the node's queue
        up = GaugeMetricFamily(
            "farm_node_up",
            "1 while the node's worker beats and its server answers, else 0 (nodes in "
            "FARM_NODES that never registered: 0)",
            labels=["node", "kind"],
        )
        for record in records:
            up.add_metric([record["name"], record["kind"]], 1.0 if record["alive"] else 0.0)
        registered = {r["name"] for r in records}
        for node in self.s.nodes:
            if node.name not in registered:
                up.add_metric([node.name, node.kind], 0.0)
        yield up
        yield _gauge(GaugeMetricFamily, "farm_queue_depth",
                     "Render tasks waiting in the node's Celery queue (node.NAME)", ["node"],
                     ((r["name"], n) for r, n in zip(records, queued, strict=True)))  # fmt: skip
        yield _gauge(GaugeMetricFamily, "farm_node_bound_shots",
                     "Shots bound to the node: the one it renders and the one queued behind it",
                     ["node"], ((r["name"], n) for r, n in zip(records, bound, strict=True)))  # fmt: skip
        yield from self._spend([r["name"] for r in records if r["cloud"]])

    def _spend(self, clouds: list[str]) -> Iterator[Any]:
        """Cloud nodes' spend and the burst budgets (:func:`farm.budget.summary`)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from farm.budget import summary

        spend = summary(self.r, self.s, clouds)
        nodes = spend["nodes"].items()
        yield GaugeMetricFamily(
            "farm_burst_spend_today",
            "Cloud nodes' spend today (UTC), in the currency of their price per GPU-second",
            value=spend["today"],
        )
        for name, doc, value in (
            ("farm_burst_budget_day", "FARM_BURST_BUDGET_DAY (0: no cap)", spend["budget_day"]),
            ("farm_burst_budget_scene", "FARM_BURST_BUDGET_SCENE (0: no cap)",
             spend["budget_scene"]),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, doc, value=value or 0.0)
        yield _gauge(GaugeMetricFamily, "farm_cloud_spend_today", "The cloud node's spend today "
                     "(UTC)", ["node"], ((n, v["today"]) for n, v in nodes))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_cloud_spend", "The cloud node's spend since "
                       "it first billed", ["node"], (([n], v["total"]) for n, v in nodes))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_cloud_gpu_seconds", "GPU-seconds the cloud "
                       "node billed", ["node"], (([n], v["gpu_seconds"]) for n, v in nodes))  # fmt: skip
        yield _gauge(GaugeMetricFamily, "farm_scene_cloud_spend", "An open scene's cloud spend",
                     ["scene"], spend["scenes"].items())  # fmt: skip

    # the backlog
    def _backlog(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from farm.nodes import NodeRegistry
        from farm.planning import Job
        from farm.scheduler import can_run

        groups = self.r.hgetall(self.s.keys.groups())
        gids = list(groups)
        sizes = _pipelined(self.r, gids, lambda p, g: p.zcard(self.s.keys.wait(g)))
        nodes = NodeRegistry(self.r, self.s).infos()
        per_node = {n.name: 0 for n in nodes}
        total = 0
        for gid, waiting in zip(gids, sizes, strict=True):
            if not waiting:
                continue
            total += waiting
            needs = json.loads(groups[gid])
            variants = [Job.from_dict(v) for v in needs["variants"]]
            pin, exclude = needs.get("pin"), set(needs.get("exclude") or ())
            for node in nodes:
                if node.name in exclude or pin not in (None, node.name):
                    continue
                if any(can_run(node, v) for v in variants):
                    per_node[node.name] += waiting
        yield GaugeMetricFamily(
            "farm_backlog_shots",
            "Shots waiting in the backlog for a node (each once; paused scenes' aside)",
            value=total,
        )
        yield _gauge(GaugeMetricFamily, "farm_node_backlog_shots",
                     "Waiting shots this node can render (a shot counts for every node that "
                     "can take it; up or down)", ["node"], per_node.items())  # fmt: skip

    # the counters workers record
    def _counters(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        pipe = self.r.pipeline(transaction=False)
        for name in COUNTER_HASHES:
            pipe.hgetall(key(self.s, name))
        h = dict(zip(COUNTER_HASHES, pipe.execute(), strict=True))
        yield _histogram(HistogramMetricFamily, h["render_seconds"], h["render_seconds_sum"])
        yield _counter(CounterMetricFamily, "farm_node_renders",
                       "Renders the node finished", ["node"], _pairs(h["node_renders"]))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_node_render_seconds",
                       "Seconds the node spent on renders it finished", ["node"],
                       _pairs(h["node_render_seconds"]))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_model_loads",
                       "Diffusion models the node loaded for a render (ones its last render "
                       "did not use; a Wan 2.2 A14B render loads two)", ["node", "model"],
                       _pairs(h["model_loads"], 2))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_fallbacks",
                       "Failed attempts that sent their shot to the next rung of the fallback "
                       "ladder, by error kind", ["reason"],
                       _pairs(h["fallbacks"], 1, FALLBACK_REASONS))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_gate_rejections",
                       "Takes the quality gate rejected and rendered again with a new seed",
                       ["template"], _pairs(h["gate_rejections"]))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_gate_threshold_misses",
                       "Thresholds rejected takes missed, by metric", ["template", "metric"],
                       _pairs(h["gate_misses"], 2))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_gate_decisions",
                       "Shots the gate closed, by decision", ["decision"],
                       _pairs(h["gate_decisions"], 1, GATE_DECISIONS))  # fmt: skip
        yield _counter(CounterMetricFamily, "farm_shots_finished",
                       "Shots that finished, by state (a retried shot finishes again)",
                       ["state"], _pairs(h["shots_finished"], 1, FINISHED_STATES))  # fmt: skip


def _client(settings: Settings) -> redis.Redis:
    """The farm's Redis client (TLS, sentinels: :func:`farm.state.connect`), with timeouts
    that end a scrape before Prometheus gives up on it."""
    from farm.state import connect

    client = connect(settings, check=False)
    client.connection_pool.connection_kwargs.update(
        socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_CONNECT_TIMEOUT
    )
    return client


def _pipelined(client: redis.Redis, items: Sequence[Any], command: Callable) -> list[Any]:
    """``command(pipe, item)`` for every item, in pipelines of CHUNK; the replies in order."""
    out: list[Any] = []
    for start in range(0, len(items), CHUNK):
        pipe = client.pipeline(transaction=False)
        for item in items[start : start + CHUNK]:
            command(pipe, item)
        out += pipe.execute()
    return out


def _pairs(
    raw: dict[str, str], n: int = 1, known: Iterable[str] = ()
) -> list[tuple[list[str], float]]:
    """A counter hash as (label values, value); ``known`` values are listed at 0 when
    missing (a series that appears at 1 hides its first increase from ``rate``)."""
    values: dict[tuple[str, ...], float] = {(k,): 0.0 for k in known}
    for field, value in raw.items():
        labels = [field] if n == 1 else _parts(field, n)
        if labels is not None:
            values[tuple(labels)] = float(value)
    return [(list(k), v) for k, v in sorted(values.items())]


def _gauge(family, name: str, doc: str, labels: list[str], values: Iterable[tuple[str, float]]):
    metric = family(name, doc, labels=labels)
    for label, value in values:
        metric.add_metric([label], float(value))
    return metric


def _counter(family, name: str, doc: str, labels: list[str], values):
    metric = family(name, doc, labels=labels)
    for label_values, value in values:
        metric.add_metric(label_values, value)
    return metric


def _histogram(family, buckets: dict[str, str], sums: dict[str, str]):
    """``farm_render_seconds`` from the per-bucket counts (cumulated here): a bound no
    longer in RENDER_BUCKETS counts in the next one up."""
    from prometheus_client.utils import floatToGoString

    metric = family("farm_render_seconds", "Seconds each finished render took, by model",
                    labels=["model"])  # fmt: skip
    counts: dict[str, Counter[float]] = {}
    for field, value in buckets.items():
        model, le = _parts(field, 2) or ("", "")
        try:
            seconds = float(le)
        except ValueError:
            continue  # not a bucket this module wrote
        bound = next((float(b) for b in RENDER_BUCKETS if seconds <= b), float("inf"))
        counts.setdefault(model, Counter())[bound] += int(value)
    for model in sorted(counts):
        running, cumulative = 0, []
        for bound in (*map(float, RENDER_BUCKETS), float("inf")):
            running += counts[model][bound]
            cumulative.append((floatToGoString(bound), running))
        metric.add_metric([model], cumulative, float(sums.get(model, 0.0)))
    return metric


# -- the HTTP server ------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def app(registry) -> Callable:
    """The exporter's WSGI app: ``/metrics``, and ``/`` saying where they are."""
    from prometheus_client import make_wsgi_app

    metrics = make_wsgi_app(registry)

    def serve_request(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)
        status = "200 OK" if path == "/" else "404 Not Found"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [b"farm exporter: Prometheus metrics at /metrics (see docs/monitoring.md)\n"]

    return serve_request


def listen(address: str, port: int, wsgi_app: Callable) -> WSGIServer:
    """A threaded HTTP server bound to ``address:port`` only; ConfigError if it cannot."""
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {address!r}: {exc.strerror}") from None
    server_class = type("Server", (_Server,), {"address_family": family})
    try:
        return make_server(address, port, wsgi_app, server_class, _Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {address} is taken (another exporter?); stop what holds it "
                "or pick another with --port"
            ) from None
        raise ConfigError(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None


def serve(settings: Settings, address: str, port: int) -> None:
    """Serve the farm's metrics at ``http://address:port/metrics`` until SIGTERM or SIGINT."""
    from prometheus_client import CollectorRegistry

    from farm.state import redacted

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(settings))
    server = listen(address, port, app(registry))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, name="exporter", daemon=True)
    thread.start()
    host = f"[{address}]" if ":" in address else address
    print(f"farm exporter: http://{host}:{server.server_port}/metrics "
          f"(Redis {redacted(settings.redis_url)}, prefix {settings.key_prefix})",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
