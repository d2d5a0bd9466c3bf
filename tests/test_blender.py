"""The Blender add-on in real Blender (the ``bpy`` module from the package registry, 4.5
LTS and 5.0, each in its own virtual environment made by ``make test``): built by
blender/build.py, installed into an isolated Blender user folder, a scene of camera-marker
shots submitted to the session farm through Redis and ``farm ingest``, followed until it
ends, clips back on the sequencer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import redis

from farm.catalog import load_catalog
from farm.media import probe
from tests.conftest import REPO

BLENDERS = {"4.5": REPO / ".venv-blender-4.5", "5.0": REPO / ".venv-blender-5.0"}
WHEELS = REPO / "build" / "wheels"
ROUNDTRIP = Path(__file__).parent / "blender" / "roundtrip.py"
sys.path.insert(0, str(REPO / "blender"))
import build as addon_build  # noqa: E402  (blender/build.py)


def blender_python(version: str) -> Path:
    exe = BLENDERS[version] / "bin" / "python"
    if not exe.exists():
        pytest.fail(
            f"Blender {version} (bpy) is not installed in {BLENDERS[version]}: run `make test`"
        )
    return exe


@pytest.fixture(scope="session")
def addon(tmp_path_factory) -> dict[str, Path]:
    """Both builds of the add-on, made from the sources by blender/build.py."""
    missing = [n for n in addon_build.manifest_wheels() if not (WHEELS / n).exists()]
    if missing:
        pytest.fail(f"wheels {missing} are missing from {WHEELS}: run `make addon` or `make test`")
    ext, legacy = addon_build.build(WHEELS, tmp_path_factory.mktemp("addon"))
    return {"extension": ext, "legacy": legacy}


@pytest.fixture
def artist(farm_cluster):
    """A Redis ACL user with what the add-on needs and no more: read the farm's keys,
    add to streams. Returns (url with the user name, password)."""
    env = farm_cluster.env()
    name, password = f"artist-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    r = redis.Redis.from_url(env["FARM_REDIS_URL"])
    r.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["farm:*"],
                  commands=["+@read", "+xadd", "+ping", "+@connection"])  # fmt: skip
    yield env["FARM_REDIS_URL"].replace("redis://", f"redis://{name}@"), password
    r.acl_deluser(name)
    r.close()


def run_blender(version: str, tmp: Path, **cfg) -> dict:
    """Run tests/blender/roundtrip.py in Blender ``version`` with an isolated user folder."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = {"prefix": "farm", "password": "", "path_maps": [], "timeout": 240,
              "blend": str(tmp / "scene.blend"), "out": str(tmp / "out.json"),
              "scene_id": f"bl-{uuid.uuid4().hex[:8]}", "redis_url": "redis://127.0.0.1:9/0", **cfg}  # fmt: skip
    (tmp / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "PYTHON"))}
    env["BLENDER_USER_RESOURCES"] = str(tmp / "blender-user")
    proc = subprocess.run([str(blender_python(version)), str(ROUNDTRIP), str(tmp / "config.json")],
                          env=env, cwd=tmp, capture_output=True, text=True, timeout=config["timeout"] + 60)  # fmt: skip
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    out = json.loads(Path(config["out"]).read_text())
    assert out["errors"] == [], "\n".join(out["errors"]) + log
    assert out["version"].startswith(version), out["version"]
    return out | {"config": config, "log": log}


