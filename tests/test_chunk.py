"""Tests for the chunk step: sections, the three strategies, limits, overlap and edge cases.

Most expectations use a whitespace tokenizer (one token per word) so that the chunks can be
checked by eye; the bundled model's tokenizer covers real text, non-Latin scripts and speed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from app.errors import ConfigError, Invalid
from app.ingest.chunk import HFTokenizer, Tokenizer, bundled_tokenizer, chunk_document
from app.ingest.model import Block, Chunk, Section, SourceDocument
from app.settings import ChunkSettings, ChunkStrategy

STRATEGIES: tuple[ChunkStrategy, ...] = ("structure", "recursive", "fixed")


class Words:
    """One token per whitespace-separated word."""

    def count(self, text: str) -> int:
        return len(text.split())

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


class Chars:
    """One token per character, whitespace included, so joining pieces adds tokens."""

    def count(self, text: str) -> int:
        return len(text)

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [(i, i + 1) for i in range(len(text))]


def document(*blocks: Block) -> SourceDocument:
    return SourceDocument(external_id="doc", title="Doc", blocks=list(blocks))


def chunk(
    doc: SourceDocument,
    tokenizer: Tokenizer,
    max_tokens: int,
    overlap_tokens: int = 0,
    strategy: ChunkStrategy = "structure",
) -> tuple[list[Section], list[Chunk]]:
    """Chunk `doc` and check the properties every result must have."""
    settings = ChunkSettings(strategy, max_tokens, overlap_tokens)
    sections, chunks = chunk_document(doc, settings, tokenizer)
    assert [s.ordinal for s in sections] == list(range(len(sections)))
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text.strip()
        assert c.token_count == tokenizer.count(c.text) <= max_tokens
        assert c.heading_path == sections[c.section_ordinal].heading_path
    return sections, chunks


def texts(chunks: list[Chunk]) -> list[str]:
    return [c.text for c in chunks]


def test_sections_are_runs_of_blocks_under_one_heading_path() -> None:
    doc = document(
        Block("Intro."),
        Block("First.", ("A",)),
        Block("   ", ("B",)),
        Block("Second.", ("A",)),
        Block("Deeper.", ("A", "B")),
        Block("Back.", ("A",)),
    )
    sections, chunks = chunk(doc, Words(), 50)
    assert sections == [
        Section(0, (), "Intro."),
        Section(1, ("A",), "First.\n\nSecond."),
        Section(2, ("A", "B"), "Deeper."),
        Section(3, ("A",), "Back."),
    ]
    assert [(c.section_ordinal, c.text) for c in chunks] == [
        (0, "Intro."),
        (1, "First.\n\nSecond."),
        (2, "Deeper."),
        (3, "Back."),
    ]


def test_whole_paragraphs_are_packed_up_to_the_limit() -> None:
    doc = document(Block("  a b c "), Block("d e f"), Block("g h i j"), Block("k"))
    _, chunks = chunk(doc, Words(), 6)
    assert texts(chunks) == ["a b c\n\nd e f", "g h i j\n\nk"]
    assert [c.token_count for c in chunks] == [6, 5]


def test_a_long_paragraph_is_split_at_sentence_boundaries() -> None:
    doc = document(Block("One two three. Four five six. Seven eight nine ten."))
    _, chunks = chunk(doc, Words(), 7)
    assert texts(chunks) == ["One two three. Four five six.", "Seven eight nine ten."]


def test_abbreviations_and_initials_do_not_end_sentences() -> None:
    first = "See Fig. 2 by Dr. Smith et al. Jones agrees, e.g. Table 3."
    doc = document(Block(f"Intro here. {first} J. R. Tolkien agrees. The end."))
    _, chunks = chunk(doc, Words(), 14)
    assert texts(chunks) == ["Intro here.", first, "J. R. Tolkien agrees. The end."]


def test_sentences_end_before_capitals_digits_quotes_and_brackets_only() -> None:
    doc = document(
        Block(
            'Stop now! Why not? Is it plan B? Yes it is. "Quoted words." (In brackets.) '
            "42 is fine. so ok."
        )
    )
    _, chunks = chunk(doc, Words(), 5)
    assert texts(chunks) == [
        "Stop now! Why not?",
        "Is it plan B?",
        'Yes it is. "Quoted words."',
        "(In brackets.)",
        "42 is fine. so ok.",
    ]


def test_a_sentence_too_long_is_cut_between_tokens_into_equal_parts() -> None:
    sentence = " ".join(f"w{i}" for i in range(25))
    _, chunks = chunk(document(Block(sentence)), Words(), 10)
    assert texts(chunks) == [
        " ".join(f"w{i}" for i in range(0, 9)),
        " ".join(f"w{i}" for i in range(9, 18)),
        " ".join(f"w{i}" for i in range(18, 25)),
    ]


def test_a_long_sentence_is_cut_into_substrings_by_the_model_tokenizer() -> None:
    sentence = " ".join(f"word{i} and its neighbour" for i in range(100))
    _, chunks = chunk(document(Block(sentence)), bundled_tokenizer(), 64)
    assert len(chunks) > 1
    assert all(c.text in sentence for c in chunks)


def test_overlap_repeats_whole_trailing_sentences_within_the_limit() -> None:
    doc = document(Block("Alpha one two. Bravo one two. Charlie one two. Delta one two."))
    _, chunks = chunk(doc, Words(), 7, overlap_tokens=3)
    assert texts(chunks) == [
        "Alpha one two. Bravo one two.",
        "Bravo one two. Charlie one two.",
        "Charlie one two. Delta one two.",
    ]


def test_no_overlap_when_the_last_sentence_is_longer_than_the_overlap() -> None:
    doc = document(Block("Alpha one two. Bravo one two. Charlie one two. Delta one two."))
    _, chunks = chunk(doc, Words(), 7, overlap_tokens=2)
    assert texts(chunks) == ["Alpha one two. Bravo one two.", "Charlie one two. Delta one two."]


def test_overlap_never_crosses_a_section() -> None:
    doc = document(
        Block("Alpha one. Bravo one. Charlie one.", ("First",)),
        Block("Delta one. Echo one. Foxtrot one.", ("Second",)),
    )
    _, chunks = chunk(doc, Words(), 4, overlap_tokens=2)
    assert [(c.section_ordinal, c.text) for c in chunks] == [
        (0, "Alpha one. Bravo one."),
        (0, "Bravo one. Charlie one."),
        (1, "Delta one. Echo one."),
        (1, "Echo one. Foxtrot one."),
    ]


def test_overlap_makes_room_for_a_whole_paragraph() -> None:
    doc = document(Block("Alpha one. Bravo one."), Block("c d e f"))
    _, chunks = chunk(doc, Words(), 5, overlap_tokens=2)
    assert texts(chunks) == ["Alpha one. Bravo one.", "c d e f"]


def test_zero_overlap_repeats_nothing() -> None:
    text = " ".join(f"Sentence number {i} says something short." for i in range(60))
    _, chunks = chunk(document(Block(text)), bundled_tokenizer(), 40)
    assert len(chunks) > 1
    assert " ".join(texts(chunks)) == text


def test_recursive_splits_by_paragraph_line_then_word_and_merges() -> None:
    doc = document(Block("a b c\nd e f\ng h"), Block("i j k l m n o p q r"))
    _, chunks = chunk(doc, Words(), 6, overlap_tokens=2, strategy="recursive")
    assert texts(chunks) == ["a b c\nd e f", "g h\n\ni j k l", "k l m n o p", "o p q r"]


def test_recursive_splits_sentences_before_words() -> None:
    doc = document(Block("One two. Three four five. Six seven."))
    _, chunks = chunk(doc, Words(), 6, strategy="recursive")
    assert texts(chunks) == ["One two. Three four five.", "Six seven."]


def test_fixed_windows_stride_over_the_whole_document() -> None:
    doc = document(Block("w0 w1 w2 w3 w4", ("A",)), Block("w5 w6 w7 w8 w9", ("B",)))
    _, chunks = chunk(doc, Words(), 4, overlap_tokens=1, strategy="fixed")
    assert [(c.section_ordinal, c.heading_path, c.text) for c in chunks] == [
        (0, ("A",), "w0 w1 w2 w3"),
        (0, ("A",), "w3 w4\n\nw5 w6"),
        (1, ("B",), "w6 w7 w8 w9"),
    ]


def test_fixed_windows_name_the_section_they_start_in() -> None:
    doc = document(Block("a", ("A",)), Block("b", ("B",)), Block("c", ("C",)))
    _, chunks = chunk(doc, Words(), 1, strategy="fixed")
    assert [(c.section_ordinal, c.text) for c in chunks] == [(0, "a"), (1, "b"), (2, "c")]


def test_joining_that_adds_tokens_is_caught_and_resplit() -> None:
    doc = document(Block("Abcdefghi. Bcdefghij. Cdefghijk. Defghijkl."))
    _, chunks = chunk(doc, Chars(), 40)
    assert texts(chunks) == ["Abcdefghi. Bcdefghij.", "Cdefghijk. Defghijkl."]


def test_windows_of_only_whitespace_are_dropped() -> None:
    doc = document(Block("a" + " " * 30 + "b"))
    _, chunks = chunk(doc, Chars(), 8, strategy="fixed")
    assert [c.text.strip() for c in chunks] == ["a", "b"]


def test_a_paragraph_that_fits_moves_whole_to_the_next_chunk() -> None:
    doc = document(Block("a b c d"), Block("Echo one two. Fox one two."))
    _, chunks = chunk(doc, Words(), 7, overlap_tokens=2)
    assert texts(chunks) == ["a b c d", "Echo one two. Fox one two."]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_word_fragments_that_count_more_alone_are_shortened(strategy: ChunkStrategy) -> None:
    gibberish = "-".join(
        "".join(chr(97 + (i * 7 + j * j * 5) % 26) for j in range(20)) for i in range(50)
    )
    _, chunks = chunk(document(Block(gibberish)), bundled_tokenizer(), 16, 0, strategy)
    assert "".join(texts(chunks)) == gibberish


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_single_short_block_is_one_chunk(strategy: ChunkStrategy) -> None:
    _, chunks = chunk(document(Block("Hello, world!")), bundled_tokenizer(), 32, 8, strategy)
    assert [(c.text, c.token_count) for c in chunks] == [("Hello, world!", 4)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_long_url_is_cut_into_its_own_substrings(strategy: ChunkStrategy) -> None:
    url = "https://example.com/search?q=" + "-".join(f"term{i}" for i in range(500))
    url = url[:3000]
    _, chunks = chunk(document(Block(url)), bundled_tokenizer(), 64, 8, strategy)
    assert len(chunks) > 1
    assert all(c.text in url for c in chunks)
    if strategy != "fixed":
        assert "".join(texts(chunks)) == url


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chinese_and_greek_text(strategy: ChunkStrategy) -> None:
    chinese = "自然语言处理是人工智能的一个重要领域。" * 30
    greek = "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. " * 20
    doc = document(Block(chinese, ("中文",)), Block(greek.strip(), ("Ελληνικά",)))
    sections, chunks = chunk(doc, bundled_tokenizer(), 100, 20, strategy)
    assert len(chunks) > 4
    assert all(c.text in "\n\n".join(s.text for s in sections) for c in chunks)
    if strategy == "structure":
        greek_chunks = [c for c in chunks if c.section_ordinal == 1]
        assert all(c.text.startswith("Η") and c.text.endswith(".") for c in greek_chunks)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_five_thousand_words_chunk_quickly(strategy: ChunkStrategy) -> None:
    vocabulary = ("search", "index", "vector", "query", "token", "ranking", "model", "score")
    words = [vocabulary[(i * 7) % len(vocabulary)] for i in range(5000)]
    sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, 5000, 12)]
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
    doc = document(*(Block(p, (f"Part {i // 10}",)) for i, p in enumerate(paragraphs)))
    tokenizer = bundled_tokenizer()
    tokenizer.count("warm up")
    started = time.perf_counter()
    chunk(doc, tokenizer, 128, 16, strategy)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (ChunkSettings("structure", 0, 0), "max_tokens"),
        (ChunkSettings("structure", 10, 10), "overlap_tokens"),
        (ChunkSettings("fixed", 10, -1), "overlap_tokens"),
        (ChunkSettings("sliding", 10, 2), "strategy"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_are_rejected(settings: ChunkSettings, field: str) -> None:
    with pytest.raises(Invalid) as caught:
        chunk_document(document(Block("Text.")), settings, Words())
    assert caught.value.field == field


def test_the_bundled_tokenizer_counts_without_special_tokens_truncation_or_padding() -> None:
    tokenizer = bundled_tokenizer()
    assert tokenizer.count("hi") == 1
    assert tokenizer.spans("Hello, world!") == [(0, 5), (5, 6), (7, 12), (12, 13)]
    assert tokenizer.count("word " * 300) == 300


def test_a_missing_tokenizer_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "tokenizer.json"
    with pytest.raises(ConfigError) as caught:
        HFTokenizer(missing)
    assert caught.value.field == str(missing)
