"""`farm ingest`: submissions on the Redis stream, decided by the session farm's ingest
process (a real `farm ingest` subprocess, FARM_INGEST_CLAIM_IDLE=2, a 2 MiB body and 1 MiB
attachment limit), and `farm submit` / `farm ingest --once` run as users run them."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import pytest
import redis as redis_lib
from PIL import Image

from farm import lifecycle
from farm.ingest import DEAD_BODY_BYTES, cut
from farm.lifecycle import TERMINAL_SCENE
from farm.local import LocalFarm
from farm.scene import parse_scene
from farm.settings import Settings
from farm.submission import (
    attachment_name,
    dead_key,
    pack_submission,
    read_submission,
    status_key,
    stream_key,
    submission_folder,
    wait_status,
)
from farm.submit import enqueue

from .conftest import EXAMPLES
from .test_e2e import wait_done

GROUP = "ingest"


def new_id(tag: str = "sub") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


def quick_scene(scene_id: str, shots: int = 1, **shot) -> dict:
    """A cheap scene: preview quality, 256x160, 9 frames a shot."""
    base = {"action_description": "a paper kite", "width": 256, "height": 160, "frames": 9}
    return {"id": scene_id, "quality": "preview",
            "shots": [{"id": f"s{i}", **base, "seed": i, **shot} for i in range(shots)]}  # fmt: skip


def entry(sid: str, scene: dict | None, **extra) -> dict[str, str]:
    body = {"version": 1, "submission": sid, **({"scene": scene} if scene else {}), **extra}
    return {"submission": sid, "body": json.dumps(body)}


def png(colour_left=(255, 0, 0), colour_right=(0, 0, 255), size=(256, 160)) -> bytes:
    image = Image.new("RGB", size, colour_right)
    image.paste(colour_left, (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def settings(farm_cluster) -> Settings:
    return farm_cluster.settings()


@pytest.fixture
def r(farm_cluster):
    client = redis_lib.Redis.from_url(farm_cluster.env()["FARM_REDIS_URL"], decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def raw(farm_cluster):
    """A client that reads bytes (dead letters may hold binary bodies)."""
    client = redis_lib.Redis.from_url(farm_cluster.env()["FARM_REDIS_URL"])
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _settled(request):
    """After each test, wait until the scenes it submitted have finished, so the next
    test (in any module) finds the nodes idle."""
    rt = request.getfixturevalue("rt") if "rt" in request.fixturenames else None
    yield
    if rt is not None:
        for scene in rt.state.list_scenes(limit=100):
            if scene["id"].startswith("scene-") and scene["state"] not in TERMINAL_SCENE:
                wait_done(rt, scene["id"])


def decided(r, settings, sid: str, timeout: float = 30) -> dict:
    status = wait_status(r, settings, sid, timeout)
    assert status is not None, f"no decision on {sid} in {timeout}s"
    return status


def pending(r, settings, message: str) -> list:
    return r.xpending_range(stream_key(settings), GROUP, min=message, max=message, count=1)


def dead_letter(raw, settings, message: str) -> dict[str, bytes]:
    for _, fields in raw.xrevrange(dead_key(settings), count=500):
        if fields[b"message"].decode() == message:
            return {k.decode(): v for k, v in fields.items()}
    raise AssertionError(f"no dead letter for message {message}")


def scene_queued_events(rt, scene_id: str) -> int:
    return sum(1 for _, e in rt.state.events(scene_id) if e["type"] == "scene_queued")


def test_a_valid_submission_is_accepted_recorded_and_rendered(rt, r, settings):
    sid, scene_id = new_id(), new_id("scene")
    message = r.xadd(stream_key(settings),
                     entry(sid, quick_scene(scene_id, 2), client={"app": "test"}))  # fmt: skip
    status = decided(r, settings, sid)
    assert status == {
        "submission": sid, "state": "accepted", "scene": scene_id, "reason": "", "errors": [],
        "message": message, "at": status["at"], "duplicates": 0, "client": {"app": "test"},
    }  # fmt: skip
    assert abs(status["at"] - time.time()) < 60
    assert 0 < r.ttl(status_key(settings, sid)) <= settings.submission_ttl
    assert pending(r, settings, message) == []  # acknowledged
    assert rt.state.scene(scene_id)["submission"] == sid
    done = wait_done(rt, scene_id)
    assert done["state"] == "done" and done["submission"] == sid
    assert [s["state"] for s in done["shots"]] == ["done", "done"]


def test_an_attached_start_image_is_what_the_shot_renders_from(rt, r, settings):
    """The attachment is written under storage/submissions/{id}/ and the shot starts from
    it: red on the left, blue on the right in the clip's first frame."""
    sid, scene_id = new_id(), new_id("scene")
    image = png()
    scene = quick_scene(scene_id, start_image="card.png")
    files = {"card.png": base64.b64encode(image).decode()}
    r.xadd(stream_key(settings), entry(sid, scene, files=files))
    assert decided(r, settings, sid)["state"] == "accepted"
    attached = submission_folder(settings, sid) / "card.png"
    assert attached.read_bytes() == image
    spec = rt.state.scene(scene_id)["spec"]
    assert spec["shots"][0]["start_image"] == str(attached)
    done = wait_done(rt, scene_id)
    assert done["state"] == "done", done
    clip = done["shots"][0]["outputs"]["preview"]
    ok, frame = cv2.VideoCapture(clip).read()
    assert ok
    h, w = frame.shape[:2]
    left = frame[h * 3 // 4 :, : w // 4].reshape(-1, 3).mean(axis=0)  # BGR, under the banner
    right = frame[h * 3 // 4 :, -w // 4 :].reshape(-1, 3).mean(axis=0)
    assert left[2] > 180 and left[0] < 80, left  # red
    assert right[0] > 180 and right[2] < 80, right  # blue


def test_an_invalid_scene_is_rejected_with_every_error_and_dead_lettered(rt, r, raw, settings):
    sid, scene_id = new_id(), new_id("scene")
    scene = quick_scene(scene_id, 3)
    scene["quality"] = "best"
    scene["shots"][0]["action_description"] = ""
    scene["shots"][1]["start_image"] = "x.png"
    scene["shots"][2]["colour"] = "red"
    fields = entry(sid, scene)
    message = r.xadd(stream_key(settings), fields)
    status = decided(r, settings, sid)
    assert (status["state"], status["reason"], status["scene"]) == ("rejected", "invalid", scene_id)
    errors = status["errors"]
    assert [e.split(":")[0] for e in errors] == [
        "$.scene.shots[1].start_image",
        "$.scene.quality",
        "$.scene.shots[0].action_description",
        "$.scene.shots[2]",
    ], errors
    assert errors[0] == (
        "$.scene.shots[1].start_image: 'x.png' is not attached to the submission; "
        "add it under files, or remove start_image"
    )
    assert "'best' is not allowed" in errors[1] and "'colour'" in errors[3]
    letter = dead_letter(raw, settings, message)
    assert letter["submission"].decode() == sid and letter["reason"] == b"invalid"
    assert json.loads(letter["errors"]) == errors
    assert letter["body"].decode() == fields["body"] and float(letter["at"]) > 0
    assert pending(r, settings, message) == []
    assert not rt.state.exists(scene_id)
    assert not submission_folder(settings, sid).exists()


def test_junk_gets_clear_errors_and_ingest_goes_on(farm_cluster, rt, r, raw, settings):
    image = base64.b64encode(png()).decode()
    scene = quick_scene(new_id("scene"))
    with_start = quick_scene(new_id("scene"), start_image="/etc/x.png")
    big_file = base64.b64encode(b"\x89PNG" + os.urandom(1024 * 1024 + 10)).decode()
    cases = {
        "not-json": ("not json {", "$: the body is not valid JSON: line 1 column 1"),
        "binary": (b"\x00\xff\xfe\x80junk", "$: the body is not UTF-8 text"),
        "no-fields": ("{}", "$.submission: is required"),
        "wrong-types": (
            {"submission": 7, "scene": [], "files": "a.png", "replace": "yes", "client": 5},
            "$.scene: must be a scene object, not a list",
        ),
        "bad-base64": ({"scene": scene, "files": {"a.png": "!!not base64!!"}},
                       "$.files['a.png']: is not valid base64"),
        "not-an-image": (
            {"scene": scene, "files": {"a.png": base64.b64encode(b"hello").decode()}},
            "$.files['a.png']: is not an image",
        ),
        "traversal": ({"scene": scene, "files": {"../x.png": image}},
                      "$.files['../x.png']: '../x.png' is not a bare image file name"),
        "absolute": ({"scene": with_start, "files": {"x.png": image}},
                     "$.scene.shots[0].start_image: '/etc/x.png' must be the bare name"),
        "version": ({"version": 2, "scene": scene},
                    "$.version: 2 is not supported; this farm reads version 1"),
        "huge-body": ("x" * (2 * 1024 * 1024 + 1),
                      "$: the body is 2097153 bytes, over the limit of 2097152"),
        "huge-file": ({"scene": scene, "files": {"a.png": big_file}},
                      "(FARM_SUBMISSION_MAX_FILE_BYTES); attach a smaller image"),
    }  # fmt: skip
    sent = {}
    for tag, (body, _) in cases.items():
        sid = new_id(tag)
        if isinstance(body, dict):
            body = json.dumps({"version": 1, "submission": sid, **body})
        sent[tag] = (sid, r.xadd(stream_key(settings), {"submission": sid, "body": body}))
    nameless = r.xadd(stream_key(settings), {"submission": "../etc", "body": "{}"})
    bodiless_sid = new_id("no-body")
    bodiless = r.xadd(stream_key(settings), {"submission": bodiless_sid})
    valid_sid = new_id("after-junk")
    r.xadd(stream_key(settings), entry(valid_sid, quick_scene(new_id("scene"))))
    assert decided(r, settings, valid_sid)["state"] == "accepted"
    for tag, (sid, message) in sent.items():
        status = decided(r, settings, sid, 5)
        assert (status["state"], status["reason"]) == ("rejected", "invalid"), tag
        assert any(cases[tag][1] in e for e in status["errors"]), (tag, status["errors"])
        assert pending(r, settings, message) == [], tag
    assert decided(r, settings, sent["version"][0])["errors"] == [
        "$.version: 2 is not supported; this farm reads version 1"
    ]
    wrong = decided(r, settings, sent["wrong-types"][0])["errors"]
    assert {e.split(":")[0] for e in wrong} >= {"$.submission", "$.scene", "$.files",
                                               "$.replace", "$.client"}  # fmt: skip
    assert dead_letter(raw, settings, sent["binary"][1])["body"] == b"\x00\xff\xfe\x80junk"
    huge = dead_letter(raw, settings, sent["huge-body"][1])
    assert len(huge["body"]) == DEAD_BODY_BYTES and huge["body_bytes"] == b"2097153"
    # no usable id: only a dead letter, naming the entry's field
    letter = dead_letter(raw, settings, nameless)
    assert (
        letter["submission"] == b"" and b"the entry's submission field '../etc'" in letter["errors"]
    )
    assert not r.exists(status_key(settings, "../etc"))
    assert pending(r, settings, nameless) == []
    assert decided(r, settings, bodiless_sid)["errors"] == [
        "$: the entry has no body field; send the submission as JSON text in body"
    ]
    assert pending(r, settings, bodiless) == []
    assert farm_cluster.procs["ingest"].poll() is None  # alive throughout


def test_the_same_submission_twice_makes_one_scene(rt, r, settings):
    sid, scene_id = new_id(), new_id("scene")
    fields = entry(sid, quick_scene(scene_id))
    first = r.xadd(stream_key(settings), fields)
    second = r.xadd(stream_key(settings), fields)
    status = decided(r, settings, sid)
    assert status["state"] == "accepted" and status["message"] == first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pending(r, settings, second):
        time.sleep(0.1)
    assert pending(r, settings, second) == []
    assert r.hget(status_key(settings, sid), "duplicates") == "1"
    assert scene_queued_events(rt, scene_id) == 1
    assert wait_done(rt, scene_id)["state"] == "done"
    assert scene_queued_events(rt, scene_id) == 1


def test_a_message_a_dead_consumer_read_is_reclaimed_and_decided_once(rt, r, settings):
    """`ghost` reads the message (in the same transaction as it is added, so the running
    ingest cannot read it first) and dies; after FARM_INGEST_CLAIM_IDLE ingest claims it."""
    sid, scene_id = new_id(), new_id("scene")
    pipe = r.pipeline(transaction=True)
    pipe.xadd(stream_key(settings), entry(sid, quick_scene(scene_id)))
    pipe.xreadgroup(GROUP, "ghost", {stream_key(settings): ">"}, count=1)
    message, read = pipe.execute()
    assert read[0][1][0][0] == message
    assert pending(r, settings, message)[0]["consumer"] == "ghost"
    assert wait_status(r, settings, sid, 1.0) is None  # nobody decides it at once
    status = decided(r, settings, sid, 15)
    assert status["state"] == "accepted" and status["message"] == message
    assert pending(r, settings, message) == []
    assert scene_queued_events(rt, scene_id) == 1 and status["duplicates"] == 0


def test_a_message_delivered_too_often_is_poison(rt, r, raw, settings):
    sid, scene_id = new_id(), new_id("scene")
    pipe = r.pipeline(transaction=True)
    pipe.xadd(stream_key(settings), entry(sid, quick_scene(scene_id)))
    pipe.xreadgroup(GROUP, "ghost", {stream_key(settings): ">"}, count=1)
    message, _ = pipe.execute()
    for _ in range(settings.ingest_max_deliveries):  # each claim is one more delivery
        r.xclaim(stream_key(settings), GROUP, "ghost", 0, [message])
    status = decided(r, settings, sid, 15)
    assert (status["state"], status["reason"]) == ("rejected", "poison")
    assert "FARM_INGEST_MAX_DELIVERIES = 5" in status["errors"][0]
    assert dead_letter(raw, settings, message)["reason"] == b"poison"
    assert pending(r, settings, message) == [] and not rt.state.exists(scene_id)


def test_a_locked_submission_waits_and_is_decided_when_the_lock_goes(rt, r, settings):
    sid, scene_id = new_id(), new_id("scene")
    lock = f"{status_key(settings, sid)}:lock"
    r.set(lock, "another-ingest", ex=120)
    message = r.xadd(stream_key(settings), entry(sid, quick_scene(scene_id)))
    assert wait_status(r, settings, sid, 3.0) is None
    assert pending(r, settings, message)  # left pending, not acknowledged
    r.delete(lock)
    status = decided(r, settings, sid, 15)  # claimed again once idle
    assert status["state"] == "accepted" and pending(r, settings, message) == []
    assert scene_queued_events(rt, scene_id) == 1


def test_ingest_killed_and_restarted_decides_each_message_once(farm_cluster, rt, r, settings):
    farm_cluster.kill("ingest", signal.SIGKILL)
    try:
        ids = [(new_id(), new_id("scene")) for _ in range(3)]
        messages = [r.xadd(stream_key(settings), entry(s, quick_scene(c))) for s, c in ids]
        again = r.xadd(stream_key(settings), entry(ids[0][0], quick_scene(ids[0][1])))
        time.sleep(0.5)
        assert all(wait_status(r, settings, s, 0) is None for s, _ in ids)  # nobody reads
    finally:
        farm_cluster.start_ingest()
    for (sid, scene_id), message in zip(ids, messages, strict=True):
        status = decided(r, settings, sid)
        assert status["state"] == "accepted" and status["message"] == message
        assert scene_queued_events(rt, scene_id) == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pending(r, settings, again):
        time.sleep(0.1)
    assert r.hget(status_key(settings, ids[0][0]), "duplicates") == "1"
    assert all(pending(r, settings, m) == [] for m in [*messages, again])


def test_a_scene_enqueued_before_a_crash_is_accepted_without_a_second(rt, r, settings):
    """Ingest died between enqueueing and writing the status: the scene's record names the
    submission, so the redelivered message is accepted and nothing is enqueued again."""
    sid, scene_id = new_id(), new_id("scene")
    scene = quick_scene(scene_id)
    enqueue(parse_scene(scene), rt, submission=sid)
    message = r.xadd(stream_key(settings), entry(sid, scene))
    status = decided(r, settings, sid)
    assert status["state"] == "accepted" and status["message"] == message
    assert scene_queued_events(rt, scene_id) == 1
    assert wait_done(rt, scene_id)["state"] == "done"
    assert scene_queued_events(rt, scene_id) == 1


def test_a_scene_id_in_use_is_refused_and_replace_renders_it_again(rt, r, settings):
    scene_id = new_id("scene")
    scene = quick_scene(scene_id)
    spec = parse_scene(scene).to_dict()
    lifecycle.create(rt, spec, [{"shot_id": "s0", "node": None, "kind": "preview"}], "preview",
                     enqueuer="test")  # fmt: skip
    try:
        busy = new_id()
        r.xadd(stream_key(settings), entry(busy, scene, replace=True))
        status = decided(r, settings, busy)
        assert (status["state"], status["reason"]) == ("rejected", "refused")
        assert status["errors"] == [f"$.scene.id: scene {scene_id!r} is already queued; "
                                    "wait for it to finish or use another id"]  # fmt: skip
        r.hset(settings.keys.scene(scene_id), "state", "done")  # as if it had ended
        kept = new_id()
        r.xadd(stream_key(settings), entry(kept, scene))
        status = decided(r, settings, kept)
        assert status["reason"] == "refused" and 'send "replace": true' in status["errors"][0]
    except BaseException:
        rt.state.delete_scene(scene_id)
        raise
    replaced = new_id()
    r.xadd(stream_key(settings), entry(replaced, scene, replace=True))
    assert decided(r, settings, replaced)["state"] == "accepted"
    assert rt.state.scene(scene_id)["submission"] == replaced
    assert wait_done(rt, scene_id)["state"] == "done"


def test_an_unexpected_failure_is_rejected_as_internal(farm_cluster, rt, r, raw, settings):
    """A file where the submission's attachment folder should be makes writing the
    attachment fail: the submission is rejected as internal, the traceback logged."""
    sid, scene_id = new_id(), new_id("scene")
    blocker = submission_folder(settings, sid)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    scene = quick_scene(scene_id, start_image="a.png")
    files = {"a.png": base64.b64encode(png()).decode()}
    message = r.xadd(stream_key(settings), entry(sid, scene, files=files))
    status = decided(r, settings, sid)
    assert (status["state"], status["reason"]) == ("rejected", "internal")
    (error,) = status["errors"]
    assert error.startswith("$: internal error in ingest (FileExistsError: ")
    assert error.endswith("the ingest log has the traceback")
    assert dead_letter(raw, settings, message)["reason"] == b"internal"
    assert pending(r, settings, message) == [] and not rt.state.exists(scene_id)
    log = (farm_cluster.logs / "ingest.log").read_text()
    assert f"submission {sid} (message {message}) failed in ingest\nTraceback" in log
    blocker.unlink()


def farm_cli(*args: str, env: dict[str, str], timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "farm", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip


def test_farm_submit_accepts_and_rejects_with_exit_codes(rt, cli_env, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "first frame.jpg").write_bytes((EXAMPLES / "images" / "meadow.jpg")
                                                       .read_bytes())  # fmt: skip
    scene_id = new_id("scene")
    scene = quick_scene(scene_id, start_image="img/first frame.jpg")
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(scene))
    sid = new_id()
    out = farm_cli("submit", str(path), "--id", sid, "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert (status["state"], status["scene"], status["submission"]) == ("accepted", scene_id, sid)
    assert status["client"]["app"] == "farm"
    start = rt.state.scene(scene_id)["spec"]["shots"][0]["start_image"]
    assert Path(start).name == "first_frame.jpg" and Path(start).parent.name == sid
    again = farm_cli("submit", str(path), "--id", sid, env=cli_env)  # a duplicate: same answer
    assert again.returncode == 0 and "duplicate" in again.stderr and scene_id in again.stdout
    scene["shots"][0]["width"] = 5000
    scene["shots"][0]["camera_movements"] = ["spin"]
    path.write_text(json.dumps(scene))
    bad = farm_cli("submit", str(path), env=cli_env)
    assert bad.returncode == 2, bad.stderr
    assert "rejected submission" in bad.stderr and "(invalid)" in bad.stderr
    assert "$.scene.shots[0].width" in bad.stderr
    assert "$.scene.shots[0].camera_movements[0]" in bad.stderr
    gone = farm_cli("submit", str(tmp_path / "none.json"), env=cli_env)
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    assert wait_done(rt, scene_id)["state"] == "done"


def test_farm_submit_without_ingest_and_ingest_once(cli_env, scratch_settings, tmp_path):
    """On a prefix no ingest serves, `farm submit` says so (exit 3); `farm ingest --once`
    then decides what was written before it ever ran, and exits. The prefix has no nodes,
    so a valid scene is refused, each shot named."""
    env = {**cli_env, "FARM_PREFIX": scratch_settings.key_prefix}
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(quick_scene("lonely", 2)))
    out = farm_cli("submit", str(path), "--id", "lonely-1", "--timeout", "1", env=env)
    assert out.returncode == 3
    assert "no `farm ingest` is reading it" in out.stderr and "lonely-1" in out.stderr
    client = redis_lib.Redis.from_url(env["FARM_REDIS_URL"], decode_responses=True)
    client.xadd(stream_key(scratch_settings), {"submission": "junk-1", "body": "[]"})
    once = farm_cli("ingest", "--once", "--name", "once", env=env, timeout=60)
    assert once.returncode == 0, once.stderr
    assert "rejected submission lonely-1 (refused): 2 errors" in once.stderr
    status = decided(client, scratch_settings, "lonely-1", 0)
    assert [e.split(":")[0] for e in status["errors"]] == ["$.scene.shots[0]", "$.scene.shots[1]"]
    assert "no live node can render shot 's0'" in status["errors"][0]
    assert decided(client, scratch_settings, "junk-1", 0)["reason"] == "invalid"
    assert client.xpending(stream_key(scratch_settings), GROUP)["pending"] == 0
    client.close()


def test_ingest_rides_out_a_redis_restart(tmp_path):
    """A farm of its own (no GPU nodes), so the session farm's Redis stays up: ingest
    backs off while Redis is away and decides what arrives after."""
    farm = LocalFarm(tmp_path / "farm", [])
    farm.start()
    try:
        settings = farm.settings()
        farm.restart_redis(signal.SIGKILL, down_for=1.5)
        client = redis_lib.Redis.from_url(settings.redis_url, decode_responses=True)
        client.xadd(stream_key(settings), entry("after-restart", quick_scene("x")))
        status = decided(client, settings, "after-restart")
        assert (status["state"], status["reason"]) == ("rejected", "refused")  # no nodes
        assert farm.procs["ingest"].poll() is None
        assert "Redis is unavailable" in (farm.logs / "ingest.log").read_text()
        client.close()
    finally:
        farm.stop()


def test_read_submission_lists_every_problem_without_redis():
    settings = Settings.from_env({})
    body = {"version": 1, "submission": "b", "scene": {"id": "s", "shots": []}, "extra": 1}
    sub = read_submission({b"submission": b"a", b"body": json.dumps(body).encode()}, settings)
    assert sub.id == "a" and sub.scene_id == "s"
    assert sub.problems == [
        "$.submission: 'b' differs from the entry's submission field 'a'; send the same id in both",
        "$: unknown field(s) 'extra'; allowed: version, submission, scene, files, replace, client",
        "$.scene.shots: [] should be non-empty",
    ]


def test_a_dead_letter_body_is_cut_between_characters():
    body = ("x" * 9 + "é€").encode()  # é is 2 bytes, € 3
    assert cut(body, 100) == body
    cuts = [cut(body, n).decode() for n in (9, 10, 11, 12, 13)]
    assert cuts == ["x" * 9, "x" * 9, "x" * 9 + "é", "x" * 9 + "é", "x" * 9 + "é"]
    assert cut(b"\xff" * 10, 4) == b"\xff" * 4  # not UTF-8: cut where asked


def test_pack_submission_attaches_each_start_image_once(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "frame.png").write_bytes(png())
    scene = quick_scene("packed", 3)
    for shot, image in zip(scene["shots"], ["a/frame.png", "b/frame.png", "a/frame.png"],
                           strict=True):  # fmt: skip
        shot["start_image"] = image
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(scene))
    fields = pack_submission(path, "p-1", replace=True)
    body = json.loads(fields["body"])
    assert fields["submission"] == body["submission"] == "p-1" and body["replace"] is True
    assert [s["start_image"] for s in body["scene"]["shots"]] == [
        "frame.png", "frame-2.png", "frame.png",
    ]  # fmt: skip
    assert sorted(body["files"]) == ["frame-2.png", "frame.png"]
    assert base64.b64decode(body["files"]["frame.png"]) == png()
    assert read_submission(fields, Settings.from_env({})).problems == []
    assert attachment_name("my shot #1.PNG", set()) == "my_shot_1.png"
    with pytest.raises(Exception, match="must be 1-64 letters"):
        pack_submission(path, "no spaces")
    scene["shots"][0]["start_image"] = "missing.png"
    path.write_text(json.dumps(scene))
    with pytest.raises(Exception, match=r"\$\.shots\[0\]\.start_image: file .*missing.png"):
        pack_submission(path)


def test_an_attachment_that_is_not_an_image_is_one_problem_at_the_shot_using_it():
    """Before, ingest listed the attachment ($.files['a.png']: is not an image) and then
    each shot using it as "not attached to the submission", which it was (so too for an
    attachment that is not base64)."""
    settings = Settings.from_env({})
    scene = quick_scene("s", 3)
    for shot in scene["shots"][:2]:
        shot["start_image"] = "a.png"
    scene["shots"][2]["start_image"] = "b.png"
    files = {"a.png": base64.b64encode(b"GIF89a? no, just text").decode(),
             "b.png": "not base64!",
             "spare.png": base64.b64encode(png()[:100]).decode()}  # fmt: skip
    body = {"version": 1, "submission": "x", "scene": scene, "files": files}
    sub = read_submission({"submission": "x", "body": json.dumps(body)}, settings)
    bad = ("the attached file 'a.png' is not an image (Pillow cannot tell its format); use a "
           "PNG, JPEG or WebP image of 16 to 4,096 pixels a side")  # fmt: skip
    assert len(sub.problems) == 4, sub.problems
    assert sub.problems[0].startswith("$.files['b.png']: is not valid base64")  # said once
    assert sub.problems[1:3] == [f"$.scene.shots[0].start_image: {bad}",
                                 f"$.scene.shots[1].start_image: {bad}"]  # fmt: skip
    assert sub.problems[3].startswith("$.files['spare.png']: is a damaged image (")
    assert not any("not attached" in p for p in sub.problems)


def test_an_attached_start_image_that_is_not_an_image_is_rejected_once(rt, r, settings):
    sid, scene_id = new_id(), new_id("scene")
    scene = quick_scene(scene_id, start_image="card.png")
    body = {"version": 1, "submission": sid, "scene": scene,
            "files": {"card.png": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"junk" * 50).decode()}}  # fmt: skip
    r.xadd(stream_key(settings), {"submission": sid, "body": json.dumps(body)})
    status = decided(r, settings, sid)
    assert (status["state"], status["reason"]) == ("rejected", "invalid")
    (error,) = status["errors"]
    assert error.startswith("$.scene.shots[0].start_image: the attached file 'card.png' is ")
    assert error.endswith("; use a PNG, JPEG or WebP image of 16 to 4,096 pixels a side")
    assert not rt.state.exists(scene_id)


