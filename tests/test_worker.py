"""The node worker's heartbeat: registration, re-discovery and a node coming back."""

from __future__ import annotations

import time

import pytest

from farm.backends import detect_kind, make_backend
from farm.errors import NodeUnavailable
from farm.local import free_port
from farm.settings import NodeConfig, Settings
from farm.worker import Heartbeat


def settings_for(scratch_settings, interval: str) -> Settings:
    env = {"FARM_REDIS_URL": scratch_settings.redis_url, "FARM_DISCOVERY_INTERVAL": interval,
           "FARM_WORKFLOWS": str(scratch_settings.workflows_dir)}  # fmt: skip
    return Settings.from_env(env, key_prefix=scratch_settings.key_prefix)


def test_heartbeat_rediscovers_the_node_periodically(farm_cluster, scratch_settings):
    settings = settings_for(scratch_settings, "0.3")
    beat = Heartbeat(NodeConfig("hb", "comfyui", farm_cluster.node_url("node-c")), settings)
    beat.beat()
    (first,) = beat.registry.records()
    assert first["alive"] and first["workflows"]["wan_ati"]["catalog"] == ["wan_ati"]
    beat.beat()  # within the interval: a probe only
    assert beat.registry.records()[0]["described"] == first["described"]
    time.sleep(0.4)
    beat.beat()
    assert beat.registry.records()[0]["described"] > first["described"]


def test_a_node_that_comes_back_is_described_again(farm_cluster, scratch_settings):
    settings = settings_for(scratch_settings, "3600")
    beat = Heartbeat(NodeConfig("back", "comfyui", f"http://127.0.0.1:{free_port()}"), settings)
    beat.beat()
    (down,) = beat.registry.records()
    assert not down["alive"] and down["workflows"] is None and "127.0.0.1" in down["reason"]
    assert beat.registry.infos()[0].workflows is None
    beat.backend = make_backend("comfyui", farm_cluster.node_url("node-a"), settings)  # back
    beat.beat()
    (up,) = beat.registry.records()
    assert up["alive"] and up["workflows"]["wan22_t2v"]["ok"] and up["described"] > 0
    offered = beat.registry.infos()[0].workflows["wan22_t2v"]
    assert {f"wan2.2_t2v_{n}_noise_14B_fp8_scaled.safetensors" for n in ("high", "low")} <= set(
        offered
    )


def test_the_node_kind_is_detected_from_what_answers(farm_cluster):
    assert detect_kind(farm_cluster.node_url("node-a")) == "comfyui"
    assert detect_kind(farm_cluster.node_url("node-w")) == "wan2gp"
    assert detect_kind("file:///opt/Wan2GP") == "wan2gp"
    with pytest.raises(NodeUnavailable) as info:
        detect_kind(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert "a Comfy API v2 service nor a WanGP MCP server" in str(info.value)
    assert "give --kind" in str(info.value)
