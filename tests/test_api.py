"""The HTTP API end to end: real requests through Litestar's test client, a real PostgreSQL and
the real embedding model. Covers health and readiness, collections, JSON and file ingest,
document listing, patching, deletion and purge, and, for every kind of bad input, a 4xx RFC 9457
problem body that names the field and leaks nothing internal."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docx
import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import text

from app.api.app import create_app, describe_routes
from app.service import Services
from tests.conftest import make_settings, serving

Client = TestClient[Litestar]

LEAKS = ("SELECT", "INSERT", "Traceback", "psycopg", "sqlalchemy")
COLLECTION = "/v1/collections/kb"
DOCUMENTS = f"{COLLECTION}/documents"
FILES = f"{COLLECTION}/files"
# Written during the request (ingest is otherwise a background job: tests/test_jobs.py).
WAIT = {"wait": "true"}


@pytest.fixture
def kb(client: Client) -> Client:
    """The client over a database holding one empty collection, `kb`."""
    assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
    return client


@contextmanager
def limited_client(database_url: str, data_dir: Path, **limits: str) -> Iterator[Client]:
    """A client over services of its own with `limits` as settings; the model is not loaded."""
    services = Services.open(make_settings(database_url, data_dir, **limits))
    try:
        with TestClient(app=create_app(services, load_model=False)) as client:
            yield client
    finally:
        services.close()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The RFC 9457 body of an error response, after checking its shape and that it leaks
    nothing internal."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"status", "title", "detail"} <= body.keys()
    assert body["status"] == status
    for leak in LEAKS:
        assert leak not in response.text
    return body


def ingest(client: Client, *docs: dict[str, Any], **request: Any) -> httpx.Response:
    return client.post(DOCUMENTS, params=WAIT, json={"documents": list(docs), **request})


def statuses(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 201, response.text
    return {d["id"]: d["status"] for d in response.json()["documents"]}


def upload(client: Client, *files: tuple[str, bytes], **form: str) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post(FILES, params=WAIT, files=parts, data=form)


def document(client: Client, external_id: str, **params: str) -> dict[str, Any]:
    response = client.get(f"{DOCUMENTS}/{external_id}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def count_documents(services: Services) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM documents")).scalar_one())


def docx_bytes() -> bytes:
    word = docx.Document()
    word.add_heading("Field guide", level=1)
    word.add_paragraph("Birds migrate south in autumn.")
    word.add_heading("Owls", level=2)
    word.add_paragraph("Owls hunt at night.")
    buffer = io.BytesIO()
    word.save(buffer)
    return buffer.getvalue()


# -- health, readiness, OpenAPI ----------------------------------------------------------------


def test_health_answers_ok(client: Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_ready_reports_database_schema_and_model(client: Client) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {
        "database",
        "schema",
        "model",
        "reranker",
        "answer",
        "vector_cache",
    }
    assert body["checks"]["vector_cache"]["required"] is False
    assert all(check["ok"] for check in body["checks"].values() if check["required"])
    # Which model, and how it computes on this CPU.
    model = body["checks"]["model"]["detail"]
    assert model.startswith("local/all-MiniLM-L6-v2") and "torch" in model
    assert "CPU bfloat16 units:" in model


def test_ready_is_503_while_the_model_is_not_loaded(
    services: Services, database_url: str, data_dir: Path
) -> None:
    with limited_client(database_url, data_dir) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["model"] == {"ok": False, "detail": "loading", "required": True}
    assert checks["database"]["ok"] and checks["schema"]["ok"]


@pytest.mark.parametrize("page", ["/docs", "/docs/swagger"])
def test_the_api_pages_load_nothing_from_another_host(client: Client, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    head = html.text.split("<body", 1)[0]
    assets = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", head)
    assert len(assets) == 4  # the favicon, the stylesheet, the two scripts
    for asset in assets:
        assert asset.startswith("/static/swagger-ui/"), asset
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 500, asset
        assert "immutable" in served.headers["cache-control"]
    for license_file in ("LICENSE", "NOTICE"):
        shipped = asset.rsplit("/", 1)[0] + "/" + license_file
        assert client.get(shipped).status_code == 200


def test_openapi_lists_every_route(client: Client) -> None:
    response = client.get("/docs/openapi.json")
    assert response.status_code == 200
    documented = {
        (method.upper(), path)
        for path, operations in response.json()["paths"].items()
        for method in operations
    }
    assert isinstance(client.app, Litestar)
    routes = {
        (method, re.sub(r"\{(\w+):\w+\}", r"{\1}", path))
        for method, path in describe_routes(client.app)
        if not path.startswith(("/docs", "/static"))
    }
    assert ("POST", "/v1/collections/{name}/files") in routes
    assert ("PATCH", "/v1/collections/{name}/documents/{external_id}") in routes
    assert routes <= documented


# -- collections -------------------------------------------------------------------------------


def test_create_collection_then_duplicate_conflicts(client: Client) -> None:
    created = client.post("/v1/collections", json={"name": "kb", "description": "Notes"})
    assert created.status_code == 201
    body = created.json()
    assert (body["name"], body["description"], body["text_config"]) == (
        "kb",
        "Notes",
        "english_unaccent",
    )
    assert (body["embedding_dim"], body["documents"], body["chunks"]) == (384, 0, 0)
    duplicate = problem(client.post("/v1/collections", json={"name": "kb"}), 409)
    assert duplicate["field"] == "name"
    assert "kb" in duplicate["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({"name": "-leading"}, "name"),
        ({"name": "kb", "text_config": "klingon"}, "text_config"),
        ({"name": "kb", "colour": "red"}, "colour"),
        ({"name": 7}, "name"),
    ],
)
def test_create_collection_rejects_bad_input(
    client: Client, body: dict[str, Any], field: str
) -> None:
    assert problem(client.post("/v1/collections", json=body), 400)["field"] == field
    assert client.get("/v1/collections").json() == []


@pytest.mark.parametrize(
    ("body", "named"),
    [({"name": "kb", "colour": "red"}, "`colour`"), ({}, "`name`")],
)
def test_unknown_or_missing_body_fields_are_named(
    client: Client, body: dict[str, Any], named: str
) -> None:
    assert named in problem(client.post("/v1/collections", json=body), 400)["detail"]


@pytest.mark.parametrize(
    "body",
    [
        b"{nope",
        b"not json",
        b'{"name": "kb",}',
        b'{"name": "kb"} trailing',
        b'{"name": "kb"',
        b"[",
    ],
)
def test_malformed_json_is_400(client: Client, body: bytes) -> None:
    response = client.post(
        "/v1/collections", content=body, headers={"content-type": "application/json"}
    )
    error = problem(response, 400)
    assert (error["title"], error.get("field")) == ("Malformed JSON", "body")


def test_empty_json_body_says_the_body_is_missing(client: Client) -> None:
    response = client.post(
        "/v1/collections", content=b"", headers={"content-type": "application/json"}
    )
    detail = problem(response, 400)["detail"]
    assert "body" in detail.lower() or "empty" in detail.lower()


def test_list_and_get_collections_with_counts(kb: Client) -> None:
    statuses(ingest(kb, {"id": "a", "text": "Cats purr."}, {"id": "b", "text": "Dogs bark."}))
    assert kb.post("/v1/collections", json={"name": "empty"}).status_code == 201
    listed = {c["name"]: (c["documents"], c["chunks"]) for c in kb.get("/v1/collections").json()}
    assert listed == {"kb": (2, 2), "empty": (0, 0)}
    one = kb.get(COLLECTION).json()
    assert (one["name"], one["documents"], one["chunks"]) == ("kb", 2, 2)
    missing = problem(kb.get("/v1/collections/nope"), 404)
    assert "nope" in missing["detail"]


def test_delete_collection_removes_it_and_its_documents(kb: Client, services: Services) -> None:
    statuses(ingest(kb, {"id": "a", "text": "Cats purr."}))
    deleted = kb.delete(COLLECTION)
    assert deleted.status_code == 204
    assert deleted.content == b""
    problem(kb.get(COLLECTION), 404)
    problem(kb.delete(COLLECTION), 404)
    assert count_documents(services) == 0


# -- JSON ingest -------------------------------------------------------------------------------


def test_ingest_statuses_over_successive_requests(kb: Client) -> None:
    a, b = {"id": "a", "text": "Cats purr."}, {"id": "b", "text": "Dogs bark."}
    assert statuses(ingest(kb, a, b)) == {"a": "created", "b": "created"}
    assert statuses(ingest(kb, a, b)) == {"a": "unchanged", "b": "unchanged"}
    changed_text = {**a, "text": "Cats purr loudly."}
    tagged = {**b, "metadata": {"lang": "en"}}
    assert statuses(ingest(kb, changed_text, tagged)) == {"a": "updated", "b": "metadata_updated"}
    assert document(kb, "a")["version"] == 2
    assert document(kb, "b")["version"] == 1
    assert document(kb, "b")["metadata"] == {"lang": "en"}


def test_ingest_response_counts_chunks_and_embeddings(kb: Client) -> None:
    body = ingest(kb, {"id": "a", "text": "Owls hunt at night."}).json()
    assert (body["created"], body["chunks"], body["embedded"] + body["cached"]) == (1, 1, 1)
    assert body["documents"] == [{"id": "a", "status": "created", "chunks": 1}]


def test_request_metadata_and_acl_are_defaults_each_document_may_override(kb: Client) -> None:
    response = ingest(
        kb,
        {"id": "plain", "text": "Cats purr."},
        {"id": "own", "text": "Dogs bark.", "metadata": {"lang": "fr"}, "acl": ["team-b"]},
        metadata={"team": "x", "lang": "en"},
        acl=["team-a"],
    )
    statuses(response)
    plain, own = document(kb, "plain"), document(kb, "own")
    assert (plain["metadata"], plain["acl"]) == ({"team": "x", "lang": "en"}, ["team-a"])
    assert (own["metadata"], own["acl"]) == ({"team": "x", "lang": "fr"}, ["team-b"])
    statuses(ingest(kb, {"id": "open", "text": "Fish swim."}))
    assert document(kb, "open")["acl"] == ["*"]


def test_ingest_into_unknown_collection_is_404(client: Client) -> None:
    error = problem(
        client.post("/v1/collections/nope/documents", json={"documents": [{"text": "x"}]}), 404
    )
    assert "nope" in error["detail"]


def test_empty_and_oversized_document_lists_are_rejected(
    kb: Client, services: Services, database_url: str, data_dir: Path
) -> None:
    assert problem(ingest(kb), 400)["field"] == "documents"
    three = [{"text": t} for t in ("one", "two", "three")]
    with limited_client(database_url, data_dir, HYBRID_MAX_REQUEST_DOCUMENTS="2") as limited:
        error = problem(ingest(limited, *three), 400)
    assert error["field"] == "documents"
    assert "3" in error["detail"] and "2" in error["detail"]
    assert count_documents(services) == 0


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"text": 5}, "documents[1].text"),
        ({"text": "   "}, "documents[1].text"),
        ({"title": "no text"}, "documents[1]"),
        ({"text": "x", "metadata": [1]}, "documents[1].metadata"),
        ({"text": "x", "acl": "alice"}, "documents[1].acl"),
        ({"text": "x", "acl": [1]}, "documents[1].acl[0]"),
        ({"text": "x", "acl": ["alice", " "]}, "documents[1].acl"),
        ({"text": "x", "id": ""}, "documents[1].id"),
        ({"text": "x", "published_at": "yesterday"}, "documents[1].published_at"),
        ({"text": "x", "popularity": "high"}, "documents[1].popularity"),
        ({"text": "x", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_document_names_its_field_and_nothing_is_written(
    kb: Client, services: Services, bad: dict[str, Any], field: str
) -> None:
    error = problem(ingest(kb, {"id": "good", "text": "Cats purr."}, bad), 400)
    assert error["field"] == field
    assert count_documents(services) == 0


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [({"metadata": [1]}, "metadata"), ({"acl": []}, "acl"), ({"acl": ["a", ""]}, "acl")],
)
def test_bad_request_level_defaults_are_rejected(
    kb: Client, services: Services, request_fields: dict[str, Any], field: str
) -> None:
    error = problem(ingest(kb, {"text": "Cats purr."}, **request_fields), 400)
    assert error["field"] == field
    assert count_documents(services) == 0


def test_out_of_range_number_is_400(kb: Client, services: Services) -> None:
    body = b'{"documents": [{"id": "a", "text": "x", "popularity": 1e400}]}'
    response = kb.post(DOCUMENTS, content=body, headers={"content-type": "application/json"})
    assert "out of range" in problem(response, 400)["detail"]
    assert count_documents(services) == 0


def test_negative_popularity_is_rejected_at_ingest(kb: Client, services: Services) -> None:
    error = problem(ingest(kb, {"id": "a", "text": "Cats purr.", "popularity": -5}), 400)
    assert error["field"] == "documents[0].popularity"
    assert count_documents(services) == 0


def test_empty_document_acl_is_rejected_not_widened(kb: Client, services: Services) -> None:
    error = problem(ingest(kb, {"id": "secret", "text": "Salaries.", "acl": []}), 400)
    assert error["field"] == "documents[0].acl"
    assert count_documents(services) == 0


def test_nul_character_in_metadata_is_a_400(kb: Client, services: Services) -> None:
    error = problem(ingest(kb, {"id": "a", "text": "x", "metadata": {"k": "a\u0000b"}}), 400)
    assert (error.get("field") or "").startswith("documents[0].metadata")
    assert count_documents(services) == 0


def test_document_over_the_character_limit_is_413(
    kb: Client, services: Services, database_url: str, data_dir: Path
) -> None:
    docs = [{"text": "short"}, {"text": "word " * 200}]
    with limited_client(database_url, data_dir, HYBRID_MAX_DOCUMENT_CHARS="500") as limited:
        error = problem(ingest(limited, *docs), 413)
    assert error["field"] == "documents[1].text"
    assert "500" in error["detail"]
    assert count_documents(services) == 0


# -- file upload -------------------------------------------------------------------------------

UPLOADS = [
    ("guide.md", b"# Guide\n\nInstall it.\n\n## Usage\n\nRun it.", ["guide.md"], "Guide"),
    ("notes.txt", b"Plain text notes.\n\nSecond paragraph.", ["notes.txt"], "notes"),
    (
        "page.html",
        b"<html><head><title>Page</title><script>x()</script></head>"
        b"<body><h1>Head</h1><p>Body text.</p></body></html>",
        ["page.html"],
        "Page",
    ),
    ("faq.json", b'[{"id": "q1", "title": "Q1", "text": "Answer one."}]', ["q1"], "Q1"),
    ("faq.jsonl", b'{"id": "q2", "text": "Two."}\n\n{"id": "q3", "text": "3."}', ["q2", "q3"], ""),
    ("field.docx", docx_bytes(), ["field.docx"], "Field guide"),
]


@pytest.mark.parametrize(("name", "data", "ids", "title"), UPLOADS)
def test_upload_each_format(kb: Client, name: str, data: bytes, ids: list[str], title: str) -> None:
    assert statuses(upload(kb, (name, data))) == dict.fromkeys(ids, "created")
    stored = document(kb, ids[0])
    assert stored["title"] == title
    assert stored["source"] == name
    assert stored["chunk_count"] >= 1


def test_upload_several_files_with_metadata_and_acl(kb: Client) -> None:
    response = upload(
        kb,
        ("a.md", b"# A\n\nAlpha."),
        ("b.txt", b"Beta."),
        metadata='{"team": "docs"}',
        acl="alice, bob",
    )
    assert statuses(response) == {"a.md": "created", "b.txt": "created"}
    for external_id in ("a.md", "b.txt"):
        stored = document(kb, external_id)
        assert (stored["metadata"], stored["acl"]) == ({"team": "docs"}, ["alice", "bob"])
    assert statuses(upload(kb, ("b.txt", b"Beta."))) == {"b.txt": "unchanged"}


def test_upload_with_an_explicit_id(kb: Client) -> None:
    assert statuses(upload(kb, ("a.md", b"Alpha."), id="guides/intro")) == {
        "guides/intro": "created"
    }
    assert document(kb, "guides/intro")["source"] == "a.md"


@pytest.mark.parametrize(
    ("files", "form", "status", "field"),
    [
        ([("tool.exe", b"MZ")], {}, 415, "tool.exe"),
        ([("noext", b"text")], {}, 415, "noext"),
        ([("empty.txt", b"")], {}, 400, "empty.txt"),
        ([("latin.txt", b"caf\xe9")], {}, 400, "latin.txt"),
        ([("bad.json", b'{"text": ')], {}, 400, "bad.json"),
        ([("bad.docx", b"not a zip")], {}, 400, "bad.docx"),
        ([("a.md", b"Alpha.")], {"metadata": "[1]"}, 400, "metadata"),
        ([("a.md", b"Alpha.")], {"metadata": "{bad"}, 400, "metadata"),
        ([("a.md", b"Alpha.")], {"acl": ", ,"}, 400, "acl"),
        ([("a.md", b"Alpha."), ("b.md", b"Beta.")], {"id": "one"}, 400, "id"),
    ],
)
def test_bad_uploads_are_rejected_and_nothing_is_written(
    kb: Client,
    services: Services,
    files: list[tuple[str, bytes]],
    form: dict[str, str],
    status: int,
    field: str,
) -> None:
    error = problem(upload(kb, ("good.md", b"Fine."), *files, **form), status)
    assert error["field"] == field
    assert count_documents(services) == 0


def test_invalid_utf8_upload_says_so(kb: Client) -> None:
    assert "UTF-8" in problem(upload(kb, ("latin.txt", b"caf\xe9")), 400)["detail"]


def test_no_files_at_all_is_400(kb: Client) -> None:
    response = kb.post(FILES, files=[("other", ("a.md", b"Alpha.", "text/markdown"))])
    assert problem(response, 400)["field"] == "files"


def test_upload_into_unknown_collection_is_404(client: Client) -> None:
    response = client.post(
        "/v1/collections/nope/files", files=[("files", ("a.md", b"Alpha.", "text/markdown"))]
    )
    assert "nope" in problem(response, 404)["detail"]


def test_oversized_uploads_are_413(
    kb: Client, services: Services, database_url: str, data_dir: Path
) -> None:
    with limited_client(database_url, data_dir, HYBRID_MAX_UPLOAD_BYTES="2000") as limited:
        over_file = problem(upload(limited, ("big.txt", b"x" * 2001)), 413)
        over_request = problem(upload(limited, ("huge.txt", b"word " * 40_000)), 413)
    assert over_file["field"] == "big.txt"
    assert "2000" in over_file["detail"]
    assert "Too Large" in over_request["title"]
    assert count_documents(services) == 0


# -- documents ---------------------------------------------------------------------------------


def test_list_documents_paginates(kb: Client) -> None:
    statuses(ingest(kb, *({"id": f"d{i}", "text": f"Document number {i}."} for i in range(5))))
    pages = [kb.get(DOCUMENTS, params={"limit": 2, "offset": o}).json() for o in (0, 2, 4)]
    assert [len(p["documents"]) for p in pages] == [2, 2, 1]
    assert all((p["total"], p["deleted"], p["limit"]) == (5, 0, 2) for p in pages)
    ids = [d["id"] for p in pages for d in p["documents"]]
    assert sorted(ids) == [f"d{i}" for i in range(5)]
    assert kb.get(DOCUMENTS, params={"offset": 5}).json()["documents"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"include_deleted": "perhaps"}, "include_deleted"),
    ],
)
def test_list_documents_rejects_bad_paging(kb: Client, params: dict[str, Any], field: str) -> None:
    assert problem(kb.get(DOCUMENTS, params=params), 400)["field"] == field


def test_list_documents_of_unknown_collection_is_404(client: Client) -> None:
    problem(client.get("/v1/collections/nope/documents"), 404)


def test_get_document_with_chunks_and_heading_paths(kb: Client) -> None:
    statuses(upload(kb, ("guide.md", b"# Guide\n\nIntro.\n\n## Install\n\nRun pip.")))
    plain = document(kb, "guide.md")
    assert plain["chunks"] is None
    chunks = document(kb, "guide.md", chunks="true")["chunks"]
    assert [c["heading_path"] for c in chunks] == [["Guide"], ["Guide", "Install"]]
    assert [c["ordinal"] for c in chunks] == [0, 1]
    assert "Run pip." in chunks[1]["text"]
    missing = problem(kb.get(f"{DOCUMENTS}/nope"), 404)
    assert missing["field"] == "external_id"


def test_external_ids_with_slashes_work_in_the_path(kb: Client) -> None:
    external_id = "team/guides/intro.md"
    statuses(ingest(kb, {"id": external_id, "text": "Welcome."}))
    assert document(kb, external_id)["id"] == external_id
    patched = kb.patch(f"{DOCUMENTS}/{external_id}", json={"metadata": {"k": 1}})
    assert patched.status_code == 200
    assert kb.delete(f"{DOCUMENTS}/{external_id}").status_code == 204
    problem(kb.delete(f"{DOCUMENTS}/team/guides"), 404)


def test_external_id_with_a_leading_slash_is_reachable(kb: Client) -> None:
    statuses(ingest(kb, {"id": "/srv/docs/a.md", "text": "Welcome."}))
    response = kb.get(f"{DOCUMENTS}/%2Fsrv%2Fdocs%2Fa.md")
    assert response.status_code == 200
    assert response.json()["id"] == "/srv/docs/a.md"


def test_patch_merges_metadata_and_replaces_acl_without_reembedding(kb: Client) -> None:
    metadata = {"keep": 1, "drop": 2, "nested": {"a": 1, "b": 2}}
    statuses(ingest(kb, {"id": "a", "text": "Cats purr.", "metadata": metadata, "acl": ["x"]}))
    before = document(kb, "a", chunks="true")
    patch = {"drop": None, "nested": {"b": 3}, "new": "yes"}
    response = kb.patch(f"{DOCUMENTS}/a", json={"metadata": patch, "acl": ["y", "z"]})
    assert response.status_code == 200
    after = response.json()
    assert after["metadata"] == {"keep": 1, "nested": {"a": 1, "b": 3}, "new": "yes"}
    assert after["acl"] == ["y", "z"]
    assert after["version"] == before["version"]
    assert document(kb, "a", chunks="true")["chunks"] == before["chunks"]
    popular = kb.patch(f"{DOCUMENTS}/a", json={"popularity": 12.5}).json()
    assert (popular["popularity"], popular["acl"]) == (12.5, ["y", "z"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"acl": []}, "acl"),
        ({"acl": ["ok", ""]}, "acl"),
        ({"acl": "alice"}, "acl"),
        ({"metadata": [1]}, "metadata"),
        ({"popularity": -1}, "popularity"),
        ({"popularity": "high"}, "popularity"),
        ({"published_at": "soon"}, "published_at"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_patch_rejects_bad_fields_and_changes_nothing(
    kb: Client, body: dict[str, Any], field: str
) -> None:
    statuses(ingest(kb, {"id": "a", "text": "Cats purr.", "acl": ["x"]}))
    before = document(kb, "a")
    assert problem(kb.patch(f"{DOCUMENTS}/a", json=body), 400)["field"] == field
    assert document(kb, "a") == before


def test_patch_unknown_or_deleted_document_is_404(kb: Client) -> None:
    problem(kb.patch(f"{DOCUMENTS}/nope", json={"acl": ["x"]}), 404)
    statuses(ingest(kb, {"id": "a", "text": "Cats purr."}))
    assert kb.delete(f"{DOCUMENTS}/a").status_code == 204
    assert "deleted" in problem(kb.patch(f"{DOCUMENTS}/a", json={"acl": ["x"]}), 404)["detail"]


def test_soft_delete_hides_then_purge_removes(kb: Client) -> None:
    statuses(ingest(kb, {"id": "a", "text": "Cats purr."}, {"id": "b", "text": "Dogs bark."}))
    assert kb.delete(f"{DOCUMENTS}/a").status_code == 204
    live = kb.get(DOCUMENTS).json()
    assert ([d["id"] for d in live["documents"]], live["total"], live["deleted"]) == (["b"], 1, 1)
    everything = kb.get(DOCUMENTS, params={"include_deleted": "true"}).json()["documents"]
    deleted_at = {d["id"]: d["deleted_at"] for d in everything}
    assert deleted_at["a"] is not None and deleted_at["b"] is None
    assert kb.get(COLLECTION).json()["documents"] == 1
    problem(kb.delete(f"{DOCUMENTS}/a"), 404)
    purged = kb.post(f"{COLLECTION}/purge")
    assert (purged.status_code, purged.json()) == (200, {"purged": 1})
    assert kb.post(f"{COLLECTION}/purge").json() == {"purged": 0}
    after = kb.get(DOCUMENTS, params={"include_deleted": "true"}).json()
    assert ([d["id"] for d in after["documents"]], after["deleted"]) == (["b"], 0)


def test_a_soft_deleted_document_is_gone(kb: Client) -> None:
    statuses(ingest(kb, {"id": "a", "text": "Cats purr."}))
    assert kb.delete(f"{DOCUMENTS}/a").status_code == 204
    assert "deleted" in problem(kb.get(f"{DOCUMENTS}/a"), 404)["detail"]


def test_reingesting_a_soft_deleted_document_brings_it_back(kb: Client) -> None:
    doc = {"id": "a", "text": "Cats purr."}
    statuses(ingest(kb, doc))
    assert kb.delete(f"{DOCUMENTS}/a").status_code == 204
    assert statuses(ingest(kb, doc)) == {"a": "updated"}
    assert document(kb, "a")["deleted_at"] is None


def test_delete_with_purge_removes_for_good(kb: Client) -> None:
    statuses(ingest(kb, {"id": "a", "text": "Cats purr."}))
    assert kb.delete(f"{DOCUMENTS}/a", params={"purge": "true"}).status_code == 204
    assert kb.get(DOCUMENTS, params={"include_deleted": "true"}).json()["documents"] == []
    problem(kb.get(f"{DOCUMENTS}/a"), 404)
    problem(kb.delete(f"{DOCUMENTS}/a", params={"purge": "true"}), 404)
    problem(kb.post("/v1/collections/nope/purge"), 404)


def test_delete_by_filter_counts_first_then_deletes_only_what_matches(
    kb: Client, services: Services
) -> None:
    statuses(ingest(
        kb,
        {"id": "a", "text": "Cats purr.", "metadata": {"team": "red", "year": 2020}},
        {"id": "b", "text": "Cats sleep.", "metadata": {"team": "red", "year": 2024}},
        {"id": "c", "text": "Cats hunt.", "metadata": {"team": "blue", "year": 2020}},
    ))  # fmt: skip
    red = '{"metadata.team": "red"}'
    dry = kb.delete(DOCUMENTS, params={"filter": red, "dry_run": "true"})
    assert dry.status_code == 200 and dry.json() == {"matched": 2, "deleted": 0, "dry_run": True}
    assert kb.get(DOCUMENTS).json()["total"] == 3
    done = kb.delete(DOCUMENTS, params={"filter": red, **WAIT})
    assert done.json() == {"matched": 2, "deleted": 2, "dry_run": False}
    listed = kb.get(DOCUMENTS, params={"include_deleted": "true"}).json()["documents"]
    assert {d["id"]: d["deleted_at"] is not None for d in listed} == {
        "a": True, "b": True, "c": False,
    }  # fmt: skip
    hits = kb.post("/v1/search", json={"collection": "kb", "query": "cats"}).json()["hits"]
    assert [h["document_id"] for h in hits] == ["c"]
    again = kb.delete(DOCUMENTS, params={"filter": red, **WAIT})
    assert again.json()["deleted"] == 0  # deleted ones are not matched twice
    with services.engine.connect() as conn:
        detail = conn.execute(
            text("SELECT detail FROM audit_log WHERE action = 'documents.deleted' ORDER BY id")
        ).scalars().all()  # fmt: skip
    assert detail[0] == {"filter": {"metadata.team": "red"}, "deleted": 2}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("{not json", "filter: malformed JSON"),
        ("{}", "filter: expected a non-empty JSON object"),
        ("[1]", "filter: expected a JSON object"),
        ('{"and": [' * 1500 + "{}" + "]}" * 1500, "filter: nests too deep"),
        ('{"and": [' * 20 + '{"metadata.a": 1}' + "]}" * 20, "nest at most 8 levels"),
        ('{"metadata.x": {"near": 1}}', "near"),
    ],
)
def test_delete_by_filter_refuses_a_bad_filter(kb: Client, given: str, message: str) -> None:
    body = problem(kb.delete(DOCUMENTS, params={"filter": given}), 400)
    assert message in body["detail"] and body["field"].startswith("filter")
    problem(kb.delete(DOCUMENTS), 400)  # the filter is required


def test_concurrent_deletes_by_filter_delete_each_document_once(services: Services) -> None:
    with serving(services) as http:
        assert http.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"Note {i}.", "metadata": {"n": i}} for i in range(40)]
        assert http.post(DOCUMENTS, params=WAIT, json={"documents": docs}).status_code == 201
        filters = ['{"metadata.n": {"lt": 30}}', '{"metadata.n": {"gte": 10}}'] * 4

        def delete(given: str) -> int:
            response = http.delete(DOCUMENTS, params={"filter": given, **WAIT})
            assert response.status_code == 200, response.text
            deleted: int = response.json()["deleted"]
            return deleted

        with ThreadPoolExecutor(len(filters)) as pool:
            deleted = list(pool.map(delete, filters))
        assert sum(deleted) == 40
        assert http.get(DOCUMENTS).json()["total"] == 0


# -- errors in general -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/nothing", 404), ("PUT", "/v1/collections/kb", 405)],
)
def test_routing_errors_are_problem_bodies(
    client: Client, method: str, path: str, status: int
) -> None:
    problem(client.request(method, path), status)


def test_405_and_options_name_every_method_of_the_route(client: Client) -> None:
    refused = client.put("/v1/collections/kb")
    problem(refused, 405)
    assert set(refused.headers["allow"].split(", ")) == {"DELETE", "GET", "OPTIONS"}
    options = client.options("/v1/collections")
    assert (options.status_code, options.headers["allow"]) == (204, "GET, OPTIONS, POST")


def test_json_body_of_the_wrong_shape_is_400(kb: Client) -> None:
    problem(kb.post(DOCUMENTS, json=[{"text": "x"}]), 400)
    problem(kb.post(DOCUMENTS, json={"docs": [{"text": "x"}]}), 400)
    problem(kb.post(FILES, json={"files": []}), 415)
