"""Tests for the loaders: every format, the normalisation, the limits and the JSON record checks.

Fixture files are built here, in each test's temporary directory: DOCX with python-docx, PDF
written by hand byte by byte, the rest as text.
"""

from __future__ import annotations

import hashlib
import io
import json
import resource
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypedDict

import docx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter

from app.errors import HybridError, Invalid, NotFound, TooLarge, UnsupportedMedia
from app.ingest import load
from app.ingest.load import (
    MAX_DOCX_TAGS,
    MAX_HTML_ELEMENTS,
    MAX_JSON_DEPTH,
    SUPPORTED_SUFFIXES,
    discover,
    document_from_record,
    load_bytes,
    load_path,
)
from app.ingest.model import Block, SourceDocument
from app.settings import IngestSettings


class Limits(TypedDict):
    max_bytes: int
    max_chars: int


LIMITS = Limits(max_bytes=1_000_000, max_chars=1_000_000)
LIMITS_20_MB = Limits(
    max_bytes=IngestSettings.max_upload_bytes, max_chars=IngestSettings.max_document_chars
)


def load_one(path: Path) -> SourceDocument:
    [doc] = load_path(path, **LIMITS)
    return doc


def load_data(data: bytes, filename: str) -> SourceDocument:
    [doc] = load_bytes(data, filename, **LIMITS)
    return doc


def blocks(doc: SourceDocument) -> list[tuple[str, tuple[str, ...]]]:
    return [(b.text, b.heading_path) for b in doc.blocks]


# -- plain text and normalisation --------------------------------------------------------------


def test_text_file_is_split_into_paragraphs_titled_by_its_stem(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("First  line\t\tof one\nparagraph.\n\n \n\nSecond one.\n")

    doc = load_one(path)

    assert doc.title == "notes"
    assert doc.external_id == path.resolve().as_posix()
    assert doc.source == path.resolve().as_posix()
    assert doc.blocks == [Block("First line of one\nparagraph."), Block("Second one.")]


def test_normalisation_removes_bom_nul_and_control_characters_and_composes(
    tmp_path: Path,
) -> None:
    raw = "\ufeffcafe\u0301\x00 bar\x07\r\n\r\nnext\rline\x00\n"
    path = tmp_path / "n.txt"
    path.write_bytes(raw.encode())

    doc = load_one(path)

    assert doc.blocks == [Block("caf\u00e9 bar"), Block("next\nline")]


def test_invalid_utf8_names_the_byte_and_its_position() -> None:
    with pytest.raises(Invalid) as caught:
        load_bytes(b"abc\xffdef", "bad.txt", **LIMITS)
    assert caught.value.message == "bad.txt: not valid UTF-8 (byte 0xff at position 3)"
    assert caught.value.field == "bad.txt"


@pytest.mark.parametrize("content", [b"", b"  \n\t\n\n  ", b"\x00\x00\n"])
def test_a_file_without_text_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.md"
    path.write_bytes(content)
    with pytest.raises(Invalid, match=r"empty\.md: no text found$"):
        load_path(path, **LIMITS)


def test_a_file_over_the_byte_limit_is_rejected_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("x" * 101)
    with pytest.raises(TooLarge) as caught:
        load_path(path, max_bytes=100, max_chars=1000)
    assert caught.value.message == f"{path}: 101 bytes is over the limit of 100 bytes"
    assert load_one(path).text == "x" * 101


def test_an_upload_over_the_byte_limit_is_rejected() -> None:
    with pytest.raises(TooLarge, match=r"up\.txt: 11 bytes is over the limit of 10 bytes"):
        load_bytes(b"hello world", "up.txt", max_bytes=10, max_chars=1000)


def test_text_over_the_character_limit_is_rejected() -> None:
    data = "é" * 6  # 12 bytes, 6 characters
    assert load_bytes(data.encode(), "a.txt", max_bytes=12, max_chars=6)
    with pytest.raises(TooLarge, match=r"^a\.txt: text is over the limit of 5 characters$"):
        load_bytes(data.encode(), "a.txt", max_bytes=12, max_chars=5)


def test_an_unsupported_suffix_lists_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMedia) as caught:
        load_bytes(b"MZ", "tool.exe", **LIMITS)
    assert "tool.exe" in caught.value.message
    assert "'.exe'" in caught.value.message
    assert all(suffix in caught.value.message for suffix in SUPPORTED_SUFFIXES)
    with pytest.raises(UnsupportedMedia, match="no suffix"):
        load_bytes(b"text", "README", **LIMITS)
    (tmp_path / "a.csv").write_text("a,b")
    with pytest.raises(UnsupportedMedia):
        load_path(tmp_path / "a.csv", **LIMITS)


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"nothing\.txt"):
        load_path(tmp_path / "nothing.txt", **LIMITS)


def test_an_upload_is_named_by_its_file_name_unless_an_id_is_given() -> None:
    doc = load_data(b"Hello.", "greeting.txt")
    assert (doc.external_id, doc.source, doc.title) == ("greeting.txt", "greeting.txt", "greeting")
    [named] = load_bytes(b"Hello.", "greeting.txt", **LIMITS, external_id="doc-7")
    assert (named.external_id, named.source) == ("doc-7", "greeting.txt")


# -- Markdown ----------------------------------------------------------------------------------

