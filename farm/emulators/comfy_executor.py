"""The graph executor of an emulated ComfyUI node: ComfyUI's PromptExecutor and prompt worker.

:func:`worker` takes queued prompts one at a time; a :class:`JobRun` walks the graph in
ComfyUI's order (:class:`ExecutionOrder`), reuses cached node results by input signature,
runs each node's runner with a :class:`RunContext`, streams the websocket events and
builds the history entry. What it needs of the node is the :class:`Node` protocol
(implemented by :class:`farm.emulators.comfyui.EmulatedNode`).

The node's active faults act here: ``slow`` stretches every emulated GPU wait, and
``ws_drop``, ``crash`` and ``hang`` fire when the prompt's samplers reach their ``at_step``
(their steps counted together: Wan 2.2 A14B's two passes make one count; before that step is
reported); see docs/emulators.md, "Fault injection".
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from farm.emulators.comfy_nodes import (
    NodeDef,
    downstream_fps,
    full_type_name,
    is_link,
    signature,
)
from farm.emulators.comfy_runners import Dirs, GpuState, Interrupted, NodeFailure
from farm.emulators.profile import Fault, NodeProfile, Pace, fault_hits, shake_px

log = logging.getLogger("farm.emulators.comfyui")

OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before "
    "you might have accidentally set the batch_size to a large number."
)
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4
CRASH_EXIT_CODE = 70  # EX_SOFTWARE: the ``crash`` fault's exit status
HANG_POLL_S = 0.05  # how often a hung prompt looks for an interrupt


def now_ms() -> int:
    return int(time.time() * 1000)


# --- what the executor needs of the node -----------------------------------------------------


class Sockets(Protocol):
    """The node's websocket clients (``comfyui.Hub``)."""

    def supports_metadata(self, sid: str | None) -> bool: ...

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Send an event to client ``sid``, or to every client when sid is None."""

    async def send_bytes(self, payload: bytes, sid: str | None = None) -> None: ...

    def drop(self, sid: str) -> None:
        """Close every socket of client ``sid`` (the ``ws_drop`` fault)."""


class Job(Protocol):
    """A queued prompt (``comfyui.QueueItem``)."""

    prompt_id: str
    prompt: dict[str, Any]
    outputs: list[str]

    @property
    def client_id(self) -> str | None: ...

    def as_list(self) -> list[Any]: ...


class Node(Protocol):
    """The emulated node's state as the executor uses it (``comfyui.EmulatedNode``)."""

    profile: NodeProfile
    dirs: Dirs
    gpu: GpuState
    hub: Sockets
    cache: dict[str, CacheEntry]
    faults: Mapping[str, Fault]
    takes_seen: dict[str, int]  # renders per request (the ``jitter`` fault's takes)
    interrupted: bool
    client_id: str | None
    last_node_id: str | None

    def definitions(self) -> dict[str, NodeDef]: ...

    async def next_job(self) -> Job:
        """Wait for the next queued prompt and mark it running."""

    async def job_done(self, job: Job, entry: dict[str, Any]) -> None:
        """Move a finished prompt from running to history and tell the clients."""


async def worker(node: Node) -> None:
    """Run queued prompts one at a time, forever (ComfyUI's prompt_worker)."""
    while True:
        job = await node.next_job()
        run = JobRun(node, job)
        try:
            await run.execute()
        except Exception:
            log.exception("prompt %s crashed the emulator's executor", job.prompt_id)
        await node.job_done(job, run.history_entry())


# --- execution -------------------------------------------------------------------------------


@dataclass
class CacheEntry:
    values: tuple
    ui: dict[str, Any] | None


