"""Loaders: turn files, uploads and JSON records into `SourceDocument`s made of `Block`s.

Text, Markdown, HTML, PDF and DOCX files each become one document whose blocks carry the path
of their enclosing headings; JSON and JSONL files become one document per record. Every format
goes through the same normalisation (strict UTF-8, NFC, no control characters, collapsed
spaces) and the same limits, and every error names the file (and line or field) at fault.

Files come from anyone who can upload, so reading one is bounded: beyond the byte and character
limits, each format has its own (pages, elements, unzipped bytes, nesting), checked before or
while the file is read rather than after; README "File limits" lists them with their costs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, TypeVar

import docx
from bs4 import BeautifulSoup
from bs4.element import NavigableString, PageElement, PreformattedString, Tag
from docx.enum.style import WD_STYLE_TYPE
from docx.oxml.ns import qn
from docx.oxml.table import CT_Tbl
from docx.oxml.text.paragraph import CT_P
from pypdf import PdfReader
from pypdf.errors import LimitReachedError
from pypdf.generic import ArrayObject, DictionaryObject

from app.errors import HybridError, Invalid, NotFound, TooLarge, UnsupportedMedia
from app.ingest.model import Block, SourceDocument
from app.settings import IngestSettings

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".json", ".jsonl"}
)
_JSON_SUFFIXES = frozenset({".json", ".jsonl"})

# Bounds of each format beside the byte, character and page limits the caller passes: what
# one file may cost to read, whatever the upload limit (README, "File limits").
MAX_HTML_ELEMENTS = 200_000
"""Most elements an HTML file may have: the parsed tree takes over 1 kB an element."""
MAX_UNZIPPED_BYTES = 64 * 1024 * 1024
"""Most bytes the parts of a DOCX file may unzip to, all parts together."""
MAX_DOCX_TAGS = 2_000_000
"""Most tags (each start, end or empty element tag) the XML parts of a DOCX file may hold."""
MAX_PDF_OPERATORS = 5_000_000
"""Most content operators (drawing, text) pypdf may run for all the pages of a PDF."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of a JSON record (an object inside a list inside a record is 3 deep)."""

