"""The farm's Prometheus metrics: the real `farm exporter` run as a subprocess against
the session farm, scraped over HTTP and parsed as Prometheus parses it, while scenes
render, the quality gate rejects a take, a shot falls back, a node's worker dies and
Redis is unreachable."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from farm import telemetry
from farm.local import free_port, wait_for
from farm.scene import parse_scene
from farm.settings import Settings
from farm.submit import enqueue

from .conftest import EXAMPLES, REPO
from .test_control import set_faults
from .test_e2e import wait_done
from .test_e2e_wan2gp import wan_shot

TRACK = [{"x": 40, "y": 150}, {"x": 160, "y": 110}, {"x": 280, "y": 60}]
NODES = ("node-a", "node-b", "node-c", "node-w")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Exporter:
    """``python -m farm exporter`` on a free loopback port, with ``env``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [sys.executable, "-m", "farm", "exporter", "--port", str(self.port)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(lambda: requests.get(self.url, timeout=1).ok, 20, "farm exporter", self.proc, log)

    def scrape(self) -> Samples:
        """Every sample of ``/metrics``, by name and labels."""
        resp = requests.get(self.url + "/metrics", timeout=10)
        assert resp.status_code == 200, resp.text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text)
            for s in family.samples
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            assert self.proc.wait(timeout=10) == 0  # SIGTERM: a clean stop


@pytest.fixture
def exporter(farm_cluster, tmp_path):
    started = []

    def start(**env: str) -> Exporter:
        started.append(Exporter({**os.environ, **farm_cluster.env(), **env},
                                tmp_path / f"exporter-{len(started)}.log"))  # fmt: skip
        return started[-1]

    yield start
    for exp in started:
        exp.stop()


