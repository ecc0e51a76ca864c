"""`hybrid db backup` and `hybrid db restore` against the real server: a restored database
answers every search exactly as the original; a database holding data is refused, and left as
it was, unless forced; a failed restore changes nothing; an older backup lands on a newer
schema; a new server (without the reader role) takes a backup through the embedded path; and
failures are one message naming the tool, never showing the password."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.db import backup, embedded, migrate
from app.db.engine import make_engine
from app.errors import Invalid
from app.ingest.pipeline import Ingestor
from app.search.engine import Searcher, search
from app.search.request import SearchRequest
from app.service import Services
from app.settings import Settings
from tests.conftest import make_settings, scratch_database
from tests.test_cli import free_port, installed
from tests.test_ingest import doc

ANIMALS = [
    doc("cats", "Cats are small domestic felines. A cat sleeps most of the day.",
        title="Cats", metadata={"kind": "mammal"}),
    doc("dogs", "Dogs are loyal. A dog likes long walks and barks at cats.",
        title="Dogs", metadata={"kind": "mammal"}),
    doc("birds", "Birds fly south in winter. Penguins are birds that cannot fly.",
        title="Birds", metadata={"kind": "bird"}, acl=["alice"]),
    doc("cafe", "The café serves crème brûlée to cats and their owners.", title="Café"),
]  # fmt: skip
NOTES = [
    doc("backups", "Back up the database every night and test a restore each month."),
    doc("indexes", "An HNSW index answers nearest-neighbour queries approximately."),
]
# (collection, request): every mode, the accent-folding text configuration, ACL and filters.
SEARCHES = [
    ("animals", SearchRequest(query="cats and dogs", mode="keyword")),
    ("animals", SearchRequest(query="which animals can fly", mode="vector")),
    ("animals", SearchRequest(query="pets that sleep all day", mode="hybrid", k=3)),
    ("animals", SearchRequest(query="cafe creme brulee", mode="keyword")),
    ("animals", SearchRequest(query="birds", mode="hybrid", principals=["alice"])),
    ("animals", SearchRequest(query="walks", mode="hybrid", filter={"metadata.kind": "mammal"})),
    ("notes", SearchRequest(query="restore a backup", mode="hybrid")),
]


@dataclass(frozen=True)
class Database:
    url: str
    settings: Settings
    engine: Engine

    @property
    def env(self) -> dict[str, str]:
        """The environment of a `hybrid` run against this database."""
        return {"DATABASE_URL": self.url, "HYBRID_DATA_DIR": str(self.settings.database.data_dir)}


@contextmanager
def database(
    database_url: str, data_dir: Path, name: str, revision: str = "head"
) -> Iterator[Database]:
    """A scratch database with the schema at `revision` and no rows."""
    with scratch_database(database_url, name) as url:
        settings = make_settings(url, data_dir)
        engine = make_engine(url)
        migrate.upgrade(engine, settings, revision)
        try:
            yield Database(url, settings, engine)
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def source(database_url: str, data_dir: Path, session_services: Services) -> Iterator[Database]:
    """Two collections, one document readable by alice only."""
    with database(database_url, data_dir, "backup_source") as db:
        writer = Ingestor(
            db.engine, db.settings, session_services.embedder, session_services.tokenizer
        )
        writer.ingest("animals", ANIMALS, create=True)
        writer.ingest("notes", NOTES, create=True)
        yield db


@pytest.fixture(scope="module")
def archive(source: Database, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backup") / "search.dump"
    done = installed(source.env, "db", "backup", str(path))
    assert done.returncode == 0, done.stderr
    assert f"backed up database 'backup_source' to {path}" in done.stdout
    assert path.stat().st_mode & 0o077 == 0, "only its owner may read a backup"
    return path


@pytest.fixture
def target(database_url: str, data_dir: Path) -> Iterator[Database]:
    """A database as a first start leaves it: the schema at head, no rows."""
    with database(database_url, data_dir, "backup_target") as db:
        yield db


def answers(db: Database, services: Services) -> list[list[tuple[int, float]]]:
    """Chunk ids and scores of every search in SEARCHES."""
    found = []
    for collection, request in SEARCHES:
        with db.engine.begin() as conn:
            result = search(
                conn,
                collection,
                request,
                Searcher(settings=db.settings.search, embeddings=services.embeddings),
            )
        found.append([(hit.chunk_id, hit.score) for hit in result.hits])
    return found


def contents(engine: Engine) -> dict[str, Any]:
    """What a restore must bring back, or leave alone: the collections with their document
    and chunk counts, every document's content hash, and the schema revision."""
    with engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT name, (SELECT count(*) FROM documents d WHERE d.collection_id = c.id),"
                " (SELECT count(*) FROM chunks k WHERE k.collection_id = c.id)"
                " FROM collections c ORDER BY name"
            )
        ).all()
        hashes = conn.execute(
            text("SELECT external_id, content_hash FROM documents ORDER BY external_id")
        ).all()
    return {
        "collections": [tuple(row) for row in counts],
        "documents": [tuple(row) for row in hashes],
        "revision": migrate.current_revision(engine),
    }


