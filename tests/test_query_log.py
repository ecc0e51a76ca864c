"""The query log over real HTTP and a real PostgreSQL: every search and answer (streamed too)
is recorded with its id, stages and hits; failures are recorded with their status; a full queue
drops without blocking; a writer whose database is down never fails a search; retention drops
whole days; the analyst role reads the views and nothing else; redaction; feedback checked
against what its search returned; and the users' judgments exported and scored by
`hybrid eval`."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from app import redact
from app.db.engine import make_engine
from app.errors import NotFound
from app.querylog import feedback
from app.querylog.log import Entry, QueryLog, principals_hash
from app.service import Services
from tests.conftest import own_services, serving
from tests.test_api import Client, ingest
from tests.test_cli import env as env
from tests.test_cli import hybrid
from tests.test_search_api import search

BASE_TABLES = ("chunks", "documents", "sections", "api_keys", "query_log", "feedback",
               "query_log_salt", "collections")  # fmt: skip
VIEWS = ("searches", "searches_daily", "queries_daily", "feedback", "clicks_daily",
         "answers_daily", "keys_daily")  # fmt: skip


@pytest.fixture
def notes(client: Client) -> Client:
    assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
    response = ingest(
        client,
        {"id": "cats", "title": "Cats", "text": "Cats purr and sleep all day."},
        {"id": "dogs", "title": "Dogs", "text": "Dogs bark at the postman and at cats."},
        {"id": "owls", "title": "Owls", "text": "Owls hunt mice at night.", "acl": ["lab"]},
    )
    assert response.status_code == 201, response.text
    return client


def logged(services: Services) -> list[Any]:
    services.query_log.flush()
    with services.engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM query_log ORDER BY logged_at")).mappings())


def send(client: Client, **body: Any) -> Any:
    return client.post("/v1/feedback", json=body)


# -- the log -----------------------------------------------------------------------------------


def test_every_search_is_logged_under_the_id_it_answered_with(
    notes: Client, services: Services
) -> None:
    posted = search(notes, query="cats", k=2, principals=["lab"])
    got = notes.get("/v1/search", params={"collection": "kb", "q": "night owls"}).json()
    first, second = logged(services)
    assert (str(first["id"]), str(second["id"])) == (posted["search_id"], got["search_id"])
    assert first["kind"] == "search" and first["collection"] == "kb" and first["query"] == "cats"
    assert (first["k"], first["page_offset"], first["status"]) == (2, 0, 200)
    assert first["hits"] == len(posted["hits"]) == 2
    assert first["chunk_ids"] == [h["chunk_id"] for h in posted["hits"]]
    assert first["document_ids"] == [h["document_id"] for h in posted["hits"]]
    assert first["mode"] == posted["mode"] and first["cache"] == "computed"
    assert first["embed_ms"] > 0 and first["sql_ms"] > 0
    assert first["total_ms"] >= first["embed_ms"] + first["sql_ms"]
    # The principals only as a keyed hash, the same for the same set.
    assert first["principals_hash"] and "lab" not in first["principals_hash"]
    again = search(notes, query="cats", k=2, principals=["lab"])
    assert logged(services)[-1]["principals_hash"] == first["principals_hash"]
    assert logged(services)[-1]["cache"] == "cached" and again["search_id"] != posted["search_id"]


def test_a_refused_search_is_logged_with_its_status(notes: Client, services: Services) -> None:
    assert notes.post("/v1/search", json={"collection": "none", "query": "x"}).status_code == 404
    assert (
        notes.post("/v1/search", json={"collection": "kb", "query": "x", "k": 0}).status_code == 400
    )
    missing, invalid = logged(services)
    assert (missing["status"], missing["collection"]) == (404, "none")
    # The kind of error and its field, never its message (which may quote what was asked).
    assert missing["error"] == "Not found (collection)"
    assert invalid["status"] == 400 and invalid["hits"] == 0 and invalid["total_ms"] > 0


def test_answers_are_logged_streamed_or_not(notes: Client, services: Services) -> None:
    answered = notes.post("/v1/answer", json={"collection": "kb", "query": "what do cats do"})
    assert answered.status_code == 200, answered.text
    body = answered.json()
    events = []
    with notes.stream(
        "POST", "/v1/answer", json={"collection": "kb", "query": "who barks", "stream": True}
    ) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data:")]
        events = [json.loads(line.removeprefix("data:")) for line in lines]
    plain, stream = logged(services)
    assert str(plain["id"]) == body["search_id"] and str(stream["id"]) == events[0]["search_id"]
    for row, question in ((plain, "what do cats do"), (stream, "who barks")):
        assert row["kind"] == "answer" and row["query"] == question and row["status"] == 200
        # No chat model here: an extractive answer, which is no fallback.
        assert row["extractive"] is True and row["fallback"] is False and row["model"] is None
        assert row["hits"] > 0 and row["chunk_ids"] and row["generation_ms"] is not None
    assert plain["cited_chunk_ids"] == [
        chunk for source in body["citations"] for chunk in source["chunk_ids"]
    ]


def test_a_hostile_query_is_cut_and_redacted_in_linear_time(
    notes: Client, services: Services
) -> None:
    started = time.perf_counter()
    answer = notes.post("/v1/search", json={"collection": "kb", "query": "a" * 60_000})
    assert answer.status_code == 400 and time.perf_counter() - started < 5
    (row,) = logged(services)
    assert row["status"] == 400 and row["query"] == "a" * 2000
    assert row["error"] == "Invalid input (query)"


def test_filter_values_are_redacted_too(notes: Client, services: Services) -> None:
    search(notes, query="cats", filter={"metadata.owner": "jane@example.org"})
    assert logged(services)[-1]["filter"] == {"metadata.owner": "[email]"}


def test_an_entry_the_database_refuses_loses_only_itself(services: Services) -> None:
    log = QueryLog(services.engine, replace(services.settings.query_log, mode="on"), redact.builtin)
    for asked in ("one", "two\x00", "three", "four"):
        log.record(Entry(kind="search", collection="kb", query=asked, status=200, total_ms=1))
    assert log.flush() == 3 and log.failed == 1
    assert sorted(row["query"] for row in logged(services)) == ["four", "one", "three"]


def test_the_writer_makes_the_days_it_needs_at_start(services: Services) -> None:
    today = datetime.now(UTC).date()
    with services.engine.begin() as conn:
        end = today + timedelta(days=200)
        conn.execute(text("SELECT query_log_drop_before(:end)"), {"end": end})
    assert partition_days(services) == []
    log = QueryLog(services.engine, services.settings.query_log, redact.builtin)
    log.start()
    try:
        deadline = time.monotonic() + 10
        while not partition_days(services) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        log.close()
    assert partition_days(services) == [today + timedelta(days=n) for n in range(-1, 8)]


def test_a_full_queue_drops_and_counts_without_blocking(services: Services) -> None:
    settings = replace(services.settings.query_log, queue=2)
    log = QueryLog(services.engine, settings, redact.builtin)
    started = time.perf_counter()
    for i in range(1000):
        log.record(Entry(kind="search", collection="kb", query=f"q{i}", status=200, total_ms=1))
    assert time.perf_counter() - started < 1.0
    assert (log.dropped, log.waiting) == (998, 2)
    assert log.flush() == 2 and log.written == 2
    assert [row["query"] for row in logged(services)] == ["q0", "q1"]


def test_a_writer_whose_database_is_down_never_fails_a_search(
    database_url: str, data_dir: Path
) -> None:
    with own_services(database_url, data_dir) as own:
        down = make_engine("postgresql+psycopg://nobody@127.0.0.1:9/none", own.settings.database)
        own.query_log = QueryLog(down, own.settings.query_log, redact.builtin)
        with serving(own) as client:
            assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
            docs = [{"id": "a", "text": "Cats purr."}]
            assert client.post(
                "/v1/collections/kb/documents?wait=true", json={"documents": docs}
            ).is_success
            for _ in range(5):
                response = client.post("/v1/search", json={"collection": "kb", "query": "cats"})
                assert response.status_code == 200 and response.json()["search_id"]
        own.query_log.close()
        assert own.query_log.written == 0 and own.query_log.failed >= 5
        with own.engine.begin() as conn:
            conn.execute(text("TRUNCATE collections, query_log RESTART IDENTITY CASCADE"))


def test_retention_drops_whole_days_and_days_ahead_are_made(services: Services) -> None:
    log = services.query_log
    today = datetime.now(UTC).date()
    try:
        later = datetime.now(UTC) + timedelta(days=100)
        made, dropped = log.maintain(today=later)
        assert made == 9 and dropped >= 9  # yesterday to a week ahead, now and 100 days on
        days = partition_days(services)
        cutoff = later.date() - timedelta(days=log.settings.retention_days)
        assert min(days) >= cutoff and max(days) == later.date() + timedelta(days=7)
    finally:
        with services.engine.begin() as conn:  # back to the days of today
            conn.execute(
                text("SELECT query_log_drop_before(:end)"), {"end": today + timedelta(days=200)}
            )
        log.maintain()
    assert partition_days(services) == [today + timedelta(days=n) for n in range(-1, 8)]


def partition_days(services: Services) -> list[Any]:
    with services.engine.connect() as conn:
        names = conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST('query_log' AS regclass)"
            )
        ).scalars()
        return sorted(datetime.strptime(name[-8:], "%Y%m%d").date() for name in names)


# -- the analyst -------------------------------------------------------------------------------


def test_the_analyst_reads_the_views_and_nothing_else(notes: Client, services: Services) -> None:
    search(notes, query="cats")
    services.query_log.flush()
    for table in BASE_TABLES:
        with (
            pytest.raises(ProgrammingError, match="permission denied"),
            as_analyst(services) as conn,
        ):
            conn.execute(text(f"SELECT count(*) FROM {table}"))
    for view in VIEWS:
        with as_analyst(services) as conn:
            conn.execute(text(f"SELECT count(*) FROM analytics.{view}")).scalar_one()
    with as_analyst(services) as conn:
        requests = conn.execute(
            text("SELECT sum(requests) FROM analytics.searches_daily WHERE collection = 'kb' "
                 "AND mode IS NULL")
        ).scalar_one()  # fmt: skip
    assert requests == 1


def test_views_added_later_are_the_analysts_and_the_partition_functions_are_not(
    services: Services,
) -> None:
    with services.engine.begin() as conn:
        conn.execute(text("CREATE VIEW analytics.later AS SELECT 1 AS one"))
    try:
        with as_analyst(services) as conn:
            assert conn.execute(text("SELECT one FROM analytics.later")).scalar_one() == 1
        for call in ("query_log_drop_before(CAST('2000-01-01' AS date))",
                     "query_log_add_partitions(CAST('2000-01-01' AS date), "
                     "CAST('2000-01-02' AS date))"):  # fmt: skip
            with (
                pytest.raises(ProgrammingError, match="permission denied"),
                as_analyst(services) as conn,
            ):
                conn.execute(text(f"SELECT {call}"))
    finally:
        with services.engine.begin() as conn:
            conn.execute(text("DROP VIEW analytics.later"))


def as_analyst(services: Services) -> Any:
    class Analyst:
        def __enter__(self) -> Any:
            self.context = services.engine.begin()
            conn = self.context.__enter__()
            conn.execute(text("SET LOCAL ROLE hybrid_analyst"))
            return conn

        def __exit__(self, *exc: Any) -> None:
            self.context.__exit__(*exc)

    return Analyst()


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("mail jane.doe+x@example.co.uk today", "mail [email] today"),
        ("card 4111 1111 1111 1111 lost", "card [card] lost"),
        ("card 4111-1111-1111-1112 lost", "card 4111-1111-1111-1112 lost"),  # not Luhn-valid
        ("call +44 20 7946 0958 or (555) 123-4567", "call [phone] or [phone]"),
        ("ssn 078-05-1120", "ssn [id]"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN [iban] please"),
        ("order 12345678 shipped", "order [number] shipped"),
        *(
            (kept, kept)
            for kept in ("released 2024-05-01 at 10:30 for $1,299.00, v3.11.4", "in 05/01/2024")
        ),
        ("how does rank fusion work", "how does rank fusion work"),
    ],
)  # fmt: skip
def test_the_built_in_redactor(given: str, kept: str) -> None:
    assert redact.builtin(given) == kept


def shout(value: str) -> str:
    """A redactor of its own, named by HYBRID_REDACTOR in a test."""
    return value.upper()


def test_queries_are_redacted_before_they_are_stored(notes: Client, services: Services) -> None:
    search(notes, query="cats of jane@example.org")
    assert logged(services)[-1]["query"] == "cats of [email]"


def test_a_redactor_of_its_own_and_redaction_at_ingest(database_url: str, data_dir: Path) -> None:
    with own_services(
        database_url,
        data_dir,
        HYBRID_REDACTOR="tests.test_query_log:shout",
        HYBRID_INGEST_REDACT="true",
        HYBRID_QUERY_LOG="redacted",
    ) as own:
        assert own.query_log.redact("cats") == "CATS"
        own.ingestor.ingest("kb", [doc_with("Mail jane@example.org")], create=True)
        with own.engine.begin() as conn:
            stored = conn.execute(text("SELECT text FROM chunks")).scalar_one()
            conn.execute(text("TRUNCATE collections RESTART IDENTITY CASCADE"))
        assert stored == "MAIL JANE@EXAMPLE.ORG"


def doc_with(body: str) -> Any:
    from app.ingest.model import Block, SourceDocument

    return SourceDocument(external_id="a", title="", blocks=[Block(body)])


def test_with_the_log_off_nothing_is_recorded(database_url: str, data_dir: Path) -> None:
    with own_services(database_url, data_dir, HYBRID_QUERY_LOG="off") as own:
        own.query_log.record(
            Entry(kind="search", collection="kb", query="x", status=200, total_ms=1)
        )
        assert own.query_log.waiting == 0 and own.query_log.flush() == 0


# -- feedback ----------------------------------------------------------------------------------


def test_feedback_is_checked_against_what_its_search_returned(
    notes: Client, services: Services
) -> None:
    found = search(notes, query="cats", k=2)
    sid, hit = found["search_id"], found["hits"][0]
    clicked = send(notes, search_id=sid, kind="click", chunk_id=hit["chunk_id"], position=1)
    assert clicked.status_code == 201, clicked.text
    assert send(notes, search_id=sid, kind="helpful", document_id=hit["document_id"]).is_success
    cases = [
        ({"search_id": str(uuid.uuid4()), "kind": "click", "chunk_id": 1}, 404, "search_id"),
        ({"search_id": "not-a-uuid", "kind": "click", "chunk_id": 1}, 400, "search_id"),
        ({"search_id": sid, "kind": "click", "chunk_id": 999_999}, 422, "chunk_id"),
        ({"search_id": sid, "kind": "click", "document_id": "owls"}, 422, "document_id"),
        ({"search_id": sid, "kind": "click"}, 400, "chunk_id"),
        ({"search_id": sid, "kind": "thumbs_up"}, 422, "kind"),
        ({"search_id": sid, "kind": "liked", "chunk_id": 1}, 400, "kind"),
        ({"search_id": sid, "kind": "click", "chunk_id": 1, "extra": 1}, 400, "extra"),
    ]
    for body, status, field in cases:
        answer = send(notes, **body)
        assert answer.status_code == status, (body, answer.text)
        assert field in answer.text, (body, answer.text)
    with services.engine.connect() as conn:
        kinds = conn.execute(text("SELECT kind FROM feedback ORDER BY id")).scalars().all()
    assert kinds == ["click", "helpful"]


def test_answers_get_thumbs_with_a_comment(notes: Client, services: Services) -> None:
    answer = notes.post("/v1/answer", json={"collection": "kb", "query": "what do cats do"})
    sid = answer.json()["search_id"]
    rated = send(notes, search_id=sid, kind="thumbs_down", comment="wrong, ask me@example.org")
    assert rated.status_code == 201, rated.text
    assert send(notes, search_id=sid, kind="thumbs_up", chunk_id=1).status_code == 400
    with services.engine.connect() as conn:
        comment = conn.execute(text("SELECT comment FROM feedback")).scalar_one()
    assert comment == "wrong, ask [email]"
    # Up twice after the down: the answer counts one thumb, its last.
    for _ in range(2):
        assert send(notes, search_id=sid, kind="thumbs_up").status_code == 201
    services.query_log.flush()
    with as_analyst(services) as conn:
        day = conn.execute(
            text("SELECT answers, thumbs_up, thumbs_down, feedback_score "
                 "FROM analytics.answers_daily WHERE collection = 'kb'")
        ).one()  # fmt: skip
    assert tuple(day) == (1, 1, 0, 1)


def test_feedback_on_a_search_of_another_key_is_not_found(services: Services) -> None:
    entry = Entry(kind="search", collection="kb", query="x", status=200, total_ms=1, key_id=1,
                  chunk_ids=[5], document_ids=["d"])  # fmt: skip
    services.query_log.record(entry)
    given = feedback.Feedback(search_id=str(entry.id), kind="click", chunk_id=5)
    with services.engine.begin() as conn:
        with pytest.raises(NotFound):
            feedback.record(conn, services.query_log, given, 2, admin=False)
        assert feedback.record(conn, services.query_log, given, 1, admin=False)["id"]
        assert feedback.record(conn, services.query_log, given, 2, admin=True)["id"]


def test_feedback_is_for_the_end_user_who_searched(services: Services) -> None:
    """Tenant tokens share their key's id: the end user (`sub`) must match too, whether the
    search is still in memory or only in the table."""
    entry = Entry(kind="search", collection="kb", query="x", status=200, total_ms=1, key_id=1,
                  subject="alice@example.com", chunk_ids=[5], document_ids=["d"])  # fmt: skip
    services.query_log.record(entry)
    given = feedback.Feedback(search_id=str(entry.id), kind="click", chunk_id=5)
    elsewhere = QueryLog(services.engine, services.settings.query_log, redact.builtin)
    for log in (services.query_log, elsewhere):
        services.query_log.flush()
        with services.engine.begin() as conn:
            with pytest.raises(NotFound):
                feedback.record(conn, log, given, 1, admin=False, subject="bob@example.com")
            with pytest.raises(NotFound):
                feedback.record(conn, log, given, 1, admin=False)
            stored = feedback.record(conn, log, given, 1, admin=False, subject="alice@example.com")
            assert stored["id"]
    assert "alice" not in str(logged(services)[-1]["subject_hash"])


def test_feedback_after_the_row_is_written_is_found_in_the_table(services: Services) -> None:
    log = QueryLog(services.engine, services.settings.query_log, redact.builtin)
    entry = Entry(kind="search", collection="kb", query="x", status=200, total_ms=1,
                  chunk_ids=[5], document_ids=["d"])  # fmt: skip
    services.query_log.record(entry)
    services.query_log.flush()
    given = feedback.Feedback(search_id=str(entry.id), kind="click", document_id="d")
    with services.engine.begin() as conn:  # another process: nothing recent in memory
        assert feedback.record(conn, log, given, None, admin=False)["id"]


def test_concurrent_clicks_on_one_search_are_all_recorded(services: Services) -> None:
    with serving(services) as client:
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"Cats number {i} purr."} for i in range(3)]
        assert client.post(
            "/v1/collections/kb/documents?wait=true", json={"documents": docs}
        ).is_success
        found = client.post("/v1/search", json={"collection": "kb", "query": "cats"}).json()
        hits, answers = found["hits"], []

        def click(i: int) -> None:
            hit = hits[i % len(hits)]
            body = {"search_id": found["search_id"], "kind": "click", "chunk_id": hit["chunk_id"]}
            answers.append(client.post("/v1/feedback", json=body).status_code)

        threads = [threading.Thread(target=click, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert answers == [201] * 16
    with services.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM feedback")).scalar_one() == 16


# -- analytics -----------------------------------------------------------------------------------


@pytest.fixture
def used(notes: Client, services: Services) -> Iterator[Client]:
    """Searches with clicks on their best hit, one that finds nothing, and an answer."""
    for question, best in (("cats purr", "cats"), ("dogs bark", "dogs"), ("sleep", "cats")):
        found = search(notes, query=question, k=3)
        hit = next(h for h in found["hits"] if h["document_id"] == best)
        clicked = send(notes, search_id=found["search_id"], kind="click", chunk_id=hit["chunk_id"])
        assert clicked.status_code == 201
    search(notes, query="zebras", mode="keyword")
    services.query_log.flush()
    yield notes


def test_the_views_add_up(used: Client, services: Services) -> None:
    with services.engine.connect() as conn:
        daily = conn.execute(
            text("SELECT * FROM analytics.searches_daily WHERE collection = 'kb' AND mode IS NULL "
                 "AND kind = 'search'")
        ).mappings().one()  # fmt: skip
        clicks = (
            conn.execute(text("SELECT * FROM analytics.clicks_daily WHERE collection = 'kb'"))
            .mappings()
            .one()
        )
    assert daily["requests"] == 4 and daily["zero_results"] == 1 and daily["p95_ms"] > 0
    assert float(daily["zero_rate"]) == 0.25
    assert (clicks["searches"], clicks["clicked"], float(clicks["ctr"])) == (4, 3, 0.75)
    assert 0 < float(clicks["mrr_clicked"]) <= 1


def test_the_analytics_commands(used: Client, env: dict[str, str], tmp_path: Path) -> None:
    report = hybrid(env, "analytics", "report", "-c", "kb", "--out", str(tmp_path))
    assert report.code == 0 and "zero" in report.text, report.text
    assert (tmp_path / "report-kb.png").stat().st_size > 0
    top = hybrid(env, "analytics", "top", "--json")
    assert top.code == 0 and {row["query"] for row in json.loads(top.out)} >= {"cats purr"}
    zero = hybrid(env, "analytics", "zero", "-c", "kb", "--json")
    assert [row["query"] for row in json.loads(zero.out)] == ["zebras"]
    for command in ("latency", "feedback"):
        run = hybrid(env, "analytics", command, "-c", "kb")
        assert run.code == 0, run.text
    held = hybrid(
        env, "analytics", "check", "-c", "kb", "--max-zero-rate", "0.5", "--min-ctr", "0.5"
    )
    assert held.code == 0 and held.out == "", held.text
    broken = hybrid(env, "analytics", "check", "--max-zero-rate", "0.1", "--max-p95-ms", "0.001")
    assert broken.code == 1 and len(broken.out.strip().splitlines()) == 2, broken.text
    assert "zero-result rate 0.250 > 0.1" in broken.out


def test_judgments_exported_are_scored_by_eval(
    used: Client,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    out = tmp_path / "kb-judged"
    exported = hybrid(env, "analytics", "export-qrels", "-c", "kb", "--out", str(out))
    assert exported.code == 0 and "3 documents, 3 queries, 3 judgments" in exported.text
    qrels = (out / "qrels.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and len(qrels) == 4
    scored = hybrid(
        env, "eval", str(out), "--modes", "keyword,hybrid", "--no-progress",
        "--out", str(tmp_path / "results"),
    )  # fmt: skip
    assert scored.code == 0, scored.text
    report = json.loads((tmp_path / "results" / "kb-judged.json").read_text())
    assert (report["documents"], report["queries"]) == (3, 3)
    assert all(mode["ndcg_10"] > 0.5 for mode in report["modes"])


def test_the_principals_hash_is_keyed() -> None:
    assert principals_hash(["a", "b"], b"one") == principals_hash(["b", "a", "a"], b"one")
    assert principals_hash(["a", "b"], b"one") != principals_hash(["a", "b"], b"two")
    assert principals_hash(None, b"one") is None
