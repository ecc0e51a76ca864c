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

    python benchmarks/jobs.py ../shared/data/scifact --during 4000 [--base 1000]

Search while a job ingests: `--base` documents are ingested directly into a collection that
is then searched (hybrid, k = 10, the set's queries in turn with their vectors computed
beforehand, so both phases time the same work: the engine), `SEARCHES_PER_S` searches a
second, for 30 s idle, then while one `hybrid worker` process runs a job of the next
`--during` documents. Reports search p50/p95 idle and during the job, and
how good the job's ETA was: at 10, 25, 50 and 75% of its documents, the finish time it
predicted (now + `eta_s`) against the real one.

    python benchmarks/jobs.py ../shared/data/scifact --during-chunks 100000 [--base 1000]

The same, with a job of at least that many chunks, more than the set holds: its documents
are made from the set's (deterministic, seeded). Document j joins the sentences of two of
the set's documents, shuffled, under both titles, so that no chunk repeats another's text
and every chunk is embedded (the embedding cache never answers).
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
    parser.add_argument("--during", type=int, help="documents of the job searched against")
    parser.add_argument("--during-chunks", type=int, help="chunks of a synthetic job instead")
    parser.add_argument("--base", type=int, default=1000)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="hybrid-jobs-bench-"))
    os.environ.update(
        HYBRID_DATA_DIR=str(data_dir), HYBRID_AUTH="off", HYBRID_LOG_FORMAT="json",
        HYBRID_LOG_LEVEL="WARNING", HYBRID_WORKER_POLL_INTERVAL="0.5",
    )  # fmt: skip
    os.environ.pop("DATABASE_URL", None)
    from app.db import embedded

    try:
        if args.during or args.during_chunks:
            job = args.during, args.during_chunks
            print(_search_during(args.dataset, args.base, *job, data_dir))
        else:
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


# A steady moderate load: searches are started at this rate (one at a time).
SEARCHES_PER_S = 10


def _synthetic(lines: list[str], chunks: int) -> list[str]:
    """Documents made from the set's until their chunks number at least `chunks`."""
    import random
    import re

    from app.ingest import load
    from app.ingest.chunk import bundled_tokenizer, chunk_document
    from app.settings import ChunkSettings

    records = [json.loads(line) for line in lines]
    sentence = re.compile(r"(?<=[.!?])\s+")
    rng = random.Random(7)
    out: list[str] = []
    total = 0
    tokenizer = bundled_tokenizer()
    while total < chunks:
        j = len(out)
        a, b = records[j % len(records)], records[(j * 7919 + 13) % len(records)]
        sentences = sentence.split(a["text"]) + sentence.split(b["text"])
        rng.shuffle(sentences)
        title = f"{a['title']} / {b['title']}"
        line = json.dumps({"_id": f"mix-{j}", "title": title, "text": " ".join(sentences)})
        doc = load.load_bytes(line.encode(), "corpus.jsonl", max_bytes=1 << 20, max_chars=1 << 20)
        total += len(chunk_document(doc[0], ChunkSettings(), tokenizer)[1])
        out.append(line + "\n")
    return out


