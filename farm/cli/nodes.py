"""GPU node commands: list the registered nodes, run a worker for a node (or the CPU
queue), run an emulated node."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from farm.cli.common import console, fail, print_json, runtime
from farm.errors import FarmError, InvalidInput


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def nodes(as_json: bool) -> None:
    """List the registered GPU nodes: health, GPU, learned speed (relative to the median
    node; - until it has rendered), queue depth and what each can render (catalogue
    models of a ComfyUI node, WanGP model ids the templates use)."""
    from farm.nodes import listing

    try:
        rt = runtime()
        records = listing(rt.registry, rt.catalog)
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json(records)
        return
    table = Table("node", "kind", "state", "gpu", "speed", "queued", "can render", "url", box=None)
    clouds = [r for r in records if r.get("spend")]
    if clouds:
        table.add_column("cloud: plan, spend today (in all)")
    for r in records:
        state = "[green]up[/]" if r["alive"] else f"[red]down[/] {escape(r['reason'][:40])}"
        row = [
            r["name"],
            r["kind"],
            state,
            r["gpu"],
            f"{r['speed']:g}" if r["throughput"] else "-",
            str(r["queued"]),
            "(not discovered yet)" if r["can_render"] is None else ", ".join(r["can_render"]),
            r["url"],
        ]
        if clouds:
            row.append(_cloud_cell(r))
        table.add_row(*row)
    console.print(table if records else "no nodes registered: start `farm worker --node NAME`")
    if clouds:
        console.print(_burst_line(clouds[0]["burst"]))


def _cloud_cell(record: dict) -> str:
    """A cloud node's plan and spend: ``x4 at 0.0012/s: 1.5 today (12 in all)``."""
    if not record.get("spend"):
        return ""
    plan, spend = record["cloud"], record["spend"]
    return (f"x{plan['concurrency']} at {plan['price_per_second']:g}/s: "
            f"{spend['today']:.4g} today ({spend['total']:.4g} in all)")  # fmt: skip


def _burst_line(burst: dict) -> str:
    """The burst policy, today's cloud spend against its budget, and the scenes' spend."""
    day = burst["budget_day"]
    line = (f"burst {burst['policy']}: cloud spend today ({burst['day']} UTC) "
            f"{burst['today']:.4g}" + (f" of {day:g} (FARM_BURST_BUDGET_DAY)" if day else
                                       ", no day budget"))  # fmt: skip
    if burst["budget_scene"]:
        line += f"; per scene at most {burst['budget_scene']:g} (FARM_BURST_BUDGET_SCENE)"
    if burst["scenes"]:
        line += "; open scenes: " + ", ".join(
            f"{escape(s)} {v:.4g}" for s, v in sorted(burst["scenes"].items())
        )
    return line


@click.command()
@click.option("--node", "node_name", help="GPU node to serve (its URL from FARM_NODES or --url).")
@click.option("--url", help="Node URL when it is not in FARM_NODES (e.g. http://10.0.0.5:8188).")
@click.option(
    "--kind",
    type=click.Choice(["auto", "comfyui", "wan2gp", "comfyv2"]),
    default="auto",
    show_default=True,
    help="Node backend with --url; auto asks the server which it is.",
)
@click.option("--cpu", is_flag=True, help="Serve the CPU queue (assembly, scoring) instead.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="CPU worker processes (default: cores)."
)
@click.option(
    "--name", "cpu_name",
    help="With --cpu: the worker's name (NAME@host; default cpuPID). Give a stable name "
    "so Flower shows one worker across restarts.",
)  # fmt: skip
@click.option("--loglevel", default="INFO", show_default=True)
def worker(
    node_name: str | None,
    url: str | None,
    kind: str,
    cpu: bool,
    concurrency: int | None,
    cpu_name: str | None,
    loglevel: str,
) -> None:
    """Run a Celery worker: one per GPU node queue (--node), or for the CPU queue (--cpu)."""
    from farm.settings import NODE_KINDS, NodeConfig, get_settings, node_name_for
    from farm.studio import catalog_for
    from farm.worker import run_cpu_worker, run_node_worker

    if cpu == bool(node_name or url):
        fail(InvalidInput("give exactly one of --node NAME (or --url URL) or --cpu"))
    if cpu_name and not cpu:
        fail(InvalidInput("--name is for --cpu workers; a node worker is named after its node"))
    try:
        settings = get_settings()
        catalog_for(settings)  # a wrong FARM_CATALOG stops the worker before it takes a task
        if cpu:
            run_cpu_worker(settings, concurrency, loglevel, cpu_name)
            return
        if url:
            scheme, plus, rest = url.partition("+")
            if plus and scheme in NODE_KINDS:  # comfyv2+https://..., as in FARM_NODES
                kind, url = scheme, rest
            elif kind == "auto":
                from farm.backends import detect_kind

                kind = detect_kind(url, settings.http_timeout)
            node = NodeConfig(node_name or node_name_for(url), kind, url.rstrip("/"))
        else:
            node = settings.node(node_name)
        run_node_worker(node, settings, loglevel)
    except FarmError as exc:
        fail(exc)


