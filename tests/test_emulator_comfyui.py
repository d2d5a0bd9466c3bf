"""The emulated ComfyUI node: a real server on loopback, driven like a real ComfyUI node.

The recorded exchanges in ../shared/reference/comfyui-transcripts are the oracle for shapes.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import websocket

from farm.catalog import load_catalog
from farm.emulators.profile import (
    failure_step,
    fits_in_vram,
    model_size,
    parse_profile,
    workload,
)
from farm.errors import ConfigError
from farm.media import probe, read_frames
from farm.workflows import bind

from .conftest import REPO

TRANSCRIPTS = REPO / "tests" / "fixtures" / "comfyui-transcripts"  # copied from shared/reference
#: shapes of the recorded success run (run_animated_with_previews.json) and /system_stats
HISTORY_KEYS = ["prompt", "outputs", "status", "meta"]
STATUS_KEYS = ["status_str", "completed", "messages"]
MESSAGES = [("execution_start", {"prompt_id", "timestamp"}),
            ("execution_cached", {"nodes", "prompt_id", "timestamp"}),
            ("execution_success", {"prompt_id", "timestamp"})]  # fmt: skip
META_KEYS = ["node_id", "display_node", "parent_node", "real_node_id"]
SYSTEM_KEYS = {
    "os", "ram_total", "ram_free", "comfyui_version", "required_frontend_version",
    "installed_templates_version", "required_templates_version", "python_version",
    "pytorch_version", "embedded_python", "argv",
}  # fmt: skip
DEVICE_KEYS = {
    "name",
    "type",
    "index",
    "vram_total",
    "vram_free",
    "torch_vram_total",
    "torch_vram_free",
}
T2V = "wan2.2_ti2v_5B_fp16.safetensors"
I2V = [f"wan2.2_i2v_{n}_noise_14B_fp8_scaled.safetensors" for n in ("high", "low")]
A14B = [f"wan2.2_t2v_{n}_noise_14B_fp8_scaled.safetensors" for n in ("high", "low")]
LTX2 = "ltx-2-19b-dev-fp8.safetensors"
GEMMA = "gemma_3_12B_it_fp4_mixed.safetensors"
PROFILE = {
    "name": "test-node",
    "gpu": "NVIDIA GeForce RTX 4090",
    "vram_gb": 24,
    "models": {
        "diffusion_models": [T2V, *I2V, *A14B],
        "text_encoders": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", GEMMA],
        "vae": ["wan_2.1_vae.safetensors", "wan2.2_vae.safetensors"],
        "clip_vision": ["clip_vision_h.safetensors"],
        "checkpoints": [LTX2],
    },
    "speed": 1.0,
    "model_load_s": 0.2,
    "step_s": 0.05,
    "failure_rate": 0.0,
}
TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(root: Path, profile: dict) -> tuple[str, subprocess.Popen]:
    """(base URL, process) of ``python -m farm.emulators.comfyui`` on a free loopback port;
    its output goes to ``root/server.log``."""
    (root / "profile.json").write_text(json.dumps(profile))
    port = free_port()
    cmd = [sys.executable, "-m", "farm.emulators.comfyui", "--port", str(port)]
    cmd += ["--profile", str(root / "profile.json"), "--data", str(root / "data")]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(url + "/system_stats", timeout=1).raise_for_status()
            return url, proc
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((root / "server.log").read_text()) from None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """Base URL of an emulated node started as ``python -m farm.emulators.comfyui``."""
    root = tmp_path_factory.mktemp("emulator")
    url, proc = start_emulator(root, PROFILE)
    yield url
    proc.terminate()
    assert proc.wait(timeout=10) == 0, (root / "server.log").read_text()


class Client:
    """A websocket session plus the HTTP calls a farm makes."""

    def __init__(self, url: str, preview_metadata: bool = False) -> None:
        self.url, self.id = url, uuid.uuid4().hex
        ws_url = url.replace("http", "ws", 1) + f"/ws?clientId={self.id}"
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT)
        self.first = json.loads(self.ws.recv())
        if preview_metadata:
            flags = {"supports_preview_metadata": True}
            self.ws.send(json.dumps({"type": "feature_flags", "data": flags}))
        self.binary: list[bytes] = []

    def submit(self, graph: dict, **extra) -> requests.Response:
        body = {"prompt": graph, "client_id": self.id, **extra}
        return requests.post(self.url + "/prompt", json=body, timeout=TIMEOUT)

    def events(self, prompt_id: str, until: str = "done") -> list[tuple[str, dict]]:
        """Text events up to the job's end (``executing`` null) or the first ``until`` event."""
        out = []
        while True:
            msg = self.ws.recv()
            if isinstance(msg, bytes):
                self.binary.append(msg)
                continue
            event = json.loads(msg)
            out.append((event["type"], event["data"]))
            data = event["data"]
            if event["type"] == until and data.get("prompt_id") == prompt_id:
                return out
            done = event["type"] == "executing" and data["node"] is None
            if done and data["prompt_id"] == prompt_id:
                return out

    def history(self, prompt_id: str) -> dict:
        return requests.get(f"{self.url}/history/{prompt_id}", timeout=TIMEOUT).json()


