"""The FAISS vector cache: built from the table, caught up from the change log, snapshotted,
rebuilt; and searches through it that never return a deleted, old or forbidden chunk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import collections, documents
from app.ann.cache import VectorCache
from app.ann.index import IndexParams, VectorIndex
from app.ann.snapshot import load as load_snapshot
from app.documents import DocumentPatch
from app.errors import Invalid, Unavailable
from app.ingest.model import SourceDocument
from app.ingest.pipeline import Ingestor
from app.search import engine
from app.search.engine import Searcher, search
from app.search.request import SearchRequest, resolve
from app.search.results import SearchResult
from app.service import Services
from app.settings import SearchSettings
from tests.test_ingest import doc
from tests.test_search import RandomEmbedder, query_vector

DOCS = 2000


def source_doc(i: int, body: str | None = None, acl: list[str] | None = None) -> SourceDocument:
    return SourceDocument(
        external_id=f"d{i}",
        title="",
        blocks=doc("", body or f"Document number {i}.").blocks,
        metadata={"group": "rare" if i % 100 == 7 else "common"},
        acl=acl if acl is not None else (["team-x"] if i % 100 == 3 else None),
    )


@pytest.fixture
def ingestor(services: Services) -> Ingestor:
    settings = replace(
        services.settings, ingest=replace(services.settings.ingest, batch_documents=500)
    )
    return Ingestor(services.engine, settings, RandomEmbedder(), services.tokenizer)


@pytest.fixture
def many(services: Services, ingestor: Ingestor) -> Services:
    """2,000 one-chunk documents with random vectors; 1% in group `rare`, 1% for `team-x`."""
    ingestor.ingest("many", [source_doc(i) for i in range(DOCS)], create=True)
    return services


@pytest.fixture
def cache(many: Services, tmp_path: Path) -> VectorCache:
    """A cache that indexes anything past 500 vectors with HNSW (so deletes are tombstones).

    Random 384-dimensional vectors are the hardest case for HNSW, so the search list covers the
    whole collection: the graph is then searched exhaustively and results can be compared with the
    exact scan's, row for row."""
    settings = replace(
        many.settings.vectors, exact_below=500, hnsw_ef_search=DOCS, poll_s=0.2, snapshot_s=3600
    )
    return VectorCache(many.engine, settings, tmp_path / "faiss")


def collection_id(services: Services, name: str = "many") -> int:
    with services.engine.connect() as conn:
        found = conn.execute(text("SELECT id FROM collections WHERE name = :n"), {"n": name})
        return int(found.scalar_one())


def chunk_ids(services: Services, name: str = "many") -> np.ndarray:
    with services.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT c.id FROM chunks c JOIN collections k ON k.id = c.collection_id "
                 "WHERE k.name = :n ORDER BY c.id"), {"n": name}
        )  # fmt: skip
        return np.array([r[0] for r in rows], dtype=np.int64)


def run(
    services: Services, cache: VectorCache | None, backend: str, vector: list[float], **fields: Any
) -> SearchResult:
    settings = replace(services.settings.search, exact_threshold=0)  # never the exact shortcut
    request = SearchRequest(vector=vector, mode="vector", vector_backend=backend, **fields)
    with services.engine.begin() as conn:
        return search(conn, "many", request, Searcher(settings=settings, vectors=cache))


def chunk_of(result: SearchResult) -> list[int]:
    return [h.chunk_id for h in result.hits]


def vector_of(text_: str) -> list[float]:
    return RandomEmbedder().embed([text_])[0].tolist()


# --- build and search ---------------------------------------------------------------------------


def test_build_streams_the_table_and_searches_like_the_exact_scan(
    many: Services, cache: VectorCache
) -> None:
    entry = cache.ensure(collection_id(many))
    index = entry.current[0] if entry.current else None
    assert index is not None and index.kind == "hnsw" and index.live == DOCS
    assert np.array_equal(index.ids(), chunk_ids(many))
    for seed in range(5):
        faiss_hits = run(many, cache, "faiss", query_vector(seed), k=10)
        exact_hits = run(many, cache, "exact", query_vector(seed), k=10)
        assert faiss_hits.vector_backend == "faiss" and faiss_hits.fresh
        assert exact_hits.vector_backend == "exact"
        assert chunk_of(faiss_hits) == chunk_of(exact_hits)


