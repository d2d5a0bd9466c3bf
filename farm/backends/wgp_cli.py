"""WanGP's CLI batch mode: ``python wgp.py --process job.json --output-dir OUT`` in a WanGP
folder, one cold process per render (for older WanGP without the MCP server, or a spare
machine). See docs/wan2gp.md, "CLI batch mode".

The console is read as it comes (``\\r`` ends a line as ``\\n`` does): ``[step/total]``
lines are progress, ``New video saved to Path: P`` names an output, and the exit code with
the notable lines decides the error class.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from farm.backends.base import ProgressFn, RenderResult
from farm.backends.wan2gp_common import EventFn, is_out_of_memory, job_key, model_facts
from farm.errors import (
    BadNodeResponse,
    FarmError,
    JobCancelled,
    NodeRejected,
    NodeTimeout,
    NodeUnavailable,
    OutOfMemory,
    RenderFailed,
)
from farm.planning import Job
from farm.settings import Settings
from farm.wan_settings import build_settings

SAVED = re.compile(r"New video saved to Path:\s*(.+?)\s*$")
STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]\s*(.*)$")
NOTABLE = re.compile(r"(?i)skip|invalid|error|fail|validation|must|not supported|unknown")


def console_pieces(chunks: Iterator[str]) -> Iterator[str]:
    """Console lines from raw output chunks; ``\\r`` ends a line as ``\\n`` does."""
    rest = ""
    for chunk in chunks:
        parts = re.split(r"[\r\n]", rest + chunk)
        rest = parts.pop()
        yield from (p for p in parts if p.strip())
    if rest.strip():
        yield rest


def cli_outcome(code: int, videos: list[str], lines: list[str]) -> FarmError | None:
    """The farm error of a finished ``wgp.py --process`` run, or None on success."""
    notable = [ln.strip() for ln in lines if NOTABLE.search(ln) and not STEP.match(ln)]
    tail = "; ".join(notable[-3:] or [ln.strip() for ln in lines[-3:]])
    if code == 130:
        return JobCancelled(f"wgp.py was interrupted: {tail}")
    if code == 0 and videos:
        return None
    if code == 0:
        return NodeRejected(f"wgp.py skipped the task: {tail or 'no video saved'}")
    text = f"wgp.py exited with code {code}: {tail or 'no output'}"
    return OutOfMemory(text) if is_out_of_memory(" ".join(lines[-20:])) else RenderFailed(text)


class WgpCliBackend:
    """Render farm jobs with ``python wgp.py --process job.json`` in a WanGP folder."""

    kind = "wan2gp"

    def __init__(
        self, folder: Path | str, settings: Settings, *, python: str | None = None
    ) -> None:
        self.folder = Path(folder)
        self.url = "file://" + str(self.folder)
        self.settings = settings
        self.python = python or sys.executable
        self._procs: dict[str, subprocess.Popen] = {}

    def probe(self) -> None:
        if not (self.folder / "wgp.py").is_file():
            raise NodeUnavailable(f"no wgp.py in {self.folder}")

    def describe(self) -> dict[str, Any]:
        """The model ids defined in the folder's ``defaults/`` and ``finetunes/`` (a
        studio's own models; weights are not checked)."""
        self.probe()
        ids = sorted({p.stem for d in ("defaults", "finetunes")
                      for p in (self.folder / d).glob("*.json")})  # fmt: skip
        return {"models": {"wangp": ids}, "version": "", "mode": "cli", "workflows": {}}

    def render(self, job: Job, out_dir: Path, progress: ProgressFn) -> RenderResult:
        source = build_settings(
            job,
            model_facts(job.model, self.settings),
            override_profile=job.params.get("override_profile"),
        )
        videos = self.run(source, out_dir, progress, key=job_key(job))
        return RenderResult(video=videos[0], files=videos, backend_job_id=f"cli:{job_key(job)}")

    def run(
        self,
        source: Any,
        out_dir: Path,
        progress: ProgressFn,
        on_event: EventFn | None = None,
        key: str = "",
    ) -> list[Path]:
        """Run ``source`` (settings or a list of them); the saved videos, in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        job_file = out_dir / "job.json"
        job_file.write_text(json.dumps(source, indent=1))
        cmd = [self.python, "wgp.py", "--process", str(job_file.resolve()),
               "--output-dir", str(out_dir.resolve())]  # fmt: skip
        try:
            proc = subprocess.Popen(
                cmd, cwd=self.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        except OSError as exc:
            raise NodeUnavailable(f"cannot start wgp.py in {self.folder}: {exc}") from exc
        self._procs[key] = proc
        try:
            code, videos, lines = self._follow(proc, progress, on_event)
        finally:
            self._procs.pop(key, None)
        error = cli_outcome(code, videos, lines)
        if error:
            raise error
        found = [Path(v) if Path(v).is_absolute() else self.folder / v for v in videos]
        missing = [str(v) for v in found if not v.is_file()]
        if missing:
            raise BadNodeResponse(f"wgp.py reported videos that do not exist: {missing}")
        return found

    def _follow(
        self, proc: subprocess.Popen, progress: ProgressFn, on_event: EventFn | None
    ) -> tuple[int, list[str], list[str]]:
        chunks: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc, chunks), daemon=True).start()
        deadline = time.monotonic() + self.settings.render_time_limit
        videos: list[str] = []
        lines: list[str] = []
        try:
            for line in console_pieces(_until_eof(chunks, proc, deadline)):
                lines = [*lines[-199:], line]
                self._line(line, videos, progress, on_event)
        except BaseException:  # timeout, JobCancelled from progress, Ctrl-C: stop wgp.py
            _stop(proc)
            raise
        return proc.wait(timeout=30), videos, lines

    @staticmethod
    def _line(line: str, videos: list[str], progress: ProgressFn, on_event: EventFn | None) -> None:
        if m := SAVED.search(line):
            videos.append(m.group(1))
            if on_event:
                on_event("output", {"path": m.group(1)})
        elif m := STEP.match(line):
            cur, total = int(m.group(1)), int(m.group(2)) or 1
            if on_event:
                on_event("progress", {"current_step": cur, "total_steps": total})
            progress(0.1 + 0.8 * min(1.0, cur / total), f"step {cur}/{total}")
        elif on_event:
            on_event("stream", {"text": line})

    def find(self, job: Job, out_dir: Path) -> str:
        """A CLI run lives and dies with the worker that started it: another process
        never finds it."""
        return "absent"

    def collect(self, job: Job, out_dir: Path) -> RenderResult:
        raise NodeUnavailable(f"a wgp.py run of {job_key(job)} cannot be collected afterwards")

    def cancel(self, job: Job, out_dir: Path | None = None) -> str:
        proc = self._procs.get(job_key(job))
        if proc is None or proc.poll() is not None:
            return "not_found"
        _stop(proc)
        return "interrupted"


def _pump(proc: subprocess.Popen, chunks: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    while data := proc.stdout.read1(4096):  # type: ignore[attr-defined]
        chunks.put(data.decode("utf-8", "replace"))
    chunks.put(None)


def _until_eof(
    chunks: queue.Queue[str | None], proc: subprocess.Popen, deadline: float
) -> Iterator[str]:
    while True:
        if time.monotonic() > deadline:
            raise NodeTimeout(f"wgp.py (pid {proc.pid}) ran past the render time limit")
        try:
            chunk = chunks.get(timeout=0.5)
        except queue.Empty:
            continue
        if chunk is None:
            return
        yield chunk


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt wgp.py as Ctrl-C would; terminate, then kill, if it does not exit."""
    for action in (lambda: proc.send_signal(signal.SIGINT), proc.terminate, proc.kill):
        if proc.poll() is not None:
            return
        action()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue
