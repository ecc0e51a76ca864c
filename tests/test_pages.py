"""The web pages over real HTTP: the search page rendered by the server (shareable URLs, the
htmx partial), escaping of hostile documents, inline problems, the security headers, the
vendored assets, and signing in with an API key (cookie, CSRF, allow-lists)."""

from __future__ import annotations

import json
import re
import time
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest

from app import PROJECT_ROOT
from app.access import keys
from app.access.keys import KeySpec
from app.ingest.model import Block, SourceDocument
from app.jobs.queue import InProcessWorker
from app.service import Services
from tests.conftest import empty_tables, make_settings, serving

HOSTILE_TITLE = "<script>alert('title')</script>"
HOSTILE_TEXT = (
    "Glaciers <img src=x onerror=alert('text')> retreat; see "
    "<a href=\"javascript:alert('link')\">this</a> about glaciers."
)


def docs() -> list[SourceDocument]:
    return [
        SourceDocument(
            external_id="glaciers",
            title="Glaciers and ice sheets",
            blocks=[Block(text="Glaciers retreat as the climate warms; ice sheets thin.")],
            metadata={"lang": "en"},
        ),
        SourceDocument(
            external_id="hostile",
            title=HOSTILE_TITLE,
            blocks=[Block(text=HOSTILE_TEXT)],
            metadata={"lang": "<b>en</b>"},
        ),
    ]


@pytest.fixture
def site(services: Services) -> Iterator[httpx.Client]:
    services.ingestor.ingest("kb", docs(), create=True)
    services.ingestor.ingest("other", docs()[:1], create=True)
    with serving(services) as client:
        yield client


def test_the_search_page_renders_results_from_its_url(site: httpx.Client) -> None:
    empty = site.get("/")
    assert empty.status_code == 200 and empty.headers["content-type"].startswith("text/html")
    assert '<option value="kb" selected>kb</option>' in empty.text
    assert "Try <a href=" in empty.text  # a suggested query
    page = site.get("/", params={"collection": "kb", "q": "glaciers retreat", "mode": "hybrid"})
    assert page.status_code == 200
    assert "Glaciers and ice sheets" in page.text
    assert "<mark>" in page.text and "Explain" in page.text
    assert re.search(r"embed [\d.]+ ms · sql [\d.]+ ms", page.text)
    assert 'value="glaciers retreat"' in page.text
    assert '<option value="hybrid" selected>' in page.text
    # The same search from htmx: only the results.
    partial = site.get(
        "/", params={"collection": "kb", "q": "glaciers"}, headers={"HX-Request": "true"}
    )
    assert (
        partial.status_code == 200
        and "<html" not in partial.text
        and '<ol class="hits">' in partial.text
    )


def test_hostile_documents_render_as_text(site: httpx.Client) -> None:
    page = site.get("/", params={"collection": "kb", "q": "glaciers retreat this"})
    assert "&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;" in page.text
    assert "<script>alert" not in page.text
    assert (
        "<img src=x" not in page.text
        and "onerror=alert" not in page.text.replace("&#39;", "'").split("&lt;img")[0]
    )
    assert 'href="javascript:' not in page.text
    assert "&lt;b&gt;en&lt;/b&gt;" in page.text  # metadata, in the explain view


def test_a_bad_filter_is_shown_on_the_page(site: httpx.Client) -> None:
    page = site.get("/", params={"collection": "kb", "q": "glaciers", "filter": "{not json"})
    assert page.status_code == 200
    assert 'role="alert"' in page.text and "<strong>filter</strong>" in page.text
    unknown = site.get("/", params={"collection": "kb", "q": "glaciers", "filter": '{"nope": 1}'})
    assert 'role="alert"' in unknown.text


