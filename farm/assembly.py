"""Assembling a scene from its shots' kept takes, and its report: the plain functions
behind the chord body (``assemble_scene`` then ``score_scene``), run on the CPU queue.
Each take was scored by the quality gate (:mod:`farm.gate`) as it finished.

Each stage is claimed for the scene's current run (:func:`farm.lifecycle.claim`) and held
with the scene's lease while it works, so a redelivered or repeated body task (its ack
lost in a Redis restart, the watchdog's copy) does nothing once the stage is done, and
the timeout checker sees a dead one. A stage that fails is tried once more, then the
scene fails with the error."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from farm import canvas, lifecycle, media
from farm.files import visible
from farm.lifecycle import SceneState, ShotState
from farm.runtime import Runtime
from farm.scene import Scene, Shot, parse_scene

log = logging.getLogger(__name__)

#: tries of a scene's assembly, and of its scoring, before the scene fails
STAGE_TRIES = 2
MAX_STAGE_ERROR = 2000
#: what the report shows of each take
TAKE_FIELDS = ("take", "seed", "node", "seconds", "clip", "contact", "scores", "passed",
               "failed", "cache_hit", "error")  # fmt: skip


def scene_dir(storage: Path, scene_id: str) -> Path:
    return storage / "scenes" / scene_id


def shot_clip(shot: dict[str, Any]) -> str | None:
    """The best clip a shot record has: the final, else the preview."""
    outputs = shot.get("outputs") or {}
    return outputs.get("final") or outputs.get("preview")


def assemble(scene_id: str, run: int, rt: Runtime) -> dict[str, Any]:
    """Chord body, first part: claim the scene's assembly for ``run`` and concatenate the
    shot clips in scene order into ``scene.mp4`` (a failed shot becomes a slate card of its
    length, so the cut keeps its timing). A delivery with nothing to do (another run, the
    stage done or held) returns ``skipped``."""
    return _run_stage(rt, scene_id, run, SceneState.ASSEMBLING, _assemble)


def _run_stage(
    rt: Runtime, scene_id: str, run: int, stage: SceneState,
    work: Callable[[Runtime, str, str], dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """Claim ``stage`` of the scene for ``run`` and do ``work`` under its lease; ``skipped``
    when there is nothing to do or the stage failed (tried again, or the scene failed)."""
    token = lifecycle.claim(rt, scene_id, run, stage, wait_for=4 * rt.settings.lease_ttl)
    if token is None:
        return {"scene_id": scene_id, "skipped": True}
    with _stage(rt, scene_id, token, stage, run):
        return work(rt, scene_id, token)
    return {"scene_id": scene_id, "skipped": True}


def _assemble(rt: Runtime, scene_id: str, token: str) -> dict[str, Any]:
    state = rt.state
    record = state.scene(scene_id)
    scene = parse_scene(record["spec"], check_files=False, templates=rt.catalog.templates)
    shots = {s["id"]: s for s in state.shots(scene_id)}
    if str(record.get("cancel")) == "1":
        lifecycle.cancel_scene(rt, scene_id, token)
        return {"scene_id": scene_id, "video": None}
    done = [
        s
        for s in scene.shots
        if shots[s.id].get("state") == ShotState.DONE and shot_clip(shots[s.id])
    ]
    if not done:
        errors = {s.id: shots[s.id].get("error") for s in scene.shots}
        lifecycle.fail_scene(rt, scene_id, f"no shot rendered: {errors}", token=token)
        return {"scene_id": scene_id, "video": None}
    for shot in done:  # a clip another machine rendered may show up here late (NFS)
        visible(Path(shot_clip(shots[shot.id]) or ""), rt.settings.clip_wait)
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
    lifecycle.assembled(rt, scene_id, token, outputs=outputs, frames=video.frames)
    return {"scene_id": scene_id, "video": str(folder / "scene.mp4"), "frames": video.frames}


def _slate(path: Path, shot_id: str, error: Any, size: media.VideoInfo, frames: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"shot {shot_id} failed: {error or 'unknown error'}"
    media.write_video(path, media.slate_frames(text, size.width, size.height, frames), size.fps)
    return path


@contextlib.contextmanager
def _stage(rt: Runtime, scene_id: str, token: str, stage: str, run: int) -> Iterator[None]:
    """Hold the scene's lease while a stage works; a stage that fails is tried once more,
    then the scene fails with its error (:func:`stage_failed`)."""
    keys = rt.settings.keys
    keeper = lifecycle.Keeper(rt, keys.scene_lease(scene_id), token, keys.scene(scene_id),
                              "stage")  # fmt: skip
    keeper.start()
    try:
        yield
    except Exception as exc:
        log.exception("%s of scene %s failed", stage, scene_id)
        stage_failed(rt, scene_id, stage, run, token, f"{exc.__class__.__name__}: {exc}")
    finally:
        keeper.stop()
        lifecycle.release_lease(rt, keys.scene_lease(scene_id), token)


def stage_failed(rt: Runtime, scene_id: str, stage: str, run: int, token: str | None,
                 error: str, *, countdown: float = 2.0) -> None:  # fmt: skip
    """The task of ``stage`` failed (``token``) or died (None): on its first try it is
    published again, after that the scene fails with the error (`farm retry` and
    ``--replace`` act on a failed scene)."""
    tries = int(rt.redis.hget(rt.settings.keys.scene(scene_id), "stage_tries") or 0)
    error = error[:MAX_STAGE_ERROR]
    if tries >= STAGE_TRIES:
        what = "assembly" if stage == SceneState.ASSEMBLING else "scoring"
        lifecycle.fail_scene(rt, scene_id, f"{what} failed {tries} times: {error}", token=token,
                             states={stage})  # fmt: skip
        return
    if lifecycle.release(rt, scene_id, stage, token, error):
        publish_stage(rt, scene_id, stage, run, countdown=countdown)


def publish_stage(rt: Runtime, scene_id: str, stage: str, run: int, *,
                  countdown: float = 0.0) -> None:  # fmt: skip
    """Publish the task of ``stage`` of ``run`` again: the chord body (assembly, then
    scoring) for assembling and for a scene whose body never came, the scoring alone for
    scoring."""
    from farm.celery_app import app

    queue = rt.settings.cpu_queue
    if stage == SceneState.SCORING:
        signature = app.signature("farm.score_scene", args=(None, scene_id, run), queue=queue)
    else:
        signature = canvas.scene_body(app, scene_id, run, queue, records=[])
    rt.state.update_scene(scene_id, stage_sent=time.time())
    canvas.send(app, signature, countdown=countdown)


def score(scene_id: str, run: int, rt: Runtime) -> dict[str, Any]:
    """Chord body, second part: claim the scene's scoring for ``run`` and write the scene
    report (``report.json`` and ``report.html``): each shot's kept take as the quality
    gate scored it, every take and decision, the continuity of each cut, and each shot's
    provenance."""
    return _run_stage(rt, scene_id, run, SceneState.SCORING, _score)


def _score(rt: Runtime, scene_id: str, token: str) -> dict[str, Any]:
    from farm.report import write_report

    state = rt.state
    record = state.scene(scene_id)
    scene = parse_scene(record["spec"], check_files=False, templates=rt.catalog.templates)
    shots = {s["id"]: s for s in state.shots(scene_id)}
    try:
        report = build_report(rt, scene, record, shots)
    except Exception as exc:  # a report must never strand a rendered scene
        log.exception("the report of scene %s failed", scene_id)
        report = {"version": 1, "scene_id": scene_id, "title": scene.title, "shots": [],
                  "error": f"{exc.__class__.__name__}: {exc}"}  # fmt: skip
    folder = scene_dir(rt.settings.storage, scene_id)
    outputs = dict(record.get("outputs") or {})
    try:
        json_path, html_path = write_report(report, folder)
        outputs.update(report=str(json_path), report_html=str(html_path))
    except Exception:
        log.exception("writing the report of scene %s failed", scene_id)
        json_path = folder / "report.json"
        json_path.write_text(json.dumps(report, indent=2, default=str))
        outputs["report"] = str(json_path)
    partial = any(shots[s.id].get("state") != ShotState.DONE for s in scene.shots)
    lifecycle.finish(rt, scene_id, token, partial, metrics=_summary(report), outputs=outputs)
    return {"scene_id": scene_id, "report": outputs["report"]}


def build_report(
    rt: Runtime, scene: Scene, record: dict[str, Any], shots: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The report's data (schema: docs/quality.md), from the shot records and the files the
    gate kept beside each take."""
    from farm.gate import load_gate
    from farm.metrics.scene import summary

    start = time.perf_counter()
    gate = load_gate(rt.settings.gate_file)
    entries = [
        _shot_report(shot, shots[shot.id], gate.rule(shot.template, rt.settings.gate_takes))
        for shot in scene.shots
    ]
    links = _continuity(entries)
    return {
        "version": 1,
        "scene_id": scene.id,
        "title": scene.title,
        "state": "partial" if any(e["state"] != ShotState.DONE for e in entries) else "done",
        "created": record.get("created"),
        "video": (record.get("outputs") or {}).get("video"),
        "summary": summary(entries, links),
        "continuity": links,
        "shots": entries,
        "seconds": round(  # scoring time: every take of every shot
            sum(
                t.get("score_seconds") or 0.0 for r in shots.values() for t in r.get("takes") or []
            ),
            3,
        ),
        "report_seconds": round(time.perf_counter() - start, 3),
    }