def wan_t2v(width=160, height=96, length=9, steps=3, seed=None, model=T2V) -> dict:
    graph = json.loads((REPO / "workflows" / "wan22_ti2v.json").read_text())
    for node in graph.values():
        title = node["_meta"]["title"]
        if title == "Video Latent":
            node["inputs"].update(width=width, height=height, length=length)
        elif title == "Sampler":
            node["inputs"].update(steps=steps, seed=seed if seed is not None else time.time_ns())
        elif title == "Diffusion Model":
            node["inputs"]["unet_name"] = model
    return graph


def strip_tracebacks(value):
    if isinstance(value, dict):
        return {k: "..." if k == "traceback" else strip_tracebacks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_tracebacks(v) for v in value]
    return value


@pytest.mark.parametrize(
    "name",
    ["error_bad_link", "error_no_outputs", "error_unknown_class", "error_value_out_of_range"],
)
def test_validation_errors_reproduce_the_transcripts(node, name):
    recorded = json.loads((TRANSCRIPTS / f"{name}.json").read_text())
    resp = requests.post(node + "/prompt", json=recorded["request"], timeout=TIMEOUT)
    assert resp.status_code == recorded["response"]["status"]
    assert strip_tracebacks(resp.json()) == strip_tracebacks(recorded["response"]["body"])


def test_tiny_wan_t2v_run_streams_events_and_saves_an_mp4(node, tmp_path):
    client = Client(node)
    assert client.first["type"] == "status" and client.first["data"]["sid"] == client.id
    resp = client.submit(wan_t2v(), prompt_id="t2v-run-1")
    assert resp.status_code == 200
    body = resp.json()
    assert body["prompt_id"] == "t2v-run-1" and body["node_errors"] == {}
    events = client.events("t2v-run-1")
    types = [t for t, _ in events]
    mine = [t for t, d in events if d.get("prompt_id") == "t2v-run-1"]
    assert mine[:2] == ["execution_start", "execution_cached"]
    assert types[-3:] == ["execution_success", "status", "executing"]
    steps = [d["value"] for t, d in events if t == "progress"]
    assert steps == [1, 2, 3] and all(d["max"] == 3 for t, d in events if t == "progress")
    for i, (kind, data) in enumerate(events):  # per node: progress_state, then executing
        if kind == "executing" and data["node"] is not None:
            state = events[i - 1]
            assert state[0] == "progress_state"
            assert state[1]["nodes"][data["node"]]["state"] == "running"
    (executed,) = [d for t, d in events if t == "executed"]
    assert executed["node"] == "50" and executed["output"]["animated"] == [True]
    previews = [m for m in client.binary if struct.unpack(">II", m[:8]) == (1, 1)]
    assert len(previews) == 3 and all(m[8:10] == b"\xff\xd8" for m in previews)

    entry = client.history("t2v-run-1")["t2v-run-1"]
    assert list(entry) == HISTORY_KEYS and list(entry["status"]) == STATUS_KEYS
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [(m[0], set(m[1])) for m in entry["status"]["messages"]] == MESSAGES
    assert entry["prompt"][1] == "t2v-run-1" and entry["prompt"][3] == {"client_id": client.id}
    assert entry["prompt"][4] == ["50"] and list(entry["meta"]["50"]) == META_KEYS
    (item,) = entry["outputs"]["50"]["images"]
    assert item["subfolder"] == "farm" and item["type"] == "output"
    assert item["filename"].startswith("shot_") and item["filename"].endswith("_.mp4")

    video = requests.get(node + "/view", params=item, timeout=TIMEOUT)
    assert video.status_code == 200 and video.headers["Content-Type"] == "video/mp4"
    (tmp_path / "clip.mp4").write_bytes(video.content)
    info = probe(tmp_path / "clip.mp4")
    assert (info.frames, info.width, info.height) == (9, 160, 96)
    assert info.fps == pytest.approx(24.0)  # Wan 2.2 TI2V-5B's graph: 24 fps

    again = client.submit(wan_t2v(seed=entry["prompt"][2]["3"]["inputs"]["seed"]))
    rerun = client.events(again.json()["prompt_id"])
    cached = next(d for t, d in rerun if t == "execution_cached")
    assert set(cached["nodes"]) == set(entry["prompt"][2])  # identical graph: all cached
    assert [d["output"] for t, d in rerun if t == "executed"] == [executed["output"]]