MARKDOWN = """\
---
title: Front matter title
tags: [a, b]
---
# Guide

Intro   text
on two lines.

## Install ##

- first step
- second step

```bash
# not a heading
pip  install x

echo done
```

### Details
Deep.

## Usage
Use it.

# Appendix
End.
"""


def test_markdown_headings_code_fences_and_front_matter(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text(MARKDOWN)

    doc = load_one(path)

    assert doc.title == "Guide"
    assert blocks(doc) == [
        ("Intro text\non two lines.", ("Guide",)),
        ("- first step", ("Guide", "Install")),
        ("- second step", ("Guide", "Install")),
        ("# not a heading\npip  install x\n\necho done", ("Guide", "Install")),
        ("Deep.", ("Guide", "Install", "Details")),
        ("Use it.", ("Guide", "Usage")),
        ("End.", ("Appendix",)),
    ]


def test_markdown_without_level_one_heading_is_titled_by_its_stem() -> None:
    doc = load_data(b"### Deep first\n\ntext\n\n~~~\nunclosed # fence\n", "notes.markdown")
    assert doc.title == "notes"
    assert blocks(doc) == [
        ("text", ("Deep first",)),
        ("unclosed # fence", ("Deep first",)),
    ]


# -- HTML --------------------------------------------------------------------------------------

HTML = """\
<!doctype html>
<html><head><title>  The   Page </title><style>p { color: red }</style></head>
<body>
  <script>var hidden = "script text";</script>
  Bare body text
  <h1>Top</h1>
  <div>Loose <b>div</b>
    text<br>second line</div>
  <h2>Section</h2>
  <p>A   paragraph.</p>
  <ul><li>One</li><li>Two <ul><li>Nested</li></ul></li></ul>
  <h3>Deeper</h3>
  <table><tr><th>Name</th><th>Size</th></tr><tr><td>alpha</td><td> 1 </td></tr></table>
  <h2>Other</h2>
  <pre>  indented
    code</pre>
  <noscript>no script</noscript><svg><title>icon</title></svg>
  <figure><figcaption>A caption</figcaption></figure>
  <dl><dt>Term</dt><dd>Meaning</dd></dl>
  <blockquote>Quoted</blockquote>
</body></html>
"""


def test_html_headings_blocks_tables_and_dropped_elements() -> None:
    doc = load_data(HTML.encode(), "page.html")

    assert doc.title == "The Page"
    assert blocks(doc) == [
        ("Bare body text", ()),
        ("Loose div text\nsecond line", ("Top",)),
        ("A paragraph.", ("Top", "Section")),
        ("One", ("Top", "Section")),
        ("Two", ("Top", "Section")),
        ("Nested", ("Top", "Section")),
        ("Name | Size", ("Top", "Section", "Deeper")),
        ("alpha | 1", ("Top", "Section", "Deeper")),
        ("  indented\n    code", ("Top", "Other")),
        ("A caption", ("Top", "Other")),
        ("Term", ("Top", "Other")),
        ("Meaning", ("Top", "Other")),
        ("Quoted", ("Top", "Other")),
    ]
    assert "script" not in doc.text and "red" not in doc.text and "icon" not in doc.text


@pytest.mark.parametrize(
    ("html", "title"),
    [
        ("<h2>Sub</h2><h1>First h1</h1><p>x</p>", "First h1"),
        ("<p>No headings</p><svg><title>icon</title></svg>", "page"),
    ],
)
def test_html_title_falls_back_to_first_h1_then_stem(html: str, title: str) -> None:
    assert load_data(html.encode(), "page.htm").title == title


def test_html_the_parser_rejects_is_invalid() -> None:
    with pytest.raises(Invalid, match=r"^odd\.html: expected a readable HTML file, got "):
        load_bytes(b"<p>text</p><![ x", "odd.html", **LIMITS)


# -- PDF ---------------------------------------------------------------------------------------


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text stream per page, one line per string."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 "]
    objects[2] += b"/BaseFont /Helvetica >>"
    kids = []
    for lines in pages:
        text = b"".join(b"(%s) Tj T*\n" % line.encode("latin-1") for line in lines)
        stream = b"BT\n/F1 12 Tf\n14 TL\n72 720 Td\n" + text + b"ET"
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (len(objects))
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    info = b""
    if title is not None:
        objects.append(b"<< /Title (%s) >>" % title.encode("latin-1"))
        info = b" /Info %d 0 R" % len(objects)
    return pdf_file(objects, info)


