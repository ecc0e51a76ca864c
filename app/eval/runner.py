"""Evaluation on a BEIR-layout folder through the product's own write and read paths.

The corpus goes through the normal ingest into a collection of its own (`eval-<folder>`), where
content hashes make a second run skip unchanged documents. Every judged query then goes through
the normal search, one hit per document (BEIR judges documents, the engine ranks chunks), and
the ranked document ids are scored against `qrels.tsv`. With answers asked for, a sample of
the judged queries is also answered and scored (`app/eval/answers.py`).
"""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from app import collections
from app.errors import Invalid
from app.eval import answers, metrics
from app.eval.answers import AnswerResult
from app.ingest import load
from app.search.engine import QueryEmbeddings, Searcher, search
from app.search.request import RERANK_MODE, SearchRequest
from app.service import Services

# A small judged set shipped with the package (`hybrid eval --sample`): the sample corpus's
# sections and questions about them (see its SOURCE.txt).
SAMPLE_SET = Path(__file__).parent / "datasets" / "samples"
CUTOFFS = {"ndcg@10": 10, "recall@100": 100, "mrr@10": 10, "hit@5": 5}


@dataclass
class ModeResult:
    mode: str
    queries: int
    ndcg_10: float
    recall_100: float
    mrr_10: float
    hit_5: float
    latency_p50_ms: float
    latency_p95_ms: float
    # Queries whose rerank stage ran out of time budget (their tail kept the fused order).
    rerank_incomplete: int = 0


@dataclass
class EvalReport:
    dataset: str
    collection: str
    documents: int
    queries: int
    k: int
    embed_p50_ms: float
    modes: list[ModeResult] = field(default_factory=list)
    vector_backend: str = "auto"
    # Present when answers were evaluated too (`hybrid eval --answers`).
    answers: AnswerResult | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class Dataset:
    name: str
    corpus: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def read_dataset(folder: Path) -> Dataset:
    """Queries that have judgments, and the judgments, of a BEIR-layout folder."""
    corpus = folder / "corpus.jsonl"
    if not corpus.is_file():
        raise Invalid(f"{corpus}: missing (expected a BEIR-layout folder)", field="folder")
    queries, qrels = read_judgments(folder)
    return Dataset(name=folder.resolve().name, corpus=corpus, queries=queries, qrels=qrels)


