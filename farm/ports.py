"""Who holds a TCP port on this machine: checked before a farm starts its servers (is the
port free?) and while they start (is it the process we started that listens there?).

Linux: the listening sockets come from ``/proc/PID/net/tcp`` and ``/proc/PID/net/tcp6``
(the process's own network namespace), their owners from ``/proc/PID/fd``.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

LISTEN = "0A"  # the state of a listening socket in /proc/net/tcp


def port_taken(port: int, address: str = "127.0.0.1") -> bool:
    """Whether another socket already listens on ``address:port`` (a server we would start
    there would fail with "address already in use")."""
    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _listening_inodes(port: int, pid: int | str = "self") -> set[str]:
    """The inodes of the sockets listening on ``port`` (any address) in the network
    namespace of process ``pid``."""
    inodes = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def holds_port(pid: int, port: int) -> bool:
    """Whether process ``pid`` is the one listening on ``port``."""
    inodes = _listening_inodes(port, pid)
    if not inodes:
        return False
    try:
        fds = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd.path)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
