"""Keys, callers, tenant tokens, rate limits and the audit log against the real database:
keys are created, listed, revoked and expire; a wrong secret and an unknown key fail alike; a
revoked key stops working within the cache TTL on every instance; requests narrow principals
and never widen them; filters are ANDed; forged, expired and over-wide tokens are refused;
budgets refuse the request past the limit; audit rows are written; the `hybrid keys` commands
work as installed; the documented token example works."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import text

from app import PROJECT_ROOT
from app.access import audit, keys, tokens
from app.access.authenticate import Authenticator
from app.access.caller import (
    ACT_AS,
    ADMIN,
    INGEST,
    OPEN,
    SEARCH,
    Caller,
    combined_filter,
    effective_principals,
    require_collection,
    require_scope,
)
from app.access.keys import KeySpec, NewKey
from app.access.limits import ANSWER, RateLimiter
from app.errors import ConfigError, Conflict, Forbidden, Invalid, NotFound, Unauthorized
from app.search.engine import Searcher, search
from app.search.request import SearchRequest
from app.service import Services
from app.settings import ServerSettings
from tests.conftest import make_settings
from tests.test_cli import installed
from tests.test_ingest import doc


def make_key(services: Services, name: str = "backend", **spec: Any) -> NewKey:
    spec.setdefault("scopes", (SEARCH,))
    spec.setdefault("principals", ("alice", "team-a"))
    with services.transaction() as conn:
        return keys.create(conn, KeySpec(name=name, **spec))


class Clock:
    """A timer the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gate(services: Services, clock: Clock) -> Authenticator:
    return Authenticator(required(services), timer=clock)


def required(services: Services) -> ServerSettings:
    """The server settings of the tests (`HYBRID_AUTH=off`) with authentication on."""
    return replace(services.settings.server, auth="required")


def authenticate(gate: Authenticator, services: Services, credential: str) -> Caller:
    return gate.authenticate(f"Bearer {credential}", services.transaction)


def refused(gate: Authenticator, services: Services, credential: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        authenticate(gate, services, credential)
    return caught.value


def sql(services: Services, statement: str, **params: Any) -> list[Any]:
    with services.transaction() as conn:
        result = conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


# -- keys ----------------------------------------------------------------------------------------


def test_a_key_is_created_listed_and_its_secret_never_stored(services: Services) -> None:
    created = make_key(services, collections=("kb",), rate_per_minute=60, description="Web app")
    assert re.fullmatch(rf"hs_{created.key.prefix}_[A-Za-z0-9_-]{{43}}", created.secret)
    with services.engine.connect() as conn:
        (listed,) = keys.list_all(conn)
    assert listed == created.key
    assert listed.as_json()["state"] == "active"
    assert (listed.principals, listed.scopes, listed.collections) == (
        ("alice", "team-a"),
        (SEARCH,),
        ("kb",),
    )
    ((stored, hashed),) = sql(services, "SELECT api_keys::text, secret_hash FROM api_keys")
    assert created.secret not in stored and created.secret[3:] not in stored
    assert bytes(hashed) == hashlib.sha256(created.secret.encode()).digest()
    assert created.secret not in json.dumps(listed.as_json())


def test_an_active_name_is_one_keys_until_revoked(services: Services) -> None:
    first = make_key(services)
    with pytest.raises(Conflict, match="backend"):
        make_key(services)
    with services.transaction() as conn:
        assert keys.revoke(conn, "backend").prefix == first.key.prefix
    second = make_key(services)
    with services.transaction() as conn:
        states = {k.prefix: k.state() for k in keys.list_all(conn)}
    assert states == {first.key.prefix: "revoked", second.key.prefix: "active"}


def test_revoke_by_prefix_or_name_once(services: Services) -> None:
    created = make_key(services)
    with services.transaction() as conn:
        assert keys.revoke(conn, created.key.prefix).revoked_at is not None
    with pytest.raises(Conflict, match="revoked already"), services.transaction() as conn:
        keys.revoke(conn, created.key.prefix)
    with pytest.raises(NotFound, match="nobody"), services.transaction() as conn:
        keys.revoke(conn, "nobody")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"scopes": ("read",)}, "scopes"),
        ({"scopes": ()}, "scopes"),
        ({"principals": (" ",)}, "principals"),
        ({"principals": ("x" * 257,)}, "principals"),
        ({"collections": ()}, "collections"),
        ({"filter": ["not", "an object"]}, "filter"),
        ({"rate_per_minute": 0}, "rate_per_minute"),
        ({"answer_rate_per_minute": -1}, "answer_rate_per_minute"),
        ({"expires_at": datetime.now(UTC) - timedelta(days=1)}, "expires_at"),
        ({"expires_at": datetime(2999, 1, 1)}, "expires_at"),
        ({"name": " "}, "name"),
    ],
)
def test_a_bad_key_is_refused_naming_the_field(
    services: Services, spec: dict[str, Any], field: str
) -> None:
    name = spec.pop("name", "backend")
    with pytest.raises(Invalid) as caught:
        make_key(services, name, **spec)
    assert caught.value.field == field
    assert sql(services, "SELECT count(*) FROM api_keys") == [(0,)]


