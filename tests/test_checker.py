"""The timeout checker's own judgement (farm.checker), on a real Redis: silence counts
only while the checker itself could reach Redis, and finished scenes are deleted after
their retention."""

from __future__ import annotations

import time

import pytest

from farm import lifecycle
from farm.celery_app import app
from farm.checker import Checker, Contact
from farm.nodes import NodeRegistry
from farm.runtime import Runtime
from farm.settings import Settings
from farm.state import FarmState, connect


@pytest.fixture
def rt(scratch_settings) -> Runtime:
    settings = Settings.from_env({"FARM_REDIS_URL": scratch_settings.redis_url,
                                  "FARM_NODE_TTL": "2", "FARM_RETENTION": "60"},
                                 key_prefix=scratch_settings.key_prefix)  # fmt: skip
    client = connect(settings)
    return Runtime(settings, client, FarmState(client, settings), NodeRegistry(client, settings))


def test_a_node_silent_while_the_checker_could_not_reach_redis_is_not_dead(rt):
    """A node whose last beat is older than the node TTL is dead only once the checker
    has itself reached Redis for a node TTL: after an outage (a read that failed or
    blocked), every node gets that long to beat again."""
    rt.registry.register("n1", "comfyui", "http://127.0.0.1:1", {"models": {}})
    rt.redis.hset(rt.registry.key("n1"), "last_seen", str(time.time() - 60))
    (node,) = rt.registry.records()
    assert not node["alive"]
    checker = Checker(rt, app)
    assert checker.contact.check(rt.redis)
    assert not checker.dead(node)  # just in contact: cannot judge yet
    checker.contact.since = time.time() - 3
    assert checker.dead(node)

    def blocked():  # a read the client retried through an outage
        time.sleep(1.2)
        return rt.redis.ping()

    checker.contact.read(blocked)
    assert not checker.dead(node)
    checker.contact.since = time.time() - 3
    checker.contact.lost()
    assert not checker.dead(node)


def test_a_node_whose_worker_says_its_server_is_down_is_dead_at_once(rt):
    rt.registry.register("n1", "comfyui", "http://127.0.0.1:1", {"models": {}})
    rt.registry.beat("n1", ok=False, reason="connection refused")
    (node,) = rt.registry.records()
    checker = Checker(rt, app)
    checker.contact.check(rt.redis)
    assert checker.dead(node)


def test_contact_is_lost_when_redis_cannot_be_reached():
    contact = Contact()
    settings = Settings.from_env({"FARM_REDIS_URL": "redis://127.0.0.1:9/0"})
    client = connect(settings, check=False)
    client.connection_pool.connection_kwargs["socket_connect_timeout"] = 0.2
    assert not contact.check(client) and not contact.judges(0)


def test_a_finished_scene_is_deleted_after_its_retention(rt):
    keys = rt.settings.keys
    spec = {"id": "old", "title": "", "priority": 5, "shots": [{"id": "a"}]}
    lifecycle.create(rt, spec, [{"shot_id": "a", "node": None, "kind": "final"}], "final",
                     enqueuer="t")  # fmt: skip
    lifecycle.fail_scene(rt, "old", "given up")
    checker = Checker(rt, app)
    checker.retention()
    assert rt.state.exists("old")  # ended just now
    rt.redis.zadd(keys.over_scenes(), {"old": time.time() - 61})
    checker.retention()
    assert not rt.state.exists("old")
    assert not rt.redis.exists(keys.shot("old", "a"), keys.events("old"))
    assert rt.redis.zscore(keys.scenes(), "old") is None
    assert rt.redis.zscore(keys.over_scenes(), "old") is None


def test_a_shot_whose_every_capable_node_is_blocked_for_its_scene_fails_in_time(rt):
    """A waiting shot that only blocklisted nodes could render fails after
    FARM_WAIT_TIMEOUT, saying so, instead of waiting for ever; a shot of another scene,
    for which the node is not blocked, is bound to it."""
    from farm import canvas
    from farm.planning import plan_scene
    from farm.scene import parse_scene
    from farm.submit import enqueue

    settings = Settings.from_env({"FARM_REDIS_URL": rt.settings.redis_url,
                                  "FARM_NODE_TTL": "2", "FARM_WAIT_TIMEOUT": "1",
                                  "FARM_BLOCKLIST_AFTER": "3"},
                                 key_prefix=rt.settings.key_prefix)  # fmt: skip
    rt = Runtime(
        settings, rt.redis, FarmState(rt.redis, settings), NodeRegistry(rt.redis, settings)
    )
    scenes = [parse_scene({"id": scene_id, "quality": "final", "shots": [
        {"id": "a", "action_description": "a fox", "backend": "comfyui",
         "width": 320, "height": 192, "frames": 17}]}) for scene_id in ("blocked-sc", "free-sc")]  # fmt: skip
    files: dict[str, list[str]] = {}
    for v in plan_scene(scenes[0], "final")[0]:
        for folder, names in v.files.items():
            files.setdefault(folder, []).extend(names)
    rt.registry.register("n1", "comfyui", "http://127.0.0.1:1", {"models": files})
    rt.redis.hset(settings.keys.blocklist("blocked-sc"), "n1", 3)
    try:
        for scene in scenes:
            enqueue(scene, rt)
        assert rt.state.shot("free-sc", "a")["state"] == "bound"
        checker = Checker(rt, app)
        checker.contact.check(rt.redis)
        checker.contact.since = time.time() - 3
        checker.waiting()
        assert rt.state.shot("blocked-sc", "a")["state"] == "queued"  # not long enough yet
        time.sleep(1.2)
        rt.registry.beat("n1", ok=True)
        checker.waiting()
        shot = rt.state.shot("blocked-sc", "a")
        assert shot["state"] == "failed"
        assert "every live node that can render" in shot["error"] and "(n1)" in shot["error"]
        assert "blocked for this scene" in shot["error"] and "farm retry" in shot["error"]
        assert rt.state.shot("free-sc", "a")["state"] == "bound"
    finally:  # the free scene's task, published to a node no worker serves
        rt.redis.delete(*canvas.queue_lists(settings, "node.n1"))
