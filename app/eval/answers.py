"""Answers to judged queries through the normal answer path, scored: their citations against
the judgments, and the support of their cited claims as a chat model judges it.

Each query is answered as `POST /v1/answer` answers it (the same search, context, prompt and
citation parsing), with the configured chat models. Citation precision is the share of the
cited passages whose document is judged relevant; citation recall the share of the relevant
documents in the context that the answer cites. An answer that cites nothing has no precision,
and one whose context holds no relevant document no recall: each is left out of that mean and
counted. An answer the models could not give (every model failed, or one failed mid-answer) is
counted as failed and scored on nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from app.answer import generate
from app.answer.providers import ChatModels
from app.errors import ConfigError, UpstreamError
from app.eval import judge, metrics
from app.search.request import SearchRequest
from app.service import Services

NO_MODEL = (
    "--answers: no chat model is configured to answer and to judge; set HYBRID_ANSWER_MODELS "
    "(`model` or `model@base_url`, comma-separated)"
)
# How much of an unusable judge reply the report keeps.
REPLY_CHARS = 500


@dataclass
class AnswerScore:
    """One query's answer: the documents of its context and of its citations, in order, and
    its scores (None: not defined for this answer, see the module's docstring)."""

    query_id: str
    mode: str
    answer: str
    context: list[str]
    cited: list[str]
    model: str | None = None
    failure: str | None = None
    citation_precision: float | None = None
    citation_recall: float | None = None
    # The judge's verdict (`judged`, `unparseable`, `failed`), None with no cited claim.
    judge: str | None = None
    judge_detail: str | None = None
    claims: int = 0
    supported: int | None = None
    support: float | None = None
    unsupported: list[str] = field(default_factory=list)


@dataclass
class AnswerResult:
    """The answers of one run: means over the answers each metric is defined for, and the
    counts of the answers left out."""

    queries: int
    answered: int
    failed: int
    citation_precision: float | None
    citation_recall: float | None
    support: float | None
    no_citation: int
    no_relevant_context: int
    judged: int
    judge_unparseable: int
    judge_failed: int
    claims: int
    supported_claims: int
    modes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    failure: str | None = None
    per_query: list[AnswerScore] = field(default_factory=list)

    @classmethod
    def of(cls, scores: list[AnswerScore]) -> AnswerResult:
        given = [s for s in scores if s.failure is None]
        judged = [s for s in given if s.judge == judge.JUDGED]
        failures = [s.failure for s in scores if s.failure] + [
            f"judge: {s.judge_detail}" for s in given if s.judge == judge.FAILED
        ]
        return cls(
            queries=len(scores),
            answered=len(given),
            failed=len(scores) - len(given),
            citation_precision=_mean([s.citation_precision for s in given]),
            citation_recall=_mean([s.citation_recall for s in given]),
            support=_mean([s.support for s in judged]),
            no_citation=sum(s.citation_precision is None for s in given),
            no_relevant_context=sum(s.citation_recall is None for s in given),
            judged=len(judged),
            judge_unparseable=sum(s.judge == judge.UNPARSEABLE for s in given),
            judge_failed=sum(s.judge == judge.FAILED for s in given),
            claims=sum(s.claims for s in judged),
            supported_claims=sum(s.supported or 0 for s in judged),
            modes=sorted({s.mode for s in scores}),
            models=sorted({s.model for s in given if s.model}),
            failure=failures[0] if failures else None,
            per_query=scores,
        )

    def problem(self) -> str | None:
        """Why the run measured nothing: every answer failed, or every judging call did."""
        if self.queries and not self.answered:
            return f"every answer failed ({self.failed} of {self.queries}): {self.failure}"
        if self.judge_failed and not self.judged and not self.judge_unparseable:
            return f"every judging call failed ({self.judge_failed}): {self.failure}"
        return None


def sample(queries: dict[str, str], limit: int) -> list[str]:
    """The `limit` query ids whose SHA-256 is lowest, in the order of the file: the same
    queries on every run, spread over the file."""
    chosen = set(sorted(queries, key=lambda q: hashlib.sha256(q.encode()).hexdigest())[:limit])
    return [query_id for query_id in queries if query_id in chosen]


def evaluate(
    services: Services,
    collection: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    limit: int,
    progress: bool,
    vector_backend: str | None = None,
) -> AnswerResult:
    """Answer and score a sample of `limit` queries (each costs two chat calls)."""
    chat = services.chat_models
    if chat is None:
        raise ConfigError(NO_MODEL)
    readers = services.answer_readers()
    scores = []
    for query_id in tqdm(sample(queries, limit), desc="answers", disable=not progress):
        request = SearchRequest(
            query=queries[query_id], k=services.settings.answer.k, vector_backend=vector_backend
        )
        with services.engine.begin() as conn:
            prepared = generate.prepare(conn, collection, request, readers)
        scores.append(score(query_id, prepared, chat, qrels[query_id]))
    return AnswerResult.of(scores)


def score(
    query_id: str, prepared: generate.Prepared, chat: ChatModels, qrels: dict[str, int]
) -> AnswerScore:
    """Answer one prepared question, then score its citations and have its claims judged."""
    context = [p.document_id for p in prepared.passages]
    result = AnswerScore(query_id, prepared.mode, "", context, [])
    try:
        answer = generate.answer(prepared, chat)
    except UpstreamError as exc:
        result.failure = exc.message
        return result
    result.answer = answer.text
    if answer.done["degraded"]:
        result.failure = answer.done["degraded"]
        return result
    documents = {p.number: p.document_id for p in prepared.passages}
    result.cited = [documents[number] for number in answer.done["cited"]]
    result.model = answer.done["model"]
    result.citation_precision = metrics.citation_precision(result.cited, qrels)
    result.citation_recall = metrics.citation_recall(result.cited, context, qrels)
    _judge(result, chat, prepared)
    return result


def _judge(result: AnswerScore, chat: ChatModels, prepared: generate.Prepared) -> None:
    found = judge.claims(result.answer, len(prepared.passages))
    if not found:
        return
    verdict = judge.judge(chat, found, prepared.passages)
    result.judge, result.claims = verdict.status, len(found)
    if verdict.supported is None:
        result.judge_detail = (verdict.detail or "")[:REPLY_CHARS]
        return
    result.supported = sum(verdict.supported)
    result.support = result.supported / len(found)
    result.unsupported = [c.text for c, ok in zip(found, verdict.supported, strict=True) if not ok]


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None