# -- authentication ------------------------------------------------------------------------------


def test_a_secret_authenticates_as_its_key_and_marks_it_used(
    services: Services, gate: Authenticator
) -> None:
    created = make_key(services, collections=("kb",), filter={"metadata.team": "a"})
    caller = authenticate(gate, services, created.secret)
    assert (caller.key_id, caller.prefix, caller.name) == (
        created.key.id,
        created.key.prefix,
        "backend",
    )
    assert caller.principals == ("alice", "team-a") and caller.scopes == {SEARCH}
    assert (caller.collections, caller.filter, caller.act_as) == (
        ("kb",),
        {"metadata.team": "a"},
        False,
    )
    assert sql(services, "SELECT last_used_at IS NOT NULL FROM api_keys") == [(True,)]


def test_a_wrong_secret_and_an_unknown_key_fail_alike(
    services: Services, gate: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = make_key(services)
    other_prefix, unknown = keys.new_secret()
    wrong = created.secret[:-8] + ("A" if created.secret[-8] != "A" else "B") + created.secret[-7:]
    compared: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    failures = [refused(gate, services, secret) for secret in (wrong, unknown)]
    assert [(f.reason, f.message, f.status) for f in failures] == [
        ("unknown", "unknown API key: no key has this secret", 401)
    ] * 2
    assert [f.prefix for f in failures] == [created.key.prefix, other_prefix]
    assert compared == [(32, 32), (32, 32)]
    assert sql(services, "SELECT last_used_at FROM api_keys") == [(None,)]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dXNlcjpwYXNz", "invalid"),
        ("Bearer", "invalid"),
        ("Bearer hs_short", "unknown"),
        ("Bearer not-a-token", "invalid"),
    ],
)
def test_missing_and_malformed_credentials(
    services: Services, gate: Authenticator, header: str | None, reason: str
) -> None:
    with pytest.raises(Unauthorized) as caught:
        gate.authenticate(header, services.transaction)
    assert (caught.value.reason, caught.value.field) == (reason, "authorization")
    challenge = 'Bearer realm="hybrid-search"'
    expected = challenge if reason == "missing" else f'{challenge}, error="invalid_token"'
    assert caught.value.challenge == expected


def test_an_expired_key_is_refused_as_expired(services: Services, gate: Authenticator) -> None:
    created = make_key(services, expires_at=datetime.now(UTC) + timedelta(days=1))
    sql(services, "UPDATE api_keys SET expires_at = now() - interval '1 second'")
    assert refused(gate, services, created.secret).reason == "expired"
    with services.transaction() as conn:
        assert [k.state() for k in keys.list_all(conn)] == ["expired"]


def test_a_revoked_key_stops_working_on_every_instance_within_the_cache_ttl(
    services: Services, clock: Clock
) -> None:
    created = make_key(services)
    instances = [Authenticator(required(services), timer=clock) for _ in range(2)]
    for instance in instances:
        authenticate(instance, services, created.secret)
    with services.transaction() as conn:
        keys.revoke(conn, "backend")
    clock.now += services.settings.server.auth_cache_ttl_s - 0.1
    for instance in instances:
        authenticate(instance, services, created.secret)
    clock.now += 0.2
    assert [refused(i, services, created.secret).reason for i in instances] == ["revoked"] * 2


