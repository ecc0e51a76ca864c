"""Ingest throughput: the whole write path, and the store step alone.

    python benchmarks/ingest.py ../shared/data/scifact [--repeats 3] [--limit N] [--store-only]

1. End to end: the BEIR corpus goes through the normal write path (load → chunk → embed with
   the bundled model → store) into a fresh collection: documents/s, chunks/s, peak memory.
   `--store-only` skips it (the vectors are then computed, or read from the embedding cache of
   the server given with --database-url, before any timing starts).
2. Store step alone: the same chunks with their vectors already computed are written again
   into fresh collections, batch by batch as `hybrid ingest` writes them, and timed until the
   collection is searchable with every index: through COPY into a new collection, whose
   vector index is built once after the load (the product's path); as baselines in the same
   run, through COPY into a collection whose vector index exists already (every row inserted
   into the HNSW graph, as any later ingest into the collection does), and through row-by-row
   INSERTs into such a collection. Median chunks/s over the repeats, and the server's CPU
   seconds (all its processes, parallel index build workers included), which a machine
   shared with other work disturbs less than the wall clock.
3. Recall@10 of the vector indexes of the last repeat against an exact scan, for the first
   `--queries` queries of the set: a graph built after the load and one grown row by row.

It runs against a throwaway embedded PostgreSQL (or --database-url) and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import text

from app import collections
from app.db import embedded
from app.db.queries import query
from app.ingest import load, vector_index
from app.ingest.model import SourceDocument, chunk_context
from app.ingest.store import PreparedDocument, write_documents
from app.ingest.writers import concurrent_writer
from app.service import Services
from app.settings import load_settings


def main() -> None:
    args = _arguments()
    scratch = Path(tempfile.mkdtemp(prefix="hybrid-bench-"))
    url = args.database_url or embedded.start(scratch)[0]
    settings = load_settings({**os.environ, "DATABASE_URL": url, "HYBRID_DATA_DIR": str(scratch)})
    services = Services.open(settings)
    try:
        docs = load.load_path(args.corpus / "corpus.jsonl", max_bytes=1 << 31, max_chars=1 << 30)
        docs = docs[: args.limit] if args.limit else docs
        _machine(len(docs), args.corpus)
        prepared = _stored(services, docs) if args.store_only else _end_to_end(services, docs)
        _store_only(services, prepared, args.repeats, _queries(args.corpus, args.queries))
    finally:
        services.close()
        if not args.database_url:
            embedded.stop(scratch)
            shutil.rmtree(scratch, ignore_errors=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="BEIR folder with corpus.jsonl")
    parser.add_argument("--repeats", type=int, default=3, help="Store-step runs (median)")
    parser.add_argument("--limit", type=int, default=0, help="Only the first N documents")
    parser.add_argument("--database-url", help="Use this server instead of a throwaway one")
    parser.add_argument("--store-only", action="store_true", help="Skip the end-to-end run")
    parser.add_argument("--queries", type=int, default=100, help="Queries of the recall check")
    return parser.parse_args()


def _queries(corpus: Path, count: int) -> list[str]:
    with (corpus / "queries.jsonl").open() as lines:
        return [json.loads(line)["text"] for line, _ in zip(lines, range(count), strict=False)]


def _machine(documents: int, corpus: Path) -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores, {memory:.1f} GiB, {cpu}")
    print(f"corpus: {corpus.name}, {documents} documents\n")


def _end_to_end(services: Services, docs: list[SourceDocument]) -> list[PreparedDocument]:
    started = time.perf_counter()
    report = services.ingestor.ingest(
        "bench-e2e", docs, create=True, total=len(docs), progress=True
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    chunks = report.chunks
    print("| end to end (local model) | value |\n|---|---|")
    print(f"| documents | {len(docs)} |\n| chunks | {chunks} |\n| seconds | {seconds:.1f} |")
    print(f"| documents/s | {len(docs) / seconds:.1f} |\n| chunks/s | {chunks / seconds:.1f} |")
    print(f"| peak memory (RSS) | {peak:.0f} MiB |\n")
    return _stored(services, docs)


def _stored(services: Services, docs: list[SourceDocument]) -> list[PreparedDocument]:
    """The chunks and vectors of the end-to-end run (from the embedding cache), to write again."""
    return services.ingestor.prepare(docs)


def _store_only(
    services: Services, prepared: list[PreparedDocument], repeats: int, queries: list[str]
) -> None:
    chunks = sum(len(p.chunks) for p in prepared)
    batch = services.settings.ingest.batch_documents
    writers = services.settings.ingest.writers
    paths = {
        f"COPY, {writers} writers, vector index built after the load (product path)": (
            write_documents, False, writers
        ),
        "COPY, 1 writer, vector index built after the load": (write_documents, False, 1),
        "COPY into an indexed collection, 1 writer (baseline)": (write_documents, True, 1),
        "row-by-row INSERT into an indexed collection (baseline)": (_insert_rows, True, 1),
    }  # fmt: skip
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    load_seconds: dict[str, list[float]] = {name: [] for name in list(paths)[:2]}
    loaded: dict[str, int] = {}
    for run in range(repeats):
        for number, (name, (write, indexed, concurrency)) in enumerate(paths.items()):
            collection = f"bench-store-{run}-{number}"
            seconds, cpu, loaded[name], load = _timed(
                services, collection, prepared, batch, write, indexed, concurrency
            )
            timings[name].append((seconds, cpu))
            if name in load_seconds:
                load_seconds[name].append(load)
            if run < repeats - 1:
                _drop(services, loaded[name])
    print(
        f"| store step: {chunks} chunks, {batch} documents a batch, median of {repeats} "
        "| chunks/s | server CPU s | chunks per server CPU s |"
    )
    print("|---|---|---|---|")
    medians = {name: statistics.median(t for t, _ in runs) for name, runs in timings.items()}
    for name, runs in timings.items():
        cpu = statistics.median(c for _, c in runs)
        per_cpu = f"{chunks / cpu:,.0f}" if cpu else "n/a"
        print(f"| {name} | {chunks / medians[name]:,.0f} | {cpu:.2f} | {per_cpu} |")
    product, one, baseline = list(medians.values())[:3]
    print(f"| ratio, product path / 1 writer | {one / product:.2f}x | | |")
    print(f"| ratio, product path / COPY into an indexed collection | {baseline / product:.1f}x "
          "| | |")  # fmt: skip
    print("\n| load alone (until the last batch committed), median | chunks/s | seconds |")
    print("|---|---|---|")
    loads = {name: statistics.median(runs) for name, runs in load_seconds.items()}
    for name, load in loads.items():
        print(f"| {name.split(', vector')[0]} | {chunks / load:,.0f} | {load:.2f} |")
    first = next(iter(paths))
    print(f"\nThen the product path's HNSW build took {medians[first] - loads[first]:.2f} s.")
    _recall(services, loaded, queries)
    for collection_id in loaded.values():
        _drop(services, collection_id)


def _recall(services: Services, loaded: dict[str, int], queries: list[str]) -> None:
    """Recall@10 of each collection's HNSW index against an exact scan of the same rows (the
    product's ef_search): a graph built after the load against one grown row by row."""
    vectors = services.embedder.embed(queries)
    print(f"\n| HNSW recall@10 against an exact scan, {len(queries)} queries | recall@10 |")
    print("|---|---|")
    for name, collection_id in loaded.items():
        found = [_overlap(services, collection_id, v.tolist()) for v in vectors]
        print(f"| {name.split(' (')[0]} | {statistics.mean(found):.3f} |")


