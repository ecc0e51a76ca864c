"""Tests for the loaders: every format, the normalisation, the limits and the JSON record checks.

Fixture files are built here, in each test's temporary directory: DOCX with python-docx, PDF
written by hand byte by byte, the rest as text.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypedDict

import docx
import pytest
from pypdf import PdfReader, PdfWriter

from app.errors import Invalid, NotFound, TooLarge, UnsupportedMedia
from app.ingest.load import (
    SUPPORTED_SUFFIXES,
    discover,
    document_from_record,
    load_bytes,
    load_path,
)
from app.ingest.model import Block, SourceDocument


class Limits(TypedDict):
    max_bytes: int
    max_chars: int


LIMITS = Limits(max_bytes=1_000_000, max_chars=1_000_000)


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
    with pytest.raises(TooLarge, match="6 characters"):
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


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ([1, 2], None, "expected a JSON object, got list"),
        ({"title": "x"}, "text", "field 'text' is required"),
        ({"text": "  \n "}, "text", "field 'text' must be a non-empty string, got '  \\n '"),
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
            "must be a finite number >= 0, got nan",
        ),
        (
            {"text": "t", "popularity": float("inf")},
            "popularity",
            "must be a finite number >= 0, got inf",
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