def wan22_a14b(steps: int = 4, seed: int = 1) -> dict:
    """workflows/wan22_t2v.json (two experts, two KSamplerAdvanced) bound at test size."""
    graph = json.loads((REPO / "workflows" / "wan22_t2v.json").read_text())
    params = {"width": 160, "height": 96, "length": 9, "steps": steps, "seed": seed,
              "switch_step": steps // 2, "model": A14B[0], "model2": A14B[1]}  # fmt: skip
    return bind(graph, params, "wan22_t2v", load_catalog().bindings("wan22_t2v"))


def test_a_two_model_graph_samples_in_two_passes_and_loads_each_model(tmp_path):
    """Wan 2.2 A14B: the high-noise pass runs the first half of the steps, the low-noise
    pass the rest, and the video comes out of the second. The node loads each model it
    does not hold (both at first), keeps the models of its last prompt, and loads both
    again after a prompt that used another model."""
    url, proc = start_emulator(tmp_path, PROFILE)
    try:
        client = Client(url)
        pid = client.submit(wan22_a14b(), prompt_id="a14b-1").json()["prompt_id"]
        events = client.events(pid)
        progress = [(d["node"], d["value"], d["max"]) for t, d in events if t == "progress"]
        assert progress == [("57", 1, 2), ("57", 2, 2), ("58", 1, 2), ("58", 2, 2)]
        (item,) = client.history(pid)[pid]["outputs"]["50"]["images"]
        (tmp_path / "a14b.mp4").write_bytes(requests.get(url + "/view", params=item,
                                                         timeout=TIMEOUT).content)  # fmt: skip
        info = probe(tmp_path / "a14b.mp4")
        assert (info.frames, info.width, info.height) == (9, 160, 96)
        assert info.fps == pytest.approx(16.0)
        for n, graph in enumerate([wan22_a14b(seed=2), wan_t2v(), wan22_a14b(seed=3)]):
            client.events(client.submit(graph, prompt_id=f"next-{n}").json()["prompt_id"])
        jobs = requests.get(url + "/emulator/jobs", timeout=TIMEOUT).json()["jobs"]
        loaded = [j["details"]["loaded_models"] for j in jobs]
        assert loaded == [A14B, [], [T2V], A14B]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ltx2(width=192, height=128, length=17, steps=3, fps=24, model=LTX2, name="ltx2_t2v") -> dict:
    """workflows/ltx2_t2v.json (LTX-2's audio-video graph) bound at test size."""
    graph = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    params = {"width": width, "height": height, "length": length, "steps": steps, "fps": fps,
              "seed": time.time_ns() % 2**32, "model": model}  # fmt: skip
    return bind(graph, params, name, load_catalog().bindings(name))


def audio_stream(path: Path) -> dict:
    """The first audio stream of ``path`` as ffprobe describes it ({} for none)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries",
         "stream=codec_name,sample_rate,channels,duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    streams = json.loads(out.stdout).get("streams", [])
    return streams[0] if streams else {}


def test_ltx2_samples_audio_and_video_in_one_latent_and_saves_both(node, tmp_path):
    """LTX-2's graph: one SamplerCustomAdvanced run over the audio-video latent (a step of
    progress each), the video decoded on its 8n+1 frame grid from 32-pixel cells, the audio
    decoded by the audio VAE and muxed into the mp4 at 24 kHz, cut to the video's length."""
    client = Client(node)
    pid = client.submit(ltx2(), prompt_id="ltx2-run-1").json()["prompt_id"]
    events = client.events(pid)
    progress = [(d["node"], d["value"], d["max"]) for t, d in events if t == "progress"]
    assert progress == [("41", 1, 3), ("41", 2, 3), ("41", 3, 3)]
    (item,) = client.history(pid)[pid]["outputs"]["75"]["images"]
    path = tmp_path / "ltx2.mp4"
    path.write_bytes(requests.get(node + "/view", params=item, timeout=TIMEOUT).content)
    info = probe(path)
    assert (info.frames, info.width, info.height, info.fps) == (17, 192, 128, 24.0)
    audio = audio_stream(path)
    assert (audio["codec_name"], audio["sample_rate"], audio["channels"]) == ("aac", "24000", 2)
    assert float(audio["duration"]) == pytest.approx(17 / 24, abs=0.05)