# Lone surrogates come from JSON escapes and some PDF font maps; PostgreSQL cannot store them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# Runs of spaces and tabs become one space; a lone space is left alone (re.sub keeps a list
# entry for every match, which for ordinary text would be one for every word).
_SPACES = re.compile(r"[ \t]{2,}|\t")
_WHITESPACE = re.compile(r"\s{2,}|[^\S ]")  # the same, for any whitespace
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?:.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_ATX_OPENING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+|$)")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+\S")
_DOCX_HEADING = re.compile(r"Heading (\d)")
# What html.parser takes for the start of an element.
_HTML_START_TAG = re.compile(r"<[a-zA-Z]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Python writes out integers of at most 4300 digits (sys.get_int_max_str_digits).
_LARGEST_DECIMAL = 10**4300
_ZIP_LOCAL_HEADER = struct.Struct("<4s22x2H")
_INFLATE_STEP = 1 << 16
_PDF_SHOW_TEXT = frozenset({b"Tj", b"TJ", b"'", b'"'})
_DOCX_BLOCKS = (qn("w:p"), qn("w:tbl"))
_DOCX_RUNS = (qn("w:r"), qn("w:hyperlink"))

_HTML_DROPPED = ["script", "style", "noscript", "template", "svg", "head"]
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Elements that end the current run of inline text; everything else is inline.
_HTML_BLOCKS = _HTML_HEADINGS | frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "header", "hgroup", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section",
        "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip

_RECORD_KEYS = frozenset(
    {"id", "_id", "external_id", "title", "text", "source", "metadata", "acl"}
    | {"published_at", "popularity"}
)
_ID_KEYS = ("id", "_id", "external_id")

_T = TypeVar("_T")


def discover(paths: Sequence[Path]) -> list[Path]:
    """Expand directories recursively into the files the loaders can read.

    Directories give their files sorted, only supported suffixes, skipping hidden files and
    directories; an explicitly named file with an unsupported suffix raises UnsupportedMedia;
    a missing path raises NotFound.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(_walk(path))
        elif path.exists():
            check_suffix(path.name)
            found.append(path)
        else:
            raise NotFound(f"{path}: no such file or directory", field=str(path))
    return list(dict.fromkeys(found))


def load_path(
    path: Path,
    *,
    max_bytes: int,
    max_chars: int,
    max_pdf_pages: int = IngestSettings.max_pdf_pages,
) -> list[SourceDocument]:
    """Read one file: one document for text formats, one per record for .json/.jsonl.

    external_id defaults to the absolute POSIX path for text formats; source = that path.
    max_bytes is checked before reading, max_chars (per document) and max_pdf_pages while
    reading, as are the bounds of each format (MAX_* above).
    """
    name = str(path)
    if path.is_dir():
        raise Invalid(f"{name}: expected a file, got a directory", field=name)
    check_suffix(name)
    try:
        check_size(path.stat().st_size, name, max_bytes)
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise NotFound(f"{name}: no such file", field=name) from exc
    check_size(len(data), name, max_bytes)
    source = path.resolve().as_posix()
    limits = _Limits(max_chars, max_pdf_pages)
    return _load(data, name, stem=path.stem, external_id=source, source=source, limits=limits)


def load_bytes(
    data: bytes,
    filename: str,
    *,
    max_bytes: int,
    max_chars: int,
    external_id: str | None = None,
    max_pdf_pages: int = IngestSettings.max_pdf_pages,
) -> list[SourceDocument]:
    """Same as load_path for an upload: the format comes from the file name's suffix.

    external_id defaults to the file name (JSON records carry their own ids); source = the
    file name.
    """
    check_suffix(filename)
    check_size(len(data), filename, max_bytes)
    stem = PurePath(filename).stem
    doc_id = external_id or filename
    limits = _Limits(max_chars, max_pdf_pages)
    return _load(data, filename, stem=stem, external_id=doc_id, source=filename, limits=limits)


class EmptyRecord(Invalid):
    """A JSON record with neither text nor title: nothing to search."""


def document_from_record(
    record: object, *, where: str, max_chars: int | None = None
) -> SourceDocument:
    """Validate one JSON record (used for JSON/JSONL files and by the HTTP API); text over
    max_chars, when given, is refused as it is read."""
    if not isinstance(record, dict):
        raise Invalid(f"{where}: expected a JSON object, got {_json_type(record)}")
    _check_values(record, where)
    text = _string_field(record, "text", where)
    title = _string_field(record, "title", where) or ""
    out = _Blocks(where, max_chars)
    out.add_paragraphs(text or "")
    if not out.blocks:
        # A record with a title and no text (a paper known by its title only) is its title.
        out.add_paragraphs(title)
    if not out.blocks:
        if text is None:
            raise EmptyRecord(f"{where}: field 'text' is required (or a title)", field="text")
        raise EmptyRecord(
            f"{where}: field 'text' must be a non-empty string (or the record have a "
            f"title), got {text[:40]!r}",
            field="text",
        )
    extra = {key: value for key, value in record.items() if key not in _RECORD_KEYS}
    return SourceDocument(
        external_id=_record_id(record, where) or _content_id(title, text or ""),
        title=_inline(title),
        blocks=out.blocks,
        source=_string_field(record, "source", where),
        metadata={**extra, **_metadata_field(record, where)},
        acl=_acl_field(record, where),
        published_at=_published_at_field(record, where),
        popularity=_popularity_field(record, where),
    )


# -- files -------------------------------------------------------------------------------------


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(
            Path(directory, f)
            for f in files
            if not f.startswith(".") and _suffix(f) in SUPPORTED_SUFFIXES
        )
    return sorted(found)


def _suffix(name: str) -> str:
    return PurePath(name).suffix.lower()


def check_suffix(name: str) -> None:
    suffix = _suffix(name)
    if suffix not in SUPPORTED_SUFFIXES:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        given = repr(suffix) if suffix else "no suffix"
        raise UnsupportedMedia(f"{name}: expected one of {supported}, got {given}", field=name)


def check_size(size: int, name: str, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLarge(f"{name}: {size} bytes is over the limit of {max_bytes} bytes", field=name)


@dataclass(frozen=True)
class _Limits:
    """What an extractor checks while it reads a file (the byte limit is checked before)."""

    max_chars: int
    max_pdf_pages: int


def _load(
    data: bytes, name: str, *, stem: str, external_id: str, source: str, limits: _Limits
) -> list[SourceDocument]:
    if _suffix(name) in _JSON_SUFFIXES:
        return _load_records(data, name, source, limits.max_chars)
    return [_load_document(data, name, stem, external_id, source, limits)]


def _load_records(data: bytes, name: str, source: str, max_chars: int) -> list[SourceDocument]:
    """The file's records; one with neither text nor title is skipped with a warning naming
    it (a collection of many thousand records is not refused for one empty line)."""
    docs = []
    for where, record in _json_records(_decode(data, name), name, _suffix(name)):
        try:
            doc = document_from_record(record, where=where, max_chars=max_chars)
        except EmptyRecord as exc:
            log.warning("record skipped: %s", exc.message)
            continue
        docs.append(replace(doc, source=doc.source or source))
    if not docs:
        raise Invalid(f"{name}: no records found", field=name)
    return docs


def _load_document(
    data: bytes, name: str, stem: str, external_id: str, source: str, limits: _Limits
) -> SourceDocument:
    extracted = _EXTRACTORS[_suffix(name)](data, name, limits)
    if not extracted.blocks:
        raise Invalid(f"{name}: no text found", field=name)
    title = _inline(extracted.title or "") or stem
    return SourceDocument(external_id, title, extracted.blocks, source, extracted.metadata)


# -- normalisation -----------------------------------------------------------------------------


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        raise Invalid(
            f"{name}: not valid UTF-8 (byte 0x{byte:02x} at position {exc.start})", field=name
        ) from exc
    return _clean(text.removeprefix("\ufeff"))


def _clean(text: str) -> str:
    """Unix newlines, NFC, no lone surrogates and no control characters but newline and tab."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", _CONTROL.sub("", text))


