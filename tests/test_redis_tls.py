"""Redis over TLS with passwords and ACL users: a whole farm (an emulated ComfyUI node, its
worker, a CPU worker, ingest) on a TLS-only redis-server whose farm processes log in as the
ACL user of docs/redis.md; the CLI, the add-on's client and Celery over TLS; and the clear
errors a user gets without the CA, with a wrong password or without a client certificate."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import ssl
import subprocess
import time
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from farm.celery_app import celery_config, make_app
from farm.errors import ConfigError
from farm.local import WORKER_ACL, EmulatedNode, LocalFarm, free_port, make_tls_files, wait_for
from farm.settings import Settings
from farm.state import FarmState, connect

from .conftest import NODES, REPO
from .test_e2e import wait_done
from .test_ingest import farm_cli, new_id, quick_scene

PASSWORD = "tls-pw/with:odd@chars"  # percent-encoded in URLs
#: the add-on's ACL (docs/redis.md): read the farm's keys, add to the submissions stream
ADDON_ACL = ("resetkeys %R~farm:* %W~farm:submissions resetchannels -@all +@connection "
             "-@dangerous +hgetall +xadd")  # fmt: skip


def load_addon_client():
    """blender/farm_submit/client.py, imported as plain Python (it has no bpy in it)."""
    path = REPO / "blender" / "farm_submit" / "client.py"
    spec = importlib.util.spec_from_file_location("farm_submit_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flower_queue_lengths(settings: Settings, queues: list[str]) -> dict[str, int]:
    """Queue lengths as Flower reads them (its broker view, with the Celery configuration
    `farm flower` runs with)."""
    from flower.utils.broker import Broker

    app = make_app(settings)
    try:
        with app.connection() as conn:
            uri = conn.as_uri(include_password=True)
        broker = Broker(uri, http_api=None, broker_options=app.conf.broker_transport_options,
                        broker_use_ssl=app.conf.broker_use_ssl)  # fmt: skip
        return {q["name"]: q["messages"] for q in asyncio.run(broker.queues(queues))}
    finally:
        app.close()


@pytest.fixture(scope="module")
def tls_farm(tmp_path_factory):
    """A farm on a TLS-only Redis (a throw-away CA; password; the farm's processes log in
    as ACL user ``farm`` with :data:`WORKER_ACL`, the default user is the administrator)."""
    farm = LocalFarm(tmp_path_factory.mktemp("tls-farm"), [EmulatedNode("node-a", NODES / "node-a.json")],
                     redis_tls=True, redis_password=PASSWORD, redis_user="farm",
                     extra_env={"FARM_NODE_IDLE_TIMEOUT": "8"})  # fmt: skip
    farm.start()
    try:
        yield farm
    finally:
        farm.stop()


@pytest.fixture(scope="module")
def admin(tls_farm):
    client = connect(
        Settings.from_env({**tls_farm.env(), "FARM_REDIS_URL": tls_farm.redis_url("")})
    )
    yield client
    client.close()


def cli_env(farm: LocalFarm, **changes: str | None) -> dict[str, str]:
    env = {**os.environ, **farm.env(), **changes}
    return {k: v for k, v in env.items() if v is not None}


def test_a_farm_on_tls_redis_renders_a_scene_submitted_with_the_cli(tls_farm, admin, tmp_path):
    assert tls_farm.env()["FARM_REDIS_URL"].startswith("rediss://farm:")
    settings = tls_farm.settings()
    rt = SimpleNamespace(state=FarmState(connect(settings), settings))
    admin.acl_log_reset()
    scene_id = new_id("tls")
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(quick_scene(scene_id, 2)))
    out = farm_cli("submit", str(path), "--json", env=cli_env(tls_farm), timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["state"] == "accepted"
    assert wait_done(rt, scene_id, timeout=90)["state"] == "done"
    listed = farm_cli("status", "--json", env=cli_env(tls_farm), timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert scene_id in [s["id"] for s in json.loads(listed.stdout)]
    shown = farm_cli("status", scene_id, "--json", env=cli_env(tls_farm), timeout=60)
    assert json.loads(shown.stdout)["state"] == "done"
    assert flower_queue_lengths(settings, ["cpu", "node.node-a"]) == {"cpu": 0, "node.node-a": 0}
    # the worker ACL was enough for workers, ingest, CLI and Flower: Redis denied them nothing
    assert [e for e in admin.acl_log() if e["username"] == "farm"] == []
    logs = "".join(p.read_text(errors="replace") for p in tls_farm.logs.glob("*.log"))
    assert PASSWORD not in logs and quote(PASSWORD, safe="") not in logs
    assert "rediss://farm:**@127.0.0.1" in logs  # Celery's banner
    with pytest.raises(redis.ConnectionError):  # TLS only: no plain-text port
        redis.Redis(port=tls_farm.redis_port, socket_timeout=2, retry=Retry(NoBackoff(), 0)).ping()


def test_without_the_ca_the_cli_is_refused_with_a_clear_error(tls_farm):
    out = farm_cli("status", "--json", env=cli_env(tls_farm, FARM_REDIS_CA=None), timeout=60)
    assert out.returncode == 3
    assert "does not trust" in out.stderr and "set FARM_REDIS_CA" in out.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in out.stderr and PASSWORD not in out.stderr
    plain = tls_farm.redis_url().replace("rediss://", "redis://")
    out = farm_cli("status", env=cli_env(tls_farm, FARM_REDIS_URL=plain, FARM_REDIS_CA=None,
                                         FARM_REDIS_CERT=None, FARM_REDIS_KEY=None))  # fmt: skip
    assert out.returncode == 3 and "use rediss://" in out.stderr


def test_a_wrong_password_is_a_clear_error_that_does_not_show_it(tls_farm):
    wrong = tls_farm.redis_url().replace("tls-pw", "not-the-pw")
    out = farm_cli("status", env=cli_env(tls_farm, FARM_REDIS_URL=wrong), timeout=60)
    assert out.returncode == 3
    assert "refused the credentials" in out.stderr and "redis://user:password@host" in out.stderr
    assert "not-the-pw" not in out.stderr and "farm:***@127.0.0.1" in out.stderr
    anonymous = tls_farm.redis_url().split("@")[1]
    with pytest.raises(ConfigError, match="refused the credentials"):
        connect(Settings.from_env({**tls_farm.env(), "FARM_REDIS_URL": f"rediss://{anonymous}"}))


def test_the_addon_client_submits_over_tls_as_its_acl_user(tls_farm, admin, tmp_path):
    client = load_addon_client()
    password = "artist-pw"
    admin.execute_command("ACL", "SETUSER", "artist", "reset", "on", f">{password}",
                          *ADDON_ACL.split())  # fmt: skip
    url = f"rediss://artist@127.0.0.1:{tls_farm.redis_port}/0"
    ca = str(tls_farm.tls.ca)
    r = client.connect(url, password, timeout=5, ca=ca)
    sid = client.new_submission_id()
    scene = quick_scene(new_id("addon"))
    client.submit(r, "farm", {"version": 1, "submission": sid, "scene": scene})
    deadline = time.monotonic() + 90
    while not client.finished(snap := client.poll(r, "farm", sid)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert snap["submission"]["state"] == "accepted" and snap["scene"]["state"] == "done"
    path = tmp_path / "scene.json"  # `farm submit` as the same user
    path.write_text(json.dumps(quick_scene(new_id("addon"))))
    env = cli_env(tls_farm, FARM_REDIS_URL=url.replace("artist@", f"artist:{password}@"),
                  FARM_REDIS_CERT=None, FARM_REDIS_KEY=None)  # fmt: skip
    out = farm_cli("submit", str(path), "--json", env=env, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "accepted", out.stderr
    assert [e for e in admin.acl_log() if e["username"] == "artist"] == []
    with pytest.raises(redis.exceptions.NoPermissionError):  # the ACL holds: no other writes
        r.hset("farm:scene:" + scene["id"], "state", "failed")
    with pytest.raises(client.FarmClientError, match="CA certificate in the add-on preferences"):
        client.connect(url, password, timeout=5)
    with pytest.raises(client.FarmClientError, match="refused the password") as info:
        client.connect(url, "wrong-pw", timeout=5, ca=ca)
    assert "wrong-pw" not in str(info.value)
    with pytest.raises(client.FarmClientError, match="not rediss://"):
        client.connect(url.replace("rediss://", "redis://"), password, ca=ca)


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory):
    """A TLS-only redis-server that asks every client for a certificate signed by its CA."""
    root = tmp_path_factory.mktemp("mtls")
    tls, port = make_tls_files(root / "tls"), free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key),
         "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "yes", "--save", "",
         "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    env = {"FARM_REDIS_URL": f"rediss://127.0.0.1:{port}/0", "FARM_REDIS_CA": str(tls.ca),
           "FARM_REDIS_CERT": str(tls.client_cert), "FARM_REDIS_KEY": str(tls.client_key)}  # fmt: skip
    try:
        wait_for(lambda: connect(Settings.from_env(env)).ping(), 15, "redis-server (mTLS)", proc)
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_a_client_certificate_reaches_state_broker_and_results(mtls_redis):
    settings = Settings.from_env(mtls_redis)
    assert connect(settings).set("k", "v")
    app = make_app(settings)
    try:
        with app.connection_for_write() as conn:  # the broker, as workers and the CLI reach it
            queue = conn.SimpleQueue("tls-check")
            queue.put({"ok": 1})
            assert queue.get(timeout=5).payload == {"ok": 1}
            queue.close()
        app.backend.store_result("tls-task", {"done": True}, "SUCCESS")  # the result backend
        assert app.backend.get_task_meta("tls-task")["result"] == {"done": True}
    finally:
        app.close()
    without = Settings.from_env({**mtls_redis, "FARM_REDIS_CERT": "", "FARM_REDIS_KEY": ""})
    with pytest.raises(ConfigError, match="set FARM_REDIS_CERT and FARM_REDIS_KEY"):
        connect(without)


def test_tls_settings_verify_the_server_and_are_checked(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-")
    conf = celery_config(Settings.from_env({"FARM_REDIS_URL": "rediss://h:6380/0"}))
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"]
    assert conf["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED  # never CERT_NONE
    assert conf["broker_use_ssl"]["ssl_check_hostname"] is True
    assert "ssl_ca_certs" not in conf["broker_use_ssl"]  # the system's CAs
    with_ca = Settings.from_env({"FARM_REDIS_URL": "rediss://h:6380/0", "FARM_REDIS_CA": str(ca)})
    assert with_ca.redis_ssl()["ssl_ca_certs"] == str(ca)
    assert celery_config(Settings.from_env({}))["broker_use_ssl"] is False
    for env, fragment in [
        ({"FARM_REDIS_CA": str(ca)}, "FARM_REDIS_CA is set but FARM_REDIS_URL is redis://"),
        ({"FARM_REDIS_URL": "rediss://h/0", "FARM_REDIS_CA": str(tmp_path / "no")}, "not a file"),
        ({"FARM_REDIS_URL": "rediss://h/0", "FARM_REDIS_CERT": str(ca)}, "go together"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            Settings.from_env(env)
    with pytest.raises(ConfigError, match="must start with redis://") as info:
        Settings.from_env({"FARM_REDIS_URL": "http://:s3cret@h/0"})
    assert "s3cret" not in str(info.value)


def test_worker_acl_is_what_docs_say():
    text = (REPO / "docs" / "redis.md").read_text()
    assert WORKER_ACL in text and ADDON_ACL in text
