"""What every ``farm`` command shares: exit codes, consoles, errors, JSON, the runtime."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from farm.errors import CatalogError, ConfigError, FarmError, InvalidInput

if TYPE_CHECKING:
    from farm.runtime import Runtime

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE = 0, 1, 2, 3

console = Console()
err_console = Console(stderr=True)


def fail(exc: FarmError) -> NoReturn:
    """Print a farm error the way a user can act on it, and exit with its code."""
    code = (
        EXIT_INVALID
        if isinstance(exc, InvalidInput | CatalogError)
        else EXIT_UNAVAILABLE
        if isinstance(exc, ConfigError)
        else EXIT_FAILED
    )
    err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    sys.exit(code)


#: why this process uses the default Redis (no FARM_REDIS_URL, no running farm), if it does
_fallback: str | None = None


def point_at_farm() -> None:
    """Without ``FARM_REDIS_URL``, point this process at the farm ``farm up`` runs here
    (:mod:`farm.running`); when none runs, remember why the default Redis is used."""
    global _fallback
    if os.environ.get("FARM_REDIS_URL"):
        return
    from farm.running import pointer

    env, why = pointer()
    os.environ.update(env)
    _fallback = why or None


def runtime(need_farm: bool = True) -> Runtime:
    """This process's runtime, once Redis answers (else a :class:`ConfigError`). With
    ``need_farm``, a default Redis this process fell back to must hold a farm: an empty
    one is never answered from as if it were the farm."""
    from farm.runtime import get_runtime
    from farm.settings import get_settings
    from farm.state import connect

    settings = get_settings()
    if _fallback is None:
        connect(settings)  # one clear line when Redis is unreachable
        return get_runtime()
    from farm.running import holds_farm, no_farm

    try:
        client = connect(settings)
    except ConfigError as exc:
        raise no_farm(settings.redis_url, _fallback, str(exc)) from None
    if need_farm and not holds_farm(client, settings.keys):
        raise no_farm(settings.redis_url, _fallback, "it holds no farm (no nodes, no scenes)")
    return get_runtime()


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))
