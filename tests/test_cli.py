"""The `farm` command line, run as users run it: a subprocess with FARM_* variables."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import redis as redis_lib

from .conftest import EXAMPLES


def farm(*args, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "farm", *args],
        capture_output=True,
        text=True,
        env=env or os.environ,
        timeout=timeout,
    )


def test_validate_reports_every_problem_with_exit_2():
    out = farm("validate", str(EXAMPLES / "invalid_scene.json"))
    assert out.returncode == 2
    assert (
        "$.quality" in out.stderr
        and "$.shots[1].width" in out.stderr
        and "$.shots[0].camera_movements[0]" in out.stderr
    )
    ok = farm("validate", "--json", str(EXAMPLES / "demo_scene.json"))
    assert ok.returncode == 0 and json.loads(ok.stdout)["valid"] is True


def test_validate_names_each_template_the_scene_uses_with_its_description():
    from farm.catalog import load_catalog

    catalog = load_catalog()
    scene = json.loads((EXAMPLES / "demo_scene.json").read_text())
    used = sorted({s.get("template", "standard_generation") for s in scene["shots"]})
    out = farm("validate", "--json", str(EXAMPLES / "demo_scene.json"))
    assert json.loads(out.stdout)["templates"] == {t: catalog.description(t) for t in used}
    text = farm("validate", str(EXAMPLES / "demo_scene.json")).stdout
    for name in used:  # the table wraps long lines: compare without line breaks
        assert f"{name} (" in text and catalog.description(name)[:40] in " ".join(text.split())


def test_a_number_of_5000_digits_is_invalid_for_validate_and_enqueue(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"id": "x", "shots": [{"id": "s1", "action_description": "a", "seed": '
                    + "9" * 5000 + "}]}")  # fmt: skip
    for command in ("validate", "enqueue"):
        out = farm(command, str(path))
        assert out.returncode == 2, (command, out.stderr)
        assert "Traceback" not in out.stderr
        assert out.stderr.startswith(f"error: scene file {path} has a number of more than 4,300 "
                                     "digits, the most this farm reads"), out.stderr  # fmt: skip


def test_validate_prints_a_few_lines_for_a_huge_scene(tmp_path):
    path = tmp_path / "huge.json"
    shots = [{"id": f"s{i}", "action_description": "a" * 300_000} for i in range(30)]
    path.write_text(json.dumps({"id": "x", "title": "t" * 5_000_000, "shots": shots}))
    out = farm("validate", str(path))  # 14 MB of scene
    assert out.returncode == 2 and len(out.stderr) < 10_000, len(out.stderr)
    assert "$.title: 'ttt" in out.stderr and "over the limit of 200 characters" in out.stderr
    assert out.stderr.count("over the limit of 2,000 characters") == 30


def test_unreachable_redis_is_one_line_with_exit_3(tmp_path):
    env = {**os.environ, "FARM_REDIS_URL": "redis://127.0.0.1:9/0"}
    out = farm("status", env=env)
    assert out.returncode == 3
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "redis://127.0.0.1:9/0" in lines[0] and "redis-server" in lines[0]


def test_invalid_scene_enqueues_nothing(cli_env, rt):
    out = farm("enqueue", str(EXAMPLES / "invalid_scene.json"), env=cli_env)
    assert out.returncode == 2 and "$.quality" in out.stderr
    assert "broken scene" not in [s["id"] for s in rt.state.list_scenes()]


def test_nodes_lists_the_registered_nodes(cli_env):
    out = farm("nodes", "--json", env=cli_env)
    assert out.returncode == 0
    nodes = {n["name"]: n for n in json.loads(out.stdout)}
    assert {"node-a", "node-b", "node-c", "node-w"} <= set(nodes)
    assert (nodes["node-a"]["kind"], nodes["node-w"]["kind"]) == ("comfyui", "wan2gp")
    assert "hunyuan_1_5_480_t2v_lightx2v" in nodes["node-w"]["models"]["wangp"]
    assert (
        nodes["node-a"]["alive"]
        and "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
        in nodes["node-a"]["models"]["diffusion_models"]
    )
    # discovery: what each node can run, from its /object_info
    assert nodes["node-a"]["version"] and nodes["node-a"]["classes"] > 20
    assert nodes["node-a"]["workflows"]["wan22_t2v"]["catalog"] == ["wan22_t2v_a14b"]
    assert nodes["node-c"]["workflows"]["wan_ati"]["catalog"] == ["wan_ati"]
    assert not nodes["node-c"]["workflows"]["hunyuan15_t2v"]["ok"]
    assert all(n["speed"] > 0 for n in nodes.values())  # learned from renders; 1.0 before
    # what each can render: a ComfyUI node's catalogue models, a WanGP node's model ids
    # that a template renders at some tier (not ltxv_distilled: no template's)
    assert nodes["node-c"]["can_render"] == ["wan_ati"]
    assert nodes["node-w"]["can_render"] == [
        "hunyuan_1_5_480_i2v_step_distilled", "hunyuan_1_5_480_t2v_lightx2v", "i2v_2_2",
        "t2v_2_2", "ti2v_2_2_fastwan"]  # fmt: skip
    table = farm("nodes", env={**cli_env, "COLUMNS": "400"}).stdout
    assert "hunyuan15_t2v" in table and "wan_ati" in table and "speed" in table
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "hunyuan_1_5_480_t2v_lightx2v, i2v_2_2, t2v_2_2" in rows["node-w"], table


def test_enqueue_watch_and_status(cli_env, tmp_path):
    scene = {
        "id": "cli-scene",
        "title": "CLI",
        "quality": "preview",
        "shots": [
            {
                "id": "one",
                "action_description": "rain on a window",
                "backend": "comfyui",  # ComfyUI nodes stream preview frames (checked below)
                "width": 256,
                "height": 160,
                "frames": 9,
            },
            {
                "id": "two",
                "action_description": "a cat",
                "camera_movements": ["zoom_in"],
                "backend": "comfyui",
                "width": 256,
                "height": 160,
                "frames": 9,
            },
        ],
    }
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(scene))
    out = farm("enqueue", str(path), "--watch", "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "done"
    status = json.loads(farm("status", "cli-scene", "--json", env=cli_env).stdout)
    assert set(status) >= {"id", "state", "shots", "outputs", "metrics"}
    assert [s["id"] for s in status["shots"]] == ["one", "two"]
    assert all(
        set(s) >= {"id", "state", "node", "attempts", "outputs", "error"} for s in status["shots"]
    )
    listing = json.loads(farm("status", "--json", env=cli_env).stdout)
    assert "cli-scene" in [s["id"] for s in listing]
    again = farm("enqueue", str(path), env=cli_env)
    assert again.returncode == 2 and "--replace" in again.stderr
    human = farm("status", "cli-scene", env=cli_env)
    assert human.returncode == 0 and "one" in human.stdout and "done" in human.stdout
    # the newest preview frame the node streamed is kept for the CLI (and Blender)
    assert all(s["preview"] and s["preview_at"] for s in status["shots"])
    frame = tmp_path / "frame.jpg"
    shown = farm("preview", "cli-scene", "one", "-o", str(frame), "--json", env=cli_env)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["mime"] == "image/jpeg" and info["bytes"] == frame.stat().st_size > 100
    assert frame.read_bytes()[:3] == b"\xff\xd8\xff"
    assert frame.read_bytes() == Path(status["shots"][0]["preview"]).read_bytes()
    # an unknown shot or scene is named as such (exit 2, as every unknown id)
    missing = farm("preview", "cli-scene", "nope", env=cli_env)
    assert missing.returncode == 2, missing.stderr
    assert "no shot 'nope' in scene 'cli-scene'; its shots: one, two" in missing.stderr
    no_scene = farm("preview", "no-such-scene", "one", env=cli_env)
    assert no_scene.returncode == 2 and "no scene 'no-such-scene'" in no_scene.stderr


def test_enqueue_and_retry_watch_end_with_where_the_outputs_are(cli_env, tmp_path):
    """Piped (not a terminal), `enqueue --watch` and `retry --watch` end the table's last
    row with a newline, then print where the scene video and its reports are; those are
    as readable as the clips (a new file's mode under the umask, not 0600)."""
    scene = {"id": "cli-outputs", "quality": "preview", "shots": [
        {"id": "one", "action_description": "a kite", "backend": "comfyui", "width": 256,
         "height": 160, "frames": 9}]}  # fmt: skip
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(scene))
    umask = os.umask(0)
    os.umask(umask)
    for args in (
        ("enqueue", str(path), "--watch"),
        ("retry", "cli-outputs", "--shot", "one", "--watch"),
    ):
        out = farm(*args, env=cli_env)
        assert out.returncode == 0, out.stderr
        status = json.loads(farm("status", "cli-outputs", "--json", env=cli_env).stdout)
        outputs = status["outputs"]
        assert [Path(p).name for p in outputs.values()] == [
            "scene.mp4", "report.json", "report.html"]  # fmt: skip
        lines = out.stdout.splitlines()
        assert lines[-3:] == [f"{name}: {p}" for name, p in outputs.items()], out.stdout
        assert lines[-4].split()[:2] == ["one", "done"], out.stdout  # the row, on its own
        clip = Path(status["shots"][0]["outputs"]["preview"]).stat().st_mode
        assert [Path(p).stat().st_mode for p in outputs.values()] == [clip] * 3
        assert stat.S_IMODE(clip) == 0o666 & ~umask


