"""Leases and locks held with a token and released only by their holder (see
:mod:`farm.lifecycle`)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from farm.keys import member
from farm.lifecycle.fenced import new_token, scripts

if TYPE_CHECKING:
    from farm.runtime import Runtime

log = logging.getLogger(__name__)

# -- leases and locks -----------------------------------------------------------------------


def hold(rt: Runtime, key: str, token: str, record: str, fence: str, *, wait_for: float) -> bool:
    """Take lease ``key`` for ``token`` while ``record`` holds ``token`` in ``fence`` (a
    scoring task on its shot); a redelivered task waits up to ``wait_for`` seconds for a
    dead one's lease to lapse. False: the record moved on, or the lease stayed held."""
    ttl_ms = int(rt.settings.lease_ttl * 1000)
    deadline = time.monotonic() + wait_for
    while True:
        got = int(scripts(rt.redis).hold(keys=[key, record], args=[token, ttl_ms, fence]))
        if got == 1:
            return True
        if got < 0 or time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def release_lease(rt: Runtime, key: str, token: str) -> bool:
    """Delete lease or lock ``key`` if ``token`` still holds it."""
    return bool(scripts(rt.redis).release(keys=[key], args=[token]))


def release_slot(rt: Runtime, node: str, scene_id: str, shot_id: str, token: str) -> bool:
    """Free the shot's slot on ``node`` if binding ``token`` still holds it (a delivery
    that found itself stale, and every other path out of a render)."""
    if not node:
        return False
    return bool(scripts(rt.redis).release_field(
        keys=[rt.settings.keys.bound(node)], args=[member(scene_id, shot_id), token]))  # fmt: skip


class Lock:
    """A lock held with a token, released only by its holder (compared and deleted in
    one step), so a holder that outlived its TTL never frees someone else's lock."""

    def __init__(self, rt: Runtime, key: str, ttl: float) -> None:
        self.rt, self.key, self.ttl_ms = rt, key, int(ttl * 1000)
        self.token = ""

    def acquire(self) -> bool:
        token = new_token()
        if self.rt.redis.set(self.key, token, nx=True, px=self.ttl_ms):
            self.token = token
            return True
        return False

    def extend(self) -> bool:
        """Renew the TTL; False when the lock is no longer ours."""
        return bool(self.token) and scripts(self.rt.redis).renew(
            keys=[self.key, self.key + ":none"], args=[self.token, self.ttl_ms, "-"]
        ) == 1  # fmt: skip

    def release(self) -> None:
        if self.token:
            release_lease(self.rt, self.key, self.token)
            self.token = ""


class Keeper(threading.Thread):
    """Keeps a lease (``key`` = ``token``) alive while its owner works: renewed every third
    of ``FARM_LEASE_TTL``, and taken again if it lapsed (Redis was away longer than the
    TTL) while ``record`` still holds ``token`` in ``fence``. :meth:`tick` runs every
    ``every`` seconds for the owner's own checks."""

    def __init__(self, rt: Runtime, key: str, token: str, record: str, fence: str,
                 every: float = 0.5) -> None:  # fmt: skip
        super().__init__(name=f"lease-{key.rsplit(':', 1)[-1]}", daemon=True)
        self.rt, self.key, self.token, self.record, self.fence = rt, key, token, record, fence
        self.every = every
        self.stopped = threading.Event()

    def run(self) -> None:
        ttl_ms = int(self.rt.settings.lease_ttl * 1000)
        renew_every = self.rt.settings.lease_ttl / 3
        renewed = time.monotonic()
        while not self.stopped.wait(self.every):
            try:
                if time.monotonic() - renewed >= renew_every:
                    scripts(self.rt.redis).renew(keys=[self.key, self.record],
                                                 args=[self.token, ttl_ms, self.fence])  # fmt: skip
                    renewed = time.monotonic()
                self.tick()
            except Exception:  # Redis or node hiccups: try again next round
                log.exception("lease keeper of %s", self.key)

    def tick(self) -> None:
        """The owner's own check, every ``every`` seconds (nothing by default)."""

    def stop(self) -> None:
        self.stopped.set()
