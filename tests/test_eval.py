"""Evaluation: the metric code against hand-computed values, and `hybrid eval` end to end on a
tiny BEIR-layout folder (table, JSON and PNG); with `--answers`, answers scripted on a loopback
OpenAI-compatible server, so that their citation scores and the judge's verdicts are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.answer.prompt import NOT_IN_CONTEXT
from app.eval import judge, metrics
from app.eval.answers import sample
from app.eval.runner import SAMPLE_SET, read_dataset
from tests.openai_server import OpenAIServer
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


# --- answers (`--answers`) --------------------------------------------------------------------


def test_citation_precision_and_recall_and_when_they_are_undefined() -> None:
    # Passages cite a, x (irrelevant) and a again; the context also holds b and c (grade 0).
    assert metrics.citation_precision(["a", "x", "a"], QRELS) == pytest.approx(2 / 3)
    assert metrics.citation_precision([], QRELS) is None
    context = ["a", "x", "b", "c"]
    assert metrics.citation_recall(["a", "x", "a"], context, QRELS) == pytest.approx(1 / 2)
    assert metrics.citation_recall([], context, QRELS) == 0.0
    assert metrics.citation_recall(["x"], ["x", "c"], QRELS) is None


def test_claims_are_the_sentences_that_cite_a_passage() -> None:
    answer = (
        "Cats purr [1]. Dogs bark. [2] It takes 3.5 days [1][3]. Nothing cited here. "
        "Unknown [9].\n- a list item [2]"
    )
    found = judge.claims(answer, 3)
    assert [(c.text, c.cites) for c in found] == [
        ("Cats purr [1].", [1]),
        ("Dogs bark. [2]", [2]),
        ("It takes 3.5 days [1][3].", [1, 3]),
        ("- a list item [2]", [2]),
    ]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"verdicts": [{"claim": 1, "supported": true}, {"claim": 2, "supported": false}]}',
         [True, False]),
        ('```json\n{"verdicts": [{"supported": false}, {"supported": true}]}\n```', [False, True]),
        ('{"verdicts": [{"claim": 1, "supported": true}]}', None),  # one verdict for two claims
        ('{"verdicts": [{"claim": 2, "supported": true}, {"claim": 1, "supported": true}]}', None),
        ('{"verdicts": [{"claim": 1, "supported": "yes"}, {"claim": 2, "supported": true}]}',
         None),
        ("Both claims are supported.", None),
        ('{"verdicts": [', None),
        ("[true, false]", None),
    ],
)  # fmt: skip
def test_judge_replies_are_read_strictly(reply: str, expected: list[bool] | None) -> None:
    assert judge.verdicts(reply, 2) == expected


def test_the_answered_queries_are_a_fixed_sample_in_file_order() -> None:
    queries = read_dataset(SAMPLE_SET).queries
    assert sample(queries, 3) == ["q08", "q18", "q24"]
    assert sample(queries, 100) == list(queries)


def answering(env: dict[str, str], server: OpenAIServer) -> dict[str, str]:
    return {
        **env,
        "HYBRID_ANSWER_MODELS": f"m1@{server.base_url}",
        "HYBRID_ANSWER_MAX_RETRIES": "0",
        "HYBRID_RERANK_MODEL": "off",
    }


VERDICTS = '{"verdicts": [{"claim": 1, "supported": true}, {"claim": 2, "supported": false}]}'


def test_eval_answers_scores_citations_and_the_judges_verdicts(
    env: dict[str, str], server: OpenAIServer, tmp_path: Path
) -> None:
    # Sampled: q08 (relevant embeddings-1, faq-offline), q18 (chunking-1), q24 (faq-offline),
    # answered in that order, each followed by its judging call when it cites a passage.
    server.say(
        "Small models run on a laptop [1][2]. They need no network [3].",
        VERDICTS,
        "Chunks overlap [1][2].",
        "I think so.",
        NOT_IN_CONTEXT,
    )
    out = tmp_path / "out"
    run = hybrid(
        answering(env, server), "eval", "--sample", "--modes", "keyword", "--answers",
        "--answer-queries", "3", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert run.code == 0, run.err
    answers = json.loads((out / "samples.json").read_text())["answers"]
    q08, q18, q24 = answers["per_query"]
    # The third passage is a document not judged relevant for q08.
    assert q08["context"][:2] == ["embeddings-1", "faq-offline"]
    assert q08["context"][2] not in ("embeddings-1", "faq-offline")
    assert q18["context"][:2] == ["chunking-1", "chunking-2"]
    assert "faq-offline" in q24["context"]
    # q08 cites 2 relevant passages of 3, and both relevant documents of its context.
    assert (q08["citation_precision"], q08["citation_recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (q08["judge"], q08["support"]) == ("judged", 0.5)
    assert q08["unsupported"] == ["They need no network [3]."]
    assert (q18["citation_precision"], q18["citation_recall"]) == (0.5, 1.0)
    assert (q18["judge"], q18["support"]) == ("unparseable", None)
    assert q18["judge_detail"] == "I think so."
    # q24 cites nothing: no precision, nothing to judge, and recall 0 (its context held one).
    assert (q24["cited"], q24["citation_precision"], q24["citation_recall"]) == ([], None, 0.0)
    assert q24["judge"] is None
    assert {key: answers[key] for key in SUMMARY} == {
        "queries": 3, "answered": 3, "failed": 0, "no_citation": 1, "no_relevant_context": 0,
        "judged": 1, "judge_unparseable": 1, "judge_failed": 0, "claims": 2,
        "supported_claims": 1, "support": 0.5, "modes": ["hybrid"],
        "models": [f"m1@{server.base_url}"], "failure": None,
    }  # fmt: skip
    assert answers["citation_precision"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert answers["citation_recall"] == pytest.approx(2 / 3)
    assert len(server.chat_calls) == 5
    judging = server.chat_calls[1].body
    assert judging["temperature"] == 0.0 and judging["response_format"] == {"type": "json_object"}
    system, user = (m["content"] for m in judging["messages"])
    assert system == judge.SYSTEM
    claims = "Claim 1: Small models run on a laptop [1][2].\nClaim 2: They need no network [3]."
    assert claims in user
    assert "[3] " in user and "[4] " not in user  # only the cited passages
    assert "citation precision │ 0.5833" in run.out and "support            │ 0.5000" in run.out
    assert "1 judge replies unusable" in run.text
    assert (out / "samples.png").read_bytes().startswith(b"\x89PNG")


SUMMARY = (
    "queries", "answered", "failed", "no_citation", "no_relevant_context", "judged",
    "judge_unparseable", "judge_failed", "claims", "supported_claims", "support", "modes",
    "models", "failure",
)  # fmt: skip


def test_eval_answers_counts_an_answer_the_provider_failed(
    env: dict[str, str], server: OpenAIServer, tmp_path: Path
) -> None:
    server.fail(500)  # the first answer (q08)
    server.say("Chunks overlap [1].", '{"verdicts": [{"claim": 1, "supported": true}]}')
    out = tmp_path / "out"
    run = hybrid(
        answering(env, server), "eval", "--sample", "--modes", "keyword", "--answers",
        "--answer-queries", "2", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert run.code == 0, run.err
    answers = json.loads((out / "samples.json").read_text())["answers"]
    assert (answers["answered"], answers["failed"], answers["judged"]) == (1, 1, 1)
    assert (answers["citation_precision"], answers["support"]) == (1.0, 1.0)
    failed = answers["per_query"][0]
    assert failed["query_id"] == "q08" and "HTTP 500" in failed["failure"]
    assert failed["citation_precision"] is None and failed["judge"] is None
    assert "HTTP 500" in answers["failure"] and "1 failed" in run.text


def test_eval_answers_exits_non_zero_when_the_provider_is_down(
    env: dict[str, str], server: OpenAIServer, tmp_path: Path
) -> None:
    server.down = 503
    out = tmp_path / "out"
    run = hybrid(
        answering(env, server), "eval", "--sample", "--modes", "keyword", "--answers",
        "--answer-queries", "2", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert run.failed_with("--answers: every answer failed (2 of 2)", "HTTP 503")
    report = json.loads((out / "samples.json").read_text())
    assert report["answers"]["failed"] == 2 and report["modes"][0]["mode"] == "keyword"


def test_eval_answers_refuses_without_a_chat_model(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = hybrid(env, "eval", "--sample", "--answers", "--out", str(out))
    assert run.failed_with("--answers", "no chat model", "HYBRID_ANSWER_MODELS")
    assert not out.exists()
    alone = hybrid(env, "eval", "--sample", "--answer-queries", "5")
    assert alone.failed_with("--answer-queries", "only with --answers")
