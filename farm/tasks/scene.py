"""Scene tasks on the CPU queue: the chord body assembles, then scores."""

from __future__ import annotations

from typing import Any

from farm.assembly import assemble, score
from farm.celery_app import app
from farm.runtime import get_runtime


@app.task(name="farm.assemble_scene")
def assemble_scene(shot_records: list[dict[str, Any]], scene_id: str) -> dict[str, Any]:
    """Chord body: concatenate the scene's shot clips (header results are advisory; the
    shot records in Redis are the truth)."""
    return assemble(scene_id, get_runtime())


@app.task(name="farm.score_scene")
def score_scene(assembly: dict[str, Any], scene_id: str) -> dict[str, Any]:
    """Score the scene's shots and cuts and write its metrics report."""
    return score(scene_id, get_runtime())