def _paragraph_text(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in _clean(text).split("\n"))
    return "\n".join(line for line in lines if line)


def _code_text(text: str) -> str:
    """Code keeps its indentation: only trailing spaces and surrounding blank lines go."""
    code = "\n".join(line.rstrip() for line in _clean(text).split("\n")).strip("\n")
    return code if code.strip() else ""


def _inline(text: str) -> str:
    return " ".join(_clean(text).split())


def _row(cells: Iterable[str]) -> str:
    """A table row as one line: the non-empty cells joined by " | "."""
    return " | ".join(text for text in (_inline(cell) for cell in cells) if text)


@dataclass
class _Blocks:
    """Collects blocks under the current heading path while a document is read in order.

    The document's text is counted as it grows, so that one over the character limit is
    refused as soon as it is, not once all of it is in memory.
    """

    where: str
    max_chars: int | None
    blocks: list[Block] = field(default_factory=list)
    first_h1: str | None = None
    first_heading: str | None = None
    chars: int = 0
    _open: list[tuple[int, str]] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        """A heading closes every open heading at its level or deeper, then opens itself."""
        text = _inline(text)
        self._open = [(lvl, title) for lvl, title in self._open if lvl < level]
        if not text:
            return
        self._open.append((level, text))
        self.first_heading = self.first_heading or text
        if level == 1:
            self.first_h1 = self.first_h1 or text

    def add(self, text: str, *, preformatted: bool = False) -> None:
        cleaned = _code_text(text) if preformatted else _paragraph_text(text)
        if not cleaned:
            return
        # The same count as len(SourceDocument.text): blocks joined by blank lines.
        self.chars += len(cleaned) + (2 if self.blocks else 0)
        if self.max_chars is not None and self.chars > self.max_chars:
            raise TooLarge(
                f"{self.where}: text is over the limit of {self.max_chars} characters",
                field=self.where,
            )
        self.blocks.append(Block(cleaned, tuple(title for _, title in self._open)))

    def add_paragraphs(self, text: str) -> None:
        text = _clean(text)
        start = 0
        for gap in _BLANK_LINE.finditer(text):
            self.add(text[start : gap.start()])
            start = gap.end()
        self.add(text[start:])


@dataclass
class _Extracted:
    title: str | None
    blocks: list[Block]
    metadata: dict[str, Any] = field(default_factory=dict)


# -- text formats ------------------------------------------------------------------------------