def test_the_cache_and_sql_measure_the_same_distance(services: Services) -> None:
    """FAISS compares normalised vectors by inner product, SQL by pgvector's cosine distance
    (`<=>`): one metric written twice, so the exact index and the SQL scan must rank alike and
    `1 - inner product` must be the distance SQL reports."""
    rng = np.random.default_rng(7)
    # Norms far from one, as stored vectors of another model may be.
    vectors = (rng.normal(size=(200, 16)) * rng.uniform(0.1, 10, size=(200, 1))).astype("f4")
    ids = np.arange(1, 201, dtype=np.int64)
    index = VectorIndex.build(16, ids, vectors.copy(), IndexParams(exact_below=1000))
    assert index.kind == "flat"
    with services.engine.connect() as conn:
        for seed in range(5):
            query = rng.normal(size=16).astype("f4") * (seed + 0.5)
            found = index.search(query, 10)
            rows = conn.execute(
                text(
                    "SELECT v.id, CAST(v.embedding AS vector) <=> CAST(:q AS vector) AS distance "
                    "FROM unnest(CAST(:ids AS bigint[]), CAST(:vs AS text[])) AS v(id, embedding) "
                    "ORDER BY distance, v.id LIMIT 10"
                ),
                {
                    "q": str(query.tolist()),
                    "ids": ids.tolist(),
                    "vs": [str(v.tolist()) for v in vectors],
                },
            ).all()
            assert found.tolist() == [row.id for row in rows]
            unit = query / np.linalg.norm(query)
            normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            inner = normalised[found - 1] @ unit
            assert np.allclose(1 - inner, [row.distance for row in rows], atol=1e-5)


def test_index_kind_follows_the_collection_size() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    ids = np.arange(10, 310, dtype=np.int64)
    assert VectorIndex.build(8, ids, vectors.copy(), IndexParams(exact_below=1000)).kind == "flat"
    assert VectorIndex.build(8, ids, vectors.copy(), IndexParams(exact_below=100)).kind == "hnsw"
    ivf = VectorIndex.build(8, ids, vectors.copy(), IndexParams(kind="ivf", ivf_nprobe=1000))
    assert ivf.kind == "ivf" and np.array_equal(ivf.ids(), ids)
    # Every kind finds an indexed vector first, and deletes (or tombstones) it.
    for params in (IndexParams(exact_below=1000), IndexParams(exact_below=100),
                   IndexParams(kind="ivf", ivf_nprobe=1000)):  # fmt: skip
        index = VectorIndex.build(8, ids, vectors.copy(), params)
        assert index.search(vectors[42], 1)[0] == 52
        index.apply(np.empty(0, np.int64), np.empty((0, 8), np.float32), np.array([52]))
        assert 52 not in index.search(vectors[42], 5) and index.live == 299


def test_a_one_percent_filter_still_returns_k_correct_rows(
    many: Services, cache: VectorCache
) -> None:
    cache.ensure(collection_id(many))
    rare = {"metadata.group": "rare"}
    for seed in range(3):
        found = run(many, cache, "faiss", query_vector(seed), k=10, filter=rare)
        exact = run(many, cache, "exact", query_vector(seed), k=10, filter=rare)
        assert len(found.hits) == 10 and all(h.metadata["group"] == "rare" for h in found.hits)
        assert chunk_of(found) == chunk_of(exact)
    restricted = run(many, cache, "faiss", query_vector(9), k=10, principals=["team-x"])
    assert len(restricted.hits) == 10
    assert chunk_of(restricted) == chunk_of(
        run(many, cache, "exact", query_vector(9), k=10, principals=["team-x"])
    )


def explain_vector_search(
    services: Services, cache: VectorCache, request: SearchRequest, settings: SearchSettings
) -> tuple[Any, list[str]]:
    """The vector source a search would use, and the search statement's EXPLAIN ANALYZE."""
    with services.engine.begin() as conn:
        collection = collections.get(conn, "many")
        plan = resolve(request, collection.settings, settings)
        assert request.vector is not None
        source = engine._vector_source(plan, collection, request.vector, cache, settings)
        engine.prepare(conn, collection, plan, settings, None)  # the search's own settings
        params = engine.statement_parameters(collection, plan, request.vector, source, settings)
        search = engine.statement(plan.filter, collection)
        explained = conn.execute(text("EXPLAIN (ANALYZE, COSTS OFF) " + search.text), params)
        return source, list(explained.scalars())


