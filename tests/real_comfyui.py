"""A real ComfyUI server (``make comfyui``) run on a free loopback port, on the CPU, offline."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from farm.local import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-comfyui"
MAIN = VENV / "ComfyUI" / "main.py"


class RealComfyUI:
    """``main.py --cpu`` with its input, output and temp folders under ``root``."""

    def __init__(self, root: Path) -> None:
        if not (VENV / ".installed").exists():
            pytest.fail(f"no real ComfyUI in {VENV}: run `make comfyui` (or `make test`)")
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = root / "output"
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RealComfyUI:
        dirs = {name: self.root / name for name in ("input", "output", "temp")}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        cmd = [str(VENV / "bin" / "python"), str(MAIN), "--cpu", "--listen", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--disable-auto-launch"]
        for name, path in dirs.items():
            cmd += [f"--{name}-directory", str(path)]
        # nothing may be fetched at run time: no hub, no telemetry
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
        }
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=self.log.open("a"), stderr=subprocess.STDOUT
        )
        wait_for(self.ready, 180, "real ComfyUI", self.proc, self.log)
        return self

    def ready(self) -> bool:
        return requests.get(self.url + "/system_stats", timeout=2).ok

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