def pdf_file(objects: list[bytes], info: bytes = b"") -> bytes:
    """Numbered objects (1 is the catalog), their cross-reference table and the trailer."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\n" % (len(objects) + 1, info)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def test_the_hand_made_pdf_is_valid() -> None:
    reader = PdfReader(io.BytesIO(make_pdf([["Hello"]], title="T")), strict=True)
    assert reader.pages[0].extract_text().strip() == "Hello"


def test_pdf_text_per_page_with_title_and_page_count(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(make_pdf([["Hybrid search engine", "on PostgreSQL"], ["Page two"]], "Report"))

    doc = load_one(path)

    assert doc.title == "Report"
    assert doc.metadata == {"pages": 2}
    assert blocks(doc) == [("Hybrid search engine\non PostgreSQL", ()), ("Page two", ())]


def test_pdf_without_title_is_titled_by_its_stem() -> None:
    assert load_data(make_pdf([["Words"]]), "scan.pdf").title == "scan"


def test_pdf_without_text_has_no_text_found() -> None:
    with pytest.raises(Invalid, match=r"image\.pdf: no text found"):
        load_bytes(make_pdf([[]]), "image.pdf", **LIMITS)


def encrypted(pdf: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_with_a_password_is_rejected_but_an_empty_password_is_read() -> None:
    pdf = make_pdf([["Secret words"]])
    with pytest.raises(Invalid, match=r"locked\.pdf: .*encrypted") as caught:
        load_bytes(encrypted(pdf, "secret"), "locked.pdf", **LIMITS)
    assert caught.value.field == "locked.pdf"
    assert load_data(encrypted(pdf, ""), "open.pdf").text == "Secret words"


def test_an_unreadable_pdf_is_invalid() -> None:
    with pytest.raises(Invalid, match=r"broken\.pdf: expected a readable PDF file"):
        load_bytes(b"%PDF-1.4\nthis is not a pdf", "broken.pdf", **LIMITS)


# -- DOCX --------------------------------------------------------------------------------------


def make_docx(path: Path, *, core_title: str = "", title: str | None = "Styled Title") -> None:
    document = docx.Document()
    document.core_properties.title = core_title
    if title is not None:
        document.add_paragraph(title, style="Title")
    document.add_paragraph("Before  any\theading.")
    document.add_heading("Intro", level=1)
    document.add_paragraph("First paragraph.")
    document.add_paragraph("")
    document.add_heading("Details", level=2)
    table = document.add_table(rows=2, cols=3)
    for cell, text in zip(table.rows[0].cells, ["Name", "Size", "Unit"], strict=True):
        cell.text = text
    merged = table.cell(1, 0).merge(table.cell(1, 1))
    merged.text = "alpha"
    table.cell(1, 2).text = "kg"
    document.add_heading("Usage", level=1)
    document.add_paragraph("Use it.")
    document.save(str(path))


def test_docx_headings_paragraphs_and_table_rows(tmp_path: Path) -> None:
    path = tmp_path / "manual.docx"
    make_docx(path, core_title="Core Title")

    doc = load_one(path)

    assert doc.title == "Core Title"
    assert blocks(doc) == [
        ("Before any heading.", ()),
        ("First paragraph.", ("Intro",)),
        ("Name | Size | Unit", ("Intro", "Details")),
        ("alpha | kg", ("Intro", "Details")),
        ("Use it.", ("Usage",)),
    ]


@pytest.mark.parametrize(("title", "expected"), [("Styled Title", "Styled Title"), (None, "Intro")])
def test_docx_title_falls_back_to_title_paragraph_then_first_heading(
    tmp_path: Path, title: str | None, expected: str
) -> None:
    path = tmp_path / "manual.docx"
    make_docx(path, title=title)
    assert load_one(path).title == expected


def test_docx_without_any_title_is_titled_by_its_stem(tmp_path: Path) -> None:
    document = docx.Document()
    document.add_paragraph("Just text.")
    document.save(str(tmp_path / "plain.docx"))
    assert load_one(tmp_path / "plain.docx").title == "plain"


def test_a_corrupt_docx_is_invalid() -> None:
    with pytest.raises(Invalid, match=r"broken\.docx: expected a readable DOCX file") as caught:
        load_bytes(b"not a zip at all", "broken.docx", **LIMITS)
    assert caught.value.field == "broken.docx"


# -- JSON records ------------------------------------------------------------------------------


def test_jsonl_beir_corpus_lines(tmp_path: Path) -> None:
    lines = [
        {
            "_id": "4983",
            "title": "Microstructural development",
            "text": "Alterations.",
            "metadata": {},
        },
        {"_id": 17, "title": "", "text": "Second\n\nrecord.", "metadata": {"year": 2001}},
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "\n".join(json.dumps(line) for line in lines[:1]) + "\n\n  \n" + json.dumps(lines[1])
    )

    first, second = load_path(path, **LIMITS)

    assert (first.external_id, first.title, first.text) == (
        "4983",
        "Microstructural development",
        "Alterations.",
    )
    assert first.source == path.resolve().as_posix()
    assert (second.external_id, second.metadata) == ("17", {"year": 2001})
    assert second.blocks == [Block("Second"), Block("record.")]


def test_json_file_with_a_list_of_full_records() -> None:
    records = [
        {
            "id": "a",
            "title": " A  title ",
            "text": "Alpha\x00 text",
            "source": "https://example.com/a",
            "metadata": {"lang": "en", "team": "explicit"},
            "team": "extra",
            "stars": 5,
            "acl": ["group:staff", "user:ann"],
            "published_at": "2024-05-01T12:30:00",
            "popularity": 3,
        },
        {"external_id": "b", "text": "Beta", "published_at": "2024-05-01T12:30:00+02:00"},
    ]
    a, b = load_bytes(json.dumps(records).encode(), "docs.json", **LIMITS)

    assert (a.external_id, a.title, a.text, a.source) == (
        "a",
        "A title",
        "Alpha text",
        "https://example.com/a",
    )
    assert a.metadata == {"lang": "en", "team": "explicit", "stars": 5}
    assert a.acl == ["group:staff", "user:ann"]
    assert a.published_at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert a.popularity == 3.0
    assert (b.external_id, b.source, b.acl, b.popularity) == ("b", "docs.json", None, None)
    assert b.published_at == datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))


def test_a_json_file_with_one_object_and_a_record_without_id() -> None:
    doc = load_data(b'{"title": "T", "text": "Body"}', "one.json")
    assert doc.external_id == hashlib.sha256(b"TBody").hexdigest()[:32]
    assert doc.title == "T"


def test_a_record_with_a_title_and_no_text_is_its_title() -> None:
    for record in ({"_id": "p1", "title": "Aspirin and the heart", "text": ""},
                   {"_id": "p1", "title": "Aspirin and the heart"}):  # fmt: skip
        doc = document_from_record(record, where="corpus.jsonl:1")
        assert doc.title == "Aspirin and the heart"
        assert [block.text for block in doc.blocks] == ["Aspirin and the heart"]


def test_a_file_skips_a_record_with_neither_text_nor_title_and_says_which(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = (
        b'{"_id": "a", "text": "Alpha."}\n{"_id": "b", "title": "", "text": " "}\n'
        b'{"_id": "c", "title": "Gamma"}\n'
    )
    docs = load_bytes(data, "corpus.jsonl", max_bytes=10_000, max_chars=10_000, max_pdf_pages=10)
    assert [d.external_id for d in docs] == ["a", "c"]
    assert "corpus.jsonl" in caplog.text and "record skipped" in caplog.text


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ([1, 2], None, "expected a JSON object, got list"),
        ({"id": "x"}, "text", "field 'text' is required (or a title)"),
        (
            {"text": "  \n ", "title": " "},
            "text",
            "field 'text' must be a non-empty string (or the record have a title), got '  \\n '",
        ),
        ({"text": 5}, "text", "field 'text' must be a string, got integer"),
        (
            {"text": "t", "metadata": []},
            "metadata",
            "field 'metadata' must be a JSON object, got list",
        ),
        (
            {"text": "t", "acl": "staff"},
            "acl",
            "field 'acl' must be a non-empty list of non-empty strings, got string",
        ),
        (
            {"text": "t", "acl": ["a", 3]},
            "acl",
            "must be a non-empty list of non-empty strings, got 3 at index 1",
        ),
        (
            {"text": "t", "acl": [""]},
            "acl",
            "must be a non-empty list of non-empty strings, got '' at index 0",
        ),
        (
            {"text": "t", "published_at": "yesterday"},
            "published_at",
            "ISO 8601 date or date-time, got 'yesterday'",
        ),
        ({"text": "t", "published_at": 2024}, "published_at", "must be a string, got integer"),
        (
            {"text": "t", "popularity": float("nan")},
            "popularity",
            "must be a finite number, got nan",
        ),
        (
            {"text": "t", "popularity": float("inf")},
            "popularity",
            "must be a finite number, got inf",
        ),
        (
            {"text": "t", "popularity": 10**400},
            "popularity",
            "must be a finite number >= 0, got 1000",
        ),
        ({"text": "t", "popularity": -1}, "popularity", "must be a finite number >= 0, got -1"),
        ({"text": "t", "acl": []}, "acl", "must be a non-empty list of non-empty strings, got []"),
        ({"text": "t", "metadata": {"k": "a\x00b"}}, "metadata", "must be free of NUL characters"),
        (
            {"text": "t", "popularity": "high"},
            "popularity",
            "must be a finite number >= 0, got string",
        ),
        (
            {"text": "t", "popularity": True},
            "popularity",
            "must be a finite number >= 0, got boolean",
        ),
        (
            {"text": "t", "_id": ""},
            "_id",
            "field '_id' must be a non-empty string or an integer, got ''",
        ),
        ({"text": "t", "id": 1.5}, "id", "must be a non-empty string or an integer, got number"),
        ({"text": "t", "title": ["x"]}, "title", "field 'title' must be a string, got list"),
        ({"text": "t", "source": {}}, "source", "field 'source' must be a string, got object"),
        ({"text": "t", "a\x00b": 1}, "ab", "field 'ab' must be free of NUL characters"),
        (
            {"text": "t", "metadata": {"k": ["a\ud800"]}},
            "metadata",
            "field 'metadata' must be valid Unicode text, got a lone surrogate",
        ),
        ({"text": "t", "tags": [1, float("nan")]}, "tags", "must be a finite number, got nan"),
        ({"text": "t", "n": 10**5000}, "n", "must be a number Python can write out"),
        ({"text": "t", "metadata": {"k": {1, 2}}}, "metadata", "a JSON value, got a Python set"),
    ],
)
def test_record_errors_name_where_and_the_field(
    record: object, field: str | None, message: str
) -> None:
    with pytest.raises(Invalid) as caught:
        document_from_record(record, where="req[0]")
    assert caught.value.message.startswith("req[0]: ")
    assert message in caught.value.message
    assert caught.value.field == field


def test_record_text_and_title_are_cleaned_of_lone_surrogates() -> None:
    doc = document_from_record({"text": "a\ud800b", "title": "\udfffTitle"}, where="r")
    assert (doc.text, doc.title) == ("ab", "Title")
    assert len(doc.external_id) == 32


def test_jsonl_errors_name_the_line() -> None:
    data = b'{"text": "ok"}\n\n{"text": "x", "metadata": [1]}\n'
    with pytest.raises(Invalid) as caught:
        load_bytes(data, "corpus.jsonl", **LIMITS)
    assert caught.value.message == (
        "corpus.jsonl line 3: field 'metadata' must be a JSON object, got list"
    )
    assert caught.value.field == "metadata"


def test_malformed_json_names_the_line() -> None:
    data = b'{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n'
    with pytest.raises(Invalid, match=r"^corpus\.jsonl line 3: malformed JSON: Expecting value"):
        load_bytes(data, "corpus.jsonl", **LIMITS)


def test_nan_and_infinity_literals_in_json_are_rejected() -> None:
    with pytest.raises(Invalid, match=r"c\.jsonl line 1: field 'popularity' must be a finite"):
        load_bytes(b'{"text": "t", "popularity": NaN}', "c.jsonl", **LIMITS)
    with pytest.raises(Invalid, match=r"c\.json\[1\]: field 'popularity' .* got -inf$"):
        load_bytes(b'[{"text": "t"}, {"text": "t", "popularity": -Infinity}]', "c.json", **LIMITS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'"just a string"', "a.json: expected a JSON object or a list of objects, got string"),
        (b"[]", "a.json: no records found"),
        (b"[1]", "a.json[0]: expected a JSON object, got integer"),
        (
            b'{"text": "x",\n "title": }',
            "a.json: malformed JSON: Expecting value at line 2 column 11",
        ),
    ],
)
def test_json_file_shape_errors(data: bytes, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        load_bytes(data, "a.json", **LIMITS)
    assert caught.value.message == message


# -- discovery ---------------------------------------------------------------------------------


def test_discover_walks_directories_sorted_skipping_hidden_and_unsupported(tmp_path: Path) -> None:
    for name in [
        "b.md",
        "a.txt",
        "sub/c.PDF",
        "sub/deeper/d.jsonl",
        "sub/image.png",
        ".hidden.txt",
        ".git/config.txt",
        "sub/.cache/e.txt",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    extra = tmp_path / "sub" / ".named.md"
    extra.write_text("x")

    found = discover([tmp_path, extra, tmp_path / "a.txt"])

    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.txt",
        "b.md",
        "sub/c.PDF",
        "sub/deeper/d.jsonl",
        "sub/.named.md",
    ]


def test_discover_rejects_unsupported_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(b"png")
    with pytest.raises(UnsupportedMedia, match=r"photo\.png"):
        discover([tmp_path / "photo.png"])
    with pytest.raises(NotFound, match="missing"):
        discover([tmp_path / "missing"])


# -- hostile files -----------------------------------------------------------------------------
#
# Each is built here, in memory or as a sparse file, and must be refused (or read) within
# bounds on memory and time: a loose check against a regression by orders of magnitude (a bomb
# going off), not a benchmark. README "File limits" has the figures.


@contextmanager
def bounded(*, megabytes: float, seconds: float) -> Iterator[None]:
    """The block raises the process's peak resident memory by less than `megabytes` (so it
    counts what C libraries allocate too) and takes less than `seconds`."""
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    raised = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert raised < megabytes, f"peak memory up by {raised:.0f} MB"
    assert elapsed < seconds, f"took {elapsed:.1f} s"


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def deflated_spaces(mebibytes: int) -> bytes:
    """Raw deflate data of `mebibytes` MiB of spaces, about 1 kB a MiB: one fully flushed MiB
    (which refers to nothing before it) repeated, then an empty final block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = compressor.compress(b" " * 2**20) + compressor.flush(zlib.Z_FULL_FLUSH)
    return piece * mebibytes + deflated(b"")