def poll(check, timeout: float, what: str):
    """Call ``check()`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def gate_scene(scene_id: str, ati_shots: int):
    """A text-to-video shot (node-a, node-b or the WanGP node) and ``ati_shots`` trajectory
    shots only node-c can render, so they queue behind each other there."""
    img = str(EXAMPLES / "images" / "meadow.jpg")
    base = {"width": 320, "height": 192, "frames": 25}
    return parse_scene({
        "id": scene_id, "quality": "final",
        "shots": [{"id": "lead", "action_description": "the meadow, still", **base, "seed": 7},
                  *({"id": f"ati{i}", "action_description": f"a fox runs, telemetry {i}",
                     "start_image": img, "trajectories": [TRACK], **base, "seed": 60 + i}
                    for i in range(ati_shots))],
    })  # fmt: skip


def test_a_scene_shows_in_shots_queues_renders_loads_and_gate_rejections(
    rt, farm_cluster, exporter
):
    """Three shots wait for node-c while it renders shaken first takes the gate rejects:
    the scrape shows node-c's two bound shots (one in its Celery queue) and the backlog;
    once the scene is done, every shot counts as done, the render histogram holds each
    render under its model, model loads and gate rejections add up."""
    exp = exporter()
    before = exp.scrape()
    assert all(value(before, "farm_node_up", node=n) == 1 for n in NODES)
    assert value(before, "farm_exporter_redis_up") == 1
    rendered = {n: rt.redis.hget(rt.registry.key(n), "rendered_models") for n in NODES}
    scene = gate_scene("tel-gate", 3)
    set_faults(farm_cluster, "node-c", {"jitter": {"px": 5.0, "takes": 1}, "slow": {"factor": 3.0}})
    try:
        enqueue(scene, rt)

        def queued_on_node_c() -> Samples | None:
            now = exp.scrape()
            full = value(now, "farm_node_bound_shots", node="node-c") == 2
            behind = value(now, "farm_queue_depth", node="node-c") == 1  # not yet started
            waiting = value(now, "farm_node_backlog_shots", node="node-c") >= 1
            return now if full and behind and waiting else None

        busy = poll(queued_on_node_c, 30, "node-c busy with shots waiting for it")
        status = wait_done(rt, scene.id)
    finally:
        set_faults(farm_cluster, "node-c", {})
    assert value(busy, "farm_backlog_shots") >= value(
        busy, "farm_node_backlog_shots", node="node-c"
    )
    # one waits in the backlog, one is bound to node-c's queue behind the one it renders
    assert value(busy, "farm_shots", state="queued") >= 1
    assert value(busy, "farm_shots", state="bound") >= 1
    assert value(busy, "farm_node_backlog_shots", node="node-a") == 0  # it has no ATI model
    assert status["state"] == "done", status

    after = exp.scrape()
    shots = len(scene.shots)
    assert delta(after, before, "farm_shots", state="done") == shots
    assert delta(after, before, "farm_scenes", state="done") == 1
    assert delta(after, before, "farm_shots_finished_total", state="done") == shots
    assert delta(after, before, "farm_gate_decisions_total", decision="passed") == shots
    renders = [
        a for s in rt.state.shots(scene.id) for a in s["attempt_log"] if a["state"] == "done"
    ]
    for model, count in Counter(a["model"] for a in renders).items():
        assert delta(after, before, "farm_render_seconds_count", model=model) == count
        assert delta(after, before, "farm_render_seconds_bucket", model=model, le="+Inf") == count
        seconds = sum(a["seconds"] for a in renders if a["model"] == model)
        assert delta(after, before, "farm_render_seconds_sum", model=model) == pytest.approx(
            seconds
        )
        assert delta(after, before, "farm_render_seconds_bucket", model=model, le="5.0") <= count
    for node, count in Counter(a["node"] for a in renders).items():
        assert delta(after, before, "farm_node_renders_total", node=node) == count
        (model,) = {a["model"] for a in renders if a["node"] == node}  # one model per node here
        loads = delta(after, before, "farm_model_loads_total", node=node, model=model)
        held = json.loads(rendered[node] or "[]")
        assert loads == (0 if model in held else 1), (node, held, model)
    rejected = [e for _, e in rt.state.events(scene.id) if e["type"] == "shot_gate_rejected"]
    assert len(rejected) >= 1 and len(renders) == shots + len(rejected)
    assert delta(
        after, before, "farm_gate_rejections_total", template="standard_generation"
    ) == len(rejected)
    misses = delta(after, before, "farm_gate_threshold_misses_total", metric="motion_smoothness")
    assert misses == len(rejected)
    assert value(after, "farm_backlog_shots") == 0
    assert value(after, "farm_node_bound_shots", node="node-c") == 0
    assert value(after, "farm_exporter_scrape_errors_total") == 0


def test_a_fallback_counts_under_its_reason(rt, exporter):
    """Out of memory on the 6 GB WanGP node (Wan 2.2 T2V A14B at 1280x720, 25 frames): the
    shot goes down its ladder once (a lower memory profile) and
    farm_fallbacks_total{reason="out_of_memory"} counts it."""
    exp = exporter()
    before = exp.scrape()
    scene = parse_scene({"id": "tel-oom", "quality": "final", "shots": [
        wan_shot("big", 71, template="standard_generation", width=1280, height=720,
                 frames=25)]})  # fmt: skip
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done" and status["shots"][0]["used_fallback"], status
    after = exp.scrape()
    assert delta(after, before, "farm_fallbacks_total", reason="out_of_memory") == 1
    assert delta(after, before, "farm_fallbacks_total") == 1
    assert delta(after, before, "farm_render_seconds_count", model="t2v_2_2") == 1
    assert delta(after, before, "farm_node_renders_total", node="node-w") == 1
    assert delta(after, before, "farm_shots_finished_total", state="done") == 1


def test_a_node_goes_down_when_its_worker_dies(farm_cluster, exporter, scratch_settings, tmp_path):
    """A node worker on a key prefix of its own (so the session farm never sees it), for
    node-a's emulator: up while it beats; 0 once killed and its heartbeat is FARM_NODE_TTL
    old. A configured node that never registered is 0 from the start."""
    prefix = scratch_settings.key_prefix
    nodes = f"tel-x={farm_cluster.node_url('node-a')},tel-never=http://127.0.0.1:9"
    env = {**os.environ, **farm_cluster.env(), "FARM_PREFIX": prefix, "FARM_NODES": nodes}
    exp = exporter(FARM_PREFIX=prefix, FARM_NODES=nodes)
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "farm", "worker", "--node", "tel-x"],
                                  env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    client = redis.Redis.from_url(scratch_settings.redis_url)
    try:
        poll(lambda: value(exp.scrape(), "farm_node_up", node="tel-x") == 1, 30, "tel-x up")
        samples = exp.scrape()
        assert value(samples, "farm_node_up", node="tel-never", kind="comfyui") == 0
        assert ("farm_node_up", (("kind", "comfyui"), ("node", "node-a"))) not in samples
        assert value(samples, "farm_queue_depth", node="tel-x") == 0
        os.killpg(worker.pid, signal.SIGKILL)  # a crash: no goodbye, the heartbeat just stops
        worker.wait(timeout=10)
        ttl = scratch_settings.node_ttl
        poll(lambda: value(exp.scrape(), "farm_node_up", node="tel-x") == 0, ttl + 10,
             "tel-x down")  # fmt: skip
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_the_exporter_answers_while_redis_is_unreachable(exporter):
    """Redis down: every scrape still answers, with farm_exporter_redis_up 0 and one more
    scrape error each time, and no farm figure it could not read."""
    exp = exporter(FARM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    first, second = exp.scrape(), exp.scrape()
    assert value(first, "farm_exporter_redis_up") == value(second, "farm_exporter_redis_up") == 0
    assert value(first, "farm_exporter_scrape_errors_total", section="redis") == 1
    assert value(second, "farm_exporter_scrape_errors_total", section="redis") == 2
    assert not [n for n, _ in second if n.startswith(("farm_shots", "farm_node", "farm_render"))]
    assert exp.proc.poll() is None
    assert "metrics" in requests.get(exp.url, timeout=5).text


def test_a_taken_port_is_a_config_error(farm_cluster):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "farm", "exporter", "--port", str(port)], capture_output=True,
            text=True, timeout=30, env={**os.environ, **farm_cluster.env()}, cwd=REPO,
        )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert f"port {port} on 127.0.0.1 is taken" in out.stderr


def test_recording_never_fails_the_work_it_counts(caplog):
    """A worker that cannot reach Redis logs the lost figure and goes on."""
    settings = Settings.from_env({"FARM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
    with caplog.at_level(logging.WARNING, logger="farm.telemetry"):
        telemetry.record_render(client, settings, "m", "n", 12.0, loaded=["m"])
        telemetry.record_fallback(client, settings, "out_of_memory")
        telemetry.record_gate_rejection(client, settings, "standard_generation", ["sharpness"])
        telemetry.record_shot_finished(client, settings, "done", "passed")
    assert len([r for r in caplog.records if "not recorded" in r.getMessage()]) == 4
    assert [telemetry.bucket(s) for s in (0.4, 5, 5.1, 3600, 3601)] == [
        "5", "5", "10", "3600", "+Inf"]  # fmt: skip


def test_shots_of_finished_scenes_are_counted_once_per_scrape(rt, exporter):
    """The exporter remembers finished scenes' shot counts between scrapes (they only
    change with the scene); a scene retried or replaced is counted afresh."""
    exp = exporter()
    first, second = exp.scrape(), exp.scrape()
    total = sum(len(json.loads(rt.redis.hget(rt.state.scene_key(s), "shots") or "[]"))
                for s in rt.redis.zrange(rt.settings.keys.scenes(), 0, -1))  # fmt: skip
    assert value(first, "farm_shots") == value(second, "farm_shots") == total
