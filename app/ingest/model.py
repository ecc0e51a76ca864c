"""The values that flow down the write path: loaded documents, their sections and chunks.

A loader turns a file or record into a `SourceDocument` made of `Block`s (paragraph-sized runs
of text, each under a heading path). The chunker groups blocks into `Section`s (the parent
context) and cuts them into `Chunk`s (what is embedded and searched).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Block:
    """One paragraph, list item, table row or code block, under its heading path."""

    text: str
    heading_path: tuple[str, ...] = ()


@dataclass
class SourceDocument:
    """A document as loaded, before chunking. `acl=None` means "use the default ACL"."""

    external_id: str
    title: str
    blocks: list[Block]
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    acl: list[str] | None = None
    published_at: datetime | None = None
    popularity: float | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)

    def content_hash(self) -> str:
        """SHA-256 over what is embedded and indexed: title, headings and text.

        Metadata, ACL and dates are not part of it: changing them is an update without
        re-embedding.
        """
        payload = [self.title, [[list(b.heading_path), b.text] for b in self.blocks]]
        encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class Section:
    """Consecutive blocks under one heading path: the parent context of its chunks."""

    ordinal: int
    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Chunk:
    """A token-bounded piece of a section: the unit that is embedded and searched."""

    ordinal: int
    section_ordinal: int
    heading_path: tuple[str, ...]
    text: str
    token_count: int


def chunk_context(title: str, heading_path: tuple[str, ...]) -> str:
    """Title and headings above a chunk: indexed with it, and prepended to it when embedding.

    A heading that repeats the part before it (a Markdown H1 that is also the title) is
    dropped.
    """
    parts: list[str] = []
    for part in (title, *heading_path):
        if part and (not parts or parts[-1] != part):
            parts.append(part)
    return " › ".join(parts)


def embedding_text(title: str, chunk: Chunk) -> str:
    """What the model embeds for a chunk: its context line, then its text."""
    return embedding_text_of(chunk_context(title, chunk.heading_path), chunk.text)


def embedding_text_of(context: str, text: str) -> str:
    """`embedding_text` from a stored chunk's `context` and `text` columns."""
    return f"{context}\n{text}" if context else text
