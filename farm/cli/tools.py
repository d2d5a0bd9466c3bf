"""Tools: score any clip, show or clear the render cache, and talk to one ComfyUI or
WanGP node directly."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from farm.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    console,
    err_console,
    fail,
    print_json,
    runtime,
)
from farm.errors import ConfigError, FarmError, InvalidInput


def _canvas(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    w, sep, h = value.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT; use e.g. 832x480")
    return int(w), int(h)


@click.command()
@click.argument("clip", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--trajectories", "tracks_file", type=click.Path(dir_okay=False, path_type=Path),
    help='JSON file of tracks the clip should follow: [[{"x": .., "y": ..}, ...], ...] '
    '(or a shot object with "trajectories"), in pixels of --canvas.',
)  # fmt: skip
@click.option(
    "--canvas", callback=_canvas, metavar="WxH",
    help="Size the trajectories were drawn at (default: the clip's own size).",
)  # fmt: skip
@click.option(
    "--template", help="Check the scores against this template's quality gate thresholds."
)
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")
def score(
    clip: Path,
    tracks_file: Path | None,
    canvas: tuple[int, int] | None,
    template: str | None,
    as_json: bool,
) -> None:
    """Score any video clip: motion smoothness, flicker, consistency and cuts, dynamic
    degree, sharpness and, with --trajectories, trajectory adherence. Exit 1 when a
    --template threshold is missed."""
    from farm.gate import failures, load_gate
    from farm.jsonfile import read_json
    from farm.metrics import score_clip
    from farm.settings import get_settings
    from farm.trajectory import parse_tracks

    try:
        tracks = None
        if tracks_file is not None:
            raw = read_json(tracks_file, "trajectories file", InvalidInput)
            if isinstance(raw, dict) and "trajectories" in raw:
                raw = raw["trajectories"]
            tracks = parse_tracks(raw, f"{tracks_file}")
            if not tracks:
                raise InvalidInput(f"{tracks_file}: no tracks; give at least one list of points")
        minimum: dict[str, float] = {}
        if template is not None:
            settings = get_settings()
            config = load_gate(settings.gate_file)
            from farm.studio import catalog_for

            names = {"default", *config.templates, *catalog_for(settings).templates}
            if template not in names:
                known = ", ".join(sorted(names))
                raise InvalidInput(f"--template {template!r} has no thresholds (known: {known})")
            minimum = dict(config.rule(template, settings.gate_takes).minimum)
        result = score_clip(clip, tracks, canvas)
    except FarmError as exc:
        fail(exc)
    missed = failures(result["scores"], minimum, result.get("cuts") or ())
    if as_json:
        print_json({**result, "thresholds": minimum, "failed": missed})
    else:
        _print_scores(clip, result, minimum, missed)
    sys.exit(EXIT_FAILED if missed else EXIT_OK)


def _print_scores(clip: Path, result: dict[str, Any], minimum: dict[str, float], missed) -> None:
    console.print(f"[bold]{escape(str(clip))}[/]  {result['width']}x{result['height']}, "
                  f"{result['frames']} frames at {result['fps']:g} fps, "
                  f"scored in {result['seconds']:.2f} s")  # fmt: skip
    table = Table("metric", "score", "min", "", box=None)
    for name, value in result["scores"].items():
        lo = minimum.get(name)
        verdict = "" if lo is None else ("[green]ok[/]" if value >= lo else "[red]below[/]")
        table.add_row(name, f"{value:.3f}", "" if lo is None else f"{lo:.2f}", verdict)
    console.print(table)
    raw = result["raw"]
    adherence = raw.get("trajectory_adherence") or {}
    if "objmc_px" in adherence:
        console.print(f"trajectory: ObjMC {adherence['objmc_px']:.1f} px "
                      f"({adherence['objmc_norm']:.3f} of the diagonal), "
                      f"lost {adherence['lost_fraction']:.0%} of frames")  # fmt: skip
    console.print(f"dynamic (VBench rule): {'yes' if raw['dynamic_degree']['dynamic'] else 'no'}")
    cuts = result.get("cuts") or []
    console.print(f"cuts before frames: {', '.join(map(str, cuts))} (each halves "
                  "visual_consistency)" if cuts else "no cuts")  # fmt: skip
    if missed:
        console.print(f"[red]below the thresholds:[/] {', '.join(missed)}")


@click.command()
@click.option("--clear", is_flag=True, help="Forget every entry and delete the cached clips.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cache(clear: bool, as_json: bool) -> None:
    """Show (or clear) the render cache: clips kept by request, served instead of
    rendering the same request again."""
    from farm.cache import RenderCache

    try:
        rc = RenderCache(runtime())
        removed = rc.clear() if clear else None
        data = {**rc.stats(), **({"removed": removed} if clear else {})}
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json(data)
    elif clear:
        console.print(f"render cache cleared: {removed} entries removed")
    else:
        console.print(f"render cache: {data['entries']} entries, "
                      f"{data['bytes'] / 1e6:.1f} MB in {data['folder']}")  # fmt: skip


def stderr_progress():
    """A progress callback for `comfy run` / `wan run`: one stderr line per 10 %."""
    shown = [-1.0]

    def progress(fraction: float, message: str = "", preview: bytes | None = None) -> None:
        if preview is None and fraction - shown[0] >= 0.1:
            shown[0] = fraction
            err_console.print(f"{fraction:4.0%} {message}", highlight=False)

    return progress


def finish_run(summary: dict[str, Any], label: str, as_json: bool) -> None:
    """Print a `comfy run` / `wan run` summary and exit with its code."""
    if as_json:
        print_json(summary)
    else:
        colour = "green" if summary["status"] == "success" else "red"
        console.print(
            f"[{colour}]{summary['status']}[/] {label} in {summary['seconds']:.1f}s; events: "
            + ", ".join(f"{k} {v}" for k, v in summary["events"].items())
        )
        for item in summary["outputs"]:
            console.print(f"  {item['path']} ({item['bytes']} bytes)")
        if summary["error"]:
            err_console.print(
                f"[red]error:[/] {escape(summary['error'])}", highlight=False, soft_wrap=True
            )
    if summary["status"] != "success":
        unreachable = summary["error_kind"] in {"node_unavailable", "timeout"}
        sys.exit(EXIT_UNAVAILABLE if unreachable else EXIT_FAILED)


@click.group()
def comfy() -> None:
    """Talk to one ComfyUI server directly (check a node, run any workflow)."""


@comfy.command("run")
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--url", required=True, help="ComfyUI server, e.g. http://10.0.0.5:8188 (or .../api)."
)
@click.option(
    "--set", "sets", multiple=True, metavar="TITLE.input=VALUE",
    help="Set an input of the node with that title (or id); VALUE is JSON or text. Repeatable.",
)  # fmt: skip
@click.option(
    "--upload", "uploads", multiple=True, metavar="[TITLE.input=]FILE",
    help="Upload an input image first; set that input, or every image input naming FILE.",
)  # fmt: skip
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="Folder for the downloaded outputs.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def comfy_run(
    workflow: Path, url: str, sets: tuple[str, ...], uploads: tuple[str, ...], out: Path,
    as_json: bool,
) -> None:  # fmt: skip
    """Run WORKFLOW (API or editor format) on a ComfyUI server and download its outputs.

    Exits 0 when the job succeeds, 1 when the server rejects or fails it (its error is
    printed), 2 for bad input, 3 when the server cannot be reached.
    """
    from farm.comfy_run import run_workflow
    from farm.settings import get_settings

    settings = get_settings()
    progress = stderr_progress()
    try:
        summary = run_workflow(
            url.rstrip("/"), workflow, out, sets=sets, uploads=uploads,
            http_timeout=settings.http_timeout, idle_timeout=settings.node_idle_timeout,
            max_bytes=settings.max_download_bytes, progress=progress,
        )  # fmt: skip
    except FarmError as exc:
        fail(exc)
    finish_run(summary, f"prompt {summary['prompt_id']}", as_json)


@comfy.command("info")
@click.option("--url", required=True, help="ComfyUI server, e.g. http://10.0.0.5:8188.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def comfy_info(url: str, as_json: bool) -> None:
    """Discover a ComfyUI server: version, GPU, models and the farm workflows it can run."""
    from farm.backends.comfyui import ComfyUIBackend
    from farm.errors import NodeTimeout, NodeUnavailable
    from farm.settings import get_settings

    try:
        info = ComfyUIBackend(url, get_settings()).describe()
    except (NodeUnavailable, NodeTimeout) as exc:
        fail(ConfigError(str(exc)))
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json(info)
        return
    vram = info["vram_total"] / 2**30
    console.print(f"ComfyUI {info['version'] or '?'} on {info['gpu'] or '?'} ({vram:.0f} GiB), "
                  f"{info['classes']} node classes")  # fmt: skip
    for folder, files in info["models"].items():
        console.print(f"  {folder}: {', '.join(files)}", highlight=False)
    for name, cap in info["workflows"].items():
        if cap["ok"]:
            usable = ", ".join(cap["catalog"]) or "no catalogue model"
            console.print(f"  [green]can run[/] {name} ({usable}) with models: "
                          f"{escape(', '.join(cap['models']) or '-')}")  # fmt: skip
        else:
            console.print(f"  [red]cannot run[/] {name}: {escape('; '.join(cap['missing']))}")


@click.group()
def wan() -> None:
    """Talk to one WanGP node directly (run any WanGP settings file)."""


@wan.command("run")
@click.argument("settings_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--url", required=True,
    help="WanGP MCP server (http://host:7866) or WanGP folder in CLI mode (file:///opt/Wan2GP).",
)  # fmt: skip
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="Folder for the outputs.",
)  # fmt: skip
@click.option(
    "--download", is_flag=True,
    help="Fetch outputs through the node's gallery even when their path exists here.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def wan_run(settings_file: Path, url: str, out: Path, download: bool, as_json: bool) -> None:
    """Run SETTINGS_FILE (a WanGP settings object or a list of them) on a WanGP node.

    Exits 0 when the job succeeds, 1 when the node rejects or fails it (its error is
    printed), 2 for bad input, 3 when the node cannot be reached.
    """
    from farm.settings import get_settings
    from farm.wan_run import run_settings

    progress = stderr_progress()
    try:
        summary = run_settings(
            url.rstrip("/"), settings_file, out, get_settings(),
            shared=False if download else None, progress=progress,
        )  # fmt: skip
    except FarmError as exc:
        fail(exc)
    finish_run(summary, f"job {summary['job_id']}", as_json)


COMMANDS = (score, cache, comfy, wan)
