"""The `hybrid` command: a thin shell over the same services as the API.

Commands that need the database start the embedded server when `DATABASE_URL` is unset and
stop it again if they started it; `hybrid db start` keeps it running between commands.
"""

from __future__ import annotations

import html
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode

import click
from litestar.concurrency import set_asyncio_executor
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import OperationalError

from app import PROJECT_ROOT, collections, documents
from app.access import audit, keys, local
from app.access.caller import SCOPES
from app.access.keys import KeySpec
from app.answer import generate
from app.api.pages import SUGGESTED_QUERY
from app.cli_analytics import analytics_group
from app.cli_jobs import enqueue_files, jobs_group, reembed_command, worker_command
from app.cli_tune import tune_command
from app.collections import FUSIONS
from app.db import backup, embedded, migrate
from app.errors import ConfigError, HybridError, Invalid, Unavailable
from app.eval import answers as eval_answers
from app.eval import report as eval_report
from app.eval import runner
from app.ingest import load
from app.ingest.model import SourceDocument
from app.ingest.pipeline import Defaults, IngestReport
from app.logs import configure_logging
from app.observe.tracing import TRACING
from app.search.engine import search
from app.search.filters import compile_filter
from app.search.request import (
    MODES,
    RECENCY_FIELDS,
    RERANK_MODE,
    Boosts,
    Cut,
    PopularityBoost,
    Prf,
    RecencyBoost,
    SearchRequest,
    Weights,
)
from app.search.rerank import Reranking
from app.search.results import SearchResult
from app.service import Services
from app.settings import VECTOR_BACKENDS, Settings, load_settings

SAMPLE_DIR = PROJECT_ROOT / "samples"
SAMPLE_COLLECTION = "sample"
# Judged queries `hybrid eval --answers` answers unless told otherwise.
ANSWER_QUERIES = 50
# After the drain, how long closing the services (vector cache snapshots, connections, the
# embedded server) may take before the process ends regardless.
CLOSE_TIMEOUT_S = 60.0
console = Console()
errors = Console(stderr=True)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except HybridError as exc:
        _fail(exc.message)
    except OperationalError as exc:
        _fail(f"cannot reach the database: {str(exc.orig or exc).strip().splitlines()[0]}")


def _fail(message: str) -> None:
    # Not wrapped: a path or a "file:line:" cut at the terminal's width reads as something else.
    errors.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(1)


@click.group()
@click.version_option(package_name="hybrid-search")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Hybrid keyword + vector search on PostgreSQL."""
    ctx.obj = load_settings()
    configure_logging(ctx.obj.server)


@contextmanager
def opened(settings: Settings) -> Iterator[Services]:
    services = Services.open(settings)
    try:
        yield services
    finally:
        services.close()


pass_settings = click.make_pass_decorator(Settings)


# --- serve ------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", help="Interface to listen on (default HYBRID_HOST).")
@click.option("--port", type=int, help="Port to listen on (default HYBRID_PORT).")
@click.option("--sample/--no-sample", default=False, help="Ingest the bundled sample corpus first.")
@click.option(
    "--worker/--no-worker",
    default=None,
    help="Run a background-job worker in the server (default HYBRID_SERVE_WORKER).",
)
@pass_settings
def serve(
    settings: Settings, host: str | None, port: int | None, sample: bool, worker: bool | None
) -> None:
    """Run the HTTP API (embedded PostgreSQL and bundled model by default), and a worker for
    the background jobs unless told not to."""
    import uvicorn

    from app.api.app import create_app, is_loopback
    from app.jobs.queue import InProcessWorker

    host, port = host or settings.server.host, port or settings.server.port
    # uvicorn shuts down on SIGTERM as on Ctrl+C, then sends the signal to the process again.
    # Left to its default that kills the process on the spot; as an exit it lets the services
    # close: the vector cache writes its snapshots, and the embedded server is stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # One thread for every request admitted: an admitted request never queues for a thread.
    set_asyncio_executor(
        ThreadPoolExecutor(settings.server.in_flight_limit, thread_name_prefix="request")
    )
    loopback = is_loopback(host)
    if settings.server.auth == "off" and not loopback:
        raise ConfigError(
            f"HYBRID_AUTH=off is only allowed on a loopback address; `hybrid serve` would "
            f"listen on {host}, where anyone who reaches the port could read and delete "
            "everything"
        )
    with opened(settings) as services:
        if sample:
            _ingest_sample(services)
        secret = _local_key(services) if loopback else None
        _print_banner(host, port, sample, secret, settings.server.auth)
        TRACING.configure(settings.observability)
        jobs = InProcessWorker(services) if _serve_worker(settings, worker) else None
        if jobs is not None:
            jobs.start()
        try:
            uvicorn.run(
                create_app(services, bind_host=host),
                host=host,
                port=port,
                log_level="warning",
                # uvicorn's own lines go through ours (HYBRID_LOG_FORMAT); the access log is
                # ours too (HYBRID_ACCESS_LOG), with the request id and the search's timings.
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=max(1, round(settings.server.drain_s)),
            )
        finally:
            if jobs is not None:
                jobs.stop()  # running jobs stop at their next batch and go back to the queue
            TRACING.shutdown()  # the spans still waiting are sent


def _serve_worker(settings: Settings, asked: bool | None) -> bool:
    return settings.jobs.worker_in_serve if asked is None else asked


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    # The drain is over; closing the services and the threads still in a database wait (each
    # bounded by the statement and lock timeouts) gets a bound of its own as well.
    deadline = threading.Timer(CLOSE_TIMEOUT_S, os._exit, (128 + signum,))
    deadline.daemon = True
    deadline.start()
    raise SystemExit(128 + signum)


def _ingest_sample(services: Services) -> None:
    docs = [d for path in load.discover([SAMPLE_DIR]) for d in _load(path, services.settings)]
    report = services.ingestor.ingest(SAMPLE_COLLECTION, docs, create=True, progress=True)
    console.print(f"sample collection {SAMPLE_COLLECTION!r}: {_summary(report)}")


def _local_key(services: Services) -> str | None:
    """The local admin key's secret, when authentication is on (see `app.access.local`)."""
    if services.settings.server.auth == "off":
        return None
    return local.admin_secret(services.settings.database.data_dir, services.transaction)


def _print_banner(host: str, port: int, sample: bool, secret: str | None, auth: str) -> None:
    base = f"http://{host}:{port}"
    console.print(f"\nHybrid search is running at [bold]{base}[/bold]")
    if sample:
        query = urlencode({"collection": SAMPLE_COLLECTION, "q": SUGGESTED_QUERY})
        console.print(f"  search page: {base}/?{query}", highlight=False)
    else:
        console.print(f"  search page: {base}/", highlight=False)
    console.print(f"  API docs:    {base}/docs")
    console.print(f"  readiness:   curl {base}/ready")
    if secret is not None:
        console.print("  local admin key (kept in the data directory; paste this line first):")
        click.echo(f"    export HYBRID_KEY={secret}")
    auth_header = ' -H "Authorization: Bearer $HYBRID_KEY"' if auth == "required" else ""
    if sample:
        documents = f"{base}/v1/collections/{SAMPLE_COLLECTION}/documents"
        console.print(
            f"  documents:   curl{auth_header} '{documents}'", highlight=False, markup=False
        )
    if auth == "off":
        console.print("  [bold red]HYBRID_AUTH=off[/bold red]: every caller is an admin.")
    console.print("Press Ctrl+C to stop.\n")


# --- database ---------------------------------------------------------------------------------


@cli.command("migrate")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.option("--downgrade", is_flag=True, help="Downgrade to --revision instead.")
@pass_settings
def migrate_command(settings: Settings, revision: str, downgrade: bool) -> None:
    """Apply (or revert) schema migrations."""
    services = Services.open(settings, check_schema=False)
    try:
        if downgrade:
            migrate.downgrade(services.engine, revision)
        else:
            migrate.upgrade(services.engine, settings, revision)
        console.print(f"schema at revision {migrate.current_revision(services.engine) or 'base'}")
    finally:
        services.close()


@cli.group()
def db() -> None:
    """Manage the embedded PostgreSQL server; back up and restore the database."""


@db.command("start")
@pass_settings
def db_start(settings: Settings) -> None:
    """Start the embedded server (it keeps running until `hybrid db stop`)."""
    _require_embedded(settings)
    url, started = embedded.start(settings.database.data_dir)
    console.print(f"{'started' if started else 'already running'}: {url}")


@db.command("stop")
@pass_settings
def db_stop(settings: Settings) -> None:
    """Stop the embedded server cleanly."""
    _require_embedded(settings)
    stopped = embedded.stop(settings.database.data_dir)
    console.print("stopped" if stopped else "not running")


@db.command("status")
@pass_settings
def db_status(settings: Settings) -> None:
    """Say whether the embedded server is running, where its data is, and its URL."""
    if settings.database.url:
        console.print(f"using DATABASE_URL: {_redacted(settings.database.url)}")
        return
    state = embedded.status(settings.database.data_dir)
    console.print(f"data directory: {state.data_dir}")
    console.print(f"initialised:    {state.initialised}")
    console.print(f"running:        {state.running}" + (f" (pid {state.pid})" if state.pid else ""))
    if state.url:
        console.print(f"url:            {state.url}")


@db.command("url")
@pass_settings
def db_url(settings: Settings) -> None:
    """Print the database URL (starting the embedded server if needed)."""
    if settings.database.url:
        click.echo(settings.database.url)
        return
    url, _ = embedded.start(settings.database.data_dir)
    click.echo(url)


