"""What every ``farm`` command shares: exit codes, consoles, errors, JSON, the runtime."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from farm.errors import ConfigError, FarmError, InvalidInput

if TYPE_CHECKING:
    from farm.runtime import Runtime

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE = 0, 1, 2, 3

console = Console()
err_console = Console(stderr=True)


def fail(exc: FarmError) -> NoReturn:
    """Print a farm error the way a user can act on it, and exit with its code."""
    code = (
        EXIT_INVALID
        if isinstance(exc, InvalidInput)
        else EXIT_UNAVAILABLE
        if isinstance(exc, ConfigError)
        else EXIT_FAILED
    )
    err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def runtime() -> Runtime:
    """This process's runtime, once Redis answers (else a :class:`ConfigError`)."""
    from farm.runtime import get_runtime
    from farm.settings import get_settings
    from farm.state import connect

    connect(get_settings())  # one clear line when Redis is unreachable
    return get_runtime()


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))
