"""Settings from FARM_* variables, and the one Celery configuration."""

from __future__ import annotations

import pytest

from farm.celery_app import celery_config
from farm.errors import ConfigError
from farm.settings import Settings, documented_settings, parse_nodes


def test_defaults_and_overrides_from_the_environment(tmp_path):
    s = Settings.from_env(
        {
            "FARM_REDIS_URL": "redis://h:1/2",
            "FARM_STORAGE": str(tmp_path),
            "FARM_RENDER_TIME_LIMIT": "100",
            "FARM_VISIBILITY_TIMEOUT": "200",
        }
    )
    assert s.redis_url == "redis://h:1/2" and s.storage == tmp_path and s.render_time_limit == 100
    assert Settings.from_env({}).cpu_queue == "cpu"


def test_nodes_are_parsed_with_their_kind():
    nodes = parse_nodes("a=http://10.0.0.1:8188/, b=comfyui+http://h:1,c=wan2gp+http://h:2")
    assert [(n.name, n.kind, n.url) for n in nodes] == [
        ("a", "comfyui", "http://10.0.0.1:8188"),
        ("b", "comfyui", "http://h:1"),
        ("c", "wan2gp", "http://h:2"),
    ]


def test_a_bare_url_is_a_node_named_after_its_host_and_port():
    nodes = parse_nodes("http://10.0.0.5:8188, comfyui+https://gpu.example/api,b=http://h:1/")
    assert [(n.name, n.kind, n.url) for n in nodes] == [
        ("10-0-0-5-8188", "comfyui", "http://10.0.0.5:8188"),
        ("gpu-example", "comfyui", "https://gpu.example/api"),
        ("b", "comfyui", "http://h:1"),
    ]
    (cli,) = parse_nodes("w=wan2gp+file:///opt/Wan2GP")
    assert (cli.kind, cli.url) == ("wan2gp", "file:///opt/Wan2GP")
    with pytest.raises(ConfigError, match="wan2gp\\+file:///path/to/Wan2GP"):
        parse_nodes("c=file:///opt/ComfyUI")


@pytest.mark.parametrize(
    "text, fragment",
    [("a", "'name=URL'"), ("a=ftp://x", "http://"), ("a=http://x,a=http://y", "twice")],
)
def test_bad_node_lists_are_explained(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_nodes(text)


def test_bad_values_name_the_variable():
    with pytest.raises(ConfigError, match="FARM_HTTP_TIMEOUT"):
        Settings.from_env({"FARM_HTTP_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="FARM_VISIBILITY_TIMEOUT"):
        Settings.from_env({"FARM_RENDER_TIME_LIMIT": "500", "FARM_VISIBILITY_TIMEOUT": "400"})
    with pytest.raises(ConfigError, match="FARM_REDIS_URL"):
        Settings.from_env({"FARM_REDIS_URL": "localhost:6379"})
    with pytest.raises(ConfigError, match="FARM_INGEST_MAX_DELIVERIES"):
        Settings.from_env({"FARM_INGEST_MAX_DELIVERIES": "0"})


def test_unknown_node_is_explained():
    s = Settings.from_env({"FARM_NODES": "a=http://x:1"})
    with pytest.raises(ConfigError, match="configured: a"):
        s.node("b")


def test_celery_config_is_safe_for_long_renders():
    s = Settings.from_env({})
    conf = celery_config(s)
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_routes"]["farm.assemble_scene"]["queue"] == s.cpu_queue


def test_every_setting_is_documented_in_env_example():
    from .conftest import REPO

    text = (REPO / "deploy" / "env.example").read_text()
    for name, _default, _help in documented_settings():
        assert f"{name}=" in text, name