@db.command("psql", context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def db_psql(settings: Settings, psql_args: tuple[str, ...]) -> None:
    """Open psql on the database (extra arguments go to psql)."""
    url = settings.database.url or embedded.start(settings.database.data_dir)[0]
    psql = str(embedded.psql_path())
    os.execv(psql, [psql, url, *psql_args])


@db.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_settings
def db_backup(settings: Settings, path: Path) -> None:
    """Write the whole database to PATH (a pg_dump archive; works with `DATABASE_URL` too)."""
    with _as_found(settings) as services:
        size = backup.dump(services.engine, path)
        name = services.engine.url.database
    console.print(f"backed up database {name!r} to {escape(str(path))} ({size:,} bytes)")


@db.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a database that already holds data.")
@pass_settings
def db_restore(settings: Settings, path: Path, force: bool) -> None:
    """Restore a backup made by `hybrid db backup` into the database, in one transaction."""
    with _as_found(settings) as services:
        revision = backup.restore(services.engine, settings, path, force=force)
        name = services.engine.url.database
    console.print(
        f"restored {escape(str(path))} into database {name!r}; schema at revision {revision}"
    )


@contextmanager
def _as_found(settings: Settings) -> Iterator[Services]:
    """The services over the database, its schema left as it is (neither checked nor
    migrated)."""
    services = Services.open(settings, check_schema=False)
    try:
        yield services
    finally:
        services.close()


def _require_embedded(settings: Settings) -> None:
    if settings.database.url:
        raise Invalid("DATABASE_URL is set: the embedded server is not in use")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- collections ------------------------------------------------------------------------------


@cli.group("collections")
def collections_group() -> None:
    """List, create and delete collections."""


@collections_group.command("list")
@pass_settings
def collections_list(settings: Settings) -> None:
    """List collections with their document and chunk counts."""
    with opened(settings) as services, services.engine.connect() as conn:
        rows = collections.list_all(conn)
    table = _table("name", "documents", "chunks", "model", "dim", "text config", "created")
    for c in rows:
        table.add_row(
            c.name, str(c.documents), str(c.chunks), c.embedding_model, str(c.embedding_dim),
            c.text_config, _when(c.created_at),
        )  # fmt: skip
    console.print(table)


@collections_group.command("create")
@click.argument("name")
@click.option(
    "--text-config",
    default="english_unaccent",
    show_default=True,
    help="PostgreSQL text search configuration.",
)
@click.option("--description", default="", help="Free text shown in listings.")
@click.option("--settings", "search_defaults", help="Search defaults, e.g. '{\"bm25_k1\": 1.5}'.")
@pass_settings
def collections_create(
    settings: Settings, name: str, text_config: str, description: str, search_defaults: str | None
) -> None:
    """Create a collection bound to the configured embedding model."""
    with opened(settings) as services, services.engine.begin() as conn:
        created = collections.create(
            conn,
            name,
            embedding_model=services.embedder.model_id,
            embedding_dim=services.embedder.dimension,
            text_config=text_config,
            description=description,
            settings=documents.parse_metadata(search_defaults, name="--settings")
            if search_defaults
            else None,
        )
    console.print(
        f"created collection {created.name!r} ({created.embedding_model}, {created.text_config})"
    )


@collections_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
def collections_delete(settings: Settings, name: str, yes: bool) -> None:
    """Delete a collection and all its documents."""
    if not yes:
        click.confirm(f"Delete collection {name!r} and all its documents?", abort=True)
    with opened(settings) as services, services.engine.begin() as conn:
        collections.delete(conn, name)
    console.print(f"deleted collection {name!r}")


# --- keys -------------------------------------------------------------------------------------


@cli.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys (also while `hybrid serve` runs)."""


@keys_group.command("create")
@click.argument("name")
@click.option(
    "--principal", "principals", multiple=True, help="Principal the key acts as (repeatable)."
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="What the key may do (repeatable).",
)
@click.option(
    "--collection",
    "allowed",
    multiple=True,
    help="Collection the key may use (repeatable; default every collection).",
)
@click.option(
    "--filter", "filter_json", help="Filter (JSON, as in searches) ANDed into its every read."
)
@click.option("--rate", type=click.IntRange(min=1), help="Requests a minute (default no limit).")
@click.option(
    "--answer-rate", type=click.IntRange(min=1), help="Answers a minute (default no limit)."
)
@click.option(
    "--expires",
    "expires_days",
    type=click.FloatRange(min=0, min_open=True),
    help="Days until the key expires (default never).",
)
@click.option("--description", default="", help="Free text shown in listings.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, secret included.")
@pass_settings
def keys_create(settings: Settings, /, name: str, **options: Any) -> None:
    """Create an API key and print its secret, the only time it is shown."""
    days = options["expires_days"]
    spec = KeySpec(
        name=name,
        scopes=options["scopes"],
        principals=options["principals"],
        collections=options["allowed"] or None,
        filter=_key_filter(options["filter_json"]),
        rate_per_minute=options["rate"],
        answer_rate_per_minute=options["answer_rate"],
        expires_at=datetime.now(UTC) + timedelta(days=days) if days else None,
        description=options["description"],
    )
    with opened(settings) as services, services.transaction() as conn:
        created = keys.create(conn, spec)
    if options["as_json"]:
        click.echo(json.dumps({**created.key.as_json(), "secret": created.secret}))
        return
    key = created.key
    console.print(f"created key {key.name!r}, prefix {key.prefix}", highlight=False, markup=False)
    console.print("secret (shown only now; store it safely):", highlight=False)
    click.echo(created.secret)


def _key_filter(raw: str | None) -> dict[str, Any] | None:
    """A key's filter, checked by the search filter language it will be ANDed into."""
    if raw is None:
        return None
    spec = documents.parse_metadata(raw, name="--filter")
    compile_filter(spec, path="--filter")
    return spec


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_settings
def keys_list(settings: Settings, as_json: bool) -> None:
    """List keys: prefix, name, scopes, principals, last use and state (never secrets)."""
    with opened(settings) as services, services.engine.connect() as conn:
        found = keys.list_all(conn)
    if as_json:
        click.echo(json.dumps([key.as_json() for key in found]))
        return
    table = _table(
        "prefix", "name", "scopes", "principals", "collections", "last used", "expires", "state"
    )
    for key in found:
        allowed = "all" if key.collections is None else ", ".join(key.collections)
        table.add_row(
            key.prefix, escape(key.name), ", ".join(key.scopes), escape(", ".join(key.principals)),
            escape(allowed), _when(key.last_used_at), _when(key.expires_at), key.state(),
        )  # fmt: skip
    console.print(table)


@keys_group.command("revoke")
@click.argument("ident", metavar="NAME|PREFIX")
@pass_settings
def keys_revoke(settings: Settings, ident: str) -> None:
    """Revoke a key, by its prefix or the name of an unrevoked key."""
    with opened(settings) as services, services.transaction() as conn:
        key = keys.revoke(conn, ident)
    console.print(
        f"revoked key {key.name!r} ({key.prefix}); running servers refuse it within "
        f"HYBRID_AUTH_CACHE_TTL ({settings.server.auth_cache_ttl_s:g} s)",
        highlight=False,
        markup=False,
    )


# --- ingest -----------------------------------------------------------------------------------


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-c",
    "--collection",
    default="default",
    show_default=True,
    help="Target collection (created if missing).",
)
@click.option("--metadata", help="JSON object merged into every document's metadata.")
@click.option("--acl", multiple=True, help="Principal allowed to read the documents (repeatable).")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: when stderr is a terminal).",
)
@click.option(
    "--async",
    "queued",
    is_flag=True,
    help="Queue a background job instead (files copied to the upload folder); print its id.",
)
@pass_settings
def ingest(
    settings: Settings,
    paths: tuple[Path, ...],
    collection: str,
    metadata: str | None,
    acl: tuple[str, ...],
    progress: bool | None,
    queued: bool,
) -> None:
    """Ingest files and folders (.txt .md .html .pdf .docx .json .jsonl)."""
    files = load.discover(list(paths))
    defaults = Defaults(
        metadata=_metadata_option(metadata), acl=documents.check_acl(list(acl)) if acl else None
    )
    failures: list[str] = []
    if queued:
        collections.check_name(collection)
        with opened(settings) as services:
            job_id = enqueue_files(services, collection, files, defaults)
        console.print(f"job {job_id} queued: {len(files)} file(s) into {collection!r}")
        console.print(f"  follow it: hybrid jobs show {job_id} --follow", highlight=False)
        return
    with opened(settings) as services:
        collections.check_name(collection)
        docs = _load_all(files, settings, failures)
        report = services.ingestor.ingest(
            collection,
            docs,
            defaults=defaults,
            create=True,
            total=load.estimate_count(files),
            progress=_progress(progress),
        )
    console.print(f"{collection}: {_summary(report)}")
    for failure in failures:
        errors.print(f"skipped {failure}", highlight=False, markup=False)
    if failures:
        sys.exit(1)


def _progress(asked: bool | None) -> bool:
    """Progress bars when asked, or by default when someone watches (stderr a terminal)."""
    return sys.stderr.isatty() if asked is None else asked


def _load_all(
    files: list[Path], settings: Settings, failures: list[str]
) -> Iterator[SourceDocument]:
    for path in files:
        try:
            yield from _load(path, settings)
        except HybridError as exc:
            failures.append(exc.message)


def _load(path: Path, settings: Settings) -> list[SourceDocument]:
    limits = settings.ingest
    return load.load_path(
        path,
        max_bytes=limits.max_upload_bytes,
        max_chars=limits.max_document_chars,
        max_pdf_pages=limits.max_pdf_pages,
    )


def _metadata_option(raw: str | None) -> dict[str, Any]:
    return documents.parse_metadata(raw, name="--metadata") if raw is not None else {}


def _summary(report: IngestReport) -> str:
    s = report.summary()
    return (
        f"{s['created']} created, {s['updated']} updated, {s['metadata_updated']} metadata "
        f"updated, {s['unchanged']} unchanged; {s['chunks']} chunks ({s['embedded']} embedded, "
        f"{s['cached']} from cache) in {s['seconds']:.1f}s"
    )


# --- documents --------------------------------------------------------------------------------


@cli.group("documents")
def documents_group() -> None:
    """List, show, update, delete and purge documents."""


collection_option = click.option(
    "-c", "--collection", default="default", show_default=True, help="Collection."
)


def _with_collection(
    settings: Settings, name: str, work: Callable[[Any, int], Any], *, write: bool = False
) -> Any:
    with opened(settings) as services:
        begin = services.engine.begin if write else services.engine.connect
        with begin() as conn:
            return work(conn, collections.get(conn, name).id)


