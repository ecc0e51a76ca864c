"""`hybrid analytics`: how search is used and how well it works, from the query log's views.

hybrid analytics report   [-c C] [--days N] [--json] [--out DIR]   daily volume, p95, zero rate
hybrid analytics top      [-c C] [--days N] [--json] [--limit N]   most asked queries
hybrid analytics zero     [-c C] [--days N] [--json] [--limit N]   queries that found nothing
hybrid analytics latency  [-c C] [--days N] [--json]               p50/p95/p99 per day and mode
hybrid analytics feedback [-c C] [--days N] [--json]               clicks, CTR, MRR, thumbs
hybrid analytics check    [-c C] [--days N] --max-p95-ms X --max-zero-rate Y --min-ctr Z
hybrid analytics export-qrels -c C [--since DATE | --days N] --out DIR
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from app.querylog import analytics
from app.service import Services
from app.settings import Settings

# Reports are wide: piped into a file or a mail they keep every column.
console = Console(width=None if sys.stdout.isatty() else 160)


@contextmanager
def _engine() -> Iterator[Any]:
    settings: Settings = click.get_current_context().find_root().obj
    services = Services.open(settings)
    try:
        yield services.engine
    finally:
        services.close()


def _window(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every report takes: the collection (all when absent), the days, JSON."""
    for option in reversed(
        [
            click.option("-c", "--collection", help="One collection (default: all)."),
            click.option(
                "--days", default=7, show_default=True, type=click.IntRange(1, 3650),
                help="Days back from today (UTC), today included.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON."),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


def _print(rows: list[dict[str, Any]], as_json: bool, empty: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        console.print(empty)
        return
    table = Table(show_edge=False, header_style="bold")
    for column in rows[0]:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*(_cell(value) for value in row.values()))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, str) and len(value) == 25 and value[10] == "T":
        return value[:16].replace("T", " ")  # a time: to the minute
    return str(value)


@click.group("analytics")
def analytics_group() -> None:
    """How search is used and how well it works, from the query log (see also the SQL views
    in the schema `analytics`)."""


@analytics_group.command("report")
@_window
@click.option(
    "--out", default=Path("analytics-results"), show_default=True,
    type=click.Path(file_okay=False, path_type=Path), help="Where the PNG chart goes.",
)  # fmt: skip
def report_command(collection: str | None, days: int, as_json: bool, out: Path) -> None:
    """Searches per day: volume, errors, zero-result rate, latency, cache hits; and a chart of
    daily p95 latency and zero-result rate."""
    with _engine() as engine:
        rows = analytics.rows(engine, "report", collection=collection, since=analytics.since(days))
    _print(rows, as_json, "no searches logged in this window")
    if rows and not as_json:
        name = collection or "all"
        path = analytics.chart(rows, out / f"report-{name}.png", f"{name}: last {days} days")
        console.print(f"wrote {path}")


@analytics_group.command("top")
@_window
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
def top_command(collection: str | None, days: int, as_json: bool, limit: int) -> None:
    """The queries asked most."""
    with _engine() as engine:
        rows = analytics.rows(
            engine, "top_queries", collection=collection, since=analytics.since(days), limit=limit
        )
    _print(rows, as_json, "no searches logged in this window")


@analytics_group.command("zero")
@_window
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
def zero_command(collection: str | None, days: int, as_json: bool, limit: int) -> None:
    """The queries that found nothing, most frequent first."""
    with _engine() as engine:
        rows = analytics.rows(
            engine, "zero_queries", collection=collection, since=analytics.since(days), limit=limit
        )
    _print(rows, as_json, "no zero-result queries in this window")


@analytics_group.command("latency")
@_window
def latency_command(collection: str | None, days: int, as_json: bool) -> None:
    """Latency percentiles per day and mode."""
    with _engine() as engine:
        rows = analytics.rows(engine, "latency", collection=collection, since=analytics.since(days))
    _print(rows, as_json, "no searches logged in this window")


@analytics_group.command("feedback")
@_window
def feedback_command(collection: str | None, days: int, as_json: bool) -> None:
    """Clicks (click-through rate, mean reciprocal rank of clicked hits) and answer ratings per
    day."""
    with _engine() as engine:
        rows = analytics.rows(
            engine, "feedback_daily", collection=collection, since=analytics.since(days)
        )
    _print(rows, as_json, "no searches or answers logged in this window")


@analytics_group.command("check")
@click.option("-c", "--collection", help="One collection (default: all).")
@click.option("--days", default=1, show_default=True, type=click.IntRange(1, 3650))
@click.option("--max-p95-ms", type=float, help="Highest p95 search latency allowed.")
@click.option("--max-zero-rate", type=float, help="Highest share of searches finding nothing.")
@click.option("--min-ctr", type=float, help="Lowest share of searches with a click.")
def check_command(
    collection: str | None,
    days: int,
    max_p95_ms: float | None,
    max_zero_rate: float | None,
    min_ctr: float | None,
) -> None:
    """Exit 1 with one line per breached limit (for cron); 0 when the window holds them all."""
    limits = analytics.Limits(max_p95_ms, max_zero_rate, min_ctr)
    if limits == analytics.Limits():
        raise click.UsageError("give at least one of --max-p95-ms, --max-zero-rate, --min-ctr")
    with _engine() as engine:
        breaches = analytics.check(engine, limits, collection=collection, days=days)
    for line in breaches:
        click.echo(line)
    sys.exit(1 if breaches else 0)


@analytics_group.command("export-qrels")
@click.option("-c", "--collection", required=True, help="The collection searched.")
@click.option("--since", "start", type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC).")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 3650))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="The BEIR folder to write (corpus.jsonl, queries.jsonl, qrels.tsv).",
)  # fmt: skip
def export_qrels_command(collection: str, start: Any, days: int, out: Path) -> None:
    """Write the users' judgments (helpful 2, clicked 1, not helpful 0) with the collection's
    documents as a BEIR folder: `hybrid eval DIR` then scores the engine on them."""
    first: date = start.date() if start is not None else analytics.since(days)
    with _engine() as engine:
        counts = analytics.export_qrels(engine, collection, first, out)
    console.print(
        f"wrote {out}: {counts['documents']} documents, {counts['queries']} queries, "
        f"{counts['judgments']} judgments (since {first})",
        highlight=False,
    )
