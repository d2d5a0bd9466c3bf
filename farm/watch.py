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


def render_status(status: dict[str, Any]) -> Group:
    """A table of the scene's shots with progress bars."""
    table = Table(expand=False, box=None, pad_edge=False)
    for col in ("shot", "state", "node", "try", "progress", "gate", ""):
        table.add_column(col)
    for shot in status["shots"]:
        style = STATE_STYLE.get(shot["state"] or "", "")
        note = shot.get("error") or ""
        node = "cache" if shot.get("cache_hit") else shot.get("node") or "-"
        table.add_row(
            shot["id"],
            Text(f"{shot['state']} {shot.get('kind') or ''}".strip(), style=style),
            node,
            str(shot.get("attempts", 0)),
            ProgressBar(total=1.0, completed=float(shot.get("progress") or 0), width=24),
            gate_text(shot.get("gate")),
            Text(note[:70], style="red") if note else "",
        )
    title = Text.assemble(
        ("scene ", "bold"),
        (status["id"], "bold"),
        "  ",
        (status["state"], STATE_STYLE.get(status["state"], "")),
    )
    notes = [Text(f"{shot['id']}: rendered with {describe_adjusted(shot['adjusted'])}",
                  style="yellow") for shot in status["shots"] if shot.get("adjusted")]  # fmt: skip
    return Group(title, table, *notes)


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
    return status
