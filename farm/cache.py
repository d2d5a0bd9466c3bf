"""The render cache: a shot whose request was rendered before is served from the farm's
storage instead of spending GPU time on it again.

A request is identified by :func:`request_key`: the backend, engine, workflow (by the
content of its file, so an edited workflow misses) or WanGP settings (derived from the
parameters by the farm's own code, versioned by :data:`VERSION`), every diffusion model the
job loads (in order: Wan 2.2 A14B's high-noise and low-noise experts) and every file it
needs, and the parameters with input files (the start image) replaced by the hash of their
content, seed included. The node, the scene, the shot and the attempt do not
count: the same request renders the same clip on any capable node.

Keys::

    farm:cache          hash: request key -> {"clip", "scene", "shot", "kind", "node", ...}
    {storage}/cache/{key}.mp4    the cached clip (a hard link to the shot's clip when the
                                 file system allows it, else a copy)

A shot is served from the cache unless the scene was submitted with ``--force``, the shot
is being retried (``farm retry``), or ``FARM_CACHE=0``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from farm.catalog import Catalog, load_catalog
from farm.planning import Job
from farm.runtime import Runtime

#: bump when the way the farm turns parameters into a node request changes
VERSION = 2
_CHUNK = 1 << 20


def file_digest(path: str | Path, memo: dict[tuple, str] | None = None) -> str | None:
    """The SHA-256 of a file's content (None if it cannot be read); ``memo`` keeps digests
    by path, size and modification time for a batch of lookups."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    mark = (str(path), info.st_size, info.st_mtime_ns)
    if memo is not None and mark in memo:
        return memo[mark]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    if memo is not None:
        memo[mark] = digest.hexdigest()
    return digest.hexdigest()


def request_key(
    job: Job,
    workflows_dir: Path,
    memo: dict[tuple, str] | None = None,
    catalog: Catalog | None = None,
) -> str | None:
    """The cache key of ``job``'s request, or None when it cannot be cached (an input file
    or the workflow cannot be read); ``catalog`` says where a studio's workflows are."""
    params = dict(job.params)
    if params.get("start_image"):
        digest = file_digest(params["start_image"], memo)
        if digest is None:
            return None
        params["start_image"] = digest
    workflow = job.workflow
    if job.backend == "comfyui":
        path = (catalog or load_catalog()).workflow_file(job.workflow, workflows_dir, job.engine)
        workflow = file_digest(path, memo)
        if workflow is None:
            return None
    request = {"v": VERSION, "backend": job.backend, "engine": job.engine,
               "workflow": [job.workflow, workflow], "models": list(job.models),
               "files": {k: sorted(v) for k, v in job.files.items()}, "params": params}  # fmt: skip
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def place_file(source: Path, target: Path) -> Path:
    """Put ``source`` at ``target`` through a new file, never writing into an existing one
    (a clip may share its inode with its cached copy): a hard link when the file system
    allows it, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


class RenderCache:
    """Look up and store rendered clips by request key."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.key = rt.settings.keys.cache()
        self.folder = rt.settings.storage / "cache"
        self.enabled = bool(rt.settings.cache)

    def lookup(
        self, shots: Sequence[Sequence[Job]], memo: dict[tuple, str] | None = None
    ) -> list[tuple[Job, dict[str, Any]] | None]:
        """For each shot (its variants, best first), the first variant whose request is
        cached, with its entry; None for a miss. One Redis round trip for all of them."""
        if not self.enabled or not shots:
            return [None] * len(shots)
        memo = {} if memo is None else memo
        wf = self.rt.settings.workflows_dir
        keys = [[request_key(v, wf, memo, self.rt.catalog) for v in variants] for variants in shots]
        flat = sorted({k for ks in keys for k in ks if k})
        if not flat or not self.rt.redis.exists(self.key):
            return [None] * len(shots)
        found = dict(zip(flat, self.rt.redis.hmget(self.key, flat), strict=True))
        out: list[tuple[Job, dict[str, Any]] | None] = []
        for variants, ks in zip(shots, keys, strict=True):
            hit = None
            for job, k in zip(variants, ks, strict=True):
                entry = json.loads(found[k]) if k and found.get(k) else None
                if entry is not None and Path(entry["clip"]).is_file():
                    hit = (job, {**entry, "key": k})
                    break
            out.append(hit)
        return out

    def store(self, job: Job, clip: Path, backend_job_id: str | None = None) -> str | None:
        """Keep ``clip`` as the result of ``job``'s request; returns the key."""
        if not self.enabled:
            return None
        k = request_key(job, self.rt.settings.workflows_dir, catalog=self.rt.catalog)
        if k is None:
            return None
        target = place_file(clip, self.folder / f"{k}.mp4")
        entry = {"clip": str(target), "scene": job.scene_id, "shot": job.shot_id,
                 "kind": job.kind, "node": job.node, "model": job.model,
                 "backend_job_id": backend_job_id, "at": time.time()}  # fmt: skip
        self.rt.redis.hset(self.key, k, json.dumps(entry))
        return k

    def stats(self) -> dict[str, Any]:
        """Entries and bytes held."""
        entries = self.rt.redis.hlen(self.key)
        size = (
            sum(p.stat().st_size for p in self.folder.glob("*.mp4")) if self.folder.is_dir() else 0
        )
        return {"entries": entries, "bytes": size, "folder": str(self.folder)}

    def clear(self) -> int:
        """Forget every entry and delete the cached clips; returns how many entries."""
        entries = self.rt.redis.hlen(self.key)
        self.rt.redis.delete(self.key)
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                path.unlink(missing_ok=True)
        return entries
