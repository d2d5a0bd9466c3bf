"""The ``farm`` command line: parse, call one function, print.

Exit codes, the same for every command:


  0  success
  1  the work failed: a watched scene ended failed or partial (or was not over at
     --timeout), a submission was refused
  2  invalid input: a scene or config file, a flag, an unknown scene or shot id, a
     submission rejected as invalid
  3  the farm is unavailable or misconfigured: Redis unreachable or refusing the login,
     no capable node, a missing tool, no ingest answered, `farm up` not running

Every command that reads something takes --json (machine-readable output on stdout;
progress and errors go to stderr).
"""

from __future__ import annotations

import click

from farm.cli import nodes, scenes, services, tools
from farm.cli.common import point_at_farm

#: commands that find their farm from a config file themselves (farm.running)
FROM_CONFIG = frozenset({"up", "down", "ps", "env", "demo"})


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]}, epilog=__doc__.split("\n\n", 1)[1]
)
@click.version_option(package_name="farm")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """farm: render scenes of AI video shots on ComfyUI / WanGP GPU nodes through Celery.

    Settings come from FARM_* environment variables (see deploy/env.example). Without
    FARM_REDIS_URL, a command talks to the farm `farm up` runs on this machine (see
    docs/operations.md); `eval $(farm env)` points a shell at it.
    """
    if ctx.invoked_subcommand not in FROM_CONFIG:
        point_at_farm()


for module in (scenes, services, tools, nodes):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="farm")
