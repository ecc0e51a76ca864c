"""Re-embedding a collection with another model or dimension, without downtime: through the
API and the command line, run by a real worker, against the loopback OpenAI-compatible server
(another model name, 64 dimensions) and between the bundled model's precisions. Searches
during it are those before it; writes during it and at its switch end up embedded with the
model the collection reads; an interrupted run resumes; a cancelled one leaves nothing; the
vector cache follows."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import collections
from app.ingest import load, reembed, vector_index
from app.ingest.embed import cpu_has_bf16, cpu_has_int8
from app.ingest.model import embedding_text_of
from app.ingest.pipeline import Defaults, IngestReport
from app.jobs.blobs import BlobStore
from app.jobs.queue import InProcessWorker
from app.jobs.run import Interrupted, Runner
from app.jobs.submit import submit_reembed
from app.search.engine import search
from app.search.request import SearchRequest
from app.service import Services
from tests.conftest import own_services, serving
from tests.openai_server import OpenAIServer, vector_for
from tests.test_cli import hybrid
from tests.test_jobs import records, wait_for

COLLECTION = "notes"
MODEL = "openai/test-embed"
DIM = 64
QUERIES = ("word3 topic1", "topic4 word10", "word50 word51", "topic2")


@pytest.fixture
def remote() -> Iterator[OpenAIServer]:
    with OpenAIServer(dimension=DIM) as running:
        yield running


@pytest.fixture
def own(services: Services, database_url: str, data_dir: Path, remote: OpenAIServer) -> Any:
    """Services that reach the loopback server (the shared `services` empty the tables after
    the test)."""
    with own_services(
        database_url,
        data_dir,
        OPENAI_BASE_URL=remote.base_url,
        OPENAI_API_KEY="test",
        HYBRID_EMBEDDING_MAX_RETRIES="1",
        HYBRID_FAISS_POLL_INTERVAL="0.2",
        HYBRID_REEMBED_BATCH="8",
    ) as running:
        yield running


def ingest(services: Services, n: int, prefix: str = "d", collection: str = COLLECTION) -> None:
    body = "\n".join(json.dumps(r | {"_id": r["id"]}) for r in records(n, prefix, words=60))
    docs = load.load_bytes(body.encode(), "corpus.jsonl", max_bytes=1 << 24, max_chars=1 << 24)
    services.ingestor.ingest(collection, docs, create=True)


def ranked(services: Services, query: str, mode: str, collection: str = COLLECTION) -> list[Any]:
    request = SearchRequest(query=query, mode=mode, k=10)
    with services.transaction() as conn:
        result = search(conn, collection, request, services.searcher(rerank=False))
    return [(h.chunk_id, round(h.score, 6)) for h in result.hits]


def everything(services: Services) -> dict[str, list[Any]]:
    return {f"{q} {m}": ranked(services, q, m) for q in QUERIES for m in ("vector", "hybrid")}


def scalar(services: Services, sql: str, **params: Any) -> Any:
    with services.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def collection_of(services: Services, name: str = COLLECTION) -> collections.Collection:
    with services.transaction() as conn:
        return collections.get(conn, name)


def indexes(services: Services) -> set[str]:
    with services.engine.connect() as conn:
        found = conn.execute(
            text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'chunks_embedding_%'")
        )
        return set(found.scalars())


def test_a_collection_moves_to_another_model_and_dimension(
    own: Services, remote: OpenAIServer
) -> None:
    ingest(own, 30)
    ingest(own, 10, collection="other")
    with own.engine.begin() as conn:  # every chunk embedded by the model, none from the cache
        conn.execute(text("DELETE FROM embedding_cache WHERE model LIKE 'openai/%'"))
    other_before = ranked(own, "word3 topic1", "hybrid", "other")
    chunks = scalar(own, "SELECT count(*) FROM chunks c JOIN collections k ON k.id = "
                    "c.collection_id WHERE k.name = :n", n=COLLECTION)  # fmt: skip
    worker = InProcessWorker(own)
    worker.start()
    try:
        with serving(own) as api:
            sent = api.post(
                f"/v1/collections/{COLLECTION}/reembed", json={"model": MODEL, "dimension": DIM}
            )
            assert sent.status_code == 202, sent.text
            job = sent.json()
            assert sent.headers["location"] == f"/v1/jobs/{job['id']}"
            assert job["kind"] == "reembed" and job["params"] == {"model": MODEL, "dimension": DIM}
            done = wait_for(api, job["id"])
            assert done["state"] == "done", done
            assert done["chunks"] == done["chunks_total"] == done["embedded"] == chunks
            shown = api.get(f"/v1/collections/{COLLECTION}").json()
            assert (shown["embedding_model"], shown["embedding_dim"]) == (MODEL, DIM)
            assert shown["vectors_version"] == 2 and shown["next_model"] is None
            # The query is embedded with the collection's new model.
            found = api.post(
                "/v1/search",
                json={"collection": COLLECTION, "query": "zebra crossing", "mode": "vector"},
            )
            assert found.status_code == 200 and found.json()["hits"]
            assert any("zebra crossing" in texts for texts in remote.embedding_inputs)
            # A chunk's own vector finds it first, through the new index.
            with own.engine.connect() as conn:
                chunk = conn.execute(
                    text(
                        "SELECT c.id, c.context, c.text FROM chunks c JOIN collections k "
                        "ON k.id = c.collection_id WHERE k.name = :n ORDER BY c.id DESC LIMIT 1"
                    ),
                    {"n": COLLECTION},
                ).one()
            vector = vector_for(embedding_text_of(chunk.context, chunk.text), DIM)
            first = api.post(
                "/v1/search",
                json={"collection": COLLECTION, "query": "x", "mode": "vector", "vector": vector},
            ).json()["hits"][0]
            assert first["chunk_id"] == chunk.id
            wrong = api.post(
                "/v1/search",
                json={"collection": COLLECTION, "query": "x", "mode": "vector", "vector": [0.1]},
            )
            assert wrong.status_code == 400 and "64 dimensions" in wrong.json()["detail"]
    finally:
        worker.stop()
    assert_embedded_with_the_remote_model_in(own, COLLECTION)
    notes, other = collection_of(own), collection_of(own, "other")
    assert f"chunks_embedding_{notes.id}_v2" in indexes(own)
    assert f"chunks_embedding_{notes.id}" not in indexes(own)
    # Collections of 384 and 64 dimensions side by side, each with its own index.
    with own.engine.connect() as conn:
        assert vector_index.is_built(conn, notes.id) and vector_index.is_built(conn, other.id)
    assert other.embedding_dim == 384
    assert ranked(own, "word3 topic1", "hybrid", "other") == other_before


def assert_embedded_with_the_remote_model_in(services: Services, name: str) -> None:
    found = collection_of(services, name)
    assert found.vector_column == "embedding_alt"
    with services.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT context, text, CAST(embedding_alt AS text) AS v, embedding FROM chunks "
                "WHERE collection_id = :c"
            ),
            {"c": found.id},
        ).all()
    assert rows
    for row in rows:
        assert row.embedding is None
        stored = np.array(json.loads(row.v), dtype=np.float32)
        expected = vector_for(embedding_text_of(row.context, row.text), DIM)
        assert np.allclose(stored, expected, atol=1e-6)


def test_searches_during_it_are_those_before_it_and_writes_go_on(
    own: Services, remote: OpenAIServer
) -> None:
    ingest(own, 30)
    before = everything(own)
    engine, target = own.engine, reembed.Target(MODEL, DIM)
    embedder = own.embedders.get(MODEL, DIM)

    def embed(texts: list[str]) -> Any:
        return own.ingestor.embed_cached(texts, None, embedder)

    started = reembed.begin(engine, collection_of(own).id, target)
    progress = reembed.counts(engine, started)
    reembed.fill(engine, started, embed, progress, lambda _: None, 16)
    reembed.build_index(engine, started, "64MB")
    assert everything(own) == before
    assert collection_of(own).next_model == MODEL
    # Written during it: into the column searches read, with the current model.
    ingest(own, 5, prefix="late")
    late = scalar(own, "SELECT count(*) FROM chunks WHERE embedding_alt IS NULL")
    assert late > 0
    # A batch embedded with the current model and written after the switch.
    body = json.dumps({"_id": "raced", "title": "Raced", "text": "written across the switch"})
    docs = load.load_bytes(body.encode(), "corpus.jsonl", max_bytes=1 << 20, max_chars=1 << 20)
    ingestor = own.ingestor
    pending = ingestor._prepare_batch(collection_of(own), docs, Defaults(), IngestReport())
    assert pending.model == (own.embedder.model_id, 384)
    reembed.switch(engine, started, embed, progress, 16)
    # The chunks written during it were embedded by the switch.
    assert scalar(own, "SELECT count(*) FROM chunks WHERE embedding_alt IS NULL") == 0
    with engine.begin() as conn:
        ingestor._write_batch(collection_of(own), pending, None, conn)
    reembed.retire(engine, started.id)
    assert_embedded_with_the_remote_model_in(own, COLLECTION)
    assert everything(own) != before


def test_an_interrupted_reembedding_resumes_where_it_stopped(
    own: Services, remote: OpenAIServer
) -> None:
    ingest(own, 30)
    before = everything(own)
    chunks = scalar(own, "SELECT count(*) FROM chunks")
    with own.engine.begin() as conn:  # earlier tests embedded these texts with this model
        conn.execute(text("DELETE FROM embedding_cache WHERE model LIKE 'openai/%'"))
    job = submit_reembed(own, COLLECTION, MODEL, DIM, key=None)
    runner = Runner(own, BlobStore.of(own.settings))
    looks = iter(range(1_000))
    with pytest.raises(Interrupted):
        runner.run(job.id, lambda: next(looks) >= 3)
    stopped = scalar(own, "SELECT chunks FROM jobs WHERE id = :id", id=job.id)
    assert 0 < stopped < chunks
    assert scalar(own, "SELECT state FROM jobs WHERE id = :id", id=job.id) == "queued"
    assert everything(own) == before
    # An index of a version the collection never reaches (left by a crash): dropped by the end.
    notes = collection_of(own)
    with own.engine.begin() as conn:
        conn.execute(text(
            f"CREATE INDEX chunks_embedding_{notes.id}_v7 ON chunks (id) "
            f"WHERE collection_id = {notes.id}"
        ))  # fmt: skip
    runner.run(job.id, lambda: False)
    assert indexes(own) == {f"chunks_embedding_{notes.id}_v2"}
    with own.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job.id}).one()
    assert row.state == "done" and row.attempts == 2
    # Each chunk was embedded once over both runs.
    assert row.embedded == row.chunks == row.chunks_total == chunks
    # (and the one text the model embeds when the job is asked for, to check it)
    assert sum(len(texts) for texts in remote.embedding_inputs) == chunks + 1
    assert_embedded_with_the_remote_model_in(own, COLLECTION)


def test_a_cancelled_reembedding_leaves_the_collection_as_it_was(
    own: Services, remote: OpenAIServer
) -> None:
    remote.embed_delay_s = 0.3
    ingest(own, 30)
    before = everything(own)
    with own.engine.begin() as conn:  # so that every batch waits for the (slow) model
        conn.execute(text("DELETE FROM embedding_cache WHERE model LIKE 'openai/%'"))
    worker = InProcessWorker(own)
    worker.start()
    try:
        with serving(own) as api:
            job = api.post(
                f"/v1/collections/{COLLECTION}/reembed", json={"model": MODEL, "dimension": DIM}
            ).json()
            deadline = time.monotonic() + 60
            while api.get(f"/v1/jobs/{job['id']}").json()["chunks"] < 8:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert api.delete(f"/v1/jobs/{job['id']}").status_code == 200
            assert wait_for(api, job["id"])["state"] == "cancelled"
    finally:
        worker.stop()
    found = collection_of(own)
    assert (found.next_model, found.vectors_version, found.vector_column) == (
        None, 1, "embedding"
    )  # fmt: skip
    assert scalar(own, "SELECT count(embedding_alt) FROM chunks") == 0
    assert indexes(own) == {f"chunks_embedding_{found.id}"}
    assert everything(own) == before


def test_bad_requests_are_refused_before_anything_is_queued(own: Services) -> None:
    ingest(own, 3)
    path = f"/v1/collections/{COLLECTION}/reembed"
    with serving(own) as api:
        for body, status, field in (
            ({"model": "nope"}, 400, "model"),
            ({"model": "cohere/embed"}, 400, "model"),
            ({"model": "local/no/such/model"}, 400, "model"),
            ({"model": MODEL, "dimension": 0}, 400, "dimension"),
            ({"model": MODEL, "dimension": 5000}, 400, "dimension"),
            ({"model": own.embedder.model_id}, 409, "model"),
            ({"dimension": 64}, 400, "model"),
            # The model does not give vectors of that dimension.
            ({"model": MODEL, "dimension": 32}, 400, "model"),
        ):
            answer = api.post(path, json=body)
            assert answer.status_code == status, (body, answer.text)
            assert field in (answer.json().get("field") or answer.json()["detail"]), answer.text
        assert api.post("/v1/collections/nothing/reembed", json={"model": MODEL}).status_code == 404
        assert scalar(own, "SELECT count(*) FROM jobs") == 0
        # One at a time: the first waits in the queue (no worker runs here).
        first = api.post(path, json={"model": MODEL, "dimension": DIM})
        assert first.status_code == 202
        second = api.post(path, json={"model": MODEL, "dimension": DIM})
        assert second.status_code == 409 and second.json()["field"] == "collection"
    assert scalar(own, "SELECT count(*) FROM jobs") == 1
    assert scalar(own, "SELECT count(*) FROM audit_log WHERE action = 'collection.reembed'") == 1


def test_the_vector_cache_follows_the_switch(own: Services, remote: OpenAIServer) -> None:
    ingest(own, 20)
    worker = InProcessWorker(own)
    worker.start()
    try:
        with serving(own, vector_cache=True) as api:
            notes = collection_of(own)
            deadline = time.monotonic() + 60
            while not own.vector_cache or not own.vector_cache.ready:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            job = api.post(
                f"/v1/collections/{COLLECTION}/reembed", json={"model": MODEL, "dimension": DIM}
            ).json()
            assert wait_for(api, job["id"])["state"] == "done"
            while True:
                row = next(
                    r for r in api.get("/v1/admin/index").json() if r["collection"] == COLLECTION
                )
                if row["vectors_version"] == 2 and row["status"] == "ready":
                    break
                assert time.monotonic() < deadline + 60, row
                time.sleep(0.1)
            assert (row["model"], row["dimension"], row["vectors"]) == (
                MODEL, DIM, scalar(own, "SELECT count(*) FROM chunks")
            )  # fmt: skip
            with own.engine.connect() as conn:
                chunk = conn.execute(text("SELECT id, context, text FROM chunks LIMIT 1")).one()
            vector = vector_for(embedding_text_of(chunk.context, chunk.text), DIM)
            found = api.post(
                "/v1/search",
                json={
                    "collection": COLLECTION, "query": "x", "mode": "vector", "vector": vector,
                    "vector_backend": "faiss",
                },
            ).json()  # fmt: skip
            assert found["vector_backend"] == "faiss" and found["hits"][0]["chunk_id"] == chunk.id
            assert notes.id == collection_of(own).id
    finally:
        worker.stop()


BUNDLED = "local/all-MiniLM-L6-v2"


@pytest.mark.parametrize(
    ("precision", "closest"),
    [
        pytest.param(
            "fp32 or bf16", 0.999,
            marks=pytest.mark.skipif(not cpu_has_bf16(), reason="no bfloat16 units"),
        ),
        # Without int8 dot-product units the weights have 7 bits (onnx_model.exported): the
        # least cosine to float32 measured on this test's chunks there was 0.978.
        ("int8", 0.98 if cpu_has_int8() else 0.97),
    ],
)  # fmt: skip
def test_the_bundled_model_moves_to_another_precision(
    own: Services, precision: str, closest: float
) -> None:
    ingest(own, 30)
    source = own.embedder.model_id
    if precision == "int8":
        target = f"{BUNDLED}+int8"
    else:  # whichever of the two the service does not default to
        target = BUNDLED if source == f"{BUNDLED}+bf16" else f"{BUNDLED}+bf16"
    job = submit_reembed(own, COLLECTION, target, None, key=None)
    Runner(own, BlobStore.of(own.settings)).run(job.id, lambda: False)
    found = collection_of(own)
    assert (found.embedding_model, found.embedding_dim) == (target, 384)
    assert scalar(own, "SELECT count(*) FROM chunks WHERE embedding_alt IS NULL") == 0
    # Nearly the same vectors as the other precision's.
    with own.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, context, text, CAST(embedding_alt AS text) AS v FROM chunks")
        ).all()
    stored = np.array([json.loads(r.v) for r in rows], dtype=np.float32)
    others = own.embedder.embed([embedding_text_of(r.context, r.text) for r in rows])
    assert (stored * others).sum(axis=1).min() > closest
    # Queries are embedded as the collection now is: the nearest stored vector comes first.
    embedder = own.embedders.get(target, 384)
    for query in QUERIES:
        nearest = rows[int(np.argmax(stored @ embedder.embed([query])[0]))].id
        assert ranked(own, query, "vector")[0][0] == nearest, query


def test_the_command_line_runs_it_and_resumes_it(
    own: Services, remote: OpenAIServer, database_url: str, data_dir: Path
) -> None:
    ingest(own, 10)
    env = {
        "DATABASE_URL": database_url,
        "HYBRID_DATA_DIR": str(data_dir),
        "OPENAI_BASE_URL": remote.base_url,
        "OPENAI_API_KEY": "test",
        "HYBRID_WORKER_POLL_INTERVAL": "0.2",
    }
    queued = hybrid(env, "reembed", "-c", COLLECTION, "--model", MODEL, "--dim", "64", "--async")
    assert queued.code == 0, queued.err
    job_id = int(re.search(r"job (\d+)", queued.out).group(1))  # type: ignore[union-attr]
    other = hybrid(env, "reembed", "-c", COLLECTION, "--model", MODEL, "--dim", "32")
    assert other.code == 1 and f"hybrid jobs cancel {job_id}" in other.err
    run = hybrid(env, "reembed", "-c", COLLECTION, "--model", MODEL, "--dim", "64")
    assert run.code == 0, run.err
    assert f"job {job_id}: resuming" in run.out and "done" in run.out
    assert_embedded_with_the_remote_model_in(own, COLLECTION)
    again = hybrid(env, "reembed", "-c", COLLECTION, "--model", MODEL, "--dim", "64")
    assert again.code == 1 and "already" in again.err


def test_a_killed_worker_loses_nothing_and_the_next_one_finishes(
    own: Services, remote: OpenAIServer, database_url: str, data_dir: Path
) -> None:
    """SIGKILL a `hybrid worker` mid-re-embedding; a second worker takes the stalled job over
    and finishes it, embedding only the chunks the first had not stored."""
    remote.embed_delay_s = 0.3
    ingest(own, 40)
    before = everything(own)
    chunks = scalar(own, "SELECT count(*) FROM chunks")
    with own.engine.begin() as conn:  # earlier tests embedded these texts with this model
        conn.execute(text("DELETE FROM embedding_cache WHERE model LIKE 'openai/%'"))
    job = submit_reembed(own, COLLECTION, MODEL, DIM, key=None)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HYBRID_DATA_DIR": str(data_dir),
        "OPENAI_BASE_URL": remote.base_url,
        "OPENAI_API_KEY": "test",
        "HYBRID_REEMBED_BATCH": "8",
        "HYBRID_WORKER_HEARTBEAT": "0.5",
        "HYBRID_WORKER_STALLED_AFTER": "2",
        "HYBRID_WORKER_POLL_INTERVAL": "0.5",
        "HYBRID_LOG_FORMAT": "json",
    }
    command = [str(Path(sys.executable).with_name("hybrid")), "worker"]

    def stored() -> int:
        return int(scalar(own, "SELECT chunks FROM jobs WHERE id = :id", id=job.id))

    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while stored() < 16:
            assert first.poll() is None, first.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert 16 <= stored() < chunks
    assert everything(own) == before
    second = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while scalar(own, "SELECT state FROM jobs WHERE id = :id", id=job.id) != "done":
            assert second.poll() is None, second.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert scalar(own, "SELECT attempts FROM jobs WHERE id = :id", id=job.id) == 2
    assert_embedded_with_the_remote_model_in(own, COLLECTION)
    # At most the batch the first worker was embedding when it died is embedded again.
    sent = sum(len(texts) for texts in remote.embedding_inputs)
    assert chunks + 1 <= sent <= chunks + 1 + 8  # the check of the model at submit: 1


def test_cancelling_a_queued_reembedding_that_had_begun_undoes_it(
    own: Services, remote: OpenAIServer
) -> None:
    ingest(own, 20)
    before = everything(own)
    job = submit_reembed(own, COLLECTION, MODEL, DIM, key=None)
    looks = iter(range(1_000))
    with pytest.raises(Interrupted):  # its worker stopped: back in the queue, half done
        Runner(own, BlobStore.of(own.settings)).run(job.id, lambda: next(looks) >= 2)
    assert collection_of(own).next_model == MODEL
    assert scalar(own, "SELECT count(embedding_alt) FROM chunks") > 0
    with serving(own) as api:
        cancelled = api.delete(f"/v1/jobs/{job.id}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    found = collection_of(own)
    assert (found.next_model, found.vectors_version) == (None, 1)
    assert scalar(own, "SELECT count(embedding_alt) FROM chunks") == 0
    assert indexes(own) == {f"chunks_embedding_{found.id}"}
    assert everything(own) == before