def _read_txt(data: bytes, name: str, limits: _Limits) -> _Extracted:
    out = _Blocks(name, limits.max_chars)
    out.add_paragraphs(_decode(data, name))
    return _Extracted(None, out.blocks)


def _read_markdown(data: bytes, name: str, limits: _Limits) -> _Extracted:
    reader = _MarkdownReader(_Blocks(name, limits.max_chars))
    for line in io.StringIO(_FRONT_MATTER.sub("", _decode(data, name), count=1)):
        reader.feed(line.removesuffix("\n"))
    reader.finish()
    return _Extracted(reader.out.first_h1, reader.out.blocks)


class _MarkdownReader:
    """Reads Markdown line by line: ATX headings, fenced code, paragraphs and list items."""

    def __init__(self, out: _Blocks) -> None:
        self.out = out
        self._lines: list[str] = []
        self._fence: str | None = None

    def feed(self, line: str) -> None:
        if self._fence is not None:
            self._feed_code(line, self._fence)
        elif fence := _FENCE.match(line):
            self._end_paragraph()
            self._fence = fence[1]
        elif heading := _atx_heading(line):
            self._end_paragraph()
            self.out.heading(*heading)
        elif not line.strip():
            self._end_paragraph()
        else:
            if _LIST_ITEM.match(line):
                self._end_paragraph()
            self._lines.append(line)

    def finish(self) -> None:
        """An unclosed fence runs to the end of the file."""
        if self._fence is not None:
            self.out.add("\n".join(self._lines), preformatted=True)
            self._lines = []
        self._end_paragraph()

    def _feed_code(self, line: str, fence: str) -> None:
        closing = _FENCE.match(line)
        if closing and closing[1].startswith(fence) and not line[closing.end() :].strip():
            self.out.add("\n".join(self._lines), preformatted=True)
            self._lines = []
            self._fence = None
        else:
            self._lines.append(line)

    def _end_paragraph(self) -> None:
        text = "\n".join(self._lines)
        self._lines = []
        self.out.add(text)


