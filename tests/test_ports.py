"""Node readiness knows who answers on a port (farm.ports, farm.local.node_ready): a foreign
web server, a ComfyUI-speaking server that farm did not start, or a node of the other kind
is never taken for the emulator that `farm up` or LocalFarm started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from farm.errors import ConfigError
from farm.local import emulator_argv, free_port, node_ready, wait_for, wait_node
from farm.ports import holds_port, port_taken

from .conftest import NODES


def start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=15)


def test_a_port_is_taken_while_something_listens_and_held_by_that_process():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert port_taken(port)
        assert holds_port(os.getpid(), port)
        assert not holds_port(os.getppid(), port)
    assert not port_taken(port)
    assert not holds_port(os.getpid(), port)


def test_a_foreign_web_server_is_no_node_even_for_its_own_process(tmp_path):
    port = free_port()
    web = start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                tmp_path / "web.log")  # fmt: skip
    try:
        wait_for(lambda: holds_port(web.pid, port), 20, "http.server")
        # it answers (404 on /emulator/faults and /system_stats): the old check took that
        assert not node_ready("comfyui", port, web.pid)
        assert not node_ready("wan2gp", port, web.pid)
    finally:
        stop(web)


def test_a_comfyui_server_farm_did_not_start_is_told_apart(tmp_path):
    port = free_port()
    profile = NODES / "node-a.json"
    bystander = start(emulator_argv("comfyui", port, profile, tmp_path / "bystander"),
                      tmp_path / "bystander.log")  # fmt: skip
    try:
        wait_for(lambda: node_ready("comfyui", port, bystander.pid), 30, "bystander", bystander)
        assert not node_ready("wan2gp", port, bystander.pid)  # the wrong kind
        # our emulator, started on the port the bystander holds, never counts as ready: it
        # dies on "address already in use", and the wait says so with its log
        log = tmp_path / "ours.log"
        ours = start(emulator_argv("comfyui", port, profile, tmp_path / "ours"), log)
        try:
            assert not node_ready("comfyui", port, ours.pid)
            with pytest.raises(ConfigError, match="emulator gpu-a exited with code"):
                wait_node("comfyui", port, ours, "emulator gpu-a", log, 60)
        finally:
            stop(ours)
    finally:
        stop(bystander)


def test_a_wangp_node_is_ready_as_wan2gp_only(tmp_path):
    port = free_port()
    node = start(emulator_argv("wan2gp", port, NODES / "wan-a.json", tmp_path / "wan"),
                 tmp_path / "wan.log")  # fmt: skip
    try:
        wait_node("wan2gp", port, node, "emulator wan-a", tmp_path / "wan.log", 60)
        assert not node_ready("comfyui", port, node.pid)
    finally:
        stop(node)
