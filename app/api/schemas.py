"""Request and response bodies of the API, as msgspec Structs (validated on the way in)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.collections import NAME_PATTERN

CollectionName = Annotated[
    str,
    msgspec.Meta(
        pattern=NAME_PATTERN.pattern,
        description="1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit",
    ),
]


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """Request bodies reject fields they do not know, so typos fail loudly."""


class CollectionCreate(Strict):
    name: CollectionName
    description: str = ""
    text_config: str = "english_unaccent"
    settings: dict[str, Any] = {}


class ReembedIn(Strict):
    """The model a collection moves to: `local/<model>[+bf16|+int8]` or `openai/<model>`, with its
    vectors' dimension (default: the collection's current one)."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    dimension: Annotated[int, msgspec.Meta(ge=1, le=2000)] | None = None


class CollectionOut(msgspec.Struct):
    name: str
    description: str
    embedding_model: str
    embedding_dim: int
    text_config: str
    settings: dict[str, Any]
    created_at: datetime
    # Bumped each time the collection is re-embedded; while it is, the model and dimension it
    # is moving to (searches use the current ones until the switch).
    vectors_version: int
    next_model: str | None
    next_dim: int | None
    # Live documents and chunks: for callers with the `admin` scope only (the counts of
    # documents other principals may not see are not theirs to know).
    documents: int | None
    chunks: int | None


class DocumentIn(Strict):
    text: Annotated[str, msgspec.Meta(min_length=1)]
    id: str | None = None
    title: str = ""
    source: str | None = None
    metadata: dict[str, Any] = {}
    acl: list[str] | None = None
    published_at: datetime | None = None
    popularity: float | None = None


class IngestRequest(Strict):
    documents: Annotated[list[DocumentIn], msgspec.Meta(min_length=1)]
    metadata: dict[str, Any] = {}
    acl: list[str] | None = None


class DocumentStatus(msgspec.Struct):
    id: str
    status: str
    chunks: int


class IngestResponse(msgspec.Struct):
    created: int
    updated: int
    metadata_updated: int
    unchanged: int
    chunks: int
    embedded: int
    cached: int
    seconds: float
    documents: list[DocumentStatus]


class ChunkOut(msgspec.Struct):
    id: int
    ordinal: int
    section_ordinal: int
    heading_path: list[str]
    token_count: int
    text: str


class DocumentOut(msgspec.Struct):
    id: str
    title: str
    source: str | None
    version: int
    metadata: dict[str, Any]
    acl: list[str]
    popularity: float
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    deleted_at: datetime | None
    chunks: list[ChunkOut] | None = None


class DocumentPage(msgspec.Struct):
    documents: list[DocumentOut]
    total: int
    deleted: int
    limit: int
    offset: int


class DocumentPatchIn(Strict):
    metadata: dict[str, Any] | None = None
    acl: list[str] | None = None
    popularity: float | None = None
    published_at: datetime | None = None
    source: str | None = None


class PurgeResult(msgspec.Struct):
    purged: int


class DeleteResult(msgspec.Struct):
    """What a delete by filter matched, and deleted (0 on a dry run)."""

    matched: int
    deleted: int
    dry_run: bool


class JobFailure(msgspec.Struct):
    """A document (`id`) or a file (`source`) the job could not write, and why."""

    id: str | None
    source: str | None
    error: str | None


class JobDocuments(msgspec.Struct):
    """The job's documents: `total` in its input (null until counted), `done` of them so far,
    and what became of them."""

    total: int | None
    done: int
    created: int
    updated: int
    metadata_updated: int
    unchanged: int
    deleted: int
    failed: int


class JobOut(msgspec.Struct):
    """A background job: an ingest, a delete by filter, or a re-embedding (its progress is
    in chunks: `chunks` of `chunks_total`). An ingest's progress is in documents, with
    `chunks` of `chunks_total` beside it (an estimate until it is done)."""

    id: int
    kind: Literal["ingest", "delete", "reembed"]
    collection: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    # What was asked: an ingest's defaults (`metadata`, `acl`), a delete's `filter`, a
    # re-embedding's `model` and `dimension`.
    params: dict[str, Any]
    documents: JobDocuments
    chunks: Annotated[int, msgspec.Meta(description="Chunks written so far")]
    chunks_total: Annotated[
        int | None,
        msgspec.Meta(
            description="Chunks the job writes in all: exact for a re-embedding and for a done "
            "ingest; while an ingest runs (or after it stopped), estimated from the chunks per "
            "document written so far (`chunks_total_estimated`); null before its first batch "
            "is written, and for a delete"
        ),
    ]
    chunks_total_estimated: Annotated[
        bool, msgspec.Meta(description="Whether `chunks_total` is an estimate")
    ]
    embedded: int
    attempts: int
    cancel_requested: bool
    error: str | None
    requested_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    rate: Annotated[
        float | None,
        msgspec.Meta(
            description="Documents (a re-embedding: chunks) a second in the current (or last) "
            "run; null before the run has finished one"
        ),
    ]
    eta_s: Annotated[
        float | None,
        msgspec.Meta(
            description="Seconds left at `rate`, while the job runs and its total is known"
        ),
    ]
    failures: list[JobFailure]
    url: str