def test_farm_submit_prints_a_few_lines_for_a_huge_invalid_scene(cli_env, scratch_settings,
                                                                  tmp_path):  # fmt: skip
    """A scene of 100,000 shots (4.5 MB) or with a 5 MB string, under a farm's body limit:
    ingest's report of it, and what `farm submit` prints of that report, are a few lines
    naming the limit (they were 4.5 and 5.1 MB)."""
    mib = 2**20
    env = {**cli_env, "FARM_PREFIX": scratch_settings.key_prefix,
           "FARM_SUBMISSION_MAX_BYTES": str(64 * mib)}  # fmt: skip
    shot = {"id": "s", "action_description": "a"}
    cases = {
        "many": ({"id": "many", "shots": [dict(shot, id=f"s{i}") for i in range(100_000)]},
                 "over the limit of 10,000 shots; give at most 10,000 shots"),
        "long": ({"id": "long", "shots": [dict(shot, negative_prompt="n" * 5 * mib)]},
                 "over the limit of 2,000 characters; give at most 2,000 characters"),
    }  # fmt: skip
    for name, (scene, _) in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(scene))
        sent = farm_cli("submit", str(tmp_path / f"{name}.json"), "--id", f"{name}-1",
                        "--timeout", "0", env=env)  # fmt: skip
        assert sent.returncode == 3, sent.stderr  # no ingest serves this prefix yet
    once = farm_cli("ingest", "--once", "--name", "once", env=env, timeout=120)
    assert once.returncode == 0 and len(once.stderr) < 10_000, once.stderr[-2000:]
    client = redis_lib.Redis.from_url(env["FARM_REDIS_URL"], decode_responses=True)
    for name, (_, limit) in cases.items():
        status = decided(client, scratch_settings, f"{name}-1", 0)
        assert status["reason"] == "invalid" and len(json.dumps(status["errors"])) < 1_000
        assert limit in status["errors"][0], status["errors"]
        again = farm_cli("submit", str(tmp_path / f"{name}.json"), "--id", f"{name}-1", env=env)
        assert again.returncode == 2 and "duplicate" in again.stderr
        assert len(again.stdout) + len(again.stderr) < 1_500 and limit in again.stderr
    farm_cli("ingest", "--once", "--name", "once", env=env, timeout=120)  # the duplicates
    client.close()