def test_build_is_a_valid_extension_and_a_legacy_addon(addon, tmp_path):
    """Blender's own validator accepts the extension; the legacy zip has bl_info and the
    vendored redis; building again gives the same bytes."""
    tool = next(
        BLENDERS["4.5"].glob(
            "lib/python*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"
        ),
        None,
    )
    assert tool is not None, "run `make test` (it installs bpy 4.5)"
    check = subprocess.run([sys.executable, str(tool), "validate", str(addon["extension"])],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    with zipfile.ZipFile(addon["extension"]) as z:
        names = set(z.namelist())
    assert {"blender_manifest.toml", "__init__.py", "client.py", "LICENSE"} <= names
    assert {f"wheels/{n}" for n in addon_build.manifest_wheels()} <= names
    with zipfile.ZipFile(addon["legacy"]) as z:
        names = set(z.namelist())
        assert "bl_info" in z.read("farm_submit/__init__.py").decode()
    assert {"farm_submit/_vendor/redis/__init__.py", "farm_submit/LICENSE"} <= names
    assert not any(n.endswith("blender_manifest.toml") for n in names)
    again = addon_build.build(WHEELS, tmp_path)
    assert again[0].read_bytes() == addon["extension"].read_bytes()


def test_addon_imports_no_farm_or_celery():
    """The add-on talks to Redis only: no import of the farm package or Celery."""
    for path in (REPO / "blender" / "farm_submit").glob("*.py"):
        text = path.read_text()
        for banned in ("import farm", "from farm", "celery", "kombu"):
            assert banned not in text, f"{path.name} has {banned!r}"


def test_export_projects_trajectories_through_the_shot_camera(addon, tmp_path):
    """The message: one shot per camera marker with its frames, start images rendered at
    the farm canvas from the shot camera, the animated object's path projected by the
    pinhole model; the scene's own settings put back afterwards."""
    out = run_blender(
        "4.5", tmp_path, addon=str(addon["extension"]), kind="extension", mode="export"
    )
    message = out["message"]
    assert message["version"] == 1 and message["submission"] == "bl-export-test"
    shots = message["scene"]["shots"]
    assert [s["id"] for s in shots] == ["intro", "chase", "close-up"]
    assert [s["frames"] for s in shots] == [17, 17, 17]  # markers at 1, 18, 35; end 51
    assert all(s["fps"] == 16 and (s["width"], s["height"]) == (320, 192) for s in shots)
    assert shots[0]["camera_movements"] == ["pan_right"] and "start_image" not in shots[0]
    assert shots[2]["characters"] == ["Box", "Plain"]
    assert {shots[1]["start_image"], shots[2]["start_image"]} == set(message["files"])
    for f in message["files"].values():
        assert f["png"] and f["size"] == [320, 192] and f["bytes"] > 1000
    (track,) = shots[1]["trajectories"]
    assert len(track) == 17
    # CamSide: at (0, -9, 0.5) looking along +y, 50 mm lens on a 36 mm sensor; the cube
    # moves from x=-2 to x=2 at depth 9, its centre 0.5 below the camera
    scale = 50 / 36
    for point, x in ((track[0], -2.0), (track[-1], 2.0), (track[8], 0.0)):
        assert point["x"] == pytest.approx((0.5 + x / 9 * scale) * 320, abs=0.05)
        assert point["y"] == pytest.approx((0.5 + 0.5 / 9 * scale * 320 / 192) * 192, abs=0.05)
    xs = [p["x"] for p in track]
    assert xs == sorted(xs) and len(set(xs)) > 10
    assert out["frame_current"] == 1 and out["resolution"] == [1920, 1080]


@pytest.mark.parametrize("version", ["4.5", "5.0"])
def test_scene_renders_and_comes_back_as_strips(version, addon, farm_cluster, artist, tmp_path):
    """Submit from Blender (synchronous execute), follow in a watcher thread drained by
    the timer function, and find each shot's clip on channel 2 at its marker range and the
    assembled scene on channel 3, through a farm-to-local path mapping; the password is
    not in the saved .blend, and the strips are there when it is opened again."""
    url, password = artist
    mount = tmp_path / "mnt-farm"
    mount.symlink_to(farm_cluster.storage, target_is_directory=True)
    out = run_blender(version, tmp_path / "b", addon=str(addon["extension"]), kind="extension",
                      mode="render", follow="thread", redis_url=url, password=password,
                      path_maps=[[str(farm_cluster.storage), str(mount)]],
                      frame_end=50)  # the close-up's 16 frames are rendered as 17  # fmt: skip
    state = out["state"]
    assert "submit_error" not in out, out["submit_error"]
    assert out["timer_registered"] is True
    assert state["submission_state"] == "accepted", state
    assert state["scene_state"] == "done", state
    shots = {s["marker"]: s for s in state["shots"]}
    assert [shots[m]["state"] for m in ("intro", "chase", "close-up")] == ["done"] * 3, shots
    assert out["seen_running"], "the panel never showed a shot running"
    # the gate's decision with the kept take, counted from 1 as everywhere
    assert all(re.fullmatch(r"\w+ \(take [1-9]\d*\)", shots[m]["gate"]) for m in shots), shots
    strips = state["strips"]
    clips = [s for s in strips if s["channel"] == 2]
    assert [(s["name"], s["start"], s["end"]) for s in clips] == [
        ("farm:intro", 1, 18), ("farm:chase", 18, 35), ("farm:close-up", 35, 51)]  # fmt: skip
    (whole,) = [s for s in strips if s["channel"] == 3]
    # the scene strip ends with the timeline (frame 50), not with the video, which is at
    # least 51 frames (a model may render a shot longer than asked, e.g. WanGP's
    # TI2V-5B at 25 frames and 24 fps, and 16 fps clips are resampled to the scene's rate)
    assert (whole["name"], whole["start"], whole["end"]) == ("farm:scene", 1, 51)
    assert probe(Path(whole["filepath"])).frames >= 51
    assert len(strips) == 4 and all(s["type"] == "MOVIE" for s in strips)
    for s in strips:
        assert s["filepath"].startswith(str(mount)) and Path(s["filepath"]).is_file(), s
    # what the farm rendered: the chase shot with its trajectory and start image, on ATI
    r = redis.Redis.from_url(farm_cluster.env()["FARM_REDIS_URL"], decode_responses=True)
    spec = json.loads(r.hget(f"farm:scene:{state['farm_scene']}", "spec"))
    chase = next(s for s in spec["shots"] if s["id"] == "chase")
    assert len(chase["trajectories"][0]) == 17 and Path(chase["start_image"]).is_file()
    assert r.hget(f"farm:scene:{state['farm_scene']}", "submission") == state["submission"]
    assert r.hget(f"farm:shot:{state['farm_scene']}:chase", "node") == "node-c"  # the ATI node
    blend = Path(out["config"]["blend"]).read_bytes()
    assert password.encode() not in blend and b"redis://" not in blend
    again = run_blender(version, tmp_path / "c", addon=str(addon["extension"]), kind="extension",
                        mode="reopen", blend=out["config"]["blend"])  # fmt: skip
    assert again["state"]["strips"] == strips
    assert again["state"]["submission"] == state["submission"]


def test_the_template_field_offers_the_farms_templates(addon, farm_cluster, tmp_path):
    """The Template field offers the built-in templates until the add-on reads the farm's
    list, then every template the farm's ingest published: the studio's own among them
    (FARM_CATALOG, docs/catalog.md), as an ACL user that may read nothing else."""
    from farm.studio import load_studio
    from farm.templates import publish

    env = farm_cluster.env()
    prefix, name, password = (
        f"tpl{uuid.uuid4().hex[:6]}",
        f"tpl-{uuid.uuid4().hex[:6]}",
        uuid.uuid4().hex,
    )
    r = redis.Redis.from_url(env["FARM_REDIS_URL"])
    catalog = load_studio(REPO / "examples" / "studio" / "catalog.toml")
    publish(r, f"{prefix}:templates", catalog)
    r.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=[f"{prefix}:*"],
                  commands=["+hgetall", "+ping", "+@connection"])  # fmt: skip
    try:
        out = run_blender("4.5", tmp_path, addon=str(addon["extension"]), kind="extension",
                          mode="templates", prefix=prefix, password=password,
                          redis_url=env["FARM_REDIS_URL"].replace("redis://", f"redis://{name}@"))  # fmt: skip
    finally:
        r.acl_deluser(name)
        r.delete(f"{prefix}:templates")
        r.close()
    assert out["before"] == ["quick_preview", "standard_generation", "high_quality",
                             "character_focus", "fantasy_content"]  # fmt: skip
    assert out["after"] == sorted(catalog.templates) and "dusk" in out["after"]
    assert out["descriptions"]["dusk"] == "Wan 2.2 A14B, high-noise then low-noise model"
    built_in = load_catalog()  # the search list shows each template with its description
    assert out["before_choices"] == [[n, built_in.description(n)] for n in out["before"]]
    assert out["choices"] == [[n, catalog.description(n)] for n in sorted(catalog.templates)]
    assert out["shown"] == "Wan 2.2 A14B, high-noise then low-noise model"


