"""Per-process resources (settings, Redis client, state, registry), made on first use.

Nothing is connected at import time; a worker process builds these once, after fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis

from farm.catalog import Catalog
from farm.nodes import NodeRegistry
from farm.settings import Settings, get_settings
from farm.state import FarmState, connect
from farm.studio import catalog_for


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    state: FarmState
    registry: NodeRegistry

    @property
    def catalog(self) -> Catalog:
        """The farm's catalogue: the built-in one with ``FARM_CATALOG`` merged in."""
        return catalog_for(self.settings)


_runtime: tuple[int, Runtime] | None = None


def get_runtime() -> Runtime:
    """This process's runtime (rebuilt after a fork)."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        settings = get_settings()
        client = connect(settings, check=False)
        _runtime = (
            os.getpid(),
            Runtime(settings, client, FarmState(client, settings), NodeRegistry(client, settings)),
        )
    return _runtime[1]
