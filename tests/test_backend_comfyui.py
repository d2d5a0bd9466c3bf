"""The ComfyUI backend: parsers on recorded real exchanges, and renders on a live emulator."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from farm.backends.comfyui import (
    ComfyUIBackend,
    classify_execution_error,
    prompt_id_for,
    rejection,
    safe_name,
)
from farm.catalog import load_catalog
from farm.errors import (
    InvalidInput,
    JobCancelled,
    ModelMissing,
    NodeRejected,
    NodeUnavailable,
    OutOfMemory,
    RenderFailed,
    is_final,
)
from farm.local import wait_for
from farm.media import probe
from farm.planning import plan_job
from farm.scene import parse_scene
from farm.settings import Settings
from farm.shots import Guard

from .conftest import EXAMPLES, REPO

TRANSCRIPTS = Path(__file__).resolve().parent / "fixtures" / "comfyui-transcripts"


def transcript(name):
    return json.loads((TRANSCRIPTS / name).read_text())["response"]


def test_validation_bodies_name_node_class_and_input():
    err = rejection(400, transcript("error_value_out_of_range.json")["body"])
    assert isinstance(err, NodeRejected)
    assert "node 1 (EmptyImage) input 'width'" in str(err) and "value_smaller_than_min" in str(err)
    assert "NotARealNode" in str(rejection(400, transcript("error_unknown_class.json")["body"]))
    assert "no outputs" in str(rejection(400, transcript("error_no_outputs.json")["body"]))
    assert "node 2 (SaveImage)" in str(rejection(400, transcript("error_bad_link.json")["body"]))


def test_a_model_the_node_lacks_is_model_missing():
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
        },
        "node_errors": {
            "3": {
                "class_type": "UNETLoader",
                "dependent_outputs": ["9"],
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "unet_name: 'x' not in []",
                        "extra_info": {"input_name": "unet_name"},
                    }
                ],
            }
        },
    }
    assert isinstance(rejection(400, body), ModelMissing)
    assert isinstance(rejection(500, "Internal Server Error"), Exception)


def test_execution_errors_are_classified():
    oom = {
        "exception_type": "torch.OutOfMemoryError",
        "exception_message": "Allocation on device",
        "node_type": "KSampler",
        "node_id": "5",
    }
    assert isinstance(classify_execution_error(oom), OutOfMemory)
    missing = {
        "exception_type": "FileNotFoundError",
        "exception_message": "no such file",
        "node_type": "LoadImage",
    }
    assert isinstance(classify_execution_error(missing), ModelMissing)
    other = {
        "exception_type": "RuntimeError",
        "exception_message": "CUDA error: illegal memory access",
        "node_type": "KSampler",
        "node_id": "5",
    }
    err = classify_execution_error(other)
    assert isinstance(err, RenderFailed) and "KSampler (node 5)" in str(err)


@pytest.mark.parametrize(
    "raw, safe",
    [
        ("../../etc/passwd", "passwd"),
        ("a/b/c.mp4", "c.mp4"),
        ("..\\x.mp4", "x.mp4"),
        ("we ird$.mp4", "we_ird_.mp4"),
        ("..", "output"),
    ],
)
def test_file_names_from_nodes_cannot_escape(raw, safe):
    assert safe_name(raw) == safe


def small_job(scene_id="bk", shot_id="s1", **shot):
    scene = parse_scene(
        {
            "id": scene_id,
            "shots": [
                {
                    "id": shot_id,
                    "action_description": "a boat at sea",
                    "width": 320,
                    "height": 192,
                    "frames": 17,
                    "seed": 3,
                    **shot,
                }
            ],
        }
    )
    return replace(plan_job(scene, scene.shots[0], "preview", load_catalog()), node="node-a")


def test_prompt_ids_are_stable_per_attempt():
    job = small_job()
    assert (
        prompt_id_for(job) == prompt_id_for(replace(job)) != prompt_id_for(replace(job, attempt=2))
    )


def test_discovery_reports_the_node_inventory(farm_cluster):
    backend = ComfyUIBackend(farm_cluster.node_url("node-b"), farm_cluster.settings())
    info = backend.describe()
    assert "hunyuanvideo1.5_720p_t2v_fp16.safetensors" in info["models"]["diffusion_models"]
    assert info["gpu"] and info["vram_total"] > 0 and info["version"]


def test_render_downloads_a_real_video_and_redelivery_does_not_rerender(farm_cluster, tmp_path):
    backend = ComfyUIBackend(farm_cluster.node_url("node-a"), farm_cluster.settings())
    job = small_job(scene_id="bk1")
    seen = []
    result = backend.render(job, tmp_path / "one", lambda f, m="", p=None: seen.append(f))
    info = probe(result.video)
    assert (info.frames, info.width, info.height) == (17, 320, 192)
    assert seen and max(seen) > 0.5
    history_before = backend.client.get_json("/history")
    again = backend.render(job, tmp_path / "two", lambda *a, **k: None)  # a redelivered task
    assert again.backend_job_id == result.backend_job_id
    assert again.video.read_bytes() == result.video.read_bytes()
    assert len(backend.client.get_json("/history")) == len(history_before)  # nothing new ran


def test_start_image_is_uploaded_and_used(farm_cluster, tmp_path):
    backend = ComfyUIBackend(farm_cluster.node_url("node-a"), farm_cluster.settings())
    job = small_job(scene_id="bk2", start_image=str(EXAMPLES / "images" / "meadow.jpg"))
    assert job.workflow == "wan22_i2v" and len(job.models) == 2  # Wan 2.2 I2V A14B
    result = backend.render(job, tmp_path, lambda *a, **k: None)
    assert probe(result.video).frames == 17
    # both experts bound, the steps split between the two samplers
    graph = backend.client.history(result.backend_job_id)["prompt"][2]
    loaders = {n["_meta"]["title"]: n["inputs"]["unet_name"] for n in graph.values()
               if n["class_type"] == "UNETLoader"}  # fmt: skip
    assert loaders == {"High Noise Model": job.models[0], "Low Noise Model": job.models[1]}
    samplers = {n["_meta"]["title"]: n["inputs"] for n in graph.values()
                if n["class_type"] == "KSamplerAdvanced"}  # fmt: skip
    half = job.params["steps"] // 2
    assert samplers["High Noise Sampler"]["end_at_step"] == half
    assert samplers["Low Noise Sampler"]["start_at_step"] == half


def test_a_start_image_the_node_cannot_decode_is_final(farm_cluster, tmp_path):
    """ComfyUI's LoadImage fails with PIL.UnidentifiedImageError on a file that is not an
    image: no node can do better, so the shot must stop (it was a RenderFailed, tried on
    node after node)."""
    fake = tmp_path / "start.png"
    fake.write_bytes(b"plain text, not a picture")
    backend = ComfyUIBackend(farm_cluster.node_url("node-a"), farm_cluster.settings())
    job = small_job(scene_id="bk-notimage", start_image=str(EXAMPLES / "images" / "meadow.jpg"))
    job = replace(job, params={**job.params, "start_image": str(fake)})
    with pytest.raises(InvalidInput, match="UnidentifiedImageError") as info:
        backend.render(job, tmp_path / "out", lambda *a, **k: None)
    assert is_final(info.value) and "use a PNG, JPEG or WebP image" in str(info.value)


def test_a_model_missing_on_the_node_is_reported(farm_cluster, tmp_path):
    backend = ComfyUIBackend(farm_cluster.node_url("node-a"), farm_cluster.settings())
    job = small_job(scene_id="bk3", template="quick_preview")  # Hunyuan: node-a lacks it
    with pytest.raises(ModelMissing, match="hunyuan"):
        backend.render(job, tmp_path, lambda *a, **k: None)


def test_out_of_memory_is_reported(farm_cluster, tmp_path):
    backend = ComfyUIBackend(farm_cluster.node_url("node-a"), farm_cluster.settings())
    job = small_job(scene_id="bk4")
    job = replace(
        job, params={**job.params, "width": 1920, "height": 1088, "length": 161, "steps": 1}
    )
    with pytest.raises(OutOfMemory):
        backend.render(job, tmp_path, lambda *a, **k: None)


def test_a_dead_node_is_unavailable(tmp_path):
    from farm.local import free_port

    backend = ComfyUIBackend(f"http://127.0.0.1:{free_port()}", Settings.from_env({}))
    with pytest.raises(NodeUnavailable):
        backend.render(small_job(), tmp_path, lambda *a, **k: None)


# -- two farm jobs on one shared node, on both API generations ------------------------------


@pytest.fixture(scope="module", params=["0.3", "0.38"], ids=["api-0.3", "api-0.38"])
def shared_node(request, tmp_path_factory):
    """A node two farm workers render on at once; ``slow`` stretches each step to ~0.1 s."""
    from .test_comfy_contract import PROFILE, Server

    profile = {**PROFILE, "api": request.param, "faults": {"slow": {"rate": 1.0, "factor": 10}}}
    srv = Server(tmp_path_factory.mktemp("shared"), profile).start()
    yield srv
    srv.stop()


def two_jobs(steps=(40, 8)) -> list:
    """Two shots of one scene, to be rendered by a backend each (as two workers would)."""
    scene = f"share-{uuid.uuid4().hex[:8]}"
    jobs = []
    for shot, n in zip(("a", "b"), steps, strict=True):
        seed = uuid.uuid4().int % 10**9  # nothing cached on the node from another test
        job = small_job(scene_id=scene, shot_id=shot, seed=seed)
        jobs.append(replace(job, model=PROFILE_T2V, params={**job.params, "steps": n}))
    return jobs


PROFILE_T2V = "wan2.1_t2v_1.3B_fp16.safetensors"


class Render(threading.Thread):
    """``backend.render(job)`` in a thread: its result or its error."""

    def __init__(self, backend: ComfyUIBackend, job, out_dir: Path) -> None:
        super().__init__(daemon=True)
        self.backend, self.job, self.out_dir = backend, job, out_dir
        self.result, self.error = None, None

    def run(self) -> None:
        try:
            self.result = self.backend.render(self.job, self.out_dir, lambda *a, **k: None)
        except Exception as exc:  # noqa: BLE001 - kept for the assertions
            self.error = exc


def cancel_shot(rt, job, backend, out_dir) -> Guard:
    """Cancel the shot the way `farm cancel --shot` does: the flag Dispatcher.cancel sets,
    seen by the render's guard, which takes the job off its node."""
    guard = Guard(rt, job, uuid.uuid4().hex, backend, out_dir)
    guard.start()
    rt.state.update_shot(job.scene_id, job.shot_id, "shot_cancel", cancel="1")
    return guard


