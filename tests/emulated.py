"""An emulated GPU node (ComfyUI or WanGP) run as a subprocess on a free loopback port."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from farm.local import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent


class EmulatorProcess:
    """``python -m MODULE --port P --profile F --data D [args]``, with the fault route."""

    module = ""

    def __init__(self, root: Path, profile: dict, *args: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.profile = root / "profile.json"
        self.profile.write_text(json.dumps(profile))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = root / "data"
        self.log = root / "server.log"
        self.args = args
        self.proc: subprocess.Popen | None = None

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self):
        cmd = [sys.executable, "-m", self.module, "--port", str(self.port)]
        cmd += ["--profile", str(self.profile), "--data", str(self.data), *self.args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=self.log.open("a"), stderr=subprocess.STDOUT
        )
        wait_for(self.ready, 20, "emulator", self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def faults(self, faults: dict) -> None:
        resp = requests.put(self.url + "/emulator/faults", json=faults, timeout=5)
        assert resp.status_code == 200, resp.text