def _search_during(
    dataset: Path, base: int, during: int | None, during_chunks: int | None, data_dir: Path
) -> str:
    from sqlalchemy import text

    from app import collections
    from app.db import embedded
    from app.eval.metrics import percentile
    from app.ingest import load
    from app.jobs import records
    from app.jobs.blobs import BlobStore
    from app.search.engine import search
    from app.search.request import SearchRequest
    from app.service import Services
    from app.settings import load_settings

    url, _ = embedded.start(data_dir)
    os.environ["DATABASE_URL"] = url
    services = Services.open(load_settings())
    with (dataset / "corpus.jsonl").open() as corpus:
        if during_chunks:
            lines = list(corpus)
            lines = lines[:base] + _synthetic(lines, during_chunks)
        else:
            lines = list(islice(corpus, base + (during or 0)))
    during = len(lines) - base
    queries = [json.loads(q)["text"] for q in (dataset / "queries.jsonl").open()]
    docs = load.load_bytes(
        "".join(lines[:base]).encode(), "corpus.jsonl", max_bytes=1 << 30, max_chars=10_000_000
    )
    services.ingestor.ingest("searched", docs, create=True)
    searcher = services.searcher(rerank=False)
    queries = queries[:300]
    vectors = services.ingestor.embedder.embed(queries)
    paced = {"next": time.monotonic()}

    def one(i: int) -> float:
        paced["next"] += 1 / SEARCHES_PER_S
        time.sleep(max(paced["next"] - time.monotonic(), 0))
        request = SearchRequest(
            query=queries[i % len(queries)], vector=vectors[i % len(queries)].tolist()
        )
        started = time.perf_counter()
        with services.transaction() as conn:
            search(conn, "searched", request, searcher)
        return (time.perf_counter() - started) * 1000

    for i in range(20):
        one(i)
    idle: list[float] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        idle.append(one(len(idle)))
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("hybrid")), "worker"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(20)  # its model loads
    store = BlobStore.of(services.settings)
    embedder = services.ingestor.embedder
    with services.transaction() as conn:
        target = collections.get_or_create(
            conn, "ingested", embedding_model=embedder.model_id, embedding_dim=embedder.dimension
        )
        staged = store.stage_bytes("".join(lines[base:]).encode(), "corpus.jsonl")
        job_id, _ = records.create(
            conn, store, kind=records.INGEST, collection_id=target.id, params={},
            key_id=None, requested_by="benchmark", files=[staged],
        )  # fmt: skip
    busy: list[float] = []
    paced["next"] = time.monotonic()
    predictions: list[tuple[float, float]] = []  # (share done, predicted finish)
    last_look = 0.0
    try:
        while True:
            busy.append(one(len(idle) + len(busy)))
            if time.monotonic() - last_look < 2:
                continue
            last_look = time.monotonic()
            with services.transaction() as conn:
                job = records.get(conn, job_id)
            if job.finished:
                break
            eta = job.eta_s()
            if eta is not None and job.documents_total:
                predictions.append((job.documents_done / job.documents_total, time.time() + eta))
    finally:
        worker.terminate()
        worker.wait(60)
    assert job.state == "done", job
    finished = job.finished_at.timestamp()  # type: ignore[union-attr]
    took = finished - job.started_at.timestamp()  # type: ignore[union-attr]
    with services.engine.connect() as conn:
        chunks = conn.execute(
            text("SELECT chunks, embedded FROM jobs WHERE id = :id"), {"id": job_id}
        )
        chunk_count, embedded = chunks.one()
    services.close()
    lines_out = [
        f"machine: {os.cpu_count()} cores; searched {base} documents, job of {during} "
        f"documents ({chunk_count} chunks, {embedded} embedded) in {took:.0f} s "
        f"({chunk_count / took:.1f} chunks/s)",
        "",
        f"| search (hybrid, k = 10, {SEARCHES_PER_S}/s) | searches | p50 ms | p95 ms |",
        "|---|---|---|---|",
    ]
    for name, values in (("idle", idle), ("during the job", busy)):
        lines_out.append(
            f"| {name} | {len(values)} | {percentile(values, 50):.1f} | "
            f"{percentile(values, 95):.1f} |"
        )
    lines_out += [
        "",
        "| at | ETA error (predicted finish − real, s) | share of the run |",
        "|---|---|---|",
    ]
    for mark in (0.10, 0.25, 0.50, 0.75):
        first = next(((share, at) for share, at in predictions if share >= mark), None)
        if first is not None:
            error = first[1] - finished
            lines_out.append(f"| {mark:.0%} | {error:+.1f} | {error / took:+.1%} |")
    return "\n".join(lines_out)


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
