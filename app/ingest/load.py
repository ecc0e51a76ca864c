"""Loaders: turn files, uploads and JSON records into `SourceDocument`s made of `Block`s.

Text, Markdown, HTML, PDF and DOCX files each become one document whose blocks carry the path
of their enclosing headings; JSON and JSONL files become one document per record. Every format
goes through the same normalisation (strict UTF-8, NFC, no control characters, collapsed
spaces) and the same limits, and every error names the file (and line or field) at fault.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, TypeVar

import docx
from bs4 import BeautifulSoup
from bs4.element import NavigableString, PreformattedString, Tag
from docx.table import Table
from docx.text.paragraph import Paragraph
from pypdf import PdfReader

from app.errors import HybridError, Invalid, NotFound, TooLarge, UnsupportedMedia
from app.ingest.model import Block, SourceDocument

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".json", ".jsonl"}
)
_JSON_SUFFIXES = frozenset({".json", ".jsonl"})

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t]+")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?:.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+\S")
_DOCX_HEADING = re.compile(r"Heading (\d)")

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
            _check_suffix(path.name)
            found.append(path)
        else:
            raise NotFound(f"{path}: no such file or directory", field=str(path))
    return list(dict.fromkeys(found))


def load_path(path: Path, *, max_bytes: int, max_chars: int) -> list[SourceDocument]:
    """Read one file: one document for text formats, one per record for .json/.jsonl.

    external_id defaults to the absolute POSIX path for text formats; source = that path.
    """
    name = str(path)
    if path.is_dir():
        raise Invalid(f"{name}: expected a file, got a directory", field=name)
    _check_suffix(name)
    try:
        _check_size(path.stat().st_size, name, max_bytes)
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise NotFound(f"{name}: no such file", field=name) from exc
    _check_size(len(data), name, max_bytes)
    source = path.resolve().as_posix()
    return _load(data, name, stem=path.stem, external_id=source, source=source, max_chars=max_chars)


def load_bytes(
    data: bytes,
    filename: str,
    *,
    max_bytes: int,
    max_chars: int,
    external_id: str | None = None,
) -> list[SourceDocument]:
    """Same as load_path for an upload: the format comes from the file name's suffix.

    external_id defaults to the file name (JSON records carry their own ids); source = the
    file name.
    """
    _check_suffix(filename)
    _check_size(len(data), filename, max_bytes)
    stem = PurePath(filename).stem
    doc_id = external_id or filename
    return _load(
        data, filename, stem=stem, external_id=doc_id, source=filename, max_chars=max_chars
    )


def document_from_record(record: object, *, where: str) -> SourceDocument:
    """Validate one JSON record (used for JSON/JSONL files and by the HTTP API)."""
    if not isinstance(record, dict):
        raise Invalid(f"{where}: expected a JSON object, got {_json_type(record)}")
    _reject_nul(record, where)
    text = _string_field(record, "text", where)
    if text is None:
        raise Invalid(f"{where}: field 'text' is required", field="text")
    out = _Blocks()
    out.add_paragraphs(text)
    if not out.blocks:
        raise _field_error(where, "text", "a non-empty string", repr(text[:40]))
    title = _string_field(record, "title", where) or ""
    extra = {key: value for key, value in record.items() if key not in _RECORD_KEYS}
    return SourceDocument(
        external_id=_record_id(record, where) or _content_id(title, text),
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


def _check_suffix(name: str) -> None:
    suffix = _suffix(name)
    if suffix not in SUPPORTED_SUFFIXES:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        given = repr(suffix) if suffix else "no suffix"
        raise UnsupportedMedia(f"{name}: expected one of {supported}, got {given}", field=name)


def _check_size(size: int, name: str, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLarge(f"{name}: {size} bytes is over the limit of {max_bytes} bytes", field=name)


def _load(
    data: bytes, name: str, *, stem: str, external_id: str, source: str, max_chars: int
) -> list[SourceDocument]:
    if _suffix(name) in _JSON_SUFFIXES:
        docs = _load_records(data, name, source)
    else:
        docs = [_load_document(data, name, stem, external_id, source)]
    for doc in docs:
        _check_chars(doc, name, max_chars)
    return docs


def _load_records(data: bytes, name: str, source: str) -> list[SourceDocument]:
    records = _json_records(_decode(data, name), name, _suffix(name))
    docs = [document_from_record(record, where=where) for where, record in records]
    return [replace(doc, source=doc.source or source) for doc in docs]


def _load_document(
    data: bytes, name: str, stem: str, external_id: str, source: str
) -> SourceDocument:
    extracted = _EXTRACTORS[_suffix(name)](data, name)
    if not extracted.blocks:
        raise Invalid(f"{name}: no text found", field=name)
    title = _inline(extracted.title or "") or stem
    return SourceDocument(external_id, title, extracted.blocks, source, extracted.metadata)


def _check_chars(doc: SourceDocument, name: str, max_chars: int) -> None:
    chars = len(doc.text)
    if chars > max_chars:
        raise TooLarge(
            f"{name}: {chars} characters of text in {doc.external_id!r} is over the limit "
            f"of {max_chars}",
            field=name,
        )


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
    """Unix newlines, NFC, and no control characters other than newline and tab."""
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
    """Collects blocks under the current heading path while a document is read in order."""

    blocks: list[Block] = field(default_factory=list)
    first_h1: str | None = None
    first_heading: str | None = None
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
        if cleaned:
            self.blocks.append(Block(cleaned, tuple(title for _, title in self._open)))

    def add_paragraphs(self, text: str) -> None:
        for paragraph in _BLANK_LINE.split(_clean(text)):
            self.add(paragraph)


@dataclass
class _Extracted:
    title: str | None
    blocks: list[Block]
    metadata: dict[str, Any] = field(default_factory=dict)


# -- text formats ------------------------------------------------------------------------------


def _read_txt(data: bytes, name: str) -> _Extracted:
    out = _Blocks()
    out.add_paragraphs(_decode(data, name))
    return _Extracted(None, out.blocks)


def _read_markdown(data: bytes, name: str) -> _Extracted:
    reader = _MarkdownReader()
    for line in _FRONT_MATTER.sub("", _decode(data, name), count=1).split("\n"):
        reader.feed(line)
    reader.finish()
    return _Extracted(reader.out.first_h1, reader.out.blocks)


class _MarkdownReader:
    """Reads Markdown line by line: ATX headings, fenced code, paragraphs and list items."""

    def __init__(self) -> None:
        self.out = _Blocks()
        self._lines: list[str] = []
        self._fence: str | None = None

    def feed(self, line: str) -> None:
        if self._fence is not None:
            self._feed_code(line, self._fence)
        elif fence := _FENCE.match(line):
            self._end_paragraph()
            self._fence = fence[1]
        elif heading := _ATX_HEADING.match(line):
            self._end_paragraph()
            self.out.heading(len(heading[1]), heading[2] or "")
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
        self.out.add("\n".join(self._lines))
        self._lines = []


def _read_html(data: bytes, name: str) -> _Extracted:
    soup = BeautifulSoup(_decode(data, name), "html.parser")
    title = _html_title(soup)
    for tag in soup.find_all(_HTML_DROPPED):
        tag.decompose()
    reader = _HtmlReader()
    reader.walk(soup)
    reader.end_run()
    return _Extracted(title or reader.out.first_h1, reader.out.blocks)


def _html_title(soup: BeautifulSoup) -> str | None:
    # An <svg> may carry its own <title>, which names the picture, not the page.
    titles = (t for t in soup.find_all("title") if t.find_parent("svg") is None)
    first = next(titles, None)
    return first.get_text(" ") if first is not None else None


class _HtmlReader:
    """Walks the element tree in order; block elements end the current run of inline text."""

    def __init__(self) -> None:
        self.out = _Blocks()
        self._run: list[str] = []

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, Tag):
                self._element(child)
            elif isinstance(child, NavigableString) and not isinstance(child, PreformattedString):
                self._run.append(_squeeze(child))

    def end_run(self) -> None:
        self.out.add("".join(self._run))
        self._run = []

    def _element(self, tag: Tag) -> None:
        if tag.name == "br":
            self._run.append("\n")
        elif tag.name not in _HTML_BLOCKS:
            self.walk(tag)
        else:
            self.end_run()
            self._block(tag)

    def _block(self, tag: Tag) -> None:
        if tag.name in _HTML_HEADINGS:
            self.out.heading(int(tag.name[1]), tag.get_text(" "))
        elif tag.name == "pre":
            self.out.add(tag.get_text(), preformatted=True)
        elif tag.name == "tr":
            cells = tag.find_all(["td", "th"], recursive=False)
            self.out.add(_row(cell.get_text(" ") for cell in cells))
        else:
            self.walk(tag)
            self.end_run()


def _squeeze(text: str) -> str:
    """HTML source line breaks and indentation are not text: any whitespace run is one space."""
    return re.sub(r"\s+", " ", text)


# -- binary formats ----------------------------------------------------------------------------


def _parsed(name: str, kind: str, parse: Callable[[], _T]) -> _T:
    """Run a third-party parser on untrusted bytes: any failure means an unreadable file."""
    try:
        return parse()
    except HybridError:
        raise
    except Exception as exc:
        raise Invalid(f"{name}: expected a readable {kind} file, got {exc!r}", field=name) from exc


def _read_pdf(data: bytes, name: str) -> _Extracted:
    return _parsed(name, "PDF", lambda: _pdf_contents(data, name))


def _pdf_contents(data: bytes, name: str) -> _Extracted:
    reader = PdfReader(io.BytesIO(data))
    # Many PDFs are encrypted only to restrict editing, with an empty password to open them.
    if reader.is_encrypted and not reader.decrypt(""):
        raise Invalid(f"{name}: the PDF is encrypted with a password", field=name)
    out = _Blocks()
    for page in reader.pages:
        out.add_paragraphs(page.extract_text())
    title = reader.metadata.title if reader.metadata else None
    return _Extracted(title, out.blocks, {"pages": len(reader.pages)})


def _read_docx(data: bytes, name: str) -> _Extracted:
    document = _parsed(name, "DOCX", lambda: docx.Document(io.BytesIO(data)))
    out = _Blocks()
    title_paragraph: str | None = None
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            _docx_table(item, out)
        elif _style(item) == "Title":
            title_paragraph = title_paragraph or _inline(item.text)
        elif heading := _DOCX_HEADING.fullmatch(_style(item)):
            out.heading(int(heading[1]), item.text)
        else:
            out.add(item.text)
    title = document.core_properties.title or title_paragraph or out.first_heading
    return _Extracted(title, out.blocks)


def _style(paragraph: Paragraph) -> str:
    style = paragraph.style
    return (style.name or "") if style is not None else ""


def _docx_table(table: Table, out: _Blocks) -> None:
    for row in table.rows:
        cells = row.cells
        # A merged cell appears once per grid column it spans; keep it once.
        distinct = [c for i, c in enumerate(cells) if i == 0 or c is not cells[i - 1]]
        out.add(_row(cell.text for cell in distinct))


_EXTRACTORS: dict[str, Callable[[bytes, str], _Extracted]] = {
    ".txt": _read_txt,
    ".md": _read_markdown,
    ".markdown": _read_markdown,
    ".html": _read_html,
    ".htm": _read_html,
    ".pdf": _read_pdf,
    ".docx": _read_docx,
}


# -- JSON records ------------------------------------------------------------------------------


def _json_records(text: str, name: str, suffix: str) -> list[tuple[str, object]]:
    """(where, record) pairs: one per non-blank JSONL line, or the object or list of a .json."""
    if suffix == ".jsonl":
        records = _jsonl_records(text, name)
    else:
        records = _json_file_records(_parse_json(text, name), name)
    if not records:
        raise Invalid(f"{name}: no records found", field=name)
    return records


def _jsonl_records(text: str, name: str) -> list[tuple[str, object]]:
    records: list[tuple[str, object]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            where = f"{name} line {number}"
            records.append((where, _parse_json(line, where)))
    return records


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
    except (ValueError, RecursionError) as exc:
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
    return hashlib.sha256((title + text).encode()).hexdigest()[:32]


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


def _reject_nul(record: dict[Any, Any], where: str) -> None:
    """PostgreSQL cannot store NUL in text or JSONB: body text and title are cleaned, any other
    field holding one is refused."""
    for key, value in record.items():
        if _has_nul(key) or (key not in ("text", "title") and _has_nul(value)):
            name = str(key).replace("\x00", "")
            raise _field_error(where, name, "free of NUL characters", "a NUL character")


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


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
