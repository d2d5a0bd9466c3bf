"""Emulator-only routes, not part of ComfyUI: switch injected faults on a running node, read
the log of the executions it started and count the requests it answered per route.

    GET /emulator/faults   the active faults object (every setting spelled out)
    PUT /emulator/faults   a new faults object replaces the active one; 400 with the error text
    GET /emulator/jobs     {"jobs": [...]}: every prompt execution started (farm.emulators.joblog)
    GET /emulator/requests {"METHOD /route/{pattern}": count}: requests answered per route

They answer only requests from loopback (404 otherwise, as for any unknown route) and are
not registered under ``/api``. The faults object is the profile's ``faults`` field.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from aiohttp import web

from farm.emulators.joblog import JobLog
from farm.emulators.profile import Fault, faults_json, parse_faults
from farm.errors import ConfigError

log = logging.getLogger("farm.emulators.comfyui")


class FaultyNode(Protocol):
    """A node whose active faults can be replaced and whose executions are logged
    (``comfyui.EmulatedNode``)."""

    faults: Mapping[str, Fault]
    jobs: JobLog
    hits: Counter[str]


def admin_routes(node: FaultyNode) -> list[tuple[str, str, Callable]]:
    """(method, path, handler) of the emulator-only routes of ``node``."""

    async def get_faults(request: web.Request) -> web.Response:
        _loopback_only(request)
        return web.json_response(faults_json(node.faults))

    async def put_faults(request: web.Request) -> web.Response:
        _loopback_only(request)
        try:
            node.faults = parse_faults(await request.json())
        except json.JSONDecodeError as exc:
            return web.Response(status=400, text=f"invalid faults: the body is not JSON ({exc})")
        except ConfigError as exc:
            return web.Response(status=400, text=str(exc))
        log.info("emulated faults now %s", json.dumps(faults_json(node.faults)))
        return web.json_response(faults_json(node.faults))

    async def get_jobs(request: web.Request) -> web.Response:
        _loopback_only(request)
        return web.json_response({"jobs": node.jobs.snapshot()})

    async def get_requests(request: web.Request) -> web.Response:
        _loopback_only(request)
        return web.json_response(dict(node.hits))

    return [
        ("GET", "/emulator/requests", get_requests),
        ("GET", "/emulator/faults", get_faults),
        ("PUT", "/emulator/faults", put_faults),
        ("GET", "/emulator/jobs", get_jobs),
    ]


def _loopback_only(request: web.Request) -> None:
    try:
        loopback = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise web.HTTPNotFound()
