"""Assembling a scene from its shot clips, and scoring it: the plain functions behind the
chord body (``assemble_scene`` then ``score_scene``), run on the CPU queue."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from farm import media
from farm.runtime import Runtime
from farm.scene import Scene, Shot, parse_scene
from farm.state import SceneState, ShotState
from farm.trajectory import resample

log = logging.getLogger(__name__)

#: samples of a smooth target path handed to the metrics (not 121: that is the ATI grid)
TARGET_SAMPLES = 256


def scene_dir(storage: Path, scene_id: str) -> Path:
    return storage / "scenes" / scene_id


def shot_clip(shot: dict[str, Any]) -> str | None:
    """The best clip a shot record has: the final, else the preview."""
    outputs = shot.get("outputs") or {}
    return outputs.get("final") or outputs.get("preview")


def assemble(scene_id: str, rt: Runtime) -> dict[str, Any]:
    """Concatenate the shot clips in scene order into ``scene.mp4``; a failed shot becomes a
    slate card of its length, so the cut keeps its timing."""
    state = rt.state
    record = state.scene(scene_id)
    scene = parse_scene(record["spec"], check_files=False)
    shots = {s["id"]: s for s in state.shots(scene_id)}
    if str(record.get("cancel")) == "1":
        state.update_scene(scene_id, "scene_cancelled", state=SceneState.CANCELLED)
        return {"scene_id": scene_id, "video": None}
    state.update_scene(scene_id, "scene_assembling", state=SceneState.ASSEMBLING)
    done = [
        s
        for s in scene.shots
        if shots[s.id].get("state") == ShotState.DONE and shot_clip(shots[s.id])
    ]
    if not done:
        errors = {s.id: shots[s.id].get("error") for s in scene.shots}
        state.update_scene(
            scene_id, "scene_failed", state=SceneState.FAILED, error=f"no shot rendered: {errors}"
        )
        return {"scene_id": scene_id, "video": None}
    first = media.probe(Path(shot_clip(shots[done[0].id]) or ""))
    folder = scene_dir(rt.settings.storage, scene_id)
    parts: list[Path] = []
    for shot in scene.shots:
        clip = shot_clip(shots[shot.id]) if shot in done else None
        if clip:
            parts.append(Path(clip))
        else:
            parts.append(
                _slate(
                    folder / "shots" / shot.id / "slate.mp4",
                    shot.id,
                    shots[shot.id].get("error"),
                    first,
                    shot.frames,
                )
            )
    video = media.concat_videos(
        parts, folder / "scene.mp4", width=first.width, height=first.height, fps=first.fps
    )
    outputs = {**(record.get("outputs") or {}), "video": str(folder / "scene.mp4")}
    state.update_scene(scene_id, "scene_assembled", outputs=outputs, frames=video.frames)
    return {"scene_id": scene_id, "video": str(folder / "scene.mp4"), "frames": video.frames}


def _slate(path: Path, shot_id: str, error: Any, size: media.VideoInfo, frames: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"shot {shot_id} failed: {error or 'unknown error'}"
    media.write_video(path, media.slate_frames(text, size.width, size.height, frames), size.fps)
    return path


def _target_paths(shot: Shot) -> list[list[tuple[float, float]]]:
    """The shot's tracks as the paths it was asked to follow: the drawn points for linear
    interpolation, a dense resampling of the smooth curve otherwise (metrics interpolate
    linearly between the points they are given)."""
    tracks = [[(p.x, p.y) for p in t] for t in shot.trajectories]
    if shot.trajectory_interpolation == "linear":
        return tracks
    return [resample(t, TARGET_SAMPLES, shot.trajectory_interpolation) for t in tracks]


def score(scene_id: str, rt: Runtime) -> dict[str, Any]:
    """Score every rendered shot and the cuts between them; write ``metrics.json``."""
    from farm import metrics  # OpenCV-heavy: imported only where scoring runs

    state = rt.state
    record = state.scene(scene_id)
    if record.get("state") in (SceneState.FAILED, SceneState.CANCELLED):
        return {"scene_id": scene_id, "metrics": None}
    scene = parse_scene(record["spec"], check_files=False)
    shots = {s["id"]: s for s in state.shots(scene_id)}
    state.update_scene(scene_id, "scene_scoring", state=SceneState.SCORING)
    entries = [
        {
            "id": shot.id,
            "path": shot_clip(shots[shot.id]),
            "canvas": (shot.width, shot.height),
            "trajectories": _target_paths(shot) or None,
        }
        for shot in scene.shots
        if shots[shot.id].get("state") == ShotState.DONE and shot_clip(shots[shot.id])
    ]
    try:
        report = metrics.score_scene(entries)
    except Exception as exc:  # scoring must never strand a rendered scene
        log.exception("scoring scene %s failed", scene_id)
        report = {"error": f"{exc.__class__.__name__}: {exc}"}
    report = {
        "scene_id": scene_id,
        "title": scene.title,
        **report,
        "provenance": _provenance(scene, shots),
    }
    path = scene_dir(rt.settings.storage, scene_id) / "metrics.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    failed = len(entries) < len(scene.shots)
    outputs = {**(record.get("outputs") or {}), "metrics": str(path)}
    state.update_scene(
        scene_id,
        "scene_done",
        state=SceneState.PARTIAL if failed else SceneState.DONE,
        metrics=_summary(report),
        outputs=outputs,
    )
    return {"scene_id": scene_id, "metrics": str(path)}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of the report kept in the scene record: summary and per-shot scores."""
    shots = {s["id"]: s.get("scores", {}) for s in report.get("shots", []) if isinstance(s, dict)}
    return {
        "summary": report.get("summary", {}),
        "shots": shots,
        **({"error": report["error"]} if "error" in report else {}),
    }


def _provenance(scene: Scene, shots: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        s.id: {
            "state": shots[s.id].get("state"),
            "node": shots[s.id].get("node"),
            "cache_hit": shots[s.id].get("cache_hit", False),
            "seed": s.seed,
            "template": s.template,
            "attempts": shots[s.id].get("attempt_log", []),
        }
        for s in scene.shots
    }