def _atx_heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading line, its closing #s removed; None for other lines.

    Plain string operations: a regular expression for the closing sequence backtracks
    quadratically over a long run of spaces.
    """
    opening = _ATX_OPENING.match(line)
    if opening is None:
        return None
    text = line[opening.end() :].rstrip(" \t")
    bare = text.rstrip("#")
    if bare != text and bare[-1:] in (" ", "\t"):
        text = bare.rstrip(" \t")
    return len(opening[1]), text


def _read_html(data: bytes, name: str, limits: _Limits) -> _Extracted:
    text = _decode(data, name)
    elements = sum(1 for _ in _HTML_START_TAG.finditer(text))
    if elements > MAX_HTML_ELEMENTS:
        raise TooLarge(
            f"{name}: {elements} HTML elements is over the limit of {MAX_HTML_ELEMENTS}",
            field=name,
        )
    soup = _parsed(name, "HTML", lambda: BeautifulSoup(text, "html.parser"))
    title = _html_title(soup)
    for tag in soup.find_all(_HTML_DROPPED):
        tag.decompose()
    reader = _HtmlReader(_Blocks(name, limits.max_chars))
    reader.walk(soup)
    reader.end_run()
    return _Extracted(title or reader.out.first_h1, reader.out.blocks)


def _html_title(soup: BeautifulSoup) -> str | None:
    # An <svg> may carry its own <title>, which names the picture, not the page.
    titles = (t for t in soup.find_all("title") if t.find_parent("svg") is None)
    first = next(titles, None)
    return first.get_text(" ") if first is not None else None


class _HtmlReader:
    """Walks the element tree in order; block elements end the current run of inline text.

    The walk keeps its own stack (an element, or None where a block element ends) instead of
    recursing, so that elements nested deeper than Python's recursion limit are read too.
    """

    def __init__(self, out: _Blocks) -> None:
        self.out = out
        self._run: list[str] = []

    def walk(self, root: Tag) -> None:
        todo: list[PageElement | None] = list(reversed(root.contents))
        while todo:
            node = todo.pop()
            if node is None:
                self.end_run()
            elif isinstance(node, Tag):
                self._element(node, todo)
            elif isinstance(node, NavigableString) and not isinstance(node, PreformattedString):
                self._run.append(_squeeze(node))

    def end_run(self) -> None:
        self.out.add("".join(self._run))
        self._run = []

    def _element(self, tag: Tag, todo: list[PageElement | None]) -> None:
        if tag.name == "br":
            self._run.append("\n")
        elif tag.name not in _HTML_BLOCKS:
            todo.extend(reversed(tag.contents))
        else:
            self.end_run()
            self._block(tag, todo)

    def _block(self, tag: Tag, todo: list[PageElement | None]) -> None:
        if tag.name in _HTML_HEADINGS:
            self.out.heading(int(tag.name[1]), tag.get_text(" "))
        elif tag.name == "pre":
            self.out.add(tag.get_text(), preformatted=True)
        elif tag.name == "tr":
            cells = tag.find_all(["td", "th"], recursive=False)
            self.out.add(_row(cell.get_text(" ") for cell in cells))
        else:
            todo.append(None)
            todo.extend(reversed(tag.contents))


def _squeeze(text: str) -> str:
    """HTML source line breaks and indentation are not text: any whitespace run is one space."""
    return _WHITESPACE.sub(" ", text)


# -- binary formats ----------------------------------------------------------------------------


def _parsed(name: str, kind: str, parse: Callable[[], _T]) -> _T:
    """Run a third-party parser on untrusted bytes: any failure means an unreadable file.

    The one place where their errors become ours: a parser's own resource limit is TooLarge,
    nesting deeper than Python's recursion limit and anything else is Invalid.
    """
    try:
        return parse()
    except HybridError:
        raise
    except LimitReachedError as exc:
        raise TooLarge(
            f"{name}: the {kind} file is over a reader limit: {exc}", field=name
        ) from exc
    except Exception as exc:
        got = "one nested too deep to read" if _from_recursion(exc) else repr(exc)
        raise Invalid(f"{name}: expected a readable {kind} file, got {got}", field=name) from exc


def _from_recursion(exc: BaseException | None) -> bool:
    """Whether a RecursionError is the error or what led to it (pypdf wraps its own)."""
    while exc is not None and not isinstance(exc, RecursionError):
        exc = exc.__cause__ or exc.__context__
    return exc is not None


def _read_pdf(data: bytes, name: str, limits: _Limits) -> _Extracted:
    return _parsed(name, "PDF", lambda: _pdf_contents(data, name, limits))


def _pdf_contents(data: bytes, name: str, limits: _Limits) -> _Extracted:
    reader = PdfReader(io.BytesIO(data))
    # Many PDFs are encrypted only to restrict editing, with an empty password to open them.
    if reader.is_encrypted and not reader.decrypt(""):
        raise Invalid(f"{name}: the PDF is encrypted with a password", field=name)
    _check_page_count(reader, name, limits.max_pdf_pages)
    out = _Blocks(name, limits.max_chars)
    budget = _PdfBudget(name, limits.max_chars)
    for page in reader.pages:
        out.add_paragraphs(page.extract_text(visitor_operand_before=budget.see))
    budget.check()
    title = reader.metadata.title if reader.metadata else None
    return _Extracted(title, out.blocks, {"pages": len(reader.pages)})


class _PdfBudget:
    """Sees every content operator before pypdf runs it, and refuses the file once the pages
    show more text than 4 bytes (the longest character code) for each allowed character, or
    run more than MAX_PDF_OPERATORS operators.

    pypdf builds all of a page's text before it returns it, and a tiny file can make that
    gigabytes: one compressed stream drawn by every page, or a form drawn thousands of times
    on one. Having a visitor makes pypdf parse pages without text too, hence the operator
    count. A refusal inside a form is logged and skipped by pypdf: the next operator, or the
    check after the last page, repeats it.
    """

    def __init__(self, name: str, max_chars: int) -> None:
        self.name = name
        self.max_chars = max_chars
        self.text_bytes = 4 * max_chars
        self.operators = MAX_PDF_OPERATORS

    def see(self, operator: bytes, operands: list[Any], *_matrices: Any) -> None:
        self.operators -= 1
        if operator in _PDF_SHOW_TEXT:
            shown = [o for op in operands for o in (op if isinstance(op, list) else [op])]
            self.text_bytes -= sum(len(o) for o in shown if isinstance(o, bytes | str))
        self.check()

    def check(self) -> None:
        if self.text_bytes < 0:
            raise TooLarge(
                f"{self.name}: text is over the limit of {self.max_chars} characters",
                field=self.name,
            )
        if self.operators < 0:
            raise TooLarge(
                f"{self.name}: more than {MAX_PDF_OPERATORS} content operators, the limit",
                field=self.name,
            )


def _check_page_count(reader: PdfReader, name: str, max_pages: int) -> None:
    """Count pages in the page tree up to the limit before pypdf lists them all.

    The tree's /Count may lie, and listing a huge or self-repeating tree (a node among its
    own kids many times) is what costs the time and memory. Pages are told from /Pages nodes
    as pypdf does. More than 2 * max_pages + 1 nodes in all (what a tree of max_pages pages
    needs even with a /Pages node of its own for each page) is too many pages as well.
    """
    nodes: list[Any] = [reader.root_object.get("/Pages")]
    pages = visited = 0
    while nodes:
        node = nodes.pop()
        node = node.get_object() if node is not None else None
        visited += 1
        if not isinstance(node, DictionaryObject):
            continue
        kind = node.get("/Type")
        if kind == "/Pages" or (kind is None and "/Kids" in node):
            kids = node.get("/Kids")
            kids = kids.get_object() if kids is not None else None
            nodes.extend(kids if isinstance(kids, ArrayObject) else [])
        else:
            pages += 1
        if pages > max_pages or visited > 2 * max_pages + 1:
            raise TooLarge(f"{name}: more than {max_pages} pages, the limit", field=name)


def _read_docx(data: bytes, name: str, limits: _Limits) -> _Extracted:
    return _parsed(name, "DOCX", lambda: _docx_contents(data, name, limits))


def _docx_contents(data: bytes, name: str, limits: _Limits) -> _Extracted:
    _check_unzipped(data, name)
    document = docx.Document(io.BytesIO(data))
    # Paragraph styles by id, looked up once: python-docx's Paragraph.style scans every style
    # of the document for each paragraph.
    paragraph_type = WD_STYLE_TYPE.PARAGRAPH
    styles = {s.style_id: s.name or "" for s in document.styles if s.type == paragraph_type}
    default_style = document.styles.default(paragraph_type)
    unstyled = (default_style.name or "") if default_style is not None else ""
    out = _Blocks(name, limits.max_chars)
    title_paragraph: str | None = None
    for item in document.element.body.iterchildren(*_DOCX_BLOCKS):
        if isinstance(item, CT_Tbl):
            _docx_table(item, out)
        elif (style := styles.get(item.style, unstyled)) == "Title":
            title_paragraph = title_paragraph or _inline(_docx_text(item))
        elif heading := _DOCX_HEADING.fullmatch(style):
            out.heading(int(heading[1]), _docx_text(item))
        else:
            out.add(_docx_text(item))
    title = document.core_properties.title or title_paragraph or out.first_heading
    return _Extracted(title, out.blocks)


def _docx_table(table: CT_Tbl, out: _Blocks) -> None:
    """One block per row. A cell spanning columns appears once; a cell merged down a column
    repeats its text in each row, as the grid shows it (kept by the column it starts at)."""
    above: dict[int, str] = {}
    for row in table.tr_lst:
        column = row.grid_before
        cells = []
        for cell in row.tc_lst:
            if cell.vMerge == "continue":
                text = above.get(column, "")
            else:
                text = "\n".join(_docx_text(paragraph) for paragraph in cell.p_lst)
            above[column] = text
            cells.append(text)
            column += cell.grid_span
        out.add(_row(cells))


def _docx_text(paragraph: CT_P) -> str:
    """CT_P.text (runs and hyperlinks, in order) without an XPath query for each paragraph."""
    return "".join(child.text for child in paragraph.iterchildren(*_DOCX_RUNS))


def _check_unzipped(data: bytes, name: str) -> None:
    """Refuse a zip bomb, or XML of too many elements, before python-docx opens the file.

    The declared sizes must add up to at most MAX_UNZIPPED_BYTES, each part must inflate to
    no more than its declared size, and the XML parts may hold at most MAX_DOCX_TAGS tags.
    zipfile reads a part whole by inflating all of its data at once and only then cutting it
    to its declared size, so a part that declares 100 bytes can take gigabytes: each part is
    inflated here first, in small steps.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        parts = archive.infolist()
    total = sum(part.file_size for part in parts)
    if total > MAX_UNZIPPED_BYTES:
        raise TooLarge(
            f"{name}: unzips to {total} bytes, over the limit of {MAX_UNZIPPED_BYTES}", field=name
        )
    tags = 0
    for part in parts:
        xml = part.filename.endswith((".xml", ".rels"))
        tags += sum(chunk.count(b"<") if xml else 0 for chunk in _unzipped(data, part, name))
    if tags > MAX_DOCX_TAGS:
        raise TooLarge(f"{name}: {tags} XML tags is over the limit of {MAX_DOCX_TAGS}", field=name)


