"""Any filter is either refused with a 400 naming where it failed, or compiled to SQL that
PostgreSQL runs without an error: property tests over generated filters, shaped like the
language (its fields, operators and combinators) and full of hostile values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from app.errors import Invalid
from app.ingest.model import Block, SourceDocument
from app.search.filters import COLUMNS, OPERATORS, compile_filter
from app.service import Services
from tests.conftest import DROP_VECTOR_INDEXES

FIELDS = [*COLUMNS, "metadata.lang", "metadata.year", "metadata.tags.0", "metadata.a.b"]
KEYS = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(["and", "or", "not", "metadata.", "metadata..x", "metadata.x y", "nope"]),
    st.text(max_size=8),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["2024-01-01", "2024-13-45T99:00", "\x00", "%_\\", "1e400"]),
)


def _operators(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    names = st.one_of(st.sampled_from(OPERATORS), st.text(max_size=6))
    return st.dictionaries(names, values, max_size=3)


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), _operators(inner)),
    max_leaves=12,
)
FILTERS = st.recursive(
    st.dictionaries(KEYS, VALUES, max_size=3),
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from(["and", "or"]), st.lists(inner, max_size=3), max_size=1),
        st.dictionaries(st.just("not"), inner, max_size=1),
        st.dictionaries(KEYS, st.one_of(VALUES, inner), max_size=3),
    ),
    max_leaves=16,
)


@pytest.fixture(scope="module")
def engine(session_services: Services) -> Iterator[Engine]:
    """Documents whose metadata has every JSON type under the keys the filters name, so that
    a compiled predicate is evaluated on real rows (a bad cast fails only then)."""
    metadata: list[dict[str, Any]] = [
        {"lang": "en", "year": 2020, "tags": ["a", "b"], "a": {"b": 1.5}},
        {"lang": 7, "year": "2021-05-01", "tags": "x", "a": [1]},
        {"lang": None, "year": True, "tags": [], "a": {"b": "c"}},
    ]
    docs = [
        SourceDocument(
            external_id=f"d{i}",
            title=f"Title {i}",
            blocks=[Block(text=f"Text number {i}.")],
            metadata=m,
        )
        for i, m in enumerate(metadata)
    ]
    session_services.ingestor.ingest("props", docs, create=True)
    yield session_services.engine
    with session_services.engine.begin() as conn:
        conn.execute(text("TRUNCATE collections, change_log RESTART IDENTITY CASCADE"))
        conn.execute(text(DROP_VECTOR_INDEXES))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=st.one_of(FILTERS, VALUES))
def test_a_filter_is_refused_by_name_or_runs(engine: Engine, spec: Any) -> None:
    try:
        compiled = compile_filter(spec)
    except Invalid as exc:
        assert exc.status == 400
        assert exc.field and exc.field.startswith("filter"), exc.field
        return
    with engine.connect() as conn:
        # The scan form may call index helpers of the collection (`:collection_id`), which the
        # search statement binds.
        found = text("SELECT id FROM collections WHERE name = 'props'")
        params = {**compiled.params, "collection_id": conn.execute(found).scalar_one()}
        statement = text(f"SELECT count(*) FROM documents d WHERE {compiled.sql}")
        conn.execute(statement, params).scalar_one()
        check = text(f"SELECT count(*) FROM documents d WHERE {compiled.check_sql}")
        conn.execute(check, compiled.params).scalar_one()
