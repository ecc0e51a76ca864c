"""`python -m app.reference`: write the generated reference pages; `--check` only compares."""

from __future__ import annotations

import sys

from app import PROJECT_ROOT
from app.reference import COMMAND, generate, stale


def main(argv: list[str]) -> int:
    pages = generate()
    outdated = stale(pages)
    names = [str(path.relative_to(PROJECT_ROOT)) for path in outdated]
    if "--check" in argv:
        for name in names:
            print(f"out of date: {name} (run `{COMMAND}`)")
        return 1 if names else 0
    for path in outdated:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pages[path])
    print("\n".join(f"wrote {name}" for name in names) or "reference pages are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