def _unzipped(data: bytes, part: zipfile.ZipInfo, name: str) -> Iterator[bytes]:
    """A part's content in steps of at most _INFLATE_STEP bytes; refused as soon as it
    inflates past its declared size."""
    _, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack_from(data, part.header_offset)
    start = part.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
    steps = range(start, start + part.compress_size, _INFLATE_STEP)
    raw = (
        data[offset : min(offset + _INFLATE_STEP, start + part.compress_size)] for offset in steps
    )
    if part.compress_type == zipfile.ZIP_STORED:
        yield from raw
        return
    if part.compress_type != zipfile.ZIP_DEFLATED:
        raise Invalid(
            f"{name}: expected parts stored or deflated, got compression method "
            f"{part.compress_type} in {part.filename!r}",
            field=name,
        )
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    for pending in raw:
        while pending:
            chunk = inflater.decompress(pending, _INFLATE_STEP)
            size += len(chunk)
            if size > part.file_size:
                raise TooLarge(
                    f"{name}: part {part.filename!r} unzips to more than the {part.file_size} "
                    "bytes it declares",
                    field=name,
                )
            yield chunk
            pending = inflater.unconsumed_tail
    # Every input byte is in: what is left to come out is at most one back-reference.
    yield inflater.flush()


_EXTRACTORS: dict[str, Callable[[bytes, str, _Limits], _Extracted]] = {
    ".txt": _read_txt,
    ".md": _read_markdown,
    ".markdown": _read_markdown,
    ".html": _read_html,
    ".htm": _read_html,
    ".pdf": _read_pdf,
    ".docx": _read_docx,
}