class ExecutionOrder:
    """ComfyUI's ExecutionList: runs ready nodes, output nodes (and their feeders) first."""

    def __init__(self, prompt: dict[str, Any], defs: dict[str, NodeDef], cached: set[str]) -> None:
        self.prompt, self.defs, self.cached = prompt, defs, cached
        self.pending: dict[str, None] = {}
        self.blocks: dict[str, int] = {}
        self.blocking: dict[str, set[str]] = {}

    def add(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            nid = stack.pop()
            if nid in self.pending:
                continue
            self.pending[nid], self.blocks[nid], self.blocking[nid] = None, 0, set()
            for value in self.prompt[nid]["inputs"].values():
                if is_link(value) and value[0] not in self.cached:
                    stack.append(value[0])
                    links.append((value[0], nid))
        for source, target in links:
            if target not in self.blocking[source]:
                self.blocking[source].add(target)
                self.blocks[target] += 1

    def _is_output(self, node_id: str) -> bool:
        return self.defs[self.prompt[node_id]["class_type"]].output_node

    def next(self) -> str | None:
        """The node to run next, or None when the pending nodes form a cycle."""
        ready = [n for n in self.pending if self.blocks[n] == 0]
        feeds = [
            lambda n: self._is_output(n),
            lambda n: any(self._is_output(b) for b in self.blocking[n]),
            lambda n: any(self._is_output(c) for b in self.blocking[n] for c in self.blocking[b]),
        ]
        for rule in feeds:
            picked = next((n for n in ready if rule(n)), None)
            if picked is not None:
                return picked
        return ready[0] if ready else None

    def done(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            self.blocks[blocked] -= 1


class Progress:
    """ComfyUI's progress registry: every state change is broadcast as ``progress_state``."""

    def __init__(self, hub: Sockets, prompt_id: str, legacy: bool = False) -> None:
        self.hub, self.prompt_id, self.legacy = hub, prompt_id, legacy
        self.nodes: dict[str, dict[str, Any]] = {}

    async def set(
        self, node_id: str, state: str, value: float | None = None, top: float | None = None
    ) -> None:
        entry = self.nodes.setdefault(node_id, {"value": 0, "max": 1, "state": "pending"})
        if state == "running" and value is None:
            entry.update(value=0.0, max=1.0)
        elif state == "finished":
            entry["value"] = entry["max"]
        else:
            entry.update(value=value, max=top)
        entry["state"] = state
        nodes = {
            nid: {
                **e,
                "node_id": nid,
                "prompt_id": self.prompt_id,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
            }
            for nid, e in self.nodes.items()
            if e["state"] != "pending"
        }
        if not self.legacy:  # ComfyUI of March 2024 had no progress registry
            await self.hub.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})


@dataclass
class Failure:
    node_id: str
    error: BaseException
    inputs: dict[str, Any] | None


class RunContext:
    """What one running node sees (implements comfy_runners.NodeContext)."""

    def __init__(self, run: JobRun, node_id: str) -> None:
        self.run, self.node_id = run, node_id
        self.profile, self.gpu, self.dirs = run.node.profile, run.node.gpu, run.node.dirs
        self.prompt_id = run.item.prompt_id

    @functools.cached_property
    def fps(self) -> float:
        return downstream_fps(self.run.item.prompt, self.node_id)

    async def sleep(self, seconds: float) -> None:
        slow = fault_hits(self.run.node.faults, "slow", self.prompt_id)
        await asyncio.sleep(self.run.pace.seconds(seconds * slow.factor if slow else seconds))

    async def progress(self, value: int, total: int, preview_jpeg: bytes | None) -> None:
        self.run.check_interrupt()
        self.run.sampled[self.node_id] = value
        await self.run.step_faults(sum(self.run.sampled.values()))
        await self.run.report_progress(self.node_id, value, total, preview_jpeg)

    async def cpu(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    def shake(self, request: str) -> float:
        return shake_px(self.run.node.faults, request, self.run.node.takes_seen)


class JobRun:
    """One execution of a queued prompt: ComfyUI's PromptExecutor.execute."""

    def __init__(self, node: Node, item: Job) -> None:
        self.node, self.item = node, item
        self.client = item.client_id
        self.hub = node.hub
        self.legacy = node.profile.legacy  # ComfyUI of March 2024's messages
        self.progress = Progress(node.hub, item.prompt_id, self.legacy)
        self.pace = Pace()
        self.messages: list[list[Any]] = []
        self.values: dict[str, tuple] = {}
        self.ui: dict[str, dict[str, Any]] = {}
        self.executed: set[str] = set()
        self.sampled: dict[str, int] = {}  # sampler node -> its steps so far
        self.success = False
        self.dropped = False

    def check_interrupt(self) -> None:
        if self.node.interrupted:
            self.node.interrupted = False
            raise Interrupted("Processing interrupted")

    async def step_faults(self, step: int) -> None:
        """Inject the faults set for this sampler step: ws_drop, then crash, then hang."""
        faults, pid = self.node.faults, self.item.prompt_id
        drop = fault_hits(faults, "ws_drop", pid)
        if drop and step == drop.at_step and self.client is not None and not self.dropped:
            log.warning("emulated fault: closing the websockets of prompt %s at step %d", pid, step)
            self.dropped = True
            self.hub.drop(self.client)
        crash = fault_hits(faults, "crash", pid)
        if crash and step == crash.at_step:
            print(
                f"emulated fault: crash at step {step} of prompt {pid}; exit {CRASH_EXIT_CODE}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(CRASH_EXIT_CODE)
        hang = fault_hits(faults, "hang", pid)
        if hang and step == hang.at_step:
            log.warning("emulated fault: prompt %s hangs at step %d until interrupted", pid, step)
            while True:
                await asyncio.sleep(HANG_POLL_S)
                self.check_interrupt()

    async def message(self, event: str, data: dict[str, Any], broadcast: bool = False) -> None:
        """Record a status message for history and send it (to the job's client)."""
        data = data if self.legacy else {**data, "timestamp": now_ms()}
        self.messages.append([event, data])
        if self.client is not None or broadcast:
            await self.hub.send(event, data, self.client)

    async def execute(self) -> None:
        prompt, pid = self.item.prompt, self.item.prompt_id
        self.pace = Pace()
        self.node.gpu.begin()
        self.node.interrupted = False
        self.node.client_id = self.client
        await self.message("execution_start", {"prompt_id": pid})
        defs = self.node.definitions()
        memo: dict[str, str] = {}
        sigs = {nid: signature(prompt, defs, nid, memo) for nid in prompt}
        live = set(sigs.values())
        self.node.cache = {k: v for k, v in self.node.cache.items() if k in live}
        cached = [nid for nid in prompt if sigs[nid] in self.node.cache]
        self.values = {nid: self.node.cache[sigs[nid]].values for nid in cached}
        await self.message("execution_cached", {"nodes": cached, "prompt_id": pid})
        order = ExecutionOrder(prompt, defs, set(cached))
        for out in self.item.outputs:
            order.add(out)
        while order.pending:
            nid = order.next()
            if nid is None:
                await self.report(self.cycle(order), cached)
                break
            failure = await self.run_node(nid, defs, sigs)
            if failure is not None:
                await self.report(failure, cached)
                break
            order.done(nid)
        else:
            self.success = True
            if not self.legacy:
                await self.message("execution_success", {"prompt_id": pid})
        self.node.last_node_id = None

    def cycle(self, order: ExecutionOrder) -> Failure:
        blamed = next(iter(order.pending))
        return Failure(
            blamed, NodeFailure("graph.DependencyCycleError", "Dependency cycle detected"), {}
        )

    async def run_node(
        self, nid: str, defs: dict[str, NodeDef], sigs: dict[str, str]
    ) -> Failure | None:
        node = self.item.prompt[nid]
        d = defs[node["class_type"]]
        hit = self.node.cache.get(sigs[nid])
        if hit is not None:
            if self.client is not None:
                output = hit.ui["output"] if hit.ui else None
                await self.send_client(
                    "executed", {"node": nid, "display_node": nid, "output": output}
                )
            if hit.ui:
                self.ui[nid] = hit.ui
            self.values[nid] = hit.values
            await self.progress.set(nid, "finished")
            return None
        await self.progress.set(nid, "running")
        inputs = self.gather(node["inputs"], d)
        if self.client is not None:
            self.node.last_node_id = nid
            await self.send_client("executing", {"node": nid, "display_node": nid})
        try:
            self.check_interrupt()
            out = await d.run(RunContext(self, nid), **inputs)
        except Interrupted as ex:
            return Failure(nid, ex, None)
        except Exception as ex:
            if not isinstance(ex, NodeFailure):
                log.exception("node %s (%s) failed", nid, d.name)
            return Failure(nid, ex, inputs)
        self.values[nid] = out.values
        ui = None
        if out.ui:
            meta = {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
            ui = self.ui[nid] = {"meta": meta, "output": out.ui}
            if self.client is not None:
                await self.send_client(
                    "executed", {"node": nid, "display_node": nid, "output": out.ui}
                )
        self.node.cache[sigs[nid]] = CacheEntry(out.values, ui)
        await self.progress.set(nid, "finished")
        self.executed.add(nid)
        return None

    def gather(self, raw: dict[str, Any], d: NodeDef) -> dict[str, Any]:
        """The node's declared inputs: linked values from upstream outputs, widget values as is."""
        inputs = {}
        for name, _, _, _ in d.inputs():
            if name in raw:
                value = raw[name]
                inputs[name] = self.values[value[0]][value[1]] if is_link(value) else value
        return inputs

    async def send_client(self, event: str, data: dict[str, Any]) -> None:
        if self.legacy:  # no display_node before the subgraphs of 2025
            data = {k: v for k, v in data.items() if k != "display_node"}
        await self.hub.send(event, {**data, "prompt_id": self.item.prompt_id}, self.client)

    async def report_progress(self, nid: str, value: int, total: int, jpeg: bytes | None) -> None:
        """One sampler tick, in ComfyUI's order: state, (preview+meta), progress, (preview)."""
        await self.progress.set(nid, "running", value, total)
        with_meta = not self.legacy and self.hub.supports_metadata(self.client)
        if jpeg and with_meta:
            meta = {
                "node_id": nid,
                "prompt_id": self.item.prompt_id,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
                "image_type": "image/jpeg",
            }
            blob = json.dumps(meta).encode()
            head = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(blob))
            await self.hub.send_bytes(head + blob + jpeg, self.client)
        data = {"value": value, "max": total, "prompt_id": self.item.prompt_id, "node": nid}
        await self.hub.send("progress", data, self.client)
        if jpeg and not with_meta:
            await self.hub.send_bytes(struct.pack(">II", PREVIEW_IMAGE, 1) + jpeg, self.client)

    async def report(self, failure: Failure, cached: list[str]) -> None:
        pid, nid, ex = self.item.prompt_id, failure.node_id, failure.error
        base = {
            "prompt_id": pid,
            "node_id": nid,
            "node_type": self.item.prompt[nid]["class_type"],
            "executed": list(self.executed),
        }
        if isinstance(ex, Interrupted):
            await self.message("execution_interrupted", base, broadcast=True)
            return
        kind = ex.exception_type if isinstance(ex, NodeFailure) else full_type_name(type(ex))
        tips = OOM_TIPS if kind == "torch.OutOfMemoryError" else ""
        inputs = {k: [format_value(v)] for k, v in (failure.inputs or {}).items()}
        await self.message(
            "execution_error",
            {
                **base,
                "exception_message": f"{ex}\n{tips}",
                "exception_type": kind,
                "traceback": traceback_lines(ex),
                "current_inputs": inputs,
                "current_outputs": cached,
            },
        )

    def history_entry(self) -> dict[str, Any]:
        return {
            "prompt": self.item.as_list(),
            "outputs": {nid: ui["output"] for nid, ui in self.ui.items()},
            "status": {
                "status_str": "success" if self.success else "error",
                "completed": self.success,
                "messages": self.messages,
            },
            "meta": {nid: ui["meta"] for nid, ui in self.ui.items()},
        }


def format_value(value: Any) -> Any:
    """An input value as ``execution_error.current_inputs`` shows it."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    if isinstance(value, np.ndarray):
        return f"tensor(shape={list(value.shape)})"
    return str(value)


def traceback_lines(ex: BaseException) -> list[str]:
    """Traceback lines for an ``execution_error`` (synthetic for emulated failures)."""
    if isinstance(ex, NodeFailure):
        return [
            '  File "execution.py", line 496, in execute\n'
            "    output_data, output_ui, *_ = await get_output_data(...)\n"
        ]
    return traceback.format_tb(ex.__traceback__)