def node_outcome(shared_node, job) -> str:
    entry = shared_node.history().get(prompt_id_for(job))
    if entry is None:
        return "absent"
    return {"success": "success"}.get(
        entry["status"]["status_str"], entry["status"]["messages"][-1][0]
    )


def test_cancelling_a_waiting_shot_leaves_the_running_job_on_its_node(shared_node, rt, tmp_path):
    a, b = two_jobs()
    first = Render(ComfyUIBackend(shared_node.url, rt.settings), a, tmp_path / "a")
    first.start()
    wait_for(lambda: first.backend.find(a) == "running", 10, "shot a to run")
    second = Render(ComfyUIBackend(shared_node.url, rt.settings), b, tmp_path / "b")
    second.start()
    wait_for(lambda: second.backend.find(b) == "pending", 10, "shot b to wait behind it")
    guard = cancel_shot(rt, b, second.backend, tmp_path / "b")
    try:
        second.join(20)
        first.join(30)
    finally:
        guard.stop()
    assert guard.cancelled and isinstance(second.error, JobCancelled)
    assert "taken off the queue" in str(second.error)
    assert first.error is None and probe(first.result.video).frames == 17
    assert node_outcome(shared_node, a) == "success"  # never interrupted
    assert node_outcome(shared_node, b) == "absent"  # never ran