def zip_file(parts: dict[str, tuple[bytes, int, int]]) -> bytes:
    """A zip written by hand, so that its directory can say anything: for each part name,
    its deflated data, the size it declares and the CRC-32 it declares."""
    out, directory = bytearray(), bytearray()
    for name, (data, size, crc) in parts.items():
        encoded, offset = name.encode(), len(out)
        fields = (20, 0, zipfile.ZIP_DEFLATED, 0, 0, crc, len(data), size, len(encoded))
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0) + encoded + data
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, offset)
        directory += encoded
    end = (len(parts), len(parts), len(directory), len(out), 0)
    return bytes(out + directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, *end))


def docx_with_document(data: bytes, size: int, crc: int) -> bytes:
    """A real DOCX (python-docx's template) whose word/document.xml is replaced."""
    document = docx.Document()
    document.add_paragraph("Text.")
    buffer = io.BytesIO()
    document.save(buffer)
    with zipfile.ZipFile(buffer) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    parts = {name: (deflated(body), len(body), zlib.crc32(body)) for name, body in contents.items()}
    return zip_file({**parts, "word/document.xml": (data, size, crc)})


def test_hand_made_zip_is_a_readable_docx() -> None:
    body = b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    body += b"<w:body><w:p><w:r><w:t>Hand made.</w:t></w:r></w:p></w:body></w:document>"
    data = docx_with_document(deflated(body), len(body), zlib.crc32(body))
    assert load_data(data, "hand.docx").text == "Hand made."


