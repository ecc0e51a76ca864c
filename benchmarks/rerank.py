"""Cost of the rerank stage: pairs/s and the latency it adds, per inference path.

    PYTHONPATH=. python benchmarks/rerank.py ../shared/data/scifact [--model DIR] [--repeats 7]
        [--depths 10,20,50] [--passage-tokens 256] [--paths torch-2-16,onnx-int8-1-16,...]
        [--agreement]

Without --model it builds a cross-encoder of the same architecture as
cross-encoder/ms-marco-MiniLM-L-6-v2 (MiniLM-L6, 384 wide, BERT uncased vocabulary) from the
bundled all-MiniLM-L6-v2 encoder with a new one-logit head: its scores mean nothing, but it
costs what the real model costs. Queries and passages (title + abstract, cut to the passage
budget by the product's own code) come from the BEIR folder given.

Each inference path is a backend and a thread count, plus the batch size. Every repeat runs
every path on the same query before the next repeat, so the paths share the machine's load;
figures are medians over the repeats of the stage's own time (`CrossEncoderReranker.score`,
what a search spends on reranking). Output is Markdown.

With --agreement it times nothing: it compares each path's scores of the largest depth's
passages with the first path's (top-10 overlap, Kendall tau, mean absolute difference), one
query per repeat, to show what a faster path (int8) changes in the ranking.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from app.search.rerank import CrossEncoderReranker, load_cross_encoder
from app.settings import RerankBackend, RerankSettings
from tests.cross_encoder import build_tiny_cross_encoder


@dataclass(frozen=True)
class InferencePath:
    name: str
    backend: str
    threads: int
    batch_size: int


def main() -> None:
    args = _arguments()
    scratch = Path(tempfile.mkdtemp(prefix="hybrid-rerank-bench-"))
    try:
        model = args.model or build_tiny_cross_encoder(scratch / "model")
        queries, passages = _data(args.data, max(args.depths))
        _machine(args, model)
        base = RerankSettings(model=str(model), passage_tokens=args.passage_tokens)
        paths = [_path(spec) for spec in args.paths.split(",")]
        rerankers = {p: _reranker(model, base, p, scratch) for p in paths}
        if args.agreement:
            _agreement_table(rerankers, queries, passages, args)
            return
        _latency_table(rerankers, queries, passages, args)
        if args.budgets:
            _budget_table(paths[0], rerankers[paths[0]], queries, passages, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="BEIR folder (corpus.jsonl, queries.jsonl)")
    parser.add_argument("--model", type=Path, help="cross-encoder directory (default: tiny)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--depths", type=lambda s: [int(x) for x in s.split(",")], default="10,20,50"
    )
    parser.add_argument("--passage-tokens", type=int, default=256)
    parser.add_argument(
        "--paths",
        default="torch-1-16,torch-2-16,torch-2-8,torch-2-50,onnx-1-16,onnx-2-16,"
        "onnx-int8-1-16,onnx-int8-2-16",
        help="BACKEND-THREADS-BATCH, comma-separated; torch threads are torch.set_num_threads",
    )
    parser.add_argument(
        "--budgets",
        type=lambda s: [int(x) for x in s.split(",")],
        default="128,256",
        help="passage token budgets to compare with the first path at depth 20",
    )
    parser.add_argument(
        "--agreement",
        action="store_true",
        help="instead of timing: how far each path's ranking of the largest depth's passages "
        "agrees with the first path's (top-10 overlap, Kendall tau), one query per repeat",
    )
    return parser.parse_args()


def _path(spec: str) -> InferencePath:
    backend, threads, batch = spec.rsplit("-", 2)
    return InferencePath(spec, backend, int(threads), int(batch))


def _data(folder: Path, count: int) -> tuple[list[str], list[str]]:
    with (folder / "queries.jsonl").open() as f:
        queries = [json.loads(line)["text"] for line in f if line.strip()]
    passages = []
    with (folder / "corpus.jsonl").open() as f:
        for line in f:
            record = json.loads(line)
            passages.append(f"{record.get('title', '')}\n{record['text']}".strip())
            if len(passages) >= count * 20:
                break
    return queries, passages


def _machine(args: argparse.Namespace, model: Path) -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, {memory:.1f} GiB, {cpu}; load average {load}")
    print(f"model: {args.model or 'tiny MiniLM-L6 cross-encoder (random head)'} ({model})")
    print(f"data: {args.data.name}; passage budget {args.passage_tokens} tokens, query 64")
    print(f"repeats: {args.repeats}, medians\n")


def _reranker(
    model: Path, base: RerankSettings, path: InferencePath, scratch: Path
) -> CrossEncoderReranker:
    backend = cast(RerankBackend, path.backend)
    settings = replace(base, backend=backend, batch_size=path.batch_size, threads=path.threads)
    reranker = load_cross_encoder(model, settings, scratch / "onnx")
    reranker.warm_up()
    return reranker


def _run(
    reranker: CrossEncoderReranker, path: InferencePath, query: str, passages: list[str]
) -> float:
    if path.backend == "torch":
        import torch

        torch.set_num_threads(path.threads)
    started = time.perf_counter()
    scores = reranker.score(query, passages, budget_s=float("inf"))
    elapsed = time.perf_counter() - started
    assert len(scores) == len(passages)
    return elapsed


def _latency_table(
    rerankers: dict[InferencePath, CrossEncoderReranker],
    queries: list[str],
    passages: list[str],
    args: argparse.Namespace,
) -> None:
    times: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for depth in args.depths:
            query = queries[rep % len(queries)]
            window = passages[rep * depth : (rep + 1) * depth]
            for path, reranker in rerankers.items():
                times.setdefault((path.name, depth), []).append(_run(reranker, path, query, window))
    first = next(iter(rerankers)).name
    header = " | ".join(f"N={d}: ms (pairs/s)" for d in args.depths)
    print(f"| path (backend-threads-batch) | {header} | speed vs {first} |")
    print("|---|" + "---|" * (len(args.depths) + 1))
    for path in rerankers:
        cells, ratios = [], []
        for depth in args.depths:
            median = statistics.median(times[(path.name, depth)])
            cells.append(f"{median * 1000:.0f} ({depth / median:.1f})")
            ratios.append(statistics.median(times[(first, depth)]) / median)
        print(f"| {path.name} | {' | '.join(cells)} | {statistics.median(ratios):.2f}x |")
    print()


def _agreement_table(
    rerankers: dict[InferencePath, CrossEncoderReranker],
    queries: list[str],
    passages: list[str],
    args: argparse.Namespace,
) -> None:
    from scipy.stats import kendalltau

    depth = max(args.depths)
    rankings: dict[InferencePath, list[npt.NDArray[np.float64]]] = {p: [] for p in rerankers}
    for rep in range(args.repeats):
        window = passages[rep * depth : (rep + 1) * depth]
        for path, reranker in rerankers.items():
            query = queries[rep % len(queries)]
            rankings[path].append(np.array(reranker.score(query, window, budget_s=float("inf"))))
    reference, *others = rerankers
    spread = statistics.median(float(s.std()) for s in rankings[reference])
    print(f"Agreement with {reference.name} at N={depth} (its score std {spread:.4f}):\n")
    print("| path | top-10 overlap: median (min) | Kendall tau: median | mean abs. score diff |")
    print("|---|---|---|---|")
    for path in others:
        pairs = list(zip(rankings[reference], rankings[path], strict=True))
        overlaps = [len(_top(a) & _top(b)) / 10 for a, b in pairs]
        taus = [kendalltau(a, b).statistic for a, b in pairs]
        diffs = [float(np.abs(a - b).mean()) for a, b in pairs]
        print(
            f"| {path.name} | {statistics.median(overlaps):.2f} ({min(overlaps):.2f}) | "
            f"{statistics.median(taus):.3f} | {statistics.median(diffs):.4f} |"
        )
    print()


def _top(scores: npt.NDArray[np.float64]) -> set[int]:
    return {int(i) for i in np.argsort(-scores)[:10]}


def _budget_table(
    path: InferencePath,
    reranker: CrossEncoderReranker,
    queries: list[str],
    passages: list[str],
    args: argparse.Namespace,
) -> None:
    saved = reranker.settings
    times: dict[int, list[float]] = {}
    for rep in range(args.repeats):
        window = passages[rep * 20 : (rep + 1) * 20]
        for budget in args.budgets:
            reranker.settings = replace(saved, passage_tokens=budget)
            times.setdefault(budget, []).append(
                _run(reranker, path, queries[rep % len(queries)], window)
            )
    reranker.settings = saved
    print(f"Passage budget, {path.name}:\n")
    print("| passage budget (tokens) | N=20: ms (pairs/s) |")
    print("|---|---|")
    for budget, values in times.items():
        median = statistics.median(values)
        print(f"| {budget} | {median * 1000:.0f} ({20 / median:.1f}) |")


if __name__ == "__main__":
    main()