# -- JSON records ------------------------------------------------------------------------------


def _json_records(text: str, name: str, suffix: str) -> Iterable[tuple[str, object]]:
    """(where, record) pairs: one per non-blank JSONL line, or the object or list of a .json.

    JSONL lines are parsed one at a time, as they are used: a bad record stops the file
    before the rest is parsed, and a good one is not held twice (parsed, then loaded).
    """
    if suffix == ".jsonl":
        return _jsonl_records(text, name)
    return _json_file_records(_parse_json(text, name), name)


def _jsonl_records(text: str, name: str) -> Iterator[tuple[str, object]]:
    for number, line in enumerate(io.StringIO(text), start=1):
        if line.strip():
            where = f"{name} line {number}"
            yield where, _parse_json(line, where)


def _json_file_records(value: object, name: str) -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [(name, value)]
    if isinstance(value, list):
        return [(f"{name}[{i}]", record) for i, record in enumerate(value)]
    raise Invalid(
        f"{name}: expected a JSON object or a list of objects, got {_json_type(value)}", field=name
    )


def _parse_json(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        raise Invalid(f"{where}: malformed JSON: {exc.msg} at {at}", field=where) from exc
    except RecursionError as exc:
        raise _too_deep(where, where) from exc
    except ValueError as exc:
        raise Invalid(f"{where}: malformed JSON: {exc}", field=where) from exc


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "list", str: "string", int: "integer", float: "number"}
    return names.get(type(value), type(value).__name__)


def _field_error(where: str, key: str, expected: str, got: str) -> Invalid:
    return Invalid(f"{where}: field '{key}' must be {expected}, got {got}", field=key)


