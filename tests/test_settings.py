"""Settings: environment first, `.env` second, every value validated with the variable named."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import pytest

from app.errors import ConfigError
from app.settings import Settings, documented_settings, load_settings


def test_defaults_are_the_embedded_development_setup() -> None:
    settings = load_settings({})
    assert settings.database.url is None
    assert settings.embedding.provider == "local"
    assert settings.embedding.dimension == 384
    assert settings.ingest.default_acl == ("*",)


def test_values_are_converted_by_type() -> None:
    settings = load_settings(
        {
            "HYBRID_PORT": "9001",
            "HYBRID_AUTO_MIGRATE": "off",
            "HYBRID_DEFAULT_ACL": "staff, admins",
            "HYBRID_EMBEDDING_TIMEOUT": "2.5",
            "HYBRID_DATA_DIR": "/srv/hybrid",
        }
    )
    assert settings.server.port == 9001
    assert settings.database.auto_migrate is False
    assert settings.ingest.default_acl == ("staff", "admins")
    assert settings.embedding.timeout_s == 2.5
    assert settings.database.data_dir == Path("/srv/hybrid")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HYBRID_PORT": "eighty"}, "HYBRID_PORT: expected int, got 'eighty'"),
        ({"HYBRID_EMBEDDING_PROVIDER": "cohere"}, "expected one of local, openai"),
        ({"HYBRID_AUTO_MIGRATE": "perhaps"}, "HYBRID_AUTO_MIGRATE: expected bool"),
        ({"HYBRID_CHUNK_TOKENS": "8"}, "HYBRID_CHUNK_TOKENS must be at least 16"),
        ({"HYBRID_CHUNK_OVERLAP": "150"}, "HYBRID_CHUNK_OVERLAP"),
        ({"HYBRID_INGEST_INDEX_MEMORY": "1G; RESET ALL"}, "HYBRID_INGEST_INDEX_MEMORY: expected"),
        ({"HYBRID_ENV": "production"}, "DATABASE_URL is required in production"),
        (
            {
                "HYBRID_ENV": "production",
                "DATABASE_URL": "postgresql://h/db",
                "HYBRID_EMBEDDING_PROVIDER": "openai",
            },
            "OPENAI_API_KEY is required",
        ),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ)


def test_dotenv_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("HYBRID_PORT=7000\nHYBRID_HOST=0.0.0.0\n")
    monkeypatch.setenv("HYBRID_PORT", "7100")
    settings = load_settings(env_file=env_file)
    assert settings.server.port == 7100
    assert settings.server.host == "0.0.0.0"


def test_every_setting_has_a_variable_and_a_description() -> None:
    names = [name for name, _, _ in documented_settings()]
    assert len(names) == len(set(names))
    assert all(doc for _, doc, _ in documented_settings())


def test_every_number_setting_says_what_it_accepts() -> None:
    unbounded = [
        f.metadata["env"]
        for section in fields(Settings)
        for f in fields(get_type_hints(Settings)[section.name])
        if get_type_hints(get_type_hints(Settings)[section.name])[f.name] in (int, float)
        and f.metadata["bounds"] is None
    ]
    assert unbounded == []


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HYBRID_DB_POOL_TIMEOUT": "0"}, "HYBRID_DB_POOL_TIMEOUT must be positive, got 0.0"),
        ({"HYBRID_DRAIN_TIMEOUT": "-1"}, "HYBRID_DRAIN_TIMEOUT must not be negative"),
        ({"HYBRID_ANSWER_TEMPERATURE": "3"}, "HYBRID_ANSWER_TEMPERATURE must be between 0 and 2"),
        ({"HYBRID_FAISS_REBUILD_TOMBSTONES": "0"}, r"must be in \(0, 1\]"),
        ({"HYBRID_RERANK_DEPTH": "200"}, "HYBRID_RERANK_DEPTH must be at most HYBRID_RERANK_MAX"),
        ({"HYBRID_SEARCH_MAX_K": "5000"}, "HYBRID_SEARCH_MAX_WINDOW must be at least"),
    ],
)
def test_a_value_out_of_range_is_refused_with_the_range(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ)
