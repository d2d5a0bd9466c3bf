"""A command not pointed at a farm (no FARM_REDIS_URL) and with no `farm up` running falls
back to the default Redis, and never answers from it as if it were the farm when it holds
none (farm.running, farm.cli.common)."""

from __future__ import annotations

import os
import uuid

import pytest

from farm.cli import common
from farm.errors import ConfigError
from farm.running import pointer

from .conftest import pointed_at


def test_a_redis_without_a_farm_is_refused_naming_it_and_the_fix(farm_cluster, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    (tmp_path / "farm.toml").write_text(
        'root = "root"\n[[node]]\nname = "gpu0"\nurl = "http://127.0.0.1:9"\n'
    )
    monkeypatch.chdir(tmp_path)  # ./farm.toml, whose farm is down
    env, why = pointer()
    assert env == {} and why == f"no `farm up` runs for {tmp_path / 'farm.toml'}"
    monkeypatch.setattr(common, "_fallback", why)
    empty = {**farm_cluster.env(), "FARM_PREFIX": f"nofarm{uuid.uuid4().hex[:8]}"}
    with pointed_at(empty):
        with pytest.raises(ConfigError) as caught:
            common.runtime()
        text = str(caught.value)
        assert text.startswith(f"FARM_REDIS_URL is not set and {why}, so this command asked "
                               f"the default Redis {farm_cluster.redis_url()}: it holds no "
                               "farm (no nodes, no scenes)")  # fmt: skip
        assert "`eval $(farm env CONFIG)`" in text and "FARM_REDIS_URL=" in text
        assert common.runtime(need_farm=False)  # `farm ingest` may start a farm there
    with pointed_at(farm_cluster.env()):
        assert common.runtime().registry.records()  # a Redis with nodes holds a farm
    # the CLI's start: no FARM_REDIS_URL and no farm running: the fallback is remembered
    monkeypatch.setattr(common, "_fallback", None)
    monkeypatch.delenv("FARM_REDIS_URL")
    common.point_at_farm()
    assert common._fallback == why and "FARM_REDIS_URL" not in os.environ