def _string_field(record: dict[Any, Any], key: str, where: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise _field_error(where, key, "a string", _json_type(value))
    return value


def _record_id(record: dict[Any, Any], where: str) -> str | None:
    key = next((k for k in _ID_KEYS if record.get(k) is not None), None)
    if key is None:
        return None
    value = record[key]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    got = repr(value) if isinstance(value, str) else _json_type(value)
    raise _field_error(where, key, "a non-empty string or an integer", got)


def _content_id(title: str, text: str) -> str:
    # Lone surrogates are cleaned out of the text later; the id is taken from it as given.
    return hashlib.sha256((title + text).encode(errors="surrogatepass")).hexdigest()[:32]


def _metadata_field(record: dict[Any, Any], where: str) -> dict[str, Any]:
    value = record.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _field_error(where, "metadata", "a JSON object", _json_type(value))
    return value


def _acl_field(record: dict[Any, Any], where: str) -> list[str] | None:
    value = record.get("acl")
    if value is None:
        return None
    expected = "a non-empty list of non-empty strings"
    if not isinstance(value, list) or not value:
        raise _field_error(where, "acl", expected, _json_type(value) if value else "[]")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _field_error(where, "acl", expected, f"{item!r} at index {i}")
    return value


def _published_at_field(record: dict[Any, Any], where: str) -> datetime | None:
    value = _string_field(record, "published_at", where)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        expected = "an ISO 8601 date or date-time"
        raise _field_error(where, "published_at", expected, repr(value)) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _popularity_field(record: dict[Any, Any], where: str) -> float | None:
    value = record.get("popularity")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _field_error(where, "popularity", "a finite number >= 0", _json_type(value))
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise _field_error(where, "popularity", "a finite number >= 0", repr(value)[:40])
    return number


def _check_values(record: dict[Any, Any], where: str) -> None:
    """Refuse a record holding anything PostgreSQL cannot store as JSONB, or that is nested
    deeper than recursive code after this (json.dumps) can walk.

    Keys and values at any depth must be JSON values without NUL characters or lone
    surrogates, with finite numbers, and objects and lists at most MAX_JSON_DEPTH deep. The
    body text and title are cleaned of NUL and surrogates instead. The walk keeps its own stack.
    """
    # (the record's field it is in, a key or value, how deep it is: the record's are 2 deep)
    todo: list[tuple[str, object, int]] = []
    for key, value in record.items():
        todo.append((_printable(key), key, 2))
        if key not in ("text", "title"):
            todo.append((_printable(key), value, 2))
    while todo:
        name, value, depth = todo.pop()
        if isinstance(value, dict | list) and depth > MAX_JSON_DEPTH:
            raise _too_deep(where, name)
        if isinstance(value, dict):
            todo += [(name, item, depth + 1) for pair in value.items() for item in pair]
        elif isinstance(value, list):
            todo += [(name, item, depth + 1) for item in value]
        elif wrong := _unstorable(value):
            raise _field_error(where, name, *wrong)


def _unstorable(value: object) -> tuple[str, str] | None:
    """(expected, got) when a scalar cannot be stored as a JSON value; None when it can."""
    if isinstance(value, str):
        if "\x00" in value:
            return "free of NUL characters", "a NUL character"
        if _SURROGATE.search(value):
            return "valid Unicode text", "a lone surrogate"
    elif isinstance(value, float) and not math.isfinite(value):
        return "a finite number", repr(value)
    elif isinstance(value, int) and abs(value) >= _LARGEST_DECIMAL:
        return "a number Python can write out", "an integer of over 4300 digits"
    elif value is not None and not isinstance(value, int | float):
        return "a JSON value", f"a Python {type(value).__name__}"
    return None


def _printable(key: object) -> str:
    return _CONTROL.sub("", key) if isinstance(key, str) else repr(key)


def _too_deep(where: str, key: str) -> Invalid:
    return Invalid(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep", field=key)


def estimate_count(paths: Sequence[Path]) -> int:
    """How many documents `paths` hold, cheaply (JSONL lines are counted, not parsed): the
    total of a progress bar."""
    total = 0
    for path in paths:
        if path.suffix.lower() == ".jsonl":
            with path.open("rb") as lines:
                total += sum(1 for line in lines if line.strip())
        else:
            total += 1
    return total