def cte_ran(lines: list[str], name: str) -> bool:
    found = next(i for i, line in enumerate(lines) if line.strip() == f"CTE {name}")
    return "never executed" not in lines[found + 1]


def fallback_ran(lines: list[str], source: str) -> bool:
    """Whether the vector leg's fallback `exact` (the exact scan) or `ann` (pgvector's index
    scan) read anything: the node under its gate (a one-time filter on `vector_short`)."""
    gate = "THEN (NOT " if source == "ann" else "THEN (InitPlan"
    leg = next(i for i, line in enumerate(lines) if line.strip() == "CTE vector_ranked")
    found = [i for i, line in enumerate(lines[leg:], leg) if "One-Time Filter: CASE WHEN" in line]
    (at,) = [i for i in found if gate in lines[i]]
    node = next(line for line in lines[at + 1 :] if "->" in line)
    return "never executed" not in node


def test_a_narrow_restriction_the_cache_thinks_wide_falls_back_to_the_exact_scan(
    many: Services, cache: VectorCache
) -> None:
    """A pass rate learned from a query's neighbours is not the restriction's share of the
    collection. When the cache believes a narrow restriction wide, it is asked for too few
    candidates, and the leg must still find k rows: the statement counts the visible chunks
    then, and scans them exactly."""
    cache.ensure(collection_id(many))
    settings = replace(many.settings.search, exact_threshold=100)  # the 20 rare ones are few
    request = SearchRequest(
        vector=query_vector(4), mode="vector", k=10, filter={"metadata.group": "rare"}
    )
    source, _ = explain_vector_search(many, cache, request, settings)
    for _ in range(20):
        cache.observe(source.restriction, 100, 100)  # as if every candidate had passed
    source, lines = explain_vector_search(many, cache, request, settings)
    # It asks for a few more than the leg needs (1.2x), not the 2,000 it would take to find
    # the 20 rare ones that way.
    assert source.candidates is not None and source.candidates.asked == 120
    # It counted, found the rare chunks few and scanned them exactly; pgvector's scan never ran.
    assert cte_ran(lines, "visible_running")
    assert fallback_ran(lines, "exact") and not fallback_ran(lines, "ann"), "\n".join(lines)
    with many.engine.begin() as conn:
        found = search(conn, "many", request, Searcher(settings=settings, vectors=cache))
    exact = run(many, cache, "exact", query_vector(4), k=10, filter={"metadata.group": "rare"})
    assert found.vector_backend == "faiss" and len(found.hits) == 10
    assert chunk_of(found) == chunk_of(exact)


def test_a_cache_that_delivers_skips_the_visible_chunk_count(
    many: Services, cache: VectorCache
) -> None:
    """Counting the chunks a restricted search may see is the fallback's business: when the
    cache's candidates leave k visible rows, the statement never runs that count."""
    cache.ensure(collection_id(many))
    settings = replace(many.settings.search, exact_threshold=100)
    common = {"metadata.group": "common"}
    request = SearchRequest(vector=query_vector(5), mode="vector", k=10, filter=common)
    source, lines = explain_vector_search(many, cache, request, settings)
    assert source.candidates is not None and source.candidates.ids
    assert not cte_ran(lines, "visible_running"), "\n".join(lines)
    assert not fallback_ran(lines, "exact") and not fallback_ran(lines, "ann")
    with many.engine.begin() as conn:
        found = search(conn, "many", request, Searcher(settings=settings, vectors=cache))
    assert len(found.hits) == 10 and all(h.metadata["group"] == "common" for h in found.hits)
    assert chunk_of(found) == chunk_of(run(many, cache, "exact", query_vector(5), k=10,
                                          filter=common))  # fmt: skip