def test_ltx2_snaps_off_grid_sizes_as_comfyui_does_and_refuses_out_of_range_ones(node, tmp_path):
    """Width and height go to 32-pixel cells and length to 8n+1 frames silently (ComfyUI
    checks no step); below EmptyLTXVLatentVideo's minimum or above LTXVEmptyLatentAudio's
    1000 frames the prompt is refused naming the node and input."""
    client = Client(node)
    pid = client.submit(ltx2(width=200, height=140, length=20, steps=1)).json()["prompt_id"]
    client.events(pid)
    (item,) = client.history(pid)[pid]["outputs"]["75"]["images"]
    path = tmp_path / "snapped.mp4"
    path.write_bytes(requests.get(node + "/view", params=item, timeout=TIMEOUT).content)
    assert (probe(path).frames, probe(path).width, probe(path).height) == (17, 192, 128)
    small = client.submit(ltx2(width=32)).json()
    (error,) = small["node_errors"]["43"]["errors"]
    assert (error["type"], error["message"]) == (
        "value_smaller_than_min",
        "Value 32 smaller than min of 64",
    )
    long = client.submit(ltx2(length=1001)).json()
    (error,) = long["node_errors"]["51"]["errors"]
    assert error["type"] == "value_bigger_than_max" and error["details"] == "frames_number"
    assert "43" not in long["node_errors"]  # the video latent takes 1001 frames


def test_ltx2_checkpoint_the_node_lacks_fails_each_loader_that_names_it(node):
    resp = Client(node).submit(ltx2(model="ltx-2-19b-distilled-fp8.safetensors"))
    assert resp.status_code == 400
    errors = resp.json()["node_errors"]
    assert sorted(errors) == ["1", "48", "60"]  # checkpoint, audio VAE and text encoder loaders
    for nid in errors:
        (error,) = errors[nid]["errors"]
        assert (
            error["type"] == "value_not_in_list"
            and error["extra_info"]["input_name"] == "ckpt_name"
        )


def test_ltx2_classes_describe_themselves_as_comfyui_s_source_does(node):
    """/object_info of the LTX-2 classes: inputs, ranges, defaults and outputs of
    comfy_extras/nodes_lt.py and nodes_lt_audio.py; loaders list the node's files."""
    info = requests.get(node + "/object_info", timeout=TIMEOUT).json()
    video = info["EmptyLTXVLatentVideo"]
    assert video["input"]["required"]["width"] == [
        "INT",
        {"default": 768, "min": 64, "max": 16384, "step": 32},
    ]
    assert video["input"]["required"]["length"] == [
        "INT",
        {"default": 97, "min": 1, "max": 16384, "step": 8},
    ]
    assert (video["output"], video["python_module"]) == (["LATENT"], "comfy_extras.nodes_lt")
    audio = info["LTXVEmptyLatentAudio"]
    assert audio["input_order"]["required"] == [
        "frames_number",
        "frame_rate",
        "batch_size",
        "audio_vae",
    ]
    assert audio["input"]["required"]["frames_number"][1]["max"] == 1000
    assert audio["input"]["required"]["frame_rate"][0] == "INT"
    assert info["LTXVConditioning"]["input"]["required"]["frame_rate"] == [
        "FLOAT", {"default": 25.0, "min": 0.0, "max": 1000.0, "step": 0.01}]  # fmt: skip
    assert info["LTXVSeparateAVLatent"]["output_name"] == ["video_latent", "audio_latent"]
    assert info["SamplerCustomAdvanced"]["output_name"] == ["output", "denoised_output"]
    assert info["LTXVAudioVAEDecode"]["output"] == ["AUDIO"]
    assert info["LTXAVTextEncoderLoader"]["input"]["required"]["text_encoder"][1]["options"] == [
        GEMMA, "umt5_xxl_fp8_e4m3fn_scaled.safetensors"]  # fmt: skip
    assert info["LTXVAudioVAELoader"]["input"]["required"]["ckpt_name"][1]["options"] == [LTX2]
    scheduler = info["LTXVScheduler"]["input"]
    assert list(scheduler["required"]) == [
        "steps",
        "max_shift",
        "base_shift",
        "stretch",
        "terminal",
    ]
    assert list(scheduler["optional"]) == ["latent"]


def test_ltx2_image_to_video_starts_from_the_uploaded_image(node, tmp_path):
    """ltx2_i2v: the start image, preprocessed and encoded into the latent's first frame,
    is the clip's first frame at the latent's size."""
    image = np.zeros((256, 384, 3), np.uint8)
    image[:, :192] = (0, 0, 255)  # red left half, green right half (BGR)
    image[:, 192:] = (0, 255, 0)
    ok, png = cv2.imencode(".png", image)
    files = {"image": ("ltx-start.png", png.tobytes(), "image/png")}
    up = requests.post(
        node + "/upload/image", files=files, data={"subfolder": "farm"}, timeout=TIMEOUT
    )
    graph = ltx2(name="ltx2_i2v", steps=2)
    graph = bind(
        graph,
        {"start_image": "farm/ltx-start.png"},
        "ltx2_i2v",
        load_catalog().bindings("ltx2_i2v"),
    )
    client = Client(node)
    pid = client.submit(graph).json()["prompt_id"]
    client.events(pid)
    (item,) = client.history(pid)[pid]["outputs"]["75"]["images"]
    path = tmp_path / "i2v.mp4"
    path.write_bytes(requests.get(node + "/view", params=item, timeout=TIMEOUT).content)
    first = read_frames(path, 1)[0]
    assert up.status_code == 200 and first.shape == (128, 192, 3)
    left, right = first[64:, 20:60].mean(axis=(0, 1)), first[64:, 130:170].mean(axis=(0, 1))
    assert left[2] > 150 > left[1] and right[1] > 150 > right[2]