def _shot_report(shot: Shot, rec: dict[str, Any], rule: Any) -> dict[str, Any]:
    gate = rec.get("gate") or {}
    takes = rec.get("takes") or []
    done = rec.get("state") == ShotState.DONE
    kept = next((t for t in takes if t.get("take") == gate.get("kept")), None) if done else None
    result = _read_json(kept.get("result")) if kept else {}
    decision = gate.get("decision") or ("no_clip" if not done else "not_gated")
    return {
        "id": shot.id,
        "state": rec.get("state"),
        "template": shot.template,
        "action": shot.action_description,
        "clip": (kept or {}).get("clip") or (shot_clip(rec) if done else None),
        "error": rec.get("error"),
        "frames": result.get("frames"),
        "width": result.get("width"),
        "height": result.get("height"),
        "fps": result.get("fps"),
        "adjusted": (kept or {}).get("adjusted") or [],  # frames/fps the node's model forced
        "scores": result.get("scores", {}),
        "raw": result.get("raw", {}),
        "cuts": result.get("cuts", []),
        "tracks": result.get("tracks", []),
        "thresholds": {  # those that apply: no trajectory_adherence without trajectories
            m: v
            for m, v in gate.get("thresholds", rule.minimum).items()
            if m in result.get("scores", {}) or not result
        },
        "contact": (kept or {}).get("contact"),
        "trajectory_plot": (kept or {}).get("trajectory_plot"),
        "first": (kept or {}).get("first"),
        "last": (kept or {}).get("last"),
        "gate": {
            "enabled": bool(gate.get("thresholds", rule.minimum)),
            "decision": decision,
            "takes_allowed": gate.get("takes_allowed", rule.takes),
            "kept": gate.get("kept"),
            "reasons": gate.get("reasons", []),
            "error": gate.get("error"),
            "takes": [{k: t.get(k) for k in TAKE_FIELDS} for t in takes],
        },
        "provenance": {
            "backend": (kept or {}).get("backend"),
            "workflow": (kept or {}).get("workflow"),
            "settings": (kept or {}).get("params"),  # the request: prompt, seed, steps, size
            "model": (kept or {}).get("model"),
            "models": (kept or {}).get("models"),  # every diffusion model (Wan 2.2 A14B: 2)
            "node": (kept or {}).get("node") or rec.get("node"),
            "seed": (kept or {}).get("seed", shot.seed),
            "cache_hit": bool((kept or {}).get("cache_hit")),
            "queued": rec.get("created"),
            "started": rec.get("started"),
            "finished": rec.get("finished"),
            "render_seconds": (kept or {}).get("seconds"),
            "score_seconds": (kept or {}).get("score_seconds"),
            "attempts": rec.get("attempt_log", []),
        },
    }


def _read_json(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        log.warning("score file %s is missing or unreadable", path)
        return {}


def _continuity(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Continuity across each cut between consecutive shots that kept a take."""
    import cv2

    from farm.metrics import continuity

    links = []
    for a, b in zip(entries, entries[1:], strict=False):
        last = cv2.imread(a["last"]) if a.get("last") else None
        first = cv2.imread(b["first"]) if b.get("first") else None
        if last is None or first is None:
            continue
        values = continuity(last, first)
        links.append(
            {"from": a["id"], "to": b["id"], **{k: round(v, 4) for k, v in values.items()}}
        )
    return links


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of the report kept in the scene record: summary, per-shot scores and the
    gate's decision per shot."""
    shots = [s for s in report.get("shots", []) if isinstance(s, dict)]
    return {
        "summary": report.get("summary", {}),
        "shots": {s["id"]: s.get("scores", {}) for s in shots},
        "gate": {s["id"]: s.get("gate", {}).get("decision") for s in shots},
        **({"error": report["error"]} if "error" in report else {}),
    }