def test_a_zip_bomb_docx_is_refused_from_its_declared_sizes() -> None:
    # 3 MB on the wire; its document.xml declares (and inflates to) 3 GiB.
    bomb = docx_with_document(deflated_spaces(3 * 1024), 3 * 2**30, 0)
    assert len(bomb) < 4_000_000
    with (
        bounded(megabytes=10, seconds=1),
        pytest.raises(TooLarge, match=r"^bomb\.docx: unzips to \d+ bytes, over the limit of"),
    ):
        load_bytes(bomb, "bomb.docx", **LIMITS_20_MB)


def test_a_docx_part_that_inflates_past_its_declared_size_is_refused() -> None:
    # zipfile would inflate all 1 GiB of it in one go before cutting it to the 100 bytes.
    lying = docx_with_document(deflated_spaces(1024), 100, zlib.crc32(b" " * 100))
    with (
        bounded(megabytes=10, seconds=1),
        pytest.raises(TooLarge, match=r"'word/document\.xml' unzips to more than the 100 bytes"),
    ):
        load_bytes(lying, "lying.docx", **LIMITS_20_MB)


def test_a_docx_of_too_many_xml_tags_is_refused_before_it_is_parsed() -> None:
    body = b"<w:p/>" * MAX_DOCX_TAGS
    data = docx_with_document(deflated(body), len(body), zlib.crc32(body))
    with bounded(megabytes=10, seconds=3), pytest.raises(TooLarge, match="XML tags is over"):
        load_bytes(data, "paragraphs.docx", **LIMITS_20_MB)


def test_docx_table_merged_down_a_column_repeats_the_cell_in_each_row(tmp_path: Path) -> None:
    document = docx.Document()
    table = document.add_table(rows=3, cols=2)
    table.cell(0, 0).merge(table.cell(2, 0)).text = "fruit"
    for row, text in enumerate(["apple", "pear", "plum"]):
        table.cell(row, 1).text = text
    document.save(str(tmp_path / "merged.docx"))
    assert (
        load_one(tmp_path / "merged.docx").text == "fruit | apple\n\nfruit | pear\n\nfruit | plum"
    )


WORDS = b"BT /F1 12 Tf 72 720 Td (Words) Tj ET"


def pdf_pages(
    kids: bytes,
    count: int,
    *,
    content: bytes = WORDS,
    catalog: bytes = b"",
    resources: bytes = b"",
    more: Sequence[bytes] = (),
) -> bytes:
    """A PDF whose page tree (object 2) lists `kids` and claims `count` pages. Object 3 is a
    page showing `content` (object 5, compressed) in font F1 (object 6), object 4 a /Pages
    node listing object 3 twice; `catalog` and `resources` are added to the catalog and the
    page's resources, `more` objects are numbered from 7."""
    stream = zlib.compress(content, 9)
    return pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R%s >>" % catalog,
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 5 0 R "
            b"/Resources << /Font << /F1 6 0 R >>%s >> >>" % resources,
            b"<< /Type /Pages /Kids [3 0 R 3 0 R] /Count 2 >>",
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            *more,
        ]
    )


def test_a_pdf_claiming_a_million_pages_is_read_for_the_pages_it_has() -> None:
    doc = load_data(pdf_pages(b"3 0 R", 10**6), "claims.pdf")
    assert doc.metadata == {"pages": 1}
    assert doc.text == "Words"


@pytest.mark.parametrize(
    "kids",
    [
        b"3 0 R " * (IngestSettings.max_pdf_pages + 1),
        b"4 0 R " * (IngestSettings.max_pdf_pages // 2 + 1),
    ],
    ids=["one-page-listed-over-and-over", "a-node-listing-it-twice-over-and-over"],
)
def test_a_pdf_over_the_page_limit_is_refused_before_its_pages_are_read(kids: bytes) -> None:
    pdf = pdf_pages(kids, 1)
    with (
        bounded(megabytes=20, seconds=3),
        pytest.raises(TooLarge, match=rf"^many\.pdf: more than {IngestSettings.max_pdf_pages} "),
    ):
        load_bytes(pdf, "many.pdf", **LIMITS)


def test_the_page_limit_counts_real_pages_and_is_a_parameter() -> None:
    pdf = make_pdf([["One"], ["Two"], ["Three"]])
    assert load_bytes(pdf, "three.pdf", **LIMITS, max_pdf_pages=3)[0].metadata == {"pages": 3}
    with pytest.raises(TooLarge, match=r"^three\.pdf: more than 2 pages, the limit$"):
        load_bytes(pdf, "three.pdf", **LIMITS, max_pdf_pages=2)


def test_a_pdf_page_tree_that_doubles_at_each_level_is_refused() -> None:
    # 40 objects, each a /Pages node listing the next one twice: 2**40 pages.
    nodes = [b"<< /Type /Pages /Kids [%d 0 R %d 0 R] >>" % (n + 1, n + 1) for n in range(2, 42)]
    pdf = pdf_file([b"<< /Type /Catalog /Pages 2 0 R >>", *nodes, b"<< /Type /Page >>"])
    with bounded(megabytes=10, seconds=1), pytest.raises(TooLarge, match="more than"):
        load_bytes(pdf, "doubling.pdf", **LIMITS)


NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "pdf",
    [
        pdf_pages(b"3 0 R", 1, catalog=b" /Deep " + NESTED),
        pdf_pages(b"3 0 R", 1, content=b"BT /F1 12 Tf 72 720 Td " + NESTED + b" TJ ET"),
    ],
    ids=["in-the-catalog", "in-a-page"],
)
def test_a_pdf_with_arrays_nested_100_000_deep_is_invalid(pdf: bytes) -> None:
    with (
        bounded(megabytes=50, seconds=2),
        pytest.raises(Invalid, match=r"^deep\.pdf: expected a readable PDF file, got one nested"),
    ):
        load_bytes(pdf, "deep.pdf", **LIMITS)


