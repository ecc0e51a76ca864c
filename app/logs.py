"""Structured logging: JSON lines for machines, console text for people (HYBRID_LOG_FORMAT).

Both structlog's loggers and the standard library's (the query log writer, the vector cache,
uvicorn) go through the same processors, so every line has the same shape: the event, its
level, an ISO timestamp in UTC, the logger's name and, inside a request, its `request_id`
(and `trace_id` when tracing is on).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.types import EventDict, Processor

from app.observe.tracing import current_trace_id
from app.settings import ServerSettings


def configure_logging(settings: ServerSettings) -> None:
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _trace_id,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if _json(settings):
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    # The service's own loggers at HYBRID_LOG_LEVEL; the libraries' (a line per provider call,
    # per SQL statement, per model loaded) only from WARNING on.
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("app").setLevel(level)
    # structlog's own loggers render and print directly (a third of the cost of a trip through
    # the standard library's records and handlers: it is paid once a request, by the access log).
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_StderrLogger,
    )


def _json(settings: ServerSettings) -> bool:
    if settings.log_format == "auto":
        return not sys.stderr.isatty()
    return settings.log_format == "json"


def _trace_id(_: Any, __: str, event: EventDict) -> EventDict:
    trace_id = current_trace_id()
    if trace_id is not None:
        event["trace_id"] = trace_id
    return event


class _StderrLogger:
    """Prints each rendered line to whatever `sys.stderr` is at the time (stdout belongs to
    command output, `--json`; tests and the CLI runner swap stderr)."""

    def __init__(self, name: str = "", *_: Any) -> None:
        self.name = name  # for `add_logger_name`

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever `sys.stderr` is at the time (stdout belongs to command
    output, `--json`; tests and the CLI runner swap stderr)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass
