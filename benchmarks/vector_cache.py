"""The FAISS vector cache against pgvector HNSW and the exact scan, in one run.

    python benchmarks/vector_cache.py --data-dir bench-data/scale [--queries 100] [--kinds K,...]

Runs on a collection made by benchmarks/scale.py (same data directory; 100k chunks in
`bench-data/scale`, 1M in a directory grown with `--sizes 100000,1000000`). Reports:

- build: reading every vector with binary COPY, then building each index type (time, size of
  the index as FAISS writes it); `hnsw` is built by the product's cache (`ensure`), which also
  writes its snapshot;
- the vector leg alone, top 10 for the corpus's real queries: FAISS (flat, HNSW at several
  efSearch, IVF at several nprobe) and pgvector HNSW (several ef_search) as recall@10 against
  the exact top 10, with p50/p95 latency;
- the whole search call (validation, the SQL statement, building hits), `vector` and `hybrid`
  modes, with the cache (`faiss`), `pgvector`, and `exact`, unrestricted and with a
  1%-selective filter;
- catch-up: time from a committed ingest of one document to its chunk being returned by the
  cache (the follower thread woken by the change log's notification).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scale
from sqlalchemy import text

from app import collections, documents
from app.ann.cache import VectorCache
from app.ann.index import IndexParams, VectorIndex
from app.ann.source import read_all
from app.db import embedded
from app.ingest.model import Block, SourceDocument
from app.service import Services
from app.settings import load_settings

K = 10
RECALL = 0.95  # the recall@10 at which the two HNSW implementations are compared
FAISS_EF = (16, 32, 64, 128, 256, 384, 512, 768, 1000)
PGVECTOR_EF = (40, 100, 200, 400, 1000)


def main() -> None:
    args = _arguments()
    url = args.database_url or embedded.start(args.data_dir)[0]
    settings = load_settings(
        {**os.environ, "DATABASE_URL": url, "HYBRID_DATA_DIR": str(args.data_dir),
         "HYBRID_FAISS_DIR": str(args.data_dir / "faiss")}
    )  # fmt: skip
    services = Services.open(settings)
    results: dict[str, Any] = {}
    try:
        with services.engine.connect() as conn:
            collection = collections.get(conn, scale.COLLECTION)
        queries, vectors, embed_ms = scale._queries(services, args)
        scale._machine(args, embed_ms)
        scale._prewarm(services)  # a serving database is warm, as in scale.py
        cache = services.open_vector_cache()
        results["build"], truth, indexes = _build(services, cache, collection, vectors, args)
        results["leg"] = _leg(services, collection, vectors, truth, indexes, args)
        results["equal_recall"] = _equal_recall(results["leg"])
        results["search"] = _searches(
            services, cache, queries, vectors, args, results["equal_recall"]
        )
        results["catch_up"] = _catch_up(services, cache, collection, args)
    finally:
        services.close()
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("bench-data/scale"))
    parser.add_argument("--database-url", help="Use this server instead of the embedded one")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--queries", type=int, default=100, help="Queries per measurement")
    parser.add_argument("--exact-queries", type=int, default=20, help="Queries for exact scans")
    parser.add_argument("--kinds", default="flat,hnsw,ivf", help="FAISS index types to build")
    parser.add_argument("--catch-up", type=int, default=30, help="Ingests timed for catch-up")
    parser.add_argument("--out", type=Path, default=Path("bench-data/faiss-results.json"))
    args = parser.parse_args()
    args.kinds = args.kinds.split(",")
    args.base, args.k = 2_000, K
    return args


def _build(
    services: Services,
    cache: VectorCache,
    collection: collections.Collection,
    vectors: list[list[float]],
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], np.ndarray, dict[str, VectorIndex]]:
    started = time.perf_counter()
    everything = read_all(
        services.engine, collection.id, collection.embedding_dim, collection.chunks, None,
        collection.vectors_version,
    )  # fmt: skip
    read_s = time.perf_counter() - started
    rows = [{"step": "read (binary COPY)", "seconds": read_s,
             "rate": len(everything.ids) / read_s, "bytes": everything.vectors.nbytes}]  # fmt: skip
    print(f"collection: {len(everything.ids)} chunks", flush=True)
    print(f"read every vector with binary COPY in {read_s:.1f} s", flush=True)
    indexes: dict[str, VectorIndex] = {}
    for kind in args.kinds:
        started = time.perf_counter()
        if kind == "hnsw":
            entry = cache.ensure(collection.id)
            assert entry.current is not None
            index = entry.current[0]
        else:
            params = IndexParams(kind=kind, ivf_nprobe=32)  # type: ignore[arg-type]
            index = VectorIndex.build(
                collection.embedding_dim, everything.ids, everything.vectors.copy(), params
            )
        seconds = time.perf_counter() - started
        size = int(faiss.serialize_index(index.faiss_index).nbytes)
        indexes[kind] = index
        rows.append({"step": f"build {kind}", "seconds": seconds, "bytes": size})
        print(f"built {kind} in {seconds:.1f} s ({size / 2**20:.0f} MiB)", flush=True)
    # Ground truth: the exact top 10 by cosine over every vector.
    unit = everything.vectors / np.linalg.norm(everything.vectors, axis=1, keepdims=True)
    truth = []
    for vector in vectors:
        scores = unit @ np.asarray(vector, dtype=np.float32)
        top = np.argpartition(-scores, K)[:K]
        truth.append(everything.ids[top[np.argsort(-scores[top])]])
    return rows, np.array(truth), indexes


def _leg(
    services: Services,
    collection: collections.Collection,
    vectors: list[list[float]],
    truth: np.ndarray,
    indexes: dict[str, VectorIndex],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    rows = []
    print("\nvector leg alone, top 10 | recall@10 | p50 ms | p95 ms", flush=True)
    settings: list[tuple[str, VectorIndex, IndexParams]] = []
    for kind, index in indexes.items():
        if kind == "hnsw":
            settings += [(f"faiss hnsw ef={ef}", index, IndexParams(hnsw_ef_search=ef))
                         for ef in FAISS_EF]  # fmt: skip
        elif kind == "ivf":
            settings += [(f"faiss ivf nprobe={n}", index, IndexParams(ivf_nprobe=n))
                         for n in (8, 16, 32, 64)]  # fmt: skip
        else:
            settings.append(("faiss flat (exact)", index, IndexParams()))
    product = {kind: index.params for kind, index in indexes.items()}
    for name, index, params in settings:
        index.params = replace(
            index.params, hnsw_ef_search=params.hnsw_ef_search, ivf_nprobe=params.ivf_nprobe
        )
        times, found = [], []
        for warm_up in (True, False):
            for vector in vectors[:5] if warm_up else vectors:
                started = time.perf_counter()
                ids = index.search(np.asarray(vector, dtype=np.float32), K)
                if not warm_up:
                    times.append((time.perf_counter() - started) * 1000)
                    found.append(ids)
        rows.append(_leg_row(name, times, found, truth))
    for kind, index in indexes.items():  # back to the product's settings
        index.params = product[kind]
    for ef in PGVECTOR_EF:
        times, found = _pgvector_leg(
            services, collection, vectors, f"SET LOCAL hnsw.ef_search = {ef}"
        )
        rows.append(_leg_row(f"pgvector hnsw ef_search={ef}", times, found, truth))
    exact = vectors[: args.exact_queries]
    times, found = _pgvector_leg(services, collection, exact, "SET LOCAL enable_indexscan = off")
    rows.append(_leg_row("pgvector exact scan", times, found, truth[: len(exact)]))
    return rows


def _equal_recall(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The cheapest FAISS HNSW and pgvector HNSW settings that reach RECALL, side by side; when
    pgvector's index never reaches it, the recall of its best setting is the bar instead."""
    prefixes = {"faiss": "faiss hnsw ef=", "pgvector": "pgvector hnsw ef_search="}
    pgvector = [r for r in rows if r["leg"].startswith(prefixes["pgvector"])]
    if not pgvector:
        return {}
    bar = min(RECALL, max(r["recall@10"] for r in pgvector))
    chosen: dict[str, Any] = {"recall bar": bar}
    for name, prefix in prefixes.items():
        reaching = [r for r in rows if r["leg"].startswith(prefix) and r["recall@10"] >= bar]
        if reaching:
            best = min(reaching, key=lambda r: r["p50"])
            chosen[name] = {**best, "ef_search": int(best["leg"].removeprefix(prefix))}
    print(f"\nvector leg at recall@10 >= {bar:.3f}:", flush=True)
    for name in ("faiss", "pgvector"):
        row = chosen.get(name)
        line = (f"{row['leg']} recall {row['recall@10']:.3f} p50 {row['p50']:.2f} "
                f"p95 {row['p95']:.2f} ms") if row else "never reached"  # fmt: skip
        print(f"  {name}: {line}", flush=True)
    if "faiss" in chosen and "pgvector" in chosen:
        for q in ("p50", "p95"):
            chosen[f"speed-up {q}"] = chosen["pgvector"][q] / chosen["faiss"][q]
        print(f"  FAISS leg faster by {chosen['speed-up p50']:.1f}x (p50), "
              f"{chosen['speed-up p95']:.1f}x (p95)", flush=True)  # fmt: skip
    return chosen


