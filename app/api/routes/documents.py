"""Documents of a collection: ingest (JSON or file upload), list, show, update, delete, purge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import unquote

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
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
    PurgeResult,
)
from app.documents import EVERYTHING, DocumentPatch, Visibility
from app.errors import Invalid, TooLarge
from app.ingest import load
from app.ingest.model import SourceDocument
from app.ingest.pipeline import Defaults, IngestReport
from app.observe.metrics import ingest_errors_counted
from app.search.filters import compile_filter
from app.search.request import PUBLIC
from app.service import Services

# A request is written in one transaction, whole or not at all: a client is never told that
# a request failed when part of it was written.
REQUEST_WRITERS = 1

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

    @post("/documents", sync_to_thread=True, opt={"scope": INGEST})
    def ingest_json(self, name: str, data: IngestRequest, services: Services) -> IngestResponse:
        """Ingest JSON documents: new ones are created, changed ones replaced, others skipped."""
        limit = services.settings.ingest.max_request_documents
        if not 1 <= len(data.documents) <= limit:
            raise Invalid(
                f"documents: expected 1 to {limit} documents, got {len(data.documents)}",
                field="documents",
            )
        with ingest_errors_counted():  # a refused request is a failed ingest too
            docs = [_from_json(i, d, services) for i, d in enumerate(data.documents)]
            defaults = Defaults(metadata=data.metadata, acl=_acl(data.acl))
        return _ingest(services, name, docs, defaults)

    @post("/files", sync_to_thread=True, opt={"scope": INGEST, "upload": True})
    def upload_files(
        self,
        name: str,
        data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)],
        services: Services,
    ) -> IngestResponse:
        """Upload files (.txt, .md, .html, .pdf, .docx, .json, .jsonl) as multipart `files`."""
        if not data.files:
            raise Invalid(
                "files: expected at least one file in the multipart field 'files'", field="files"
            )
        if data.id is not None and len(data.files) != 1:
            raise Invalid("id: only allowed when exactly one file is uploaded", field="id")
        with ingest_errors_counted():  # an unreadable file is a failed ingest too
            docs = [d for upload in data.files for d in _load_upload(upload, data.id, services)]
            limit = services.settings.ingest.max_request_documents
            if len(docs) > limit:
                raise TooLarge(
                    f"files: {len(docs)} documents in the upload, limit {limit} a request "
                    "(HYBRID_MAX_REQUEST_DOCUMENTS); split the file or use `hybrid ingest`",
                    field="files",
                )
            defaults = Defaults(metadata=_form_metadata(data.metadata), acl=_form_acl(data.acl))
        return _ingest(services, name, docs, defaults)

    @get("/documents", sync_to_thread=True, opt={"scope": SEARCH})
    def list_documents(
        self,
        name: str,
        services: Services,
        caller: Caller,
        limit: Annotated[int, Parameter(ge=1, le=documents.MAX_PAGE)] = 50,
        offset: Annotated[int, Parameter(ge=0)] = 0,
        include_deleted: bool = False,
    ) -> DocumentPage:
        """Documents, most recently updated first."""
        with services.transaction() as conn:
            collection = collections.get(conn, name)
            rows, counts = documents.list_page(
                conn,
                collection.id,
                limit=limit,
                offset=offset,
                include_deleted=include_deleted,
                visibility=visibility(caller),
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
            key = _external_id(request)
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
    ) -> DocumentOut:
        """Change metadata (merge patch), ACL, popularity, dates or source: no re-embedding."""
        update = DocumentPatch(**msgspec.structs.asdict(data))
        with services.transaction() as conn:
            collection = collections.get(conn, name)
            row = documents.update(conn, collection.id, _external_id(request), update)
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
        key = _external_id(request)

        def work(conn: Connection) -> None:
            remove(conn, collections.get(conn, name).id, key)
            audit.record(conn, audit.DOCUMENT_DELETED, caller, f"{name}/{key}", {"purge": purge})

        services.write(work)

    @delete("/documents", sync_to_thread=True, status_code=200, opt={"scope": INGEST})
    def delete_matching(
        self,
        name: str,
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
    ) -> DeleteResult:
        """Soft delete every live document the `filter` matches (within the key's own filter);
        `?dry_run=true` counts them and deletes nothing."""
        wanted = _filter_param(filter_)
        compiled = compile_filter(combined_filter(caller, wanted))
        matching = Visibility(None, compiled.check_sql, compiled.params)

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
        return DeleteResult(matched=matched, deleted=0 if dry_run else matched, dry_run=dry_run)

    @post("/purge", sync_to_thread=True, status_code=200, opt={"scope": ADMIN})
    def purge_deleted(self, name: str, services: Services, caller: Caller) -> PurgeResult:
        """Remove every soft-deleted document of the collection."""

        def work(conn: Connection) -> int:
            purged = documents.purge_deleted(conn, collections.get(conn, name).id)
            audit.record(conn, audit.PURGE, caller, name, {"purged": purged})
            return purged

        return PurgeResult(purged=services.write(work))


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


def _from_json(index: int, doc: DocumentIn, services: Services) -> SourceDocument:
    where = f"documents[{index}]"
    limit = services.settings.ingest.max_document_chars
    if len(doc.text) > limit:
        raise TooLarge(
            f"{where}.text: {len(doc.text)} characters, limit {limit}", field=f"{where}.text"
        )
    record = {k: v for k, v in msgspec.to_builtins(doc).items() if v is not None}
    try:
        return load.document_from_record(record, where=where)
    except Invalid as exc:
        raise Invalid(exc.message, field=f"{where}.{exc.field}" if exc.field else where) from exc


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


def _external_id(request: Request[Any, Any, Any]) -> str:
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
