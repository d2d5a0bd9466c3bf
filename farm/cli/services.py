"""Farm service commands: a whole farm from a config (up, down, ps, env) or for a demo,
and its long-running services (ingest, Flower, the metrics exporter)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from farm.cli.common import EXIT_UNAVAILABLE, console, err_console, fail, print_json, runtime
from farm.errors import FarmError


@click.command()
@click.option(
    "--name", help="Consumer name in the group (default: HOSTNAME-PID); unique per process."
)
@click.option("--once", is_flag=True, help="Decide what is waiting now, then exit.")
def ingest(name: str | None, once: bool) -> None:
    """Serve submissions: read the Redis stream PREFIX:submissions (consumer group
    ingest), validate each, enqueue its scene exactly once and write its status
    (PREFIX:submission:ID). Stops cleanly on SIGTERM or Ctrl-C. See docs/submissions.md."""
    import logging

    from farm.ingest import Ingest

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        rt = runtime(need_farm=False)
        rt.catalog  # noqa: B018 -- a wrong FARM_CATALOG stops ingest before it reads a submission
        Ingest(rt, name).run(once=once)
    except FarmError as exc:
        fail(exc)


def _up_config(path: Path | None):
    """The config `farm up` starts from: PATH, else ./farm.toml, else deploy/farm.toml."""
    from farm.up import default_config, load_config

    return load_config(path or default_config())


def _running(path: Path | None):
    """The farm a command means (farm.running) and its state (None: it is down)."""
    from farm.running import locate

    return locate(path)


CONFIG_ARG = click.argument(
    "config", required=False, type=click.Path(dir_okay=False, path_type=Path)
)


@click.command()
@CONFIG_ARG
@click.option("--foreground", is_flag=True, help="Supervise in this terminal (Ctrl-C stops).")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=120, show_default=True,
    help="Seconds to wait for every service to be up.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the started services as JSON.")
def up(config: Path | None, foreground: bool, timeout: float, as_json: bool) -> None:
    """Start a long-running farm from CONFIG (default ./farm.toml, else deploy/farm.toml):
    Redis, emulated nodes, a worker per node queue, CPU workers, ingest, Flower, farm web
    and the metrics exporter, each restarted if it dies; logs in ROOT/logs. `farm down` stops it."""
    from farm import up as upmod

    try:
        cfg = _up_config(config)
        if foreground:
            upmod.run_foreground(cfg)
            return
        state = upmod.up(cfg, timeout)
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json(state)
        return
    _print_services(state)
    env = state["env"]
    console.print(f"\n[green]farm up[/] under {cfg.root}: Redis {escape(env['FARM_REDIS_URL'])}")
    if cfg.flower:
        login = cfg.root / "flower" / "login"
        who = f"login in {login}" if login.exists() else "login from FARM_FLOWER_AUTH"
        console.print(f"Flower: http://{cfg.flower['address']}:{cfg.flower['port']} ({who})")
    if cfg.web:
        login = cfg.root / "web" / "login"
        who = f"login in {login}" if login.exists() else "login from FARM_WEB_AUTH"
        console.print(f"farm web: http://{cfg.web['address']}:{cfg.web['port']} ({who})")
    if cfg.exporter:
        console.print(f"metrics: http://{cfg.exporter['address']}:{cfg.exporter['port']}/metrics")
    hint = f"farm env {config}" if config else "farm env"
    console.print(f"logs: {cfg.logs}\npoint this shell at it: eval $({hint}); stop it: farm down")


def _print_services(state: dict[str, Any]) -> None:
    table = Table("service", "pid", "state", "restarts", "log", box=None)
    for name, svc in state["services"].items():
        running = "[green]running[/]" if svc["running"] else "[red]restarting[/]"
        table.add_row(name, str(svc["pid"]), running, str(svc["restarts"]), svc["log"])
    console.print(table)


@click.command()
@CONFIG_ARG
@click.option(
    "--timeout", type=click.FloatRange(min=1),
    help="Seconds workers get to finish their renders (default: the config's stop_timeout).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the stopped services as JSON.")
def down(config: Path | None, timeout: float | None, as_json: bool) -> None:
    """Stop the farm `farm up CONFIG` started (only the processes it started). Without
    CONFIG: ./farm.toml, else the farm `farm up` runs on this machine."""
    from farm import up as upmod

    try:
        cfg, _ = _running(config)
        stopped = upmod.down(cfg, timeout)
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json({"root": str(cfg.root), "stopped": stopped})
    elif stopped:
        console.print(f"farm down: stopped {', '.join(stopped)}")
    else:
        console.print(f"nothing to stop: no `farm up` is running under {cfg.root}")


@click.command()
@CONFIG_ARG
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ps(config: Path | None, as_json: bool) -> None:
    """Show the processes of the farm `farm up CONFIG` runs: pid, state, restarts, log.
    Without CONFIG: ./farm.toml, else the farm `farm up` runs on this machine. Exit 3 when
    it is not up."""
    try:
        cfg, state = _running(config)
    except FarmError as exc:
        fail(exc)
    if state is None:
        if as_json:
            print_json({"root": str(cfg.root), "phase": "down", "services": {}})
        err_console.print(f"no `farm up` is running under {cfg.root}")
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        print_json(state)
    else:
        _print_services(state)


@click.command("env")
@CONFIG_ARG
@click.option("--json", "as_json", is_flag=True, help="Print the variables as JSON.")
def env_cmd(config: Path | None, as_json: bool) -> None:
    """Print `export FARM_...` lines that point this shell's farm commands at the running
    farm of CONFIG (without CONFIG: ./farm.toml, else the farm `farm up` runs on this
    machine): `eval $(farm env)`. Exit 3, printing nothing on stdout, when it is down."""
    import shlex

    from farm.up import pointer_env

    try:
        cfg, state = _running(config)
    except FarmError as exc:
        fail(exc)
    if state is None:
        err_console.print(f"[red]error:[/] no `farm up` is running for {escape(str(cfg.path))}"
                          f" (root {escape(str(cfg.root))}): start it with `farm up "
                          f"{escape(str(cfg.path))}`", highlight=False, soft_wrap=True)  # fmt: skip
        sys.exit(EXIT_UNAVAILABLE)
    env = pointer_env(state["env"])
    if as_json:
        print_json(env)
        return
    for key, value in env.items():
        click.echo(f"export {key}={shlex.quote(value)}")


@click.command()
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option(
    "--no-auth", is_flag=True,
    help="Run without a login (only on a trusted network): anyone who reaches it can "
    "revoke tasks and shut workers down.",
)  # fmt: skip
def flower(address: str, port: int, no_auth: bool) -> None:
    """Run Flower, the Celery dashboard, for this farm: basic auth from FARM_FLOWER_AUTH
    (required unless --no-auth), history kept in FARM_FLOWER_DB, render-sized runtime
    histograms, and Flower's own Prometheus figures at /metrics."""
    from farm.flower import run_flower
    from farm.settings import get_settings

    try:
        run_flower(get_settings(), address, port, no_auth)
    except FarmError as exc:
        fail(exc)


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65535),
    help="Port to listen on (default: FARM_WEB_PORT, 8088).",
)  # fmt: skip
@click.option(
    "--no-auth", is_flag=True,
    help="Run without a login (only on a trusted network): anyone who reaches it can "
    "cancel scenes.",
)  # fmt: skip
def web_cmd(host: str, port: int | None, no_auth: bool) -> None:
    """Serve the farm in a browser: scenes, shots with live previews and clips, nodes, and
    cancel / pause / resume / retry / priority. Login from FARM_WEB_AUTH (required
    unless --no-auth); see docs/web.md."""
    from farm.settings import get_settings
    from farm.web.app import serve

    try:
        serve(host, port or get_settings().web_port, no_auth)
    except FarmError as exc:
        fail(exc)


