"""The rerank stage through the real code path: a tiny cross-encoder (the bundled MiniLM with a
fresh one-logit head, saved to a temporary directory) loaded by `HYBRID_RERANK_MODEL`, real
HTTP, the real database. Its scores mean nothing, so these tests check plumbing: order by
score, batches, truncation, the time budget, pagination, the ACL, and what happens with no
model at all."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from litestar.testing import TestClient

from app.api.app import create_app
from app.errors import ConfigError
from app.ingest.embed import cpu_has_int8
from app.search.cache import CachedSearch, cached_search
from app.search.engine import Searcher
from app.search.request import SearchRequest
from app.search.rerank import (
    DOUBT_AFTER_S,
    CrossEncoderReranker,
    Reranking,
    load_reranker,
    local_model_path,
)
from app.service import Services
from app.settings import RerankSettings, load_settings
from tests.conftest import make_settings
from tests.test_api import Client, ingest, problem
from tests.test_cli import hybrid
from tests.test_eval import beir  # noqa: F401  (fixture)

NOT_CACHED = "cross-encoder/not-in-this-cache"
ANIMALS = [
    ("cats", "Cats", "Cats purr and sleep most of the day.", ["*"]),
    ("dogs", "Dogs", "Dogs bark at strangers and chase cats.", ["*"]),
    ("owls", "Owls", "Owls hunt mice and small animals at night.", ["*"]),
    ("bees", "Bees", "Bees make honey and visit animals' gardens.", ["*"]),
    ("fish", "Fish", "Fish swim in schools; cats watch them.", ["*"]),
    ("lab", "Lab animals", "Animals in the secret lab: cats, mice and owls.", ["group:lab"]),
    ("zoo", "Zoo", "The zoo keeps animals of every kind, cats included.", ["alice"]),
]


@pytest.fixture(scope="session")
def rerank_services(
    session_services: Services, database_url: str, data_dir: Path, model_dir: Path
) -> Iterator[Services]:
    settings = make_settings(database_url, data_dir, HYBRID_RERANK_MODEL=str(model_dir))
    services = Services.open(settings)
    yield services
    services.close()


@pytest.fixture
def rr(rerank_services: Services, services: Services) -> Iterator[Client]:
    """A client whose service has the tiny cross-encoder, over collection `kb`
    (emptied after the test by the `services` fixture, which restarts the ids: so the result
    cache is emptied too)."""
    rerank_services.search_cache.clear()
    with TestClient(app=create_app(rerank_services)) as client:
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": i, "title": t, "text": x, "acl": a} for i, t, x, a in ANIMALS]
        assert ingest(client, *docs).status_code == 201
        yield client
    rerank_services.search_cache.clear()


def search(client: Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json={"collection": "kb", "query": "cats", **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def ids(body: dict[str, Any]) -> list[str]:
    return [h["document_id"] for h in body["hits"]]


def reranker_of(services: Services) -> CrossEncoderReranker:
    reranker = services.reranking.reranker
    assert reranker is not None
    return reranker


@pytest.fixture
def slow_scorer(rerank_services: Services) -> Iterator[list[int]]:
    """The real scorer made to take 40 ms a pair; yields the size of every batch it scores."""
    reranker = reranker_of(rerank_services)
    real, sizes = reranker._score, []

    def slow(pairs: Sequence[tuple[str, str]]) -> Any:
        sizes.append(len(pairs))
        time.sleep(0.04 * len(pairs))
        return real(pairs)

    reranker._score, saved_cost = slow, reranker.seconds_per_pair
    yield sizes
    reranker._score, reranker.seconds_per_pair = real, saved_cost


@pytest.fixture
def rerank_settings(rerank_services: Services) -> Iterator[None]:
    """Restore the reranker's settings after a test that changes them with `apply`."""
    reranker = reranker_of(rerank_services)
    saved = reranker.settings
    yield
    reranker.settings = saved


def apply(services: Services, **changes: Any) -> None:
    reranker = reranker_of(services)
    reranker.settings = replace(reranker.settings, **changes)


# -- order and explain -------------------------------------------------------------------------


def test_default_mode_reranks_by_the_model_score(rr: Client, rerank_services: Services) -> None:
    body = search(rr, k=5, explain=True)
    assert body["mode"] == "hybrid+rerank"
    assert body["reranked"] is True
    assert body["rerank"] == {
        "model": str(rerank_services.settings.rerank.model),
        "depth": 5,
        "scored": 5,
        "complete": True,
    }
    scores = [h["rerank_score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert all(h["explain"]["rerank_score"] == h["rerank_score"] for h in body["hits"])
    assert sorted(h["explain"]["fused_rank"] for h in body["hits"]) == [1, 2, 3, 4, 5]
    assert (
        {"embed", "sql", "rerank"} <= set(body["timings_ms"]) <= {"embed", "sql", "faiss", "rerank"}
    )


def test_scores_are_the_model_scores_of_title_and_text(
    rr: Client, rerank_services: Services
) -> None:
    hits = search(rr, mode="hybrid+rerank", k=3)["hits"]
    reranker = reranker_of(rerank_services)
    passages = [f"{h['title']}\n{h['text']}" for h in hits]
    expected = np.asarray(reranker._score([("cats", p) for p in passages]))
    assert [h["rerank_score"] for h in hits] == pytest.approx(expected.tolist(), abs=1e-4)


def test_rerank_only_reorders_the_fused_hits(rr: Client) -> None:
    fused = search(rr, mode="hybrid", k=20)
    reranked = search(rr, mode="hybrid+rerank", k=20, rerank_depth=20)
    assert fused["reranked"] is False and "rerank_score" not in fused["hits"][0]
    assert sorted(ids(reranked)) == sorted(ids(fused))


def test_depth_below_the_page_keeps_the_tail_in_fused_order(rr: Client) -> None:
    everyone = ["alice", "group:lab"]
    fused = ids(search(rr, mode="hybrid", k=6, principals=everyone))
    body = search(rr, mode="hybrid+rerank", k=6, rerank_depth=3, explain=True, principals=everyone)
    assert sorted(ids(body)[:3]) == sorted(fused[:3])
    assert ids(body)[3:] == fused[3:]
    assert [h["explain"]["fused_rank"] for h in body["hits"][3:]] == [4, 5, 6]
    assert all("rerank_score" not in h for h in body["hits"][3:])


def test_pages_are_cut_after_reranking(rr: Client) -> None:
    whole = ids(search(rr, mode="hybrid+rerank", k=6, rerank_depth=6))
    first = ids(search(rr, mode="hybrid+rerank", k=3, rerank_depth=6))
    second = ids(search(rr, mode="hybrid+rerank", k=3, offset=3, rerank_depth=6))
    assert first + second == whole


def test_get_search_reranks_too(rr: Client) -> None:
    response = rr.get("/v1/search", params={"collection": "kb", "q": "cats", "rerank_depth": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reranked"] is True and body["rerank"]["depth"] == 2


# -- ACL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("principals", "visible"),
    [
        (None, {"cats", "dogs", "owls", "bees", "fish"}),
        (["alice"], {"zoo"}),
        (["group:lab"], {"lab"}),
    ],
)
def test_reranking_never_adds_a_chunk_the_caller_may_not_see(
    rr: Client, principals: list[str] | None, visible: set[str]
) -> None:
    public = {"cats", "dogs", "owls", "bees", "fish"}
    body = search(rr, query="animals cats", k=20, rerank_depth=20, principals=principals)
    assert body["reranked"] is True
    assert set(ids(body)) <= public | visible
    fused = search(rr, mode="hybrid", query="animals cats", k=20, principals=principals)
    assert set(ids(body)) == set(ids(fused))


# -- batches, truncation, budget ---------------------------------------------------------------


def test_pairs_are_scored_in_batches(
    rr: Client, rerank_services: Services, slow_scorer: list[int], rerank_settings: Any
) -> None:
    apply(rerank_services, batch_size=2, budget_ms=60_000.0)
    body = search(rr, k=5, rerank_depth=5)
    assert body["rerank"]["scored"] == 5
    assert slow_scorer == [2, 2, 1]


def test_passages_and_queries_are_cut_to_their_token_budgets(rerank_services: Services) -> None:
    reranker = reranker_of(rerank_services)
    long_text = " ".join(f"word{i}" for i in range(400))
    cut = reranker.truncate(long_text, 16)
    assert len(reranker._tokenizer(cut, add_special_tokens=False)["input_ids"]) == 16
    assert long_text.startswith(cut)
    assert reranker.truncate("short text", 16) == "short text"
    budget = reranker.settings.passage_tokens
    full = reranker.score("q", [long_text], budget_s=60)
    exact = reranker.score("q", [reranker.truncate(long_text, budget)], budget_s=60)
    assert full == pytest.approx(exact, abs=1e-5)


def test_longer_passage_budget_reads_more(rerank_services: Services, rerank_settings: Any) -> None:
    reranker = reranker_of(rerank_services)
    text_ = "Cats purr. " + " ".join(["Dogs bark loudly at night."] * 60)
    apply(rerank_services, passage_tokens=8)
    short = reranker.score("cats", [text_], budget_s=60)
    apply(rerank_services, passage_tokens=256)
    longer = reranker.score("cats", [text_], budget_s=60)
    assert short != pytest.approx(longer, abs=1e-6)


def test_budget_spent_leaves_the_rest_in_fused_order(
    rr: Client, rerank_services: Services, slow_scorer: list[int], rerank_settings: Any
) -> None:
    apply(rerank_services, batch_size=2, budget_ms=200.0)
    reranker_of(rerank_services).seconds_per_pair = None
    fused = ids(search(rr, mode="hybrid", k=7, principals=["alice", "group:lab"]))
    body = search(rr, k=7, rerank_depth=7, principals=["alice", "group:lab"], explain=True)
    scored = body["rerank"]["scored"]
    assert 0 < scored < 7
    assert body["reranked"] is True and body["rerank"]["complete"] is False
    assert sum(slow_scorer) == scored
    assert sorted(ids(body)[:scored]) == sorted(fused[:scored])
    assert ids(body)[scored:] == fused[scored:]
    assert all("rerank_score" not in h for h in body["hits"][scored:])


def test_no_time_left_means_fused_order_and_reranked_false(
    rr: Client, rerank_services: Services, rerank_settings: Any
) -> None:
    apply(rerank_services, budget_ms=0.001)
    fused = ids(search(rr, mode="hybrid", k=5))
    body = search(rr, k=5)
    assert body["mode"] == "hybrid+rerank"
    assert body["reranked"] is False
    assert body["rerank"]["scored"] == 0 and body["rerank"]["complete"] is False
    assert ids(body) == fused


def test_concurrent_searches_share_the_model_safely(rerank_services: Services) -> None:
    reranker = reranker_of(rerank_services)
    passages = [f"{t}\n{x}" for _, t, x, _ in ANIMALS]
    expected = reranker.score("cats", passages, budget_s=60)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: reranker.score("cats", passages, budget_s=60), range(8)))
    assert all(r == pytest.approx(expected, abs=1e-5) for r in results)


def test_waiting_for_a_busy_model_counts_against_the_budget(rerank_services: Services) -> None:
    reranker = reranker_of(rerank_services)
    passages = [f"{t}\n{x}" for _, t, x, _ in ANIMALS]
    busy, free = threading.Event(), threading.Event()

    def other_search() -> None:
        with reranker._lock:  # another search's batch holds the model for a second
            busy.set()
            free.wait(1.0)

    holder = threading.Thread(target=other_search)
    holder.start()
    busy.wait()
    started = time.perf_counter()
    scores = reranker.score("cats", passages, budget_s=0.2)
    waited = time.perf_counter() - started
    free.set()
    holder.join()
    assert scores == []  # fused order: the budget ran out while waiting
    assert 0.15 < waited < 0.6


def test_an_inflated_cost_estimate_does_not_stop_reranking_for_good(
    rerank_services: Services,
) -> None:
    reranker = reranker_of(rerank_services)
    saved = reranker.seconds_per_pair
    passages = [f"{t}\n{x}" for _, t, x, _ in ANIMALS]
    try:
        reranker.seconds_per_pair = 100.0  # one call was very slow (a load spike)
        reranker._measured_at = time.perf_counter() - DOUBT_AFTER_S
        assert reranker.score("cats", passages, budget_s=2.0) == []  # the budget holds...
        assert reranker.seconds_per_pair == 50.0  # ...and the estimate is doubted,
        assert reranker.score("cats", passages, budget_s=2.0) == []
        assert reranker.seconds_per_pair == 50.0  # but not again before DOUBT_AFTER_S
        for _ in range(20):
            reranker._measured_at -= DOUBT_AFTER_S  # as if searches kept coming for a while
            if reranker.score("cats", passages, budget_s=2.0):  # reranked again
                break
        else:
            pytest.fail("reranking never recovered from the inflated estimate")
    finally:
        reranker.seconds_per_pair = saved


def test_the_batch_that_fits_shrinks_with_the_time_left(rerank_services: Services) -> None:
    reranker = reranker_of(rerank_services)
    saved = reranker.seconds_per_pair
    try:
        reranker.seconds_per_pair = 0.01
        batch = reranker.settings.batch_size
        assert reranker._batch_fitting(10.0) == batch
        assert reranker._batch_fitting(0.035) == 3
        assert reranker._batch_fitting(0.005) == 0
        assert reranker._batch_fitting(-1.0) == 0
    finally:
        reranker.seconds_per_pair = saved


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"rerank_depth": 0}, "rerank_depth", "1 to 100"),
        ({"rerank_depth": 101}, "rerank_depth", "1 to 100"),
        ({"rerank_depth": "ten"}, "rerank_depth", "int"),
        ({"rerank_depth": 5, "mode": "keyword"}, "rerank_depth", "only mode hybrid+rerank"),
        ({"mode": "hybrid+rerank", "query": "", "vector": [0.1] * 384}, "query", "query text"),
        ({"mode": "rerank"}, "mode", "hybrid+rerank"),
    ],
)
def test_bad_rerank_requests_are_400_naming_the_field(
    rr: Client, body: dict[str, Any], field: str, words: str
) -> None:
    response = rr.post("/v1/search", json={"collection": "kb", "query": "cats", **body})
    error = problem(response, 400)
    assert error["field"] == field
    assert words in error["detail"]


