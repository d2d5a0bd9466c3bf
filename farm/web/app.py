"""The aiohttp application of `farm web`: pages, actions, live updates and files.

Pages are rendered on the server (jinja2); each page's ``/events/...`` address streams
Server-Sent Events: the page's parts (by element id) as HTML, sent again only when they
change. A connection follows the Redis event streams of what it shows with ``XREAD
BLOCK`` (one Redis connection per page, no polling per shot) and keeps nothing but the
stream positions and a digest of each part it sent, so a page open for a day stays the
same size. Redis calls that are not blocking run in threads through the farm's own
(synchronous) functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import redis.asyncio as aredis
from aiohttp import web

from farm.errors import FarmError, InvalidInput
from farm.lifecycle import SceneState
from farm.report import PALETTE
from farm.runtime import Runtime, get_runtime
from farm.web import auth, views

HERE = Path(__file__).parent
ACTIONS = ("cancel", "pause", "resume", "retry", "priority")
#: the longest an event stream stays open (the browser reconnects by itself)
STREAM_SECONDS = 3600
#: seconds a page's stream waits for an event before it looks again (new scenes, nodes)
LIST_WAIT, SCENE_WAIT = 2.0, 15.0
COALESCE = 0.25  # seconds: events this close together make one update
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
       "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")  # fmt: skip
FILE_CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; "
            "style-src 'self' 'unsafe-inline'; script-src 'none'; frame-ancestors 'none'")  # fmt: skip

RT = web.AppKey("rt", Runtime)
LOGINS = web.AppKey("logins", dict)
SESSIONS = web.AppKey("sessions", auth.Sessions)
JINJA = web.AppKey("jinja", jinja2.Environment)
AREDIS = web.AppKey("aredis", aredis.Redis)


def async_client(rt: Runtime) -> aredis.Redis:
    """An asyncio Redis client for the streams (the settings' URL, TLS and sentinels)."""
    s = rt.settings
    options = {"decode_responses": True, "socket_connect_timeout": 5, "max_connections": 200,
               **s.redis_ssl()}  # fmt: skip
    url = s.redis_sentinel
    if url is None:
        return aredis.Redis.from_url(s.redis_url, **options)
    from redis.asyncio.sentinel import Sentinel

    options.pop("max_connections")
    sentinels = Sentinel(list(url.sentinels), sentinel_kwargs=s.redis_sentinel_kwargs(),
                         username=url.username, password=url.password, db=url.db, ssl=url.tls,
                         **options)  # fmt: skip
    return sentinels.master_for(s.redis_sentinel_master)


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def render(request: web.Request, template: str, **context: Any) -> web.Response:
    session = request.get("session") or {}
    page = request.app[JINJA].get_template(template).render(
        user=session.get("user"), csrf=session.get("csrf", ""), open=not request.app[LOGINS],
        path=request.path, **context)  # fmt: skip
    return web.Response(text=page, content_type="text/html")


# -- sessions and CSRF ----------------------------------------------------------------------
PUBLIC = ("/login", "/static/")


@web.middleware
async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]):
    """Sessions, the login wall, CSRF on every POST, and the security headers."""
    app = request.app
    token = request.cookies.get(auth.COOKIE)
    session = await run(app[SESSIONS].get, token)
    if session and app[LOGINS] and session.get("user") not in app[LOGINS]:
        session = None  # a login removed from FARM_WEB_AUTH ends its sessions
    new_cookie = None
    if session is None and not app[LOGINS]:  # --no-auth: everyone is anonymous
        new_cookie, csrf = await run(app[SESSIONS].create, auth.ANONYMOUS)
        session = {"user": auth.ANONYMOUS, "csrf": csrf}
    request["session"] = session
    if session is None and not request.path.startswith(PUBLIC):
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe=""))
        raise web.HTTPUnauthorized(text="log in first: /login")
    if request.method == "POST" and request.path != "/login":
        form = await request.post()
        given = form.get("csrf")
        if not auth.csrf_ok(session, given if isinstance(given, str) else None):
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")
    response = await handler(request)
    if response.prepared:  # an event stream: its headers are sent
        return response
    if new_cookie:
        set_cookie(response, new_cookie, app[RT].settings.web_session_ttl)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def set_cookie(response: web.StreamResponse, token: str, ttl: int) -> None:
    response.set_cookie(auth.COOKIE, token, max_age=ttl, httponly=True, samesite="Strict",
                        path="/")  # fmt: skip