def test_api_prefix_and_static_routes(node):
    stats = requests.get(node + "/api/system_stats", timeout=TIMEOUT).json()
    assert set(stats["system"]) == SYSTEM_KEYS
    (device,) = stats["devices"]
    assert set(device) == DEVICE_KEYS and device["type"] == "cuda"
    assert device["vram_total"] == 24 * 2**30 and "RTX 4090" in device["name"]
    assert requests.get(node + "/api/prompt", timeout=TIMEOUT).json() == {
        "exec_info": {"queue_remaining": 0}
    }
    assert requests.get(node + "/api/models/diffusion_models", timeout=TIMEOUT).json() == sorted(
        PROFILE["models"]["diffusion_models"]
    )
    assert requests.get(node + "/models/nope", timeout=TIMEOUT).status_code == 404
    features = requests.get(node + "/features", timeout=TIMEOUT).json()
    assert features["supports_preview_metadata"] is True
    info = requests.get(node + "/api/object_info/UNETLoader", timeout=TIMEOUT).json()["UNETLoader"]
    assert info["input"]["required"]["unet_name"][0] == sorted(
        PROFILE["models"]["diffusion_models"]
    )
    assert info["input_order"] == {"required": ["unet_name", "weight_dtype"]}
    assert info["output"] == ["MODEL"] and info["output_node"] is False
    assert requests.get(node + "/object_info/NotARealNode", timeout=TIMEOUT).json() == {}
    every = requests.get(node + "/object_info", timeout=TIMEOUT).json()
    used = {
        n["class_type"]
        for w in (REPO / "workflows").glob("*.json")
        for n in json.loads(w.read_text()).values()
    }
    assert used <= set(every)
    assert every["SaveVideo"]["output_node"] is True


def test_malformed_json_origin_check_and_partial_validity(node):
    resp = requests.post(node + "/prompt", data=b"{not json", timeout=TIMEOUT)
    assert resp.status_code == 500 and resp.headers["Content-Type"].startswith("text/plain")
    headers = {"Origin": "http://evil.example.com"}
    assert requests.get(node + "/queue", headers=headers, timeout=TIMEOUT).status_code == 403
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},  # no filename_prefix
    }
    client = Client(node)
    resp = client.submit(graph)
    assert resp.status_code == 200
    errors = resp.json()["node_errors"]
    assert errors["3"]["errors"][0]["type"] == "required_input_missing"
    assert errors["3"]["dependent_outputs"] == ["3"]
    client.events(resp.json()["prompt_id"])
    entry = client.history(resp.json()["prompt_id"])[resp.json()["prompt_id"]]
    assert list(entry["outputs"]) == ["2"] and entry["outputs"]["2"]["images"][0]["type"] == "temp"


