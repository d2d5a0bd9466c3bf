"""A core-nodes-only, model-free workflow on a REAL ComfyUI server and on the emulated one.

The real server is ComfyUI's own source as the package registry carries it (``make
comfyui``: upstream commit a28a9dc8, March 2024), run with ``--cpu`` on loopback. Both
servers get the same graph over the same wire protocol; the test asserts the same
observable results: websocket message sequence, history entry, output file kind, frame
count, size, frame rate and colour. What the emulator adds because it follows the newer
ComfyUI 0.3.64 is named below and nothing else may differ.
"""

from __future__ import annotations

import json
import uuid
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import requests
import websocket
from PIL import Image

from farm.backends import comfyui as comfy
from farm.backends.comfyui import ComfyClient
from farm.comfy_run import run_workflow
from farm.local import EmulatedNode, LocalFarm
from farm.media import probe, read_video
from farm.runtime import get_runtime
from farm.scene import parse_scene
from farm.submit import enqueue

from .conftest import REPO, pointed_at
from .emulated import EmulatorProcess
from .real_comfyui import RealComfyUI
from .test_e2e import wait_done

CORE = Path(__file__).parent / "fixtures" / "core-nodes"
WORKFLOW = CORE / "animated_webp.json"  # the ComfyUI of March 2024 has no SaveVideo
VIDEO_WORKFLOW = CORE / "video_mp4.json"  # a like pipeline ending in CreateVideo, SaveVideo
CHECK = REPO / "examples" / "core-check"  # the studio check: catalog, flip-book, scene
PROFILE = {"name": "core", "gpu": "NVIDIA GeForce RTX 4090", "vram_gb": 24, "models": {},
           "model_load_s": 0.1, "step_s": 0.1}  # fmt: skip
TIMEOUT = 30
# what ComfyUI added after March 2024 (the emulator follows 0.3.64): message types, fields
NEWER_TYPES = {"progress_state", "execution_success"}
NEWER_FIELDS = {"timestamp", "display_node"}


