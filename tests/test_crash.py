"""A process killed in the middle of writing a new version leaves the old one complete.

A child process runs the real write path against the test database; a fault hook in the child
(not in the product) pauses it inside the write transaction after the new chunks went in, and
the parent kills it with SIGKILL. PostgreSQL rolls the transaction back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

from app import PROJECT_ROOT
from app.ingest.model import Block, SourceDocument
from app.service import Services

CHILD = """
import sys, time
from pathlib import Path
from app.ingest import store
from app.ingest.model import Block, SourceDocument
from app.service import Services
from tests.conftest import make_settings

url, data_dir, marker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
services = Services.open(make_settings(url, data_dir))
original = store._copy_chunks

def copy_then_wait(*args):
    original(*args)
    marker.write_text("inside the transaction")
    time.sleep(60)

store._copy_chunks = copy_then_wait
docs = [
    SourceDocument("a", "a", [Block("The replacement text that must never be seen.")]),
    SourceDocument("b", "b", [Block("A document that must not appear.")]),
]
services.ingestor.ingest("kb", docs)
"""


def chunk_texts(services: Services) -> list[str]:
    with services.engine.connect() as conn:
        return list(conn.execute(text("SELECT text FROM chunks ORDER BY id")).scalars())


def test_kill_during_write_keeps_the_previous_version(
    services: Services, database_url: str, data_dir: Path, tmp_path: Path
) -> None:
    original = SourceDocument("a", "a", [Block("The original text.")])
    services.ingestor.ingest("kb", [original], create=True)
    marker = tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, database_url, str(data_dir), str(marker)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the child ended before reaching the write"
            assert time.monotonic() < deadline, "the child never reached the write"
            time.sleep(0.05)
        assert chunk_texts(services) == ["The original text."]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    _wait_for_rollback(services)
    assert chunk_texts(services) == ["The original text."]
    with services.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM documents")).scalar() == 1
    retry = SourceDocument("a", "a", [Block("The replacement text.")])
    services.ingestor.ingest("kb", [retry])
    assert chunk_texts(services) == ["The replacement text."]


def _wait_for_rollback(services: Services) -> None:
    """The server notices the dead client when its socket closes; wait until it has."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
        "OR (state = 'active' AND query LIKE 'COPY%')"
    )
    deadline = time.monotonic() + 30
    with services.engine.connect() as conn:
        while conn.execute(query).scalar() and time.monotonic() < deadline:
            time.sleep(0.1)