def test_model_the_node_lacks_is_value_not_in_list(node):
    resp = Client(node).submit(wan_t2v(model="hunyuanvideo1.5_720p_t2v_fp16.safetensors"))
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = body["node_errors"]["37"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["details"].startswith(
        "unet_name: 'hunyuanvideo1.5_720p_t2v_fp16.safetensors' not in ["
    )
    assert error["extra_info"]["input_name"] == "unet_name"
    assert body["node_errors"]["37"]["dependent_outputs"] == ["50"]


def test_missing_start_image_is_a_custom_validation_error(node):
    graph = json.loads((REPO / "workflows" / "wan22_i2v.json").read_text())
    graph["52"]["inputs"]["image"] = "farm/missing.png"
    resp = Client(node).submit(graph)
    assert resp.status_code == 400
    (error,) = resp.json()["node_errors"]["52"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "image - Invalid image file: farm/missing.png"


def test_huge_job_runs_out_of_memory(node):
    client = Client(node)
    resp = client.submit(wan_t2v(width=1920, height=1088, length=161))
    assert resp.status_code == 200
    pid = resp.json()["prompt_id"]
    events = client.events(pid)
    (error,) = [d for t, d in events if t == "execution_error"]
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith("Allocation on device")
    assert "ran out of memory" in error["exception_message"]
    assert error["node_id"] == "3" and error["node_type"] == "KSampler"
    assert error["current_inputs"]["steps"] == [3] and isinstance(error["traceback"], list)
    status = client.history(pid)[pid]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_error"


def odd_video() -> dict:
    """A model-free graph that fails in SaveVideo (h264 needs an even width)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 65, "height": 64, "batch_size": 3, "color": 0},
        },
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {
            "class_type": "SaveVideo",
            "inputs": {
                "video": ["2", 0],
                "filename_prefix": "odd/x",
                "format": "mp4",
                "codec": "h264",
            },
        },
    }


def test_odd_size_fails_in_save_video(node):
    client = Client(node)
    pid = client.submit(odd_video()).json()["prompt_id"]
    (error,) = [d for t, d in client.events(pid) if t == "execution_error"]
    assert error["node_type"] == "SaveVideo" and "not divisible by 2" in error["exception_message"]
    assert sorted(error["executed"]) == ["1", "2"]


@pytest.fixture(scope="module")
def new_node(tmp_path_factory):
    """An emulated node of the newer generation (``"api": "0.38"``: the job API)."""
    root = tmp_path_factory.mktemp("emulator-038")
    url, proc = start_emulator(root, {**PROFILE, "name": "new-node", "api": "0.38"})
    yield url
    proc.terminate()
    assert proc.wait(timeout=10) == 0, (root / "server.log").read_text()


def test_queue_listing_delete_and_interrupt(node):
    client = Client(node, preview_metadata=True)
    assert json.loads(client.ws.recv())["type"] == "feature_flags"
    long_job = client.submit(wan_t2v(width=832, height=480, length=81, steps=200), prompt_id="long")
    assert long_job.status_code == 200
    client.events("long", until="progress")
    pending = client.submit(wan_t2v(), prompt_id="pending")
    queue = requests.get(node + "/queue", timeout=TIMEOUT).json()
    assert [item[1] for item in queue["queue_running"]] == ["long"]
    assert [item[1] for item in queue["queue_pending"]] == ["pending"]
    number, pid, graph, extra, outputs = queue["queue_pending"][0]
    assert pid == "pending" and extra == {"client_id": client.id} and outputs == ["50"]
    assert number == pending.json()["number"] and graph["50"]["class_type"] == "SaveVideo"

    requests.post(node + "/queue", json={"delete": ["pending"]}, timeout=TIMEOUT)
    queue = requests.get(node + "/queue", timeout=TIMEOUT).json()
    assert queue["queue_pending"] == [] and client.history("pending") == {}
    assert client.history("long") == {}  # running: no history yet

    assert requests.post(node + "/interrupt", json={"prompt_id": "long"}, timeout=TIMEOUT).ok
    events = client.events("long")
    (stop,) = [d for t, d in events if t == "execution_interrupted"]
    assert stop["node_id"] == "3" and stop["node_type"] == "KSampler" and "timestamp" in stop
    status = client.history("long")["long"]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_interrupted"
    typed = [m for m in client.binary if struct.unpack(">I", m[:4])[0] == 4]
    assert typed, "previews with metadata after the feature flag"
    size = struct.unpack(">I", typed[0][4:8])[0]
    meta = json.loads(typed[0][8 : 8 + size])
    assert meta["prompt_id"] == "long" and meta["node_id"] == "3"
    assert meta["image_type"] == "image/jpeg" and typed[0][8 + size : 10 + size] == b"\xff\xd8"


def test_upload_naming_rule(node):
    def upload(data: bytes) -> dict:
        files = {"image": ("start.png", data, "image/png")}
        resp = requests.post(
            node + "/upload/image", files=files, data={"subfolder": "farm"}, timeout=TIMEOUT
        )
        assert resp.status_code == 200
        return resp.json()

    assert upload(b"one") == {"name": "start.png", "subfolder": "farm", "type": "input"}
    assert upload(b"one")["name"] == "start.png"  # same name, same bytes: kept
    assert upload(b"two")["name"] == "start (1).png"  # same name, other bytes: renamed
    assert upload(b"three")["name"] == "start (2).png"
    got = requests.get(
        node + "/view", params={"filename": "start (1).png", "subfolder": "farm", "type": "input"}
    )
    assert got.content == b"two"


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"filename": "../profile.json"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "passwd", "subfolder": "../../../../etc"}, 403),
        ({"filename": "example.png", "type": "secret"}, 400),
        ({"filename": "nothing-here.mp4"}, 404),
        ({"filename": "example.png", "type": "input"}, 200),
    ],
)
def test_view_refuses_path_escapes(node, params, status):
    assert requests.get(node + "/view", params=params, timeout=TIMEOUT).status_code == status


def test_profile_errors_name_the_field_and_the_fix():
    bad = {**PROFILE, "vram_gb": 0, "speed": -1, "failure_rate": 2, "colour": "red"}
    bad["models"] = {"unets": ["x"]}
    with pytest.raises(ConfigError) as err:
        parse_profile(bad, "bad.json")
    text = str(err.value)
    for field in ("vram_gb", "speed", "failure_rate", "'colour'", "models.unets"):
        assert field in text
    assert "use a number of gigabytes > 0" in text


def test_the_api_generation_is_checked():
    assert parse_profile(PROFILE).api == "0.3" and not parse_profile(PROFILE).job_api
    assert parse_profile({**PROFILE, "api": "0.38"}).job_api
    with pytest.raises(ConfigError, match=r"api: got '0\.4'; use \"0\.3\" \(ComfyUI 0\.3\.64"):
        parse_profile({**PROFILE, "api": "0.4"}, "bad.json")


def test_vram_model_fits_demo_sizes_and_refuses_huge_ones():
    profile = json.loads((REPO / "deploy" / "nodes" / "gpu-a.json").read_text())
    for file in profile["models"]["diffusion_models"]:
        assert fits_in_vram(model_size(file), 24, workload(832, 480, 81))
        assert not fits_in_vram(model_size(file), 24, workload(1920, 1088, 161))


def test_failures_are_deterministic_per_prompt_id():
    flaky = parse_profile({**PROFILE, "failure_rate": 0.5})
    ids = [f"job-{i}" for i in range(200)]
    first = [failure_step(flaky, i, 30) for i in ids]
    assert first == [failure_step(flaky, i, 30) for i in ids]
    assert 60 < sum(f is not None for f in first) < 140 and {f for f in first if f} == {15}
    assert failure_step(parse_profile(PROFILE), "job-1", 30) is None


def test_gpu_waits_absorb_the_emulator_s_own_cpu_work():
    """A job's waits are kept on a schedule from its start: time the emulator spent on its
    own work (here 0.2 s, as if already gone) comes off the next wait, and a wait cannot
    go below zero when that work took longer than the modelled time."""
    from farm.emulators.profile import Pace

    pace = Pace()
    pace.start -= 0.2  # 0.2 s of CPU work since the job started
    first = pace.seconds(0.5)
    assert 0.25 <= first <= 0.3
    pace.start -= 1.0  # then a second of CPU work, longer than the next 0.5 s wait
    assert pace.seconds(0.5) == 0.0
    assert pace.owed == pytest.approx(1.0)


# -- the two API generations --------------------------------------------------------------


def uid() -> str:
    return str(uuid.uuid4())


def test_the_old_generation_has_no_job_api_and_takes_a_duplicate_prompt_id(node):
    stats = requests.get(node + "/system_stats", timeout=TIMEOUT).json()
    assert stats["system"]["comfyui_version"] == "0.3.64"
    for path in ("/api/jobs", f"/api/jobs/{uid()}"):
        assert requests.get(node + path, timeout=TIMEOUT).status_code == 404
    assert requests.post(node + f"/api/jobs/{uid()}/cancel", timeout=TIMEOUT).status_code == 404
    client, pid = Client(node), uid()
    assert client.submit(wan_t2v(seed=1), prompt_id=pid).status_code == 200
    client.events(pid)
    again = client.submit(wan_t2v(seed=2), prompt_id=pid)  # accepted: runs and overwrites
    assert again.status_code == 200 and again.json()["prompt_id"] == pid
    client.events(pid)
    assert client.history(pid)[pid]["prompt"][2]["3"]["inputs"]["seed"] == 2


def test_the_old_generation_interrupts_whatever_runs_whatever_prompt_id_is_named(node):
    client, running = Client(node), uid()
    client.submit(wan_t2v(width=832, height=480, length=81, steps=200), prompt_id=running)
    client.events(running, until="progress")
    requests.post(node + "/interrupt", json={"prompt_id": uid()}, timeout=TIMEOUT)
    assert any(t == "execution_interrupted" for t, _ in client.events(running))


def test_the_new_generation_interrupts_only_the_prompt_id_named(new_node):
    client, running = Client(new_node), uid()
    client.submit(wan_t2v(width=832, height=480, length=81, steps=200), prompt_id=running)
    client.events(running, until="progress")
    requests.post(new_node + "/interrupt", json={"prompt_id": uid()}, timeout=TIMEOUT)
    client.events(running, until="progress")  # a foreign id interrupts nothing
    client.events(running, until="progress")
    requests.post(new_node + "/interrupt", json={"prompt_id": running}, timeout=TIMEOUT)
    assert any(t == "execution_interrupted" for t, _ in client.events(running))


def test_the_new_generation_refuses_a_duplicate_or_malformed_prompt_id(new_node):
    stats = requests.get(new_node + "/system_stats", timeout=TIMEOUT).json()
    assert stats["system"]["comfyui_version"] == "0.38.0"
    client, pid = Client(new_node), uid()
    first = client.submit(wan_t2v(), prompt_id=pid)
    assert first.status_code == 200 and first.json()["prompt_id"] == pid
    queued = client.submit(wan_t2v(), prompt_id=pid)  # while queued or running
    assert queued.status_code == 409 and queued.json()["error"]["type"] == "duplicate_prompt_id"
    client.events(pid)
    assert client.submit(wan_t2v(), prompt_id=pid).status_code == 409  # in history
    for bad in ("not-a-uuid", pid.upper()):
        resp = client.submit(wan_t2v(), prompt_id=bad)
        assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_prompt_id"
    assert client.submit(wan_t2v()).status_code == 200  # no id: the server makes one
    flags = requests.get(new_node + "/features", timeout=TIMEOUT).json()
    assert flags["supports_preview_metadata"] and "node_replacements" in flags


def test_the_job_api_lists_pages_and_describes_jobs(new_node):
    client = Client(new_node)
    done, failed = uid(), uid()
    client.submit(wan_t2v(), prompt_id=done)
    client.events(done)
    client.submit(odd_video(), prompt_id=failed)
    client.events(failed)
    job = requests.get(f"{new_node}/api/jobs/{done}", timeout=TIMEOUT).json()
    assert job["id"] == done and job["status"] == "completed" and job["outputs_count"] == 1
    assert job["execution_end_time"] >= job["execution_start_time"] > 0
    assert job["preview_output"]["mediaType"] == "images" and job["preview_output"]["nodeId"]
    assert job["outputs"] == client.history(done)[done]["outputs"]
    assert job["execution_status"] == client.history(done)[done]["status"]
    assert job["workflow"]["prompt"]["3"]["class_type"] == "KSampler"
    assert isinstance(job["create_time"], int) and "execution_error" not in job
    bad = requests.get(f"{new_node}/api/jobs/{failed}", timeout=TIMEOUT).json()
    assert bad["status"] == "failed" and bad["execution_error"]["node_type"] == "SaveVideo"
    also = requests.get(f"{new_node}/api/api/jobs/{done}", timeout=TIMEOUT)  # as ComfyUI does
    assert also.status_code == 200 and also.json()["id"] == done
    missing = requests.get(f"{new_node}/api/jobs/{uid()}", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json() == {"error": "Job not found"}

    page = requests.get(new_node + "/api/jobs", params={"limit": 1, "sort_order": "asc"},
                        timeout=TIMEOUT).json()  # fmt: skip
    total = page["pagination"]["total"]
    assert page["pagination"] == {"offset": 0, "limit": 1, "total": total, "has_more": total > 1}
    assert len(page["jobs"]) == 1 and "outputs" not in page["jobs"][0]
    failures = requests.get(new_node + "/api/jobs", params={"status": "failed"},
                            timeout=TIMEOUT).json()["jobs"]  # fmt: skip
    assert [j["id"] for j in failures] == [failed]
    newest = requests.get(new_node + "/api/jobs", timeout=TIMEOUT).json()["jobs"][0]
    assert newest["id"] == failed  # created_at, newest first
    for query, error in [({"status": "done"}, "Invalid status value(s): done"),
                         ({"sort_by": "name"}, "sort_by must be"), ({"limit": 0}, "positive"),
                         ({"limit": "x"}, "limit must be an integer")]:  # fmt: skip
        resp = requests.get(new_node + "/api/jobs", params=query, timeout=TIMEOUT)
        assert resp.status_code == 400 and error in resp.json()["error"]


def test_the_job_api_cancels_one_job_by_id_and_leaves_the_others(new_node):
    client = Client(new_node)
    running, waiting, other = uid(), uid(), uid()
    client.submit(wan_t2v(width=832, height=480, length=81, steps=200), prompt_id=running)
    client.events(running, until="progress")
    client.submit(wan_t2v(), prompt_id=waiting)
    client.submit(wan_t2v(), prompt_id=other)

    def cancel(pid: str) -> dict:
        return requests.post(f"{new_node}/api/jobs/{pid}/cancel", timeout=TIMEOUT).json()

    assert cancel(waiting) == {"cancelled": True}
    assert requests.get(f"{new_node}/api/jobs/{waiting}", timeout=TIMEOUT).status_code == 404
    client.events(running, until="progress")  # dequeuing a waiting job interrupts nothing
    assert cancel(running) == {"cancelled": True}
    assert any(t == "execution_interrupted" for t, _ in client.events(running))
    job = requests.get(f"{new_node}/api/jobs/{running}", timeout=TIMEOUT).json()
    assert job["status"] == "cancelled"
    client.events(other)
    assert client.history(other)[other]["status"]["status_str"] == "success"
    assert cancel(running) == {"cancelled": False} and cancel(uid()) == {"cancelled": False}
    batch = requests.post(new_node + "/api/jobs/cancel", json={"job_ids": [other, "x"]},
                          timeout=TIMEOUT)  # fmt: skip
    assert batch.status_code == 400 and batch.json()["invalid_ids"] == ["x"]
    batch = requests.post(new_node + "/api/jobs/cancel", json={"job_ids": [other, uid()]},
                          timeout=TIMEOUT)  # fmt: skip
    assert batch.json() == {"cancelled": False}  # finished and unknown ids are no-ops
