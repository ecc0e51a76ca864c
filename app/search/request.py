"""A search request, checked once: every bad value becomes an `Invalid` naming its field.

Per-collection defaults (BM25 k1 and b, RRF k, leg weights, candidate depth, vector backend)
live in the collection's `settings`; a request may override the fusion ones and the backend.
`SearchRequest.resolve()` merges the three layers (request, collection, service settings)
into the `Plan` the engine runs.
A request that names no mode gets `hybrid+rerank` when a cross-encoder is loaded, else `hybrid`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.access.caller import MAX_PRINCIPAL_CHARS
from app.checks import float_in, int_in, one_of
from app.collections import (
    BACKEND_SETTING,
    FUSION_SETTING,
    collection_defaults,
    fusion_method,
    vector_backend,
)
from app.errors import Invalid, Unavailable
from app.search.filters import CompiledFilter, compile_filter
from app.settings import SearchSettings, VectorBackend

Mode = Literal["keyword", "vector", "hybrid", "hybrid+rerank"]
MODES: tuple[Mode, ...] = ("keyword", "vector", "hybrid", "hybrid+rerank")
RERANK_MODE: Mode = "hybrid+rerank"
RECENCY_FIELDS = ("published_at", "updated_at", "created_at")
PUBLIC = "*"


@dataclass(frozen=True)
class RecencyBoost:
    half_life_days: float
    floor: float = 0.5
    field: str = "published_at"


@dataclass(frozen=True)
class PopularityBoost:
    weight: float = 0.1
    max: float = 1.5


@dataclass(frozen=True)
class Weights:
    """The legs' weights in the fusion (None: the collection's)."""

    keyword: float | None = None
    vector: float | None = None
    # How much the keyword weight follows the rarity of the query's words.
    rarity: float | None = None


@dataclass(frozen=True)
class Prf:
    """Pseudo-relevance feedback asked for by a request (None: the collection's)."""

    documents: int | None = None
    terms: int | None = None
    keyword: float | None = None
    vector: float | None = None


@dataclass(frozen=True)
class PrfPlan:
    """Pseudo-relevance feedback as the search runs it: a first pass's `documents` best hits
    give the keyword leg `terms` more lexemes holding a `keyword` share of the query's weight
    (RM3), and move the query vector `vector` times their mean vector's way (Rocchio)."""

    documents: int
    terms: int
    keyword: float
    vector: float

    @property
    def active(self) -> bool:
        return self.documents > 0 and ((self.terms > 0 and self.keyword > 0) or self.vector > 0)


@dataclass(frozen=True)
class Expansion:
    """The keyword query after feedback: its lexemes and their weights (query term
    frequencies)."""

    lexemes: tuple[str, ...]
    qtf: tuple[float, ...]


@dataclass(frozen=True)
class Cut:
    """An adaptive depth: the hit list ends where the scores say the rest is weak. A hit is
    kept while its score is at least `relative` times the best hit's, at least `min_score`,
    and at least 1 - `gap` times the score of the hit before it; the first `min_hits` hits are
    always kept. Scores are the fused scores (with boosts), before any reranking."""

    relative: float | None = None
    gap: float | None = None
    min_score: float | None = None
    min_hits: int = 1

    def kept(self, scores: list[float]) -> int:
        """How many of `scores` (best first) the cut keeps."""
        for i, score in enumerate(scores):
            if i < self.min_hits:
                continue
            if self.relative is not None and score < self.relative * scores[0]:
                return i
            if self.min_score is not None and score < self.min_score:
                return i
            if self.gap is not None and score < (1 - self.gap) * scores[i - 1]:
                return i
        return len(scores)


@dataclass(frozen=True)
class Boosts:
    recency: RecencyBoost | None = None
    popularity: PopularityBoost | None = None


@dataclass(frozen=True)
class RerankPolicy:
    """Whether a cross-encoder is loaded, and the rerank depths the settings allow."""

    available: bool = False
    default_depth: int = 0
    max_depth: int = 0
    unavailable: str = "no cross-encoder is loaded"


NO_RERANKER = RerankPolicy()
NO_PRF = PrfPlan(0, 0, 0.0, 0.0)


@dataclass
class SearchRequest:
    """What the caller asked for, as given (API body, CLI options or evaluation)."""

    query: str = ""
    mode: str | None = None
    k: int = 10
    offset: int = 0
    filter: dict[str, Any] | None = None
    principals: list[str] | None = None
    vector: list[float] | None = None
    weights: Weights | None = None
    rrf_k: float | None = None
    fusion: str | None = None
    candidates: int | None = None
    ef_search: int | None = None
    boosts: Boosts | None = None
    per_document: bool = False
    explain: bool = False
    highlight: bool = True
    rerank_depth: int | None = None
    vector_backend: str | None = None
    prf: Prf | None = None
    cut: Cut | None = None


@dataclass
class Plan:
    """A validated request with every default filled in."""

    query: str
    mode: Mode
    k: int
    offset: int
    filter: CompiledFilter
    principals: list[str]
    restricted: bool
    vector: list[float] | None
    keyword_weight: float
    vector_weight: float
    rarity_weight: float
    rrf_k: float
    fusion: str
    candidates: int
    ef_search: int
    # `ef_search` when the request gave it: the FAISS cache otherwise keeps its own setting.
    requested_ef_search: int | None
    k1: float
    b: float
    title_weight: float
    recency: RecencyBoost | None
    popularity: PopularityBoost | None
    per_document: bool
    explain: bool
    highlight: bool
    rerank_depth: int = 0
    vector_backend: VectorBackend = "auto"
    prf: PrfPlan = field(default_factory=lambda: NO_PRF)
    # Set for the second pass of a search with feedback: the expanded keyword query.
    expansion: Expansion | None = None
    cut: Cut | None = None

    @property
    def uses_keyword(self) -> bool:
        return self.mode != "vector" and bool(self.query)

    @property
    def uses_vector(self) -> bool:
        return self.mode != "keyword"

    @property
    def fetch(self) -> tuple[int, int]:
        """(limit, offset) of the fused rows to read: the page, or enough rows to rerank
        and then cut the page from."""
        if self.rerank_depth:
            return max(self.rerank_depth, self.offset + self.k), 0
        return self.k, self.offset


def resolve(
    request: SearchRequest,
    collection_settings: dict[str, Any],
    settings: SearchSettings,
    rerank: RerankPolicy = NO_RERANKER,
) -> Plan:
    """Validate the request and fill in collection and service defaults."""
    defaults = collection_defaults(collection_settings)
    if request.vector_backend is not None:
        backend = vector_backend("vector_backend", request.vector_backend)
    else:
        backend = collection_settings.get(BACKEND_SETTING, settings.vector_backend)
    query = _query(request.query, settings.max_query_chars)
    mode = _mode(request.mode, rerank.available and bool(query))
    if mode == "keyword" and not query:
        raise Invalid("query: keyword search needs a non-empty query", field="query")
    if mode != "keyword" and not query and request.vector is None:
        raise Invalid("query: expected a non-empty query (or a vector)", field="query")
    k = int_in("k", request.k, 1, settings.max_k)
    offset = int_in("offset", request.offset, 0, settings.max_window)
    if offset + k > settings.max_window:
        raise Invalid(
            f"offset: offset + k must be at most {settings.max_window}, got {offset + k}",
            field="offset",
        )
    principals = _principals(request.principals, settings.require_principals)
    compiled = compile_filter(request.filter)
    candidates = int_in(
        "candidates",
        _pick(request.candidates, int(defaults["candidates"])),
        1,
        settings.max_candidates,
    )
    ef_search = int_in("ef_search", _pick(request.ef_search, settings.ef_search), 1, 1000)
    weights, boosts = request.weights or Weights(), request.boosts or Boosts()
    return Plan(
        query=query,
        mode=mode,
        k=k,
        offset=offset,
        filter=compiled,
        principals=principals,
        restricted=not compiled.empty or request.principals is not None,
        vector=request.vector,
        keyword_weight=_weight("weights.keyword", weights.keyword, defaults["keyword_weight"]),
        vector_weight=_weight("weights.vector", weights.vector, defaults["vector_weight"]),
        rarity_weight=float_in(
            "weights.rarity", _pick(weights.rarity, defaults["rarity_weight"]), 0.0, 10.0
        ),
        rrf_k=float_in("rrf_k", _pick(request.rrf_k, defaults["rrf_k"]), 0.0, 10_000.0),
        fusion=fusion_method(
            "fusion", _pick(request.fusion, collection_settings.get(FUSION_SETTING, "rrf"))
        ),
        candidates=max(candidates, offset + k),
        ef_search=ef_search,
        requested_ef_search=None if request.ef_search is None else ef_search,
        k1=defaults["bm25_k1"],
        b=defaults["bm25_b"],
        title_weight=defaults["bm25_title_weight"],
        recency=_recency(boosts.recency),
        popularity=_popularity(boosts.popularity),
        per_document=bool(request.per_document),
        explain=bool(request.explain),
        highlight=bool(request.highlight),
        rerank_depth=_rerank_depth(request, mode, query, rerank),
        vector_backend=backend,
        prf=_prf(request.prf or Prf(), defaults, query),
        cut=_cut(request.cut, offset, settings.max_k),
    )


def _cut(cut: Cut | None, offset: int, max_k: int) -> Cut | None:
    """A checked cut: each bound in range; only a first page can be cut (the best hit's score
    is on it)."""
    if cut is None:
        return None
    if offset:
        raise Invalid("cut: only the first page (offset 0) can be cut", field="cut")
    relative = None if cut.relative is None else float_in("cut.relative", cut.relative, 0.0, 1.0)
    gap = None if cut.gap is None else float_in("cut.gap", cut.gap, 0.0, 1.0)
    floor = None if cut.min_score is None else float_in("cut.min_score", cut.min_score, 0.0, 1e9)
    return Cut(relative, gap, floor, int_in("cut.min_hits", cut.min_hits, 1, max_k))


def _prf(asked: Prf, defaults: dict[str, float], query: str) -> PrfPlan:
    """The request's feedback over the collection's; off without a query text (a search by
    vector alone has nothing to expand)."""
    documents = int_in(
        "prf.documents", _pick(asked.documents, int(defaults["prf_documents"])), 0, 100
    )
    plan = PrfPlan(
        documents=documents,
        terms=int_in("prf.terms", _pick(asked.terms, int(defaults["prf_terms"])), 0, 100),
        keyword=float_in("prf.keyword", _pick(asked.keyword, defaults["prf_keyword"]), 0.0, 1.0),
        vector=float_in("prf.vector", _pick(asked.vector, defaults["prf_vector"]), 0.0, 10.0),
    )
    return plan if plan.active and query else NO_PRF


def _mode(mode: str | None, can_rerank: bool) -> Mode:
    if mode is None:
        return RERANK_MODE if can_rerank else "hybrid"
    checked: Mode = one_of("mode", mode, MODES)
    return checked


def _rerank_depth(request: SearchRequest, mode: Mode, query: str, rerank: RerankPolicy) -> int:
    if mode != RERANK_MODE:
        if request.rerank_depth is not None:
            raise Invalid(
                f"rerank_depth: only mode {RERANK_MODE} reranks, got mode {mode}",
                field="rerank_depth",
            )
        return 0
    if not query:
        raise Invalid(f"query: mode {RERANK_MODE} needs a query text to rerank", field="query")
    if not rerank.available:
        raise Unavailable(f"mode {RERANK_MODE}: {rerank.unavailable}", field="mode")
    depth = _pick(request.rerank_depth, rerank.default_depth)
    return int_in("rerank_depth", depth, 1, rerank.max_depth)


def _query(text: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise Invalid("query: expected a string", field="query")
    if len(text) > max_chars:
        raise Invalid(f"query: at most {max_chars} characters, got {len(text)}", field="query")
    # NUL and other control characters cannot reach PostgreSQL text; they carry no meaning.
    cleaned = "".join(ch if ch.isprintable() or ch in "\t\n" else " " for ch in text)
    return cleaned.strip()


def _principals(principals: list[str] | None, required: bool) -> list[str]:
    if principals is None:
        if required:
            raise Invalid(
                "principals: required (the users and groups the caller acts as)",
                field="principals",
            )
        return [PUBLIC]
    for i, p in enumerate(principals):
        if not isinstance(p, str) or not p.strip() or len(p) > MAX_PRINCIPAL_CHARS or "\x00" in p:
            raise Invalid(
                f"principals[{i}]: expected a non-empty name of at most 256 characters",
                field=f"principals[{i}]",
            )
    return sorted({*principals, PUBLIC})


def _recency(boost: RecencyBoost | None) -> RecencyBoost | None:
    if boost is None:
        return None
    float_in("boosts.recency.half_life_days", boost.half_life_days, 0.001, 365_000.0)
    float_in("boosts.recency.floor", boost.floor, 0.0, 1.0)
    one_of("boosts.recency.field", boost.field, RECENCY_FIELDS)
    return boost


def _popularity(boost: PopularityBoost | None) -> PopularityBoost | None:
    if boost is None:
        return None
    float_in("boosts.popularity.weight", boost.weight, 0.0, 10.0)
    float_in("boosts.popularity.max", boost.max, 1.0, 10.0)
    return boost


def _weight(name: str, value: float | None, default: float) -> float:
    return float_in(name, _pick(value, default), 0.0, 100.0)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value
