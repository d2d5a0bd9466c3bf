"""The emulators' own log of executions: every job a node started, and how it ended.

Emulator-only (no real ComfyUI or WanGP keeps one): tests read it through
``GET /emulator/jobs`` to count what a node really rendered, interrupted and crashed runs
included. Each change of a record is appended as one JSON line to a file in the node's
data folder, so the log outlives the ``crash`` fault and a restart on the same folder.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("farm.emulators")

FILE_NAME = "emulator-jobs.jsonl"


class JobLog:
    """Execution records in start order: ``run`` (1, 2, ... over the folder's life),
    ``job_id``, ``client_id``, ``pid`` (the emulator process), ``started_at``,
    ``ended_at`` (None while running, or forever when the process died) and ``status``
    (``running``, ``success``, ``error`` or ``interrupted``) plus ``details``, among them
    ``loaded_models``: the diffusion models the run loaded, in order (ComfyUI: the files
    of its loaders; WanGP: the model's transformer files, ``t2v_2_2`` and ``t2v_2_2:URLs2``
    for Wan 2.2 A14B, as :attr:`farm.planning.Job.models` names them)."""

    def __init__(self, folder: Path | None) -> None:
        self.path = Path(folder) / FILE_NAME if folder is not None else None
        self.records: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                    self.records[int(record["run"])] = record
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: skipping a bad line: %.80s", self.path, line)

    def started(self, job_id: str, client_id: str | None = None, **details: Any) -> int:
        """Record the start of an execution of ``job_id``; its run number."""
        with self.lock:
            run = max(self.records, default=0) + 1
            self.records[run] = {
                "run": run, "job_id": job_id, "client_id": client_id, "pid": os.getpid(),
                "started_at": time.time(), "ended_at": None, "status": "running",
                "details": details,
            }  # fmt: skip
            self._write(run)
        return run

    def ended(self, run: int, status: str, **details: Any) -> None:
        """Record how execution ``run`` ended."""
        with self.lock:
            record = self.records[run]
            record.update(ended_at=time.time(), status=status)
            record["details"].update(details)
            self._write(run)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(self.records[run]) for run in sorted(self.records)]

    def _write(self, run: int) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(self.records[run]) + "\n")
