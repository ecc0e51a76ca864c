"""Files waiting for their ingest job: one copy per content (SHA-256), in the upload folder.

An upload is written to a temporary file while it is hashed, then moved to `<root>/ab/abcd...`
inside the transaction that gives it to a job, under a lock on its hash (`lock_blob`): a
finished job's files are removed under the same lock, and only when no unfinished (or failed,
retryable) job reads them, so a file is never removed under a job that is taking it. A file
left by a transaction that failed after the move is removed by `sweep`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import Connection

from app.db.queries import query
from app.ingest.load import check_size, check_suffix
from app.settings import Settings

CHUNK = 1 << 20
SHA256_HEX = 64


@dataclass
class Staged:
    """An upload hashed into a temporary file, not yet given to a job."""

    name: str
    sha256: str
    size: int
    path: Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def of(cls, settings: Settings) -> BlobStore:
        """The upload folder of these settings."""
        return cls(settings.jobs.uploads(settings.database.data_dir))

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def stage(self, source: IO[bytes], name: str, *, max_bytes: int | None = None) -> Staged:
        """Copy `source` into a temporary file of the store, hashing it on the way; a source
        larger than `max_bytes` stops the copy (the caller refuses it by its size)."""
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, temporary = tempfile.mkstemp(dir=staging)
        with os.fdopen(fd, "wb") as out:
            while block := source.read(CHUNK):
                digest.update(block)
                out.write(block)
                size += len(block)
                if max_bytes is not None and size > max_bytes:
                    break
            out.flush()
            os.fsync(out.fileno())
        return Staged(name, digest.hexdigest(), size, Path(temporary))

    def stage_files(self, files: Iterable[tuple[str, IO[bytes]]], max_bytes: int) -> list[Staged]:
        """Stage each (name, content); a type that cannot be loaded or a file larger than
        `max_bytes` refuses them all, and nothing stays staged."""
        staged: list[Staged] = []
        try:
            for name, source in files:
                check_suffix(name)
                staged.append(self.stage(source, name, max_bytes=max_bytes))
                check_size(staged[-1].size, name, max_bytes)
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def stage_bytes(self, data: bytes, name: str) -> Staged:
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=staging)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return Staged(name, hashlib.sha256(data).hexdigest(), len(data), Path(temporary))

    def keep(self, conn: Connection, staged: Staged) -> None:
        """Move a staged file to its place, in the transaction that gives it to a job (the
        lock on its hash is held until that transaction ends); the same content already kept
        is kept once."""
        conn.execute(query("jobs.sql", "lock_blob"), {"sha256": staged.sha256})
        target = self.path(staged.sha256)
        if target.exists():
            staged.path.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)

    def discard(self, staged: list[Staged]) -> None:
        for item in staged:
            item.path.unlink(missing_ok=True)

    def remove_unused(self, conn: Connection, job_id: int) -> int:
        """Remove the files of a finished job that no other job still needs; how many."""
        removed = 0
        shas = conn.execute(query("jobs.sql", "unused_files"), {"job_id": job_id}).scalars()
        for sha256 in list(shas):
            conn.execute(query("jobs.sql", "lock_blob"), {"sha256": sha256})
            # Checked again under the lock: a job may have taken the file meanwhile.
            if not conn.execute(query("jobs.sql", "file_in_use"), {"sha256": sha256}).scalar():
                self.path(sha256).unlink(missing_ok=True)
                removed += 1
        return removed

    def sweep(self, conn: Connection, older_than_s: float) -> int:
        """Remove kept files no job needs and staged files left behind, older than
        `older_than_s` (younger ones may belong to a transaction still running)."""
        removed = 0
        cutoff = time.time() - older_than_s
        for path in self._files():
            try:
                if path.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            if path.parent.name == "staging":
                path.unlink(missing_ok=True)
                removed += 1
                continue
            conn.execute(query("jobs.sql", "lock_blob"), {"sha256": path.name})
            if not conn.execute(query("jobs.sql", "file_in_use"), {"sha256": path.name}).scalar():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _files(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if folder.name == "staging" or len(path.name) == SHA256_HEX:
                    yield path
