"""``farm demo``: a whole farm on this machine renders the bundled example scene.

Starts its own Redis (AOF, data under the demo folder), two emulated ComfyUI nodes with
different models and speeds, one emulated WanGP node (its MCP server), a worker per node
queue, a CPU worker and ``farm ingest``; submits ``examples/demo_scene.json`` the way the
Blender add-on does (one message on the submissions stream, decided by ingest); shows live
progress; prints where the outputs are; stops everything it started.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from farm import settings as settings_mod
from farm.errors import ConfigError
from farm.local import EmulatedNode, LocalFarm
from farm.runtime import get_runtime
from farm.scene import load_scene
from farm.settings import REPO_ROOT
from farm.submission import pack_submission, send_submission, wait_status
from farm.watch import watch

DEMO_SCENE = REPO_ROOT / "examples" / "demo_scene.json"
DEMO_NODES = [
    EmulatedNode("gpu-a", REPO_ROOT / "deploy" / "nodes" / "gpu-a.json"),
    EmulatedNode("gpu-b", REPO_ROOT / "deploy" / "nodes" / "gpu-b.json"),
    EmulatedNode("wan-a", REPO_ROOT / "deploy" / "nodes" / "wan-a.json", kind="wan2gp"),
]


def run_demo(
    root: Path, console: Console, scene_file: Path = DEMO_SCENE, quality: str | None = None
) -> int:
    """Run the demo under ``root``; exit code 0 when the scene rendered completely."""
    started = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    scene = load_scene(scene_file)
    console.print(
        f"[bold]farm demo[/]: starting Redis, {len(DEMO_NODES)} emulated GPU nodes and workers under {root}"
    )
    with LocalFarm(root, DEMO_NODES, cpu_concurrency=os.cpu_count() or 1) as farm:
        os.environ.update(farm.env())
        settings_mod._current = None  # this process now talks to the demo farm
        rt = get_runtime()
        for node in rt.registry.records():
            held = node["models"]
            models = [*held.get("diffusion_models", []), *held.get("checkpoints", [])]
            models = models or held.get("wangp") or []
            console.print(
                f"  node [cyan]{node['name']}[/] ({node['kind']}) {node['gpu']} at {node['url']}: "
                f"{len(models)} video models"
            )
        fields = pack_submission(scene_file, None, False, quality=quality)
        message = send_submission(rt.redis, rt.settings, fields)
        decision = wait_status(rt.redis, rt.settings, fields["submission"], timeout=60)
        if decision is None or decision["state"] != "accepted":
            errors = decision["errors"] if decision else ["no answer from farm ingest in 60s"]
            raise ConfigError(f"farm ingest did not accept the demo scene (see {root / 'logs'}/"
                              "ingest.log): " + "; ".join(errors))  # fmt: skip
        console.print(
            f"submitted scene [bold]{scene.id}[/] ({len(scene.shots)} shots) through farm ingest:"
            f" submission {fields['submission']} (stream message {message}) accepted"
        )
        status = watch(rt.state, scene.id, console, timeout=600)
    console.print(
        f"\nscene [bold]{status['id']}[/] finished [bold]{status['state']}[/] in {time.monotonic() - started:.1f}s"
    )
    for shot in status["shots"]:
        clip = shot["outputs"].get("final") or shot["outputs"].get("preview") or shot.get("error")
        gate = (shot.get("gate") or {}).get("decision") or "-"
        console.print(
            f"  shot {shot['id']:<12} {shot['state']:<7} {shot['node'] or '-':<6} "
            f"gate {gate:<9} {clip}",
            soft_wrap=True,
        )
    for name, path in status["outputs"].items():
        console.print(f"  {name:<8} {path}", soft_wrap=True)
    summary = (status.get("metrics") or {}).get("summary")
    if summary:
        console.print(
            "  scores  "
            + json.dumps(
                {k: round(v, 3) for k, v in summary.items() if isinstance(v, (int, float))}
            )
        )
    console.print(f"  logs     {root / 'logs'}")
    return 0 if status["state"] == "done" else 1
