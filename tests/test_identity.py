"""Identity over the HTTP API: who may see and do what, with `HYBRID_AUTH=required`.

A small collection of documents with different ACLs and tenants, and keys for alice, bob,
team-a, a tenant-filtered key, a trusted backend (`act-as`), an admin and an ingest-only
key. The leak matrix sends every read route (searches in each mode and vector backend, cold
and cached, GET and POST; answers, streamed and not; document lists and shows with chunks)
as every key, and checks that nothing comes back that the key may not see. Then the ways in
which a request may try to see more: principals it does not hold, scopes and collections it
lacks, revoked and expired keys, a spent rate budget, and tenant tokens of every bad kind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import text

from app.access import keys, tokens
from app.access.keys import KeySpec
from app.api.app import create_app
from app.ingest.model import Block, SourceDocument
from app.service import Services
from tests.conftest import empty_tables, make_settings

Client = TestClient[Litestar]
TABLES = "collections, change_log, api_keys, audit_log"

# id: (ACL, tenant)
DOCS = {
    "public": (["*"], "acme"),
    "alice-notes": (["alice"], "acme"),
    "team-plan": (["team-a"], "globex"),
    "bob-diary": (["bob"], "globex"),
    "alice-globex": (["alice"], "globex"),
}
SPECS = {
    "alice": KeySpec(name="alice", scopes=("search",), principals=("alice",)),
    "bob": KeySpec(name="bob", scopes=("search",), principals=("bob",)),
    "team": KeySpec(name="team", scopes=("search",), principals=("team-a", "alice")),
    "acme-alice": KeySpec(
        name="acme-alice",
        scopes=("search",),
        principals=("alice", "team-a"),
        filter={"metadata.tenant": "acme"},
    ),
    "backend": KeySpec(name="backend", scopes=("search", "act-as")),
    "admin": KeySpec(name="admin", scopes=("admin", "search", "ingest")),
    "writer": KeySpec(name="writer", scopes=("ingest",), collections=("kb",)),
    "team-writer": KeySpec(name="team-writer", scopes=("ingest",), principals=("team-a",)),
    "elsewhere": KeySpec(
        name="elsewhere", scopes=("search",), principals=("alice",), collections=("other",)
    ),
    "limited": KeySpec(
        name="limited", scopes=("search",), principals=("alice",), rate_per_minute=3
    ),
}


def visible(principals: set[str] | None, tenant: str | None = None) -> set[str]:
    """The documents `principals` may see (None: every one), within `tenant` if given."""
    return {
        doc
        for doc, (acl, doc_tenant) in DOCS.items()
        if (principals is None or "*" in acl or principals & set(acl))
        and (tenant is None or doc_tenant == tenant)
    }


EXPECTED = {
    "alice": visible({"alice"}),
    "bob": visible({"bob"}),
    "team": visible({"team-a", "alice"}),
    "acme-alice": visible({"alice", "team-a"}, tenant="acme"),
    "backend": visible(set()),
    "admin": visible(set()),
}


@pytest.fixture(scope="module")
def secured(database_url: str, data_dir: Path, session_services: Services) -> Iterator[Services]:
    services = Services.open(make_settings(database_url, data_dir, HYBRID_AUTH="required"))
    services.embedders = session_services.embedders  # the model, loaded once per run
    docs = [
        SourceDocument(
            external_id=doc,
            title=doc.replace("-", " ").title(),
            blocks=[Block(text=f"Notes about glaciers and ice sheets, kept in {doc}.")],
            metadata={"tenant": tenant},
            acl=acl,
        )
        for doc, (acl, tenant) in DOCS.items()
    ]
    services.ingestor.ingest("kb", docs, create=True)
    try:
        yield services
    finally:
        services.query_log.flush()
        empty_tables(services.engine)
        services.close(stop_embedded=False)


@pytest.fixture(scope="module")
def secrets_(secured: Services) -> dict[str, str]:
    with secured.transaction() as conn:
        return {name: keys.create(conn, spec).secret for name, spec in SPECS.items()}


@pytest.fixture(scope="module")
def api(secured: Services, secrets_: dict[str, str]) -> Iterator[Client]:
    with TestClient(app=create_app(secured)) as client:
        cache = secured.vector_cache
        deadline = time.monotonic() + 60
        while cache is not None and not cache.ready:
            assert time.monotonic() < deadline, "vector cache did not load"
            time.sleep(0.2)
        yield client


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def search(api: Client, secret: str, **body: Any) -> Any:
    response = api.post(
        "/v1/search",
        json={"collection": "kb", "query": "glaciers ice", "k": 20, **body},
        headers=auth(secret),
    )
    assert response.status_code == 200, response.text
    return response.json()


def hit_documents(result: dict[str, Any]) -> set[str]:
    return {h["document_id"] for h in result["hits"]}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


# --- the leak matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", sorted(EXPECTED))
@pytest.mark.parametrize(
    ("mode", "backend"),
    [
        ("keyword", None),
        ("vector", "pgvector"),
        ("vector", "exact"),
        ("vector", "faiss"),
        ("hybrid", None),
        ("hybrid", "faiss"),
    ],
)
def test_searches_return_only_what_the_key_may_see(
    api: Client, secrets_: dict[str, str], who: str, mode: str, backend: str | None
) -> None:
    body: dict[str, Any] = {"mode": mode, "highlight": True, "explain": True}
    if backend is not None:
        body["vector_backend"] = backend
    cold = search(api, secrets_[who], **body)
    cached = search(api, secrets_[who], **body)
    assert hit_documents(cold) == EXPECTED[who]
    assert hit_documents(cached) == EXPECTED[who]
    for hit in cold["hits"]:
        assert hit["document_id"] in EXPECTED[who]


@pytest.mark.parametrize("who", sorted(EXPECTED))
def test_get_search_and_answers_return_only_what_the_key_may_see(
    api: Client, secrets_: dict[str, str], who: str
) -> None:
    quick = api.get(
        "/v1/search",
        params={"collection": "kb", "q": "glaciers", "k": 20},
        headers=auth(secrets_[who]),
    )
    assert quick.status_code == 200, quick.text
    assert hit_documents(quick.json()) == EXPECTED[who]

    question = {"collection": "kb", "query": "What is kept about glaciers?", "k": 20}
    answer = api.post("/v1/answer", json=question, headers=auth(secrets_[who]))
    assert answer.status_code == 200, answer.text
    cited = {s["document_id"] for s in answer.json()["sources"]}
    assert cited <= EXPECTED[who]
    assert cited or not EXPECTED[who]

    stream = api.post("/v1/answer", json={**question, "stream": True}, headers=auth(secrets_[who]))
    assert stream.status_code == 200
    for line in stream.text.splitlines():
        if line.startswith("data:") and '"sources"' in line:
            sources = json.loads(line[5:])["sources"]
            assert {s["document_id"] for s in sources} <= EXPECTED[who]


@pytest.mark.parametrize("who", sorted(EXPECTED))
def test_document_routes_show_only_what_the_key_may_see(
    api: Client, secrets_: dict[str, str], who: str
) -> None:
    listed = api.get("/v1/collections/kb/documents", headers=auth(secrets_[who]))
    assert listed.status_code == 200, listed.text
    page = listed.json()
    expected = EXPECTED[who] if who != "admin" else set(DOCS)
    assert {d["id"] for d in page["documents"]} == expected
    assert page["total"] == len(expected)
    for doc in DOCS:
        shown = api.get(
            f"/v1/collections/kb/documents/{doc}",
            params={"chunks": "true"},
            headers=auth(secrets_[who]),
        )
        if doc in expected:
            assert shown.status_code == 200
            assert shown.json()["chunks"]
        else:
            problem(shown, 404)


def test_a_key_with_principals_changes_only_documents_it_may_see(
    api: Client, secrets_: dict[str, str]
) -> None:
    writer, admin = auth(secrets_["team-writer"]), auth(secrets_["admin"])
    before = api.get("/v1/collections/kb/documents/bob-diary", headers=admin).json()
    for attempt in (
        api.patch("/v1/collections/kb/documents/bob-diary", headers=writer,
                  json={"acl": ["team-a"]}),
        api.delete("/v1/collections/kb/documents/bob-diary", headers=writer),
        api.delete("/v1/collections/kb/documents/bob-diary", params={"purge": "true"},
                   headers=writer),
    ):  # fmt: skip
        # As for a document that does not exist: the id is not confirmed either.
        assert problem(attempt, 404)["field"] == "external_id"
    assert api.get("/v1/collections/kb/documents/bob-diary", headers=admin).json() == before
    mine = api.patch(
        "/v1/collections/kb/documents/team-plan", headers=writer,
        json={"metadata": {"tenant": "globex"}},
    )  # fmt: skip
    assert mine.status_code == 200, mine.text


def test_collection_counts_are_only_for_admins(api: Client, secrets_: dict[str, str]) -> None:
    mine = api.get("/v1/collections/kb", headers=auth(secrets_["alice"])).json()
    assert mine["documents"] is None and mine["chunks"] is None
    everything = api.get("/v1/collections/kb", headers=auth(secrets_["admin"])).json()
    assert everything["documents"] == len(DOCS)


# --- widening attempts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("principals", "status"),
    [
        (["bob"], 403),
        (["alice", "bob"], 403),
        (["Alice"], 403),
        ([" alice"], 403),
        (["alice "], 403),
        (["*"], 403),
        ([], 400),
    ],
)
def test_a_key_cannot_name_principals_it_does_not_hold(
    api: Client, secrets_: dict[str, str], principals: list[str], status: int
) -> None:
    response = api.post(
        "/v1/search",
        json={"collection": "kb", "query": "glaciers", "principals": principals},
        headers=auth(secrets_["alice"]),
    )
    body = problem(response, status)
    assert body["field"] == "principals"
    if status == 403:
        offending = next(p for p in principals if p != "alice")
        assert repr(offending) in body["detail"]


def test_a_key_may_narrow_to_some_of_its_principals(api: Client, secrets_: dict[str, str]) -> None:
    narrowed = search(api, secrets_["team"], principals=["team-a"])
    assert hit_documents(narrowed) == visible({"team-a"})


def test_a_backend_with_act_as_names_its_users(api: Client, secrets_: dict[str, str]) -> None:
    as_bob = search(api, secrets_["backend"], principals=["bob"])
    assert hit_documents(as_bob) == visible({"bob"})


def test_the_key_filter_cannot_be_removed_or_widened(api: Client, secrets_: dict[str, str]) -> None:
    wider = {"or": [{"metadata.tenant": "globex"}, {"metadata.tenant": "acme"}]}
    result = search(api, secrets_["acme-alice"], filter=wider)
    assert hit_documents(result) == EXPECTED["acme-alice"]
    other = search(api, secrets_["acme-alice"], filter={"metadata.tenant": "globex"})
    assert hit_documents(other) == set()


@pytest.mark.parametrize(
    ("who", "method", "path", "body"),
    [
        ("alice", "POST", "/v1/collections", {"name": "mine"}),
        ("alice", "DELETE", "/v1/collections/kb", None),
        ("alice", "POST", "/v1/collections/kb/documents", {"documents": [{"text": "x"}]}),
        ("alice", "PATCH", "/v1/collections/kb/documents/public", {"acl": ["alice"]}),
        ("alice", "DELETE", "/v1/collections/kb/documents/public", None),
        ("alice", "POST", "/v1/collections/kb/purge", None),
        ("alice", "GET", "/metrics", None),
        ("alice", "GET", "/v1/admin/index", None),
        ("alice", "GET", "/v1/admin/index/keyword", None),
        ("writer", "GET", "/v1/admin/index/keyword", None),
        ("alice", "GET", "/v1/admin/keys", None),
        ("alice", "GET", "/v1/jobs", None),
        ("alice", "GET", "/v1/jobs/1", None),
        ("alice", "DELETE", "/v1/jobs/1", None),
        ("alice", "POST", "/v1/jobs/1/retry", None),
        ("writer", "POST", "/v1/search", {"collection": "kb", "query": "glaciers"}),
        ("writer", "POST", "/v1/collections/kb/purge", None),
        ("backend", "POST", "/v1/admin/keys", {"name": "x", "scopes": ["admin"]}),
    ],
)
def test_scopes_cannot_be_escalated(
    api: Client, secrets_: dict[str, str], who: str, method: str, path: str, body: Any
) -> None:
    response = api.request(method, path, json=body, headers=auth(secrets_[who]))
    assert "scope" in problem(response, 403)["detail"]


def test_a_key_sees_and_steers_only_the_jobs_it_queued(
    api: Client, secured: Services, secrets_: dict[str, str]
) -> None:
    with secured.transaction() as conn:
        other = keys.create(
            conn, KeySpec(name="writer-2", scopes=("ingest",), collections=("kb",))
        ).secret
    writer, admin = auth(secrets_["writer"]), auth(secrets_["admin"])
    body = {"documents": [{"id": "queued-1", "text": "Glaciers carve valleys."}]}
    queued = api.post("/v1/collections/kb/documents", json=body, headers=writer)
    assert queued.status_code == 202, queued.text
    job = queued.json()
    assert "writer" in job["requested_by"]
    path = f"/v1/jobs/{job['id']}"
    assert api.get(path, headers=writer).json()["id"] == job["id"]
    assert api.get(path, headers=admin).status_code == 200
    for method, where in (("GET", path), ("DELETE", path), ("POST", f"{path}/retry")):
        problem(api.request(method, where, headers=auth(other)), 404)
    assert api.get("/v1/jobs", headers=auth(other)).json()["jobs"] == []
    assert [j["id"] for j in api.get("/v1/jobs", headers=admin).json()["jobs"]] == [job["id"]]
    # The same idempotency key of another key is another key's: no conflict, its own job.
    retried = {"Idempotency-Key": "k-1"}
    first = api.post("/v1/collections/kb/documents", json=body, headers={**writer, **retried})
    again = api.post("/v1/collections/kb/documents", json=body, headers={**auth(other), **retried})
    assert first.json()["id"] != again.json()["id"]
    problem(api.get("/v1/jobs"), 401)
    problem(api.get(path, headers={"Authorization": "Bearer hs_000000000000_" + "A" * 43}), 401)
    assert api.delete(path, headers=admin).json()["state"] == "cancelled"


def test_a_collection_outside_the_allow_list_is_403(api: Client, secrets_: dict[str, str]) -> None:
    searched = api.post(
        "/v1/search",
        json={"collection": "kb", "query": "glaciers"},
        headers=auth(secrets_["elsewhere"]),
    )
    assert "'kb'" in problem(searched, 403)["detail"]
    listed = api.get("/v1/collections/kb/documents", headers=auth(secrets_["elsewhere"]))
    problem(listed, 403)
    collections = api.get("/v1/collections", headers=auth(secrets_["elsewhere"])).json()
    assert [c["name"] for c in collections] == []


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("Basic YWxpY2U6c2VjcmV0", "invalid"),
        ("Bearer hs_000000000000_" + "A" * 43, "unknown"),
    ],
)
def test_no_key_is_401_with_a_challenge(api: Client, header: str | None, reason: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = api.post("/v1/search", json={"collection": "kb", "query": "x"}, headers=headers)
    problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/v1/admin/index", "/v1/admin/index/keyword", "/v1/admin/keys"])
def test_admin_reads_need_a_key_and_answer_admins_at_once(
    api: Client, secrets_: dict[str, str], path: str
) -> None:
    problem(api.get(path), 401)
    problem(api.get(path, headers=auth(secrets_["alice"][:-4] + "AAAA")), 401)
    admin = auth(secrets_["admin"])
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: api.get(path, headers=admin), range(16)))
    assert {answer.status_code for answer in answers} == {200}
    assert all(isinstance(answer.json(), list) for answer in answers)


def test_a_wrong_secret_for_a_real_prefix_is_401(api: Client, secrets_: dict[str, str]) -> None:
    secret = secrets_["alice"]
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    response = api.get("/v1/collections", headers=auth(wrong))
    problem(response, 401)


def test_revoked_and_expired_keys_are_401_saying_which(api: Client, secured: Services) -> None:
    with secured.transaction() as conn:
        revoked = keys.create(conn, KeySpec(name="gone", scopes=("search",))).secret
        expired = keys.create(conn, KeySpec(name="old", scopes=("search",))).secret
        keys.revoke(conn, "gone")
        conn.execute(
            text("UPDATE api_keys SET expires_at = :t WHERE name = 'old'"),
            {"t": datetime.now(UTC) - timedelta(days=1)},
        )
    time.sleep(secured.settings.server.auth_cache_ttl_s + 0.1)
    assert "revoked" in problem(api.get("/v1/collections", headers=auth(revoked)), 401)["detail"]
    assert "expired" in problem(api.get("/v1/collections", headers=auth(expired)), 401)["detail"]


def test_a_revoked_key_stops_within_the_cache_ttl(api: Client, secured: Services) -> None:
    with secured.transaction() as conn:
        secret = keys.create(conn, KeySpec(name="soon-gone", scopes=("search",))).secret
    assert api.get("/v1/collections", headers=auth(secret)).status_code == 200
    with secured.transaction() as conn:
        keys.revoke(conn, "soon-gone")
    time.sleep(secured.settings.server.auth_cache_ttl_s + 0.1)
    problem(api.get("/v1/collections", headers=auth(secret)), 401)


def test_a_spent_rate_budget_is_429_and_other_keys_go_on(
    api: Client, secrets_: dict[str, str]
) -> None:
    answers = [api.get("/v1/collections", headers=auth(secrets_["limited"])) for _ in range(4)]
    assert [r.status_code for r in answers[:3]] == [200, 200, 200]
    assert [r.headers["ratelimit-remaining"] for r in answers[:3]] == ["2", "1", "0"]
    assert answers[0].headers["ratelimit-limit"] == "3"
    refused = answers[3]
    problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert api.get("/v1/collections", headers=auth(secrets_["alice"])).status_code == 200


# --- tenant tokens -----------------------------------------------------------------------------


def test_a_tenant_token_sees_its_principals_within_both_filters(
    api: Client, secrets_: dict[str, str]
) -> None:
    token = tokens.mint(secrets_["acme-alice"], ["alice"])
    assert hit_documents(search(api, token)) == visible({"alice"}, tenant="acme")
    narrower = tokens.mint(secrets_["team"], ["alice"], filter={"metadata.tenant": "globex"})
    assert hit_documents(search(api, narrower)) == visible({"alice"}, tenant="globex")
    listed = api.get("/v1/collections/kb/documents", headers=auth(narrower)).json()
    assert {d["id"] for d in listed["documents"]} == visible({"alice"}, tenant="globex")


def tampered(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = "A" if signature[5] != "A" else "B"
    return ".".join([head, payload, signature[:5] + flipped + signature[6:]])


def unsigned(secret: str) -> str:
    claims = {"principals": ["alice"], "exp": int(time.time()) + 600}
    prefix = keys.prefix_of(secret)
    return jwt.encode(claims, None, "none", headers={"kid": prefix})


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("kind", ["expired", "tampered", "none", "hs512", "wider"])
def test_bad_tenant_tokens_are_refused(api: Client, secrets_: dict[str, str], kind: str) -> None:
    secret = secrets_["alice"]
    made = {
        "expired": lambda: tokens.mint(secret, ["alice"], ttl_s=-10),
        "tampered": lambda: tampered(tokens.mint(secret, ["alice"])),
        "none": lambda: unsigned(secret),
        "hs512": lambda: jwt.encode(
            {"principals": ["alice"], "exp": int(time.time()) + 600},
            keys.signing_key(secret),
            "HS512",
            headers={"kid": keys.prefix_of(secret)},
        ),
        "wider": lambda: tokens.mint(secret, ["bob"]),
    }[kind]()
    response = api.post("/v1/search", json={"collection": "kb", "query": "x"}, headers=auth(made))
    problem(response, 403 if kind == "wider" else 401)


# --- administration ----------------------------------------------------------------------------


def test_admin_manages_keys_over_http_and_actions_are_audited(
    api: Client, secrets_: dict[str, str], secured: Services
) -> None:
    admin = auth(secrets_["admin"])
    created = api.post(
        "/v1/admin/keys",
        json={"name": "made-here", "scopes": ["search"], "principals": ["alice"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert api.get("/v1/collections", headers=auth(secret)).status_code == 200
    listed = api.get("/v1/admin/keys", headers=admin).json()
    assert "made-here" in {k["name"] for k in listed}
    assert all("secret" not in k for k in listed)
    assert api.delete("/v1/admin/keys/made-here", headers=admin).status_code == 204
    problem(api.get("/v1/collections", headers=auth(secret)), 401)

    assert api.post("/v1/collections", json={"name": "scratch"}, headers=admin).status_code == 201
    assert api.delete("/v1/collections/scratch", headers=admin).status_code == 204
    with secured.transaction() as conn:
        actions = {row.action for row in conn.execute(text("SELECT action FROM audit_log"))}
    assert {"key.created", "key.revoked", "collection.created", "collection.deleted"} <= actions


def test_feedback_is_only_for_the_key_that_searched(api: Client, secrets_: dict[str, str]) -> None:
    found = search(api, secrets_["alice"])
    body = {
        "search_id": found["search_id"],
        "kind": "click",
        "chunk_id": found["hits"][0]["chunk_id"],
    }
    problem(api.post("/v1/feedback", json=body), 401)
    wrong = secrets_["alice"][:-4] + ("AAAA" if not secrets_["alice"].endswith("AAAA") else "BBBB")
    problem(api.post("/v1/feedback", json=body, headers=auth(wrong)), 401)
    # Bob may not rate (nor learn, from 201 against 422, what) alice's search returned.
    problem(api.post("/v1/feedback", json=body, headers=auth(secrets_["bob"])), 404)
    assert api.post("/v1/feedback", json=body, headers=auth(secrets_["alice"])).status_code == 201


def test_every_route_but_the_probes_and_the_reference_needs_a_scope(api: Client) -> None:
    public = []
    for route in api.app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.opt.get("page"):
                continue  # a web page checks its viewer's key itself (tests/test_pages.py)
            if handler.opt.get("scope") is None and "OPTIONS" not in handler.http_methods:
                public.append(route.path)
    # The reference pages and the files they load are public; the probes too.
    assert {p for p in public if not p.startswith(("/docs", "/static"))} == {"/health", "/ready"}


def test_the_local_admin_key_is_kept_and_replaced_when_lost(
    secured: Services, tmp_path: Path
) -> None:
    from app.access import local

    first = local.admin_secret(tmp_path, secured.transaction)
    assert local.admin_secret(tmp_path, secured.transaction) == first
    assert (tmp_path / local.FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / local.FILE).unlink()
    second = local.admin_secret(tmp_path, secured.transaction)
    assert second != first
    with secured.transaction() as conn:
        states = {k.prefix: k.state() for k in keys.list_all(conn) if k.name == local.NAME}
    assert states == {keys.prefix_of(first): "revoked", keys.prefix_of(second): "active"}


def test_concurrent_creates_of_one_key_name_give_one_201(
    api: Client, secrets_: dict[str, str]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    body = {"name": "twin-key", "scopes": ["search"], "principals": ["alice"]}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: api.post("/v1/admin/keys", json=body, headers=auth(secrets_["admin"])),
                range(8),
            )
        )
    assert sorted(r.status_code for r in answers) == [201] + [409] * 7


def test_concurrent_deletes_by_a_key_with_principals_delete_once(
    api: Client, secrets_: dict[str, str]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    writer, admin = auth(secrets_["team-writer"]), auth(secrets_["admin"])
    body = {"documents": [{"id": "scratch", "title": "Scratch", "text": "To be deleted.",
                           "acl": ["team-a"]}]}  # fmt: skip
    made = api.post("/v1/collections/kb/documents", params={"wait": "true"}, json=body,
                    headers=admin)  # fmt: skip
    assert made.status_code in (200, 201), made.text
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(
                    lambda _: api.delete("/v1/collections/kb/documents/scratch", headers=writer),
                    range(6),
                )
            )
        assert sorted(r.status_code for r in answers) == [204] + [404] * 5
    finally:
        api.delete("/v1/collections/kb/documents/scratch", params={"purge": "true"},
                   headers=admin)  # fmt: skip