def test_a_revoked_key_stops_working_in_real_time(services: Services) -> None:
    gate = Authenticator(replace(required(services), auth_cache_ttl_s=0.3))
    created = make_key(services)
    authenticate(gate, services, created.secret)
    with services.transaction() as conn:
        keys.revoke(conn, created.key.prefix)
    time.sleep(0.4)
    assert refused(gate, services, created.secret).reason == "revoked"


def test_forget_drops_a_key_from_the_cache_at_once(services: Services, gate: Authenticator) -> None:
    created = make_key(services)
    authenticate(gate, services, created.secret)
    with services.transaction() as conn:
        keys.revoke(conn, "backend")
    gate.forget(created.key.prefix)
    assert refused(gate, services, created.secret).reason == "revoked"


def test_with_auth_off_every_request_is_open(services: Services) -> None:
    gate = Authenticator(replace(services.settings.server, auth="off"))
    assert gate.authenticate(None, services.transaction) is OPEN
    assert OPEN.act_as and effective_principals(OPEN, ["anyone"]) == ["anyone"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HYBRID_AUTH": "off", "HYBRID_ENV": "production"}, "HYBRID_AUTH=off is refused"),
        ({"HYBRID_AUTH": "maybe"}, "HYBRID_AUTH: expected one of required, off"),
        ({"HYBRID_AUTH_CACHE_TTL": "0"}, "HYBRID_AUTH_CACHE_TTL must be positive"),
        ({"HYBRID_TENANT_TOKEN_MAX_TTL": "0"}, "HYBRID_TENANT_TOKEN_MAX_TTL must be at least 1"),
    ],
)
def test_auth_settings_are_checked_at_start_up(
    database_url: str, data_dir: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_settings(database_url, data_dir, **environ)


# -- what a caller may do ------------------------------------------------------------------------

KEY = Caller(
    key_id=1,
    prefix="0123456789ab",
    name="web",
    principals=("alice", "Team A"),
    scopes=frozenset({SEARCH}),
    collections=("kb",),
    filter={"metadata.team": "a"},
)


def test_a_request_may_narrow_the_principals_of_its_key() -> None:
    assert effective_principals(KEY, None) == ["alice", "Team A"]
    assert effective_principals(KEY, ["Team A"]) == ["Team A"]
    assert effective_principals(KEY, ["alice", "alice"]) == ["alice"]


@pytest.mark.parametrize("other", ["bob", "Alice", "alice ", "team a", "Team  A", "*"])
def test_a_request_never_widens_the_principals_of_its_key(other: str) -> None:
    with pytest.raises(Forbidden) as caught:
        effective_principals(KEY, ["alice", other])
    assert repr(other) in caught.value.message and caught.value.field == "principals"


def test_an_empty_principal_list_is_a_bad_request() -> None:
    with pytest.raises(Invalid, match="at least one principal") as caught:
        effective_principals(KEY, [])
    assert caught.value.status == 400


def test_a_key_that_may_act_as_names_anyone() -> None:
    backend = replace(KEY, principals=(), scopes=frozenset({SEARCH, ACT_AS}))
    assert effective_principals(backend, ["bob", "Team B"]) == ["bob", "Team B"]
    assert effective_principals(backend, None) is None


def test_scopes_and_collections_are_required_as_held() -> None:
    require_scope(KEY, SEARCH)
    require_collection(KEY, "kb")
    with pytest.raises(Forbidden, match="lacks the 'ingest' scope; it has search"):
        require_scope(KEY, INGEST)
    with pytest.raises(Forbidden, match="may not use collection 'other'"):
        require_collection(KEY, "other")
    require_collection(replace(KEY, collections=None), "other")


def test_filters_are_anded() -> None:
    request = {"metadata.lang": "en"}
    assert combined_filter(KEY, request) == {"and": [{"metadata.team": "a"}, request]}
    assert combined_filter(KEY, None) == {"metadata.team": "a"}
    assert combined_filter(replace(KEY, filter=None), request) == request
    assert combined_filter(replace(KEY, filter=None), {}) is None


def test_a_key_filter_limits_every_search_made_with_it(services: Services) -> None:
    services.ingestor.ingest(
        "kb",
        [
            doc("a-en", "Cats purr softly.", metadata={"team": "a", "lang": "en"}),
            doc("a-de", "Cats purr softly too.", metadata={"team": "a", "lang": "de"}),
            doc("b-en", "Cats purr softly as well.", metadata={"team": "b", "lang": "en"}),
        ],
        create=True,
    )

    def found(request_filter: dict[str, Any] | None) -> list[str]:
        request = SearchRequest(
            query="cats purr", mode="keyword", filter=combined_filter(KEY, request_filter)
        )
        with services.transaction() as conn:
            result = search(
                conn,
                "kb",
                request,
                Searcher(settings=services.settings.search, embeddings=services.embeddings),
            )
        return sorted(hit.document_id for hit in result.hits)

    assert found(None) == ["a-de", "a-en"]
    assert found({"metadata.lang": "en"}) == ["a-en"]
    assert found({"or": [{"metadata.team": "b"}, {"metadata.lang": "de"}]}) == ["a-de"]


# -- tenant tokens -------------------------------------------------------------------------------


@pytest.fixture
def parent(services: Services) -> NewKey:
    return make_key(services, collections=("kb",), filter={"metadata.team": "a"})


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_tenant_token_acts_for_its_end_user_within_its_key(
    services: Services, gate: Authenticator, parent: NewKey
) -> None:
    token = tokens.mint(parent.secret, ["alice"], filter={"metadata.lang": "en"}, subject="u1")
    assert jwt.get_unverified_header(token) == {
        "alg": "HS256",
        "typ": "JWT",
        "kid": parent.key.prefix,
    }
    caller = authenticate(gate, services, token)
    assert (caller.key_id, caller.principals, caller.scopes) == (
        parent.key.id,
        ("alice",),
        {SEARCH},
    )
    assert caller.filter == {"and": [{"metadata.team": "a"}, {"metadata.lang": "en"}]}
    assert (caller.collections, caller.subject, caller.act_as) == (("kb",), "u1", False)
    with pytest.raises(Forbidden):
        effective_principals(caller, ["team-a"])


def test_an_expired_token_is_refused(
    services: Services, gate: Authenticator, parent: NewKey
) -> None:
    token = tokens.mint(parent.secret, ["alice"], ttl_s=-5)
    assert refused(gate, services, token).reason == "expired"


def test_a_token_without_exp_or_living_too_long_is_refused(
    services: Services, gate: Authenticator, parent: NewKey
) -> None:
    key = keys.signing_key(parent.secret)
    headers = {"kid": parent.key.prefix}
    endless = jwt.encode({"principals": ["alice"]}, key, "HS256", headers=headers)
    assert 'missing the "exp" claim' in refused(gate, services, endless).message
    too_long = tokens.mint(parent.secret, ["alice"], ttl_s=2 * 3600)
    assert "HYBRID_TENANT_TOKEN_MAX_TTL" in refused(gate, services, too_long).message


def test_a_token_changed_by_one_byte_is_refused(
    services: Services, gate: Authenticator, parent: NewKey
) -> None:
    token = tokens.mint(parent.secret, ["alice"])
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    widened = b64({**claims, "principals": ["alicf"]})
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    for forged in (f"{header}.{widened}.{signature}", f"{header}.{payload}.{flipped}"):
        failure = refused(gate, services, forged)
        assert (failure.reason, failure.message) == (
            "invalid",
            "tenant token: Signature verification failed",
        )


@pytest.mark.parametrize("algorithm", ["none", "RS256", "HS512", "HS384"])
def test_a_token_of_another_algorithm_is_refused(
    services: Services, gate: Authenticator, parent: NewKey, algorithm: str
) -> None:
    claims = {"principals": ["alice"], "exp": int(time.time()) + 60}
    header = {"alg": algorithm, "typ": "JWT", "kid": parent.key.prefix}
    signing_input = f"{b64(header)}.{b64(claims)}"
    # HS512 and HS384 signed with the right key, the others with whatever they would carry.
    digest = {"HS512": hashlib.sha512, "HS384": hashlib.sha384}.get(algorithm)
    signature = (
        hmac.new(keys.signing_key(parent.secret), signing_input.encode(), digest).digest()
        if digest
        else b""
        if algorithm == "none"
        else b"\x01" * 256
    )
    failure = refused(gate, services, f"{signing_input}.{b64(signature)}")
    assert (failure.reason, failure.message) == (
        "invalid",
        f"tenant token: expected alg HS256, got {algorithm!r}",
    )


def test_a_token_wider_than_its_key_is_forbidden(
    services: Services, gate: Authenticator, parent: NewKey
) -> None:
    token = tokens.mint(parent.secret, ["alice", "bob"])
    with pytest.raises(Forbidden, match="'bob' is not one of the principals"):
        authenticate(gate, services, token)
    empty = tokens.mint(parent.secret, [])
    assert "non-empty list" in refused(gate, services, empty).message


def test_a_token_of_a_key_that_may_act_as_names_anyone(
    services: Services, gate: Authenticator
) -> None:
    backend = make_key(services, "web", principals=(), scopes=(SEARCH, ACT_AS))
    caller = authenticate(gate, services, tokens.mint(backend.secret, ["bob"]))
    assert (caller.principals, caller.act_as) == (("bob",), False)


def test_a_token_of_a_revoked_key_or_of_a_key_without_search_is_refused(
    services: Services, gate: Authenticator, parent: NewKey
) -> None:
    token = tokens.mint(parent.secret, ["alice"])
    with services.transaction() as conn:
        keys.revoke(conn, "backend")
    assert refused(gate, services, token).reason == "revoked"
    ingester = make_key(services, "loader", scopes=(INGEST, ADMIN))
    with pytest.raises(Forbidden, match="lacks the 'search' scope"):
        authenticate(gate, services, tokens.mint(ingester.secret, ["alice"]))


def test_a_token_of_an_unknown_key_is_refused(services: Services, gate: Authenticator) -> None:
    _, secret = keys.new_secret()
    assert refused(gate, services, tokens.mint(secret, ["alice"])).reason == "unknown"


def test_the_documented_minting_example_works(
    services: Services, gate: Authenticator, parent: NewKey
) -> None:
    page = (PROJECT_ROOT / "docs" / "concepts" / "access-control.md").read_text()
    section = page.split("## Tenant tokens", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) <= 10
    namespace: dict[str, Any] = {}
    exec(example.replace("hs_...", parent.secret), namespace)
    caller = authenticate(gate, services, namespace["token"])
    assert caller.principals == ("alice",) and caller.subject == "alice@example.com"


# -- rate limits ---------------------------------------------------------------------------------


def test_a_burst_past_the_limit_is_refused_with_its_reset() -> None:
    limiter = RateLimiter()
    key, other = replace(KEY, rate_per_minute=3), replace(KEY, key_id=2, rate_per_minute=3)
    decisions = [limiter.admit(key) for _ in range(4)]
    assert [(d.allowed, d.remaining) for d in decisions if d] == [
        (True, 2), (True, 1), (True, 0), (False, 0),
    ]  # fmt: skip
    denied = decisions[-1]
    assert denied is not None and 1 <= denied.reset_s <= 60 and denied.limit == 3
    assert denied.headers()["Retry-After"] == str(denied.reset_s)
    assert "Retry-After" not in decisions[0].headers()  # type: ignore[union-attr]
    refusal = denied.refusal()
    assert (refusal.status, refusal.retry_after) == (429, denied.reset_s)
    allowed = limiter.admit(other)
    assert allowed is not None and (allowed.allowed, allowed.remaining) == (True, 2)


def test_answers_have_a_budget_of_their_own() -> None:
    limiter = RateLimiter()
    key = replace(KEY, rate_per_minute=10, answer_rate_per_minute=1)
    first, second = limiter.admit(key, ANSWER), limiter.admit(key, ANSWER)
    assert first is not None and (first.allowed, first.limit, first.remaining) == (True, 1, 0)
    assert second is not None and (second.allowed, second.limit) == (False, 1)
    search = limiter.admit(key)
    assert search is not None and (search.allowed, search.limit, search.remaining) == (True, 10, 8)


def test_a_key_without_a_rate_is_not_limited() -> None:
    limiter = RateLimiter()
    assert limiter.admit(KEY) is None and limiter.admit(OPEN, ANSWER) is None


# -- audit ---------------------------------------------------------------------------------------


def test_key_changes_and_actions_are_audited(services: Services, gate: Authenticator) -> None:
    admin = make_key(services, "ops", scopes=(ADMIN,))
    by = authenticate(gate, services, admin.secret)
    with services.transaction() as conn:
        created = keys.create(conn, KeySpec(name="web", scopes=(SEARCH,)), by=by).key
        keys.revoke(conn, "web", by=by)
        audit.record(conn, audit.COLLECTION_DELETED, by, "kb", {"documents": 3})
    logged = sql(
        services,
        "SELECT a.action, k.name, a.target, a.detail FROM audit_log a "
        "LEFT JOIN api_keys k ON k.id = a.key_id ORDER BY a.id",
    )
    assert [tuple(r) for r in logged] == [
        ("key.created", None, admin.key.prefix, {"name": "ops", "scopes": ["admin"]}),
        ("key.created", "ops", created.prefix, {"name": "web", "scopes": ["search"]}),
        ("key.revoked", "ops", created.prefix, {"name": "web"}),
        ("collection.deleted", "ops", "kb", {"documents": 3}),
    ]


def test_denied_requests_are_counted_per_key_and_reason(services: Services) -> None:
    created = make_key(services)
    for prefix, reason in [
        (created.key.prefix, "forbidden"),
        (created.key.prefix, "forbidden"),
        (created.key.prefix, "rate-limited"),
        ("ffffffffffff", "unknown"),
        (None, "missing"),
        (None, "missing"),
    ]:
        with services.transaction() as conn:
            audit.record_denied(conn, prefix, reason)
    counted = sql(
        services,
        "SELECT key_id, target, sum(count) FROM audit_log WHERE action = 'request.denied' "
        "GROUP BY key_id, target ORDER BY key_id, target",
    )
    assert [tuple(r) for r in counted] == [
        (created.key.id, "forbidden", 2),
        (created.key.id, "rate-limited", 1),
        (None, "missing", 2),
        (None, "unknown", 1),
    ]
    assert sql(services, "SELECT count(*) FROM audit_log WHERE target = 'forbidden'") == [(1,)]


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def env(services: Services, database_url: str, data_dir: Path) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "HYBRID_DATA_DIR": str(data_dir)}


