"""Documents of a collection: ingest (JSON or file upload), list, show, update, delete, purge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import unquote

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, Parameter
from sqlalchemy import Connection

from app import collections, documents
from app.access import audit
from app.access.caller import (
    ADMIN,
    INGEST,
    SEARCH,
    Caller,
    combined_filter,
    effective_principals,
)
from app.api.routes.jobs import idempotency_key, submit
from app.api.schemas import (
    ChunkOut,
    DeleteResult,
    DocumentIn,
    DocumentOut,
    DocumentPage,
    DocumentPatchIn,
    DocumentStatus,
    IngestRequest,
    IngestResponse,
    JobOut,
    PurgeResult,
)
from app.documents import EVERYTHING, DocumentPatch, Visibility
from app.errors import Invalid, TooLarge
from app.ingest import load
from app.ingest.model import SourceDocument
from app.ingest.pipeline import Defaults, IngestReport
from app.jobs import records
from app.jobs.blobs import BlobStore, Staged
from app.observe.metrics import ingest_errors_counted
from app.search.filters import compile_filter
from app.search.request import PUBLIC
from app.service import Services

# A request is written in one transaction, whole or not at all: a client is never told that
# a request failed when part of it was written.
REQUEST_WRITERS = 1
# The name a JSON request's documents are kept under for their job (JSON lines, one record
# each, read back by the file loader).
JSON_BATCH_NAME = "documents.jsonl"
QUEUED = {
    202: ResponseSpec(
        data_container=JobOut,
        description="Queued as a background job (the default): the job, its URL in `Location`",
    )
}
Wait = Annotated[
    bool,
    Parameter(
        description="Write the documents during the request and answer with the outcome "
        "(at most HYBRID_INGEST_WAIT_MAX_DOCUMENTS documents) instead of queueing a job"
    ),
]

ExternalId = Annotated[
    str,
    Parameter(description="The document's external id, percent-encoded ('/' inside is fine)"),
]


@dataclass
class UploadForm:
    """Multipart form: one or more `files`, optional `metadata` (JSON object), `acl`, `id`."""

    files: list[UploadFile] = field(default_factory=list)
    metadata: str | None = None
    acl: str | None = None
    id: str | None = None


class DocumentController(Controller):
    path = "/v1/collections/{name:str}"
    tags = ["documents"]

    @post("/documents", sync_to_thread=True, opt={"scope": INGEST}, responses=QUEUED)
    def ingest_json(
        self,
        name: str,
        data: IngestRequest,
        request: Request[Any, Any, Any],
        services: Services,
        caller: Caller,
        wait: Wait = False,
    ) -> Response[IngestResponse]:
        """Ingest JSON documents: new ones are created, changed ones replaced, others skipped.
        Queued as a job (202) unless `?wait=true`; an `Idempotency-Key` header makes a
        retried request find the job its first try queued."""
        limit = services.settings.ingest.max_request_documents
        if not 1 <= len(data.documents) <= limit:
            raise Invalid(
                f"documents: expected 1 to {limit} documents, got {len(data.documents)}",
                field="documents",
            )
        with ingest_errors_counted():  # a refused request is a failed ingest too
            docs = [_from_json(i, d, services) for i, d in enumerate(data.documents)]
            defaults = Defaults(metadata=data.metadata, acl=_acl(data.acl))
        if wait:
            _check_inline(len(docs), services)
            return Response(_ingest(services, name, docs, defaults), status_code=201)
        lines = b"\n".join(
            msgspec.json.encode({k: v for k, v in msgspec.to_builtins(d).items() if v is not None})
            for d in data.documents
        )
        staged = BlobStore.of(services.settings).stage_bytes(lines, JSON_BATCH_NAME)
        unique = len({d.external_id for d in docs})
        return _queue(services, caller, request, name, defaults, [staged], unique)  # type: ignore[return-value]

    @post(
        "/files",
        sync_to_thread=True,
        opt={"scope": INGEST, "upload": True},
        responses=QUEUED,
    )
    def upload_files(
        self,
        name: str,
        data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)],
        request: Request[Any, Any, Any],
        services: Services,
        caller: Caller,
        wait: Wait = False,
    ) -> Response[IngestResponse]:
        """Upload files (.txt, .md, .html, .pdf, .docx, .json, .jsonl) as multipart `files`.
        Queued as a job (202): the files are kept (once per content) until it has run, and a
        file that cannot be read fails alone. `?wait=true` writes them during the request."""
        if not data.files:
            raise Invalid(
                "files: expected at least one file in the multipart field 'files'", field="files"
            )
        if data.id is not None and len(data.files) != 1:
            raise Invalid("id: only allowed when exactly one file is uploaded", field="id")
        with ingest_errors_counted():  # an unreadable file is a failed ingest too
            defaults = Defaults(metadata=_form_metadata(data.metadata), acl=_form_acl(data.acl))
            if not wait:
                staged = _stage_uploads(data.files, services)
                params = {} if data.id is None else {"external_id": data.id}
                return _queue(services, caller, request, name, defaults, staged, None, params)  # type: ignore[return-value]
            docs = [d for upload in data.files for d in _load_upload(upload, data.id, services)]
            _check_inline(len(docs), services)
        return Response(_ingest(services, name, docs, defaults), status_code=201)

    @get("/documents", sync_to_thread=True, opt={"scope": SEARCH})
    def list_documents(
        self,
        name: str,
        services: Services,
        caller: Caller,
        limit: Annotated[int, Parameter(ge=1, le=documents.MAX_PAGE)] = 50,
        offset: Annotated[int, Parameter(ge=0)] = 0,
        include_deleted: bool = False,
        title: Annotated[
            str | None, Parameter(max_length=500, description="Only titles containing this")
        ] = None,
    ) -> DocumentPage:
        """Documents, most recently updated first (`title`: whose title contains it)."""
        with services.transaction() as conn:
            collection = collections.get(conn, name)
            rows, counts = documents.list_page(
                conn,
                collection.id,
                limit=limit,
                offset=offset,
                include_deleted=include_deleted,
                visibility=visibility(caller),
                title=title,
            )
        return DocumentPage(
            documents=[_document_out(r) for r in rows],
            total=counts["live"],
            deleted=counts["deleted"],
            limit=limit,
            offset=offset,
        )

    @get("/documents/{external_id:path}", sync_to_thread=True, opt={"scope": SEARCH})
    def get_document(
        self,
        name: str,
        external_id: ExternalId,
        request: Request[Any, Any, Any],
        services: Services,
        caller: Caller,
        chunks: bool = False,
    ) -> DocumentOut:
        """One live document (a soft-deleted one is 404: the list shows it with
        `?include_deleted=true`); `?chunks=true` adds its chunks."""
        with services.transaction() as conn:
            collection = collections.get(conn, name)
            key = external_id_of(request)
            row = documents.get(
                conn, collection.id, key, include_deleted=False, visibility=visibility(caller)
            )
            found = documents.chunks_of(conn, collection.id, row["id"]) if chunks else None
        out = _document_out(row)
        if found is not None:
            out.chunks = [ChunkOut(**c) for c in found]
        return out

    @patch("/documents/{external_id:path}", sync_to_thread=True, opt={"scope": INGEST})
    def update_document(
        self,
        name: str,
        external_id: ExternalId,
        request: Request[Any, Any, Any],
        data: DocumentPatchIn,
        services: Services,
        caller: Caller,
    ) -> DocumentOut:
        """Change metadata (merge patch), ACL, popularity, dates or source: no re-embedding."""
        update = DocumentPatch(**msgspec.structs.asdict(data))
        key = external_id_of(request)
        with services.transaction() as conn:
            collection = collections.get(conn, name)
            check_may_change(conn, collection.id, key, caller)
            row = documents.update(conn, collection.id, key, update)
        return _document_out(row)

    @delete("/documents/{external_id:path}", sync_to_thread=True, opt={"scope": INGEST})
    def delete_document(
        self,
        name: str,
        external_id: ExternalId,
        request: Request[Any, Any, Any],
        services: Services,
        caller: Caller,
        purge: bool = False,
    ) -> None:
        """Soft delete (hidden at once, kept until purge); `?purge=true` removes it for good."""
        remove = documents.purge if purge else documents.soft_delete
        key = external_id_of(request)

        def work(conn: Connection) -> None:
            collection_id = collections.get(conn, name).id
            check_may_change(conn, collection_id, key, caller)
            remove(conn, collection_id, key)
            audit.record(conn, audit.DOCUMENT_DELETED, caller, f"{name}/{key}", {"purge": purge})

        services.write(work)

    @delete(
        "/documents",
        sync_to_thread=True,
        status_code=200,
        opt={"scope": INGEST},
        responses=QUEUED,
    )
    def delete_matching(
        self,
        name: str,
        request: Request[Any, Any, Any],
        services: Services,
        caller: Caller,
        filter_: Annotated[
            str,
            Parameter(
                query="filter",
                description="A filter (JSON, the search filter language) naming the documents",
            ),
        ],
        dry_run: bool = False,
        wait: Annotated[
            bool, Parameter(description="Delete during the request instead of queueing a job")
        ] = False,
    ) -> Response[DeleteResult]:
        """Soft delete every live document the `filter` matches (within the key's own filter),
        as a job (202) that deletes a few hundred a transaction; `?dry_run=true` counts them
        and deletes nothing, `?wait=true` deletes them during the request."""
        wanted = _filter_param(filter_)
        combined = combined_filter(caller, wanted)
        compiled = compile_filter(combined)
        matching = Visibility(None, compiled.check_sql, compiled.params)
        if not dry_run and not wait:
            with services.transaction() as conn:
                collection = collections.get(conn, name)
            return submit(  # type: ignore[return-value]
                services,
                caller,
                idempotency_key(request),
                kind=records.DELETE,
                collection_id=collection.id,
                params={"filter": combined},
            )

        def work(conn: Connection) -> int:
            collection = collections.get(conn, name)
            count = documents.delete_matching(conn, collection.id, matching, dry_run=dry_run)
            if not dry_run:
                detail = {"filter": wanted, "deleted": count}
                audit.record(conn, audit.DOCUMENTS_DELETED, caller, name, detail)
            return count

        if dry_run:
            with services.transaction() as conn:
                matched = work(conn)
        else:
            matched = services.write(work)
        return Response(
            DeleteResult(matched=matched, deleted=0 if dry_run else matched, dry_run=dry_run)
        )

    @post("/purge", sync_to_thread=True, status_code=200, opt={"scope": ADMIN})
    def purge_deleted(self, name: str, services: Services, caller: Caller) -> PurgeResult:
        """Remove every soft-deleted document of the collection."""

        def work(conn: Connection) -> int:
            purged = documents.purge_deleted(conn, collections.get(conn, name).id)
            audit.record(conn, audit.PURGE, caller, name, {"purged": purged})
            return purged

        return PurgeResult(purged=services.write(work))


def check_may_change(conn: Connection, collection_id: int, key: str, caller: Caller) -> None:
    """A key with principals or a filter changes only a document it may see: one it may not
    is a 404, as if it did not exist (its id is not confirmed either). A key with neither
    writes documents of any ACL, and changes them too."""
    if caller.principals or caller.filter:
        documents.get(conn, collection_id, key, visibility=visibility(caller))


def visibility(caller: Caller) -> Visibility:
    """What the caller's document reads see: everything for an admin without a filter;
    otherwise the documents open to its principals (or to everyone), within its filter."""
    if ADMIN in caller.scopes and not caller.filter:
        return EVERYTHING
    principals = [*(effective_principals(caller, None) or []), PUBLIC]
    if not caller.filter:
        return Visibility(principals=principals)
    compiled = compile_filter(caller.filter)
    return Visibility(principals, compiled.check_sql, compiled.params)


def _ingest(
    services: Services, name: str, docs: list[SourceDocument], defaults: Defaults
) -> IngestResponse:
    report = services.ingestor.ingest(
        name, docs, defaults=defaults, writers=REQUEST_WRITERS, batch=max(len(docs), 1)
    )
    return _response(report)


def _queue(
    services: Services,
    caller: Caller,
    request: Request[Any, Any, Any],
    name: str,
    defaults: Defaults,
    staged: list[Staged],
    documents_total: int | None,
    params: dict[str, Any] | None = None,
) -> Response[JobOut]:
    try:
        key = idempotency_key(request)
        with services.transaction() as conn:
            collection = collections.get(conn, name)
    except BaseException:
        BlobStore.of(services.settings).discard(staged)
        raise
    job_params = {**(params or {}), "metadata": defaults.metadata, "acl": defaults.acl}
    return submit(
        services,
        caller,
        key,
        kind=records.INGEST,
        collection_id=collection.id,
        params=job_params,
        files=staged,
        documents_total=documents_total,
    )


def _check_inline(count: int, services: Services) -> None:
    limit = services.settings.jobs.inline_max_documents
    if count > limit:
        raise TooLarge(
            f"wait: {count} documents, at most {limit} are written during a request "
            "(HYBRID_INGEST_WAIT_MAX_DOCUMENTS); leave out `wait` to queue them as a job",
            field="wait",
        )


def _stage_uploads(uploads: list[UploadFile], services: Services) -> list[Staged]:
    """Each upload hashed into the upload folder's staging area; a file of a type that cannot
    be read or larger than the limit refuses the request (nothing is kept)."""
    limit = services.settings.ingest.max_upload_bytes
    files = ((upload.filename or "upload", upload.file) for upload in uploads)
    return BlobStore.of(services.settings).stage_files(files, limit)


def _from_json(index: int, doc: DocumentIn, services: Services) -> SourceDocument:
    where = f"documents[{index}]"
    limit = services.settings.ingest.max_document_chars
    if len(doc.text) > limit:
        raise TooLarge(
            f"{where}.text: {len(doc.text)} characters, limit {limit}", field=f"{where}.text"
        )
    record = {k: v for k, v in msgspec.to_builtins(doc).items() if v is not None}
    try:
        loaded = load.document_from_record(record, where=where)
    except Invalid as exc:
        raise Invalid(exc.message, field=f"{where}.{exc.field}" if exc.field else where) from exc
    # Checked here as well as by the write path: a queued request is refused now, not later.
    try:
        documents.check_external_id(loaded.external_id)
    except Invalid as exc:
        raise Invalid(f"{where}.id: {exc.message}", field=f"{where}.id") from exc
    if loaded.acl is not None:
        try:
            documents.check_acl(loaded.acl)
        except Invalid as exc:
            raise Invalid(f"{where}.acl: {exc.message}", field=f"{where}.acl") from exc
    return loaded


def _load_upload(
    upload: UploadFile, external_id: str | None, services: Services
) -> list[SourceDocument]:
    limits = services.settings.ingest
    data = upload.file.read(limits.max_upload_bytes + 1)
    return load.load_bytes(
        data,
        upload.filename or "upload",
        max_bytes=limits.max_upload_bytes,
        max_chars=limits.max_document_chars,
        max_pdf_pages=limits.max_pdf_pages,
        external_id=external_id,
    )


def _filter_param(raw: str) -> dict[str, Any]:
    """The `filter` query parameter: a non-empty JSON object (deleting every document is
    deleting the collection)."""
    value = documents.parse_metadata(raw, name="filter")
    if not value:
        raise Invalid("filter: expected a non-empty JSON object", field="filter")
    return value


def _form_metadata(raw: str | None) -> dict[str, Any]:
    return documents.parse_metadata(raw) if raw else {}


def _form_acl(raw: str | None) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    return _acl([part.strip() for part in raw.split(",")])


def _acl(acl: list[str] | None) -> list[str] | None:
    return None if acl is None else documents.check_acl(acl)


def external_id_of(request: Request[Any, Any, Any]) -> str:
    """The id exactly as the client encoded it: routing decodes the path and merges slashes,
    so ids that start with '/' or hold '//' are read from the raw path (send '/' as %2F)."""
    raw = bytes(request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
    encoded = raw.partition("/documents/")[2].partition("?")[0]
    return unquote(encoded, encoding="utf-8", errors="strict")


def _document_out(row: dict[str, Any]) -> DocumentOut:
    fields = {k: row[k] for k in DocumentOut.__struct_fields__ if k in row and k != "id"}
    return DocumentOut(id=row["external_id"], **fields)


def _response(report: IngestReport) -> IngestResponse:
    statuses = [
        DocumentStatus(id=d.external_id, status=d.status, chunks=d.chunks) for d in report.documents
    ]
    return IngestResponse(**report.summary(), documents=statuses)