def test_a_restriction_seen_to_pass_rarely_asks_the_cache_for_nothing(
    many: Services, cache: VectorCache
) -> None:
    with many.engine.connect() as conn:
        created = collections.get(conn, "many").created_at
    cid = collection_id(many)
    cache.ensure(cid)
    vector = query_vector(3)
    wide, narrow = ("wide",), ("narrow",)
    first = cache.candidates(cid, created, vector, 10, wide, exact_below=100, version=1)
    assert first is not None and first.asked == 48  # a quarter expected to pass, plus 20%
    cache.observe(wide, 100, 100)
    assert cache.candidates(cid, created, vector, 10, wide, exact_below=100, version=1).asked == 12
    # 1% of 2,000 is below the limit: the statement scans those chunks exactly.
    cache.observe(narrow, 100, 1)
    assert cache.candidates(cid, created, vector, 10, narrow, exact_below=100, version=1).ids == []


# --- following the change log ---------------------------------------------------------------------


def test_catch_up_applies_inserts_and_deletes(
    many: Services, cache: VectorCache, ingestor: Ingestor
) -> None:
    cid = collection_id(many)
    cache.ensure(cid)
    ingestor.ingest("many", [source_doc(5000, "A brand new document.")])
    probe = vector_of("A brand new document.")
    before = run(many, cache, "faiss", probe, k=3)
    assert not before.fresh  # the cache has not seen the insert: said so
    assert run(many, cache, "auto", probe, k=3).vector_backend == "pgvector"
    assert cache.catch_up(cid) == 1
    after = run(many, cache, "faiss", probe, k=3)
    assert after.fresh and after.hits[0].document_id == "d5000"
    assert run(many, cache, "auto", probe, k=3).vector_backend == "faiss"

    with many.engine.begin() as conn:
        documents.purge(conn, collection_id(many), "d5000")
    assert cache.catch_up(cid) == 1
    entry = cache.entry(cid)
    assert entry is not None and entry.current is not None
    assert np.array_equal(entry.current[0].ids(), chunk_ids(many))


def test_deleted_reingested_and_forbidden_chunks_never_appear_before_catch_up(
    many: Services, cache: VectorCache, ingestor: Ingestor
) -> None:
    cache.ensure(collection_id(many))
    target = run(many, cache, "faiss", query_vector(4), k=3).hits
    deleted, rewritten, locked = target[0], target[1], target[2]
    old_chunk = rewritten.chunk_id
    with many.engine.begin() as conn:
        cid = collection_id(many)
        documents.soft_delete(conn, cid, deleted.document_id)
        documents.update(conn, cid, locked.document_id, DocumentPatch(acl=["team-y"]))
    number = int(rewritten.document_id[1:])
    ingestor.ingest("many", [source_doc(number, "Rewritten text of this document.")])
    # The cache still holds all three chunks; the statement's checks drop them.
    for principals in (None, ["*"], ["team-x"]):
        hits = run(many, cache, "faiss", query_vector(4), k=20, principals=principals).hits
        shown = {h.chunk_id for h in hits}
        assert deleted.chunk_id not in shown and old_chunk not in shown
        assert locked.chunk_id not in shown
    allowed = run(many, cache, "faiss", query_vector(4), k=20, principals=["team-y"]).hits
    assert locked.chunk_id in {h.chunk_id for h in allowed}


def test_the_follower_wakes_on_notification(
    many: Services, cache: VectorCache, ingestor: Ingestor
) -> None:
    cid = collection_id(many)
    cache.ensure(cid)
    cache.settings = replace(cache.settings, poll_s=30.0)  # only a notification can wake it
    cache.start()
    try:
        ingestor.ingest("many", [source_doc(6000, "Notified document.")])
        deadline = time.monotonic() + 10
        probe = vector_of("Notified document.")
        while time.monotonic() < deadline:
            result = run(many, cache, "faiss", probe, k=1)
            if result.fresh:
                break
            time.sleep(0.05)
        assert result.fresh and result.hits[0].document_id == "d6000"
    finally:
        cache.stop(save=False)


def test_a_new_collection_is_built_in_the_background(
    services: Services, ingestor: Ingestor, tmp_path: Path
) -> None:
    cache = VectorCache(services.engine, replace(services.settings.vectors, poll_s=0.2),
                        tmp_path / "faiss")  # fmt: skip
    cache.start()
    try:
        assert cache.ready  # no collections yet
        ingestor.ingest("later", [source_doc(i) for i in range(20)], create=True)
        cid, expected = collection_id(services, "later"), chunk_ids(services, "later")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            entry = cache.entry(cid)
            index = entry.current[0] if entry and entry.current else None
            if index is not None and np.array_equal(index.ids(), expected):
                break
            time.sleep(0.05)
        assert index is not None and np.array_equal(index.ids(), expected)
    finally:
        cache.stop(save=False)


# --- snapshots and rebuilds -----------------------------------------------------------------------


def test_a_restart_loads_the_snapshot_and_replays_only_what_changed(
    many: Services, cache: VectorCache, ingestor: Ingestor
) -> None:
    cid = collection_id(many)
    cache.ensure(cid)  # builds and saves
    ingestor.ingest("many", [source_doc(7000 + i, f"Added later {i}.") for i in range(3)])
    restarted = VectorCache(many.engine, cache.settings, cache.root)
    entry = restarted.ensure(cid)
    assert entry.built_in_s == 0  # loaded, not built
    assert entry.applied == 3  # and caught up with the three inserts only
    assert entry.current is not None
    assert np.array_equal(entry.current[0].ids(), chunk_ids(many))


def test_a_snapshot_of_another_collection_is_not_loaded(
    many: Services, cache: VectorCache, ingestor: Ingestor
) -> None:
    cid = collection_id(many)
    cache.ensure(cid)
    with many.engine.begin() as conn:
        conn.execute(text("TRUNCATE collections, change_log RESTART IDENTITY CASCADE"))
    ingestor.ingest("many", [source_doc(i) for i in range(30)], create=True)
    assert collection_id(many) == cid  # same id, another collection
    entry = VectorCache(many.engine, cache.settings, cache.root).ensure(cid)
    assert entry.built_in_s > 0 and entry.current is not None
    assert entry.current[0].live == 30


def test_tombstones_past_the_threshold_rebuild_the_index(
    many: Services, cache: VectorCache
) -> None:
    cid = collection_id(many)
    cache.ensure(cid)
    with many.engine.begin() as conn:
        for i in range(0, 250):
            documents.purge(conn, cid, f"d{i}")
    cache.catch_up(cid)
    entry = cache.entry(cid)
    assert entry is not None and entry.rebuilding is not None
    entry.rebuilding.result(timeout=120)
    assert entry.current is not None
    index = entry.current[0]
    assert index.size == index.live == DOCS - 250  # no tombstones left
    assert np.array_equal(index.ids(), chunk_ids(many))


