"""Scene commands: check, enqueue or submit a scene, follow it, steer it (cancel, pause,
resume, retry) and look at a running shot's newest preview frame."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.markup import escape
from rich.table import Table

from farm.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    console,
    err_console,
    fail,
    print_json,
    runtime,
)
from farm.errors import CatalogError, FarmError, InvalidInput

if TYPE_CHECKING:
    from farm.runtime import Runtime


@click.command()
@click.argument("scene_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(scene_file: Path, as_json: bool) -> None:
    """Check a scene file against the scene schema without submitting it."""
    from farm.scene import load_scene
    from farm.settings import get_settings
    from farm.studio import catalog_for

    try:
        catalog = catalog_for(get_settings())
        scene = load_scene(scene_file, catalog.templates)
    except (InvalidInput, CatalogError) as exc:
        if as_json:
            print_json(
                {"valid": False, "error": str(exc).splitlines()[0], "problems": exc.problems}
            )
            sys.exit(EXIT_INVALID)
        fail(exc)
    used = {t: catalog.description(t) for t in sorted({s.template for s in scene.shots})}
    if as_json:
        print_json({"valid": True, "scene": scene.to_dict(), "templates": used})
        return
    console.print(f"[green]valid[/]: scene {scene.id} with {len(scene.shots)} shots")
    for name, description in used.items():
        shots = sum(s.template == name for s in scene.shots)
        console.print(f"  {escape(name)} ({shots} shot{'s' if shots > 1 else ''}): "
                      f"[dim]{escape(description or catalog.source(name))}[/]")  # fmt: skip


@click.command()
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
    from farm.settings import get_settings
    from farm.studio import catalog_for
    from farm.submit import enqueue as submit

    try:  # a bad file is reported as such (exit 2) before Redis is asked anything
        scene = load_scene(scene_file, catalog_for(get_settings()).templates)
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
    _follow(rt, scene.id, as_json)


@click.command()
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
    from farm import submission as sub
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


@click.command()
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
        _print_outputs(data)
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


@click.command()
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


@click.command()
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
    try:
        rt = runtime()
        rt.state.scene(scene_id)  # exit 2 for an unknown scene
    except FarmError as exc:
        fail(exc)
    _follow(rt, scene_id, as_json, timeout)


def _follow(rt: Runtime, scene_id: str, as_json: bool, timeout: float | None = None) -> NoReturn:
    """Show the scene live until it is over (or ``timeout``), then where its outputs are
    (``as_json``: its status on stdout, the live view on stderr); exit 0 when it is done,
    1 otherwise."""
    from farm.lifecycle import TERMINAL_SCENE
    from farm.watch import watch as follow

    try:
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
        _print_outputs(status)
    sys.exit(EXIT_OK if status["state"] == "done" else EXIT_FAILED)


def _print_outputs(status: dict[str, Any]) -> None:
    """One line per output of the scene: ``video: PATH``, ``report: PATH``, ..."""
    for name, path in status["outputs"].items():
        console.print(f"{name}: {path}", soft_wrap=True, highlight=False)


@click.command()
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


@click.command()
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


@click.command()
@click.argument("scene_id")
@click.argument("priority", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def priority(scene_id: str, priority: int, as_json: bool) -> None:
    """Change a scene's priority (0 lowest … 9 highest): its waiting shots are ranked
    again at once; running renders go on."""
    try:
        rt, d = _dispatcher()
        rt.state.scene(scene_id)
        moved = d.set_priority(scene_id, priority)
    except FarmError as exc:
        fail(exc)
    if as_json:
        print_json({"scene": scene_id, "priority": priority, "reranked": moved})
    else:
        console.print(
            f"scene {scene_id} has priority {priority}: {moved} waiting shots ranked again"
        )


@click.command()
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
    _follow(rt, scene_id, as_json)


@click.command()
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
        shots = rt.state.scene(scene_id).get("shots", [])  # exit 2 for an unknown scene
        if shot_id not in shots:
            raise InvalidInput(
                f"no shot {shot_id!r} in scene {scene_id!r}; its shots: {', '.join(shots)}"
            )
        frame = rt.state.preview(scene_id, shot_id)
    except FarmError as exc:
        fail(exc)
    if frame is None:
        state = rt.state.shot(scene_id, shot_id).get("state")
        fail(InvalidInput(f"shot {shot_id!r} of scene {scene_id!r} ({state}) has no preview "
                          "frame yet: a node sends them while it renders the shot"))  # fmt: skip
    if out:
        out.write_bytes(frame["image"])
    info = {"scene": scene_id, "shot": shot_id, "mime": frame["mime"], "bytes": frame["bytes"],
            "at": frame["at"], "path": str(out) if out else None}  # fmt: skip
    if as_json:
        print_json(info)
    else:
        where = f" → {out}" if out else " (use -o FILE to save it)"
        console.print(f"{shot_id}: {frame['mime']}, {frame['bytes']} bytes{where}")


COMMANDS = (
    validate,
    enqueue,
    submit,
    status,
    cancel,
    watch,
    pause,
    resume,
    retry,
    priority,
    preview,
)
