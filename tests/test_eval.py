"""Evaluation: the metric code against hand-computed values, and `hybrid eval` end to end on a
tiny BEIR-layout folder (table, JSON and PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.eval import metrics
from tests.test_cli import env, hybrid

__all__ = ["env"]

QRELS = {"a": 2, "b": 1, "c": 0, "z": 1}


def test_ndcg_uses_graded_gains_and_all_judged_relevant_documents() -> None:
    # Ranked b (gain 1) at 1, x (0) at 2, a (gain 2) at 3; ideal order a, b, z.
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg(["b", "x", "a"], QRELS, 10) == pytest.approx(dcg / ideal)
    assert metrics.ndcg(["b", "x", "a"], QRELS, 1) == pytest.approx(1 / 2)
    assert metrics.ndcg(["x"], {"x": 0}, 10) == 0.0


def test_recall_reciprocal_rank_and_hit() -> None:
    ranked = ["x", "c", "b", "y", "a"]
    assert metrics.recall(ranked, QRELS, 3) == pytest.approx(1 / 3)
    assert metrics.recall(ranked, QRELS, 100) == pytest.approx(2 / 3)
    assert metrics.reciprocal_rank(ranked, QRELS, 10) == pytest.approx(1 / 3)
    assert metrics.reciprocal_rank(ranked, QRELS, 2) == 0.0
    assert metrics.hit(ranked, QRELS, 5) == 1.0
    assert metrics.hit(ranked, QRELS, 2) == 0.0


def test_percentile_interpolates_like_numpy() -> None:
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert metrics.percentile([10.0, 20.0], 95) == pytest.approx(19.5)


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    corpus = [
        ("d1", "Cats", "Cats purr when they are content."),
        ("d2", "Dogs", "Dogs bark at strangers and wag their tails."),
        ("d3", "Owls", "Owls hunt mice at night."),
        ("d4", "Bees", "Bees make honey from nectar."),
    ]
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in corpus)
    )
    queries = [("q1", "why do cats purr"), ("q2", "night hunting birds"), ("q3", "unjudged")]
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": x}) + "\n" for i, x in queries)
    )
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    return folder


def test_eval_command_reports_every_mode(env: dict[str, str], beir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = hybrid(env, "eval", str(beir), "--out", str(out), "--no-progress")
    assert run.code == 0, run.err
    for mode in ("keyword", "vector", "hybrid"):
        assert mode in run.out
    report = json.loads((out / "tiny.json").read_text())
    assert report["queries"] == 2
    assert report["collection"] == "eval-tiny"
    assert {m["mode"] for m in report["modes"]} == {"keyword", "vector", "hybrid"}
    assert all(m["ndcg_10"] == pytest.approx(1.0) for m in report["modes"])
    assert (out / "tiny.png").read_bytes().startswith(b"\x89PNG")
    again = hybrid(env, "eval", str(beir), "--out", str(out), "--no-progress", "--modes", "keyword")
    assert again.code == 0, again.err


def test_eval_refuses_an_unknown_mode(env: dict[str, str], beir: Path) -> None:
    run = hybrid(env, "eval", str(beir), "--modes", "keyword,psychic", "--no-progress")
    assert run.failed_with("--modes", "psychic")


@pytest.mark.parametrize(
    ("broken", "content", "message"),
    [
        ("qrels.tsv", "query-id\tcorpus-id\tscore\nq9\td1\t1\n", "no query of queries.jsonl"),
        (
            "qrels.tsv",
            "query-id\tcorpus-id\tscore\nq1\td1\thigh\n",
            ":2: score 'high' is not an integer",
        ),
        ("queries.jsonl", '{"_id": "q1", "text": "cats"}\nnot json\n', ":2: not JSON"),
        ("queries.jsonl", '{"_id": "q1"}\n', ":1: expected an object with `_id` and `text`"),
        ("corpus.jsonl", None, "missing (expected a BEIR-layout folder)"),
    ],
)
def test_eval_exits_non_zero_when_it_cannot_evaluate(
    env: dict[str, str], beir: Path, broken: str, content: str | None, message: str
) -> None:
    if content is None:
        (beir / broken).unlink()
    else:
        (beir / broken).write_text(content)
    run = hybrid(env, "eval", str(beir), "--modes", "keyword")
    assert run.failed_with(message)


def test_eval_scores_title_only_records_and_skips_empty_ones(
    env: dict[str, str], beir: Path, tmp_path: Path
) -> None:
    with (beir / "corpus.jsonl").open("a") as corpus:
        corpus.write(json.dumps({"_id": "d5", "title": "Why cats purr", "text": ""}) + "\n")
        corpus.write(json.dumps({"_id": "d6", "title": "", "text": ""}) + "\n")
    (beir / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td5\t1\n")
    run = hybrid(env, "eval", str(beir), "--out", str(tmp_path / "out"), "--modes", "keyword")
    assert run.code == 0, run.err
    assert "record skipped" in run.err and "corpus.jsonl line 6" in run.err
    assert "5 documents" in run.out
    assert "\r" not in run.err  # no progress bar when stderr is no terminal
