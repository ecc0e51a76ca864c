"""Hybrid keyword + vector search and retrieval on PostgreSQL."""

import ast
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _thread_safe_tracebacks() -> None:
    """On CPython 3.11, formatting a traceback parses each frame's source line with `ast.parse`
    to place the `~~~^^^` markers, and `ast.parse` is not safe in two threads at once there:
    its depth counter is shared, so two threads logging an exception together (or one logging
    while another imports through a parser) can fail with "AST constructor recursion depth
    mismatch" or crash the process (CPython gh-106905). Without the markers the
    traceback is the same, underlined by plain `^^^`."""
    if sys.version_info[:2] == (3, 11) and hasattr(
        traceback, "_extract_caret_anchors_from_line_segment"
    ):
        traceback._extract_caret_anchors_from_line_segment = lambda segment: None  # type: ignore[attr-defined]


def _serialized_ast_parse() -> None:
    """The same CPython 3.11 defect, for every other caller of `ast.parse` (a test runner
    formatting a failure, a library reading source): one lock serializes them in this process,
    so that two threads never parse at once."""
    if sys.version_info[:2] != (3, 11) or getattr(ast.parse, "serialized", False):
        return
    lock, parse = threading.RLock(), ast.parse

    def serialized_parse(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return parse(*args, **kwargs)

    serialized_parse.serialized = True  # type: ignore[attr-defined]
    ast.parse = serialized_parse


_thread_safe_tracebacks()
_serialized_ast_parse()
