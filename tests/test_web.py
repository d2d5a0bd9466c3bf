"""`farm web` against the session's real farm: the login wall, CSRF, each page against
`farm status --json` / `farm nodes --json`, files only from storage (ranges, no path
escapes), and in headless Chromium: live updates without reload, preview frames, a clip
that plays, cancel from the page. Screenshots go to build/test-artifacts/."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from farm.lifecycle import TERMINAL_SCENE
from farm.local import free_port
from farm.submit import enqueue

from .cdp import Browser, chromium
from .conftest import REPO
from .test_cli import farm
from .test_control import ati_scene, rendering, set_faults, wait_for
from .test_e2e import wait_done

ARTIFACTS = REPO / "build" / "test-artifacts"
LOGIN = ("director", "s3cret-pass")


def start_web(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "farm", "web", "--port", str(port), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "farm web did not start"
        try:
            requests.get(base + "/login", timeout=2)
            return proc, base
        except requests.ConnectionError:
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def web_env(farm_cluster):
    return {**os.environ, **farm_cluster.env(), "FARM_WEB_AUTH": ":".join(LOGIN)}


@pytest.fixture(scope="module")
def server(web_env):
    proc, base = start_web(web_env)
    yield base
    stop(proc)


def logged_in(base: str) -> requests.Session:
    session = requests.Session()
    resp = session.post(base + "/login", data={"user": LOGIN[0], "password": LOGIN[1],
                                               "next": "/scenes"}, timeout=10)  # fmt: skip
    assert resp.status_code == 200 and resp.url.endswith("/scenes"), resp.text[:300]
    return session


def csrf_of(session: requests.Session, url: str) -> str:
    page = session.get(url, timeout=10).text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


@pytest.fixture(scope="module")
def done_scene(farm_cluster):
    """A small scene rendered to the end (clips, scene video, report)."""
    from farm.runtime import get_runtime

    rt = get_runtime()
    scene = ati_scene("web-done", 2)
    enqueue(scene, rt)
    status = wait_done(rt, scene.id)
    assert status["state"] == "done"
    return scene.id


# -- starting ---------------------------------------------------------------------------------
def test_web_refuses_to_start_without_a_login_unless_told(farm_cluster):
    env = {**os.environ, **farm_cluster.env()}
    env.pop("FARM_WEB_AUTH", None)
    port = str(free_port())
    proc = subprocess.run([sys.executable, "-m", "farm", "web", "--port", port], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 3 and "FARM_WEB_AUTH=user:password" in proc.stderr
    for bad in ("director", "a: b"):
        proc = subprocess.run([sys.executable, "-m", "farm", "web", "--port", port],
                              env={**env, "FARM_WEB_AUTH": bad}, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert proc.returncode == 3 and "FARM_WEB_AUTH: login" in proc.stderr, proc.stderr
    both = subprocess.run([sys.executable, "-m", "farm", "web", "--port", port, "--no-auth"],
                          env={**env, "FARM_WEB_AUTH": "a:b"}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert both.returncode == 3 and "choose one" in both.stderr
    proc, base = start_web(env, "--no-auth")  # open only when told; CSRF still applies
    try:
        session = requests.Session()
        assert session.get(base + "/scenes", timeout=10).status_code == 200
        refused = session.post(base + "/scenes/x/actions", data={"action": "pause"}, timeout=10)
        assert refused.status_code == 403
    finally:
        stop(proc)


# -- login and CSRF ---------------------------------------------------------------------------
def test_every_page_needs_a_login_and_a_wrong_password_is_refused(server):
    page = requests.get(server + "/scenes", headers={"Accept": "text/html"}, timeout=10,
                        allow_redirects=False)  # fmt: skip
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=")
    for path in ("/events/scenes", "/nodes", "/files/scenes/x/scene.mp4", "/scenes/x"):
        assert requests.get(server + path, timeout=10).status_code == 401, path
    wrong = requests.post(server + "/login", data={"user": LOGIN[0], "password": "nope"},
                          timeout=10, allow_redirects=False)  # fmt: skip
    assert wrong.status_code == 401 and "wrong user or password" in wrong.text
    assert "Set-Cookie" not in wrong.headers
    for elsewhere in ("https://evil.example/", "//evil.example/", "/\\evil.example/"):
        away = requests.post(server + "/login", timeout=10, allow_redirects=False,
                             data={"user": LOGIN[0], "password": LOGIN[1], "next": elsewhere})  # fmt: skip
        assert away.status_code == 303 and away.headers["Location"] == "/", elsewhere
    good = requests.post(server + "/login", data={"user": LOGIN[0], "password": LOGIN[1]},
                         timeout=10, allow_redirects=False)  # fmt: skip
    assert good.status_code == 303
    cookie = good.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_an_action_without_the_right_csrf_token_is_refused(server, rt, done_scene):
    session = logged_in(server)
    before = rt.state.status(done_scene)
    url = f"{server}/scenes/{done_scene}/actions"
    for form in ({"action": "retry"}, {"action": "retry", "csrf": "forged"}):
        resp = session.post(url, data=form, timeout=10, allow_redirects=False)
        assert resp.status_code == 403 and "CSRF" in resp.text
    assert rt.state.status(done_scene)["state"] == before["state"] == "done"
    # logging out needs the token too, and ends the session
    token = csrf_of(session, f"{server}/scenes")
    assert session.post(server + "/logout", data={"csrf": token}, timeout=10).status_code == 200
    assert session.get(server + "/nodes", timeout=10).status_code == 401


def test_a_session_survives_a_restart_of_farm_web(web_env):
    proc, base = start_web(web_env)
    session = logged_in(base)
    stop(proc)
    proc, base2 = start_web(web_env)
    try:
        resp = session.get(base2 + "/nodes", timeout=10, allow_redirects=False)
        assert resp.status_code == 200 and "Nodes" in resp.text
    finally:
        stop(proc)


# -- pages against the CLI ---------------------------------------------------------------------
def test_the_pages_show_what_farm_status_and_farm_nodes_show(server, cli_env, done_scene):
    session = logged_in(server)
    listing = json.loads(farm("status", "--json", env=cli_env).stdout)
    page = session.get(server + "/scenes", timeout=10).text
    rows = re.findall(r'<tr data-scene="([^"]+)">.*?<span class="badge \w+">(\w+)</span>', page,
                      re.S)  # fmt: skip
    assert [scene_id for scene_id, _ in rows] == [s["id"] for s in listing][: len(rows)]
    assert dict(rows) == {s["id"]: s["state"] for s in listing if s["id"] in dict(rows)}
    assert done_scene in dict(rows)
    found = session.get(server + "/scenes", params={"q": "web-do", "state": "done"}, timeout=10)
    assert re.findall(r'<tr data-scene="([^"]+)"', found.text) == [done_scene]

    status = json.loads(farm("status", done_scene, "--json", env=cli_env).stdout)
    page = session.get(f"{server}/scenes/{done_scene}", timeout=10).text
    cards = re.findall(r'<article class="shot card" id="shot-([^"]+)" data-state="(\w+)">', page)
    assert cards == [(s["id"], s["state"]) for s in status["shots"]]
    for shot in status["shots"]:
        assert f"node <b>{shot['node']}</b>" in page
    assert 'id="scene-video"' in page and "report.html" in page

    nodes = json.loads(farm("nodes", "--json", env=cli_env).stdout)
    page = session.get(server + "/nodes", timeout=10).text
    shown = re.findall(r'<tr data-node="([^"]+)">.*?<span class="badge (ok|bad)">', page, re.S)
    assert shown == [(n["name"], "ok" if n["alive"] else "bad") for n in nodes]
    for n in nodes:
        assert n["gpu"] in page


# -- files --------------------------------------------------------------------------------------
def raw_get(base: str, path: str, cookie: str) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers={"Cookie": f"farm_web={cookie}"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def test_files_come_only_from_storage(server, farm_cluster, rt, done_scene):
    session = logged_in(server)
    cookie = session.cookies["farm_web"]
    storage = rt.settings.storage.resolve()
    outside = storage.parent / "outside-secret.txt"
    outside.write_text("secret")
    link = storage / "scenes" / done_scene / "escape.txt"
    link.symlink_to(outside)
    try:
        for path in ("/files/..%2foutside-secret.txt", "/files/%2e%2e/outside-secret.txt",
                     "/files/../outside-secret.txt", "/files/scenes/..%2f..%2foutside-secret.txt",
                     f"/files/{outside}", f"/files/%2f{str(outside).lstrip('/')}",
                     f"/files/scenes/{done_scene}/escape.txt", "/files/..%2f..%2f..%2fetc%2fpasswd"):  # fmt: skip
            status, body = raw_get(server, path, cookie)
            assert status in (403, 404), (path, status)
            assert b"secret" not in body and b"root:" not in body, path
    finally:
        link.unlink()
        outside.unlink()


def test_a_clip_is_served_with_range_requests(server, rt, done_scene):
    session = logged_in(server)
    page = session.get(f"{server}/scenes/{done_scene}", timeout=10).text
    clip = re.search(r'<video class="clip" controls preload="auto" muted src="([^"]+)"', page)[1]
    shot = rt.state.status(done_scene)["shots"][0]
    path = Path(shot["outputs"]["final"])
    data = path.read_bytes()
    assert clip == "/files/" + path.resolve().relative_to(rt.settings.storage.resolve()).as_posix()
    part = session.get(server + clip, headers={"Range": "bytes=10-99"}, timeout=10)
    assert part.status_code == 206
    assert part.content == data[10:100]
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(data)}"
    whole = session.get(server + clip, timeout=10)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Accept-Ranges"] == "bytes"


# -- in a browser -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(server):
    if chromium() is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/system-deps.sh)")
    with Browser() as b:
        b.open(server + "/scenes")
        b.wait_js("document.querySelector('input[name=password]')")
        b.screenshot(ARTIFACTS / "web-login.png")
        b.evaluate(f"""(() => {{
            document.querySelector('input[name=user]').value = {json.dumps(LOGIN[0])};
            document.querySelector('input[name=password]').value = {json.dumps(LOGIN[1])};
            document.querySelector('form.login').submit(); }})()""")  # fmt: skip
        b.wait_js("location.pathname === '/scenes' && document.querySelector('#rows')")
        yield b


def test_a_scene_appears_and_its_shots_finish_live_with_previews_and_a_playing_clip(
    browser, server, rt, farm_cluster
):
    b = browser
    b.open(server + "/scenes")
    b.wait_js("document.querySelector('#live.on')")
    b.evaluate("window.notReloaded = true")
    set_faults(farm_cluster, "node-c", {"slow": {"rate": 1.0, "factor": 8}})
    try:
        scene = ati_scene("web-live", 2)
        enqueue(scene, rt)
        b.wait_js("document.querySelector('tr[data-scene=\"web-live\"]')", timeout=20)
        assert b.evaluate("window.notReloaded") is True
        b.screenshot(ARTIFACTS / "web-scenes.png")
        b.open(f"{server}/scenes/web-live")
        b.wait_js("document.querySelector('#live.on')")
        b.evaluate("window.notReloaded = true")
        b.wait_js("[...document.querySelectorAll('img.frame')].some(i => i.complete && "
                  "i.naturalWidth > 0)", timeout=60)  # fmt: skip
        b.screenshot(ARTIFACTS / "web-scene-rendering.png")
    finally:
        set_faults(farm_cluster, "node-c", {})
    b.wait_js("[...document.querySelectorAll('article.shot')].every(c => "
              "c.dataset.state === 'done') && document.querySelector('#scene-video')",
              timeout=120)  # fmt: skip
    assert b.evaluate("window.notReloaded") is True
    assert wait_done(rt, "web-live")["state"] == "done"
    b.evaluate("document.querySelector('video.clip').play()")
    assert b.wait_js("document.querySelector('video.clip').readyState", timeout=30) >= 2
    b.wait_js("document.querySelector('video.clip').readyState >= 2")
    b.screenshot(ARTIFACTS / "web-scene-done.png")
    b.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme",
                                                    "value": "dark"}])  # fmt: skip
    assert b.evaluate("getComputedStyle(document.documentElement).backgroundColor") == (
        "rgb(21, 23, 26)"  # report.html's dark --bg
    )
    b.screenshot(ARTIFACTS / "web-scene-done-dark.png")
    b.call("Emulation.setEmulatedMedia", features=[])
    b.open(server + "/nodes")
    b.wait_js("document.querySelector('tr[data-node]')")
    b.screenshot(ARTIFACTS / "web-nodes.png")


def test_cancel_from_the_page_interrupts_the_render(browser, server, rt, farm_cluster):
    b = browser
    set_faults(farm_cluster, "node-c", {"hang": {"at_step": 2}})
    try:
        scene = ati_scene("web-cancel", 2)
        enqueue(scene, rt)
        running = wait_for(lambda: rendering(rt, scene.id), what="a running shot")
        b.open(f"{server}/scenes/{scene.id}")
        b.wait_js("document.querySelector('a.button.danger')")
        b.evaluate("document.querySelector('#scene-head a.button.danger').click()")
        b.wait_js("document.querySelector('#confirm')")
        assert "Cancel scene web-cancel?" in b.text()
        b.screenshot(ARTIFACTS / "web-confirm.png")
        b.evaluate("document.querySelector('#confirm').click()")
        b.wait_js("document.querySelector('#flash')")
        assert "cancelled the scene" in b.text()
        wait_for(lambda: rt.state.shot(scene.id, running["id"])["state"] == "cancelled",
                 timeout=10, what="the running shot to be cancelled")  # fmt: skip
        status = wait_done(rt, scene.id, timeout=60)
    finally:
        set_faults(farm_cluster, "node-c", {})
    assert status["state"] == "cancelled" and status["state"] in TERMINAL_SCENE
    history = requests.get(farm_cluster.node_url("node-c") + "/history", timeout=5).json()
    assert any(m[0] == "execution_interrupted" for h in history.values()
               for m in h["status"].get("messages", []))  # fmt: skip
    b.wait_js("document.querySelector('#scene-head').dataset.state === 'cancelled'", timeout=30)
    # and the retry of a cancelled shot, from the page too
    session = logged_in(server)
    token = csrf_of(session, f"{server}/scenes/{scene.id}")
    done = session.post(f"{server}/scenes/{scene.id}/actions", timeout=10,
                        data={"action": "retry", "shot": running["id"], "csrf": token})  # fmt: skip
    assert f"retrying {running['id']}" in done.text
    wait_for(lambda: rt.state.status(scene.id)["state"] not in TERMINAL_SCENE, timeout=10,
             what="the scene to run again")  # fmt: skip
    again = wait_done(rt, scene.id, timeout=90)
    shots = {s["id"]: s["state"] for s in again["shots"]}
    assert shots[running["id"]] == "done"
    assert again["state"] == "partial"  # the other shot stays cancelled


def test_pause_priority_and_resume_from_the_page_do_what_the_cli_does(server, rt, farm_cluster,
                                                                       cli_env):  # fmt: skip
    from farm.dispatch import Dispatcher
    from farm.scheduler import class_of, rank_class

    keys = rt.settings.keys
    set_faults(farm_cluster, "node-c", {"hang": {"at_step": 2}})
    scene = ati_scene("web-steer", 5)
    try:
        enqueue(scene, rt)
        wait_for(lambda: any(s["state"] == "running" for s in rt.state.status(scene.id)["shots"]),
                 what="a running shot")  # fmt: skip
        session = logged_in(server)
        page = f"{server}/scenes/{scene.id}"
        token = csrf_of(session, page)
        ask = session.get(f"{page}/confirm", params={"action": "pause"}, timeout=10)
        assert ask.status_code == 200 and "Pause scene web-steer?" in ask.text
        done = session.post(f"{page}/actions", data={"action": "pause", "csrf": token}, timeout=10)
        assert done.status_code == 200 and "paused: " in done.text
        parked = rt.redis.hgetall(keys.parked(scene.id))
        assert parked and rt.state.status(scene.id)["paused"] is True
        assert f"{len(parked)} waiting shots held" in done.text

        out = farm("priority", scene.id, "2", "--json", env=cli_env)
        assert out.returncode == 0, out.stderr
        reranked = json.loads(out.stdout)
        assert reranked["scene"] == scene.id and reranked["priority"] == 2
        assert len(parked) <= reranked["reranked"] <= 5  # a bound shot may come back parked
        wrong = farm("priority", scene.id, "12", "--json", env=cli_env)
        assert wrong.returncode == 2 and "priority 12 must be from 0" in wrong.stderr
        unknown = farm("priority", "no-such-scene", "3", env=cli_env)
        assert unknown.returncode == 2 and "no scene 'no-such-scene'" in unknown.stderr
        done = session.post(f"{page}/actions", timeout=10,
                            data={"action": "priority", "priority": "9", "csrf": token})  # fmt: skip
        assert re.search(r"priority 9: [1-5] waiting shots ranked again", done.text)
        assert rt.redis.hget(keys.scene(scene.id), "priority") == "9"
        for text in rt.redis.hgetall(keys.parked(scene.id)).values():
            assert class_of(json.loads(text)[1]) == rank_class("final", 9)
        bad = session.post(f"{page}/actions", timeout=10,
                           data={"action": "priority", "priority": "12", "csrf": token})  # fmt: skip
        assert "priority refused: priority 12 must be from 0" in bad.text

        # a node blocked for the open scene (as the render tasks record failures) is shown
        # on the nodes page as `farm status` names it
        rt.redis.hset(keys.blocklist(scene.id), "node-a", rt.settings.blocklist_after)
        blocked = json.loads(farm("status", scene.id, "--json", env=cli_env).stdout)["blocked"]
        assert [b["node"] for b in blocked] == ["node-a"]
        nodes = session.get(f"{server}/nodes", timeout=10).text
        row = re.search(r'<tr data-node="node-a">.*?</tr>', nodes, re.S)[0]
        assert scene.id in row
        rt.redis.delete(keys.blocklist(scene.id))

        parked = rt.redis.hgetall(keys.parked(scene.id))
        done = session.post(f"{page}/actions", data={"action": "resume", "csrf": token}, timeout=10)
        assert f"resumed: {len(parked)} shots back" in done.text
        assert rt.redis.hlen(keys.parked(scene.id)) == 0
        assert rt.state.status(scene.id)["paused"] is False
    finally:
        from farm.celery_app import app

        Dispatcher(rt, app).cancel(scene.id)
        set_faults(farm_cluster, "node-c", {})
    assert wait_done(rt, scene.id, timeout=60)["state"] == "cancelled"
