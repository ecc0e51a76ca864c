"""The command-line reference: every `hybrid` command from the click definitions, with its
help, usage, arguments and options."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from app.cli import cli
from app.reference.markdown import block, code, header, page, table

INTRO = (
    "Every command reads the [settings](settings.md). Without `DATABASE_URL`, a command that "
    "needs the database starts the embedded server and stops it again when it is done, "
    "unless it was already running (`hybrid db start` keeps it up between commands, which "
    "makes commands faster). Every command also takes `--help`."
)


def render() -> str:
    lines = header("Command line", "the click commands in `app/cli.py`", INTRO)
    lines += _index()
    for path, command in commands(cli, ("hybrid",)):
        lines += _command(path, command)
    return page(lines)


def commands(
    command: click.Command, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under `command`, depth first, in declaration order."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from commands(sub, (*path, name))


def _index() -> list[str]:
    rows = [
        (f"[{code(' '.join(path))}](#{_anchor(path)})", _summary(command))
        for path, command in commands(cli, ("hybrid",))
        if not isinstance(command, click.Group)
    ]
    return table(("command", "what it does"), rows)


def _anchor(path: tuple[str, ...]) -> str:
    """The id the Markdown table of contents gives the command's heading."""
    return "-".join(path)


def _summary(command: click.Command) -> str:
    return command.get_short_help_str(limit=200)


def _command(path: tuple[str, ...], command: click.Command) -> list[str]:
    name = " ".join(path)
    context = click.Context(command, info_name=name)
    lines = [f"## {name}", "", *_help(command), ""]
    lines += block(f"{name} {' '.join(command.collect_usage_pieces(context))}".rstrip())
    params = [p for p in command.get_params(context) if "--help" not in p.opts]
    arguments = [p for p in params if isinstance(p, click.Argument)]
    options = [p for p in params if isinstance(p, click.Option)]
    if arguments:
        named = [(code(a.make_metavar(context)), _kind(a)) for a in arguments]
        lines += table(("argument", "type"), named)
    if options:
        rows = [_option(o, context) for o in options]
        lines += table(("option", "type", "default", "description"), rows)
    return lines


def _help(command: click.Command) -> list[str]:
    text = inspect.cleandoc(command.help or "")
    return [line for line in text.splitlines() if line.strip() != "\b"]


def _option(option: click.Option, context: click.Context) -> tuple[str, str, str, str]:
    names = ", ".join(code(n) for n in [*option.opts, *option.secondary_opts])
    help_text = option.help or ""
    if option.multiple and "repeatable" not in help_text.lower():
        help_text = f"{help_text} Repeatable.".strip()
    if option.required:
        help_text = f"Required. {help_text}".strip()
    kind = "flag" if option.is_flag else _kind(option)
    return (names, kind, _default(option, context), help_text)


def _kind(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(code(str(c)) for c in kind.choices)
    if isinstance(kind, click.IntRange | click.FloatRange):
        low = "" if kind.min is None else f", at least {kind.min}"
        high = "" if kind.max is None else f", at most {kind.max}"
        return ("integer" if isinstance(kind, click.IntRange) else "number") + low + high
    names = {"float": "number", "path": "path", "directory": "directory", "file": "file"}
    return names.get(kind.name, kind.name)


def _default(option: click.Option, context: click.Context) -> str:
    value: Any = option.get_default(context, call=False)
    unset = getattr(value, "name", None) == "UNSET"  # click's marker for "no default"
    if unset or value in (None, (), "") or (value is False and not option.secondary_opts):
        return ""
    if isinstance(value, bool):
        return code(option.opts[0] if value else option.secondary_opts[0])
    if isinstance(value, Path):
        value = value.as_posix()
    return code(str(value))
