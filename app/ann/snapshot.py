"""Snapshots of a collection's vector index on disk, replaced atomically.

A snapshot is a directory `snapshot-<n>/` holding the FAISS index (`index.faiss`), the
tombstones (`tombstones.npy`) and `meta.json` (which collection, model and index type, and the
change-log position the index reflects). The file `CURRENT` names the snapshot to load; it is
replaced with `os.replace` only after the new directory is complete and synced, so a process
killed at any moment leaves either the old complete snapshot or the new complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from app.ann.entries import Entry, Identity
from app.ann.index import KINDS, IndexParams, VectorIndex

FORMAT = 1
CURRENT = "CURRENT"
# The settings an index is built with; search-time ones (efSearch, nprobe) apply when loaded.
BUILD_SETTINGS = ("kind", "exact_below", "hnsw_m", "hnsw_ef_construction")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    index: VectorIndex
    identity: Identity
    position: str
    saved_at: float


def directory(root: Path, collection_id: int) -> Path:
    return root / f"collection-{collection_id}"


def save(root: Path, identity: Identity, index: VectorIndex, position: str) -> Path:
    """Write a new snapshot and make it current; older ones are removed afterwards."""
    home = directory(root, identity.collection_id)
    home.mkdir(parents=True, exist_ok=True)
    name = f"snapshot-{time.time_ns()}"
    partial = home / f".{name}.partial"
    partial.mkdir()
    index.write(str(partial / "index.faiss"))
    np.save(partial / "tombstones.npy", index.tombstones)
    meta = {
        "format": FORMAT,
        "identity": asdict(identity),
        "kind": index.kind,
        "params": asdict(index.params),
        "position": position,
        "vectors": index.size,
        "tombstones": index.size - index.live,
        "saved_at": time.time(),
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    for path in partial.iterdir():
        _fsync(path)
    _fsync(partial)
    final = home / name
    partial.rename(final)
    pointer = home / f".{CURRENT}.partial"
    pointer.write_text(name)
    _fsync(pointer)
    os.replace(pointer, home / CURRENT)
    _fsync(home)
    _remove_all_but(home, name)
    return final


def read_meta(root: Path, identity: Identity) -> tuple[Path, dict[str, Any]] | None:
    """The current snapshot's directory and description, if it belongs to `identity`."""
    home = directory(root, identity.collection_id)
    try:
        name = (home / CURRENT).read_text().strip()
        meta = json.loads((home / name / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("identity") != asdict(identity):
        log.info("vector cache snapshot of collection %s is for another collection or model",
                 identity.collection_id)  # fmt: skip
        return None
    if meta.get("kind") not in KINDS:
        return None
    return home / name, meta


def load(root: Path, identity: Identity, params: IndexParams) -> Snapshot | None:
    """The current snapshot if it is complete, belongs to `identity` and was built with
    `params` (other index settings mean a rebuild), else None."""
    found = read_meta(root, identity)
    if found is None:
        return None
    path, meta = found
    built_with = {name: meta["params"].get(name) for name in BUILD_SETTINGS}
    if built_with != {name: getattr(params, name) for name in BUILD_SETTINGS}:
        log.info("vector cache snapshot of collection %s was built with other settings",
                 identity.collection_id)  # fmt: skip
        return None
    kind = meta["kind"]
    try:
        faiss_index = faiss.read_index(str(path / "index.faiss"))
        tombstones = np.load(path / "tombstones.npy")
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("vector cache snapshot %s unreadable: %s", path, exc)
        return None
    index = VectorIndex(kind, faiss_index, params, tombstones=tombstones.astype(np.int64))
    return Snapshot(index, identity, meta["position"], meta["saved_at"])


def remove(root: Path, collection_id: int) -> None:
    shutil.rmtree(directory(root, collection_id), ignore_errors=True)


def _remove_all_but(home: Path, keep: str) -> None:
    """Older snapshots, and partial ones left by a killed process an hour ago or more (a
    younger one may be another process's save in progress)."""
    for path in home.iterdir():
        if not path.is_dir() or path.name == keep:
            continue
        with contextlib.suppress(OSError):
            if not path.name.endswith(".partial") or time.time() - path.stat().st_mtime > 3600:
                shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keep(root: Path, entry: Entry, *, only_if_changed: bool = False) -> None:
    """Snapshot the entry's index (under its lock), unless `only_if_changed` and its position
    is the one saved last. A failed write is logged: the index in memory is fine, and the next
    save tries again."""
    with entry.lock:
        if entry.current is None:
            return
        index, position = entry.current
        if only_if_changed and position == entry.saved_position:
            entry.saved_at = time.time()
            return
        try:
            save(root, entry.identity, index, position)
        except (OSError, RuntimeError) as exc:  # FAISS reports its own I/O errors as RuntimeError
            log.warning(
                "vector cache snapshot of %s not written: %s", entry.identity.collection_name, exc
            )
            return
        entry.saved_position, entry.saved_at = position, time.time()
