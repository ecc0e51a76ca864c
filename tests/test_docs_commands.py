"""The quick paths of the documentation work as written: the commands are read from the
Markdown itself (README.md and docs/getting-started.md) and run: `hybrid serve --sample`
starts and prints its URL, its search page's URL and key, the search page opens on the
sample's results, the documented curl calls answer, a search from the command line finds the
sample, an ingest of a folder and `hybrid eval` on the shipped set succeed. The shipped
evaluation set is checked for consistency."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from app import PROJECT_ROOT
from app.api.pages import SUGGESTED_QUERY
from app.cli import SAMPLE_COLLECTION
from tests.test_cli import HYBRID, env, free_port, hybrid

__all__ = ["env"]

README = PROJECT_ROOT / "README.md"
GETTING_STARTED = PROJECT_ROOT / "docs" / "getting-started.md"
SHIPPED_SET = PROJECT_ROOT / "app" / "eval" / "datasets" / "samples"
DOCUMENTED_PORT = "127.0.0.1:8000"


def shell_lines(page: Path) -> list[str]:
    """Every command of the page's ```bash blocks (continuation lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL)
    joined = "\n".join(block.replace("\\\n", " ") for block in blocks)
    return [line.strip() for line in joined.splitlines() if line.strip()]


def documented(page: Path, prefix: str) -> list[str]:
    found = [line for line in shell_lines(page) if line.startswith(prefix)]
    assert found, f"{page.name} documents no command starting with {prefix!r}"
    return found


def quick_start() -> str:
    (line,) = [c for c in shell_lines(README) if "hybrid serve --sample" in c]
    assert line in shell_lines(GETTING_STARTED), "README and getting-started differ"
    return line.rsplit("&& ", 1)[1]


def as_installed(command: str) -> list[str]:
    """A documented `.venv/bin/hybrid ...` (or `hybrid ...`) line as this install runs it."""
    words = shlex.split(command)
    assert words[0] in ("hybrid", ".venv/bin/hybrid"), command
    return [str(HYBRID), *words[1:]]


@pytest.fixture
def served(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, str]]:
    """The quick start's `hybrid serve --sample` over the test database: its port and the key
    it printed."""
    port = free_port()
    environ = {**env, "PATH": str(HYBRID.parent), "HYBRID_DATA_DIR": str(tmp_path)}
    environ |= {"HYBRID_PORT": str(port), "COLUMNS": "200"}
    environ.pop("HYBRID_AUTH", None)
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        service = subprocess.Popen(
            as_installed(quick_start()), env=environ, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_up(service, port, log)
        printed = log.read_text()
        assert f"Hybrid search is running at http://127.0.0.1:{port}" in printed, printed
        assert f"search page: {search_page(port)}" in printed, printed
        key = re.search(r"export HYBRID_KEY=(hs_\S+)", printed)
        assert key, printed
        yield port, key.group(1)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)


def search_page(port: int) -> str:
    """The URL `serve --sample` prints: the search page on the sample, with a suggested query."""
    query = urlencode({"collection": SAMPLE_COLLECTION, "q": SUGGESTED_QUERY})
    return f"http://127.0.0.1:{port}/?{query}"


def _wait_until_up(service: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert service.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"the service did not come up:\n{log.read_text()}"
            time.sleep(0.5)


def test_quick_start_serves_the_sample_and_the_documented_calls_answer(
    served: tuple[int, str], env: dict[str, str]
) -> None:
    port, key = served
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    calls = documented(README, "curl ") + documented(GETTING_STARTED, "curl ")
    for call in dict.fromkeys(calls):
        line = call.replace(DOCUMENTED_PORT, f"127.0.0.1:{port}")
        done = subprocess.run(
            ["bash", "-c", line],
            env={"PATH": os.environ["PATH"], "HYBRID_KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (call, done.stderr)
        answer = json.loads(done.stdout)
        assert "status" not in answer, (call, answer)  # a problem body
        if "/v1/search" in call:
            assert answer["hits"][0]["title"] == "Hybrid search", answer
        if "/documents" in call:
            assert answer["documents"], answer
    # The printed search page opens on the sample's results, for the key it printed.
    opened = urllib.request.Request(search_page(port), headers={"Cookie": f"hybrid_key={key}"})
    with urllib.request.urlopen(opened, timeout=60) as response:
        html = response.read().decode()
    assert '<option value="sample" selected>' in html and 'class="hit"' in html, html
    (search,) = documented(GETTING_STARTED, ".venv/bin/hybrid search")[:1]
    run = hybrid(env, *as_installed(search)[1:])
    assert run.code == 0, run.text
    assert "Hybrid search" in run.text and "hits from 'sample'" in run.text


def test_ingest_a_folder_then_search_it_as_documented(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "my-docs"
    folder.mkdir()
    (folder / "launch.md").write_text(
        "# Launch meeting\n\nWe decided to launch the new search page in March, after the "
        "load test.\n"
    )
    (folder / "lunch.txt").write_text("The canteen serves soup on Fridays.")
    monkeypatch.chdir(tmp_path)
    ingest, search = (
        documented(GETTING_STARTED, ".venv/bin/hybrid ingest")[0],
        documented(GETTING_STARTED, '.venv/bin/hybrid search "what did we decide')[0],
    )
    run = hybrid(env, *as_installed(ingest)[1:], "--no-progress")
    assert run.code == 0, run.text
    assert "notes: 2 created" in run.text
    found = hybrid(env, *as_installed(search)[1:], "-k", "1")
    assert found.code == 0, found.text
    assert "Launch meeting" in found.text


def test_eval_on_the_shipped_set_as_documented(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anywhere: the shipped set is found in the package; the report goes to the cwd.
    monkeypatch.chdir(tmp_path)
    for page in (GETTING_STARTED, PROJECT_ROOT / "docs" / "how-to" / "evaluate.md"):
        (command,) = documented(page, ".venv/bin/hybrid eval")
        run = hybrid(env, *as_installed(command)[1:], "--no-progress")
        assert run.code == 0, run.text
    report = json.loads((tmp_path / "eval-results" / "samples.json").read_text())
    assert (report["documents"], report["queries"]) == (25, 28)
    # Far below what each mode scores: a floor against gross regressions only.
    assert {m["mode"]: m["ndcg_10"] > 0.7 for m in report["modes"]} == dict.fromkeys(
        ("keyword", "vector", "hybrid"), True
    )


def test_the_shipped_set_is_consistent() -> None:
    corpus = [json.loads(line) for line in (SHIPPED_SET / "corpus.jsonl").open()]
    queries = [json.loads(line) for line in (SHIPPED_SET / "queries.jsonl").open()]
    with (SHIPPED_SET / "qrels.tsv").open(newline="") as f:
        header, *judged = list(csv.reader(f, delimiter="\t"))
    assert header == ["query-id", "corpus-id", "score"]
    documents, asked = {d["_id"] for d in corpus}, {q["_id"] for q in queries}
    assert len(documents) == len(corpus) and all(d["title"] and d["text"] for d in corpus)
    assert {q for q, _, _ in judged} == asked
    assert {d for _, d, _ in judged} <= documents
    assert {s for _, _, s in judged} <= {"1", "2"}
