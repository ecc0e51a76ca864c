"""Reference pages of the documentation, generated from the code itself.

Each page is rendered from the object it describes: the `hybrid` command tree (click), the
settings dataclasses, the OpenAPI document the Litestar application builds, and the files in
`sql/`. `python -m app.reference` writes them under `docs/reference/`; with `--check` it only
says which committed page differs from what the code gives now (a test does the same).
Output is deterministic: sorted or in declaration order, no timestamps, no machine paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app import PROJECT_ROOT
from app.reference.api_page import render as render_api
from app.reference.cli_page import render as render_cli
from app.reference.settings_page import render as render_settings
from app.reference.sql_page import render as render_sql

REFERENCE_DIR = PROJECT_ROOT / "docs" / "reference"
COMMAND = "python -m app.reference"
PAGES: dict[str, Callable[[], str]] = {
    "cli.md": render_cli,
    "http-api.md": render_api,
    "settings.md": render_settings,
    "sql.md": render_sql,
}


def generate() -> dict[Path, str]:
    """Every reference page: its path and its text."""
    return {REFERENCE_DIR / name: render() for name, render in PAGES.items()}


def stale(pages: dict[Path, str]) -> list[Path]:
    """The pages whose committed text differs from `pages` (or that are missing)."""
    return [path for path, text in pages.items() if _read(path) != text]


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None
