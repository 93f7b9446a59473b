"""The documentation builds with Sphinx, warnings as errors, as CI builds it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    """Every page, toctree entry, cross-reference and docstring is clean."""
    result = subprocess.run(
        [
            sys.executable, "-m", "sphinx",
            "-W", "--keep-going", "-E", "-q",
            "-b", "html",
            "-d", str(tmp_path / "doctrees"),
            str(DOCS), str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr or result.stdout
    assert result.stderr == "", result.stderr
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "api.html").is_file()


def test_every_page_is_in_the_docs_tree() -> None:
    """A page left out of every toctree is a warning: this names it first."""
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    listed = {line.strip() for line in index.splitlines()}
    pages = {page.stem for page in DOCS.glob("*.md")} - {"index"}
    assert pages <= listed, sorted(pages - listed)
