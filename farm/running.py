"""Which farm a command means when it is not told: the farms ``farm up`` runs here.

The rule (docs/operations.md, "Which farm a command talks to"):

- ``farm ps``, ``farm env`` and ``farm down`` without CONFIG take ``./farm.toml`` if it
  exists (what ``farm up`` starts from this folder); else the farm ``farm up`` runs on this
  machine for this user, when just one runs (several: name one); else deploy/farm.toml.
- Every other command reads ``FARM_REDIS_URL`` and the other ``FARM_*`` settings. When
  ``FARM_REDIS_URL`` is not set, it takes the settings of the running farm the same rule
  finds (those ``farm env`` prints, from ROOT/run/state.json). Only when no such farm runs
  does it ask the default Redis, and then only a Redis that holds a farm
  (:func:`holds_farm`) is taken for one.

A supervisor is found by its command line (``farm up … --foreground``) and its working
folder, which is its farm's root (ROOT/run/supervisor.pid names it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from farm.errors import ConfigError, FarmError
from farm.keys import Keys
from farm.up import UpConfig, default_config, load_config, read_state, supervisor_pid

HERE = Path("farm.toml")


def supervisors() -> dict[int, Path]:
    """The ``farm up`` supervisors of this user that run now: pid -> the farm's root."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"up" not in argv or b"--foreground" not in argv:
                continue
            root = Path(os.readlink(proc / "cwd"))
            if (root / "run" / "supervisor.pid").read_text().strip() == proc.name:
                found[int(proc.name)] = root
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return found


def running_farms() -> list[dict[str, Any]]:
    """The state (ROOT/run/state.json) of every farm ``farm up`` runs for this user."""
    farms = []
    for pid, root in sorted(supervisors().items()):
        try:
            state = json.loads((root / "run" / "state.json").read_text())
        except (OSError, ValueError):
            continue  # still starting: nothing written yet
        if state.get("pid") == pid:
            farms.append(state)
    return farms


def find_config(config: Path | None) -> Path:
    """The config a command means: ``config``, else ./farm.toml, else the one running
    farm's, else deploy/farm.toml (ConfigError when several farms run)."""
    if config is not None or HERE.exists():
        return config or HERE
    farms = running_farms()
    if len(farms) > 1:
        names = ", ".join(f["config"] for f in farms)
        raise ConfigError(f"several farms run on this machine ({names}): name one, e.g. "
                          f"`farm env {farms[0]['config']}`")  # fmt: skip
    return Path(farms[0]["config"]) if farms else default_config()


def locate(config: Path | None = None) -> tuple[UpConfig, dict[str, Any] | None]:
    """The farm a command means (:func:`find_config`) and its state, None when it is down."""
    cfg = load_config(find_config(config))
    return cfg, read_state(cfg) if supervisor_pid(cfg) else None


def pointer() -> tuple[dict[str, str], str]:
    """For a command without ``FARM_REDIS_URL``: the ``FARM_*`` variables of the running
    farm it means, or ``{}`` and why there is none."""
    try:
        cfg, state = locate()
    except FarmError as exc:
        return {}, str(exc)
    if state is not None:
        return dict(state.get("env", {})), ""
    if HERE.exists():
        return {}, f"no `farm up` runs for {HERE.resolve()}"
    return {}, "no `farm up` runs on this machine"


def holds_farm(client: Any, keys: Keys) -> bool:
    """Whether a Redis holds a farm: registered nodes, scenes or submissions."""
    return bool(client.exists(keys.nodes(), keys.scenes(), keys.submissions()))


def no_farm(url: str, reason: str, found: str) -> ConfigError:
    """The error of a command that fell back to the default Redis and ``found`` no farm."""
    return ConfigError(
        f"FARM_REDIS_URL is not set and {reason}, so this command asked the default Redis "
        f"{url}: {found}. Start a farm with `farm up [CONFIG]`, or point this shell at yours: "
        "`eval $(farm env CONFIG)` or `export FARM_REDIS_URL=redis://HOST:PORT/0`"
    )
