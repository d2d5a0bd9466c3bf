"""Settings from FARM_* variables, and the one Celery configuration."""

from __future__ import annotations

import re

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
    """deploy/env.example sets every setting (``NAME=`` or, for an optional one,
    ``# NAME=``) under a comment line that says what it is, and names nothing else."""
    from .conftest import REPO

    lines = (REPO / "deploy" / "env.example").read_text().splitlines()
    assignment = re.compile(r"^#?\s*(FARM_[A-Z0-9_]+)=")
    first: dict[str, int] = {}
    for i, line in enumerate(lines):
        match = assignment.match(line)
        if match:
            first.setdefault(match.group(1), i)
    known = {name for name, _default, _help in documented_settings()}
    assert known - set(first) == set(), "missing from deploy/env.example"
    assert set(first) - known == set(), "in deploy/env.example but not a setting"
    for name, i in first.items():
        above = lines[i - 1] if i else ""
        assert above.startswith("#") and not assignment.match(above) and above.strip("# "), (
            f"{name}: no comment line directly above it in deploy/env.example"
        )


def test_every_farm_variable_in_the_code_is_a_setting():
    """A ``FARM_*`` name anywhere in farm/ (code, messages, docstrings) is a setting, so
    one that is renamed or dropped cannot linger in a message or a lookup."""
    from .conftest import REPO

    pattern = re.compile(r"\bFARM_[A-Z][A-Z0-9_]*[A-Z0-9]\b")
    known = {name for name, _default, _help in documented_settings()}
    where = {
        name: path.relative_to(REPO)
        for path in sorted((REPO / "farm").rglob("*.py"))
        for name in pattern.findall(path.read_text())
    }
    assert set(where) - known == set(), {n: str(where[n]) for n in set(where) - known}
