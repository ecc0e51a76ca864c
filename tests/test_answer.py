"""Grounded answers over real HTTP against a real OpenAI-compatible server on loopback: the
prompt and its numbered context, citations, streaming as server-sent events, fallback between
models, retries, timeouts, malformed answers, the circuit breaker, extractive answers without a
model, access control, and a 4xx naming the field for every bad request."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from litestar.testing import TestClient
from structlog.testing import capture_logs

from app.answer import generate
from app.answer.context import Section, assemble
from app.answer.generate import MODELS_DOWN, NO_MODEL, NO_SOURCES
from app.answer.prompt import NOT_IN_CONTEXT, cited
from app.answer.providers import ChatModels, CircuitBreaker, parse_models
from app.api.app import create_app
from app.errors import ConfigError
from app.search.results import Hit
from app.service import Services
from app.settings import load_settings
from tests.conftest import make_settings
from tests.openai_server import DEFAULT_ANSWER, OpenAIServer
from tests.test_api import Client, problem
from tests.test_cli import hybrid

ANSWER = "/v1/answer"
DOCS = [
    {
        "id": "cats",
        "title": "Cats",
        "text": "# Cats\n\nCats purr when content. They sleep sixteen hours a day.",
    },
    {"id": "dogs", "title": "Dogs", "text": "Dogs bark at strangers and wag their tails."},
    {
        "id": "lab",
        "title": "Lab",
        "text": "The secret lab breeds purring robot cats.",
        "acl": ["lab"],
    },
]


@contextmanager
def answering(services: Services, **overrides: str) -> Iterator[Client]:
    """A client whose service answers with the given settings; the model and engine are shared."""
    base = services.settings
    settings = make_settings(base.database.url or "", base.database.data_dir, **overrides)
    own = Services(settings, services.engine)
    own.embedders = services.embedders
    try:
        with TestClient(app=create_app(own)) as client:
            seed(client)
            yield client
    finally:
        own.query_log.close()  # its entries are written now, not into the next test's tables


def seed(client: Client) -> None:
    if client.get("/v1/collections/pets").status_code == 404:
        assert client.post("/v1/collections", json={"name": "pets"}).status_code == 201
        response = client.post("/v1/collections/pets/documents?wait=true", json={"documents": DOCS})
        assert response.status_code == 201, response.text


def models(*servers: OpenAIServer, **extra: str) -> dict[str, str]:
    entries = ",".join(f"m{i}@{s.base_url}" for i, s in enumerate(servers, start=1))
    return {
        "HYBRID_ANSWER_MODELS": entries,
        "HYBRID_ANSWER_MAX_RETRIES": "0",
        "HYBRID_ANSWER_TIMEOUT": "1.0",
        **extra,
    }


def ask(client: Client, status: int = 200, **body: Any) -> dict[str, Any]:
    response = client.post(ANSWER, json={"collection": "pets", "query": "why do cats purr", **body})
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def stream(client: Client, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a streamed answer."""
    payload = {"collection": "pets", "query": "why do cats purr", "stream": True, **body}
    with client.stream("POST", ANSWER, json=payload) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = []
    for block in raw.strip().split("\r\n\r\n" if "\r\n\r\n" in raw else "\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def prompt_of(server: OpenAIServer) -> tuple[str, str]:
    """(system, user) of the last chat call."""
    messages = server.chat_calls[-1].body["messages"]
    return messages[0]["content"], messages[1]["content"]


# --- the answer and its citations ------------------------------------------------------------


def test_answer_cites_the_numbered_sources(services: Services, server: OpenAIServer) -> None:
    server.say("Cats purr when content [1]. Dogs bark [2][9]. Again [1, 2].")
    with answering(services, **models(server)) as client:
        body = ask(client)
    numbered = {s["number"]: s for s in body["sources"]}
    assert body["cited"] == [1, 2]  # [9] names no source and is dropped
    assert [c["number"] for c in body["citations"]] == [1, 2]
    assert numbered[1]["document_id"] == "cats"
    assert body["citations"][0] == numbered[1]
    assert body["answer"].startswith("Cats purr when content [1].")
    assert body["model"] == f"m1@{server.base_url}"
    assert body["extractive"] is False
    assert body["usage"]["completion_tokens"] > 0
    assert {"embed", "sql", "context", "first_token", "generation"} <= body["timings_ms"].keys()
    _, user = prompt_of(server)
    for source in body["sources"]:
        assert f"[{source['number']}] {source['title']}" in user
        assert source["text"] in user
    assert user.rstrip().endswith("Question: why do cats purr")


def test_model_is_told_to_answer_only_from_context_or_say_so(
    services: Services, server: OpenAIServer
) -> None:
    server.say(NOT_IN_CONTEXT)
    with answering(services, **models(server)) as client:
        body = ask(client, query="what is the capital of France")
    system, _ = prompt_of(server)
    assert "only" in system and "outside knowledge" in system
    assert NOT_IN_CONTEXT in system
    assert "[1]" in system
    assert body["answer"] == NOT_IN_CONTEXT
    assert body["cited"] == [] and body["citations"] == []


def test_sources_are_unique_and_within_the_budget(services: Services, server: OpenAIServer) -> None:
    with answering(services, **models(server)) as client:
        body = ask(client, k=10, context_tokens=64)
    sources = body["sources"]
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))
    assert sum(len(s["text"].split()) for s in sources) <= 64
    chunk_ids = [c for s in sources for c in s["chunk_ids"]]
    assert len(chunk_ids) == len(set(chunk_ids))
    assert len({s["text"] for s in sources}) == len(sources)