def test_cancelling_the_running_shot_lets_the_waiting_job_finish(shared_node, rt, tmp_path):
    a, b = two_jobs()
    first = Render(ComfyUIBackend(shared_node.url, rt.settings), a, tmp_path / "a")
    first.start()
    wait_for(lambda: first.backend.find(a) == "running", 10, "shot a to run")
    second = Render(ComfyUIBackend(shared_node.url, rt.settings), b, tmp_path / "b")
    second.start()
    wait_for(lambda: second.backend.find(b) == "pending", 10, "shot b to wait behind it")
    guard = cancel_shot(rt, a, first.backend, tmp_path / "a")
    try:
        first.join(20)
        second.join(30)
    finally:
        guard.stop()
    assert guard.cancelled and isinstance(first.error, JobCancelled)
    assert second.error is None and probe(second.result.video).frames == 17
    assert node_outcome(shared_node, a) == "execution_interrupted"
    assert node_outcome(shared_node, b) == "success"


def test_progress_rises_once_over_both_passes_of_a_two_model_graph():
    """Wan 2.2 A14B reports steps 1..n for its high-noise sampler, then 1..n again for its
    low-noise one: the job's progress rises once over both, never back."""
    from farm.backends.comfyui import SamplerPasses, _handle
    from farm.workflows import load_workflow

    graph = load_workflow("wan22_t2v", REPO / "workflows")
    passes, seen = SamplerPasses(graph), []
    for node in ("57", "58"):  # High Noise Sampler, Low Noise Sampler
        for step in (1, 2):
            data = {"node": node, "value": step, "max": 2, "prompt_id": "p"}
            _handle("progress", data, lambda f, m="", p=None: seen.append(f), passes)
    assert seen == sorted(seen) and len(set(seen)) == 4
    assert seen[1] == pytest.approx(0.05 + 0.85 / 2) and seen[-1] == pytest.approx(0.9)


def test_a_text_encoder_file_the_node_lacks_is_model_missing():
    """LTX-2's LTXAVTextEncoderLoader names its Gemma file in ``text_encoder``: a node
    without it lacks a model (fall back elsewhere), not a broken workflow."""
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "failed"},
            "node_errors": {"60": {"class_type": "LTXAVTextEncoderLoader", "errors": [
                {"type": "value_not_in_list", "message": "Value not in list",
                 "details": "text_encoder: 'gemma_3_12B_it_fp4_mixed.safetensors' not in []",
                 "extra_info": {"input_name": "text_encoder",
                                "received_value": "gemma_3_12B_it_fp4_mixed.safetensors"}}]}}}  # fmt: skip
    error = rejection(400, body)
    assert isinstance(error, ModelMissing) and "input 'text_encoder'" in str(error)
