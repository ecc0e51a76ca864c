"""Ingest through the job queue against a direct ingest of the same documents.

    python benchmarks/jobs.py ../shared/data/scifact [--documents 600] [--rounds 3]

Over a throwaway embedded PostgreSQL, the first `--documents` records of the set's
`corpus.jsonl` are ingested, in each round and in turn:

- `direct`: `Ingestor.ingest` in this process (what `hybrid ingest` does);
- `queue, 1 worker`: one ingest job run by one `hybrid worker` process (concurrency 1);
- `queue, 2 workers`: the records split into two jobs, run by two `hybrid worker` processes.

Each run goes into a new collection with the embedding cache emptied first, so that every
chunk is embedded. The queue's figures are wall time from enqueue to the last job done, the
workers already started and their model loaded. Reports the median chunks/s per variant and
the queue's overhead (1 worker against direct) measured in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--documents", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="hybrid-jobs-bench-"))
    os.environ.update(
        HYBRID_DATA_DIR=str(data_dir), HYBRID_AUTH="off", HYBRID_LOG_FORMAT="json",
        HYBRID_LOG_LEVEL="WARNING", HYBRID_WORKER_POLL_INTERVAL="0.5",
    )  # fmt: skip
    os.environ.pop("DATABASE_URL", None)
    from app.db import embedded

    try:
        print(_run(args.dataset, args.documents, args.rounds, data_dir))
    finally:
        embedded.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _run(dataset: Path, count: int, rounds: int, data_dir: Path) -> str:
    from sqlalchemy import text

    from app.db import embedded
    from app.ingest import load
    from app.jobs import records
    from app.jobs.blobs import BlobStore
    from app.service import Services
    from app.settings import load_settings

    url, _ = embedded.start(data_dir)
    os.environ["DATABASE_URL"] = url
    services = Services.open(load_settings())
    lines = list(islice((dataset / "corpus.jsonl").open(), count))
    docs = load.load_bytes(
        "".join(lines).encode(), "corpus.jsonl", max_bytes=1 << 30, max_chars=10_000_000
    )
    halves = [lines[: len(lines) // 2], lines[len(lines) // 2 :]]
    hybrid = str(Path(sys.executable).with_name("hybrid"))
    workers = [
        subprocess.Popen([hybrid, "worker"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    ingestor = services.ingestor
    ingestor.embedder.embed(["warm up"])
    time.sleep(20)  # the workers load their model
    figures: dict[str, list[float]] = {"direct": [], "queue, 1 worker": [], "queue, 2 workers": []}
    try:
        for round_ in range(rounds):
            for variant in figures:
                name = f"r{round_}-{variant.replace(' ', '').replace(',', '-')}"
                with services.transaction() as conn:
                    conn.execute(text("TRUNCATE embedding_cache"))
                started = time.perf_counter()
                if variant == "direct":
                    report = ingestor.ingest(name, docs, create=True)
                    chunks = report.chunks
                else:
                    parts = [lines] if variant.endswith("1 worker") else halves
                    chunks = _through_queue(services, name, parts, workers, records, BlobStore.of)
                seconds = time.perf_counter() - started
                figures[variant].append(chunks / seconds)
                print(f"{variant}: {chunks} chunks, {seconds:.1f} s", file=sys.stderr)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(60)
        services.close()
    return _table(figures, len(docs), rounds)


def _through_queue(
    services: Any, name: str, parts: list[list[str]], workers: list[Any], records: Any, blobs: Any
) -> int:
    from sqlalchemy import text

    from app import collections

    store = blobs(services.settings)
    embedder = services.ingestor.embedder
    with services.transaction() as conn:
        found = collections.get_or_create(
            conn, name, embedding_model=embedder.model_id, embedding_dim=embedder.dimension
        )
    # One worker: the second is paused so that it takes nothing.
    alone = len(parts) == 1
    if alone:
        workers[1].send_signal(19)  # SIGSTOP
    ids = []
    for part in parts:
        staged = store.stage_bytes("".join(part).encode(), "corpus.jsonl")
        with services.transaction() as conn:
            job_id, _ = records.create(
                conn, store, kind=records.INGEST, collection_id=found.id, params={},
                key_id=None, requested_by="benchmark", files=[staged],
            )  # fmt: skip
        ids.append(job_id)
    while True:
        with services.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT state, chunks FROM jobs WHERE id = ANY(:ids)"), {"ids": ids}
            ).all()
        if all(state in ("done", "failed", "cancelled") for state, _ in rows):
            break
        time.sleep(0.1)
    if alone:
        workers[1].send_signal(18)  # SIGCONT
    assert all(state == "done" for state, _ in rows), rows
    return sum(chunks for _, chunks in rows)


def _table(figures: dict[str, list[float]], documents: int, rounds: int) -> str:
    direct = statistics.median(figures["direct"])
    lines = [
        f"machine: {os.cpu_count()} cores; {documents} documents, {rounds} rounds (median)",
        "",
        "| variant | chunks/s | against direct |",
        "|---|---|---|",
    ]
    for variant, values in figures.items():
        value = statistics.median(values)
        lines.append(f"| {variant} | {value:.1f} | {value / direct:.3f} |")
    ratios = [q / d for q, d in zip(figures["queue, 1 worker"], figures["direct"], strict=True)]
    lines += [
        "",
        f"queue overhead, 1 worker (median of per-round ratios): {statistics.median(ratios):.3f}",
    ]
    return "\n".join(lines) + "\n" + json.dumps(figures)


if __name__ == "__main__":
    main()