@click.command()
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
def exporter(address: str, port: int) -> None:
    """Serve the farm's Prometheus metrics at http://ADDRESS:PORT/metrics (shots by state,
    queue depth per node, render seconds per model, model loads, fallbacks, gate
    rejections, node up/down); see docs/monitoring.md."""
    from farm.settings import get_settings
    from farm.telemetry import serve

    try:
        serve(get_settings(), address, port)
    except FarmError as exc:
        fail(exc)


@click.command()
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="Folder for the demo's Redis data, logs and outputs (wiped first).",
)
@click.option(
    "--scene",
    "scene_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Scene to render instead of the bundled example.",
)
@click.option(
    "--quality",
    type=click.Choice(["preview", "final", "preview_then_final"]),
    help="Override the scene's quality.",
)
def demo(root: Path, scene_file: Path | None, quality: str | None) -> None:
    """Start a whole farm here (Redis, 3 emulated GPU nodes, workers), render the example
    scene with live progress, print where the outputs are, and stop it all."""
    from farm.demo import DEMO_SCENE, run_demo

    try:
        sys.exit(run_demo(root.resolve(), console, scene_file or DEMO_SCENE, quality))
    except FarmError as exc:
        fail(exc)


COMMANDS = (ingest, up, down, ps, env_cmd, flower, web_cmd, exporter, demo)
