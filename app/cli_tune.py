"""`hybrid tune`: choose a collection's fusion and feedback defaults on its own judged queries.

hybrid tune -c C --qrels FOLDER [--folds 5] [--min-queries 20] [--dry-run] [--json]
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from app.eval import tune as tuning
from app.service import Services
from app.settings import Settings

console = Console()


@click.command("tune")
@click.option("-c", "--collection", required=True, help="Collection to tune.")
@click.option(
    "--qrels",
    "folder",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder with queries.jsonl and qrels.tsv (BEIR layout; `hybrid analytics "
    "export-qrels` writes one); document ids are the collection's.",
)
@click.option("--folds", default=5, show_default=True, help="Cross-validation folds.")
@click.option(
    "--min-queries",
    default=20,
    show_default=True,
    help="Fewer judged queries than this are refused (too few to tell).",
)
@click.option("--dry-run", is_flag=True, help="Report the choice without storing it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: when stderr is a terminal).",
)
def tune_command(
    collection: str,
    folder: Path,
    folds: int,
    min_queries: int,
    dry_run: bool,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Choose a collection's search defaults on its own judged queries.

    Fusion (RRF k, leg weights, score fusion, the rarity weight) and pseudo-relevance feedback
    are chosen by cross-validation, and stored as the collection's defaults only when they
    beat the current ones on held-out queries."""
    settings: Settings = click.get_current_context().find_root().obj
    services = Services.open(settings)
    try:
        report = tuning.tune(
            services, collection, folder, folds=folds, min_queries=min_queries,
            store=not dry_run, progress=sys.stderr.isatty() if progress is None else progress,
        )  # fmt: skip
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
        return
    table = Table("metric", "current", "tuned (held out)", "tuned (all queries)")
    for metric, values in report.metrics.items():
        table.add_row(metric, *(f"{v:.4f}" for v in values.values()))
    console.print(
        f"{report.collection}: {report.queries} judged queries, {report.folds} folds; "
        f"keyword leg alone {report.legs['keyword']:.4f}, vector leg alone "
        f"{report.legs['vector']:.4f} nDCG@10",
        highlight=False,
    )
    console.print(table)
    console.print(f"chosen on all queries: {report.chosen.name}", highlight=False)
    console.print(f"chosen per fold: {', '.join(report.fold_choices)}", highlight=False)
    verdict = "stored as the collection's defaults" if report.stored else "not stored"
    console.print(f"{verdict}: {report.reason}", highlight=False)
