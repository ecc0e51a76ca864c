"""What a search returns: its hits, and what each stage did. The engine makes them, the
rerank stage reorders them, the answer path and the API read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RerankReport:
    """What the stage did for one search."""

    model: str
    depth: int
    scored: int
    ms: float

    @property
    def complete(self) -> bool:
        return self.scored >= self.depth


@dataclass
class Hit:
    """One chunk found, with its document's fields; `explain` when the request asked for it."""

    chunk_id: int
    document_id: str
    text: str
    title: str
    source: str | None
    metadata: dict[str, Any]
    heading_path: list[str]
    score: float
    highlight: str
    explain: dict[str, Any] | None = None
    rerank_score: float | None = None
    fused_rank: int | None = None


@dataclass
class SearchResult:
    """One page of hits and what it cost."""

    collection: str
    mode: str
    hits: list[Hit]
    embed_ms: float
    sql_ms: float
    rerank: RerankReport | None = None
    # The vector cache's share of the time (its candidates), when it gave any.
    faiss_ms: float = 0.0
    # Where vector candidates came from (`faiss`, `pgvector` or `exact`; None without a vector
    # leg), and False when they came from a cache that had not applied every visible change.
    vector_backend: str | None = None
    fresh: bool = True
    # Where keyword candidates came from: `index` (the in-process keyword index) or `sql`
    # (the GIN index or the visible chunks); None without a keyword leg. And the index's time.
    keyword_backend: str | None = None
    keyword_index_ms: float = 0.0
    # With an adaptive cut: how many hits there were before it (None: no cut asked).
    uncut: int | None = None

    @property
    def reranked(self) -> bool:
        return self.rerank is not None and self.rerank.scored > 0
