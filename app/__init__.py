"""Hybrid keyword + vector search and retrieval on PostgreSQL."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
