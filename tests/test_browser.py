"""The web pages in a real browser: Debian's chromium, driven by Playwright over real HTTP.

Search (modes, explain, a bad filter shown beside its box, back and forward, the filter
builder following the collection), a document's page and its deletion (confirmed, or
cancelled), uploads (picked, or two files dropped at once) found by a search, a streamed
answer and back and forward between answers, hostile documents rendered inert, keyboard-only
use, a 375 px screen, and axe-core (vendored) on every page with no serious or critical
violation and headings in order. Screenshots of the main pages, and what the search page
costs to load and to search, go to `test-output/` for a reviewer to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.cli import SAMPLE_COLLECTION, SAMPLE_DIR
from app.ingest import load
from app.ingest.model import Block, SourceDocument
from app.jobs.queue import InProcessWorker
from app.service import Services
from tests.conftest import serving

OUTPUT = Path(os.environ.get("HYBRID_TEST_OUTPUT", "test-output"))
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
HOSTILE = "<img src=x onerror=alert('pwned')> <script>alert('pwned')</script>"
# Every page, by the name of its screenshot (in `screenshots/pages/`).
PAGES = {
    "search": "/", "results": "/?collection=kb&q=glaciers", "answer": "/answer",
    "collections": "/collections", "documents": "/collections/kb/documents",
    "document": "/collections/kb/documents/glaciers",
    "delete": "/collections/kb/documents/glaciers?confirm=delete", "ingest": "/ingest",
    "analytics": "/analytics", "evaluation": "/evaluation", "login": "/login",
    "error": "/collections/nowhere/documents",
}  # fmt: skip
# A heading one level below its predecessor at most, the first an h1.
HEADING_SKIPS = """() => {
    let previous = 0;
    const skips = [];
    for (const heading of document.querySelectorAll("h1, h2, h3, h4, h5, h6")) {
        const level = Number(heading.tagName[1]);
        if (level > previous + 1) {
            skips.push(heading.tagName + ": " + heading.textContent.trim());
        }
        previous = level;
    }
    return skips;
}"""


def corpus() -> list[SourceDocument]:
    return [
        SourceDocument(
            external_id="glaciers",
            title="Glaciers and ice sheets",
            blocks=[
                Block("Glaciers retreat as the climate warms; ice sheets thin.", ("Retreat",)),
                Block("A moraine is the ridge of rock a glacier leaves behind.", ("Moraines",)),
            ],
            metadata={"lang": "en", "topic": "ice"},
        ),
        SourceDocument(
            external_id="deserts",
            title="Deserts",
            blocks=[Block("Deserts receive little rain; dunes move with the wind.")],
            metadata={"lang": "en", "topic": "sand"},
        ),
        SourceDocument(
            external_id="hostile",
            title=f"Hostile {HOSTILE}",
            blocks=[
                Block(f"Glaciers and <a href=\"javascript:alert('pwned')\">links</a> {HOSTILE}")
            ],
            metadata={"lang": HOSTILE},
        ),
    ]


def notes() -> list[SourceDocument]:
    """A second collection, with metadata keys of its own."""
    return [
        SourceDocument(
            external_id="ridge",
            title="Field notes",
            blocks=[Block("Glaciers seen from the ridge at dawn.")],
            metadata={"author": "ana"},
        )
    ]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is needed: apt-get install -y chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def site(services: Services) -> Iterator[str]:
    services.ingestor.ingest("kb", corpus(), create=True)
    worker = InProcessWorker(services)
    worker.start()
    try:
        with serving(services) as client:
            yield str(client.base_url).rstrip("/")
    finally:
        worker.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not dialogs, f"a script ran: {dialogs}"
    assert not errors, f"script errors: {errors}"


def shot(page: Page, name: str) -> None:
    path = OUTPUT / "screenshots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=path, full_page=True)


def focused(page: Page) -> str:
    """The focused control: its id, else its name, else its text."""
    return str(
        page.evaluate("(e => e.id || e.name || e.textContent.trim())(document.activeElement)")
    )


def tab_to(page: Page, control: str) -> None:
    """Tab once: `control` has the focus, and shows it."""
    page.keyboard.press("Tab")
    assert focused(page) == control
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), control


def field_keys(page: Page) -> list[str]:
    return page.locator("#key option").all_inner_texts()


def test_search_modes_explain_filters_and_history(page: Page, site: str) -> None:
    page.goto(site + "/")
    page.get_by_label("Query").fill("why do glaciers retreat")
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".hit").first).to_contain_text("Glaciers and ice sheets")
    assert "q=why%20do%20glaciers%20retreat" in page.url  # the URL carries the search
    shot(page, "search")
    # Explain: each leg's rank and the fused score.
    page.locator(".hit details summary").first.click()
    expect(page.locator(".hit dl.explain").first).to_contain_text("Fused")
    # Another mode.
    page.get_by_label("Mode").select_option("keyword")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("h2.summary")).to_contain_text("(keyword)")
    # A bad filter: its error in the results, naming the field, and beside the box itself.
    box = page.get_by_label("Filter (JSON)")
    box.fill('{"topic": ')
    box.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("filter")
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(box).to_have_attribute("aria-describedby", "filter-help filter-error")
    expect(page.locator("#filter-error")).to_contain_text("malformed JSON")
    expect(box).to_be_focused()  # swapped in place, the box keeps the focus
    shot(page, "search-bad-filter")
    box.fill('{"metadata.topic": "ice"}')
    box.press("Enter")
    expect(page.locator(".hit").first).to_contain_text("Glaciers and ice sheets")
    expect(box).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#filter-error")).to_be_hidden()
    box.fill('{"topic": ')
    box.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("filter")
    # Back: the earlier search again.
    page.go_back()
    expect(page.locator("h2.summary")).to_contain_text("(keyword)")
    # A shared URL opens with its results, rendered before any script runs.
    shared = page.context.new_page()
    shared.goto(site + "/?collection=kb&q=moraine&mode=hybrid")
    expect(shared.locator(".hit").first).to_contain_text("Glaciers and ice sheets")
    shared.close()


def test_the_filter_builder_follows_the_collection(
    page: Page, site: str, services: Services
) -> None:
    services.ingestor.ingest("notes", notes(), create=True)
    page.goto(site + "/?collection=kb&q=glaciers")
    assert field_keys(page) == ["any", "metadata.lang", "metadata.topic"]
    # Another collection, picked in place: its results, and its own keys to filter on.
    page.get_by_label("Collection").select_option("notes")
    expect(page.locator("h2.summary")).to_contain_text("in notes")
    expect(page.locator("#key option")).to_have_text(["any", "metadata.author"])
    page.get_by_label("Field").select_option("author")
    page.get_by_label("equals").fill("ana")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"key=author&value=ana"))
    expect(page.locator(".hit").first).to_contain_text("Field notes")
    page.get_by_label("Collection").select_option("kb")
    expect(page.locator("h2.summary")).to_contain_text("in kb")
    # The key searched with stays shown (kb has no such key: nothing matches).
    expect(page.locator("#key option")).to_have_text(
        ["any", "metadata.lang", "metadata.topic", "metadata.author"]
    )
    expect(page.locator("#key")).to_have_value("author")
    expect(page.locator(".hits .empty")).to_be_visible()


def test_a_document_page_from_the_collections(page: Page, site: str) -> None:
    page.goto(site + "/collections")
    expect(page.locator("section.card")).to_contain_text("local/all-MiniLM-L6-v2")
    shot(page, "collections")
    page.get_by_role("link", name="Documents").click()
    page.get_by_label("Title contains").fill("Glac")
    expect(page.locator("#documents")).to_contain_text("1 document with")
    page.get_by_role("link", name="Glaciers and ice sheets").click()
    expect(page.get_by_role("heading", name="Chunks (2)")).to_be_visible()
    expect(page.get_by_role("heading", name="Sections (2)")).to_be_visible()
    expect(page.locator("table.sections tbody tr")).to_have_count(2)
    page.get_by_role("link", name="Moraines").click()  # a section leads to its chunk
    expect(page.locator("ol.chunks li:target")).to_contain_text("moraine is the ridge")
    expect(page.locator("pre")).to_contain_text('"topic": "ice"')
    shot(page, "document")


def test_a_document_is_deleted_after_a_confirmation(page: Page, site: str) -> None:
    page.goto(site + "/collections/kb/documents/deserts")
    # Cancelled: nothing happens.
    page.get_by_role("link", name="Delete this document…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete document “Deserts”?")
    shot(page, "delete")
    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Deserts")
    assert page.url == site + "/collections/kb/documents/deserts"
    # Confirmed: gone from the list, from its own URL and from searches.
    page.get_by_role("link", name="Delete this document…").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_url(site + "/collections/kb/documents")
    expect(page.locator("#documents")).to_contain_text("2 documents.")
    expect(page.locator("#documents")).not_to_contain_text("Deserts")
    page.goto(site + "/collections/kb/documents/deserts")
    expect(page.get_by_role("alert")).to_contain_text("deleted")
    page.goto(site + "/?collection=kb&q=dunes+rain&mode=keyword")
    expect(page.locator(".hits .empty")).to_be_visible()


def test_an_uploaded_file_is_found_by_a_search(page: Page, site: str, tmp_path: Path) -> None:
    note = tmp_path / "fjords.md"
    note.write_text("# Fjords\n\nA fjord is a long inlet carved by a glacier, flooded by the sea.")
    page.goto(site + "/ingest")
    page.get_by_label("Files (drop them here, or pick several)").set_input_files(str(note))
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/jobs/*")
    expect(page.locator(".state")).to_have_text("done", timeout=60_000)
    expect(page.locator("table")).to_contain_text("created")
    shot(page, "job")
    page.get_by_role("link", name="Search kb").click()
    page.get_by_label("Query").fill("long inlet flooded by the sea")
    page.keyboard.press("Enter")
    expect(page.locator(".hit").first).to_contain_text("Fjords")


def test_files_dropped_together_upload_with_progress(page: Page, site: str) -> None:
    page.goto(site + "/ingest")
    shot(page, "ingest")
    # The upload's progress bar, as the page's script moves it (watched from here).
    seen: list[tuple[bool, int]] = []
    page.expose_function("progressSeen", lambda hidden, value: seen.append((hidden, value)))
    page.evaluate(
        """() => {
            const bar = document.getElementById("progress");
            new MutationObserver(() => window.progressSeen(bar.hidden, bar.value))
                .observe(bar, {attributes: true});
        }"""
    )
    dropped = page.evaluate_handle(
        """() => {
            const transfer = new DataTransfer();
            transfer.items.add(new File(
                ["# Fjords\\n\\nA fjord is a long inlet carved by a glacier, flooded by the sea."],
                "fjords.md", {type: "text/markdown"}));
            transfer.items.add(new File(
                ["An esker is a winding ridge of sand and gravel left by a melted glacier."],
                "eskers.txt", {type: "text/plain"}));
            return transfer;
        }"""
    )
    page.dispatch_event(".drop", "dragover", {"dataTransfer": dropped})
    expect(page.locator(".drop")).to_have_class("drop over")
    page.dispatch_event(".drop", "drop", {"dataTransfer": dropped})
    expect(page.locator(".drop")).to_have_class("drop")
    names = page.evaluate("[...document.getElementById('files').files].map(f => f.name)")
    assert names == ["fjords.md", "eskers.txt"]
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/jobs/*")
    assert (False, 100) in seen, seen  # shown, and full once the files were sent
    # The job's page: its progress, then what became of each file.
    expect(page.locator(".state")).to_have_text("done", timeout=60_000)
    expect(page.get_by_label("Job progress")).to_have_attribute("value", "2")
    rows = page.locator("#job tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="fjords.md")).to_contain_text("created")
    expect(rows.filter(has_text="eskers.txt")).to_contain_text("created")
    shot(page, "job-two-files")
    page.get_by_role("link", name="Search kb").click()
    page.get_by_label("Query").fill("winding ridge of sand and gravel")
    page.keyboard.press("Enter")
    expect(page.locator(".hit").first).to_contain_text("eskers")


def test_an_answer_streams_with_its_citations(page: Page, site: str) -> None:
    page.goto(site + "/answer")
    page.get_by_label("Question").fill("what does a glacier leave behind")
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("form.feedback")).to_be_visible()  # the stream's end
    expect(page.locator("ol.sources li").first).to_be_visible()
    expect(page.locator("a.cite").first).to_be_visible()
    expect(page.locator(".note")).to_contain_text("Extractive answer")
    shot(page, "answer")
    page.get_by_role("button", name="Helpful", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Thanks")


def test_back_and_forward_between_answers(page: Page, site: str) -> None:
    first, second = "what does a glacier leave behind", "where do dunes move"
    page.goto(site + "/answer")
    question = page.get_by_label("Question")
    for asked in (first, second):
        question.fill(asked)
        page.get_by_role("button", name="Ask").click()
        expect(page.locator("form.feedback")).to_be_visible()
    expect(page.locator("ol.sources li").first).to_contain_text("Deserts")
    page.go_back()  # the first question and its answer again
    expect(question).to_have_value(first)
    expect(page.locator("form.feedback")).to_be_visible()
    expect(page.locator("ol.sources li").first).to_contain_text("Glaciers")
    assert "q=what+does+a+glacier" in page.url
    page.go_forward()
    expect(question).to_have_value(second)
    expect(page.locator("ol.sources li").first).to_contain_text("Deserts")
    page.go_back()
    page.go_back()  # the page as it opened: no question, no answer
    expect(question).to_have_value("")
    expect(page.locator("#answer")).to_be_empty()


def test_hostile_documents_are_text(page: Page, site: str) -> None:
    page.goto(site + "/?collection=kb&q=glaciers+links")
    expect(page.locator(".hit h3", has_text="Hostile")).to_contain_text("<script>")
    assert page.locator(".hit img").count() == 0
    assert page.locator('a[href^="javascript:"]').count() == 0
    page.goto(site + "/collections/kb/documents/hostile")
    expect(page.locator("h1")).to_contain_text("<img src=x")


def test_the_search_form_works_from_the_keyboard(page: Page, site: str, services: Services) -> None:
    """Every control reached with Tab, showing its focus, changed with the arrow keys or
    typed into, and the search sent with Enter."""
    services.ingestor.ingest("notes", notes(), create=True)
    page.goto(site + "/")
    assert focused(page) == "q"  # the query box has the focus
    page.keyboard.type("glaciers")
    tab_to(page, "Search")
    tab_to(page, "collection")
    page.keyboard.press("ArrowDown")  # kb → notes: searched at once, its keys offered
    expect(page.locator("#key option")).to_have_text(["any", "metadata.author"])
    tab_to(page, "mode")
    page.keyboard.press("ArrowDown")  # default → keyword
    tab_to(page, "k")
    page.keyboard.press("ArrowDown")  # 10 → 9
    tab_to(page, "key")
    page.keyboard.press("ArrowDown")  # any → metadata.author
    tab_to(page, "value")
    page.keyboard.type("ana")
    tab_to(page, "per_document")
    tab_to(page, "recency")
    tab_to(page, "popularity")
    tab_to(page, "filter")
    page.keyboard.type('{"title": "Field notes"}')
    page.keyboard.press("Enter")
    expect(page.locator("h2.summary")).to_contain_text("1 result in notes (keyword)")
    expect(page.locator(".hit").first).to_contain_text("Field notes")
    for part in ("collection=notes", "mode=keyword", "k=9", "key=author", "value=ana"):
        assert part in page.url, part
    shot(page, "search-keyboard")


def test_pages_fit_a_375_px_screen(browser: Browser, site: str) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 800})
    small = context.new_page()
    try:
        for path in PAGES.values():
            small.goto(site + path)
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, (path, width)
        small.goto(site + "/?collection=kb&q=glaciers")
        shot(small, "search-375px")
    finally:
        context.close()


def test_axe_finds_nothing_serious_on_any_page(page: Page, site: str, tmp_path: Path) -> None:
    """Every page, a job's page and a streamed answer among them: no serious or critical
    violation, and headings in order (axe's `heading-order`, moderate, counts too)."""
    found: dict[str, Any] = {}

    def check(name: str) -> None:
        problems = checked(page)
        if problems:
            found[name] = problems
        shot(page, f"pages/{name}")

    for name, path in PAGES.items():
        page.goto(site + path)
        check(name)
    note = tmp_path / "cirques.md"
    note.write_text("# Cirques\n\nA cirque is a bowl carved by a glacier at a valley's head.")
    page.goto(site + "/ingest")
    page.get_by_label("Files (drop them here, or pick several)").set_input_files(str(note))
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/jobs/*")
    expect(page.locator(".state")).to_have_text("done", timeout=60_000)
    check("job")
    page.goto(site + "/answer")
    page.get_by_label("Question").fill("what does a glacier leave behind")
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("form.feedback")).to_be_visible()
    check("answer-streamed")
    assert not found, found


def checked(page: Page) -> list[Any]:
    """What axe-core finds serious, critical or out of heading order on the page, and the
    headings that skip a level."""
    page.evaluate(AXE.read_text())  # evaluated by the browser, outside the page's CSP
    violations = page.evaluate(
        "async () => (await axe.run()).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length}))"
    )
    problems: list[Any] = [
        v for v in violations
        if v["impact"] in ("serious", "critical") or v["id"] == "heading-order"
    ]  # fmt: skip
    return problems + page.evaluate(HEADING_SKIPS)


def test_what_the_search_page_costs(page: Page, site: str, services: Services) -> None:
    """On the sample collection: the first load under 100 KB transferred (the vendored script
    aside, which a browser keeps for good); the in-page search round trip and the API's own
    (an HTTP client's), written down for BENCHMARKS.md (timings are measured, not asserted)."""
    samples = [
        doc
        for path in load.discover([SAMPLE_DIR])
        for doc in load.load_path(path, max_bytes=1 << 24, max_chars=1 << 24)
    ]
    services.ingestor.ingest(SAMPLE_COLLECTION, samples, create=True)
    page.goto(f"{site}/?collection={SAMPLE_COLLECTION}")
    transferred = page.evaluate(
        "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".map(e => ({name: e.name, bytes: e.transferSize || e.encodedBodySize}))"
    )
    counted = sum(e["bytes"] for e in transferred if "/htmx/" not in e["name"])
    assert counted < 100_000, transferred
    rounds, api = [], []
    queries = [
        "how does rank fusion work", "what is bm25", "chunking with overlap",
        "access control lists", "approximate nearest neighbours", "evaluation metrics",
    ] * 4  # fmt: skip
    with httpx.Client(base_url=site) as client:
        for i, query in enumerate(queries):  # each query new: no result cache on either side
            page.get_by_label("Query").fill(f"{query} {i}")
            took = page.evaluate(
                """() => new Promise(resolve => {
                    const started = performance.now();
                    document.body.addEventListener('htmx:afterSwap',
                        () => resolve(performance.now() - started), {once: true});
                    document.querySelector('form.search button').click();
                })"""
            )
            rounds.append(took)
            started = time.perf_counter()
            params = {"collection": SAMPLE_COLLECTION, "q": f"{query} {i} api"}
            client.get("/v1/search", params=params)
            api.append((time.perf_counter() - started) * 1000)
    rounds.sort()
    api.sort()
    figures = {
        "first_load_bytes": counted,
        "round_trip_p50_ms": round(rounds[len(rounds) // 2], 1),
        "api_round_trip_p50_ms": round(api[len(api) // 2], 1),
        "round_trip_p95_ms": round(rounds[int(len(rounds) * 0.95)], 1),
        "api_round_trip_p95_ms": round(api[int(len(api) * 0.95)], 1),
        "searches": len(queries),
    }
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "search-page-costs.json").write_text(json.dumps(figures, indent=2))
