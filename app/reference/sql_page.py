"""The SQL reference: every file in `sql/`, its purpose, and each named statement with its
comment, its bound parameters and its text."""

from __future__ import annotations

import re

from sqlalchemy import text

from app.db.queries import SQL_DIR
from app.reference.markdown import block, code, header, page

INTRO = (
    "Every statement that matters lives in `sql/`, commented, loaded once "
    "(`app/db/queries.py`) and run with bound parameters (`:name`), never with values "
    "formatted into the text. A file holds several statements, each introduced by a "
    "`-- name: <name>` line."
)
NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def render() -> str:
    lines = header("SQL", "the files in `sql/`", INTRO)
    for path in sorted(SQL_DIR.glob("*.sql")):
        lines += _file(path.name, path.read_text())
    return page(lines)


def _file(filename: str, source: str) -> list[str]:
    preamble, *parts = NAME.split(source)
    lines = [f"## sql/{filename}", "", *_prose(preamble), ""]
    for name, body in zip(parts[::2], parts[1::2], strict=True):
        lines += _statement(name, body.strip())
    return lines


def _statement(name: str, body: str) -> list[str]:
    comment = []
    for line in body.splitlines():
        if not line.startswith("--"):
            break
        comment.append(line)
    params = sorted(text(body).compile().params)
    lines = [f"### {name}", "", *_prose("\n".join(comment)), ""]
    if params:
        lines += ["Parameters: " + ", ".join(code(f":{p}") for p in params), ""]
    return lines + block(body, "sql")


def _prose(comment: str) -> list[str]:
    """A comment block as paragraphs of text (blank comment lines separate paragraphs)."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in comment.splitlines():
        words = line.removeprefix("--").strip()
        if words:
            current.append(words)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs).splitlines()