@documents_group.command("list")
@collection_option
@click.option("--limit", default=50, show_default=True, help="Documents per page.")
@click.option("--offset", default=0, show_default=True, help="Documents to skip.")
@click.option("--deleted", is_flag=True, help="Include soft-deleted documents.")
@pass_settings
def documents_list(
    settings: Settings, collection: str, limit: int, offset: int, deleted: bool
) -> None:
    """List documents, most recently updated first."""

    def work(conn: Any, cid: int) -> Any:
        return documents.list_page(conn, cid, limit=limit, offset=offset, include_deleted=deleted)

    rows, counts = _with_collection(settings, collection, work)
    table = _table("id", "title", "version", "chunks", "acl", "updated", "deleted")
    for r in rows:
        table.add_row(
            r["external_id"], r["title"][:60], str(r["version"]), str(r["chunk_count"]),
            ",".join(r["acl"]), _when(r["updated_at"]), _when(r["deleted_at"]),
        )  # fmt: skip
    console.print(table)
    console.print(f"{counts['live']} live, {counts['deleted']} deleted")


@documents_group.command("show")
@click.argument("external_id")
@collection_option
@click.option("--chunks", is_flag=True, help="Print the chunks too.")
@pass_settings
def documents_show(settings: Settings, external_id: str, collection: str, chunks: bool) -> None:
    """Show one document as JSON."""

    def work(conn: Any, cid: int) -> dict[str, Any]:
        row = documents.get(conn, cid, external_id)
        if chunks:
            row["chunks"] = documents.chunks_of(conn, cid, row["id"])
        return row

    click.echo(json.dumps(_with_collection(settings, collection, work), indent=2, default=str))


@documents_group.command("update")
@click.argument("external_id")
@collection_option
@click.option("--metadata", help="JSON merge patch for the metadata (null removes a key).")
@click.option("--acl", multiple=True, help="Replace the ACL with these principals (repeatable).")
@click.option("--popularity", type=float, help="New popularity figure.")
@click.option("--published-at", type=click.DateTime(), help="New publication time.")
@pass_settings
def documents_update(
    settings: Settings,
    external_id: str,
    collection: str,
    metadata: str | None,
    acl: tuple[str, ...],
    popularity: float | None,
    published_at: datetime | None,
) -> None:
    """Change metadata, ACL or popularity without re-embedding."""
    patch = documents.DocumentPatch(
        metadata=_metadata_option(metadata) if metadata else None,
        acl=list(acl) or None,
        popularity=popularity,
        published_at=published_at,
    )
    row = _with_collection(
        settings,
        collection,
        lambda conn, cid: documents.update(conn, cid, external_id, patch),
        write=True,
    )
    click.echo(json.dumps(row, indent=2, default=str))


@documents_group.command("delete")
@click.argument("external_id", required=False)
@collection_option
@click.option("--purge", is_flag=True, help="Remove for good instead of a soft delete.")
@click.option(
    "--filter",
    "filter_json",
    help="Soft-delete every live document this JSON filter matches, instead of one.",
)
@click.option("--dry-run", is_flag=True, help="With --filter: count, delete nothing.")
@pass_settings
def documents_delete(
    settings: Settings,
    external_id: str | None,
    collection: str,
    purge: bool,
    filter_json: str | None,
    dry_run: bool,
) -> None:
    """Soft-delete a document (or purge it with --purge), or every document a --filter
    matches."""
    if (external_id is None) == (filter_json is None):
        raise Invalid("give an EXTERNAL_ID or --filter (not both)", field="external_id")
    if external_id is not None:
        if dry_run:
            raise Invalid("--dry-run: only with --filter", field="--dry-run")
        key = external_id
        action = documents.purge if purge else documents.soft_delete
        _with_collection(settings, collection, lambda conn, cid: action(conn, cid, key), write=True)
        console.print(f"{'purged' if purge else 'deleted'} {external_id!r}")
        return
    if purge:
        raise Invalid("--purge: not with --filter (`documents purge` then)", field="--purge")
    spec = documents.parse_metadata(filter_json or "", name="--filter")
    if not spec:
        raise Invalid("--filter: expected a non-empty JSON object", field="--filter")
    compiled = compile_filter(spec, path="--filter")
    matching = documents.Visibility(None, compiled.check_sql, compiled.params)

    def work(conn: Any, collection_id: int) -> int:
        count = documents.delete_matching(conn, collection_id, matching, dry_run=dry_run)
        if not dry_run:
            detail = {"filter": spec, "deleted": count}
            audit.record(conn, audit.DOCUMENTS_DELETED, None, collection, detail)
        return count

    count = _with_collection(settings, collection, work, write=not dry_run)
    console.print(f"{count} documents {'match' if dry_run else 'deleted'}")


@documents_group.command("purge")
@collection_option
@pass_settings
def documents_purge(settings: Settings, collection: str) -> None:
    """Remove every soft-deleted document of the collection for good."""
    count = _with_collection(settings, collection, documents.purge_deleted, write=True)
    console.print(f"purged {count} documents")


# --- search and eval --------------------------------------------------------------------------