def test_a_search_in_place_refreshes_the_filter_builder_and_marks_a_bad_filter(
    site: httpx.Client,
) -> None:
    part = site.get(
        "/", params={"collection": "other", "q": "glaciers"}, headers={"HX-Request": "true"}
    )
    assert '<select id="key" name="key" hx-swap-oob="true">' in part.text
    assert '<option value="lang">metadata.lang</option>' in part.text
    assert 'id="filter-error" class="field-error" hidden hx-swap-oob="true"' in part.text
    bad = site.get(
        "/",
        params={"collection": "kb", "q": "glaciers", "filter": '{"nope": "<b>"}'},
        headers={"HX-Request": "true"},
    )
    assert 'aria-describedby="filter-help filter-error" aria-invalid="true"' in bad.text
    assert re.search(r'id="filter-error"[^>]*>filter.nope: unknown field', bad.text)
    # A builder's key, not the JSON box, at fault: the box is not marked.
    builder = site.get("/", params={"collection": "kb", "q": "glaciers", "recency": "soon"})
    assert 'aria-invalid="true"' not in builder.text


def test_the_package_carries_the_pages_templates_and_static_files() -> None:
    """Every file the pages load matches a `package-data` pattern, so a wheel holds it."""
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["app"]
    package = PROJECT_ROOT / "app"
    files = [
        path.relative_to(package).as_posix()
        for folder in ("api/templates", "api/static")
        for path in (package / folder).rglob("*")
        if path.is_file()
    ]
    assert files and all(any(fnmatch(f, pattern) for pattern in patterns) for f in files), [
        f for f in files if not any(fnmatch(f, pattern) for pattern in patterns)
    ]


def test_pages_carry_the_security_headers_and_assets_are_vendored(site: httpx.Client) -> None:
    page = site.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "hybrid_csrf" in page.headers.get("set-cookie", "")
    for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        asset = site.get(url)
        assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"], url
    assert not re.search(r'(?:src|href)="https?://', page.text)  # nothing from elsewhere
    license_file = Path("app/api/static/htmx/2.0.11/LICENSE")
    assert license_file.exists()


@pytest.fixture
def secured_site(
    database_url: str, data_dir: Path, session_services: Services
) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    services = Services.open(make_settings(database_url, data_dir, HYBRID_AUTH="required"))
    services.embedders = session_services.embedders
    services.ingestor.ingest("kb", docs(), create=True)
    services.ingestor.ingest("other", docs()[:1], create=True)
    with services.transaction() as conn:
        secrets = {
            "reader": keys.create(
                conn, KeySpec(name="reader", scopes=("search",), collections=("kb",))
            ).secret,
            "writer": keys.create(conn, KeySpec(name="writer", scopes=("ingest",))).secret,
            "limited": keys.create(
                conn, KeySpec(name="limited", scopes=("search",), rate_per_minute=3)
            ).secret,
        }
    try:
        with serving(services) as client:
            yield client, secrets
    finally:
        services.query_log.flush()
        empty_tables(services.engine)
        services.close(stop_embedded=False)