def test_a_small_parent_section_gives_the_context(services: Services, server: OpenAIServer) -> None:
    long_text = "# Owls\n\n" + "\n\n".join(
        f"Paragraph {i} says owls hunt at night and sleep by day, number {i}." for i in range(12)
    )
    with answering(
        services, **models(server), HYBRID_CHUNK_TOKENS="32", HYBRID_CHUNK_OVERLAP="4"
    ) as client:
        client.post(
            "/v1/collections/pets/documents?wait=true",
            json={"documents": [{"id": "owls", "title": "Owls", "text": long_text}]},
        )
        whole = ask(client, query="owls hunt at night", k=5)
        parts = ask(client, query="owls hunt at night", k=5, context_tokens=64)
    owls = [s for s in whole["sources"] if s["document_id"] == "owls"]
    assert len(owls) == 1 and owls[0]["section"] is True
    assert len(owls[0]["chunk_ids"]) > 1  # every hit of that section shares its number
    assert "Paragraph 0" in owls[0]["text"] and "Paragraph 11" in owls[0]["text"]
    assert not any(s["section"] for s in parts["sources"] if s["document_id"] == "owls")


# --- streaming -------------------------------------------------------------------------------


def test_stream_sends_sources_then_deltas_then_done(
    services: Services, server: OpenAIServer
) -> None:
    server.say("Cats purr when they are content [1].")
    with answering(services, **models(server)) as client:
        events = stream(client)
        whole = ask(client)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "sources" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) > 4
    text = "".join(data["text"] for kind, data in events if kind == "delta")
    assert text == "Cats purr when they are content [1]."
    done = events[-1][1]
    assert done["cited"] == [1]
    assert done["usage"]["total_tokens"] > 0
    assert done["timings_ms"]["first_token"] <= done["timings_ms"]["generation"]
    assert events[0][1]["sources"] == whole["sources"]
    assert server.chat_calls[0].body["stream"] is True


def test_stream_ends_with_an_error_event_when_the_model_stalls(
    services: Services, server: OpenAIServer
) -> None:
    server.say("Cats purr when they are content [1].")
    server.fail("stall")
    with answering(services, **models(server, HYBRID_ANSWER_TIMEOUT="0.5")) as client:
        events = stream(client)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "sources" and kinds[1] == "delta" and kinds[-1] == "error"
    assert events[-1][1]["status"] == 502
    assert "failed mid-answer" in events[-1][1]["detail"]