class Emulated(EmulatorProcess):
    module = "farm.emulators.comfyui"

    def ready(self) -> bool:
        return requests.get(self.url + "/system_stats", timeout=1).ok


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    server = RealComfyUI(tmp_path_factory.mktemp("real-comfyui")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    server = Emulated(tmp_path_factory.mktemp("emulated-comfyui"), PROFILE).start()
    yield server.url
    server.stop()


def graph(color: int) -> dict:
    g = json.loads(WORKFLOW.read_text())
    g["1"]["inputs"]["color"] = color
    return g


def run_raw(url: str, prompt: dict) -> tuple[list[tuple[str, set[str]]], dict, bytes]:
    """Queue ``prompt`` as a plain client would; the websocket messages (type, fields) up to
    the final ``executing`` with ``node: null``, the history entry and the saved file."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"{url.replace('http', 'ws')}/ws?clientId={client_id}",
                                     timeout=TIMEOUT)  # fmt: skip
    try:
        resp = requests.post(url + "/prompt", json={"prompt": prompt, "client_id": client_id},
                             timeout=TIMEOUT)  # fmt: skip
        assert resp.status_code == 200 and resp.json()["node_errors"] == {}, resp.text
        prompt_id = resp.json()["prompt_id"]
        messages: list[tuple[str, set[str]]] = []
        while True:
            frame = ws.recv()
            if isinstance(frame, bytes):  # no sampler, no previews
                messages.append(("binary", set()))
                continue
            msg = json.loads(frame)
            messages.append((msg["type"], set(msg["data"])))
            data = msg["data"]
            if msg["type"] == "executing" and data["node"] is None:
                assert data["prompt_id"] == prompt_id
                break
    finally:
        ws.close()
    entry = requests.get(f"{url}/history/{prompt_id}", timeout=TIMEOUT).json()[prompt_id]
    (item,) = entry["outputs"]["7"]["images"]
    view = requests.get(url + "/view", params=item, timeout=TIMEOUT)
    assert view.status_code == 200
    return messages, entry, view.content


def animation(data: bytes) -> dict:
    """What a viewer sees of an animated WebP: format, size, frames, frame time, colours."""
    image = Image.open(BytesIO(data))
    durations, colours = set(), []
    for index in range(image.n_frames):
        image.seek(index)
        image.load()
        durations.add(image.info["duration"])
        colours.append(np.asarray(image.convert("RGB"), np.float64).mean(axis=(0, 1)))
    return {"format": image.format, "size": image.size, "frames": image.n_frames,
            "durations": durations, "colours": np.array(colours)}  # fmt: skip


def described(url: str, class_type: str) -> dict:
    """A class as ``/object_info`` shows it; ComfyUI raised its size limit from 8192 to
    16384 after March 2024 (the emulator has the newer one), so limits read "MAX" here."""
    info = requests.get(f"{url}/object_info/{class_type}", timeout=TIMEOUT).json()[class_type]
    text = json.dumps({key: info[key] for key in ("input", "output", "category", "output_node")})
    return json.loads(
        text.replace('"max": 8192', '"max": "MAX"').replace('"max": 16384', '"max": "MAX"')
    )


def test_core_node_classes_are_described_as_on_real_comfyui(real, emulated):
    for class_type in sorted({node["class_type"] for node in graph(0).values()}):
        assert described(emulated, class_type) == described(real, class_type), class_type


def test_core_workflow_renders_the_same_on_real_comfyui_and_the_emulator(real, emulated):
    color = 0x3366CC
    real_msgs, real_entry, real_file = run_raw(real, graph(color))
    emu_msgs, emu_entry, emu_file = run_raw(emulated, graph(color))

    # the same messages in the same order, each with the same fields (plus newer ones)
    newer_removed = [(t, f - NEWER_FIELDS) for t, f in emu_msgs if t not in NEWER_TYPES]
    assert newer_removed == real_msgs
    kinds = [t for t, _ in real_msgs]
    assert kinds.count("executing") == 8 and kinds.count("executed") == 1
    assert (
        kinds.index("execution_start") < kinds.index("execution_cached") < kinds.index("executed")
    )

    # the same history entry: outputs, status, recorded messages
    for entry in (real_entry, emu_entry):
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
        (item,) = entry["outputs"]["7"]["images"]
        assert item["subfolder"] == "farm" and item["type"] == "output"
        assert item["filename"].startswith("core_") and item["filename"].endswith("_.webp")
        assert entry["outputs"]["7"]["animated"] == [True]
        assert list(entry["outputs"]) == ["7"] and entry["prompt"][2] == graph(color)
    real_kinds = [m[0] for m in real_entry["status"]["messages"]]
    emu_kinds = [m[0] for m in emu_entry["status"]["messages"] if m[0] not in NEWER_TYPES]
    assert emu_kinds == real_kinds == ["execution_start", "execution_cached"]

    # the same file: an animated WebP of 10 frames alternating the colour and its inverse,
    # scaled to 160x96, at 12 fps
    seen_real, seen_emu = animation(real_file), animation(emu_file)
    assert seen_real["format"] == seen_emu["format"] == "WEBP"
    assert seen_real["size"] == seen_emu["size"] == (160, 96)
    assert seen_real["frames"] == seen_emu["frames"] == 10
    assert seen_real["durations"] == seen_emu["durations"] == {int(1000 / 12)}
    rgb = np.array([0x33, 0x66, 0xCC])
    assert np.allclose(seen_real["colours"], [rgb, 255 - rgb] * 5, atol=1)
    assert np.allclose(seen_emu["colours"], seen_real["colours"], atol=1)


def test_farm_client_follows_a_comfyui_that_chooses_its_own_prompt_ids(real, tmp_path):
    """This ComfyUI queues the job under an id of its own: the farm finds it by the tag it
    puts in ``extra_data``, so a second delivery (a fresh client, as in another worker)
    follows the finished job instead of queueing it again."""
    comfy.CLIENT_IDS.clear()
    farm_id = str(uuid.uuid4())
    first = ComfyClient(real, TIMEOUT, 60)
    entry = first.run(graph(0x102030), farm_id, lambda *a, **k: None)
    node_id = first.node_id(farm_id)
    assert node_id != farm_id and comfy.CLIENT_IDS[real] is False
    history = requests.get(real + "/history", timeout=TIMEOUT).json()
    assert history[node_id]["prompt"][3][comfy.PROMPT_TAG] == farm_id
    assert entry["outputs"] == history[node_id]["outputs"]

    comfy.CLIENT_IDS.clear()  # a new worker process knows nothing of this server yet
    again = ComfyClient(real, TIMEOUT, 60)
    assert again.status(farm_id)[0] == "ended" and again.node_id(farm_id) == node_id
    assert again.run(graph(0x102030), farm_id, lambda *a, **k: None) == entry
    assert len(requests.get(real + "/history", timeout=TIMEOUT).json()) == len(history)
    assert again.cancel(farm_id) == "not_found"  # it is over: nothing to take off

    summary = run_workflow(real, WORKFLOW, tmp_path / "out")  # `farm comfy run`
    assert summary["status"] == "success" and len(summary["outputs"]) == 1


def scene_on(node: EmulatedNode, root: Path) -> dict:
    """Render examples/core-check/scene.json on a farm whose only node is ``node``: the
    scene's status and, per shot, what its kept clip holds (frames, size, fps, colours)."""
    env = {"FARM_CATALOG": str(CHECK / "catalog.toml"), "FARM_CACHE": "0",
           "FARM_HTTP_TIMEOUT": "20"}  # fmt: skip
    with LocalFarm(root, [node], extra_env=env) as farm, pointed_at(farm.env()):
        rt = get_runtime()
        scene = parse_scene(json.loads((CHECK / "scene.json").read_text()),
                            templates=rt.catalog.templates)  # fmt: skip
        enqueue(scene, rt)
        status = wait_done(rt, scene.id)
        clips = {}
        for shot in status["shots"]:
            path = Path(shot["outputs"]["final"])
            frames, _ = read_video(path)
            info = probe(path)
            clips[shot["id"]] = {
                "state": shot["state"],
                "probe": (info.frames, info.width, info.height, info.fps),
                "colours": np.array([f.mean(axis=(0, 1)) for f in frames]),
            }
        assembled = probe(Path(status["outputs"]["video"]))
        return {"state": status["state"], "clips": clips,
                "scene": (assembled.frames, assembled.width, assembled.height, assembled.fps)}  # fmt: skip


def test_a_core_nodes_scene_renders_on_real_comfyui_as_on_the_emulator(real, tmp_path_factory):
    """The studio check of docs/comfyui.md: the same catalog and scene on a farm whose only
    node is the real ComfyUI and on one whose only node is emulated give the same result."""
    profile = tmp_path_factory.mktemp("profile") / "core.json"
    profile.write_text(json.dumps(PROFILE))
    on_real = scene_on(EmulatedNode("comfy", None, url=real), tmp_path_factory.mktemp("real"))
    on_emulator = scene_on(EmulatedNode("comfy", profile), tmp_path_factory.mktemp("emulated"))
    history = requests.get(real + "/history", timeout=TIMEOUT).json()
    tags = [e["prompt"][3].get(comfy.PROMPT_TAG) for e in history.values()]
    scene_jobs = [e for e in history.values() if "core-check" in json.dumps(e["prompt"][2])]
    assert len(scene_jobs) == 2 and len(set(tags)) == len(tags)  # one render per shot
    for result in (on_real, on_emulator):
        assert result["state"] == "done", result
        assert result["clips"]["one"]["probe"] == (17, 192, 128, 12.0)
        assert result["clips"]["two"]["probe"] == (25, 224, 144, 12.0)
    assert on_real["scene"] == on_emulator["scene"]
    for shot in ("one", "two"):
        real_clip, emu_clip = on_real["clips"][shot], on_emulator["clips"][shot]
        assert real_clip["state"] == emu_clip["state"] == "done"
        assert np.allclose(real_clip["colours"], emu_clip["colours"], atol=2)
        # the flip-book alternates its two colours (Canvas 0x3366CC, Shade one level lighter)
        assert np.allclose(real_clip["colours"][0][::-1], [0x33, 0x66, 0xCC], atol=4)  # YUV


def test_farm_comfy_run_renders_the_core_video_workflow_on_the_emulator(emulated, tmp_path):
    """The studio's check (`farm comfy run`) of the model-free pipeline ending in SaveVideo,
    with its frames, size and frame rate set by node title as a catalog binds them."""
    sets = ("Canvas.batch_size=33", "Resize.width=176", "Resize.height=112", "Video.fps=24")
    summary = run_workflow(emulated, VIDEO_WORKFLOW, tmp_path / "out", sets=sets)
    assert summary["status"] == "success", summary
    (output,) = summary["outputs"]
    assert output["path"].endswith(".mp4")
    info = probe(Path(output["path"]))
    assert (info.frames, info.width, info.height, info.fps) == (33, 176, 112, 24.0)
    assert summary["events"]["executed"] == 1 and summary["events"]["execution_success"] == 1
