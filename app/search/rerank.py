"""The rerank stage: a cross-encoder rescores the top fused candidates within a time budget.

The model comes from `HYBRID_RERANK_MODEL`: a local directory, or a Hugging Face id that is
already in the local cache (nothing is ever downloaded). When neither is there, the service
still starts; `load_reranker()` returns an unavailable `Reranking` that says why and how to
provide a model, searches that name no mode keep the fused order, and `hybrid+rerank` is
refused with that explanation.

Candidates are scored in fused order, in batches. Before each batch the stage predicts, from
the measured cost per pair, how many pairs still fit in the budget; when none do it stops, the
scored prefix is ordered by the cross-encoder and the rest follow in fused order. The budget
holds as far as the estimate predicts: a batch that turns out slower than predicted (a load
spike) overruns it. A search that had time left but could score nothing halves an estimate
older than `DOUBT_AFTER_S`, so that a single slow call cannot stop reranking for good.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from app.ingest.model import chunk_context
from app.search.request import Plan, RerankPolicy
from app.search.rerank_onnx import OnnxScorer, exported_model
from app.search.results import Hit, RerankReport

if TYPE_CHECKING:
    from app.settings import RerankSettings

log = structlog.get_logger(__name__)

EXAMPLE_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"
HOW_TO_PROVIDE = (
    "set HYBRID_RERANK_MODEL to a local cross-encoder directory, or download a model once on "
    f"a machine with network access (`huggingface-cli download {EXAMPLE_MODEL}`, or "
    f"`CrossEncoder('{EXAMPLE_MODEL}').save(DIR)`) and copy the Hugging Face cache or DIR here"
)
# Weight of the latest batch in the running cost per pair.
COST_SMOOTHING = 0.5
# How old the cost estimate must be before a search that could score nothing may halve it.
DOUBT_AFTER_S = 10.0
WARM_UP_PAIRS = 4

Scores = npt.NDArray[np.float32]
Scorer = Callable[[Sequence[tuple[str, str]]], Scores]


class CrossEncoderReranker:
    """A loaded cross-encoder that scores (query, passage) pairs in batches, within a budget."""

    def __init__(self, model_id: str, scorer: Scorer, tokenizer: Any, settings: RerankSettings):
        self.model_id = model_id
        self.settings = settings
        self._score = scorer
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self.seconds_per_pair: float | None = None
        self._measured_at = float("-inf")

    def warm_up(self) -> None:
        """Score a few full-length pairs twice: the first call pays the one-time costs, the
        second gives a first (slightly high, so safe) estimate of the cost per pair."""
        long_text = " ".join(["passage"] * self.settings.passage_tokens)
        batch = [long_text] * min(self.settings.batch_size, WARM_UP_PAIRS)
        self.score("query", batch, budget_s=float("inf"))
        self.seconds_per_pair = None
        self.score("query", batch, budget_s=float("inf"))

    def score(self, query: str, passages: Sequence[str], *, budget_s: float) -> list[float]:
        """Scores of the longest prefix of `passages` that fits in the budget (fused order).
        Time spent waiting for the model while other searches use it counts too."""
        deadline = time.perf_counter() + budget_s
        if not self._acquire(deadline):
            return []
        try:
            query = self.truncate(query, self.settings.query_tokens)
            pairs = [(query, self.truncate(p, self.settings.passage_tokens)) for p in passages]
        finally:
            self._lock.release()
        scores: list[float] = []
        while len(scores) < len(pairs) and self._acquire(deadline):
            try:
                remaining = deadline - time.perf_counter()
                size = self._batch_fitting(remaining)
                if size < 1:
                    if not scores and remaining > 0:
                        self._doubt_estimate()
                    break
                scores.extend(self._score_batch(pairs[len(scores) : len(scores) + size]))
            finally:
                self._lock.release()
        return scores

    def _acquire(self, deadline: float) -> bool:
        """The model, if it comes free before the deadline."""
        remaining = deadline - time.perf_counter()
        if remaining == float("inf"):
            return self._lock.acquire()
        return self._lock.acquire(timeout=max(0.0, remaining))

    def truncate(self, text: str, max_tokens: int) -> str:
        """`text` cut after its first `max_tokens` tokens (of the model's own tokenizer).
        Not thread-safe: the tokenizer is shared with the model calls."""
        encoded = self._tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            truncation=False,
            verbose=False,
        )
        offsets = encoded["offset_mapping"]
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]

    def _batch_fitting(self, remaining_s: float) -> int:
        if remaining_s <= 0:
            return 0
        if self.seconds_per_pair is None:
            return self.settings.batch_size
        return int(min(self.settings.batch_size, remaining_s / self.seconds_per_pair))

    def _doubt_estimate(self) -> None:
        """Halve the cost estimate, at most once every `DOUBT_AFTER_S`, when a search with time
        left could score nothing: one slow call (a load spike) must not keep every later search
        from reranking, and so from measuring the cost again. Under lasting overload only the
        rare search that tries one pair again can overrun its budget."""
        now = time.perf_counter()
        if self.seconds_per_pair is not None and now - self._measured_at >= DOUBT_AFTER_S:
            self.seconds_per_pair *= 0.5
            self._measured_at = now

    def _score_batch(self, batch: Sequence[tuple[str, str]]) -> list[float]:
        # Called holding the lock. One model call at a time: the tokenizer (a Rust object that
        # each call reconfigures) is not thread-safe, and on a few cores concurrent calls only
        # slow each other down.
        started = time.perf_counter()
        scores = self._score(batch)
        per_pair = (time.perf_counter() - started) / len(batch)
        previous = self.seconds_per_pair
        self._measured_at = time.perf_counter()
        self.seconds_per_pair = (
            per_pair
            if previous is None
            else COST_SMOOTHING * per_pair + (1 - COST_SMOOTHING) * previous
        )
        return [float(s) for s in scores]


@dataclass
class Reranking:
    """The reranker of a process, or why there is none."""

    reranker: CrossEncoderReranker | None
    detail: str
    settings: RerankSettings

    @property
    def available(self) -> bool:
        return self.reranker is not None

    def log_status(self) -> None:
        """Say in the logs whether searches will be reranked, and if not, how to fix it."""
        if self.reranker is not None:
            log.info("reranker loaded", model=self.detail)
        elif self.settings.model.strip():
            log.warning("reranker unavailable", reason=self.detail, how=HOW_TO_PROVIDE)
        else:
            log.info("reranking disabled", reason=self.detail)

    @property
    def identity(self) -> dict[str, object] | None:
        """What a reranked result depends on besides the request: the model, its backend and
        the settings that shape its scores and the default depth (None: no cross-encoder)."""
        if self.reranker is None:
            return None
        scoring = self.reranker.settings
        return {
            "model": self.reranker.model_id,
            "backend": scoring.backend,
            "passage_tokens": scoring.passage_tokens,
            "query_tokens": scoring.query_tokens,
            "depth": self.settings.depth,
        }

    @property
    def policy(self) -> RerankPolicy:
        return RerankPolicy(
            available=self.available,
            default_depth=self.settings.depth,
            max_depth=self.settings.max_depth,
            unavailable=f"{self.detail}; {HOW_TO_PROVIDE}",
        )


def rerank(
    reranker: CrossEncoderReranker, plan: Plan, hits: list[Hit]
) -> tuple[list[Hit], RerankReport]:
    """The requested page of the fused hits after the cross-encoder reordered the top
    `plan.rerank_depth`. Hits are only ever reordered: none is added or dropped."""
    started = time.perf_counter()
    candidates = hits[: plan.rerank_depth]
    scores = reranker.score(
        plan.query,
        [passage(h) for h in candidates],
        budget_s=reranker.settings.budget_ms / 1000,
    )
    ordered = _reorder(hits, scores)
    report = RerankReport(
        model=reranker.model_id,
        depth=len(candidates),
        scored=len(scores),
        ms=(time.perf_counter() - started) * 1000,
    )
    return ordered[plan.offset : plan.offset + plan.k], report


def passage(hit: Hit) -> str:
    """What the cross-encoder reads of a hit: its title and headings, then its text."""
    context = chunk_context(hit.title, tuple(hit.heading_path))
    return f"{context}\n{hit.text}" if context else hit.text


def _reorder(hits: list[Hit], scores: list[float]) -> list[Hit]:
    marked = [
        _marked(hit, rank, scores[rank - 1] if rank <= len(scores) else None)
        for rank, hit in enumerate(hits, start=1)
    ]
    scored, rest = marked[: len(scores)], marked[len(scores) :]
    # Stable sort: equal scores keep their fused order.
    scored.sort(key=lambda h: -(h.rerank_score or 0.0))
    return scored + rest


def _marked(hit: Hit, fused_rank: int, score: float | None) -> Hit:
    explain = hit.explain and {**hit.explain, "fused_rank": fused_rank, "rerank_score": score}
    return replace(hit, rerank_score=score, fused_rank=fused_rank, explain=explain)


def load_reranker(settings: RerankSettings, cache_dir: Path) -> Reranking:
    """The configured cross-encoder, loaded offline; unavailable (never an exception) when it
    is not configured, not on this machine, or cannot be loaded. ONNX exports go to
    `cache_dir`. The server logs the outcome (`Reranking.log_status`); commands show it."""
    if settings.model.strip().lower() in ("", "off"):
        return Reranking(None, "disabled (HYBRID_RERANK_MODEL=off)", settings)
    path = local_model_path(settings.model)
    if path is None:
        detail = (
            f"model {settings.model!r} is neither a local directory nor in the Hugging Face "
            "cache on this machine"
        )
        return Reranking(None, detail, settings)
    try:
        reranker = load_cross_encoder(path, settings, cache_dir)
        reranker.warm_up()
    except Exception as exc:
        return Reranking(None, f"model {settings.model!r} cannot be loaded: {exc}", settings)
    return Reranking(reranker, f"{settings.model} ({settings.backend})", settings)


def local_model_path(model: str) -> Path | None:
    """A local directory, or the cached snapshot of a Hugging Face id; None if neither."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    _offline()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):  # ValueError: not a valid repository id
        return None


def load_cross_encoder(
    path: Path, settings: RerankSettings, cache_dir: Path
) -> CrossEncoderReranker:
    """The cross-encoder in `path` with the backend of `settings` (no warm-up)."""
    _offline()
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(path), device="cpu", local_files_only=True)
    max_length = settings.query_tokens + settings.passage_tokens + 3
    model.max_seq_length = max_length
    if settings.backend == "torch":
        scorer = torch_scorer(model)
    else:
        int8 = settings.backend == "onnx-int8"
        file = exported_model(model, path, cache_dir, int8=int8)
        scorer = OnnxScorer(file, model.tokenizer, max_length, settings.threads)
    return CrossEncoderReranker(str(settings.model), scorer, model.tokenizer, settings)


def torch_scorer(model: Any) -> Scorer:
    """Raw logits (no sigmoid) of a sentence-transformers CrossEncoder: a sigmoid would
    squash large scores into ties."""
    import torch

    identity = torch.nn.Identity()

    def scorer(pairs: Sequence[tuple[str, str]]) -> Scores:
        scores = model.predict(
            list(pairs),
            batch_size=len(pairs),
            activation_fn=identity,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(pairs))

    return scorer


def _offline() -> None:
    # The hub reads these at import time; a model must never be fetched from the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