def _overlap(services: Services, collection_id: int, vector: list[float]) -> float:
    params = {"c": collection_id, "q": str(vector)}
    with services.engine.begin() as conn:
        conn.execute(
            text("SELECT set_config('hnsw.ef_search', :e, true)"),
            {"e": str(services.settings.search.ef_search)},
        )
        vectors = _vectors(conn, collection_id)
        nearest = NEAREST.replace("{vectors}", vectors)
        exact = set(conn.execute(text(nearest.replace("{order}", "+ 0")), params).scalars())
        # With sorting switched off the planner answers ORDER BY distance with the index.
        conn.execute(text("SET LOCAL enable_sort = off"))
        ann = set(conn.execute(text(nearest.replace("{order}", "")), params).scalars())
    return len(exact & ann) / len(exact)


# {vectors}: the collection's vectors as its HNSW index reads them (`Collection.vector_sql`).
NEAREST = (
    "SELECT id FROM chunks c WHERE collection_id = :c "
    "ORDER BY ({vectors} <=> CAST(:q AS vector)) {order} LIMIT 10"
)


def _vectors(conn: Any, collection_id: int) -> str:
    name = conn.execute(
        text("SELECT name FROM collections WHERE id = :c"), {"c": collection_id}
    ).scalar_one()
    return collections.get(conn, name).vector_sql("c")


