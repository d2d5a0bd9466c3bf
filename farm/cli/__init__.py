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


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]}, epilog=__doc__.split("\n\n", 1)[1]
)
@click.version_option(package_name="farm")
def cli() -> None:
    """farm: render scenes of AI video shots on ComfyUI / WanGP GPU nodes through Celery.

    Settings come from FARM_* environment variables (see deploy/env.example).
    """


for module in (scenes, services, tools, nodes):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="farm")
