"""PostgreSQL stopped, or killed, under search load: the service answers clean 503s with
`Retry-After` while it is gone (never a 500, never a hang) and serves again once it is back,
without a restart, its caches caught up with what was written after.

The server here is an embedded one of its own: the session's is never stopped."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.db import embedded
from app.service import Services
from tests.conftest import make_settings
from tests.test_robustness import serving

SEARCH = {"collection": "kb", "query": "how do glaciers move"}


@pytest.fixture
def own_server() -> Iterator[tuple[Path, Services]]:
    path = Path(tempfile.mkdtemp(prefix="hybrid-faults-"))
    url, _ = embedded.start(path)
    services = Services.open(make_settings(url, path, HYBRID_DB_POOL_TIMEOUT="2"))
    try:
        yield path, services
    finally:
        services.close()
        embedded.stop(path)
        shutil.rmtree(path, ignore_errors=True)


class Load:
    """Searches sent back to back from a few threads; every status (or error) counted."""

    def __init__(self, client: httpx.Client, threads: int = 3) -> None:
        self.client = client
        self.seen: Counter[str] = Counter()
        self.retry_after_missing = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.client.post("/v1/search", json=SEARCH, timeout=15)
            except httpx.HTTPError as exc:
                self.seen[type(exc).__name__] += 1
                continue
            self.seen[str(response.status_code)] += 1
            if response.status_code == 503 and "Retry-After" not in response.headers:
                self.retry_after_missing += 1


def until(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def searchable(client: httpx.Client, doc_id: str) -> bool:
    response = client.post("/v1/search", json={**SEARCH, "query": "moraine deposits"})
    return response.status_code == 200 and any(
        h["document_id"] == doc_id for h in response.json()["hits"]
    )


def postmaster_pid(path: Path) -> int:
    pid = embedded.status(path).pid
    assert pid is not None
    return pid


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_database_gone_under_load_gives_503s_then_recovers(
    own_server: tuple[Path, Services], how: str
) -> None:
    path, services = own_server
    with serving(services, vector_cache=True) as client:
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": f"g{i}", "text": f"Glaciers move by sliding, note {i}."} for i in range(5)]
        assert client.post(
            "/v1/collections/kb/documents?wait=true", json={"documents": docs}
        ).is_success
        with Load(client) as load:
            time.sleep(1)
            if how == "stop":
                embedded.stop(path)
            else:
                os.kill(postmaster_pid(path), signal.SIGKILL)
                until(lambda: not embedded.status(path).running, 30)
            until(lambda: load.seen["503"] >= 5, 30)
            embedded.start(path)
            until(lambda: client.post("/v1/search", json=SEARCH).status_code == 200, 30)
        assert set(load.seen) <= {"200", "503"}, load.seen
        assert load.retry_after_missing == 0
        assert load.seen["200"] > 0 and load.seen["503"] > 0

        later = {"id": "late", "text": "Moraine deposits mark where a glacier stood."}
        response = client.post(
            "/v1/collections/kb/documents?wait=true", json={"documents": [later]}
        )
        assert response.status_code == 201, response.text
        until(lambda: searchable(client, "late"), 15)
        assert client.get("/ready").status_code == 200
