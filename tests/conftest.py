"""Test fixtures: a real farm on loopback (redis-server, emulated ComfyUI nodes, Celery
worker subprocesses, ``farm ingest``), started once per session by the same code as
``farm demo``."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

# Nothing in the tests may reach the machine's own Redis: until the session farm is up,
# settings point at a port where nothing listens.
os.environ["FARM_REDIS_URL"] = "redis://127.0.0.1:9/0"
os.environ.pop("FARM_NODES", None)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
NODES = TESTS / "nodes"
EXAMPLES = REPO / "examples"

for tool in ("redis-server", "ffmpeg"):
    if shutil.which(tool) is None:
        raise RuntimeError(
            f"{tool} is not installed: run `make test` (it installs it) or apt-get install {tool}"
        )


@pytest.fixture(scope="session")
def farm_cluster(tmp_path_factory):
    """A running local farm with four emulated nodes:

    node-a: Wan 2.2 TI2V-5B and the T2V and I2V A14B pairs (high and low noise);
    node-b: Hunyuan Video 1.5, Wan 2.2 TI2V-5B and the LTX-2 19B dev checkpoint (slower;
    ComfyUI's newer generation, the job API: "api": "0.38"); node-c: Wan 2.1 ATI only (so
    trajectory shots land there); node-w: a WanGP MCP server (tests/nodes/wan-a.json: fast
    Hunyuan Video 1.5, Wan 2.2, and LTX Video 0.9.8, which no template uses).
    """
    from farm import runtime, settings
    from farm.celery_app import app, celery_config
    from farm.local import EmulatedNode, LocalFarm

    nodes = [EmulatedNode(n, NODES / f"{n}.json") for n in ("node-a", "node-b", "node-c")]
    nodes.append(EmulatedNode("node-w", NODES / "wan-a.json", kind="wan2gp"))
    farm = LocalFarm(
        tmp_path_factory.mktemp("farm"),
        nodes,
        cpu_concurrency=2,
        extra_env={
            "FARM_NODE_IDLE_TIMEOUT": "8",
            "FARM_HTTP_TIMEOUT": "10",
            # farm ingest: claim a dead consumer's messages after 2 s; small limits, so the
            # tests of oversize bodies and attachments stay cheap
            "FARM_INGEST_CLAIM_IDLE": "2",
            "FARM_SUBMISSION_MAX_BYTES": str(2 * 1024 * 1024),
            "FARM_SUBMISSION_MAX_FILE_BYTES": str(1024 * 1024),
        },
    )
    farm.start()
    os.environ.update(farm.env())
    settings._current = None
    runtime._runtime = None
    app.conf.update(celery_config(settings.get_settings()))
    try:
        yield farm
    finally:
        farm.stop()


@pytest.fixture
def rt(farm_cluster):
    from farm.runtime import get_runtime

    return get_runtime()


@pytest.fixture
def scratch_settings(farm_cluster):
    """Settings on the session Redis with a key prefix of this test's own."""
    from farm.settings import Settings

    return Settings.from_env(farm_cluster.env(), key_prefix=f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def cli_env(farm_cluster):
    """Environment for running the `farm` CLI as a subprocess against the session farm."""
    return {**os.environ, **farm_cluster.env()}


@pytest.fixture(autouse=True)
def _fresh_render_cache(request):
    """Tests on the session farm start with an empty render cache, so a shot one test
    rendered is not served from the cache in another (tests of the cache fill it)."""
    if "farm_cluster" in request.fixturenames:
        import redis

        env = request.getfixturevalue("farm_cluster").env()
        with redis.Redis.from_url(env["FARM_REDIS_URL"]) as client:
            client.delete(f"{env.get('FARM_PREFIX', 'farm')}:cache")
    yield


@contextlib.contextmanager
def pointed_at(env: dict[str, str]):
    """Point this process (settings, runtime, the Celery app) at the farm whose ``FARM_*``
    variables are ``env`` for the ``with`` block, then back at what it pointed at before."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("FARM_")}
    _point(env)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("FARM_")]:
            del os.environ[key]
        _point(saved)


def _point(env: dict[str, str]) -> None:
    from farm import runtime, settings
    from farm.celery_app import app, celery_config

    os.environ.update(env)
    settings._current = None
    runtime._runtime = None
    app.conf.update(celery_config(settings.get_settings()))
    # connections made for another Redis: kombu keeps its pools per connection, globally,
    # so close and forget them all (a closed pool left behind fails every later publish)
    from kombu import pools

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    vars(app._local).pop("backend", None)