def test_get_with_a_bad_depth_is_400(rr: Client) -> None:
    response = rr.get("/v1/search", params={"collection": "kb", "q": "cats", "rerank_depth": -1})
    assert problem(response, 400)["field"] == "rerank_depth"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HYBRID_RERANK_DEPTH", "0"),
        ("HYBRID_RERANK_DEPTH", "500"),
        ("HYBRID_RERANK_BATCH_SIZE", "0"),
        ("HYBRID_RERANK_BUDGET_MS", "0"),
        ("HYBRID_RERANK_PASSAGE_TOKENS", "500"),
        ("HYBRID_RERANK_BACKEND", "gpu"),
    ],
)
def test_bad_rerank_settings_stop_the_start(
    database_url: str, data_dir: Path, variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        make_settings(database_url, data_dir, **{variable: value})


# -- no model ----------------------------------------------------------------------------------


@pytest.fixture
def no_model(services: Services, database_url: str, data_dir: Path) -> Iterator[Client]:
    settings = make_settings(database_url, data_dir, HYBRID_RERANK_MODEL=NOT_CACHED)
    plain = Services.open(settings)
    try:
        with TestClient(app=create_app(plain)) as client:
            assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
            docs = [{"id": i, "title": t, "text": x, "acl": a} for i, t, x, a in ANIMALS]
            assert ingest(client, *docs).status_code == 201
            yield client
    finally:
        plain.close()


def test_without_a_model_the_service_is_ready_and_says_so(no_model: Client) -> None:
    response = no_model.get("/ready")
    assert response.status_code == 200
    check = response.json()["checks"]["reranker"]
    assert check["ok"] is False and check["required"] is False
    assert NOT_CACHED in check["detail"] and "HYBRID_RERANK_MODEL" in check["detail"]


def test_a_missing_model_is_a_warning_in_the_server_log(
    services: Services, database_url: str, data_dir: Path
) -> None:
    settings = make_settings(database_url, data_dir, HYBRID_RERANK_MODEL=NOT_CACHED)
    plain = Services.open(settings)
    try:
        with structlog.testing.capture_logs() as logs, TestClient(app=create_app(plain)):
            pass
    finally:
        plain.close()
    warnings = [e for e in logs if e["event"] == "reranker unavailable"]
    assert [e["log_level"] for e in warnings] == ["warning"]
    assert NOT_CACHED in warnings[0]["reason"]
    assert "huggingface-cli download" in warnings[0]["how"]


def test_without_a_model_search_keeps_the_fused_order(no_model: Client) -> None:
    body = search(no_model, k=5)
    assert body["mode"] == "hybrid"
    assert body["reranked"] is False and body["rerank"] is None
    assert ids(body) == ids(search(no_model, mode="hybrid", k=5))


def test_without_a_model_asking_for_rerank_is_503_saying_how_to_get_one(
    no_model: Client,
) -> None:
    response = no_model.post(
        "/v1/search", json={"collection": "kb", "query": "cats", "mode": "hybrid+rerank"}
    )
    error = problem(response, 503)
    assert error["field"] == "mode"
    for words in (NOT_CACHED, "HYBRID_RERANK_MODEL", "huggingface-cli download"):
        assert words in error["detail"]


def test_the_default_settings_look_in_the_local_cache_only(settings: Any) -> None:
    assert settings.rerank.model == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    reranking = load_reranker(settings.rerank, settings.database.data_dir)
    if reranking.available:
        pytest.skip("this machine has the model in its Hugging Face cache")
    assert "neither a local directory nor in the Hugging Face cache" in reranking.detail


def test_model_off_disables_reranking() -> None:
    settings = load_settings({"HYBRID_RERANK_MODEL": "off"}).rerank
    for rerank in (settings, RerankSettings(model="")):
        reranking = load_reranker(rerank, Path())
        assert not reranking.available and "disabled" in reranking.detail


def test_a_directory_that_is_not_a_model_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    reranking = load_reranker(RerankSettings(model=str(tmp_path)), tmp_path)
    assert not reranking.available and "cannot be loaded" in reranking.detail
    with structlog.testing.capture_logs() as logs:
        reranking.log_status()
    assert [(e["event"], e["log_level"]) for e in logs] == [("reranker unavailable", "warning")]


def test_invalid_hub_ids_are_not_found() -> None:
    assert local_model_path("not/a/valid/id") is None
    assert local_model_path("bad id!") is None


# -- CLI and eval ------------------------------------------------------------------------------


@pytest.fixture
def rr_env(rr: Client, database_url: str, data_dir: Path, model_dir: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "HYBRID_DATA_DIR": str(data_dir),
        "HYBRID_RERANK_MODEL": str(model_dir),
    }


def test_cli_search_reranks_and_explains(rr_env: dict[str, str]) -> None:
    run = hybrid(rr_env, "search", "cats", "-c", "kb", "--rerank-depth", "3", "--explain")
    assert run.code == 0, run.text
    assert "(hybrid+rerank)" in run.text and "reranked 3 of 3" in run.text
    assert "fused" in run.text


def test_cli_rerank_without_a_model_fails_with_the_way_out(rr_env: dict[str, str]) -> None:
    env = {**rr_env, "HYBRID_RERANK_MODEL": NOT_CACHED}
    run = hybrid(env, "search", "cats", "-c", "kb", "--mode", "hybrid+rerank")
    assert run.failed_with("hybrid+rerank", "HYBRID_RERANK_MODEL")
    plain = hybrid(env, "search", "cats", "-c", "kb", "--json")
    assert plain.code == 0, plain.text
    assert '"reranked": false' in plain.out
    table = hybrid(env, "search", "cats", "-c", "kb")
    assert table.code == 0, table.text
    assert "(hybrid)" in table.text and "not reranked" in table.text


def test_eval_reports_the_rerank_mode(
    rr_env: dict[str, str],
    beir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    modes = "hybrid,hybrid+rerank"
    run = hybrid(rr_env, "eval", str(beir), "--out", str(out), "--no-progress", "--modes", modes)
    assert run.code == 0, run.text
    assert "hybrid+rerank" in run.out
    report = json.loads((out / "tiny.json").read_text())
    by_mode = {m["mode"]: m for m in report["modes"]}
    assert set(by_mode) == {"hybrid", "hybrid+rerank"}
    assert by_mode["hybrid+rerank"]["queries"] == 2
    assert by_mode["hybrid+rerank"]["rerank_incomplete"] == 0
    env = {**rr_env, "HYBRID_RERANK_MODEL": NOT_CACHED}
    refused = hybrid(env, "eval", str(beir), "--no-progress", "--modes", modes)
    assert refused.failed_with("hybrid+rerank", "HYBRID_RERANK_MODEL")


def test_tiny_model_loads_from_a_directory(rerank_services: Services, model_dir: Path) -> None:
    reranking = rerank_services.reranking
    assert reranking.available and str(model_dir) in reranking.detail


# -- ONNX Runtime backends ---------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "tolerance"), [("onnx", 1e-4), ("onnx-int8", 0.05)])
def test_onnx_backends_score_like_torch_and_reuse_their_export(
    rerank_services: Services, model_dir: Path, tmp_path: Path, backend: str, tolerance: float
) -> None:
    pytest.importorskip("onnxruntime")
    settings = replace(rerank_services.settings.rerank, backend=backend, batch_size=4)
    reranking = load_reranker(settings, tmp_path)
    assert reranking.available, reranking.detail
    assert backend in reranking.detail
    passages = [f"{t}\n{x}" for _, t, x, _ in ANIMALS]
    scores = reranking.reranker.score("cats", passages, budget_s=60)  # type: ignore[union-attr]
    expected = reranker_of(rerank_services).score("cats", passages, budget_s=60)
    assert scores == pytest.approx(expected, abs=tolerance)
    exports = sorted(tmp_path.rglob("*.onnx"))
    # int8 weights have 7 bits where the CPU has no int8 dot-product units (onnx_model.exported).
    int8 = "model_int8_per_channel.onnx" if cpu_has_int8() else "model_int8_per_channel_7bit.onnx"
    assert [p.name for p in exports][-1] == (int8 if backend == "onnx-int8" else "model.onnx")
    stamps = [p.stat().st_mtime_ns for p in exports]
    assert load_reranker(settings, tmp_path).available
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.onnx"))] == stamps


# -- result cache ------------------------------------------------------------------------------


def without_timings(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("timings_ms", "cache", "search_id")}


def test_a_cached_reranked_result_is_the_computed_one(rr: Client) -> None:
    computed = search(rr, k=5, explain=True)
    cached = search(rr, k=5, explain=True)
    assert (computed["cache"], cached["cache"]) == ("computed", "cached")
    assert cached["reranked"] is True and cached["rerank"]["complete"] is True
    assert all("rerank_score" in h for h in cached["hits"])
    assert without_timings(cached) == without_timings(computed)
    assert computed["timings_ms"]["rerank"] > 0
    assert cached["timings_ms"]["rerank"] == 0.0


def test_a_partly_reranked_result_is_not_kept(
    rr: Client, rerank_services: Services, slow_scorer: list[int], rerank_settings: Any
) -> None:
    apply(rerank_services, batch_size=2, budget_ms=200.0)
    reranker_of(rerank_services).seconds_per_pair = None
    first = search(rr, k=7, rerank_depth=7)
    assert first["rerank"]["complete"] is False and first["cache"] == "computed"
    scored = sum(slow_scorer)
    again = search(rr, k=7, rerank_depth=7)
    assert again["cache"] == "computed"  # computed again, not served from the cache
    assert sum(slow_scorer) > scored


def test_a_partly_reranked_result_is_shared_with_concurrent_callers(
    rr: Client, rerank_services: Services, slow_scorer: list[int], rerank_settings: Any
) -> None:
    apply(rerank_services, batch_size=2, budget_ms=200.0)
    reranker_of(rerank_services).seconds_per_pair = None
    cache = rerank_services.search_cache
    request = SearchRequest(query="cats", k=7, rerank_depth=7)
    callers, start = 4, threading.Barrier(4)
    outcomes: list[CachedSearch] = []

    def run() -> CachedSearch:
        with rerank_services.engine.begin() as conn:
            return cached_search(
                conn,
                "kb",
                request,
                Searcher(
                    settings=rerank_services.settings.search,
                    embeddings=rerank_services.embeddings,
                    reranking=rerank_services.reranking,
                ),
                cache=cache,
            )

    def call() -> None:
        start.wait()
        outcomes.append(run())

    before = cache.flights.computations
    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.flights.computations - before == 1
    assert sorted(o.origin for o in outcomes) == ["computed"] + ["shared"] * (callers - 1)
    assert all(o.result.rerank and not o.result.rerank.complete for o in outcomes)
    assert run().origin == "computed"  # shared while it ran, not kept


def test_the_cache_key_holds_the_cross_encoder(
    rr: Client, rerank_services: Services, rerank_settings: Any
) -> None:
    cache = rerank_services.search_cache
    loaded = rerank_services.reranking
    reranker = reranker_of(rerank_services)
    other_model = Reranking(
        copy.copy(reranker), loaded.detail, loaded.settings
    )  # the same scores under another model name
    assert other_model.reranker is not None
    other_model.reranker.model_id = "another/cross-encoder"
    missing = Reranking(None, "not on this machine", loaded.settings)

    def run(reranking: Reranking | None) -> CachedSearch:
        with rerank_services.engine.begin() as conn:
            return cached_search(
                conn,
                "kb",
                SearchRequest(query="cats", k=5),
                Searcher(
                    settings=rerank_services.settings.search,
                    embeddings=rerank_services.embeddings,
                    reranking=reranking,
                ),
                cache=cache,
            )

    first = run(loaded)
    assert (first.origin, first.result.mode, first.result.reranked) == (
        "computed",
        "hybrid+rerank",
        True,
    )
    assert run(loaded).origin == "cached"
    plain = run(missing)
    assert (plain.origin, plain.result.mode, plain.result.rerank) == ("computed", "hybrid", None)
    assert run(None).origin == "cached"  # no cross-encoder either way
    renamed = run(other_model)
    assert renamed.origin == "computed" and renamed.result.rerank is not None
    assert renamed.result.rerank.model == "another/cross-encoder"
    apply(rerank_services, backend="onnx")  # the key changes with the backend too
    assert run(loaded).origin == "computed"


# -- answers -----------------------------------------------------------------------------------


def test_an_answer_can_be_reranked(rr: Client) -> None:
    body = {"collection": "kb", "query": "cats", "mode": "hybrid+rerank", "rerank_depth": 5}
    response = rr.post("/v1/answer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["mode"] == "hybrid+rerank" and answer["sources"]
    assert answer["timings_ms"]["rerank"] > 0
    assert answer["cache"] == "computed"
    again = rr.post("/v1/answer", json=body).json()
    assert again["cache"] == "cached" and again["sources"] == answer["sources"]
    plain = rr.post("/v1/answer", json={**body, "mode": "hybrid", "rerank_depth": None}).json()
    assert plain["mode"] == "hybrid" and "rerank" not in plain["timings_ms"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rerank_depth": 0}, "rerank_depth"),
        ({"rerank_depth": "ten"}, "rerank_depth"),
        ({"rerank_depth": 5, "mode": "vector"}, "rerank_depth"),
        ({"mode": "rerank"}, "mode"),
    ],
)
def test_bad_rerank_answers_are_400_naming_the_field(
    rr: Client, body: dict[str, Any], field: str
) -> None:
    response = rr.post("/v1/answer", json={"collection": "kb", "query": "cats", **body})
    assert problem(response, 400)["field"] == field


def test_cli_ask_reranks(rr_env: dict[str, str]) -> None:
    args = ("ask", "cats", "-c", "kb", "--mode", "hybrid+rerank", "--rerank-depth", "3", "--json")
    run = hybrid(rr_env, *args)
    assert run.code == 0, run.text
    events = [json.loads(line) for line in run.out.splitlines()]
    assert events[0]["event"] == "sources" and events[0]["mode"] == "hybrid+rerank"
    assert "rerank" in events[-1]["timings_ms"]