@click.group()
def emulate() -> None:
    """Run an emulated GPU node (real protocol, synthetic video on the CPU)."""


@emulate.command("comfyui")
@click.option("--port", type=click.IntRange(1, 65535), default=8188, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--profile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Node profile JSON (models, VRAM, speed, costs); see deploy/nodes/.",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/emulator"),
    show_default=True,
    help="Folder for the node's input, output and temp files.",
)
def emulate_comfyui(port: int, host: str, profile: Path, data: Path) -> None:
    """Serve the ComfyUI HTTP + websocket API on HOST:PORT."""
    from farm.emulators.comfyui import serve
    from farm.emulators.profile import load_profile

    try:
        serve(load_profile(profile), host, port, data)
    except FarmError as exc:
        fail(exc)


@emulate.command("wan2gp")
@click.option("--port", type=click.IntRange(1, 65535), default=7866, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--profile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Node profile JSON (WanGP model ids, VRAM, speed, costs); see deploy/nodes/wan-a.json.",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/emulator-wan"),
    show_default=True,
    help="Folder for the node's outputs/ and uploads/.",
)
@click.option(
    "--allow-read-file-system",
    is_flag=True,
    help="Accept file paths in tool arguments (WanGP's --mcp-allow-read-file-system).",
)
@click.option(
    "--memory-profile",
    type=click.IntRange(1, 5),
    default=4,
    show_default=True,
    help="WanGP's --profile N memory profile (lower needs more VRAM).",
)
def emulate_wan2gp(
    port: int,
    host: str,
    profile: Path,
    data: Path,
    allow_read_file_system: bool,
    memory_profile: int,
) -> None:
    """Serve WanGP's MCP server (streamable HTTP at /mcp) on HOST:PORT.

    For WanGP's CLI batch mode, install an emulated wgp.py with
    `python -m farm.emulators.wgp_cli --install FOLDER --profile FILE`."""
    from farm.emulators.profile import load_profile
    from farm.emulators.wan2gp import serve

    try:
        serve(load_profile(profile), host, port, data, allow_read_file_system, memory_profile)
    except FarmError as exc:
        fail(exc)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def templates(as_json: bool) -> None:
    """List every template: where it is defined (built-in or the studio catalogue,
    FARM_CATALOG), how each tier renders each kind of shot, and which live nodes can render
    it, or what each node lacks."""
    from farm.templates import report

    try:
        rt = runtime()
        found = report(rt.catalog, rt.registry.infos())
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json(found)
        return
    table = Table("template", "tier", "shots", "renders with", "nodes", box=None)
    for t in found:
        for tier, routes in t["tiers"].items():
            for r in routes:
                models = ", ".join(r["models"]) or "no model"
                lacks = "; ".join(f"{n} {why}" for n, why in r["lacks"].items())
                able = escape(", ".join(r["nodes"])) if r["nodes"] else "[red]none[/]"
                table.add_row(t["name"], tier, r["kind"], escape(f"{r['workflow']} ({models})"),
                              able + (f" [dim](not: {escape(lacks)})[/]" if lacks else ""))  # fmt: skip
        table.add_row(f"  [dim]{escape(t['source'])}[/]", "", "", escape(t["description"]), "")
    console.print(table)


COMMANDS = (nodes, worker, emulate, templates)
