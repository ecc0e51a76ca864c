"""The `hybrid` command end to end: `main()` runs in-process under click's runner isolation
(arguments, environment and output as a shell would give them) against the test database and
the real model, plus the installed console script as a subprocess. Covers ingest, collections,
documents, db and migrate, the help of every command, and errors printed as one message, never
a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from app.cli import cli, main
from app.db import migrate
from app.ingest.model import Block, SourceDocument
from app.service import Services

HYBRID = Path(sys.executable).with_name("hybrid")
# --help must never touch a database: this one does not exist.
NO_DATABASE = {"DATABASE_URL": "postgresql://nobody:s3cret@127.0.0.1:9/none"}


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """Everything printed, with the terminal's line wrapping undone."""
        return " ".join((self.out + self.err).split())

    def failed_with(self, *words: str) -> bool:
        """Exit code 1 and an `error:` message naming every word, without a traceback.

        Loading the model may print a progress bar to stderr first."""
        _, found, message = " ".join(self.err.split()).partition("error:")
        return (
            self.code == 1
            and bool(found)
            and all(word in message for word in words)
            and "Traceback" not in self.out + self.err
        )


def hybrid(env: dict[str, str], *args: str, stdin: str | None = None) -> Run:
    """Run `hybrid ARGS` through the console script's own `main()`."""
    with (
        CliRunner().isolation(input=stdin, env=env) as (out, err, _),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(sys, "argv", ["hybrid", *args])
        code = _exit_code()
    return Run(code, out.getvalue().decode(), err.getvalue().decode())


def _exit_code() -> int:
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


@pytest.fixture
def env(services: Services, database_url: str, data_dir: Path) -> dict[str, str]:
    """The environment of a run against the test database (emptied after the test)."""
    return {
        "DATABASE_URL": database_url,
        "HYBRID_DATA_DIR": str(data_dir),
        "HYBRID_INGEST_BATCH": "8",
    }


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder of five documents in four formats, plus files the folder walk must skip."""
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "alpha.md").write_text("# Alpha guide\n\nAlpha intro.\n\n## Setup\n\nRun alpha.")
    (folder / "bravo.txt").write_text("Bravo notes.")
    (folder / "sub" / "charlie.html").write_text(
        "<html><head><title>Charlie</title></head><body><p>Charlie page.</p></body></html>"
    )
    (folder / "records.jsonl").write_text(
        '{"id": "r1", "title": "One", "text": "Record one."}\n'
        '{"id": "r2", "title": "Two", "text": "Record two."}\n'
    )
    (folder / ".hidden.md").write_text("Never read.")
    (folder / "tool.exe").write_bytes(b"MZ")
    return folder


@pytest.fixture
def kb(services: Services) -> list[str]:
    """Collection `kb` with documents r1, r2, r3 (r1 with headings and metadata)."""
    docs = [
        SourceDocument(
            "r1",
            "Owls",
            [Block("Owls hunt at night.", ("Birds", "Owls"))],
            metadata={"keep": 1, "drop": 2},
            acl=["alice"],
        ),
        SourceDocument("r2", "Dogs", [Block("Dogs bark at strangers.")]),
        SourceDocument("r3", "Fish", [Block("Fish swim in schools.")]),
    ]
    services.ingestor.ingest("kb", docs, create=True)
    return [d.external_id for d in docs]


def count(services: Services, table: str) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def shown(env: dict[str, str], *args: str) -> dict[str, Any]:
    run = hybrid(env, "documents", "show", *args)
    assert run.code == 0, run.text
    document: dict[str, Any] = json.loads(run.out)
    return document


# -- ingest ------------------------------------------------------------------------------------


def test_ingest_a_folder_with_metadata_and_acl_then_again_unchanged(
    env: dict[str, str], corpus: Path
) -> None:
    args = ["ingest", str(corpus), "-c", "notes", "--no-progress"]
    options = ["--metadata", '{"team": "docs"}', "--acl", "alice", "--acl", "bob"]
    first = hybrid(env, *args, *options)
    assert first.code == 0, first.text
    assert "notes: 5 created, 0 updated, 0 metadata updated, 0 unchanged" in first.text
    record = shown(env, "r1", "-c", "notes")
    assert (record["metadata"], record["acl"]) == ({"team": "docs"}, ["alice", "bob"])
    guide = shown(env, str((corpus / "alpha.md").resolve()), "-c", "notes", "--chunks")
    assert guide["title"] == "Alpha guide"
    paths = [c["heading_path"] for c in guide["chunks"]]
    assert paths == [["Alpha guide"], ["Alpha guide", "Setup"]]
    again = hybrid(env, *args, *options)
    assert again.code == 0, again.text
    assert "0 created, 0 updated, 0 metadata updated, 5 unchanged" in again.text


def test_ingest_one_explicit_file_into_the_default_collection(
    env: dict[str, str], corpus: Path
) -> None:
    run = hybrid(env, "ingest", str(corpus / "bravo.txt"), "--no-progress")
    assert run.code == 0, run.text
    assert "default: 1 created" in run.text
    assert "default" in hybrid(env, "collections", "list").out


def test_ingest_skips_a_bad_file_names_it_and_exits_1(
    env: dict[str, str], corpus: Path, services: Services
) -> None:
    (corpus / "latin.txt").write_bytes(b"caf\xe9 au lait")
    run = hybrid(env, "ingest", str(corpus), "-c", "mixed", "--no-progress")
    assert run.code == 1
    assert "mixed: 5 created" in run.text
    message = " ".join(run.err.split())
    assert "skipped" in message and "latin.txt" in message and "UTF-8" in message
    assert "Traceback" not in run.err
    assert count(services, "documents") == 5


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--metadata", "[1]"], ["--metadata", "JSON object"]),
        (["--metadata", "{bad"], ["--metadata", "malformed JSON"]),
        (["--acl", " "], ["acl"]),
        (["-c", "Bad Name"], ["'Bad Name'"]),
    ],
)
def test_ingest_rejects_bad_options_before_writing(
    env: dict[str, str], corpus: Path, services: Services, options: list[str], named: list[str]
) -> None:
    run = hybrid(env, "ingest", str(corpus), "--no-progress", *options)
    assert run.failed_with(*named), run.text
    assert count(services, "collections") == 0


@pytest.mark.parametrize(
    ("name", "named"),
    [("tool.exe", ["tool.exe", "expected one of"]), ("missing.md", ["missing.md", "no such"])],
)
def test_ingest_rejects_an_unsupported_or_missing_explicit_file(
    env: dict[str, str], corpus: Path, services: Services, name: str, named: list[str]
) -> None:
    run = hybrid(env, "ingest", str(corpus / "bravo.txt"), str(corpus / name), "--no-progress")
    assert run.failed_with(*named), run.text
    assert count(services, "documents") == 0


# -- collections -------------------------------------------------------------------------------


def test_collections_create_list_delete(env: dict[str, str]) -> None:
    created = hybrid(env, "collections", "create", "notes", "--description", "Team notes")
    assert created.code == 0, created.text
    assert "created collection 'notes'" in created.text
    assert hybrid(env, "collections", "create", "notes").failed_with("'notes'", "already exists")
    assert "notes" in hybrid(env, "collections", "list").out
    refused = hybrid(env, "collections", "delete", "notes", stdin="n\n")
    assert refused.code == 1 and "Aborted" in refused.text
    assert "notes" in hybrid(env, "collections", "list").out
    deleted = hybrid(env, "collections", "delete", "notes", "--yes")
    assert deleted.code == 0, deleted.text
    assert "deleted collection 'notes'" in deleted.text
    assert "notes" not in hybrid(env, "collections", "list").out
    assert hybrid(env, "collections", "delete", "notes", "--yes").failed_with("'notes'")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["Bad Name"], ["'Bad Name'"]),
        (["notes", "--text-config", "klingon"], ["text_config", "'klingon'"]),
    ],
)
def test_collections_create_rejects_bad_input(
    env: dict[str, str], services: Services, args: list[str], named: list[str]
) -> None:
    assert hybrid(env, "collections", "create", *args).failed_with(*named)
    assert count(services, "collections") == 0


# -- documents ---------------------------------------------------------------------------------


def test_documents_list_and_show(env: dict[str, str], kb: list[str]) -> None:
    listed = hybrid(env, "documents", "list", "-c", "kb")
    assert listed.code == 0, listed.text
    assert all(external_id in listed.out for external_id in kb)
    assert "3 live, 0 deleted" in listed.text
    page = hybrid(env, "documents", "list", "-c", "kb", "--limit", "1", "--offset", "1")
    assert sum(external_id in page.out for external_id in kb) == 1
    document = shown(env, "r1", "-c", "kb")
    assert (document["external_id"], document["title"]) == ("r1", "Owls")
    assert document["acl"] == ["alice"]
    assert "chunks" not in document
    chunks = shown(env, "r1", "-c", "kb", "--chunks")["chunks"]
    assert [c["heading_path"] for c in chunks] == [["Birds", "Owls"]]
    assert hybrid(env, "documents", "show", "r9", "-c", "kb").failed_with("'r9'")
    assert hybrid(env, "documents", "list", "-c", "kb", "--limit", "0").failed_with("limit")


def test_documents_update_merges_metadata_and_replaces_acl(
    env: dict[str, str], kb: list[str]
) -> None:
    run = hybrid(
        env,
        "documents",
        "update",
        "r1",
        "-c",
        "kb",
        "--metadata",
        '{"drop": null, "new": "yes"}',
        "--acl",
        "carol",
        "--acl",
        "dave",
        "--popularity",
        "3.5",
    )
    assert run.code == 0, run.text
    updated = json.loads(run.out)
    assert updated["metadata"] == {"keep": 1, "new": "yes"}
    assert (updated["acl"], updated["popularity"]) == (["carol", "dave"], 3.5)
    assert updated["version"] == 1
    assert shown(env, "r1", "-c", "kb")["metadata"] == {"keep": 1, "new": "yes"}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--metadata", "[1]"], ["--metadata"]),
        (["--acl", ""], ["acl"]),
        (["--popularity", "-1"], ["popularity"]),
        (["--popularity", "nan"], ["popularity"]),
    ],
)
def test_documents_update_rejects_bad_values_and_changes_nothing(
    env: dict[str, str], kb: list[str], options: list[str], named: list[str]
) -> None:
    before = shown(env, "r1", "-c", "kb")
    assert hybrid(env, "documents", "update", "r1", "-c", "kb", *options).failed_with(*named)
    assert shown(env, "r1", "-c", "kb") == before


def test_documents_delete_purge(env: dict[str, str], kb: list[str]) -> None:
    deleted = hybrid(env, "documents", "delete", "r1", "-c", "kb")
    assert deleted.code == 0, deleted.text
    assert "deleted 'r1'" in deleted.text
    listed = hybrid(env, "documents", "list", "-c", "kb")
    assert "2 live, 1 deleted" in listed.text and "r1" not in listed.out
    assert "r1" in hybrid(env, "documents", "list", "-c", "kb", "--deleted").out
    assert hybrid(env, "documents", "delete", "r1", "-c", "kb").failed_with("already deleted")
    assert hybrid(env, "documents", "update", "r1", "-c", "kb").failed_with("'r1'", "deleted")
    assert "purged 1 documents" in hybrid(env, "documents", "purge", "-c", "kb").text
    assert "purged 0 documents" in hybrid(env, "documents", "purge", "-c", "kb").text
    purged = hybrid(env, "documents", "delete", "r2", "-c", "kb", "--purge")
    assert purged.code == 0, purged.text
    assert "purged 'r2'" in purged.text
    assert "1 live, 0 deleted" in hybrid(env, "documents", "list", "-c", "kb", "--deleted").text
    assert hybrid(env, "documents", "show", "r2", "-c", "kb").failed_with("no document 'r2'")


def test_documents_delete_by_filter(env: dict[str, str], kb: list[str]) -> None:
    kept = '{"metadata.keep": 1}'
    counted = hybrid(env, "documents", "delete", "-c", "kb", "--filter", kept, "--dry-run")
    assert counted.code == 0 and "1 documents match" in counted.text, counted.text
    assert "3 live, 0 deleted" in hybrid(env, "documents", "list", "-c", "kb").text
    deleted = hybrid(env, "documents", "delete", "-c", "kb", "--filter", kept)
    assert deleted.code == 0 and "1 documents deleted" in deleted.text, deleted.text
    assert "2 live, 1 deleted" in hybrid(env, "documents", "list", "-c", "kb").text
    for args, named in (
        (["r2", "--filter", kept], ["EXTERNAL_ID or --filter"]),
        ([], ["EXTERNAL_ID or --filter"]),
        (["--filter", "{}"], ["--filter", "non-empty"]),
        (["--filter", '{"metadata.x": {"near": 1}}'], ["--filter"]),
        (["--filter", kept, "--purge"], ["--purge"]),
        (["r2", "--dry-run"], ["--dry-run"]),
    ):
        assert hybrid(env, "documents", "delete", "-c", "kb", *args).failed_with(*named), args
    assert "2 live, 1 deleted" in hybrid(env, "documents", "list", "-c", "kb").text


@pytest.mark.parametrize(
    "args",
    [
        ["documents", "list", "-c", "nope"],
        ["documents", "show", "r1", "-c", "nope"],
        ["documents", "update", "r1", "-c", "nope", "--popularity", "1"],
        ["documents", "delete", "r1", "-c", "nope"],
        ["documents", "purge", "-c", "nope"],
        ["collections", "delete", "nope", "--yes"],
    ],
)
def test_unknown_collection_is_named(env: dict[str, str], kb: list[str], args: list[str]) -> None:
    assert hybrid(env, *args).failed_with("no collection named 'nope'")


# -- db, migrate, settings ---------------------------------------------------------------------


def test_db_status_and_url_with_database_url(env: dict[str, str]) -> None:
    assert hybrid(env, "db", "url").out.strip() == env["DATABASE_URL"]
    status = hybrid(NO_DATABASE, "db", "status")
    assert status.code == 0, status.text
    assert "using DATABASE_URL" in status.text and "127.0.0.1:9" in status.text
    assert "s3cret" not in status.text


@pytest.mark.parametrize("command", ["start", "stop"])
def test_embedded_server_commands_refuse_when_database_url_is_set(command: str) -> None:
    assert hybrid(NO_DATABASE, "db", command).failed_with("DATABASE_URL is set")


def test_migrate_prints_the_revision(env: dict[str, str]) -> None:
    run = hybrid(env, "migrate")
    assert run.code == 0, run.text
    assert f"schema at revision {migrate.head_revision()}" in run.text


def test_a_bad_setting_is_one_message() -> None:
    run = hybrid({**NO_DATABASE, "HYBRID_INGEST_BATCH": "zero"}, "collections", "list")
    assert run.failed_with("HYBRID_INGEST_BATCH", "'zero'")


# -- help --------------------------------------------------------------------------------------


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under `group`, as the words that invoke it."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(path) for path in command_paths(cli)}
    expected = {"ingest", "serve", "migrate", "db psql", "collections delete", "documents purge"}
    assert expected <= names


@pytest.mark.parametrize("path", command_paths(cli), ids=lambda p: " ".join(p) or "hybrid")
def test_help_of_every_command(path: tuple[str, ...]) -> None:
    run = hybrid(NO_DATABASE, *path, "--help")
    assert run.code == 0, run.text
    assert run.text.startswith("Usage:")
    assert " ".join((*path, "[OPTIONS]")) in run.text
    summary = (command_at(path).help or "").split("\n")[0]
    assert summary and " ".join(summary.split()) in run.text


def test_version() -> None:
    run = hybrid(NO_DATABASE, "--version")
    assert run.code == 0 and "version" in run.out


# -- the installed console script --------------------------------------------------------------


def installed(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HYBRID), *args],
        env={"PATH": str(HYBRID.parent), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_installed_command_prints_an_error_not_a_traceback(env: dict[str, str]) -> None:
    done = installed(env, "documents", "list", "-c", "nope")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no collection named 'nope'"
    assert done.stdout == ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unreachable_database_is_one_message_not_a_traceback() -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    done = installed({"DATABASE_URL": url}, "collections", "list")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error:")


def test_search_prints_a_table_and_json(env: dict[str, str], corpus: Path) -> None:
    assert hybrid(env, "ingest", str(corpus), "-c", "kb", "--no-progress").code == 0
    run = hybrid(env, "search", "alpha setup", "-c", "kb", "-k", "3", "--explain")
    assert run.code == 0, run.err
    assert "Alpha guide" in run.text
    assert "bm25" in run.text
    as_json = hybrid(env, "search", "record two", "-c", "kb", "--mode", "keyword", "--json")
    assert json.loads(as_json.out)["hits"][0]["document_id"] == "r2"


def test_search_with_a_bad_filter_names_it(env: dict[str, str], corpus: Path) -> None:
    hybrid(env, "ingest", str(corpus), "-c", "kb", "--no-progress")
    run = hybrid(env, "search", "alpha", "-c", "kb", "--filter", '{"colour": "red"}')
    assert run.failed_with("filter.colour", "unknown field")


@pytest.mark.parametrize("args", [[], ["--sample", "."]])
def test_eval_takes_a_folder_or_the_shipped_set(env: dict[str, str], args: list[str]) -> None:
    run = hybrid(env, "eval", *args)
    assert run.failed_with("FOLDER or --sample"), run.text
