"""Redis Sentinel: a real master, a replica and three sentinels (quorum 2) on loopback, each
with a password; a farm (its node worker, CPU worker and ingest) on the sentinel URL renders a
scene, the sentinels fail the master over, and the same processes render the next scene on
the new master, with the state written before still there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from farm.celery_app import celery_config, celery_url, make_app
from farm.errors import ConfigError
from farm.local import EmulatedNode, LocalFarm, TLSFiles, free_port, make_tls_files, wait_for
from farm.nodes import NodeRegistry
from farm.settings import Settings, parse_sentinel_url
from farm.state import FarmState, connect, redacted

from .conftest import NODES
from .test_e2e import wait_done
from .test_ingest import farm_cli, quick_scene
from .test_redis_tls import flower_queue_lengths

MASTER = "farm-ha"
PASSWORD = "data-pw-7"
SENTINEL_PASSWORD = "sentinel-pw-3"


class SentinelGroup:
    """A master, one replica and three sentinels watching them (quorum 2), started on free
    loopback ports under ``root``; every process it starts, it stops (by its own pid)."""

    def __init__(self, root: Path, tls: TLSFiles | None = None) -> None:
        self.root, self.tls = root, tls
        self.procs: list[subprocess.Popen] = []
        self.servers: list[int] = []
        self.sentinels: list[int] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"sentinel{'s' if self.tls else ''}://:{PASSWORD}@{hosts}/0"

    def env(self) -> dict[str, str]:
        env = {"FARM_REDIS_URL": self.url, "FARM_REDIS_SENTINEL_MASTER": MASTER,
               "FARM_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}  # fmt: skip
        return env | ({"FARM_REDIS_CA": str(self.tls.ca)} if self.tls else {})

    def _run(self, name: str, config: str, *args: str) -> None:
        folder = self.root / name
        folder.mkdir(parents=True)
        if self.tls:  # TLS only, to clients, replicas and other sentinels alike
            port = config.split("\n", 1)[0].split()[1]
            config = (f"port 0\ntls-port {port}\ntls-cert-file {self.tls.server_cert}\n"
                      f"tls-key-file {self.tls.server_key}\ntls-ca-cert-file {self.tls.ca}\n"
                      "tls-auth-clients no\ntls-replication yes\n"
                      + config.split("\n", 1)[1])  # fmt: skip
        (folder / "redis.conf").write_text(f"dir {folder}\n{config}")
        log = (folder / "log").open("ab")
        self.procs.append(subprocess.Popen(
            ["redis-server", str(folder / "redis.conf"), *args], stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        log.close()

    def server(self, port: int, password: str = PASSWORD) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis(port=port, password=password, socket_timeout=5,
                           decode_responses=True, **tls)  # fmt: skip

    def sentinel(self, port: int) -> redis.Redis:
        return self.server(port, SENTINEL_PASSWORD)

    def start(self) -> SentinelGroup:
        self.servers = [free_port(), free_port()]
        for i, port in enumerate(self.servers):
            replica = f"replicaof 127.0.0.1 {self.servers[0]}\n" if i else ""
            self._run(f"redis-{i}", f"port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\n"
                      f"repl-diskless-sync-delay 0\nrequirepass {PASSWORD}\nmasterauth {PASSWORD}\n{replica}")  # fmt: skip
        replica = self.server(self.servers[1])
        wait_for(lambda: replica.info("replication")["master_link_status"] == "up", 15,
                 "the replica")  # fmt: skip
        self.sentinels = [free_port() for _ in range(3)]
        for i, port in enumerate(self.sentinels):
            self._run(f"sentinel-{i}", f"port {port}\nbind 127.0.0.1\n"
                      f"sentinel monitor {MASTER} 127.0.0.1 {self.servers[0]} 2\n"
                      f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                      f"sentinel down-after-milliseconds {MASTER} 1000\n"
                      f"sentinel failover-timeout {MASTER} 4000\n"
                      f"requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n",
                      "--sentinel")  # fmt: skip

        for port in self.sentinels:
            wait_for(lambda p=port: self.master_port(p) == self.servers[0], 15, f"sentinel {port}")
        return self

    def wait_ready(self) -> None:
        """Wait until each sentinel knows the replica and the other two (they find each
        other through the master within a few seconds): a failover needs the quorum."""

        def ready(port: int) -> bool:
            state = self.sentinel(port).sentinel_master(MASTER)
            return state["num-slaves"] == 1 and state["num-other-sentinels"] == 2

        for port in self.sentinels:
            wait_for(lambda p=port: ready(p), 30, f"sentinel {port}")

    def master_port(self, sentinel: int | None = None) -> int:
        port = self.sentinels[0] if sentinel is None else sentinel
        return int(self.sentinel(port).sentinel_get_master_addr_by_name(MASTER)[1])

    def kill_master(self) -> int:
        """Kill the master (SIGKILL, once the replica has every write) and wait until the
        sentinels have promoted the replica; return the new master's port."""
        self.wait_ready()
        old = self.master_port()
        self.server(old).wait(1, 5000)
        proc = self.procs[self.servers.index(old)]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        new = next(port for port in self.servers if port != old)

        def promoted() -> bool:
            named = all(self.master_port(s) == new for s in self.sentinels)
            return named and self.server(new).info("replication")["role"] == "master"

        wait_for(promoted, 60, "the failover")
        return new

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"))
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture(scope="module")
def ha_farm(group, tmp_path_factory):
    """One emulated ComfyUI node, its worker, a CPU worker and ingest, on the sentinels."""
    farm = LocalFarm(tmp_path_factory.mktemp("ha-farm"), [EmulatedNode("node-a", NODES / "node-a.json")],
                     redis_url=group.url, extra_env={**group.env(), "FARM_NODE_IDLE_TIMEOUT": "8"})  # fmt: skip
    farm.start()
    try:
        yield farm
    finally:
        farm.stop()


def submit(farm: LocalFarm, tmp_path: Path, scene_id: str, seed: int) -> None:
    path = tmp_path / f"{scene_id}.json"
    path.write_text(json.dumps(quick_scene(scene_id, seed=seed)))
    out = farm_cli("submit", str(path), "--json", env={**os.environ, **farm.env()}, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["state"] == "accepted"


def test_a_farm_on_sentinel_renders_before_and_after_a_failover(group, ha_farm, tmp_path):
    settings = ha_farm.settings()
    client = connect(settings)  # made before the failover, used after it
    rt = SimpleNamespace(state=FarmState(client, settings), registry=NodeRegistry(client, settings))
    old = group.master_port()
    assert client.connection_pool.get_master_address() == ("127.0.0.1", old)

    submit(ha_farm, tmp_path, "ha-before", seed=11)
    assert wait_done(rt, "ha-before", timeout=90)["state"] == "done"

    new = group.kill_master()
    assert new != old
    env = {**os.environ, **ha_farm.env()}
    status = farm_cli("status", "ha-before", "--json", env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "done"  # written before, read from the new master

    # the node's worker beats again once it has found the new master; until then ingest
    # rightly refuses a scene no live node can render
    wait_for(lambda: all(r["alive"] for r in rt.registry.records()), 60, "the nodes beating again")
    submit(ha_farm, tmp_path, "ha-after", seed=12)
    assert wait_done(rt, "ha-after", timeout=90)["state"] == "done"
    assert client.connection_pool.get_master_address() == ("127.0.0.1", new)
    # the same worker, ingest and emulator processes did it all: none restarted
    assert {name: proc.poll() for name, proc in ha_farm.procs.items()} == dict.fromkeys(
        ha_farm.procs
    )
    assert flower_queue_lengths(settings, ["cpu"]) == {"cpu": 0}
    logs = "".join(p.read_text(errors="replace") for p in ha_farm.logs.glob("*.log"))
    assert PASSWORD not in logs and SENTINEL_PASSWORD not in logs


def test_wrong_master_name_or_passwords_are_one_clear_line(group):
    wrong_name = Settings.from_env({**group.env(), "FARM_REDIS_SENTINEL_MASTER": "nope"})
    with pytest.raises(ConfigError) as info:
        connect(wrong_name)
    text = str(info.value)
    assert "no sentinel of sentinel://:***@127.0.0.1:" in text and "'nope'" in text
    assert "FARM_REDIS_SENTINEL_MASTER" in text and PASSWORD not in text
    wrong_pass = Settings.from_env({**group.env(), "FARM_REDIS_SENTINEL_PASSWORD": "bad-pw"})
    with pytest.raises(ConfigError) as info:
        connect(wrong_pass)
    text = str(info.value)
    assert "FARM_REDIS_SENTINEL_PASSWORD" in text and "bad-pw" not in text and "\n" not in text
    wrong_master_pass = Settings.from_env(
        {**group.env(), "FARM_REDIS_URL": group.url.replace(PASSWORD, "bad-pw")}
    )
    started = time.monotonic()
    with pytest.raises(ConfigError, match="refused the credentials") as info:
        connect(wrong_master_pass)
    assert time.monotonic() - started < 3  # not after the retries meant for a failover
    assert "bad-pw" not in str(info.value) and "sentinel://:***@" in str(info.value)


def test_sentinels_over_tls_serve_state_broker_and_results(tmp_path):
    """``sentinels://``: the sentinels and the servers speak TLS only."""
    tls = make_tls_files(tmp_path / "tls")
    group = SentinelGroup(tmp_path / "group", tls=tls)
    try:
        settings = Settings.from_env(group.start().env())
        client = connect(settings)
        assert (
            client.set("k", "v")
            and client.connection_pool.get_master_address()[1] == group.servers[0]
        )
        app = make_app(settings)
        try:
            with app.connection_for_write() as conn:  # the broker, through the sentinels
                queue = conn.SimpleQueue("sentinel-tls-check")
                queue.put({"ok": 1})
                assert queue.get(timeout=5).payload == {"ok": 1}
                queue.close()
            app.backend.store_result("sentinel-tls-task", {"done": True}, "SUCCESS")
            assert app.backend.get_task_meta("sentinel-tls-task")["result"] == {"done": True}
        finally:
            app.close()
        without_ca = Settings.from_env({**group.env(), "FARM_REDIS_CA": ""})
        with pytest.raises(ConfigError, match="does not trust .* set FARM_REDIS_CA"):
            connect(without_ca)
    finally:
        group.stop()


def test_a_sentinel_url_is_parsed_and_spelled_for_celery():
    url = parse_sentinel_url("sentinel://farm:p%40ss@h1:26380,h2,[::1]:26381/2")
    assert url.sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert (url.username, url.password, url.db, url.tls) == ("farm", "p@ss", 2, False)
    env = {"FARM_REDIS_URL": "sentinels://farm:p%40ss@h1:26380,h2/2",
           "FARM_REDIS_SENTINEL_MASTER": "m", "FARM_REDIS_SENTINEL_PASSWORD": "sp"}  # fmt: skip
    settings = Settings.from_env(env)
    assert (
        celery_url(settings)
        == "sentinel://farm:p%40ss@h1:26380/2;sentinel://farm:p%40ss@h2:26379/2"
    )
    conf = celery_config(settings)
    assert conf["broker_url"] == conf["result_backend"] == celery_url(settings)
    for options in (conf["broker_transport_options"], conf["result_backend_transport_options"]):
        assert options["master_name"] == "m" and options["sentinel_kwargs"]["password"] == "sp"
        assert options["sentinel_kwargs"]["ssl"] is True  # sentinels://: the sentinels too
    assert conf["broker_use_ssl"]["ssl_cert_reqs"] == conf["redis_backend_use_ssl"]["ssl_cert_reqs"]
    assert redacted(env["FARM_REDIS_URL"]) == "sentinels://farm:***@h1:26380,h2/2"


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"FARM_REDIS_URL": "sentinel://h1:1,h2:2/0"}, "FARM_REDIS_SENTINEL_MASTER"),
        ({"FARM_REDIS_URL": "sentinel://h1:1;sentinel://h2:2", "FARM_REDIS_SENTINEL_MASTER": "m"},
         "separated by commas"),
        ({"FARM_REDIS_URL": "sentinel://h1:x/0", "FARM_REDIS_SENTINEL_MASTER": "m"}, "host[:port]"),
        ({"FARM_REDIS_URL": "sentinel://h1/db", "FARM_REDIS_SENTINEL_MASTER": "m"}, "not a number"),
        ({"FARM_REDIS_SENTINEL_MASTER": "m"}, "is redis://"),
    ],
)  # fmt: skip
def test_bad_sentinel_settings_are_explained(env, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        Settings.from_env(env)


def test_unreachable_sentinels_are_one_clear_line():
    port = free_port()
    settings = Settings.from_env({"FARM_REDIS_URL": f"sentinel://:secret@127.0.0.1:{port}/0",
                                  "FARM_REDIS_SENTINEL_MASTER": "m"})  # fmt: skip
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        connect(settings)
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and "secret" not in text and "\n" not in text
    assert time.monotonic() - started < 5