def _timed(
    services: Services,
    name: str,
    prepared: list[PreparedDocument],
    batch: int,
    write: Any,
    indexed: bool,
    writers: int,
) -> tuple[float, float, int, float]:
    """Wall seconds and server CPU seconds of writing `prepared` into a new collection, the
    deferred index build included; the collection's id; and the wall seconds until the last
    batch had committed (before the deferred index build)."""
    collection = services.ingestor.collection(name, create=True)
    memory = services.settings.ingest.index_memory
    work_mem = services.settings.ingest.work_mem
    if indexed:
        vector_index.build(services.engine, collection.id, memory)
    _settle(services)
    started, cpu = time.perf_counter(), server_cpu_seconds(services)
    with vector_index.deferred(services.engine, collection.id, memory):
        # As the ingest pipeline writes: up to `writers` batches at once, each its own
        # transaction.
        with concurrent_writer(services.engine, writers) as writer:
            for start in range(0, len(prepared), batch):
                docs = prepared[start : start + batch]
                keys = [d.external_id for d in docs]
                job = partial(write, collection=collection, docs=docs, work_mem=work_mem)
                writer.submit(keys, job, _ignore)
        loaded = time.perf_counter()
    seconds = time.perf_counter() - started
    return seconds, server_cpu_seconds(services) - cpu, collection.id, loaded - started


def _ignore(_: object) -> None:
    pass


def _drop(services: Services, collection_id: int) -> None:
    with services.engine.begin() as conn:
        conn.execute(text("DELETE FROM collections WHERE id = :id"), {"id": collection_id})


def _settle(services: Services) -> None:
    """Start each run from the same state: the dead rows of earlier runs vacuumed."""
    with services.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("VACUUM chunks, sections, documents, term_stats, corpus_stats"))


def server_cpu_seconds(services: Services) -> float:
    """CPU seconds used so far by the server's processes (the postmaster and its children),
    read from /proc when the server runs on this machine; 0 when it does not."""
    with services.engine.connect() as conn:
        directory = conn.execute(text("SHOW data_directory")).scalar_one()
    pid_file = Path(directory) / "postmaster.pid"
    if not pid_file.exists():
        return 0.0
    postmaster = pid_file.read_text().split()[0]
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if postmaster in (fields[1], stat.parent.name):
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _insert_rows(
    conn: Any, collection: Any, docs: list[PreparedDocument], work_mem: str | None = None
) -> None:
    """Baseline: the same rows as write_documents, one INSERT per section and chunk."""
    from app.ingest.store import _upsert

    if work_mem is not None:
        conn.execute(query("write.sql", "set_write_memory"), {"memory": work_mem})
    ids = _upsert(conn, collection.id, docs)
    driver = conn.connection.driver_connection
    with driver.cursor() as cur:
        for doc in docs:
            document_id = ids[doc.external_id]
            cur.executemany(
                "INSERT INTO sections (collection_id, document_id, ordinal, heading_path, text) "
                "VALUES (%s, %s, %s, %s, %s)",
                [
                    (collection.id, document_id, s.ordinal, list(s.heading_path), s.text)
                    for s in doc.sections
                ],
            )
            cur.executemany(
                "INSERT INTO chunks (collection_id, document_id, ordinal, section_ordinal,"
                " heading_path, context, text, token_count, text_config, embedding)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CAST(%s AS regconfig), %s)",
                [
                    (collection.id, document_id, c.ordinal, c.section_ordinal, list(c.heading_path),
                     chunk_context(doc.title, c.heading_path), c.text, c.token_count,
                     collection.text_config, v)
                    for c, v in zip(doc.chunks, doc.embeddings, strict=True)
                ],
            )  # fmt: skip


if __name__ == "__main__":
    main()
