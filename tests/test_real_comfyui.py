"""A core-nodes-only, model-free workflow on the emulated ComfyUI."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from farm.comfy_run import run_workflow
from farm.media import probe

from .emulated import EmulatorProcess

CORE = Path(__file__).parent / "fixtures" / "core-nodes"
VIDEO_WORKFLOW = CORE / "video_mp4.json"  # a model-free pipeline ending in CreateVideo, SaveVideo
PROFILE = {"name": "core", "gpu": "NVIDIA GeForce RTX 4090", "vram_gb": 24, "models": {},
           "model_load_s": 0.1, "step_s": 0.1}  # fmt: skip


class Emulated(EmulatorProcess):
    module = "farm.emulators.comfyui"

    def ready(self) -> bool:
        return requests.get(self.url + "/system_stats", timeout=1).ok


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    server = Emulated(tmp_path_factory.mktemp("emulated-comfyui"), PROFILE).start()
    yield server.url
    server.stop()


def test_farm_comfy_run_renders_the_core_video_workflow_on_the_emulator(emulated, tmp_path):
    """The studio's check (`farm comfy run`) of the model-free pipeline ending in SaveVideo,
    with its size, frames and frame rate set by node title as a catalog binds them."""
    sets = ("Frames.amount=9", "Resize.width=176", "Resize.height=112", "Video.fps=16")
    summary = run_workflow(emulated, VIDEO_WORKFLOW, tmp_path / "out", sets=sets)
    assert summary["status"] == "success", summary
    (output,) = summary["outputs"]
    assert output["path"].endswith(".mp4")
    info = probe(Path(output["path"]))
    assert (info.frames, info.width, info.height, info.fps) == (18, 176, 112, 16.0)
    assert summary["events"]["executed"] == 1 and summary["events"]["execution_success"] == 1
