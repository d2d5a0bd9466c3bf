"""WanGP's batch mode, emulated: ``wgp.py --process job.json --output-dir D``.

    python -m farm.emulators.wgp_cli --process job.json --output-dir D --profile FILE [--dry-run]
    python -m farm.emulators.wgp_cli --install FOLDER --profile FILE

``job.json`` is a settings object, a list of them, or a list of ``{"id", "params"}`` (a
``.zip`` holding ``queue.json`` works too). Console as WanGP prints it: ``Loaded N task(s)``,
``[Task i/N] <prompt[:60]>...``, a ``\\r``-rewritten ``  [step/total] <status>`` line,
``New video saved to Path: <path>``, ``Task i completed``, ``Queue completed: c/N tasks in
...``. Exit 0 (also when tasks were skipped for failing validation), 1 on error, 130 on
SIGINT, 70 for the ``crash`` fault. Every call is a cold start: the model load is paid again.
``--install`` writes ``FOLDER/wgp.py`` so a backend can run ``python wgp.py --process ...``
there exactly as in a WanGP checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, TextIO

from farm.emulators.profile import NodeProfile, load_profile
from farm.emulators.wan2gp import Engine, TaskFailed
from farm.emulators.wan2gp_settings import (
    DEFAULT_MEMORY_PROFILE,
    MEMORY_PROFILES,
    ValidationFailed,
    plan_task,
    seconds_text,
    task_entries,
)
from farm.errors import FarmError

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
REPO_ROOT = Path(__file__).resolve().parents[2]
WGP_SCRIPT = '''#!/usr/bin/env python3
"""Emulated WanGP entry point (written by farm.emulators.wgp_cli --install): runs the
farm's emulated batch mode with node profile {profile}."""
import sys

sys.path.insert(0, {repo!r})
from farm.emulators.wgp_cli import main

sys.exit(main(["--profile", {profile!r}, *sys.argv[1:]]))
'''


def read_queue(path: Path) -> Any:
    """The tasks of a ``--process`` file: JSON, or a ``.zip`` with ``queue.json``."""
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("queue.json"))
    return json.loads(path.read_text())


def process(
    source: Any,
    engine: Engine,
    *,
    dry_run: bool = False,
    out: TextIO = sys.stdout,
    cancel: threading.Event | None = None,
) -> int:
    """Run a task list as ``wgp.py --process`` does, printing its console; the exit code."""
    cancel = cancel or threading.Event()
    entries = task_entries(source)
    total, done, failed = len(entries), 0, False
    started = time.monotonic()
    print(f"Loaded {total} task(s)", file=out, flush=True)
    for index, (task_id, raw) in enumerate(entries):
        n = index + 1
        try:
            task = plan_task(
                index,
                task_id,
                raw,
                default_profile=engine.memory_profile,
                rng_seed=engine.random_seed(),
                models=engine.models,
            )
        except ValidationFailed as exc:
            print(f"[Task {n}/{total}] skipped: {exc}", file=out, flush=True)
            continue
        print(f"[Task {n}/{total}] {task.prompts[0][:60]}...", file=out, flush=True)
        if dry_run:
            print(f"Task {n} validated (dry run)", file=out, flush=True)
            done += 1
            continue
        try:
            engine.run(task, f"cli:{task_id}:{index}", _console(out), cancel)
        except TaskFailed as exc:
            print(f"\nTask {n} failed: {exc}", file=out, flush=True)
            failed = True
            continue
        print(f"Task {n} completed", file=out, flush=True)
        done += 1
    elapsed = seconds_text(time.monotonic() - started)
    print(f"Queue completed: {done}/{total} tasks in {elapsed}", file=out, flush=True)
    return EXIT_ERROR if failed else EXIT_OK


def _console(out: TextIO):
    def emit(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and data["phase"].startswith("inference"):
            step, total = data["current_step"], data["total_steps"]
            print(f"\r  [{step}/{total}] {data['status']}", end="", file=out, flush=True)
            if step == total:
                print(file=out, flush=True)
        elif kind == "progress":
            print(f"  {data['status']}", file=out, flush=True)
        elif kind == "stream":
            print(data["text"], file=out, flush=True)

    return emit


def install_wgp(folder: Path, profile: Path) -> Path:
    """Write ``folder/wgp.py``, a WanGP stand-in running this batch mode with ``profile``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    load_profile(Path(profile))  # refuse a bad profile now, not at the first job
    script = folder / "wgp.py"
    text = WGP_SCRIPT.format(repo=str(REPO_ROOT), profile=str(Path(profile).resolve()))
    script.write_text(text)
    script.chmod(0o755)
    return script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m farm.emulators.wgp_cli", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", required=True, type=Path, help="node profile JSON")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--process", type=Path, help="job.json or queue.zip to run")
    action.add_argument("--install", type=Path, metavar="FOLDER", help="write FOLDER/wgp.py")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs"), help="default ./outputs"
    )
    parser.add_argument("--dry-run", action="store_true", help="validate the tasks only")
    parser.add_argument(
        "--memory-profile",
        type=int,
        default=DEFAULT_MEMORY_PROFILE,
        choices=sorted(MEMORY_PROFILES),
        help="WanGP's --profile N (default 4)",
    )
    args = parser.parse_args(argv)
    try:
        if args.install:
            print(f"Installed {install_wgp(args.install, args.profile)}")
            return EXIT_OK
        profile: NodeProfile = load_profile(args.profile)
        source = read_queue(args.process)
        engine = Engine(profile, args.output_dir, memory_profile=args.memory_profile)
        return process(source, engine, dry_run=args.dry_run)
    except KeyboardInterrupt:
        print("\nInterrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (FarmError, OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
