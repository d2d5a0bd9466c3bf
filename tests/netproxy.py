"""A TCP proxy that delays and drops: a bad network link for tests, since this kernel has
no ``netem`` qdisc.

``python -m tests.netproxy --listen 127.0.0.1:16379 --to 10.213.0.2:6379 --delay 0.1
--drop-every 4``: each byte reaches the other side ``delay`` seconds after it was read (in
both directions, so a round trip takes twice that), and each connection is closed, both
ways at once, after a random lifetime around ``drop-every`` seconds (0: never).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds late, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                break
        await sender
    finally:
        sender.cancel()


async def _serve(args: argparse.Namespace) -> None:
    target = _address(args.to)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except (TimeoutError, OSError):
            client_w.close()
            return
        pipes = asyncio.gather(_pipe(client_r, server_w, args.delay),
                               _pipe(server_r, client_w, args.delay))  # fmt: skip
        life = random.uniform(0.5, 1.5) * args.drop_every if args.drop_every > 0 else None
        try:
            await asyncio.wait_for(pipes, life)
        except TimeoutError:
            print(f"dropped a connection to {args.to} after {life:.1f}s", flush=True)
        except Exception:  # a side closed: the connection is over
            pass
        for writer in (client_w, server_w):
            with contextlib.suppress(Exception):
                writer.transport.abort()  # a dropped connection: no goodbye

    server = await asyncio.start_server(handle, *_address(args.listen))
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--to", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds, each direction")
    parser.add_argument("--drop-every", type=float, default=0.0,
                        help="mean seconds a connection lives (0: forever)")  # fmt: skip
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
