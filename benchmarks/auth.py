"""What authentication and rate limiting add to a search: the same searches with
`HYBRID_AUTH=off` and with a key (cached lookup, scope and collection checks, a rate budget),
in one process, against one database.

    PYTHONPATH=. python benchmarks/auth.py [--rounds 7] [--requests 300]

The sample corpus goes into a throwaway embedded PostgreSQL; two applications over it differ
only in `HYBRID_AUTH`. Rounds alternate between them (so drift in the machine hits both),
each round timing `--requests` searches through the ASGI stack (Litestar's test client, no
network), twice: a repeated query (served by the result cache: the request's fixed cost, where
the auth cost is the largest share) and a new query each time (embedding + SQL). Reported:
median of the per-round p50 and p95 of each, and the difference with auth on.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from litestar import Litestar
from litestar.testing import TestClient

from app.access import keys
from app.access.keys import KeySpec
from app.api.app import create_app
from app.db import embedded
from app.ingest import load
from app.service import Services
from app.settings import load_settings

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
QUERY = "how does rank fusion work"
Clients = dict[str, TestClient[Litestar]]


def main() -> None:
    args = _arguments()
    scratch = Path(tempfile.mkdtemp(prefix="hybrid-bench-auth-"))
    url = embedded.start(scratch)[0]
    opened = {mode: _services(url, scratch, mode) for mode in ("off", "required")}
    try:
        _prepare(opened["off"])
        with opened["required"].transaction() as conn:
            spec = KeySpec(
                name="bench", scopes=("search",), principals=("*",), rate_per_minute=10**9
            )
            secret = keys.create(conn, spec).secret
        headers = {"off": {}, "required": {"Authorization": f"Bearer {secret}"}}
        clients = {mode: TestClient(app=_app(s)) for mode, s in opened.items()}
        for client in clients.values():
            client.__enter__()
        _report(args, clients, headers)
        for client in clients.values():
            client.__exit__(None, None, None)
    finally:
        for services in opened.values():
            services.close(stop_embedded=False)
        embedded.stop(scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    return parser.parse_args()


def _services(url: str, scratch: Path, auth: str) -> Services:
    environ = {
        **os.environ,
        "DATABASE_URL": url,
        "HYBRID_DATA_DIR": str(scratch),
        "HYBRID_AUTH": auth,
        "HYBRID_FAISS_CACHE": "false",
    }
    return Services.open(load_settings(environ))


def _app(services: Services) -> Litestar:
    return create_app(services, vector_cache=False)


def _prepare(services: Services) -> None:
    docs = [d for path in load.discover([SAMPLES]) for d in load.load_path(
        path, max_bytes=services.settings.ingest.max_upload_bytes,
        max_chars=services.settings.ingest.max_document_chars,
    )]  # fmt: skip
    services.ingestor.ingest("sample", docs, create=True)


def _report(
    args: argparse.Namespace,
    clients: Clients,
    headers: dict[str, dict[str, str]],
) -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {os.cpu_count()} cores, {memory:.1f} GiB, {platform.machine()}")
    print(f"{args.rounds} rounds x {args.requests} searches per mode and kind\n")
    print("| searches | auth | p50 ms | p95 ms |\n|---|---|---|---|")
    for kind, query in (("repeated (result cache)", lambda i: QUERY), ("new each time", _novel)):
        medians = _measure(args, clients, headers, query)
        for mode in ("off", "required"):
            p50, p95 = medians[mode]
            print(f"| {kind} | {mode} | {p50:.3f} | {p95:.3f} |")
        delta = medians["required"][0] - medians["off"][0]
        print(f"| {kind} | difference of p50 | {delta:+.3f} | |")


def _novel(i: int) -> str:
    return f"{QUERY} {i}"


def _measure(
    args: argparse.Namespace,
    clients: Clients,
    headers: dict[str, dict[str, str]],
    query: Callable[[int], str],
) -> dict[str, tuple[float, float]]:
    per_round: dict[str, list[tuple[float, float]]] = {mode: [] for mode in clients}
    counter = 0
    for _ in range(args.rounds):
        for mode, client in clients.items():
            times = []
            for _ in range(args.requests):
                counter += 1
                # The same principals both ways: the key's, named by the request.
                params = {"collection": "sample", "q": query(counter), "k": "5", "principal": "*"}
                started = time.perf_counter()
                response = client.get("/v1/search", params=params, headers=headers[mode])
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
            cuts = statistics.quantiles(times, n=20)
            per_round[mode].append((statistics.median(times), cuts[18]))
    return {
        mode: (statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds))
        for mode, rounds in per_round.items()
    }


if __name__ == "__main__":
    main()