def _pgvector_leg(
    services: Services, collection: collections.Collection, vectors: list[list[float]], setting: str
) -> tuple[list[float], list[np.ndarray]]:
    statement = text(
        "SELECT id FROM chunks c WHERE collection_id = :c "
        f"ORDER BY {collection.vector_sql('c')} <=> CAST(:v AS vector) LIMIT :k"
    )
    times, found = [], []
    for warm_up in (True, False):
        for vector in vectors[:5] if warm_up else vectors:
            started = time.perf_counter()
            with services.engine.begin() as conn:
                conn.execute(text(setting))
                ids = (
                    conn.execute(statement, {"c": collection.id, "v": vector, "k": K})
                    .scalars()
                    .all()
                )
            if not warm_up:
                times.append((time.perf_counter() - started) * 1000)
                found.append(np.array(ids))
    return times, found


def _leg_row(
    name: str, times: list[float], found: list[np.ndarray], truth: np.ndarray
) -> dict[str, Any]:
    recall = statistics.mean(
        len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=False)
    )
    row = {"leg": name, "recall@10": recall, **scale._summary(times)}
    print(f"{name} | {recall:.3f} | {row['p50']:.2f} | {row['p95']:.2f}", flush=True)
    return row


def _searches(
    services: Services,
    cache: VectorCache,
    queries: list[str],
    vectors: list[list[float]],
    args: argparse.Namespace,
    equal_recall: dict[str, Any],
) -> list[dict[str, Any]]:
    """The whole search call through the product, per backend: with the default settings, and
    with each HNSW at the `ef_search` that reached RECALL in the leg alone."""
    rows = []
    print("\nwhole search call | p50 ms | p95 ms | hits", flush=True)
    restrictions = {
        "none": scale.RESTRICTIONS["none"],
        "filter 1%": scale.RESTRICTIONS["filter 1%"],
    }
    runs: list[tuple[str, str, str, int | None]] = [
        (mode, restriction, backend, None)
        for mode in ("vector", "hybrid")
        for restriction in restrictions
        for backend in ("faiss", "pgvector", "exact")
    ]
    if "faiss" in equal_recall and "pgvector" in equal_recall:
        runs += [(mode, "none", backend, equal_recall[backend]["ef_search"])
                 for mode in ("vector", "hybrid") for backend in ("faiss", "pgvector")]  # fmt: skip
    # One untimed pass first: the first timed row otherwise pays for the heap pages its
    # candidates touch for the first time (2-3 ms of p50 at 1M chunks, measured).
    scale._run(services, services.settings.search, queries, vectors, K, cache=cache,
               mode="vector", vector_backend="faiss", **restrictions["none"])  # fmt: skip
    exact_ids: dict[tuple[str, str], list[list[int]]] = {}
    for mode, restriction, backend, ef_search in runs:
        count = args.exact_queries if backend == "exact" else len(queries)
        times, _, hits, found = scale._run(
            services, services.settings.search, queries[:count], vectors, K, ids=True,
            cache=cache, mode=mode, vector_backend=backend, ef_search=ef_search,
            **restrictions[restriction],
        )  # fmt: skip
        if backend == "exact":
            exact_ids[mode, restriction] = found
        # The exact backend runs after the others of its mode and restriction: recall of the
        # others is filled in once it has.
        row = {"mode": mode, "restriction": restriction, "backend": backend,
               "ef_search": ef_search, "hits": statistics.mean(hits), "found": found,
               **scale._summary(times)}  # fmt: skip
        rows.append(row)
        label = f"{mode} {restriction} {backend}" + (f" ef={ef_search}" if ef_search else "")
        print(f"{label} | {row['p50']:.1f} | {row['p95']:.1f} | {row['hits']:.1f}", flush=True)
    print("\nrecall@10 of each whole search against the exact backend's results:", flush=True)
    for row in rows:
        truth = exact_ids.get((row["mode"], row["restriction"]))
        found = row.pop("found")
        if truth:
            row["recall@10"] = statistics.mean(
                len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth, strict=False)
            )
            label = f"{row['mode']} {row['restriction']} {row['backend']}"
            ef = f" ef={row['ef_search']}" if row["ef_search"] else ""
            print(f"  {label}{ef}: {row['recall@10']:.3f}", flush=True)
    return rows


def _catch_up(
    services: Services,
    cache: VectorCache,
    collection: collections.Collection,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Commit one document at a time; time until the cache returns its chunk."""
    cache.start()
    delays = []
    rng = np.random.default_rng(7)
    try:
        for i in range(args.catch_up):
            body = f"Catch-up probe {i} {rng.integers(1 << 30)}."
            vector = services.embedder.embed([body])[0].tolist()
            # Its own vector is its nearest neighbour once the cache has it.
            before = cache.candidates(
                collection.id,
                collection.created_at,
                vector,
                1,
                None,
                version=collection.vectors_version,
            )
            assert before is not None
            doc = SourceDocument(f"catch-up-{i}", "", [Block(body)], acl=["team-0"])
            services.ingestor.ingest(scale.COLLECTION, [doc])
            committed = time.perf_counter()
            while True:
                found = cache.candidates(
                    collection.id,
                    collection.created_at,
                    vector,
                    1,
                    None,
                    version=collection.vectors_version,
                )
                if found is not None and found.ids != before.ids:
                    break
                time.sleep(0.0005)
            delays.append((time.perf_counter() - committed) * 1000)
    finally:
        with services.engine.begin() as conn:
            for i in range(args.catch_up):
                with contextlib.suppress(Exception):
                    documents.purge(conn, collection.id, f"catch-up-{i}")
    row = scale._summary(delays)
    print(f"\ncatch-up, commit to searchable through the cache: p50 {row['p50']:.1f} ms, "
          f"p95 {row['p95']:.1f} ms ({len(delays)} ingests)", flush=True)  # fmt: skip
    return row


if __name__ == "__main__":
    main()