def test_a_pdf_page_showing_more_text_than_allowed_is_refused_before_pypdf_decodes_it() -> None:
    # 20 kB: one compressed content stream of 20 million characters.
    pdf = pdf_pages(
        b"3 0 R", 1, content=b"BT /F1 12 Tf 72 720 Td (" + b"a" * 20_000_000 + b") Tj ET"
    )
    with bounded(megabytes=300, seconds=10), pytest.raises(TooLarge, match="over the limit"):
        load_bytes(pdf, "wide.pdf", **LIMITS_20_MB)


def test_a_pdf_form_drawn_thousands_of_times_is_refused_as_its_text_grows() -> None:
    # 2 kB: a form XObject showing 100,000 characters, drawn 5,000 times on one page.
    form = zlib.compress(b"BT /F1 12 Tf 72 720 Td (" + b"a" * 100_000 + b") Tj ET", 9)
    form_object = (
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Filter /FlateDecode "
        b"/Resources << /Font << /F1 6 0 R >> >> /Length %d >>\nstream\n%s\nendstream"
        % (len(form), form)
    )
    pdf = pdf_pages(
        b"3 0 R",
        1,
        content=b"/X1 Do " * 5_000,
        resources=b" /XObject << /X1 7 0 R >>",
        more=[form_object],
    )
    with bounded(megabytes=100, seconds=10), pytest.raises(TooLarge, match="over the limit"):
        load_bytes(pdf, "forms.pdf", **LIMITS_20_MB)


def test_a_pdf_running_too_many_content_operators_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(load, "MAX_PDF_OPERATORS", 1_000)
    pdf = pdf_pages(b"3 0 R " * 20, 20, content=b"q Q " * 100)
    with pytest.raises(TooLarge, match=r"^ops\.pdf: more than 1000 content operators, the limit$"):
        load_bytes(pdf, "ops.pdf", **LIMITS)


def test_html_over_the_upload_limit_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.html"
    with path.open("wb") as sparse:  # 50 MB long, nothing on disk
        sparse.write(b"<html><body>")
        sparse.truncate(50_000_000)
    with bounded(megabytes=1, seconds=1), pytest.raises(TooLarge, match="50000000 bytes"):
        load_path(path, **LIMITS_20_MB)
    over = b"<p>" * (LIMITS_20_MB["max_bytes"] // 3 + 1)
    with pytest.raises(TooLarge, match="bytes is over the limit"):
        load_bytes(over, "big.html", **LIMITS_20_MB)


@pytest.mark.parametrize(
    ("html", "text"),
    [
        (b"<div>" * 100_000 + b"deep" + b"</div>" * 100_000, "deep"),
        (b"<p>kept</p>" + b"<span>" * 100_000 + b"deep", "kept\n\ndeep"),
        (b"<p>kept</p><svg>" + b"<g>" * 100_000 + b"</svg>", "kept"),
        (b"<p>kept</p><h2>" + b"<b>" * 100_000 + b"Head</h2>under", "kept\n\nunder"),
    ],
)
def test_html_nested_100_000_deep_is_read(html: bytes, text: str) -> None:
    with bounded(megabytes=300, seconds=20):
        [doc] = load_bytes(html, "deep.html", **LIMITS_20_MB)
    assert doc.text == text


def test_html_of_too_many_elements_is_refused_before_it_is_parsed() -> None:
    html = b"<p>x" * (MAX_HTML_ELEMENTS + 1)
    with (
        bounded(megabytes=10, seconds=1),
        pytest.raises(TooLarge, match=rf"{MAX_HTML_ELEMENTS + 1} HTML elements is over the limit"),
    ):
        load_bytes(html, "many.html", **LIMITS)


def test_a_jsonl_file_with_one_100_mb_line_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    with path.open("wb") as sparse:  # one line of 100 MB, nothing on disk but its two ends
        sparse.write(b'{"text": "')
        sparse.seek(100_000_000)
        sparse.write(b'"}\n')
    with bounded(megabytes=1, seconds=1), pytest.raises(TooLarge, match="100000003 bytes"):
        load_path(path, **LIMITS_20_MB)


@pytest.mark.parametrize(
    ("data", "name", "where", "field"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "deep.json", "deep.json", "deep.json"),
        (b'{"text": "ok"}\n' + b"[" * 100_000, "deep.jsonl", "deep.jsonl line 2", None),
        (
            b'{"text": "x", "metadata": ' + b'{"a": ' * 200 + b"1" + b"}" * 201,
            "r.json",
            "r.json",
            "metadata",
        ),
    ],
)
def test_json_nested_too_deep_is_invalid(
    data: bytes, name: str, where: str, field: str | None
) -> None:
    with bounded(megabytes=20, seconds=1), pytest.raises(Invalid) as caught:
        load_bytes(data, name, **LIMITS)
    assert caught.value.message == f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep"
    assert caught.value.field == (field or where)


