"""Live progress of a scene in the terminal (rich), until it reaches a final state."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from farm.lifecycle import TERMINAL_SCENE
from farm.planning import describe_adjusted
from farm.state import FarmState

STATE_STYLE = {
    "done": "green",
    "failed": "red",
    "running": "cyan",
    "bound": "blue",
    "queued": "dim",
    "partial": "yellow",
    "rendering": "cyan",
    "assembling": "magenta",
    "scoring": "magenta",
}


GATE_STYLE = {"passed": "green", "kept_best": "yellow", "retaking": "yellow",
              "unscored": "red", "not_gated": "dim"}  # fmt: skip


def gate_text(gate: dict[str, Any] | None) -> Text:
    """The quality gate's decision on a shot, in a few words."""
    if not gate:
        return Text("-", style="dim")
    decision = gate.get("decision", "")
    takes, kept = gate.get("takes", 0), gate.get("kept")
    words = {
        "passed": f"passed (take {kept})" if kept else "passed",  # takes count from 1
        "kept_best": f"kept take {kept} of {takes}",
        "retaking": f"take {len(gate.get('reasons', [])) + 1} of {gate.get('takes_allowed')}",
        "unscored": "unscored",
        "not_gated": "scored",
    }.get(decision, decision)
    return Text(words, style=GATE_STYLE.get(decision, ""))


#: how much of an error's first line a note shows (the whole error: ``--json``)
NOTE_CHARS = 300


def note(shot: dict[str, Any]) -> Text | None:
    """A line under the table for a shot: its retry plan, else its error (first line)."""
    if shot.get("plan"):
        return Text(f"{shot['id']}: {shot['plan']['text']}", style="yellow")
    error = (shot.get("error") or "").strip()
    if not error:
        return None
    line = error.splitlines()[0]
    cut = line[:NOTE_CHARS] + ("…" if len(line) > NOTE_CHARS or "\n" in error else "")
    return Text(f"{shot['id']}: {cut}", style="red")


def render_status(status: dict[str, Any]) -> Group:
    """A table of the scene's shots with progress bars; under it each shot's retry plan
    or error, the nodes blocked for the scene, and why a waiting shot was kept from a
    cloud node (its budget)."""
    table = Table(expand=False, box=None, pad_edge=False)
    for col in ("shot", "state", "node", "try", "progress", "gate"):
        table.add_column(col)
    for shot in status["shots"]:
        style = STATE_STYLE.get(shot["state"] or "", "")
        node = "cache" if shot.get("cache_hit") else shot.get("node") or "-"
        table.add_row(
            shot["id"],
            Text(f"{shot['state']} {shot.get('kind') or ''}".strip(), style=style),
            node,
            str(shot.get("attempts", 0)),
            ProgressBar(total=1.0, completed=float(shot.get("progress") or 0), width=24),
            gate_text(shot.get("gate")),
        )
    title = Text.assemble(
        ("scene ", "bold"),
        (status["id"], "bold"),
        "  ",
        (status["state"], STATE_STYLE.get(status["state"], "")),
    )
    notes = [n for n in map(note, status["shots"]) if n is not None]
    adjusted = [Text(f"{shot['id']}: rendered with {describe_adjusted(shot['adjusted'])}",
                     style="yellow") for shot in status["shots"] if shot.get("adjusted")]  # fmt: skip
    blocked = [Text(b["text"], style="yellow") for b in status.get("blocked") or []]
    waiting = [Text(f"{shot['id']} {shot['waiting']}", style="yellow") for shot in status["shots"]
               if shot.get("waiting") and shot["state"] == "queued"]  # fmt: skip
    return Group(title, table, *notes, *adjusted, *blocked, *waiting)


def watch(
    state: FarmState,
    scene_id: str,
    console: Console,
    *,
    interval: float = 0.3,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Show the scene's progress live until it is done, partial or failed; return its status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    status = state.status(scene_id)
    with Live(
        render_status(status), console=console, refresh_per_second=8, transient=False
    ) as live:
        while status["state"] not in TERMINAL_SCENE:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval)
            status = state.status(scene_id)
            live.update(render_status(status))
    if not console.is_terminal:  # a terminal's Live ends its last line; a pipe's does not
        console.line()
    return status