def search_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `search` and `ask` share: collection, mode, k, filter, principals, boosts,
    rerank depth."""
    options = [
        collection_option,
        click.option(
            "--mode",
            type=click.Choice(MODES),
            help=f"Legs to run (default: {RERANK_MODE} when a cross-encoder is loaded, "
            "else hybrid).",
        ),
        click.option("-k", "k", default=10, show_default=True, help="Hits to return."),
        click.option(
            "--filter", "filter_json", help='JSON filter, e.g. \'{"metadata.lang": "en"}\'.'
        ),
        click.option(
            "--principal", "principals", multiple=True, help="Caller principal (repeatable)."
        ),
        click.option("--keyword-weight", type=float, help="Fusion weight of the keyword leg."),
        click.option("--vector-weight", type=float, help="Fusion weight of the vector leg."),
        click.option(
            "--rarity-weight",
            type=float,
            help="How much the keyword leg's weight follows the rarity of the query's words "
            "(0 = not at all; default: the collection's, else 0.5).",
        ),
        click.option(
            "--fusion",
            type=click.Choice(FUSIONS),
            help="How the legs are fused (default: the collection's, else rrf).",
        ),
        click.option("--recency-half-life", type=float, help="Recency boost: half-life in days."),
        click.option("--recency-floor", type=float, default=0.5, show_default=True),
        click.option(
            "--recency-field",
            type=click.Choice(RECENCY_FIELDS),
            default="published_at",
            show_default=True,
        ),
        click.option(
            "--popularity-weight", type=float, help="Popularity boost: weight of log(1+pop)."
        ),
        click.option("--popularity-max", type=float, default=1.5, show_default=True),
        click.option(
            "--per-document", is_flag=True, help="At most one hit (the best chunk) per document."
        ),
        click.option(
            "--rerank-depth",
            type=int,
            help=f"Fused hits the cross-encoder rescores ({RERANK_MODE}).",
        ),
        click.option(
            "--vector-backend",
            type=click.Choice(VECTOR_BACKENDS),
            help="Vector leg: the FAISS cache (loaded or built in this process first), pgvector "
            "or an exact scan (default HYBRID_VECTOR_BACKEND).",
        ),
        click.option(
            "--prf",
            "prf_documents",
            type=int,
            help="Pseudo-relevance feedback from this many first-pass hits (0 = off; default: "
            "the collection's).",
        ),
        click.option(
            "--cut-relative",
            type=float,
            help="Keep only hits scoring at least this share of the best hit's fused score.",
        ),
        click.option(
            "--cut-gap",
            type=float,
            help="End the hits before the first one scoring under 1 minus this share of the one "
            "before it.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command("search")
@click.argument("query")
@search_options
@click.option("--offset", default=0, show_default=True, help="Hits to skip (pagination).")
@click.option("--explain", is_flag=True, help="Show each leg's rank and the boosts.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw result as JSON.")
@pass_settings
def search_command(settings: Settings, /, query: str, collection: str, **options: Any) -> None:
    """Search a collection and print the hits as a table."""
    as_json = options.pop("as_json")
    request = _search_request(query, options)
    with opened(settings) as services:
        _load_vector_cache(services, collection, request.vector_backend)
        searcher = services.searcher(rerank=request.mode in (None, RERANK_MODE))
        with services.engine.begin() as conn:
            result = search(conn, collection, request, searcher)
    if as_json:
        click.echo(
            json.dumps({**asdict(result), "reranked": result.reranked}, indent=2, default=str)
        )
        return
    _print_hits(result, explain=request.explain)
    _say_if_not_reranked(searcher.reranking)


def _load_vector_cache(services: Services, collection: str, backend: str | None) -> None:
    """A CLI process keeps no vector cache: asking for `faiss` loads the collection's
    snapshot (or builds the index) first."""
    if backend != "faiss":
        return
    with services.engine.connect() as conn:
        found = collections.get(conn, collection)
    services.open_vector_cache().ensure(found.id)


def _say_if_not_reranked(reranking: Reranking | None) -> None:
    if reranking and not reranking.available:
        console.print(
            f"not reranked: {reranking.detail} (see HYBRID_RERANK_MODEL)", highlight=False
        )


def _search_request(query: str, options: dict[str, Any]) -> SearchRequest:
    half_life, floor, field = (
        options.pop(k) for k in ("recency_half_life", "recency_floor", "recency_field")
    )
    weight, cap = options.pop("popularity_weight"), options.pop("popularity_max")
    filter_json, principals = options.pop("filter_json"), list(options.pop("principals"))
    weights = Weights(
        options.pop("keyword_weight"), options.pop("vector_weight"), options.pop("rarity_weight")
    )
    prf_documents = options.pop("prf_documents")
    relative, gap = options.pop("cut_relative"), options.pop("cut_gap")
    boosts = Boosts(
        recency=None if half_life is None else RecencyBoost(half_life, floor, field),
        popularity=None if weight is None else PopularityBoost(weight, cap),
    )
    return SearchRequest(
        query=query,
        filter=documents.parse_metadata(filter_json, name="--filter") if filter_json else None,
        principals=principals or None,
        weights=weights,
        boosts=boosts,
        prf=None if prf_documents is None else Prf(documents=prf_documents),
        cut=None if relative is None and gap is None else Cut(relative=relative, gap=gap),
        **options,
    )


def _print_hits(result: SearchResult, *, explain: bool) -> None:
    reranked = result.rerank is not None
    columns = ["#", "score", "document", "text"] + (
        ["keyword", "vector", "boosts"] + (["rerank"] if reranked else []) if explain else []
    )
    table = _table(*columns)
    for rank, hit in enumerate(result.hits, start=1):
        snippet = escape(html.unescape(hit.highlight)).replace("<mark>", "[bold yellow]")
        snippet = snippet.replace("</mark>", "[/bold yellow]")
        title = escape(_short(hit.title or hit.document_id))
        row = [str(rank), f"{hit.score:.4f}", title, snippet]
        if explain and hit.explain:
            row += _explain_cells(hit.explain)[: len(columns) - len(row)]
        table.add_row(*row)
    console.print(table)
    console.print(
        f"{len(result.hits)} hits from {result.collection!r} ({result.mode}); "
        f"embed {result.embed_ms:.1f} ms, SQL {result.sql_ms:.1f} ms{_rerank_summary(result)}",
        highlight=False,
    )


def _rerank_summary(result: SearchResult) -> str:
    report = result.rerank
    if report is None:
        return ""
    rest = "" if report.complete else " (time budget spent: the rest keep the fused order)"
    return (
        f"; reranked {report.scored} of {report.depth} by {report.model} "
        f"in {report.ms:.1f} ms{rest}"
    )


def _explain_cells(explain: dict[str, Any]) -> list[str]:
    keyword, vector = explain["keyword"], explain["vector"]
    rerank = explain.get("rerank_score")
    return [
        f"#{keyword['rank']} bm25 {keyword['bm25']:.2f}" if keyword else "",
        f"#{vector['rank']} cos {vector['similarity']:.3f}" if vector else "",
        f"recency {explain['recency_boost']:.2f} popularity {explain['popularity_boost']:.2f}",
        f"{rerank:.3f} (fused #{explain['fused_rank']})" if rerank is not None else "",
    ]


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@cli.command("ask")
@click.argument("question")
@search_options
@click.option("--context-tokens", type=int, help="Token budget of the context (default setting).")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON lines.")
@pass_settings
def ask_command(settings: Settings, /, question: str, collection: str, **options: Any) -> None:
    """Answer a question from a collection, citing its sources as [n] (streamed)."""
    as_json, context_tokens = options.pop("as_json"), options.pop("context_tokens")
    request = _search_request(question, options)
    may_rerank = request.mode in (None, RERANK_MODE)
    with opened(settings) as services:
        _load_vector_cache(services, collection, request.vector_backend)
        readers = services.answer_readers(rerank=may_rerank)
        with services.engine.begin() as conn:
            prepared = generate.prepare(
                conn, collection, request, readers, context_tokens=context_tokens
            )
        for event in generate.events(prepared, services.chat_models):
            if as_json:
                click.echo(json.dumps({"event": event.kind, **event.data}, default=str))
            elif event.kind == "delta":
                click.echo(event.data["text"], nl=False)
            elif event.kind == "done":
                _print_done(event.data, prepared)
                _say_if_not_reranked(readers.searcher.reranking)


def _print_done(done: dict[str, Any], prepared: generate.Prepared) -> None:
    click.echo("\n")
    for passage in prepared.passages:
        mark = "*" if passage.number in done["cited"] else " "
        console.print(
            f"{mark}[{passage.number}] {passage.label} ({passage.document_id})",
            highlight=False,
            markup=False,
        )
    timings = done["timings_ms"]
    first = f", first token {timings['first_token']:.0f} ms" if "first_token" in timings else ""
    console.print(
        f"{done['model'] or ('extractive' if done['extractive'] else 'no model')}; "
        f"cited {done['cited'] or 'nothing'}{first}, total {timings['generation']:.0f} ms",
        highlight=False,
        markup=False,
    )
    if done["degraded"]:
        errors.print(f"degraded: {done['degraded']}", highlight=False, markup=False)


@cli.command("eval")
@click.argument(
    "folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--sample", is_flag=True, help="Evaluate on the small set shipped with the package instead."
)
@click.option(
    "--modes", default="keyword,vector,hybrid", show_default=True, help="Comma-separated modes."
)
@click.option("-k", "k", default=100, show_default=True, help="Documents retrieved per query.")
@click.option(
    "--out",
    "out_dir",
    default=Path("eval-results"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the JSON report and PNG chart go.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress bars (default: when stderr is a terminal).",
)
@click.option(
    "--vector-backend",
    type=click.Choice(VECTOR_BACKENDS),
    help="Vector leg for every query (`faiss`: the index is loaded or built first; default "
    "HYBRID_VECTOR_BACKEND, for which this process keeps no cache).",
)
@click.option(
    "--answers",
    is_flag=True,
    help="Also answer judged queries with the chat model (HYBRID_ANSWER_MODELS) and score "
    "the answers: citation precision and recall, and support judged by the same model.",
)
@click.option(
    "--answer-queries",
    type=click.IntRange(min=1),
    help=f"With --answers: how many judged queries to answer, a fixed sample (default "
    f"{ANSWER_QUERIES}; each costs two chat calls).",
)
@pass_settings
def eval_command(
    settings: Settings,
    folder: Path | None,
    sample: bool,
    modes: str,
    k: int,
    out_dir: Path,
    progress: bool | None,
    vector_backend: str | None,
    answers: bool,
    answer_queries: int | None,
) -> None:
    """Evaluate search on a BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels.tsv), or
    with --sample on the set shipped with the package; with --answers, the grounded answers
    too."""
    if (folder is None) == (not sample):
        raise Invalid("give a FOLDER or --sample (not both)", field="folder")
    if answer_queries is not None and not answers:
        raise Invalid("--answer-queries: only with --answers", field="answer_queries")
    if answers and not settings.answer.models:
        raise ConfigError(eval_answers.NO_MODEL)
    folder = runner.SAMPLE_SET if folder is None else folder
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    for mode in chosen:
        if mode not in MODES:
            raise Invalid(f"--modes: unknown mode {mode!r}; expected {', '.join(MODES)}")
    with opened(settings) as services:
        if RERANK_MODE in chosen and not services.reranking.available:
            raise Unavailable(f"--modes {RERANK_MODE}: {services.reranking.policy.unavailable}")
        result = runner.evaluate(
            services, folder, modes=chosen, k=k, progress=_progress(progress),
            vector_backend=vector_backend,
            answer_queries=(answer_queries or ANSWER_QUERIES) if answers else 0,
        )  # fmt: skip
    json_path, png_path = eval_report.write(result, out_dir)
    table = _table("mode", "nDCG@10", "R@100", "MRR@10", "hit@5", "p50 ms", "p95 ms")
    for m in result.modes:
        table.add_row(
            m.mode, f"{m.ndcg_10:.4f}", f"{m.recall_100:.4f}", f"{m.mrr_10:.4f}",
            f"{m.hit_5:.4f}", f"{m.latency_p50_ms:.1f}", f"{m.latency_p95_ms:.1f}",
        )  # fmt: skip
    console.print(
        f"{result.dataset}: {result.documents} documents, {result.queries} queries, "
        f"query embedding p50 {result.embed_p50_ms:.1f} ms (excluded below)",
        highlight=False,
    )
    console.print(table)
    for m in result.modes:
        if m.rerank_incomplete:
            console.print(
                f"{m.mode}: the rerank time budget ran out on {m.rerank_incomplete} of "
                f"{m.queries} queries (raise HYBRID_RERANK_BUDGET_MS to rerank them fully)",
                highlight=False,
            )
    if result.answers:
        _print_answers(result.answers)
    console.print(f"wrote {json_path} and {png_path}", highlight=False)
    problem = result.answers.problem() if result.answers else None
    if problem:
        raise Unavailable(f"--answers: {problem}")


def _print_answers(result: eval_answers.AnswerResult) -> None:
    """Each answer metric's mean, how many answers it is over, and the answers left out."""
    console.print(
        f"answers: {result.queries} queries ({', '.join(result.modes)}), "
        f"{result.answered} answered by {', '.join(result.models) or 'no model'}, "
        f"{result.failed} failed",
        highlight=False,
    )
    table = _table("answer metric", "mean", "answers", "left out")
    rows = [
        ("citation precision", result.citation_precision, result.answered - result.no_citation,
         f"{result.no_citation} cite nothing"),
        ("citation recall", result.citation_recall,
         result.answered - result.no_relevant_context,
         f"{result.no_relevant_context} without a relevant passage in the context"),
        ("support", result.support, result.judged,
         f"{result.judge_unparseable} judge replies unusable, {result.judge_failed} judge "
         f"calls failed, {result.no_citation} nothing to judge"),
    ]  # fmt: skip
    for name, mean, count, left_out in rows:
        table.add_row(name, "-" if mean is None else f"{mean:.4f}", str(count), left_out)
    console.print(table)
    if result.failure:
        errors.print(f"first failure: {result.failure}", highlight=False, markup=False)


