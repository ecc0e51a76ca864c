"""Search over real HTTP: the POST and GET forms, explain and highlights in the body, and a
4xx problem naming the field for every kind of bad search request."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_api import Client, ingest, problem


@pytest.fixture
def notes(client: Client) -> Client:
    assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
    response = ingest(
        client,
        {"id": "cats", "title": "Cats", "text": "Cats purr and sleep.", "metadata": {"lang": "en"}},
        {"id": "dogs", "title": "Dogs", "text": "Dogs bark at cats.", "metadata": {"lang": "fr"}},
        {"id": "secret", "text": "Cats in the secret lab.", "acl": ["group:lab"]},
    )
    assert response.status_code == 201
    return client


def search(client: Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json={"collection": "kb", **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_post_search_returns_hits_with_highlights_and_explain(notes: Client) -> None:
    body = search(notes, query="cats", k=5, explain=True)
    assert [h["document_id"] for h in body["hits"]][:1] == ["cats"]
    hit = body["hits"][0]
    assert "<mark>" in hit["highlight"]
    assert hit["explain"]["keyword"]["rank"] == 1
    assert hit["explain"]["vector"]["rank"] >= 1
    assert {"embed", "sql"} <= set(body["timings_ms"]) <= {"embed", "sql", "faiss", "keyword_index"}


def test_filters_and_principals_over_http(notes: Client) -> None:
    english = search(notes, query="cats", filter={"metadata.lang": "en"})
    assert [h["document_id"] for h in english["hits"]] == ["cats"]
    public = {h["document_id"] for h in search(notes, query="cats lab")["hits"]}
    assert "secret" not in public
    lab = search(notes, query="cats lab", principals=["group:lab"])
    assert "secret" in {h["document_id"] for h in lab["hits"]}


def test_get_search_for_quick_tries(notes: Client) -> None:
    response = notes.get("/v1/search", params={"collection": "kb", "q": "dogs bark", "k": 2})
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["document_id"] == "dogs"


def test_collection_search_defaults_are_validated(client: Client) -> None:
    created = client.post("/v1/collections", json={"name": "tuned", "settings": {"rrf_k": 20}})
    assert created.status_code == 201
    assert created.json()["settings"] == {"rrf_k": 20.0}
    error = problem(
        client.post("/v1/collections", json={"name": "bad", "settings": {"bm25_k9": 1}}), 400
    )
    assert error["field"] == "settings.bm25_k9"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "cats", "k": 0}, "k"),
        ({"query": "cats", "k": "ten"}, "k"),
        ({"query": "cats", "offset": 2000}, "offset"),
        ({"query": "cats", "mode": "magic"}, "mode"),
        (
            {"query": "cats", "filter": {"metadata.lang": {"regex": "e.*"}}},
            "filter.metadata.lang.regex",
        ),
        ({"query": "cats", "filter": {"password": "x"}}, "filter.password"),
        ({"query": "cats", "filter": {"popularity": {"gt": "high"}}}, "filter.popularity.gt"),
        ({"query": "cats", "vector": [0.5] * 3, "mode": "vector"}, "vector"),
        (
            {"query": "cats", "boosts": {"recency": {"half_life_days": -1}}},
            "boosts.recency.half_life_days",
        ),
        ({"query": "cats", "colour": "red"}, "colour"),
    ],
)
def test_bad_searches_are_400_naming_the_field(
    notes: Client, body: dict[str, Any], field: str
) -> None:
    error = problem(notes.post("/v1/search", json={"collection": "kb", **body}), 400)
    assert field in error.get("field", "") or field in error["detail"]


def test_unknown_collection_is_404(notes: Client) -> None:
    error = problem(notes.post("/v1/search", json={"collection": "nope", "query": "x"}), 404)
    assert error["field"] == "collection"


def test_a_query_vector_with_nan_is_refused(notes: Client) -> None:
    payload = '{"collection": "kb", "mode": "vector", "vector": [NaN' + ", 0.1" * 383 + "]}"
    response = notes.post(
        "/v1/search", content=payload, headers={"content-type": "application/json"}
    )
    problem(response, 400)