def csrf(client: httpx.Client, path: str = "/login") -> str:
    page = client.get(path)
    found = re.search(r'name="_csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_signing_in_keeps_the_key_in_an_http_only_cookie(
    secured_site: tuple[httpx.Client, dict[str, str]],
) -> None:
    site, secrets = secured_site
    shared = site.get("/", params={"collection": "kb", "q": "glaciers"})
    assert shared.status_code == 303 and shared.headers["location"].startswith("/login?next=")
    # An htmx request is told where to go, whole.
    assert site.get("/", headers={"HX-Request": "true"}).headers["hx-redirect"].startswith("/login")
    back = site.get(shared.headers["location"])
    assert 'name="next" value="/?collection=kb&amp;q=glaciers"' in back.text
    token = csrf(site)
    # Without the form token, or with another: refused.
    forged = site.post("/login", data={"key": secrets["reader"], "_csrf": "forged"})
    assert forged.status_code == 403 and "<strong>_csrf</strong>" in forged.text
    bad = site.post("/login", data={"key": "hs_nope", "_csrf": token})
    assert bad.status_code == 401 and 'role="alert"' in bad.text
    signed = site.post(
        "/login",
        data={"key": secrets["reader"], "_csrf": token, "next": "/?collection=kb&q=glaciers"},
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/?collection=kb&q=glaciers"
    token = re.search(r'name="_csrf" value="([^"]+)"', site.get("/").text).group(1)  # type: ignore[union-attr]
    # Another site's address is never where a sign-in goes.
    elsewhere = site.post(
        "/login", data={"key": secrets["reader"], "_csrf": token, "next": "//evil.example/"}
    )
    assert elsewhere.headers["location"] == "/"
    cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("hybrid_key="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = site.get("/", params={"collection": "kb", "q": "glaciers"})
    assert page.status_code == 200 and "Glaciers and ice sheets" in page.text
    assert secrets["reader"] not in page.text
    # The key's allow-list: "other" is neither offered nor searchable.
    assert 'value="other"' not in page.text
    denied = site.get("/", params={"collection": "other", "q": "glaciers"})
    assert 'role="alert"' in denied.text and "Glaciers and ice sheets" not in denied.text
    out = site.post("/logout", data={"_csrf": csrf(site, "/")})
    assert out.status_code == 303
    assert site.get("/").status_code == 303


def test_a_key_without_the_search_scope_is_refused(
    secured_site: tuple[httpx.Client, dict[str, str]],
) -> None:
    site, secrets = secured_site
    token = csrf(site)
    assert site.post("/login", data={"key": secrets["writer"], "_csrf": token}).status_code == 303
    page = site.get("/")
    assert page.status_code == 403


def test_a_key_that_may_not_delete_is_not_asked_to(
    secured_site: tuple[httpx.Client, dict[str, str]],
) -> None:
    site, secrets = secured_site
    token = csrf(site)
    assert site.post("/login", data={"key": secrets["reader"], "_csrf": token}).status_code == 303
    page = site.get("/collections/kb/documents/glaciers")
    assert page.status_code == 200 and "Delete this document" not in page.text
    asked = site.get("/collections/kb/documents/glaciers", params={"confirm": "delete"})
    assert asked.status_code == 403 and "ingest" in asked.text


def test_collections_and_documents_pages(site: httpx.Client, services: Services) -> None:
    listed = site.get("/collections")
    assert listed.status_code == 200
    assert "local/all-MiniLM-L6-v2" in listed.text and "vectors version 1" in listed.text
    assert "<dt>Documents</dt><dd>2</dd>" in listed.text  # counts: HYBRID_AUTH=off is admin
    page = site.get("/collections/kb/documents")
    assert page.status_code == 200 and "2 documents." in page.text
    assert "&lt;script&gt;" in page.text and "<script>alert" not in page.text
    typed = site.get(
        "/collections/kb/documents", params={"title": "ice"}, headers={"HX-Request": "true"}
    )
    assert "1 document with" in typed.text and "<html" not in typed.text
    # LIKE's wildcards are text here.
    assert "0 documents" in site.get("/collections/kb/documents", params={"title": "%"}).text
    one = site.get("/collections/kb/documents/glaciers")
    assert one.status_code == 200 and "Chunks (1)" in one.text and "&#34;lang&#34;" in one.text
    assert "Sections (1)" in one.text and "(before any heading)" in one.text
    # Deleting asks first: the document's page only links to the question.
    assert 'href="/collections/kb/documents/glaciers?confirm=delete"' in one.text
    assert 'name="action"' not in one.text
    asked = site.get("/collections/kb/documents/glaciers", params={"confirm": "delete"})
    assert asked.status_code == 200 and "Delete document “Glaciers and ice sheets”?" in asked.text
    assert 'href="/collections/kb/documents/glaciers">Cancel</a>' in asked.text
    assert site.get("/collections/kb/documents/glaciers?confirm=now").status_code == 400
    token = re.search(r'name="_csrf" value="([^"]+)"', asked.text).group(1)  # type: ignore[union-attr]
    forged = site.post(
        "/collections/kb/documents/glaciers", data={"action": "delete", "_csrf": "x"}
    )
    assert forged.status_code == 403
    gone = site.post(
        "/collections/kb/documents/glaciers", data={"action": "delete", "_csrf": token}
    )
    assert gone.status_code == 303 and gone.headers["location"] == "/collections/kb/documents"
    assert site.get("/collections/kb/documents/glaciers").status_code == 404
    assert "1 document." in site.get("/collections/kb/documents").text


def test_the_answer_page_answers_with_its_sources_and_takes_feedback(site: httpx.Client) -> None:
    page = site.get("/answer", params={"collection": "kb", "q": "why do glaciers retreat"})
    assert page.status_code == 200
    assert "Extractive answer" in page.text  # no chat model is configured in the tests
    assert 'id="source-1"' in page.text and 'class="cite"' in page.text
    assert "<script>alert" not in page.text
    token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    search_id = re.search(r'name="search_id" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    thanks = site.post(
        "/answer/feedback", data={"_csrf": token, "search_id": search_id, "kind": "thumbs_up"}
    )
    assert thanks.status_code == 200 and "Thanks" in thanks.text
    with site.stream(
        "GET", "/answer/stream", params={"collection": "kb", "q": "why do glaciers retreat"}
    ) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = re.findall(r"^event: (\w+)", streamed.read().decode(), re.MULTILINE)
    assert events[0] == "sources" and events[-1] == "done" and "delta" in events


def test_files_uploaded_on_the_ingest_page_are_queued_and_followed(
    site: httpx.Client, services: Services
) -> None:
    page = site.get("/ingest")
    assert page.status_code == 200 and 'type="file" multiple' in page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    files = [
        (
            "files",
            ("moraines.md", b"# Moraines\n\nRidges of debris a glacier leaves.", "text/markdown"),
        ),
        ("files", ("bad.pdf", b"not a pdf", "application/pdf")),
    ]
    forged = site.post("/ingest", data={"collection": "kb", "csrf": "x"}, files=files)
    assert forged.status_code == 403
    sent = site.post("/ingest", data={"collection": "kb", "csrf": token}, files=files)
    assert sent.status_code == 303 and re.fullmatch(r"/jobs/\d+", sent.headers["location"])
    worker = InProcessWorker(services)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while "hx-trigger" in (job := site.get(sent.headers["location"])).text:
            assert time.monotonic() < deadline, job.text
            time.sleep(0.2)
    finally:
        worker.stop()
    assert "done" in job.text and ">moraines.md<" in job.text and "created" in job.text
    assert "bad.pdf" in job.text and "failed:" in job.text
    found = site.get("/", params={"collection": "kb", "q": "ridges of debris"})
    assert "Moraines" in found.text


def test_the_analytics_page_charts_what_was_searched(
    site: httpx.Client, services: Services
) -> None:
    for query in ("glaciers", "glaciers", "<i>zebra</i> nothing matches qqqq"):
        site.get("/", params={"collection": "kb", "q": query, "mode": "keyword"})
    services.query_log.flush()
    page = site.get("/analytics", params={"collection": "kb"})
    assert page.status_code == 200
    assert page.text.count("<svg") == 3 and '<rect x="' in page.text
    assert "<td>glaciers</td><td>2</td>" in page.text
    assert "&lt;i&gt;zebra&lt;/i&gt;" in page.text and "<i>zebra" not in page.text


def test_the_filter_builder_offers_the_metadata_keys_and_filters(site: httpx.Client) -> None:
    page = site.get("/", params={"collection": "kb"})
    assert '<option value="lang">metadata.lang</option>' in page.text
    narrowed = site.get(
        "/", params={"collection": "kb", "q": "glaciers", "key": "lang", "value": "en"}
    )
    assert "Glaciers and ice sheets" in narrowed.text and "&lt;script&gt;" not in narrowed.text
    both = site.get(
        "/",
        params={"collection": "kb", "q": "glaciers", "key": "lang", "value": "en",
                "filter": '{"title": "Deserts"}', "per_document": "true"},
    )  # fmt: skip
    assert "0 results" in both.text


def test_pages_spend_the_key_s_rate_budget(
    secured_site: tuple[httpx.Client, dict[str, str]],
) -> None:
    site, secrets = secured_site
    token = csrf(site)
    assert site.post("/login", data={"key": secrets["limited"], "_csrf": token}).status_code == 303
    answers = [site.get("/").status_code for _ in range(5)]
    assert answers[:3] == [200, 200, 200] and answers[3] == 429


def test_boosts_from_the_form(site: httpx.Client) -> None:
    # Empty boxes, as a browser sends them: no boost.
    plain = site.get(
        "/", params={"collection": "kb", "q": "glaciers", "recency": "", "popularity": ""}
    )
    assert "Glaciers and ice sheets" in plain.text
    boosted = site.get("/", params={"collection": "kb", "q": "glaciers", "popularity": "0.5"})
    assert "popularity ×" in boosted.text and 'value="0.5"' in boosted.text
    bad = site.get("/", params={"collection": "kb", "q": "glaciers", "recency": "soon"})
    assert 'role="alert"' in bad.text and "<strong>recency</strong>" in bad.text


def test_the_evaluation_page_shows_the_reports(
    database_url: str, data_dir: Path, session_services: Services, tmp_path: Path
) -> None:
    report = {
        "dataset": "scifact", "collection": "eval-scifact", "documents": 5183, "queries": 300,
        "k": 100, "embed_p50_ms": 9.5, "vector_backend": "auto",
        "modes": [
            {"mode": "keyword", "queries": 300, "ndcg_10": 0.665, "recall_100": 0.9,
             "mrr_10": 0.63, "hit_5": 0.75, "latency_p50_ms": 12.0, "latency_p95_ms": 20.0},
            {"mode": "hybrid", "queries": 300, "ndcg_10": 0.712, "recall_100": 0.95,
             "mrr_10": 0.68, "hit_5": 0.8, "latency_p50_ms": 18.0, "latency_p95_ms": 25.0},
        ],
    }  # fmt: skip
    (tmp_path / "scifact.json").write_text(json.dumps(report))
    # A report of `hybrid eval --answers`: the same, and its answers' scores.
    answers = {
        "queries": 50, "answered": 48, "failed": 2, "citation_precision": 0.8125,
        "citation_recall": 0.6, "support": None, "judged": 0, "judge_unparseable": 40,
        "judge_failed": 8, "per_query": [],
    }  # fmt: skip
    (tmp_path / "answered.json").write_text(json.dumps(report | {"answers": answers}))
    (tmp_path / "notes.json").write_text("not a report")
    settings = make_settings(database_url, data_dir, HYBRID_EVAL_REPORTS=str(tmp_path))
    services = Services(settings, session_services.engine)
    services.embedders = session_services.embedders
    with serving(services) as site:
        page = site.get("/evaluation")
    assert page.status_code == 200
    assert "<h2" in page.text and "scifact" in page.text and "<td>0.712</td>" in page.text
    assert page.text.count("<rect") == 4
    # Only the report with answers shows them.
    assert page.text.count("Citation precision") == 1
    assert "<td>0.812</td><td>0.600</td><td>–</td>" in page.text
    assert "answers: 48 of 50 queries" in page.text and "40 judge replies unusable" in page.text


def test_documents_whose_ids_hold_slashes_open_and_delete(
    site: httpx.Client, services: Services
) -> None:
    odd = ["/abs/notes.md", "a//b", "a/../b"]
    services.ingestor.ingest(
        "kb",
        [SourceDocument(external_id=i, title=f"Odd {i}", blocks=[Block("Ice.")]) for i in odd],
    )
    listing = site.get("/collections/kb/documents", params={"title": "Odd"})
    links = re.findall(r'href="(/collections/kb/documents/[^"]+)"', listing.text)
    assert len(links) == 3 and all("%2F" in link for link in links)
    for link in links:
        opened = site.get(link)
        assert opened.status_code == 200, link
        shown = re.search(r"<dt>Id</dt><dd><code>([^<]+)</code>", opened.text).group(1)  # type: ignore[union-attr]
        assert shown in odd
        asked = site.get(f"{link}?confirm=delete")
        action = re.search(r'<form method="post" action="([^"]+)"', asked.text).group(1)  # type: ignore[union-attr]
        assert action == link
        token = re.search(r'name="_csrf" value="([^"]+)"', asked.text).group(1)  # type: ignore[union-attr]
        assert site.post(action, data={"action": "delete", "_csrf": token}).status_code == 303
    assert "0 documents" in site.get("/collections/kb/documents", params={"title": "Odd"}).text


def test_a_refusal_on_a_page_is_a_page(site: httpx.Client) -> None:
    missing = site.get("/collections/nothing/documents")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in missing.text and "content-security-policy" in missing.headers
    part = site.get("/collections/kb/documents/none", headers={"HX-Request": "true"})
    assert part.status_code == 404 and "<html" not in part.text and 'role="alert"' in part.text