def read_judgments(folder: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The queries of `folder/queries.jsonl` that have judgments, and the judgments of
    `folder/qrels.tsv` (a BEIR folder's, without its corpus)."""
    for path in (folder / "queries.jsonl", folder / "qrels.tsv"):
        if not path.is_file():
            raise Invalid(f"{path}: missing (expected a BEIR-layout folder)", field="folder")
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (folder / "qrels.tsv").open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader, None)
        for row in reader:
            if len(row) >= 3:
                try:
                    qrels[row[0]][row[1]] = int(row[2])
                except ValueError:
                    raise Invalid(
                        f"{folder / 'qrels.tsv'}:{reader.line_num}: score {row[2]!r} is not an "
                        "integer",
                        field="folder",
                    ) from None
    queries = {}
    with (folder / "queries.jsonl").open() as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                record = _query_record(line, f"{folder / 'queries.jsonl'}:{number}")
                if record[0] in qrels:
                    queries[record[0]] = record[1]
    if not queries:
        raise Invalid(
            f"{folder}: no query of queries.jsonl has a judgment in qrels.tsv: nothing to "
            "evaluate (qrels.tsv: query-id, corpus-id, score, after a header line)",
            field="folder",
        )
    return queries, dict(qrels)


def _query_record(line: str, where: str) -> tuple[str, str]:
    """(id, text) of one line of queries.jsonl."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise Invalid(f"{where}: not JSON ({exc.msg})", field="folder") from None
    if (
        not isinstance(record, dict)
        or "_id" not in record
        or not isinstance(record.get("text"), str)
    ):
        raise Invalid(f"{where}: expected an object with `_id` and `text`", field="folder")
    return str(record["_id"]), record["text"]


def evaluate(
    services: Services,
    folder: Path,
    *,
    modes: Sequence[str],
    k: int = 100,
    progress: bool = True,
    vector_backend: str | None = None,
    answer_queries: int = 0,
) -> EvalReport:
    """Ingest the set, then run every query in every mode, then answer `answer_queries` of
    them. With `vector_backend` `faiss`, the collection's FAISS index is loaded or built in this
    process first; so is its keyword index (unless `HYBRID_KEYWORD_CACHE` is off), as
    `hybrid serve` keeps one."""
    dataset = read_dataset(folder)
    collection = collection_name(dataset.name)
    documents = ingest(services, dataset, collection, progress=progress)
    with services.engine.connect() as conn:
        found = collections.get(conn, collection)
    if vector_backend in ("faiss", "auto"):
        services.open_vector_cache().ensure(found.id)
    if services.settings.search.keyword_cache:  # as `hybrid serve` searches
        services.open_keyword_cache().ensure(found.id)
    # The collection's own model (it may have been re-embedded with another).
    embedder = services.ingestor.embedder_for(found)
    embeddings = QueryEmbeddings(embedder, size=len(dataset.queries) + 1)
    embed_ms = _embed_all(embeddings, dataset, progress=progress)
    report = EvalReport(
        dataset=dataset.name,
        collection=collection,
        documents=documents,
        queries=len(dataset.queries),
        k=k,
        embed_p50_ms=metrics.percentile(embed_ms, 50),
        vector_backend=vector_backend or services.settings.search.vector_backend,
    )
    for mode in modes:
        report.modes.append(
            _run_mode(services, dataset, collection, mode, k, embeddings, progress, vector_backend)
        )
    if answer_queries:
        report.answers = answers.evaluate(
            services, collection, dataset.queries, dataset.qrels,
            limit=answer_queries, progress=progress, vector_backend=vector_backend,
        )  # fmt: skip
    return report


def ingest(services: Services, dataset: Dataset, collection: str, *, progress: bool) -> int:
    """Ingest the corpus (unchanged documents are skipped); return how many it holds."""
    settings = services.settings.ingest
    docs = load.load_path(
        dataset.corpus,
        max_bytes=dataset.corpus.stat().st_size,
        max_chars=settings.max_document_chars,
        max_pdf_pages=settings.max_pdf_pages,
    )
    services.ingestor.ingest(collection, docs, create=True, total=len(docs), progress=progress)
    return len(docs)


def _embed_all(embeddings: QueryEmbeddings, dataset: Dataset, *, progress: bool) -> list[float]:
    timings = []
    for text in tqdm(dataset.queries.values(), desc="embed queries", disable=not progress):
        started = time.perf_counter()
        embeddings(text)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def _run_mode(
    services: Services,
    dataset: Dataset,
    collection: str,
    mode: str,
    k: int,
    embeddings: QueryEmbeddings,
    progress: bool,
    vector_backend: str | None,
) -> ModeResult:
    scores: dict[str, list[float]] = defaultdict(list)
    reranking = services.reranking if mode == RERANK_MODE else None
    searcher = Searcher(
        services.settings.search,
        embeddings,
        reranking,
        services.vector_cache,
        services.keyword_cache,
    )
    latencies = []
    incomplete = 0
    for query_id, text in tqdm(dataset.queries.items(), desc=mode, disable=not progress):
        request = SearchRequest(
            query=text,
            mode=mode,
            k=k,
            per_document=True,
            highlight=False,
            vector_backend=vector_backend,
        )
        started = time.perf_counter()
        with services.engine.begin() as conn:
            result = search(conn, collection, request, searcher)
        latencies.append((time.perf_counter() - started) * 1000)
        incomplete += bool(result.rerank and not result.rerank.complete)
        ranked = [hit.document_id for hit in result.hits]
        for name, value in score_query(ranked, dataset.qrels[query_id]).items():
            scores[name].append(value)
    mean = {name: sum(values) / len(values) if values else 0.0 for name, values in scores.items()}
    return ModeResult(
        mode=mode,
        queries=len(latencies),
        ndcg_10=mean.get("ndcg@10", 0.0),
        recall_100=mean.get("recall@100", 0.0),
        mrr_10=mean.get("mrr@10", 0.0),
        hit_5=mean.get("hit@5", 0.0),
        latency_p50_ms=metrics.percentile(latencies, 50),
        latency_p95_ms=metrics.percentile(latencies, 95),
        rerank_incomplete=incomplete,
    )


def score_query(ranked: Sequence[str], qrels: dict[str, int]) -> dict[str, float]:
    return {
        "ndcg@10": metrics.ndcg(ranked, qrels, 10),
        "recall@100": metrics.recall(ranked, qrels, 100),
        "mrr@10": metrics.reciprocal_rank(ranked, qrels, 10),
        "hit@5": metrics.hit(ranked, qrels, 5),
    }


def collection_name(dataset_name: str) -> str:
    """The collection a dataset is evaluated in: `eval-<folder name, cleaned>`."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in dataset_name.lower())
    return "eval-" + (cleaned.strip("-_")[:55] or "dataset")