def test_the_addons_built_in_templates_are_the_farms():
    """Before the add-on reads the farm's list it offers the built-in templates with the
    descriptions farm/data/catalog.json gives them (read from props.py without Blender)."""
    import ast

    tree = ast.parse((REPO / "blender" / "farm_submit" / "props.py").read_text())
    (value,) = [n.value for n in tree.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "TEMPLATES"]  # fmt: skip
    catalog = load_catalog()
    assert dict(ast.literal_eval(value)) == {t: catalog.description(t) for t in catalog.templates}


def test_rejected_submission_shows_every_error_per_shot(addon, farm_cluster, artist, tmp_path):
    """The legacy zip (vendored redis) sends, in a watcher thread, a scene the farm
    refuses; the add-on shows each of the farm's errors on its shot, in plain words."""
    url, password = artist
    out = run_blender("4.5", tmp_path, addon=str(addon["legacy"]), kind="legacy", mode="invalid",
                      submit="invoke", redis_url=url, password=password, timeout=60)  # fmt: skip
    state = out["state"]
    assert state["submission_state"] == "rejected", state
    assert out["timer_registered"] is True
    errors = state["errors"].splitlines()
    assert len(errors) == 2, errors
    assert errors[0].startswith("Shot 'intro' (action_description):")
    assert errors[1].startswith("Shot 'close-up' (action_description):")
    shots = {s["marker"]: s for s in state["shots"]}
    assert shots["intro"]["error"] == errors[0] and shots["chase"]["error"] == ""
    r = redis.Redis.from_url(farm_cluster.env()["FARM_REDIS_URL"], decode_responses=True)
    status = r.hgetall(f"farm:submission:{state['submission']}")
    assert status["state"] == "rejected" and status["reason"] == "invalid"
    assert not r.exists(f"farm:scene:{state['farm_scene']}")
    raw = redis.Redis.from_url(
        farm_cluster.env()["FARM_REDIS_URL"]
    )  # others dead-letter binary junk
    sub = state["submission"].encode()
    dead = [f for _, f in raw.xrange("farm:submissions:dead") if f.get(b"submission") == sub]
    assert len(dead) == 1


def test_unreachable_farm_is_a_plain_error(addon, tmp_path):
    """No farm at the Redis URL: Submit fails with words that say what to check."""
    out = run_blender("4.5", tmp_path, addon=str(addon["extension"]), kind="extension",
                      mode="render", redis_url="redis://127.0.0.1:9/0", timeout=30)  # fmt: skip
    assert "cannot reach the farm's Redis at redis://127.0.0.1:9/0" in out["submit_error"]
    assert "add-on preferences" in out["submit_error"]
    assert out["state"]["submission_state"] == "failed"