def restore(db: Database, path: Path, *options: str) -> tuple[int, str]:
    done = installed(db.env, "db", "restore", str(path), *options)
    db.engine.dispose()  # the restore replaced what pooled connections may have cached
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def test_a_restored_database_answers_every_search_alike(
    source: Database, archive: Path, target: Database, session_services: Services
) -> None:
    expected = answers(source, session_services)
    assert all(expected), "every search should find something"

    code, said = restore(target, archive)
    assert code == 0, said
    assert f"restored {archive} into database 'backup_target'" in said
    assert f"schema at revision {migrate.head_revision()}" in said
    assert contents(target.engine) == contents(source.engine)
    assert answers(target, session_services) == expected


def test_a_database_holding_data_is_refused_and_left_alone_unless_forced(
    source: Database, archive: Path, target: Database, session_services: Services
) -> None:
    writer = Ingestor(
        target.engine, target.settings, session_services.embedder, session_services.tokenizer
    )
    writer.ingest("mine", [doc("kept", "A document a refused restore must keep.")], create=True)
    before = contents(target.engine)

    code, said = restore(target, archive)
    assert code == 1
    assert "error: the database already holds data" in said and "--force" in said
    assert "Traceback" not in said
    assert contents(target.engine) == before

    code, said = restore(target, archive, "--force")
    assert code == 0, said
    assert contents(target.engine) == contents(source.engine)


def test_a_failed_restore_changes_nothing_and_says_why(archive: Path, target: Database) -> None:
    with target.engine.begin() as conn:
        conn.execute(text("CREATE VIEW collection_names AS SELECT name FROM collections"))
    before = contents(target.engine)

    code, said = restore(target, archive)
    assert code == 1
    assert "error: pg_restore failed" in said
    assert "other objects depend on it" in said
    assert "Traceback" not in said
    assert contents(target.engine) == before


def test_an_older_backup_lands_on_a_newer_empty_schema(
    database_url: str, data_dir: Path, target: Database, tmp_path: Path
) -> None:
    """The newer schema goes back to the backup's revision first: migrating the restored
    database forward would otherwise meet objects of the later revisions."""
    with database(database_url, data_dir, "backup_old", revision="0005") as old:
        with old.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO collections (name, embedding_model, embedding_dim) "
                    "VALUES ('kept', 'm', 384)"
                )
            )
        backup.dump(old.engine, tmp_path / "old.dump")

    revision = backup.restore(target.engine, target.settings, tmp_path / "old.dump")
    assert revision == migrate.head_revision()
    assert contents(target.engine)["collections"] == [("kept", 0, 0)]


def test_a_backup_of_an_unknown_revision_is_refused(target: Database, tmp_path: Path) -> None:
    with target.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    backup.dump(target.engine, tmp_path / "future.dump")
    with pytest.raises(Invalid, match="revision ffff, which this version does not know"):
        backup.restore(target.engine, target.settings, tmp_path / "future.dump")


@pytest.fixture
def fresh_dir() -> Iterator[Path]:
    """A data directory for a server of its own (the session's server is never stopped)."""
    path = Path(tempfile.mkdtemp(prefix="hybrid-restore-"))
    yield path
    embedded.stop(path)
    shutil.rmtree(path, ignore_errors=True)


def test_a_new_embedded_server_takes_a_backup(
    source: Database, archive: Path, fresh_dir: Path, session_services: Services
) -> None:
    """Through the embedded path: the server is started, restored into and stopped again;
    it has no `hybrid_reader` role before, which searches need."""
    done = installed({"HYBRID_DATA_DIR": str(fresh_dir)}, "db", "restore", str(archive))
    assert done.returncode == 0, done.stderr
    assert not embedded.status(fresh_dir).running

    url, _ = embedded.start(fresh_dir)
    restored = Database(url, make_settings(url, fresh_dir), make_engine(url))
    try:
        assert contents(restored.engine) == contents(source.engine)
        assert answers(restored, session_services) == answers(source, session_services)
    finally:
        restored.engine.dispose()


def test_failures_name_the_tool_and_never_the_password(tmp_path: Path) -> None:
    unreachable = {"DATABASE_URL": f"postgresql://someone:s3cret@127.0.0.1:{free_port()}/none"}
    done = installed(unreachable, "db", "backup", str(tmp_path / "x.dump"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: pg_dump failed")
    assert "127.0.0.1" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []

    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("not an archive")
    done = installed(unreachable, "db", "restore", str(not_a_backup))
    assert done.returncode == 1
    assert "is not a backup made by `hybrid db backup`" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr
