"""The service under concurrency, contention, overload and hostile input, over real HTTP (a
uvicorn server on loopback) and a real PostgreSQL: no request waits on itself, every wait has
a bound, overload is refused at once, and every bad input is a 4xx naming the field."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.db import failures
from app.errors import Busy, Conflict
from app.service import Services
from tests.conftest import own_services, serving

DOCS = "/v1/collections/kb/documents"


@pytest.fixture
def http(services: Services) -> Iterator[httpx.Client]:
    with serving(services) as client:
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        ingest(client, {"id": "doc", "text": "Resetting a password takes a minute."})
        yield client


def ingest(client: httpx.Client, *docs: dict[str, Any]) -> httpx.Response:
    response = client.post(DOCS, params={"wait": "true"}, json={"documents": list(docs)})
    assert response.status_code == 201, response.text
    return response


def at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Every call started together, each on a thread of its own."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


@contextmanager
def row_locked(database_url: str, sql: str) -> Iterator[None]:
    """A transaction elsewhere holding the rows that `sql` locks until the block ends."""
    with psycopg.connect(database_url) as conn:
        conn.execute(sql)
        yield
        conn.rollback()


# --- no request waits on itself ----------------------------------------------------------------


def test_many_concurrent_patches_of_one_document_all_apply(http: httpx.Client) -> None:
    calls = [
        (lambda i=i: http.patch(f"{DOCS}/doc", json={"metadata": {f"k{i}": i}})) for i in range(24)
    ]
    started = time.monotonic()
    responses = at_once(calls)
    assert [r.status_code for r in responses] == [200] * 24
    assert time.monotonic() - started < 20
    metadata = http.get(f"{DOCS}/doc").json()["metadata"]
    assert {f"k{i}" for i in range(24)} <= metadata.keys(), "a patch was lost"
    assert http.get("/v1/collections").status_code == 200


def test_many_concurrent_creates_of_one_collection_give_one_201(http: httpx.Client) -> None:
    calls = [(lambda: http.post("/v1/collections", json={"name": "twin"})) for _ in range(16)]
    statuses = sorted(r.status_code for r in at_once(calls))
    assert statuses == [201] + [409] * 15
    assert http.get("/v1/collections/twin").status_code == 200


def test_concurrent_first_loads_into_a_new_collection_all_tell_the_truth(
    http: httpx.Client, services: Services
) -> None:
    assert http.post("/v1/collections", json={"name": "fresh"}).status_code == 201
    path = "/v1/collections/fresh/documents?wait=true"
    calls = [
        (
            lambda i=i: http.post(
                path,
                json={
                    "documents": [
                        {"id": f"d{i}-{j}", "text": f"Document {i} part {j} on glaciers."}
                        for j in range(3)
                    ]
                },
            )
        )
        for i in range(8)
    ]
    responses = at_once(calls)
    written = set()
    for i, response in enumerate(responses):
        if response.status_code == 201:
            written.update(f"d{i}-{j}" for j in range(3))
        else:
            problem(response, 503)
            assert "Retry-After" in response.headers
    listed = http.get(path, params={"limit": 100}).json()["documents"]
    assert {d["id"] for d in listed} == written, "a reported outcome is not what was stored"
    assert len(written) >= 3


# --- every wait has a bound ----------------------------------------------------------------------


def test_a_held_row_lock_is_a_503_with_retry_after_in_bounded_time(
    database_url: str, data_dir: Path, services: Services
) -> None:
    with (
        own_services(database_url, data_dir, HYBRID_DB_LOCK_TIMEOUT="300") as limited,
        serving(limited) as client,
    ):
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        ingest(client, {"id": "doc", "text": "A document someone else is editing."})
        with row_locked(database_url, "SELECT 1 FROM documents FOR UPDATE"):
            started = time.monotonic()
            body = problem(client.patch(f"{DOCS}/doc", json={"popularity": 3}), 503)
            assert time.monotonic() - started < 5
            assert "nothing of this request was written" in body["detail"]
            assert client.get(f"{DOCS}/doc").status_code == 200, "reads go on meanwhile"
        assert client.get(f"{DOCS}/doc").json()["popularity"] == 0
        assert client.patch(f"{DOCS}/doc", json={"popularity": 3}).status_code == 200


def test_beyond_the_in_flight_limit_requests_are_refused_at_once(
    database_url: str, data_dir: Path, services: Services
) -> None:
    with (
        own_services(
            database_url,
            data_dir,
            HYBRID_MAX_IN_FLIGHT="1",
            HYBRID_DB_LOCK_TIMEOUT="3000",
            HYBRID_STUCK_AFTER="0.5",
        ) as limited,
        serving(limited) as client,
    ):
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        ingest(client, {"id": "doc", "text": "A document someone else is editing."})
        with (
            row_locked(database_url, "SELECT 1 FROM documents FOR UPDATE"),
            ThreadPoolExecutor(1) as pool,
        ):
            waiting = pool.submit(client.patch, f"{DOCS}/doc", json={"popularity": 1})
            time.sleep(0.8)
            started = time.monotonic()
            refused = client.get("/v1/collections")
            assert time.monotonic() - started < 0.5
            problem(refused, 503)
            assert refused.headers["Retry-After"] == "1"
            health = client.get("/health")
            assert health.status_code == 503, "a request past HYBRID_STUCK_AFTER means stuck"
            assert health.json()["in_flight"] == 1
        assert waiting.result().status_code in (200, 503)
        assert client.get("/health").status_code == 200
        assert client.get("/v1/collections").status_code == 200


# --- truthful errors ---------------------------------------------------------------------------


def test_database_failures_say_what_happened(database_url: str) -> None:
    """Real PostgreSQL errors, through SQLAlchemy as the service meets them."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    cases: list[tuple[list[str], type[Exception]]] = [
        (
            [
                "INSERT INTO documents (collection_id, external_id, title, content_hash, acl) "
                "VALUES (-1, 'x', '', '', '{}')"
            ],
            Conflict,
        ),
        (["SET LOCAL statement_timeout = 10", "SELECT pg_sleep(1)"], Busy),
    ]
    for statements, expected in cases:
        with pytest.raises(DBAPIError) as raised, engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
        assert isinstance(failures.translate(raised.value), expected), statements
    engine.dispose()


def test_an_ingest_racing_the_deletion_of_its_collection_is_never_a_500(
    http: httpx.Client,
) -> None:
    for round_ in range(3):
        name = f"gone{round_}"
        assert http.post("/v1/collections", json={"name": name}).status_code == 201
        docs = {"documents": [{"id": f"x{i}", "text": f"Text {i}."} for i in range(20)]}
        responses = at_once(
            [
                lambda name=name, docs=docs: http.post(
                    f"/v1/collections/{name}/documents?wait=true", json=docs
                ),
                lambda name=name: http.delete(f"/v1/collections/{name}"),
            ]
        )
        assert responses[1].status_code in (204, 503)
        assert responses[0].status_code in (201, 404, 409, 503), responses[0].text


# --- bad input at the edge ----------------------------------------------------------------------


class Deep:
    """A filter nested `levels` deep, written out as JSON text (too deep for json.dumps)."""

    def __init__(self, levels: int) -> None:
        self.levels = levels

    def json(self) -> str:
        return '{"not": ' * self.levels + '{"metadata.a": 1}' + "}" * self.levels


def encode(value: Any) -> str:
    """JSON text of `value`, with `Deep` filters written out in place."""
    import json

    if isinstance(value, Deep):
        return value.json()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {encode(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("POST", "/v1/search", {"collection": "kb", "query": "a\x00b"}, 400, "query"),
        ("POST", DOCS, {"documents": [{"id": "x", "text": "t", "metadata": {"k\x00": 1}}]},
         400, "documents[0].metadata"),
        ("PATCH", f"{DOCS}/doc", {"metadata": {"k": "v\x00"}}, 400, "metadata.k"),
        ("POST", "/v1/collections", {"name": "n", "description": "d\x00"}, 400, "description"),
        ("POST", "/v1/search", {"collection": "kb", "query": "q", "filter": Deep(5000)},
         400, "body"),
        ("POST", "/v1/search", {"collection": "kb", "query": "q", "filter": Deep(40)},
         400, None),
        ("POST", "/v1/search", {"collection": "kb", "query": "q", "k": 2**70}, 400, "k"),
        ("PATCH", f"{DOCS}/doc", {"popularity": 2**64}, 400, "popularity"),
        ("POST", DOCS, {"documents": [{"id": "x" * 10_000, "text": "t"}]}, 400,
         "documents[0].id"),
        ("POST", DOCS, {"documents": [{"id": "x", "text": "t", "acl": ["p" * 3000]}]},
         400, "documents[0].acl"),
        ("PATCH", f"{DOCS}/doc", {"acl": ["p" * 3000]}, 400, "acl"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_at_the_edge_naming_the_field(
    http: httpx.Client,
    method: str,
    path: str,
    body: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    content = encode(body).encode()
    response = http.request(
        method, path, content=content, headers={"content-type": "application/json"}
    )
    found = problem(response, status)
    if field is not None:
        assert found.get("field") == field, found
    assert http.get(f"{DOCS}/doc").status_code == 200


@pytest.mark.parametrize(
    "raw",
    [b"1e999", b"-1e999", b"123456789012345678901234567890"],
)
def test_numbers_that_do_not_fit_are_400(http: httpx.Client, raw: bytes) -> None:
    body = b'{"collection": "kb", "query": "q", "vector": [' + raw + b"]}"
    response = http.post("/v1/search", content=body, headers={"content-type": "application/json"})
    problem(response, 400)


@pytest.mark.parametrize(
    ("url", "field"),
    [
        (f"{DOCS}/%ff%fe", "path"),
        (f"{DOCS}/a%00b", "path"),
        ("/v1/search?collection=kb&q=a%00b", "q"),
        ("/v1/search?collection=kb&q=%ff", "q"),
    ],
)
def test_bad_encodings_in_path_and_query_are_400(http: httpx.Client, url: str, field: str) -> None:
    assert problem(http.get(url), 400)["field"] == field


def test_json_routes_take_only_json(http: httpx.Client) -> None:
    form = http.post(
        DOCS,
        content=b"documents=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert problem(form, 415)["field"] == "content-type"
    plain = http.post("/v1/search", content=b"{}", headers={"content-type": "text/plain"})
    problem(plain, 415)
    files = http.post("/v1/collections/kb/files", json={"files": []})
    problem(files, 415)


def test_hosts_outside_the_loopback_names_are_refused_when_bound_to_loopback(
    services: Services,
) -> None:
    with serving(services, bind_host="127.0.0.1") as client:
        assert client.get("/health").status_code == 200
        refused = client.get("/health", headers={"host": "evil.example"})
        assert problem(refused, 400)["field"] == "host"
        assert client.get("/health", headers={"host": "localhost:80"}).status_code == 200
        response = client.get("/health", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers
