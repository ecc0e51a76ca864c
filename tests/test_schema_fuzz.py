"""Schemathesis against the real service: every operation of the OpenAPI document it serves at
/docs/openapi.json, over real HTTP (uvicorn on loopback) and a real PostgreSQL, with generated
requests that follow the schema and requests that break it, NUL characters and non-ASCII text
included. Every answer must be what the document says: no server error (a 503 too: an idle
test server has no reason to be busy), a documented status code, content type and headers, a
body that matches its schema, and a 4xx for a request that breaks the schema. A second test
follows the document's links (create a collection, ingest into it, search it, delete it) with
generated bodies.

Half of the generated collection names and document ids are those of the seeded collection
and documents, so that reads and writes reach real rows; deletions get rows of their own.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import BaseSchema, Case
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.hooks import HookContext
from schemathesis.specs.openapi.checks import use_after_free

from app.service import Services
from tests.conftest import own_services, serving


def _import_all_of(package: Any) -> None:
    """Import every module of `package` now, at collection. Schemathesis imports many lazily,
    deep inside a run; pytest rewrites a plugin's modules with `ast.parse` as they are imported,
    and parsing at that recursion depth trips CPython 3.11's AST depth check ("recursion depth
    mismatch"). A module needing an optional package that is not installed is skipped."""
    for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        try:
            importlib.import_module(module.name)
        except ImportError:
            continue


_import_all_of(schemathesis)

# As a `schemathesis.toml` would say it; the dictionaries hold the names and ids of `SEED`.
# `positive_data_acceptance` is off: it takes any 4xx answer to a schema-valid request for a
# defect, but the schema cannot say everything the service checks (the filter language, a
# vector's length, a non-empty query or vector, a text that is not only blanks).
CONFIG = """
request-timeout = 30

[generation]
mode = "all"
max-examples = 300
allow-x00 = true
codec = "utf-8"
database = "none"

[phases.stateful]
max-steps = 10

[phases.stateful.generation]
max-examples = 150

[checks.positive_data_acceptance]
enabled = false

[dictionaries.collections]
values = ["kb"]

[dictionaries.documents]
values = ["doc-1", "guides/doc-2", "doc 3 ü"]

[dictionaries.doomed-collections]
values = ["scratch"]

[dictionaries.doomed-documents]
values = ["old-1", "old-2"]

[parameters]
"path.name" = { dictionary = "collections", probability = 0.5 }
"query.collection" = { dictionary = "collections", probability = 0.5 }
"body.collection" = { dictionary = "collections", probability = 0.5 }
"path.external_id" = { dictionary = "documents", probability = 0.5 }

[[operations]]
include-method = "DELETE"
include-path = "/v1/collections/{name}"
parameters = { "path.name" = { dictionary = "doomed-collections", probability = 0.5 } }

[[operations]]
include-method = "DELETE"
include-path = "/v1/collections/{name}/documents/{external_id}"
parameters = { "path.external_id" = { dictionary = "doomed-documents", probability = 0.5 } }
"""
SEED = {
    "kb": [
        {"id": "doc-1", "text": "Resetting a password takes a minute.", "metadata": {"team": "it"}},
        {"id": "guides/doc-2", "title": "Glaciers", "text": "Glaciers move slowly downhill."},
        {"id": "doc 3 ü", "text": "Überall schmilzt das Eis; 氷河は溶けている。"},
        {"id": "old-1", "text": "An outdated note on passwords."},
        {"id": "old-2", "text": "An outdated note on glaciers."},
    ],
    "scratch": [{"id": "doc-1", "text": "A collection to be deleted."}],
}


def _seed(client: httpx.Client) -> None:
    for name, documents in SEED.items():
        assert client.post("/v1/collections", json={"name": name}).status_code == 201
        answer = client.post(
            f"/v1/collections/{name}/documents?wait=true", json={"documents": documents}
        )
        assert answer.status_code == 201, answer.text


def _reset(client: httpx.Client) -> None:
    """Back to the seeded collections and nothing else."""
    for collection in client.get("/v1/collections").json():
        assert client.delete(f"/v1/collections/{collection['name']}").status_code == 204
    _seed(client)


@pytest.fixture
def api(
    database_url: str, data_dir: Path, services: Services, model_dir: Path, tmp_path: Path
) -> Iterator[str]:
    """The base URL of a seeded server with every dependency present: the vector cache on (so
    the admin routes serve) and a cross-encoder (so `hybrid+rerank` does). It runs over
    services of its own; `services` empties the database afterwards."""
    with (
        own_services(
            database_url,
            data_dir,
            HYBRID_FAISS_DIR=str(tmp_path),
            HYBRID_RERANK_MODEL=str(model_dir),
        ) as own,
        serving(own, vector_cache=True) as client,
    ):
        _seed(client)
        yield str(client.base_url)


@pytest.fixture
def api_schema(api: str) -> BaseSchema:
    config = schemathesis.Config.from_str(CONFIG)
    schema = schemathesis.openapi.from_url(f"{api}/docs/openapi.json", config=config)
    repeatable = _repeatable_query_parameters(schema.raw_schema)

    @schema.hook
    def filter_query(context: HookContext, query: dict[str, object] | None) -> bool:
        # A repeatable query parameter (`?principal=a&principal=b`) read once is a list of
        # one, whatever its text: Schemathesis takes a lone number or string there for a
        # schema-breaking value, which no server can tell from a valid one on the wire.
        operation = context.operation
        if operation is None or not query:
            return True
        names = repeatable.get((operation.method.lower(), operation.path), set())
        return not any(name in query and not isinstance(query[name], list) for name in names)

    return schema


def _repeatable_query_parameters(document: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(method, path) -> the names of its query parameters whose schema is an array."""
    found: dict[tuple[str, str], set[str]] = {}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                schema = parameter.get("schema", {})
                kinds = [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]
                if parameter.get("in") == "query" and any(k.get("type") == "array" for k in kinds):
                    found.setdefault((method, path), set()).add(parameter["name"])
    return found


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    # Schemathesis names each operation's report through `Node._nodeid`, which pytest 9.2
    # keeps under another name; give it the attribute to read.
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_documented(case: Case) -> None:
    case.call_and_validate()


def test_linked_operations_answer_as_documented(api: str, api_schema: BaseSchema) -> None:
    followed: set[str] = set()

    class Sequences(api_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Every sequence starts from the same state, so that the same requests get the
            # same answers, which Hypothesis relies on when it explores sequences.
            _reset(client)

        def step(self, input: StepInput) -> StepOutput:
            if input.transition is not None and input.is_applied:
                followed.add(input.transition.id)
            return super().step(input)

        def validate_response(
            self, response: Any, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            # DELETE /v1/jobs/{job_id} cancels a job, which stays readable (state
            # `cancelled`): its record is what the person who started it reads.
            excluded = [use_after_free] if case.path.startswith("/v1/jobs/") else None
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=excluded,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    # Generation only, as Schemathesis runs its own sequences: they cannot be shrunk or
    # replayed against a server whose state they change. Derandomized: the same sequences on
    # every run, so that whether each link is followed does not depend on the draw.
    settings = hypothesis.settings(
        api_schema.config.get_hypothesis_settings(phase="stateful"),
        phases=[hypothesis.Phase.generate],
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    with httpx.Client(base_url=api, timeout=30) as client:
        Sequences.run(settings=settings)
    links = {
        "POST /v1/collections -> [201] Ingest -> POST /v1/collections/{name}/documents",
        "POST /v1/collections -> [201] Search -> POST /v1/search",
    }
    assert links <= followed, f"never followed: {sorted(links - followed)}"