def test_markdown_heading_with_a_long_run_of_spaces_is_read_in_linear_time() -> None:
    line = b"# Title" + b" " * 1_000_000 + b"end #"
    with bounded(megabytes=50, seconds=1):
        [doc] = load_bytes(line + b"\n\nBody.", "spaces.md", **LIMITS_20_MB)
    assert doc.title == "Title end"


def test_text_is_refused_as_soon_as_it_is_over_the_character_limit() -> None:
    # 4 million blocks of 2 characters: the refusal comes after 500,000 of them.
    with bounded(megabytes=200, seconds=10), pytest.raises(TooLarge, match="2000000 characters"):
        load_bytes(b"ab\n\n" * 4_000_000, "blocks.txt", **LIMITS_20_MB)


# -- any input ---------------------------------------------------------------------------------
#
# Whatever the bytes or the record, the loaders give documents or one of the service's own
# 4xx errors: never another exception (which the API would answer with a 500).


def loads_or_4xx(read: Callable[[], object]) -> None:
    try:
        read()
    except HybridError as exc:
        assert 400 <= exc.status < 500, exc


def edited(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with up to four spans replaced by a few arbitrary bytes each."""
    edit = st.tuples(st.integers(0, len(seed)), st.integers(0, 8), st.binary(max_size=4))

    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        data = seed
        for at, cut, new in edits:
            data = data[:at] + new + data[at + cut :]
        return data

    return st.lists(edit, min_size=1, max_size=4).map(apply)


# Any text, lone surrogates (which JSON escapes can carry) and control characters included.
SPECIAL = ["\x00", "\x07", "\ud800", "\udfff", "\r", "\n", "\t", " ", "\u0301", "\ufeff"]
# (st.text() would drop the surrogates: its alphabet of characters() leaves them out.)
TEXT = st.lists(st.characters() | st.sampled_from(SPECIAL), max_size=20).map("".join)
# Text made of the pieces the text formats' readers look for.
MARKUP = st.lists(
    st.sampled_from(
        [
            *SPECIAL,
            *"<>/!?[]-=\"'&#;x1",
            *("<![", "<!--", "-->", "</", "<p>", "<h2>", "<pre>", "<tr>", "<td>", "<br>"),
            *("<svg>", "<title>", "<script>", "&#xd800;", "&amp"),
            *("# ", "## x #", "```", "~~~", "---\n", "- ", "1. ", "\n\n"),
        ]
    ),
    max_size=40,
).map("".join)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    TEXT,
    st.sampled_from(["", " ", "2024-05-01", "2024-05-01T12:30:00+02:00", "\x00", "#"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
RECORD_KEYS = st.sampled_from(
    [
        *("id", "_id", "external_id", "title", "text", "source", "metadata", "acl"),
        *("published_at", "popularity", "extra"),
    ]
)
RECORDS = st.one_of(
    JSON_VALUES,
    st.dictionaries(RECORD_KEYS, JSON_VALUES, max_size=6),
    st.fixed_dictionaries({"text": TEXT}, optional={"id": JSON_SCALARS, "acl": JSON_VALUES}),
)


def seeds() -> dict[str, bytes]:
    document = docx.Document()
    document.add_heading("Intro", level=1)
    document.add_paragraph("Body.")
    document.add_table(rows=1, cols=2).cell(0, 1).text = "cell"
    buffer = io.BytesIO()
    document.save(buffer)
    record = {"id": "a", "text": "Body.", "metadata": {"k": [1, 2.5, None]}, "acl": ["x"]}
    return {
        ".txt": b"First paragraph.\n\nSecond one.",
        ".md": MARKDOWN.encode(),
        ".markdown": b"# Title\n\n- item\n\n```\ncode\n",
        ".html": HTML.encode(),
        ".htm": b"<h1>Top</h1><table><tr><td>a</td></tr></table><pre> x</pre>",
        ".pdf": make_pdf([["Words on a page"], ["More"]], title="T"),
        ".docx": buffer.getvalue(),
        ".json": json.dumps([record, {"text": "Two"}]).encode(),
        ".jsonl": json.dumps(record).encode() + b"\n" + json.dumps({"text": "Two"}).encode(),
    }


SEEDS = seeds()


def file_bytes(suffix: str) -> st.SearchStrategy[bytes]:
    shapes = [
        st.binary(max_size=300),
        edited(SEEDS[suffix]),
        MARKUP.map(lambda t: t.encode("utf-8", "surrogatepass")),
    ]
    if suffix in (".json", ".jsonl"):
        shapes.append(RECORDS.map(lambda r: json.dumps(r).encode()))
    return st.one_of(shapes)


@pytest.mark.parametrize("suffix", sorted(SUPPORTED_SUFFIXES))
@settings(max_examples=80, deadline=None, database=None)
@given(data=st.data())
def test_any_bytes_load_or_get_a_4xx(suffix: str, data: st.DataObject) -> None:
    raw = data.draw(file_bytes(suffix), label="file")
    loads_or_4xx(lambda: load_bytes(raw, "upload" + suffix, **LIMITS, max_pdf_pages=5))


@settings(max_examples=300, deadline=None, database=None)
@given(record=RECORDS)
def test_any_record_loads_or_gets_a_4xx(record: object) -> None:
    loads_or_4xx(lambda: document_from_record(record, where="r", max_chars=50))