def test_a_defect_mid_stream_ends_it_with_an_error_event(
    services: Services, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status line is sent with the first event: what fails after it is told in the
    stream, not left to the HTTP server as a broken response."""
    server.say("Cats purr when they are content [1].")

    def broken(prepared: Any, chat: Any) -> Iterator[Any]:
        yield from itertools.islice(real_events(prepared, chat), 2)
        raise RuntimeError("a defect")

    real_events = generate.events
    monkeypatch.setattr(generate, "events", broken)
    with answering(services, **models(server)) as client:
        events = stream(client)
    assert [kind for kind, _ in events] == ["sources", "delta", "error"]
    assert events[-1][1]["status"] == 500
    assert "logged with search id" in events[-1][1]["detail"]


def test_stream_falls_back_to_an_extractive_answer_flagged_degraded(
    services: Services, server: OpenAIServer
) -> None:
    server.down = 500
    with answering(services, **models(server)) as client:
        events = stream(client)
        whole = ask(client)
    assert [kind for kind, _ in events] == ["sources", "delta", "done"]
    assert events[1][1]["text"] == whole["answer"]
    assert events[1][1]["text"].startswith(MODELS_DOWN)
    done = events[2][1]
    assert done["extractive"] is True and done["model"] is None
    assert done["degraded"] == whole["degraded"]
    assert "HTTP 500" in done["degraded"]


def test_a_model_failing_mid_answer_is_a_502_without_streaming(
    services: Services, server: OpenAIServer, backup: OpenAIServer
) -> None:
    server.say("Cats purr when they are content [1].")
    server.fail("stall")
    settings = models(server, backup, HYBRID_ANSWER_TIMEOUT="0.5")
    with answering(services, **settings) as client:
        error = problem(client.post(ANSWER, json={"collection": "pets", "query": "cats"}), 502)
    assert "failed mid-answer" in error["detail"]
    assert backup.chat_calls == []  # text had been produced: no fallback, no extractive answer


# --- providers: retries, fallback, timeouts, malformed answers, circuit breaker ---------------


@pytest.mark.parametrize("fault", [429, 500, 503])
def test_rate_limits_and_server_errors_are_retried_with_exponential_backoff(
    services: Services, server: OpenAIServer, fault: int
) -> None:
    server.fail(fault, fault)
    with answering(services, **models(server, HYBRID_ANSWER_MAX_RETRIES="2")) as client:
        body = ask(client)
    assert body["answer"] == DEFAULT_ANSWER and body["degraded"] is None
    times = [call.at for call in server.chat_calls]
    assert len(times) == 3
    first, second = times[1] - times[0], times[2] - times[1]
    assert 0.3 < first < second  # about 0.5 s, then about 1 s (less up to 25% jitter)


@pytest.mark.parametrize("fault", [500, 503, "hang", "malformed", "malformed_stream"])
def test_next_model_takes_over(
    services: Services, server: OpenAIServer, backup: OpenAIServer, fault: Any
) -> None:
    server.fail(fault)
    with answering(services, **models(server, backup, HYBRID_ANSWER_TIMEOUT="0.5")) as client:
        started = time.perf_counter()
        body = ask(client)
    assert body["model"] == f"m2@{backup.base_url}"
    assert body["answer"] == "Backup says cats purr [1]."
    assert len(server.chat_calls) == 1 and len(backup.chat_calls) == 1
    assert time.perf_counter() - started < 4.0


def test_every_model_failing_gives_an_extractive_answer_naming_each_failure(
    services: Services, server: OpenAIServer, backup: OpenAIServer
) -> None:
    server.down, backup.down = 500, 429
    with answering(services, **models(server, backup)) as client, capture_logs() as logs:
        body = ask(client)
    assert body["extractive"] is True and body["model"] is None
    assert body["answer"].startswith(MODELS_DOWN)
    assert "Cats purr when content" in body["answer"]
    assert body["cited"] == list(range(1, min(3, len(body["sources"])) + 1))
    reason = body["degraded"]
    assert "m1@" in reason and "HTTP 500" in reason
    assert "m2@" in reason and "HTTP 429" in reason
    warnings = [e for e in logs if e["log_level"] == "warning" and "extractively" in e["event"]]
    assert [e["reason"] for e in warnings] == [reason]


def test_open_breakers_give_an_extractive_answer_without_calling(
    services: Services, server: OpenAIServer
) -> None:
    settings = models(server, HYBRID_ANSWER_BREAKER_FAILURES="1")
    server.down = 500
    with answering(services, **settings) as client:
        ask(client)
        body = ask(client)
    assert len(server.chat_calls) == 1
    assert body["extractive"] is True and "skipped for" in body["degraded"]


def test_answers_are_not_degraded_when_a_model_answers(
    services: Services, server: OpenAIServer
) -> None:
    with answering(services, **models(server)) as client:
        body = ask(client)
    assert body["degraded"] is None and body["extractive"] is False


def test_circuit_breaker_skips_a_failing_model_for_the_cool_down(
    services: Services, server: OpenAIServer, backup: OpenAIServer
) -> None:
    settings = models(
        server, backup, HYBRID_ANSWER_BREAKER_FAILURES="2", HYBRID_ANSWER_BREAKER_COOLDOWN="1.0"
    )
    server.down = 500
    with answering(services, **settings) as client:
        for _ in range(4):
            assert ask(client)["model"].startswith("m2@")
        assert len(server.chat_calls) == 2  # the breaker opened after two failures
        time.sleep(1.1)
        server.down = None
        assert ask(client)["model"].startswith("m1@")  # half-open: one trial, which succeeds
        assert ask(client)["model"].startswith("m1@")
    assert len(server.chat_calls) == 4


def test_breaker_reopens_when_the_trial_call_fails(
    services: Services, server: OpenAIServer, backup: OpenAIServer
) -> None:
    settings = models(
        server, backup, HYBRID_ANSWER_BREAKER_FAILURES="1", HYBRID_ANSWER_BREAKER_COOLDOWN="0.5"
    )
    server.down = 500
    with answering(services, **settings) as client:
        ask(client)
        time.sleep(0.6)
        ask(client)  # the trial fails: open again
        ask(client)
    assert len(server.chat_calls) == 2


# --- readiness -------------------------------------------------------------------------------


def test_ready_reports_each_answer_model_and_its_breaker(
    services: Services, server: OpenAIServer, backup: OpenAIServer
) -> None:
    settings = models(
        server, backup, HYBRID_ANSWER_BREAKER_FAILURES="1", HYBRID_ANSWER_BREAKER_COOLDOWN="30"
    )
    with answering(services, **settings) as client:
        fresh = client.get("/ready").json()["checks"]["answer"]
        server.down = 500
        ask(client)
        one_open = client.get("/ready").json()["checks"]["answer"]
        backup.down = 500
        ask(client)
        response = client.get("/ready")
    names = [f"m1@{server.base_url}", f"m2@{backup.base_url}"]
    assert fresh["ok"] is True and fresh["required"] is False and fresh["extractive"] is False
    assert [(m["name"], m["breaker"], m["failures"]) for m in fresh["models"]] == [
        (names[0], "closed", 0),
        (names[1], "closed", 0),
    ]
    first, second = one_open["models"]
    assert (first["breaker"], first["failures"]) == ("open", 1)
    assert 0 < first["retry_in_s"] <= 30
    assert second["breaker"] == "closed" and one_open["ok"] is True
    assert one_open["detail"] == f"1 of 2 models callable, first {names[1]}"
    assert response.status_code == 200  # answers still work, extractively
    both_open = response.json()["checks"]["answer"]
    assert both_open["ok"] is False and both_open["extractive"] is True
    assert [m["breaker"] for m in both_open["models"]] == ["open", "open"]
    assert "circuit breaker is open" in both_open["detail"]


def test_ready_says_answers_are_extractive_without_a_model(client: Client) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    check = response.json()["checks"]["answer"]
    assert check["ok"] is False and check["required"] is False
    assert check["extractive"] is True and check["models"] == []
    assert "HYBRID_ANSWER_MODELS" in check["detail"]


# --- without a model -------------------------------------------------------------------------


def test_without_a_model_answers_are_extractive(client: Client) -> None:
    seed(client)
    body = ask(client)
    assert body["extractive"] is True and body["model"] is None and body["degraded"] is None
    assert body["answer"].startswith(NO_MODEL)
    assert body["cited"] == list(range(1, min(3, len(body["sources"])) + 1))
    assert "Cats purr when content" in body["answer"]


def test_nothing_visible_means_nothing_to_answer(services: Services, server: OpenAIServer) -> None:
    with answering(services, **models(server)) as client:
        body = ask(client, filter={"metadata.lang": "xx"})
    assert body["sources"] == [] and body["answer"] == NO_SOURCES
    assert server.chat_calls == []


# --- access control --------------------------------------------------------------------------


def test_answers_never_use_chunks_the_caller_may_not_see(
    services: Services, server: OpenAIServer
) -> None:
    server.say("It breeds robot cats [1][2][3].", "It breeds robot cats [1].")
    with answering(services, **models(server)) as client:
        outsider = ask(client, query="what does the secret lab breed", principals=["bob"])
        _, outsider_prompt = prompt_of(server)
        insider = ask(client, query="what does the secret lab breed", principals=["lab"])
        _, insider_prompt = prompt_of(server)
        streamed = stream(client, query="what does the secret lab breed")
    assert "lab" not in {s["document_id"] for s in outsider["sources"]}
    assert "robot" not in outsider_prompt and "robot" not in json.dumps(outsider["sources"])
    assert "lab" not in {c["document_id"] for c in outsider["citations"]}
    assert "lab" in {s["document_id"] for s in insider["sources"]}
    assert "robot" in insider_prompt
    assert "robot" not in json.dumps(streamed[0][1])


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"query": ""}, 400, "query"),
        ({"query": "cats", "k": 0}, 400, "k"),
        ({"query": "cats", "k": 1000}, 400, "k"),
        ({"query": "cats", "mode": "magic"}, 400, "mode"),
        ({"query": "cats", "context_tokens": 1}, 400, "context_tokens"),
        ({"query": "cats", "context_tokens": "many"}, 400, "context_tokens"),
        ({"query": "cats", "stream": "yes"}, 400, "stream"),
        ({"query": "cats", "offset": 3}, 400, "offset"),
        ({"query": "cats", "filter": {"colour": "red"}}, 400, "filter.colour"),
        ({"query": "cats", "principals": [""]}, 400, "principals[0]"),
        ({"query": "cats", "collection": "nope"}, 404, "collection"),
    ],
)
def test_bad_answer_requests_name_the_field(
    client: Client, body: dict[str, Any], status: int, field: str
) -> None:
    seed(client)
    error = problem(client.post(ANSWER, json={"collection": "pets", **body}), status)
    assert error["field"] == field
    assert field.split("[")[0].split(".")[0] in error["detail"]


def test_malformed_json_is_a_400(client: Client) -> None:
    response = client.post(
        ANSWER, content=b'{"collection": ', headers={"content-type": "application/json"}
    )
    assert problem(response, 400)["field"] == "body"


def test_streamed_bad_request_is_a_plain_problem(client: Client) -> None:
    seed(client)
    response = client.post(ANSWER, json={"collection": "pets", "query": "", "stream": True})
    assert problem(response, 400)["field"] == "query"


def test_an_unreachable_model_gives_a_degraded_answer(services: Services) -> None:
    with OpenAIServer() as stopped:
        url = stopped.base_url
    with answering(services, HYBRID_ANSWER_MODELS=f"m@{url}", HYBRID_ANSWER_MAX_RETRIES="0") as c:
        body = ask(c)
    assert body["extractive"] is True and f"m@{url}" in body["degraded"]


# --- the command line ------------------------------------------------------------------------


def cli_env(services: Services, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": services.settings.database.url or "",
        "HYBRID_DATA_DIR": str(services.settings.database.data_dir),
        **extra,
    }


def test_ask_streams_the_answer_and_cites(
    client: Client, services: Services, server: OpenAIServer
) -> None:
    seed(client)
    server.say("Cats purr when content [1].", "Cats purr when content [1].")
    env = cli_env(services, **models(server))
    run = hybrid(env, "ask", "why do cats purr", "-c", "pets", "--json")
    assert run.code == 0, run.err
    events = [json.loads(line) for line in run.out.splitlines()]
    assert events[0]["event"] == "sources"
    assert events[-1]["event"] == "done" and events[-1]["cited"] == [1]
    plain = hybrid(env, "ask", "why do cats purr", "-c", "pets", "--principal", "bob")
    assert plain.code == 0 and "Cats purr when content [1]." in plain.out
    assert "cited [1]" in plain.text and "*[1] Cats" in plain.text


def test_ask_without_a_model_is_extractive_and_bad_input_fails_clearly(
    client: Client, services: Services
) -> None:
    seed(client)
    run = hybrid(cli_env(services), "ask", "why do cats purr", "-c", "pets")
    assert run.code == 0 and "extractive" in run.text
    bad = hybrid(cli_env(services), "ask", "cats", "-c", "pets", "--context-tokens", "3")
    assert bad.failed_with("context_tokens", "64")


def test_ask_answers_extractively_when_every_model_fails_and_says_why(
    client: Client, services: Services, server: OpenAIServer
) -> None:
    seed(client)
    server.down = 503
    run = hybrid(cli_env(services, **models(server)), "ask", "why do cats purr", "-c", "pets")
    assert run.code == 0, run.err
    assert run.out.startswith(MODELS_DOWN) and "extractive" in run.out
    assert "degraded" in run.err and "HTTP 503" in run.err
    as_json = hybrid(
        cli_env(services, **models(server)), "ask", "why do cats purr", "-c", "pets", "--json"
    )
    done = json.loads(as_json.out.splitlines()[-1])
    assert done["event"] == "done" and done["extractive"] and "HTTP 503" in done["degraded"]


def test_ask_fails_when_the_model_fails_mid_answer(
    client: Client, services: Services, server: OpenAIServer
) -> None:
    seed(client)
    server.say("Cats purr when they are content [1].")
    server.fail("stall")
    env = cli_env(services, **models(server, HYBRID_ANSWER_TIMEOUT="0.5"))
    run = hybrid(env, "ask", "why do cats purr", "-c", "pets")
    assert run.failed_with("failed mid-answer")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HYBRID_ANSWER_MODELS", "gpt@ftp://host"),
        ("HYBRID_ANSWER_MODELS", "@http://host/v1"),
        ("HYBRID_ANSWER_TIMEOUT", "0"),
        ("HYBRID_ANSWER_CONTEXT_TOKENS", "10"),
        ("HYBRID_CACHE_RESULTS_TTL", "0"),
        ("HYBRID_CACHE_RESULTS", "-1"),
    ],
)
def test_bad_answer_and_cache_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({variable: value})


# --- the parts on their own ------------------------------------------------------------------


class Words:
    """A tokenizer that counts words, so budgets can be checked by eye."""

    def count(self, text: str) -> int:
        return len(text.split())

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


def hit(chunk_id: int, document: str, text: str) -> Hit:
    return Hit(chunk_id, document, text, document.title(), None, {}, [], 1.0 / chunk_id, "")


def test_assemble_numbers_merges_and_cuts_at_the_budget() -> None:
    hits = [
        hit(1, "a", "one two three"),
        hit(2, "a", "four five"),  # same small section as 1: shares its number
        hit(3, "b", "two three"),  # a copy of what passage 1 holds: left out
        hit(4, "c", " ".join(f"w{i}" for i in range(30))),
        hit(5, "d", "nothing left for this one"),
    ]
    section = Section(0, ["A"], "one two three four five", 5)
    passages = assemble(hits, {1: section, 2: section}, Words(), budget=24, parent_tokens=10)
    assert [(p.number, p.chunk_ids, p.section) for p in passages] == [
        (1, [1, 2], True),
        (2, [4], False),
    ]
    assert passages[1].text == " ".join(f"w{i}" for i in range(19)) + " …"
    assert sum(p.tokens for p in passages) == 24


def test_a_large_section_is_not_used() -> None:
    section = Section(0, [], "x " * 50, 50)
    (passage,) = assemble([hit(1, "a", "x y")], {1: section}, Words(), budget=100, parent_tokens=10)
    assert passage.text == "x y" and not passage.section


def test_circuit_breaker_states() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    breaker.failed()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failed()
    assert not breaker.allow() and breaker.remaining_s() == 10
    assert breaker.state == "open"
    now[0] = 10.0
    assert breaker.state == "half-open"
    assert breaker.allow()  # half-open: one trial
    assert not breaker.allow() and breaker.state == "half-open"
    breaker.failed()
    assert not breaker.allow() and breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.allow() and breaker.allow() and breaker.state == "closed"


def test_a_trial_call_that_raises_unexpectedly_does_not_leave_the_breaker_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(
        {"HYBRID_ANSWER_MODELS": "m@http://127.0.0.1:9/v1", "HYBRID_ANSWER_BREAKER_FAILURES": "1"}
    ).answer
    chat = ChatModels(settings, None)
    ((_, breaker),) = chat.breakers_in_order()
    breaker.failed()
    breaker.opened_at = -1e9  # the cool-down is over: the next call is the trial

    def broken(*_: Any) -> Iterator[Any]:
        raise RuntimeError("bug")

    monkeypatch.setattr(chat, "_open", broken)
    with pytest.raises(RuntimeError):
        list(chat.stream([]))
    assert breaker.state == "open"  # the trial counted as failed; the next one comes later


def test_credentials_in_a_base_url_stay_out_of_the_model_name() -> None:
    (model,) = parse_models(("gpt@https://user:secret@gateway.example/v1",))
    assert model.name == "gpt@https://gateway.example/v1"
    assert model.base_url == "https://user:secret@gateway.example/v1"


def test_citations_are_read_from_brackets() -> None:
    assert cited("a [2] b [1, 3] c [2][7] [x] [0]", count=3) == [2, 1, 3]
