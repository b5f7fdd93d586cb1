"""Write (or, with --check, verify) the first code cell of every chapter: the Colab-only cell that
installs this release of ngfkit (``ngfkit.book.install_command()``: ``ngfkit[notebooks]`` at the
tag ``v<version>`` of ``ngfkit/version.py``) and fetches the files the chapter reads from that tag.

Run it after changing the version (the release checklist in CHANGELOG.md); CI runs ``--check``
through tests/test_colab_cells.py. Only that one cell is touched, through the json module, and
the notebook's formatting (nbformat's: indent 1, UTF-8, final newline) is kept.
Usage: python scripts/colab_cells.py [--check] [NOTEBOOK ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ngfkit.book import RELEASE_TAG, install_command

ROOT = Path(__file__).resolve().parent.parent
#: book-relative files a chapter's code reads, fetched in Colab (reports under results/ are fetched
#: by ngfkit.book.results_file itself)
ASSETS = {"run_it_yourself.ipynb": ("jobs/purify_job.ipynb",)}


def cell_source(notebook: str) -> str:
    lines = [f"# Colab only: install ngfkit {RELEASE_TAG}, the release this book was built from"
             + (", and the files this chapter reads" if notebook in ASSETS else ""),
             "import sys",
             'if "google.colab" in sys.modules:',
             f"    !{install_command()}"]
    if notebook in ASSETS:
        lines += ["    from ngfkit.book import fetch_assets",
                  f"    fetch_assets({', '.join(repr(a) for a in ASSETS[notebook])})"]
    return "\n".join(lines)


def chapters() -> list[Path]:
    return sorted((ROOT / "book").glob("*.ipynb"))


def first_code_cell(nb: dict) -> dict:
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


def update(path: Path, check: bool) -> bool:
    """True when the cell is (check) or was made (write) the expected one."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    cell = first_code_cell(nb)
    want = cell_source(path.name)
    if "".join(cell["source"]) == want:
        return True
    if check:
        return False
    lines = want.split("\n")
    cell["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report chapters whose cell differs")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every book/*.ipynb")
    args = parser.parse_args(argv)
    stale = [p for p in (args.notebooks or chapters()) if not update(p, args.check)]
    for path in stale:
        print(f"{path}: its Colab cell does not install {install_command()!r}; run python scripts/colab_cells.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