def test_keys_commands_create_list_and_revoke(
    env: dict[str, str], services: Services, gate: Authenticator
) -> None:
    done = installed(
        env, "keys", "create", "web app", "--principal", "alice", "--principal", "Team A",
        "--scope", "search", "--collection", "kb", "--filter", '{"metadata.team": "a"}',
        "--rate", "60", "--answer-rate", "5", "--expires", "30", "--description", "Portal",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert {"id", "prefix", "secret"} <= created.keys()
    caller = authenticate(gate, services, created["secret"])
    assert (caller.principals, caller.collections) == (("alice", "Team A"), ("kb",))
    assert (caller.rate_per_minute, caller.answer_rate_per_minute) == (60, 5)

    plain = installed(env, "keys", "create", "ops", "--scope", "admin")
    assert plain.returncode == 0, plain.stderr
    assert re.search(r"^hs_[0-9a-f]{12}_\S{43}$", plain.stdout, re.MULTILINE)

    listed = installed(env, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [k["name"] for k in json.loads(listed.stdout)] == ["web app", "ops"]
    assert "hs_" not in listed.stdout and "secret" not in listed.stdout

    revoked = installed(env, "keys", "revoke", "web app")
    assert revoked.returncode == 0, revoked.stderr
    assert created["prefix"] in revoked.stdout
    table = installed(env, "keys", "list")
    assert created["prefix"] in table.stdout and "revoked" in table.stdout
    assert "hs_" not in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scope", "search", "--filter", '{"metadata.x": {"near": 1}}'], "--filter"),
        (["--scope", "search", "--filter", "[1]"], "--filter: expected a JSON object"),
        (["--scope", "search", "--principal", " "], "principals"),
    ],
)
def test_keys_create_refuses_bad_options_in_one_line(
    env: dict[str, str], args: list[str], message: str
) -> None:
    done = installed(env, "keys", "create", "web", *args)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr


def test_keys_revoke_of_an_unknown_key_says_so(env: dict[str, str]) -> None:
    done = installed(env, "keys", "revoke", "nobody")
    assert (done.returncode, done.stderr.strip()) == (
        1,
        "error: no key with the prefix 'nobody', nor an unrevoked key of that name",
    )
