"""The analytics the CLI prints, read from the views of `sql/analytics.sql`: daily report, top
and zero-result queries, latency, feedback; the quality checks for cron; and the export of the
users' judgments as a BEIR folder that `hybrid eval` scores the engine on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sqlalchemy import Engine

from app.db.queries import query
from app.errors import NotFound


def since(days: int) -> date:
    """The first UTC day of a window of `days` days that ends today."""
    return datetime.now(UTC).date() - timedelta(days=days - 1)


def rows(engine: Engine, name: str, **params: Any) -> list[dict[str, Any]]:
    """The rows of the named statement of sql/query_log.sql, as dictionaries."""
    with engine.connect() as conn:
        found = conn.execute(query("query_log.sql", name), params).mappings().all()
    return [{key: _plain(value) for key, value in row.items()} for row in found]


@dataclass(frozen=True)
class Limits:
    """What `hybrid analytics check` holds the window to (None: not checked)."""

    max_p95_ms: float | None = None
    max_zero_rate: float | None = None
    min_ctr: float | None = None


def check(engine: Engine, limits: Limits, *, collection: str | None, days: int) -> list[str]:
    """One line per limit the window breaks; empty when it holds them all (or saw nothing)."""
    (window,) = rows(engine, "window", collection=collection, since=since(days))
    if not window["searches"]:
        return []
    breaches = []
    p95, zero, ctr = window["p95_ms"], window["zero_rate"], window["ctr"]
    scope = f"{collection or 'all collections'}, last {days} days, {window['searches']} searches"
    if limits.max_p95_ms is not None and p95 > limits.max_p95_ms:
        breaches.append(f"p95 latency {p95:.1f} ms > {limits.max_p95_ms:g} ms ({scope})")
    if limits.max_zero_rate is not None and zero > limits.max_zero_rate:
        breaches.append(f"zero-result rate {zero:.3f} > {limits.max_zero_rate:g} ({scope})")
    if limits.min_ctr is not None and ctr < limits.min_ctr:
        breaches.append(f"click-through rate {ctr:.3f} < {limits.min_ctr:g} ({scope})")
    return breaches


def chart(report: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Daily p95 latency (bars) and zero-result rate (line) of `report` as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    days = range(len(report))
    fig, latency = plt.subplots(figsize=(9, 3.8))
    latency.bar(days, [row["p95_ms"] or 0 for row in report], color="#3a6ea5", label="p95 ms")
    latency.set_xticks(days, [str(row["day"]) for row in report])
    latency.set_ylabel("p95 latency (ms)")
    zero = latency.twinx()
    zero.plot(days, [row["zero_rate"] or 0 for row in report], color="#c0392b", marker="o")
    zero.set_ylabel("zero-result rate", color="#c0392b")
    zero.set_ylim(0, max([0.1, *(float(row["zero_rate"] or 0) for row in report)]) * 1.2)
    latency.set_title(title)
    latency.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def export_qrels(engine: Engine, collection: str, start: date, out: Path) -> dict[str, int]:
    """Write `out/` as a BEIR folder: the collection's live documents (corpus.jsonl), the
    queries people judged (queries.jsonl) and their judgments (qrels.tsv: helpful 2, clicked 1,
    not helpful 0). Counts of what was written."""
    corpus = rows(engine, "collection_corpus", collection=collection)
    if not corpus:
        raise NotFound(f"collection {collection!r}: no such collection, or no documents")
    judged = rows(engine, "judged_queries", collection=collection, since=start)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w") as f:
        for doc in corpus:
            record = {"_id": doc["external_id"], "title": doc["title"], "text": doc["text"]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    ids = {row["query"]: _query_id(row["query"]) for row in judged}
    with (out / "queries.jsonl").open("w") as f:
        for text, query_id in ids.items():
            f.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    with (out / "qrels.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for row in judged:
            f.write(f"{ids[row['query']]}\t{row['document_id']}\t{row['score']}\n")
    return {"documents": len(corpus), "queries": len(ids), "judgments": len(judged)}


def _query_id(text: str) -> str:
    return "q" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(value: Any) -> Any:
    """Whole numbers as ints, others as floats, times as ISO text: what JSON and tables print."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
