"""Just enough of the Chrome DevTools Protocol to drive Debian's headless Chromium from a
test: open a page, answer its basic-auth challenge like a user typing the login, read the
page's text and save a screenshot. Speaks to the browser over its websocket
(websocket-client), so no browser download or driver is needed."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
import websocket

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with a fresh profile and one page, driven over CDP."""

    def __init__(self, login: tuple[str, str] | None = None, timeout: float = 30) -> None:
        exe = chromium()
        if exe is None:
            raise RuntimeError("chromium is not installed: `make test` installs it")
        self.login, self.timeout = login, timeout
        self.profile = Path(tempfile.mkdtemp(prefix="farm-chromium-"))
        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout)
        self.ids = itertools.count(1)
        self.auth_challenges = 0
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Fetch.enable", patterns=[{"urlPattern": "*"}], handleAuthRequests=True)

    # protocol
    def _handle(self, message: dict) -> None:
        """Let paused requests go on, and answer login prompts."""
        method, params = message.get("method"), message.get("params", {})
        if method == "Fetch.requestPaused":
            self._send("Fetch.continueRequest", requestId=params["requestId"])
        elif method == "Fetch.authRequired":
            self.auth_challenges += 1
            if self.login:
                answer = {"response": "ProvideCredentials", "username": self.login[0],
                          "password": self.login[1]}  # fmt: skip
            else:
                answer = {"response": "CancelAuth"}
            self._send("Fetch.continueWithAuth", requestId=params["requestId"],
                       authChallengeResponse=answer)  # fmt: skip

    def _send(self, method: str, **params) -> int:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        return msg_id

    def call(self, method: str, **params) -> dict:
        msg_id = self._send(method, **params)
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._handle(message)

    def pump(self, seconds: float) -> None:
        """Serve the browser's events for ``seconds``."""
        end = time.monotonic() + seconds
        self.ws.settimeout(0.1)
        try:
            while time.monotonic() < end:
                with contextlib.suppress(websocket.WebSocketTimeoutException):
                    self._handle(json.loads(self.ws.recv()))
        finally:
            self.ws.settimeout(self.timeout)

    # what a test does
    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        result = self.call(
            "Runtime.evaluate", expression="document.body ? document.body.innerText : ''"
        )
        return result["result"].get("value", "")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_js(self, expression: str, timeout: float = 30):
        """The value of ``expression`` once it is truthy (a DOM node: True); fails with the
        page's text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):  # the page may be loading
                value = self.evaluate(f"(v => v instanceof Node || v)({expression})")
                if value:
                    return value
            self.pump(0.3)
        raise AssertionError(f"{expression} never held; the page showed:\n{self.text()[:2000]}")

    def wait_text(self, *needles: str, timeout: float = 30) -> str:
        """The page's text once it holds every needle (fails with the text it had)."""
        return self.wait_until(
            lambda text: all(n in text for n in needles), f"{list(needles)}", timeout
        )

    def wait_until(self, check: Callable[[str], bool], what: str, timeout: float = 30) -> str:
        """The page's text once ``check(text)`` holds (fails with the text it had)."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if check(text):
                return text
            self.pump(0.5)
        raise AssertionError(f"page never showed {what}; it showed:\n{text[:2000]}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
