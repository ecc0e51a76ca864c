"""Answer latency by stage, search cache hit vs miss, and coalescing of concurrent searches.

    PYTHONPATH=. python benchmarks/answer.py ../shared/data/adi [--repeats 5] [--concurrency 50]
        [--rerank-model DIR]

The corpus (BEIR layout) goes through the normal write path into a throwaway embedded
PostgreSQL; its queries then run through the answer path against the loopback
OpenAI-compatible server of the tests (answers stream word by word, no artificial delay, so
"first token" is this service's own overhead: prompt, HTTP, client, parsing).

1. Stages of an answer, per query, in the default mode with a cross-encoder loaded
   (`hybrid+rerank`, the rerank settings from the environment): embed (the bundled model,
   query cache cold), SQL (the one search statement), rerank (the top `HYBRID_RERANK_DEPTH`
   fused hits), context (sections and passages), first token and whole generation. Without
   --rerank-model the cross-encoder is the tests' tiny one (the bundled MiniLM encoder with a
   fresh one-logit head), which costs what ms-marco-MiniLM-L-6-v2 costs.
2. Search through the result cache: a cold miss (query embedding computed), a miss with the
   query embedding cached, and a hit.
3. N concurrent identical searches, all released at once: with single flight (the service's
   path) against the same searches run independently; computations and latencies.

Each figure is p50/p95 over the queries of one run, then the median of that over --repeats
runs. Prints Markdown.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.answer import generate
from app.answer.providers import ChatModels
from app.db import embedded
from app.ingest import load
from app.search.cache import SearchCache, cached_search
from app.search.engine import QueryEmbeddings, Searcher, search
from app.search.request import SearchRequest
from app.search.rerank import Reranking, load_reranker
from app.service import Services
from app.settings import CacheSettings, Settings, load_settings
from tests.cross_encoder import build_tiny_cross_encoder
from tests.openai_server import OpenAIServer

COLLECTION = "bench-answer"
Sample = dict[str, float]


def main() -> None:
    args = _arguments()
    scratch = Path(tempfile.mkdtemp(prefix="hybrid-bench-"))
    url = args.database_url or embedded.start(scratch)[0]
    environ = {
        **os.environ,
        "DATABASE_URL": url,
        "HYBRID_DATA_DIR": str(scratch),
        "HYBRID_DB_POOL_SIZE": str(args.concurrency + 2),
    }
    services = Services.open(load_settings(environ))
    try:
        queries = _prepare(services, args.corpus)
        rerank_model = args.rerank_model or build_tiny_cross_encoder(scratch / "cross-encoder")
        with OpenAIServer() as server:
            _stages(services, server, queries, args.repeats, rerank_model)
        _cache(services, queries, args.repeats)
        _coalescing(services, queries, args.repeats, args.concurrency)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        services.close()
        if not args.database_url:
            embedded.stop(scratch)
            shutil.rmtree(scratch, ignore_errors=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="BEIR folder (corpus.jsonl, queries.jsonl)")
    parser.add_argument("--repeats", type=int, default=5, help="Runs; medians are over these")
    parser.add_argument("--concurrency", type=int, default=50, help="Concurrent identical searches")
    parser.add_argument("--database-url", help="Use this server instead of a throwaway one")
    parser.add_argument("--rerank-model", type=Path, help="cross-encoder directory (default: tiny)")
    return parser.parse_args()


def _prepare(services: Services, corpus: Path) -> list[str]:
    docs = load.load_path(corpus / "corpus.jsonl", max_bytes=1 << 31, max_chars=1 << 30)
    report = services.ingestor.ingest(COLLECTION, docs, create=True, total=len(docs))
    lines = (corpus / "queries.jsonl").read_text().splitlines()
    queries = [json.loads(line)["text"] for line in lines if line.strip()]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load_1m = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, {memory:.1f} GiB, {platform.machine()}, ", end="")
    print(f"load average {load_1m:.1f} at start")
    print(f"corpus: {corpus.name}, {len(docs)} documents, {report.chunks} chunks, ", end="")
    print(f"{len(queries)} queries; answers k = {services.settings.answer.k}\n")
    return queries


# --- 1. stages -------------------------------------------------------------------------------


def _stages(
    services: Services, server: OpenAIServer, queries: list[str], repeats: int, rerank_model: Path
) -> None:
    settings = _with_answer_model(services.settings, server.base_url, rerank_model)
    chat = ChatModels(settings.answer, None)
    reranking = load_reranker(settings.rerank, settings.database.data_dir / "rerank-onnx")
    if not reranking.available:
        raise SystemExit(f"no cross-encoder: {reranking.detail}")
    runs = [_stage_run(services, settings, chat, reranking, queries) for _ in range(repeats)]
    rerank = settings.rerank
    print(
        f"### Answer latency by stage (ms; {reranking.detail}, N = {rerank.depth}, "
        f"passages {rerank.passage_tokens} tokens, time budget {rerank.budget_ms:.0f} ms)\n"
    )
    _table(runs, ["embed", "sql", "rerank", "context", "first_token", "generation", "total"])
    scored = [s["scored"] for run in runs for s in run]
    complete = sum(s["scored"] >= s["depth"] for run in runs for s in run)
    print(
        f"candidates scored per answer: median {statistics.median(scored):g}; every candidate "
        f"scored (`complete`) in {complete} of {len(scored)} answers\n"
    )


def _with_answer_model(settings: Settings, base_url: str, rerank_model: Path) -> Settings:
    environ = {
        **os.environ,
        "DATABASE_URL": settings.database.url or "",
        "HYBRID_DATA_DIR": str(settings.database.data_dir),
        "HYBRID_ANSWER_MODELS": f"loopback@{base_url}",
        "HYBRID_RERANK_MODEL": str(rerank_model),
    }
    return load_settings(environ)


def _stage_run(
    services: Services,
    settings: Settings,
    chat: ChatModels,
    reranking: Reranking,
    queries: list[str],
) -> list[Sample]:
    # Cold query embeddings: every query meets the model.
    searcher = Searcher(settings.search, QueryEmbeddings(services.embedder), reranking)
    readers = generate.Readers(
        searcher=searcher,
        answer=settings.answer,
        cache=SearchCache(CacheSettings(results=0)),
        tokenizer=services.tokenizer,
    )
    samples = []
    for question in queries:
        started = time.perf_counter()
        with services.engine.begin() as conn:
            prepared = generate.prepare(conn, COLLECTION, SearchRequest(query=question), readers)
        done = generate.answer(prepared, chat).done["timings_ms"]
        total = (time.perf_counter() - started) * 1000
        report = prepared.rerank
        samples.append(
            {
                "rerank": 0.0,
                **done,
                "total": total,
                "scored": report.scored if report else 0,
                "depth": report.depth if report else 0,
            }
        )
    return samples


# --- 2. cache --------------------------------------------------------------------------------


def _cache(services: Services, queries: list[str], repeats: int) -> None:
    runs = [_cache_run(services, queries) for _ in range(repeats)]
    print("### Search through the result cache (ms; hybrid, with the change-log position read)\n")
    _table(runs, ["cold miss", "miss, embedding cached", "hit"])


def _cache_run(services: Services, queries: list[str]) -> list[Sample]:
    embeddings = QueryEmbeddings(services.embedder)
    cache = SearchCache(services.settings.cache)
    samples = []
    for question in queries:
        once = functools.partial(
            _cached, services, SearchRequest(query=question), embeddings, cache
        )
        cold = _timed(once)
        cache.clear()
        warm = _timed(once)
        hit = _timed(once)
        samples.append({"cold miss": cold, "miss, embedding cached": warm, "hit": hit})
    return samples


def _cached(
    services: Services, request: SearchRequest, embeddings: QueryEmbeddings, cache: SearchCache
) -> str:
    with services.engine.begin() as conn:
        outcome = cached_search(
            conn,
            COLLECTION,
            request,
            Searcher(settings=services.settings.search, embeddings=embeddings),
            cache=cache,
        )
    return outcome.origin


# --- 3. coalescing ---------------------------------------------------------------------------


def _coalescing(services: Services, queries: list[str], repeats: int, n: int) -> None:
    print(f"### {n} concurrent identical searches (ms; hybrid, cold query embedding)\n")
    print("| path | computations | p50 | p95 | max (= wall) |\n|---|---|---|---|---|")
    for name, run in (("single flight", _flight_run), ("independent", _independent_run)):
        results = [run(services, queries[i % len(queries)], n) for i in range(repeats)]
        computations = statistics.median(r[0] for r in results)
        p50, p95, top = (statistics.median(r[i] for r in results) for i in (1, 2, 3))
        print(f"| {name} | {computations:g} | {p50:.1f} | {p95:.1f} | {top:.1f} |")
    print()


def _flight_run(services: Services, question: str, n: int) -> tuple[float, ...]:
    embeddings = QueryEmbeddings(services.embedder)
    cache = SearchCache(services.settings.cache)
    request = SearchRequest(query=question)
    latencies = _concurrently(n, lambda: _cached(services, request, embeddings, cache))
    return (cache.flights.computations, *_summary(latencies))


def _independent_run(services: Services, question: str, n: int) -> tuple[float, ...]:
    request = SearchRequest(query=question)

    def once() -> None:
        embeddings = QueryEmbeddings(services.embedder)  # every caller embeds: nothing shared
        with services.engine.begin() as conn:
            search(
                conn,
                COLLECTION,
                request,
                Searcher(settings=services.settings.search, embeddings=embeddings),
            )

    return (n, *_summary(_concurrently(n, once)))


def _concurrently(n: int, work: Callable[[], Any]) -> list[float]:
    start = threading.Barrier(n)
    latencies: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait()
        took = _timed(work)
        with lock:
            latencies.append(took)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


# --- helpers ---------------------------------------------------------------------------------


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000


def _summary(values: list[float]) -> tuple[float, float, float]:
    return _percentile(values, 50), _percentile(values, 95), max(values)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _table(runs: list[list[Sample]], columns: list[str]) -> None:
    print("| stage | p50 | p95 |\n|---|---|---|")
    for column in columns:
        p50 = statistics.median(_percentile([s[column] for s in run], 50) for run in runs)
        p95 = statistics.median(_percentile([s[column] for s in run], 95) for run in runs)
        print(f"| {column} | {p50:.2f} | {p95:.2f} |")
    print()


if __name__ == "__main__":
    main()
