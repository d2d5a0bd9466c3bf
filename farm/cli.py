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

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from farm.errors import ConfigError, FarmError, InvalidInput

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


def runtime():
    from farm.runtime import get_runtime
    from farm.settings import get_settings
    from farm.state import connect

    connect(get_settings())  # one clear line when Redis is unreachable
    return get_runtime()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]}, epilog=__doc__.split("\n\n", 1)[1]
)
@click.version_option(package_name="farm")
def cli() -> None:
    """farm: render scenes of AI video shots on ComfyUI / WanGP GPU nodes through Celery.

    Settings come from FARM_* environment variables (see deploy/env.example).
    """


@cli.command()
@click.argument("scene_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(scene_file: Path, as_json: bool) -> None:
    """Check a scene file against the scene schema without submitting it."""
    from farm.scene import load_scene

    try:
        scene = load_scene(scene_file)
    except InvalidInput as exc:
        if as_json:
            print_json(
                {"valid": False, "error": str(exc).splitlines()[0], "problems": exc.problems}
            )
            sys.exit(EXIT_INVALID)
        fail(exc)
    if as_json:
        print_json({"valid": True, "scene": scene.to_dict()})
    else:
        console.print(f"[green]valid[/]: scene {scene.id} with {len(scene.shots)} shots")


@cli.command()
@click.argument("scene_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--quality",
    type=click.Choice(["preview", "final", "preview_then_final"]),
    help="Override the scene's quality.",
)
@click.option(
    "--watch", "follow", is_flag=True, help="Show live progress until the scene finishes."
)
@click.option("--replace", is_flag=True, help="Render again a scene id that already finished.")
@click.option(
    "--force",
    is_flag=True,
    help="Render every shot even when the same request is in the render cache.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the placed jobs (or final status with --watch) as JSON.",
)
def enqueue(
    scene_file: Path, quality: str | None, follow: bool, replace: bool, force: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Validate SCENE_FILE, place its shots on GPU nodes and start rendering it. A shot
    whose request was rendered before is served from the render cache (see --force)."""
    from farm.scene import load_scene
    from farm.submit import enqueue as submit

    try:
        scene = load_scene(scene_file)
        rt = runtime()
        jobs = submit(scene, rt, quality, replace=replace, force=force)
    except FarmError as exc:
        fail(exc)
    if not follow:
        if as_json:
            print_json({"id": scene.id, "jobs": [j.to_dict() for j in jobs]})
        else:
            cached = {s["id"] for s in rt.state.shots(scene.id) if s.get("cache_hit")}
            where = {j.shot_id: j.node or ("cache" if j.shot_id in cached else "waiting")
                     for j in jobs}  # fmt: skip
            console.print(f"queued scene [bold]{scene.id}[/]: "
                          + ", ".join(f"{k}→{v}" for k, v in where.items()))  # fmt: skip
        return
    from farm.watch import watch

    status = watch(rt.state, scene.id, err_console if as_json else console)
    if as_json:
        print_json(status)
    sys.exit(EXIT_OK if status["state"] == "done" else EXIT_FAILED)


@cli.command()
@click.argument("scene_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--id", "submission_id",
    help="Submission id (default: the scene id and a random suffix). The same id sent "
    "again is a duplicate: it gets the first one's answer and renders nothing.",
)  # fmt: skip
@click.option("--replace", is_flag=True, help="Replace a finished scene with the same id.")
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
    help="Seconds to wait for `farm ingest` to decide.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the submission's status as JSON.")
def submit(
    scene_file: Path, submission_id: str | None, replace: bool, timeout: float, as_json: bool
) -> None:
    """Send SCENE_FILE and its start images as one submission on the Redis stream, and
    wait for `farm ingest` to accept it (exit 0) or reject it: exit 2 invalid (every
    error is printed), 1 refused by the farm or an ingest error, 3 no answer in time."""
    from farm import ingest as sub
    from farm.settings import get_settings
    from farm.state import connect

    try:
        settings = get_settings()
        fields = sub.pack_submission(scene_file, submission_id, replace)
        if len(fields["body"]) > settings.submission_max_bytes:
            raise InvalidInput(
                f"the submission is {len(fields['body'])} bytes, over the limit of "
                f"{settings.submission_max_bytes} (FARM_SUBMISSION_MAX_BYTES); use smaller "
                "start images or split the scene"
            )
        client = connect(settings)
        message = sub.send_submission(client, settings, fields)
    except FarmError as exc:
        fail(exc)
    sid = fields["submission"]
    status = sub.wait_status(client, settings, sid, timeout)
    if status is None:
        if as_json:
            print_json({"submission": sid, "state": "waiting", "message": message})
        why = ("`farm ingest` is running but busy" if sub.ingest_running(client, settings)
               else "no `farm ingest` is reading it: start one")  # fmt: skip
        err_console.print(
            f"[red]error:[/] submission {sid} is on {sub.stream_key(settings)} (message "
            f"{message}) but had no answer within {timeout:g}s; {why}. It is decided when "
            "an ingest reads it.", highlight=False, soft_wrap=True,
        )  # fmt: skip
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        print_json(status)
    elif status["message"] != message:
        err_console.print(f"submission {sid} was already decided (message "
                          f"{status['message']}); this one is a duplicate", highlight=False)  # fmt: skip
    if status["state"] == "accepted":
        if not as_json:
            console.print(f"[green]accepted[/] submission {sid} → scene [bold]{status['scene']}"
                          f"[/]; follow it with `farm status {status['scene']}`")  # fmt: skip
        sys.exit(EXIT_OK)
    if not as_json:
        err_console.print(f"[red]rejected[/] submission {sid} ({status['reason']}):",
                          highlight=False)  # fmt: skip
        for error in status["errors"]:
            err_console.print(f"  - {escape(error)}", highlight=False, soft_wrap=True)
    sys.exit(EXIT_INVALID if status["reason"] == "invalid" else EXIT_FAILED)


@cli.command()
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
        Ingest(runtime(), name).run(once=once)
    except FarmError as exc:
        fail(exc)


@cli.command()
@click.argument("scene_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(scene_id: str | None, as_json: bool) -> None:
    """Show one scene (shots, nodes, outputs, metrics) or list recent scenes."""
    try:
        rt = runtime()
        data: Any = rt.state.status(scene_id) if scene_id else rt.state.list_scenes()
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json(data)
    elif scene_id:
        from farm.watch import render_status

        console.print(render_status(data))
        for name, path in data["outputs"].items():
            console.print(f"{name}: {path}")
    else:
        table = Table("scene", "state", "quality", "shots", "title", box=None)
        for s in data:
            table.add_row(s["id"], s["state"], s["quality"], str(s["shots"]), s["title"])
        console.print(table if data else "no scenes yet: submit one with `farm enqueue SCENE.json`")


def _dispatcher():
    from farm.celery_app import app
    from farm.dispatch import Dispatcher

    rt = runtime()
    return rt, Dispatcher(rt, app)


@cli.command()
@click.argument("scene_id")
@click.option("--shot", "shot_id", help="Cancel only this shot (the scene goes on).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cancel(scene_id: str, shot_id: str | None, as_json: bool) -> None:
    """Cancel a scene or one of its shots: waiting shots are dropped, running renders are
    interrupted on their node (ComfyUI interrupt, WanGP cancel) within about a second."""
    try:
        rt, d = _dispatcher()
        rt.state.scene(scene_id)  # exit 2 for an unknown scene
        counts = d.cancel(scene_id, shot_id)
    except FarmError as exc:
        fail(exc)
    what = f"shot {shot_id} of scene {scene_id}" if shot_id else f"scene {scene_id}"
    if as_json:
        print_json({"scene": scene_id, "shot": shot_id, **counts})
    else:
        console.print(f"cancelled {what}: {counts['dropped']} waiting dropped, "
                      f"{counts['interrupting']} running or queued being stopped, "
                      f"{counts['over']} already over")  # fmt: skip


@cli.command()
@click.argument("scene_id")
@click.option(
    "--timeout", type=click.FloatRange(min=0),
    help="Stop watching after this many seconds (exit 1 if the scene is not over).",
)  # fmt: skip
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print the final status as JSON on stdout (the live view goes to stderr).",
)  # fmt: skip
def watch(scene_id: str, timeout: float | None, as_json: bool) -> None:
    """Follow a scene live: a progress bar per shot with its state, node, attempt and
    quality-gate decision, until the scene is done (exit 0), failed or partial (exit 1)."""
    from farm.state import TERMINAL_SCENE
    from farm.watch import watch as follow

    try:
        rt = runtime()
        rt.state.scene(scene_id)  # exit 2 for an unknown scene
        status = follow(rt.state, scene_id, err_console if as_json else console,
                        timeout=timeout)  # fmt: skip
    except FarmError as exc:
        fail(exc)
    except KeyboardInterrupt:
        err_console.print(f"stopped watching; scene {scene_id} goes on (`farm watch {scene_id}`)")
        sys.exit(130)
    if as_json:
        print_json(status)
    elif status["state"] not in TERMINAL_SCENE:
        err_console.print(f"scene {scene_id} is still {status['state']} after {timeout:g}s")
    else:
        for name, path in status["outputs"].items():
            console.print(f"{name}: {path}")
    sys.exit(EXIT_OK if status["state"] == "done" else EXIT_FAILED)


@cli.command()
@click.argument("scene_id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def pause(scene_id: str, as_json: bool) -> None:
    """Stop starting shots of a scene (running renders finish); `farm resume` goes on."""
    try:
        rt, d = _dispatcher()
        rt.state.scene(scene_id)
        parked = d.pause(scene_id)
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json({"scene": scene_id, "paused": True, "held": parked})
    else:
        console.print(f"paused scene {scene_id}: {parked} waiting shots held")


@cli.command()
@click.argument("scene_id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def resume(scene_id: str, as_json: bool) -> None:
    """Go on with a paused scene."""
    try:
        rt, d = _dispatcher()
        rt.state.scene(scene_id)
        back = d.resume(scene_id)
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json({"scene": scene_id, "paused": False, "requeued": back})
    else:
        console.print(f"resumed scene {scene_id}: {back} shots back in the backlog")


@cli.command()
@click.argument("scene_id")
@click.option(
    "--shot", "shot_ids", multiple=True,
    help="Shot to render again (repeatable; default: every failed or cancelled shot).",
)  # fmt: skip
@click.option("--watch", "follow", is_flag=True, help="Show live progress until it finishes.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def retry(scene_id: str, shot_ids: tuple[str, ...], follow: bool, as_json: bool) -> None:
    """Render shots of a finished scene again (never from the render cache), then assemble
    and score the scene once more."""
    from farm.submit import retry as retry_shots

    try:
        rt = runtime()
        ids = retry_shots(rt, scene_id, list(shot_ids))
    except FarmError as exc:
        fail(exc)
    if not follow:
        if as_json:
            print_json({"scene": scene_id, "shots": ids})
        else:
            console.print(f"retrying scene {scene_id}: {', '.join(ids)}")
        return
    from farm.watch import watch

    status = watch(rt.state, scene_id, err_console if as_json else console)
    if as_json:
        print_json(status)
    sys.exit(EXIT_OK if status["state"] == "done" else EXIT_FAILED)


def _canvas(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    w, sep, h = value.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT; use e.g. 832x480")
    return int(w), int(h)


@cli.command()
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
            from farm.catalog import load_catalog

            names = {"default", *config.templates, *load_catalog().templates}
            if template not in names:
                known = ", ".join(sorted(names))
                raise InvalidInput(f"--template {template!r} has no thresholds (known: {known})")
            minimum = dict(config.rule(template, settings.gate_takes).minimum)
        result = score_clip(clip, tracks, canvas)
    except FarmError as exc:
        fail(exc)
    missed = failures(result["scores"], minimum)
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
    console.print(f"cuts before frames: {', '.join(map(str, cuts))}" if cuts else "no cuts")
    if missed:
        console.print(f"[red]below the thresholds:[/] {', '.join(missed)}")


@cli.command()
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def nodes(as_json: bool) -> None:
    """List the registered GPU nodes: health, GPU, learned speed (relative to the median
    node; - until it has rendered), models and queue depth."""
    from farm.nodes import relative_speeds

    try:
        records = runtime().registry.records()
    except FarmError as exc:
        fail(exc)
    for r, speed in zip(records, relative_speeds(records), strict=True):
        r["speed"] = speed
    if as_json:
        print_json(records)
        return
    table = Table("node", "kind", "state", "gpu", "speed", "queued", "can render", "url", box=None)
    for r in records:
        state = "[green]up[/]" if r["alive"] else f"[red]down[/] {escape(r['reason'][:40])}"
        flows = r["workflows"] or {}
        usable = sorted({m for cap in flows.values() if cap.get("ok") for m in cap["catalog"]})
        table.add_row(
            r["name"],
            r["kind"],
            state,
            r["gpu"],
            f"{r['speed']:g}" if r["throughput"] else "-",
            str(r["queued"]),
            ", ".join(usable) if r["workflows"] is not None else "(not discovered yet)",
            r["url"],
        )
    console.print(table if records else "no nodes registered: start `farm worker --node NAME`")


@cli.command()
@click.option("--node", "node_name", help="GPU node to serve (its URL from FARM_NODES or --url).")
@click.option("--url", help="Node URL when it is not in FARM_NODES (e.g. http://10.0.0.5:8188).")
@click.option(
    "--kind",
    type=click.Choice(["auto", "comfyui", "wan2gp"]),
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
    from farm.settings import NodeConfig, get_settings, node_name_for
    from farm.worker import run_cpu_worker, run_node_worker

    if cpu == bool(node_name or url):
        fail(InvalidInput("give exactly one of --node NAME (or --url URL) or --cpu"))
    if cpu_name and not cpu:
        fail(InvalidInput("--name is for --cpu workers; a node worker is named after its node"))
    try:
        settings = get_settings()
        if cpu:
            run_cpu_worker(settings, concurrency, loglevel, cpu_name)
            return
        if url:
            if kind == "auto":
                from farm.backends import detect_kind

                kind = detect_kind(url, settings.http_timeout)
            node = NodeConfig(node_name or node_name_for(url), kind, url.rstrip("/"))
        else:
            node = settings.node(node_name)
        run_node_worker(node, settings, loglevel)
    except FarmError as exc:
        fail(exc)


def _up_config(path: Path | None):
    from farm.up import default_config, load_config

    return load_config(path or default_config())


CONFIG_ARG = click.argument(
    "config", required=False, type=click.Path(dir_okay=False, path_type=Path)
)


@cli.command()
@CONFIG_ARG
@click.option("--foreground", is_flag=True, help="Supervise in this terminal (Ctrl-C stops).")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=120, show_default=True,
    help="Seconds to wait for every service to be up.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the started services as JSON.")
def up(config: Path | None, foreground: bool, timeout: float, as_json: bool) -> None:
    """Start a long-running farm from CONFIG (default ./farm.toml, else deploy/farm.toml):
    Redis, emulated nodes, a worker per node queue, CPU workers, ingest, Flower and the
    metrics exporter, each restarted if it dies; logs in ROOT/logs. `farm down` stops it."""
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


@cli.command()
@CONFIG_ARG
@click.option(
    "--timeout", type=click.FloatRange(min=1),
    help="Seconds workers get to finish their renders (default: the config's stop_timeout).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the stopped services as JSON.")
def down(config: Path | None, timeout: float | None, as_json: bool) -> None:
    """Stop the farm `farm up CONFIG` started (only the processes it started)."""
    from farm import up as upmod

    try:
        cfg = _up_config(config)
        stopped = upmod.down(cfg, timeout)
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json({"root": str(cfg.root), "stopped": stopped})
    elif stopped:
        console.print(f"farm down: stopped {', '.join(stopped)}")
    else:
        console.print(f"nothing to stop: no `farm up` is running under {cfg.root}")


@cli.command()
@CONFIG_ARG
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ps(config: Path | None, as_json: bool) -> None:
    """Show the processes of the farm `farm up CONFIG` runs: pid, state, restarts, log.
    Exit 3 when it is not up."""
    from farm import up as upmod

    try:
        cfg = _up_config(config)
    except FarmError as exc:
        fail(exc)
    state = upmod.read_state(cfg) if upmod.supervisor_pid(cfg) else None
    if state is None:
        if as_json:
            print_json({"root": str(cfg.root), "phase": "down", "services": {}})
        err_console.print(f"no `farm up` is running under {cfg.root}")
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        print_json(state)
    else:
        _print_services(state)


@cli.command("env")
@CONFIG_ARG
@click.option("--json", "as_json", is_flag=True, help="Print the variables as JSON.")
def env_cmd(config: Path | None, as_json: bool) -> None:
    """Print `export FARM_...` lines that point this shell's farm commands at the farm of
    CONFIG: `eval $(farm env farm.toml)`."""
    import shlex

    from farm.up import farm_env

    try:
        env = farm_env(_up_config(config))
    except FarmError as exc:
        fail(exc)
    keys = ["FARM_REDIS_URL", "FARM_NODES", "FARM_STORAGE"]
    keys += [k for k in ("FARM_REDIS_CA", "FARM_REDIS_CERT", "FARM_REDIS_KEY",
                         "FARM_REDIS_SENTINEL_MASTER", "FARM_PREFIX") if env.get(k)]  # fmt: skip
    if as_json:
        print_json({key: env[key] for key in keys})
        return
    for key in keys:
        click.echo(f"export {key}={shlex.quote(env[key])}")


@cli.command()
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


@cli.command()
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


@cli.command()
@click.argument("scene_id")
@click.argument("shot_id")
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the image here."
)
@click.option("--json", "as_json", is_flag=True, help="Print mime, size and age as JSON.")
def preview(scene_id: str, shot_id: str, out: Path | None, as_json: bool) -> None:
    """The newest preview frame a node sent for a running shot."""
    try:
        rt = runtime()
        rt.state.scene(scene_id)  # a clear error for an unknown scene
        frame = rt.state.preview(scene_id, shot_id)
    except FarmError as exc:
        fail(exc)
    if frame is None:
        fail(InvalidInput(f"no preview for shot {shot_id!r} of scene {scene_id!r} (yet)"))
    if out:
        out.write_bytes(frame["image"])
    info = {"scene": scene_id, "shot": shot_id, "mime": frame["mime"], "bytes": frame["bytes"],
            "at": frame["at"], "path": str(out) if out else None}  # fmt: skip
    if as_json:
        print_json(info)
    else:
        where = f" → {out}" if out else " (use -o FILE to save it)"
        console.print(f"{shot_id}: {frame['mime']}, {frame['bytes']} bytes{where}")


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


@cli.group()
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


@cli.group()
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


@cli.group()
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


@cli.command()
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


def main() -> None:
    cli(prog_name="farm")