def test_unknown_scene_status_exit_2(cli_env):
    out = farm("status", "no-such-scene", env=cli_env)
    assert out.returncode == 2 and "no scene 'no-such-scene'" in out.stderr


def test_worker_with_a_bare_url_detects_a_wangp_node(cli_env, farm_cluster):
    """`farm worker --url URL` asks the server what it is and registers it with that kind."""
    prefix = f"t{os.getpid()}w"
    env = {**cli_env, "FARM_PREFIX": prefix}
    url = farm_cluster.node_url("node-w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm", "worker", "--url", url, "--node", "auto-w"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis_lib.Redis.from_url(cli_env["FARM_REDIS_URL"], decode_responses=True)
        deadline = time.monotonic() + 60
        record: dict = {}
        while time.monotonic() < deadline and not record.get("models"):
            record = client.hgetall(f"{prefix}:node:auto-w")
            time.sleep(0.2)
        assert record.get("kind") == "wan2gp" and record["url"] == url
        assert "hunyuan_1_5_480_t2v_lightx2v" in json.loads(record["models"])["wangp"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _clip(path, shake=0.0, track=((60.0, 120.0), (260.0, 80.0))):
    from farm.emulators.synth import ClipSpec, synthesize
    from farm.media import write_video

    spec = ClipSpec(320, 192, 25, 16, 3, "a kite", tracks=(track,), shake=shake)
    write_video(path, list(synthesize(spec)), 16)
    return path


def test_score_prints_every_metric_and_checks_a_template(tmp_path):
    steady, shaken = _clip(tmp_path / "steady.mp4"), _clip(tmp_path / "shaken.mp4", shake=5.0)
    tracks = tmp_path / "tracks.json"
    tracks.write_text(json.dumps([[{"x": 120, "y": 240}, {"x": 520, "y": 160}]]))
    out = farm("score", str(steady), "--trajectories", str(tracks), "--canvas", "640x384",
               "--template", "standard_generation", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["scores"]) == {
        "motion_smoothness", "temporal_flicker", "visual_consistency", "dynamic_degree",
        "sharpness", "trajectory_adherence",
    }  # fmt: skip
    assert result["scores"]["trajectory_adherence"] > 0.9  # tracks drawn at twice the size
    assert result["failed"] == [] and result["thresholds"]["motion_smoothness"] == 0.6
    out = farm("score", str(shaken), "--template", "standard_generation")
    assert out.returncode == 1  # a threshold missed
    assert "below the thresholds" in out.stdout and "motion_smoothness" in out.stdout
    out = farm("score", str(steady))
    assert out.returncode == 0 and "motion_smoothness" in out.stdout and "no cuts" in out.stdout


def test_score_refuses_bad_input_with_exit_2(tmp_path):
    clip = _clip(tmp_path / "c.mp4")
    bad = tmp_path / "bad.json"
    bad.write_text('[[{"x": 1}]]')
    cases = [
        (("score", str(tmp_path / "none.mp4")), "video not found"),
        (("score", str(clip), "--canvas", "wide"), "WIDTHxHEIGHT"),
        (("score", str(clip), "--trajectories", str(bad)), "y"),
        (("score", str(clip), "--template", "nope"), "no thresholds"),
    ]
    for args, message in cases:
        out = farm(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr, (args, out.stderr)


def test_watch_follows_a_scene_to_its_end_with_a_bar_per_shot(cli_env, tmp_path):
    scene = {"id": "watch-scene", "quality": "preview", "shots": [
        {"id": f"w{i}", "action_description": "a kite", "backend": "comfyui", "width": 256,
         "height": 160, "frames": 9, "seed": i} for i in range(2)]}  # fmt: skip
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(scene))
    assert farm("enqueue", str(path), env=cli_env).returncode == 0
    live = farm("watch", "watch-scene", env=cli_env)
    assert live.returncode == 0, live.stderr
    assert "w0" in live.stdout and "w1" in live.stdout and "done" in live.stdout
    assert "━" in live.stdout and "video:" in live.stdout  # bars, then where the video is
    final = farm("watch", "watch-scene", "--json", env=cli_env)
    assert final.returncode == 0 and json.loads(final.stdout)["state"] == "done"
    unknown = farm("watch", "no-such-scene", env=cli_env)
    assert unknown.returncode == 2 and "no scene 'no-such-scene'" in unknown.stderr


def test_every_read_command_takes_json_and_help_lists_the_exit_codes():
    from farm.cli import cli

    services = {"worker", "ingest", "emulate", "flower", "web", "exporter", "demo"}  # long-running

    def commands(group, prefix=""):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from commands(cmd, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", cmd

    missing = [name for name, cmd in commands(cli)
               if name.split()[0] not in services
               and "--json" not in {o for p in cmd.params for o in p.opts}]  # fmt: skip
    assert missing == []
    help_text = farm("--help").stdout
    for line in (
        "0  success",
        "1  the work failed",
        "2  invalid input",
        "3  the farm is unavailable",
    ):
        assert line in help_text


def huge_scenes(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Scenes whose errors once echoed whole values (4.5 MB for 100,000 shots, 5 MB for a
    5 MB string) → the limit each message must name."""
    shot = {"id": "s", "action_description": "a"}
    cases = {
        "100k-shots": ({"id": "x", "shots": [dict(shot, id=f"s{i}") for i in range(100_000)]},
                       "over the limit of 10,000 shots; give at most 10,000 shots"),
        "5mb-string": ({"id": "x", "shots": [dict(shot, action_description="a" * 5_000_000)]},
                       "over the limit of 2,000 characters; give at most 2,000 characters"),
        "5mb-start-image": ({"id": "x", "shots": [dict(shot, start_image="i" * 5_000_000 + ".png")]},
                            "over the limit of 1,000 characters; give at most 1,000 characters"),
    }  # fmt: skip
    out = {}
    for name, (scene, limit) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(scene))
        out[name] = (path, limit)
    return out


def test_validate_and_enqueue_print_a_few_lines_naming_the_limit(tmp_path):
    """Redis is unreachable here (FARM_REDIS_URL points at port 9): an enqueue that got past
    validation would exit 3, not 2."""
    for name, (path, limit) in huge_scenes(tmp_path).items():
        for command in ("validate", "enqueue"):
            out = farm(command, str(path))
            assert out.returncode == 2, (name, command, out.stderr[:2000])
            assert len(out.stdout) + len(out.stderr) < 2_000, (name, command, len(out.stderr))
            assert limit in out.stderr, (name, command, out.stderr)


def test_submit_prints_a_few_lines_naming_the_limit(tmp_path):
    """What `farm submit` refuses before it sends: a body over FARM_SUBMISSION_MAX_BYTES, a
    start image name the file system cannot open (it was a 5 MB traceback)."""
    cases = huge_scenes(tmp_path)
    for name in ("100k-shots", "5mb-string"):
        out = farm("submit", str(cases[name][0]))
        assert out.returncode == 2, (name, out.stderr[:2000])
        assert (
            len(out.stderr) < 1_000
            and "over the limit of 2097152 (FARM_SUBMISSION_MAX_BYTES)" in out.stderr
        )
    out = farm("submit", str(cases["5mb-start-image"][0]))
    assert out.returncode == 2 and len(out.stderr) < 1_000, out.stderr[:2000]
    assert "$.shots[0].start_image: file " in out.stderr and "(a string of 5,000," in out.stderr
    assert "cannot be read (File name too long); give the path of an image file" in out.stderr


def test_a_start_image_that_is_not_an_image_is_refused_by_validate_enqueue_and_submit(tmp_path):
    """Before, any file named .png passed `farm validate` and `farm enqueue` and failed on
    the GPU nodes; `farm submit` sent it. Now each says so once, naming the shot's path, the
    file and the fix, and queues or sends nothing (Redis is unreachable here: exit 3 if it
    tried)."""
    (tmp_path / "frames").mkdir()
    fake = tmp_path / "frames" / "first.png"
    fake.write_text("a text file, not a picture")
    path = tmp_path / "scene.json"
    path.write_text(json.dumps({"id": "x", "shots": [
        {"id": "a", "action_description": "a fox"},
        {"id": "b", "action_description": "a fox runs", "start_image": "frames/first.png"},
    ]}))  # fmt: skip
    problem = (f"$.shots[1].start_image: file {fake} is not an image (Pillow cannot tell its "
               "format); use a PNG, JPEG or WebP image of 16 to 4,096 pixels a side")  # fmt: skip
    for command in ("validate", "enqueue", "submit"):
        out = farm(command, str(path))
        assert out.returncode == 2, (command, out.stderr)
        lines = [line.strip() for line in out.stderr.splitlines()]
        assert lines[1:] == [f"- {problem}"], (command, out.stderr)
    out = farm("validate", "--json", str(path))
    assert json.loads(out.stdout)["problems"] == [problem]
