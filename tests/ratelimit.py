"""A small real HTTP rate limiter on loopback, in front of a server: it answers the first
``refuse[route]`` requests of a route with ``429`` and a ``Retry-After``, as a hosted API
does when a client goes over its rate; it loses the answer to the first ``drop[route]``
requests it forwarded (the connection closes unanswered, as a network failing just after
the server acted does); and it forwards every other request (streamed, so an
SSE stream passes through live; with its Host header, as a reverse proxy does). It records what it answered."""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import requests

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class RateLimiter:
    def __init__(
        self,
        upstream: str,
        refuse: dict[str, int] | None = None,
        retry_after: float = 1.0,
        drop: dict[str, int] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.left = Counter(refuse or {})
        self.drops = Counter(drop or {})
        self.retry_after = retry_after
        self.seen: list[tuple[float, str, int]] = []  # (time, "METHOD /path", status)
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> RateLimiter:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answered(self, route: str) -> list[tuple[float, int]]:
        return [(t, status) for t, r, status in self.seen if r == route]

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        limiter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one exchange per connection: no framing to keep

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                route = f"{self.command} {urlsplit(self.path).path}"
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else None
                with limiter.lock:
                    refused = limiter.left[route] > 0
                    if refused:
                        limiter.left[route] -= 1
                if refused:
                    limiter.seen.append((time.monotonic(), route, 429))
                    text = b'{"error":{"code":"rate_limited","message":"slow down","details":null}}'
                    self.send_response(429)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Retry-After", f"{limiter.retry_after:g}")
                    self.end_headers()
                    self.wfile.write(text)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                try:
                    resp = requests.request(
                        self.command, limiter.upstream + self.path, headers=headers, data=body,
                        stream=True, timeout=(5, 120), allow_redirects=False,
                    )  # fmt: skip
                except requests.RequestException:
                    self.send_error(502)
                    return
                with limiter.lock:
                    dropped = limiter.drops[route] > 0
                    if dropped:
                        limiter.drops[route] -= 1
                if dropped:  # the server acted; its answer is lost on the way back
                    resp.close()
                    limiter.seen.append((time.monotonic(), route, 0))
                    self.close_connection = True
                    return
                limiter.seen.append((time.monotonic(), route, resp.status_code))
                with resp:
                    self.send_response(resp.status_code)
                    for key, value in resp.headers.items():
                        if key.lower() not in HOP and key.lower() != "content-encoding":
                            self.send_header(key, value)
                    self.end_headers()
                    try:
                        for chunk in resp.raw.stream(1 << 16, decode_content=True):
                            self.wfile.write(chunk)
                            self.wfile.flush()
                    except (OSError, requests.RequestException):
                        pass

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _any

        return Handler