class JobPage(msgspec.Struct):
    jobs: list[JobOut]
    limit: int
    offset: int


class Check(msgspec.Struct):
    ok: bool
    detail: str
    required: bool = True


class ModelCheck(msgspec.Struct):
    name: str
    breaker: str
    failures: int
    retry_in_s: float


class AnswerCheck(Check):
    extractive: bool = True
    models: list[ModelCheck] = []


class Liveness(msgspec.Struct):
    status: str
    in_flight: int
    oldest_request_s: float


class Readiness(msgspec.Struct):
    ready: bool
    checks: dict[str, Check]


class RecencyIn(Strict):
    half_life_days: float
    floor: float = 0.5
    field: str = "published_at"


class PopularityIn(Strict):
    weight: float = 0.1
    max: float = 1.5


class BoostsIn(Strict):
    recency: RecencyIn | None = None
    popularity: PopularityIn | None = None


class WeightsIn(Strict):
    keyword: float | None = None
    vector: float | None = None
    rarity: float | None = None


class PrfIn(Strict):
    documents: int | None = None
    terms: int | None = None
    keyword: float | None = None
    vector: float | None = None


class CutIn(Strict):
    relative: float | None = None
    gap: float | None = None
    min_score: float | None = None
    min_hits: int = 1


class Retrieval(Strict):
    """What searches and answers share: which chunks to retrieve, and for whom."""

    collection: str
    query: str = ""
    mode: str | None = None
    filter: dict[str, Any] | None = None
    principals: list[str] | None = None
    vector: list[float] | None = None
    weights: WeightsIn | None = None
    rrf_k: float | None = None
    fusion: str | None = None
    candidates: int | None = None
    ef_search: int | None = None
    boosts: BoostsIn | None = None
    per_document: bool = False
    rerank_depth: int | None = None
    vector_backend: str | None = None
    prf: PrfIn | None = None
    cut: CutIn | None = None


class SearchIn(Retrieval):
    k: int = 10
    offset: int = 0
    explain: bool = False
    highlight: bool = True


class LegOut(msgspec.Struct, omit_defaults=True):
    rank: int
    bm25: float | None = None
    distance: float | None = None
    similarity: float | None = None


class ExplainOut(msgspec.Struct):
    keyword: LegOut | None
    vector: LegOut | None
    fused_score: float
    recency_boost: float
    popularity_boost: float
    score: float
    fused_rank: int | None = None
    rerank_score: float | None = None


class HitOut(msgspec.Struct, omit_defaults=True):
    chunk_id: int
    document_id: str
    title: str
    source: str | None
    metadata: dict[str, Any]
    heading_path: list[str]
    text: str
    highlight: str
    score: float
    rerank_score: float | None = None
    explain: ExplainOut | None = None


class RerankOut(msgspec.Struct):
    model: str
    depth: int
    scored: int
    complete: bool


class SearchOut(msgspec.Struct):
    # The id of this search in the query log: what feedback on it names.
    search_id: str
    collection: str
    mode: str
    hits: list[HitOut]
    timings_ms: dict[str, float]
    reranked: bool = False
    rerank: RerankOut | None = None
    cache: str = "computed"
    vector_backend: str | None = None
    vector_cache_fresh: bool = True
    keyword_backend: str | None = None
    # With a cut: the hits before it (`hits` holds those it kept).
    uncut: int | None = None


class AnswerIn(Retrieval):
    k: int | None = None
    context_tokens: int | None = None
    stream: bool = False


class SourceOut(msgspec.Struct):
    number: int
    document_id: str
    chunk_ids: list[int]
    title: str
    source: str | None
    heading_path: list[str]
    text: str
    score: float
    section: bool


class AnswerOut(msgspec.Struct):
    # The id of this answer in the query log: what feedback on it names.
    search_id: str
    collection: str
    mode: str
    question: str
    answer: str
    cited: list[int]
    citations: list[SourceOut]
    sources: list[SourceOut]
    reranked: bool
    rerank: RerankOut | None
    model: str | None
    extractive: bool
    degraded: str | None
    usage: dict[str, int] | None
    timings_ms: dict[str, float]
    cache: str


FeedbackKind = Literal["click", "helpful", "not_helpful", "thumbs_up", "thumbs_down"]


class FeedbackIn(Strict):
    """A click or rating of one hit of a logged search (`chunk_id` or `document_id`), or the
    thumbs of an answer (neither)."""

    search_id: Annotated[str, msgspec.Meta(max_length=64)]
    kind: FeedbackKind
    chunk_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None
    document_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    # The rank the person saw the hit at, when it differs from where the search returned it.
    position: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    comment: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class FeedbackOut(msgspec.Struct):
    id: int
    created_at: datetime