# --- vector cache -----------------------------------------------------------------------------


@cli.group("index")
def index_group() -> None:
    """The FAISS vector cache's snapshots: status and rebuilds. A running server keeps its own
    cache in memory (see `GET /v1/admin/index`); these commands work on the snapshots it
    loads at start-up."""


@index_group.command("status")
@pass_settings
def index_status(settings: Settings) -> None:
    """Each collection's snapshot: index type, vectors, and how far the log has moved on."""
    with opened(settings) as services:
        cache = services.open_vector_cache()
        rows = cache.snapshot_status()
    table = _table("collection", "snapshot", "vectors", "tombstones", "saved", "behind")
    for row in rows:
        table.add_row(
            row["collection"], row["kind"] or "none", str(row["vectors"]),
            str(row["tombstones"]), row["saved"], f"{row['lag_changes']} changes",
        )  # fmt: skip
    console.print(table)


@index_group.command("rebuild")
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every collection.")
@pass_settings
def index_rebuild(settings: Settings, names: tuple[str, ...], every: bool) -> None:
    """Build collections' indexes from the table and write fresh snapshots."""
    if not names and not every:
        raise Invalid("give collection names or --all")
    with opened(settings) as services:
        with services.engine.connect() as conn:
            found = (
                collections.list_all(conn) if every else [collections.get(conn, n) for n in names]
            )
        cache = services.open_vector_cache()
        for collection in found:
            entry = cache.rebuild(collection.id, wait=True, progress=True)
            index = entry.current[0] if entry.current else None
            console.print(
                f"{collection.name}: {index.kind if index else 'no'} index of "
                f"{index.live if index else 0} vectors in {entry.built_in_s:.1f} s",
                highlight=False,
            )


# --- helpers ----------------------------------------------------------------------------------


def _table(*columns: str) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


cli.add_command(analytics_group)
cli.add_command(jobs_group)
cli.add_command(worker_command)
cli.add_command(reembed_command)
cli.add_command(tune_command)