async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", next=request.query.get("next", "/"), error="")


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    user, password = str(form.get("user", "")), str(form.get("password", ""))
    target = str(form.get("next", "/"))
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        target = "/"  # only this site's pages
    if not auth.check_login(request.app[LOGINS], user, password):
        await asyncio.sleep(0.5)  # slows guessing
        page = render(request, "login.html", next=target, error="wrong user or password")
        page.set_status(401)
        return page
    token, _ = await run(request.app[SESSIONS].create, user)
    response = web.HTTPSeeOther(target)
    set_cookie(response, token, request.app[RT].settings.web_session_ttl)
    raise response


async def logout(request: web.Request) -> web.Response:
    await run(request.app[SESSIONS].end, request.cookies.get(auth.COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(auth.COOKIE, path="/")
    raise response


# -- pages ----------------------------------------------------------------------------------
def _page_args(request: web.Request) -> tuple[str, str, int]:
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        page = 1
    return request.query.get("state", ""), request.query.get("q", "").strip(), page


async def scenes(request: web.Request) -> web.Response:
    state, query, page = _page_args(request)
    data = await run(views.scenes_page, request.app[RT], state, query, page)
    return render(request, "scenes.html", data=data, events="/events" + request.path_qs,
                  states=[s.value for s in SceneState])  # fmt: skip


async def scene(request: web.Request) -> web.Response:
    scene_id = request.match_info["scene"]
    data = await _scene_or_404(request.app[RT], scene_id)
    return render(request, "scene.html", s=data, msg=request.query.get("msg", ""),
                  events=f"/events/scenes/{quote(scene_id)}")  # fmt: skip


async def _scene_or_404(rt: Runtime, scene_id: str) -> dict[str, Any]:
    try:
        return await run(views.scene_view, rt, scene_id)
    except InvalidInput as exc:
        raise web.HTTPNotFound(text=str(exc)) from None


async def nodes(request: web.Request) -> web.Response:
    data = await run(views.nodes_view, request.app[RT])
    return render(request, "nodes.html", nodes=data, events="/events/nodes")


async def preview(request: web.Request) -> web.Response:
    scene_id, shot_id = request.match_info["scene"], request.match_info["shot"]
    frame = await run(request.app[RT].state.preview, scene_id, shot_id)
    if frame is None:
        raise web.HTTPNotFound(text="no preview frame")
    return web.Response(body=frame["image"], content_type=frame["mime"],
                        headers={"Cache-Control": "private, max-age=3600"})  # fmt: skip


async def files(request: web.Request) -> web.StreamResponse:
    """A file under FARM_STORAGE (clips, frames, scene videos, reports), with ranges."""
    storage = request.app[RT].settings.storage.resolve()
    rel = request.match_info["path"]
    target = (storage / rel).resolve()
    if not target.is_relative_to(storage):
        raise web.HTTPForbidden(text="outside the farm's storage")
    if not target.is_file():
        raise web.HTTPNotFound(text="no such file")
    response = web.FileResponse(target, headers={"Content-Security-Policy": FILE_CSP})
    return response


# -- actions --------------------------------------------------------------------------------
async def confirm(request: web.Request) -> web.Response:
    scene_id = request.match_info["scene"]
    action = request.query.get("action", "")
    if action not in ACTIONS:
        raise web.HTTPBadRequest(text=f"action must be one of {', '.join(ACTIONS)}")
    data = await _scene_or_404(request.app[RT], scene_id)
    shot = request.query.get("shot") or None
    if shot is not None and shot not in {c["id"] for c in data["cards"]}:
        raise web.HTTPNotFound(text=f"scene {scene_id!r} has no shot {shot!r}")
    return render(request, "confirm.html", s=data, action=action, shot=shot)


def act(rt: Runtime, scene_id: str, action: str, shot: str | None, priority: str) -> str:
    """Do ``action`` with the functions the CLI commands call; what was done, in words."""
    from farm.celery_app import app
    from farm.dispatch import Dispatcher
    from farm.submit import retry

    rt.state.scene(scene_id)  # an unknown scene: InvalidInput
    d = Dispatcher(rt, app)
    if action == "cancel":
        counts = d.cancel(scene_id, shot)
        what = f"shot {shot}" if shot else "the scene"
        return (f"cancelled {what}: {counts['dropped']} waiting dropped, "
                f"{counts['interrupting']} being stopped, {counts['over']} already over")  # fmt: skip
    if action == "pause":
        return f"paused: {d.pause(scene_id)} waiting shots held"
    if action == "resume":
        return f"resumed: {d.resume(scene_id)} shots back in the backlog"
    if action == "retry":
        return "retrying " + ", ".join(retry(rt, scene_id, [shot] if shot else []))
    try:
        value = int(priority)
    except ValueError:
        raise InvalidInput(f"priority {priority!r} is not a number from 0 to 9") from None
    return f"priority {value}: {d.set_priority(scene_id, value)} waiting shots ranked again"


async def action(request: web.Request) -> web.Response:
    scene_id = request.match_info["scene"]
    form = await request.post()
    name = str(form.get("action", ""))
    if name not in ACTIONS:
        raise web.HTTPBadRequest(text=f"action must be one of {', '.join(ACTIONS)}")
    shot = str(form.get("shot") or "") or None
    try:
        done = await run(act, request.app[RT], scene_id, name, shot, str(form.get("priority", "")))
    except FarmError as exc:
        done = f"{name} refused: {exc}"
    raise web.HTTPSeeOther(f"/scenes/{quote(scene_id)}?msg={quote(done)}")


# -- live updates ---------------------------------------------------------------------------
def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


async def stream(request: web.Request, build: Callable[[], dict[str, str]],
                 follow: Callable[[], list[str]], wait: float) -> web.StreamResponse:  # fmt: skip
    """Send the parts ``build`` makes whenever they change: after an event on a stream
    of ``follow`` (XREAD BLOCK), else every ``wait`` seconds."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store", "X-Accel-Buffering": "no",
                                           "X-Content-Type-Options": "nosniff"})  # fmt: skip
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):  # the page was closed
        await _follow(response, request.app[AREDIS], build, follow, wait)
    return response


async def _follow(response: web.StreamResponse, client: aredis.Redis,
                  build: Callable[[], dict[str, str]], follow: Callable[[], list[str]],
                  wait: float) -> None:  # fmt: skip
    sent: dict[str, bytes] = {}  # part id -> digest of the HTML sent
    at: dict[str, str] = {}  # stream -> last entry seen
    end = time.monotonic() + STREAM_SECONDS
    while time.monotonic() < end:
        keys = await run(follow)
        pipe = client.pipeline(transaction=False)
        new = [k for k in keys if k not in at]
        for key in new:
            pipe.xrevrange(key, count=1)
        last = await pipe.execute() if new else []
        at = {k: at[k] for k in keys if k in at}  # only what the page shows now
        at.update({k: (e[0][0] if e else "0-0") for k, e in zip(new, last, strict=True)})
        parts = await run(build)
        changed = {k: v for k, v in parts.items() if sent.get(k) != _digest(v)}
        sent = {k: _digest(v) for k, v in parts.items()}
        await response.write(  # an empty update keeps the connection checked
            f"data: {json.dumps({'parts': changed})}\n\n".encode() if changed else b": -\n\n"
        )
        if at:
            got = await client.xread(at, block=int(wait * 1000), count=200)
            for key, entries in got or []:
                at[key] = entries[-1][0]
            if got:
                await asyncio.sleep(COALESCE)
        else:
            await asyncio.sleep(wait)


async def scenes_events(request: web.Request) -> web.StreamResponse:
    rt, (state, query, page) = request.app[RT], _page_args(request)
    env = request.app[JINJA]
    shown: list[str] = []

    def build() -> dict[str, str]:
        data = views.scenes_page(rt, state, query, page)
        shown[:] = [r["id"] for r in data["rows"]]
        return {"rows": env.get_template("parts.html").module.scene_rows(data),  # type: ignore[attr-defined]
                "pager": env.get_template("parts.html").module.pager(data)}  # type: ignore[attr-defined]  # fmt: skip

    return await stream(request, build, lambda: [rt.state.events_key(i) for i in shown],
                        LIST_WAIT)  # fmt: skip


async def scene_events(request: web.Request) -> web.StreamResponse:
    rt, scene_id = request.app[RT], request.match_info["scene"]
    parts = request.app[JINJA].get_template("parts.html").module

    def build() -> dict[str, str]:
        try:
            data = views.scene_view(rt, scene_id)
        except InvalidInput:
            return {}
        out = {"scene-head": parts.scene_head(data)}  # type: ignore[attr-defined]
        for card in data["cards"]:
            out[f"shot-{card['id']}"] = parts.shot_card(data, card)  # type: ignore[attr-defined]
        return out

    return await stream(request, build, lambda: [rt.state.events_key(scene_id)], SCENE_WAIT)


async def nodes_events(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    parts = request.app[JINJA].get_template("parts.html").module

    def build() -> dict[str, str]:
        return {"nodes": parts.node_rows(views.nodes_view(rt))}  # type: ignore[attr-defined]

    return await stream(request, build, lambda: [], LIST_WAIT)


# -- the application ------------------------------------------------------------------------
async def palette(request: web.Request) -> web.Response:
    return web.Response(text=PALETTE, content_type="text/css",
                        headers={"Cache-Control": "max-age=3600"})  # fmt: skip


async def home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/scenes")


def make_app(rt: Runtime, logins: dict[str, str]) -> web.Application:
    """The application for the farm of ``rt``; ``logins`` empty: open (``--no-auth``)."""
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[RT], app[LOGINS] = rt, logins
    app[SESSIONS] = auth.Sessions(rt.redis, rt.settings)
    app[JINJA] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined,
    )  # fmt: skip
    app[JINJA].filters["pct"] = lambda x: f"{100 * float(x or 0):.0f}%"
    app[JINJA].globals["quote"] = lambda x: quote(str(x), safe="")
    app[AREDIS] = async_client(rt)

    async def close(app: web.Application) -> None:
        await app[AREDIS].aclose()

    app.on_cleanup.append(close)
    app.router.add_get("/", home)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/scenes", scenes)
    app.router.add_get("/scenes/{scene}", scene)
    app.router.add_get("/scenes/{scene}/confirm", confirm)
    app.router.add_post("/scenes/{scene}/actions", action)
    app.router.add_get("/scenes/{scene}/shots/{shot}/preview", preview)
    app.router.add_get("/nodes", nodes)
    app.router.add_get("/events/scenes", scenes_events)
    app.router.add_get("/events/scenes/{scene}", scene_events)
    app.router.add_get("/events/nodes", nodes_events)
    app.router.add_get("/files/{path:.+}", files)
    app.router.add_get("/static/palette.css", palette)
    app.router.add_static("/static/", HERE / "static")
    return app


def serve(host: str, port: int, no_auth: bool = False) -> None:
    """Run `farm web` until it is stopped (blocks)."""
    rt = get_runtime()
    logins = auth.logins(rt.settings, no_auth)
    from farm.state import connect

    connect(rt.settings)  # one clear line when Redis is unreachable
    web.run_app(make_app(rt, logins), host=host, port=port, shutdown_timeout=2,
                print=lambda text: print(text, flush=True))  # fmt: skip
