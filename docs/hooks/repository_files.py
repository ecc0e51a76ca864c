"""MkDocs hook: the repository's BENCHMARKS.md (and the figure it shows) become pages of the
site, and links to it written for GitHub (`../BENCHMARKS.md` from `docs/`) point at that
page: the file stays at the repository root, where the benchmark scripts' readers find it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("BENCHMARKS.md",)
ASSETS = ("benchmarks/figures/load.png",)
# One "../" more than the site needs: GitHub resolves links from docs/, the site from its root.
LINK = re.compile(r"\]\(((?:\.\./)+)(" + "|".join(re.escape(p) for p in PAGES) + r")")


def on_files(files: Files, config: Any) -> Files:
    for name in PAGES:
        files.append(File.generated(config, name, content=(ROOT / name).read_text()))
    for name in ASSETS:
        files.append(File.generated(config, name, abs_src_path=str(ROOT / name)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return LINK.sub(lambda m: f"]({m.group(1)[3:]}{m.group(2)}", markdown)