KILLED_REBUILD = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from pathlib import Path
    from app.ann.cache import VectorCache
    from app.service import Services
    from app.settings import load_settings

    settings = load_settings()
    services = Services.open(settings, check_schema=False)
    vectors = replace(settings.vectors, exact_below=500)
    cache = VectorCache(services.engine, vectors, Path(sys.argv[1]))
    cache.ensure(int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        cache.rebuild(int(sys.argv[2]), wait=True)
    """
)


def test_killing_the_process_mid_rebuild_leaves_a_complete_snapshot(
    many: Services, cache: VectorCache, ingestor: Ingestor
) -> None:
    cid = collection_id(many)
    cache.ensure(cid)
    environment = {
        **os.environ,
        "DATABASE_URL": many.settings.database.url or "",
        "HYBRID_DATA_DIR": str(many.settings.database.data_dir),
    }
    for delay in (0.05, 0.4, 0.9, 1.7):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_REBUILD, str(cache.root), str(cid)],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        ingestor.ingest("many", [source_doc(8000 + int(delay * 100), f"Between kills {delay}.")])
        loaded = load_snapshot(cache.root, cache.entry(cid).identity, cache.params)  # type: ignore[union-attr]
        assert loaded is not None  # the old complete snapshot or the new complete one
        entry = VectorCache(many.engine, cache.settings, cache.root).ensure(cid)
        assert entry.built_in_s == 0 and entry.current is not None
        assert np.array_equal(entry.current[0].ids(), chunk_ids(many))  # converged


def test_concurrent_searches_during_rebuild_and_catch_up(
    many: Services, cache: VectorCache, ingestor: Ingestor
) -> None:
    cid = collection_id(many)
    cache.ensure(cid)
    gone: set[int] = set()
    gone_lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher(seed: int) -> None:
        while not stop.is_set():
            with gone_lock:
                deleted_before = set(gone)
            try:
                hits = run(many, cache, "faiss", query_vector(seed), k=20).hits
            except BaseException as exc:
                errors.append(exc)
                return
            leaked = deleted_before & {h.chunk_id for h in hits}
            if leaked:
                errors.append(AssertionError(f"deleted chunks served: {leaked}"))
                return

    threads = [threading.Thread(target=searcher, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(4):
            rebuild = cache.rebuild(cid)
            victims = [h for h in run(many, cache, "exact", query_vector(round_ % 3), k=5).hits]
            with many.engine.begin() as conn:
                for hit in victims:
                    documents.purge(conn, cid, hit.document_id)
            with gone_lock:
                gone.update(h.chunk_id for h in victims)
            ingestor.ingest("many", [source_doc(9000 + round_, f"Concurrent {round_}.")])
            cache.catch_up(cid)
            assert rebuild.rebuilding is not None
            rebuild.rebuilding.result(timeout=120)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[0]
    cache.catch_up(cid)
    entry = cache.entry(cid)
    assert entry is not None and entry.current is not None
    assert np.array_equal(entry.current[0].ids(), chunk_ids(many))


# --- backends ------------------------------------------------------------------------------------


def test_backend_faiss_without_a_ready_cache_is_refused(many: Services) -> None:
    with pytest.raises(Unavailable, match="vector_backend"):
        run(many, None, "faiss", query_vector(1), k=5)
    assert run(many, None, "auto", query_vector(1), k=5).vector_backend == "pgvector"


def test_an_unknown_backend_is_refused(many: Services, cache: VectorCache) -> None:
    with pytest.raises(Invalid, match="vector_backend: expected one of auto, faiss"):
        run(many, cache, "annoy", query_vector(1), k=5)


# --- HTTP ----------------------------------------------------------------------------------------


def test_admin_routes_metrics_and_ready_report_the_cache(
    client: Any, services: Services, ingestor: Ingestor
) -> None:
    ingestor.ingest("small", [source_doc(i) for i in range(30)], create=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = {r["collection"]: r for r in client.get("/v1/admin/index").json()}
        if rows.get("small", {}).get("status") == "ready" and rows["small"]["vectors"] == 30:
            break
        time.sleep(0.1)
    assert rows["small"]["kind"] == "flat" and rows["small"]["lag_changes"] == 0

    rebuilt = client.post("/v1/admin/index/small/rebuild?wait=true")
    assert rebuilt.status_code == 200 and rebuilt.json()["vectors"] == 30
    assert client.post("/v1/admin/index/missing/rebuild").status_code == 404

    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'hybrid_vector_cache_vectors{collection="small"} 30.0' in metrics.text
    assert 'hybrid_vector_cache_lag_changes{collection="small"}' in metrics.text
    check = client.get("/ready").json()["checks"]["vector_cache"]
    assert check["ok"] and "small: flat index of 30 vectors" in check["detail"]

    refused = client.post(
        "/v1/search", json={"collection": "small", "query": "x", "vector_backend": "annoy"}
    )
    assert refused.status_code == 400 and refused.json()["field"] == "vector_backend"


def test_a_requests_ef_search_sets_the_hnsw_search_list(
    many: Services, cache: VectorCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = cache.ensure(collection_id(many))
    assert entry.current is not None
    index = entry.current[0]
    assert index._search_params(10, None).efSearch == DOCS  # the cache's setting
    assert index._search_params(10, 300).efSearch == 300
    assert index._search_params(50, 20).efSearch == 50  # never below the candidates asked
    asked: list[int | None] = []
    search_index = index.search

    def spy(vector: Any, k: int, ef_search: int | None = None) -> Any:
        asked.append(ef_search)
        return search_index(vector, k, ef_search)

    monkeypatch.setattr(index, "search", spy)
    run(many, cache, "faiss", query_vector(1), k=10)
    run(many, cache, "faiss", query_vector(1), k=10, ef_search=300)
    assert asked == [None, 300]
