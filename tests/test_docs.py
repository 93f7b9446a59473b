"""The documentation builds with Sphinx, warnings as errors, as CI builds it."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- every code block runs as written -------------------------------------------

REPO = DOCS.parent
PAGES = [*sorted(DOCS.glob("*.md")), REPO / "README.md"]
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
_PRINTS = re.compile(r"\n*[^\n`]*\bprints\b[^\n]*\n+```text\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: What the pages say comes from the environment, and a short exit: a page's
#: chests point at servers that are not there (nothing is sent to them).
_ENVIRONMENT = {"SFX_TOKEN": "doc-test-token", "INFLUXDB_TOKEN": "doc-test-token",
                "FLASK_CHEST_EXIT_TIMEOUT": "0.5"}  # fmt: skip
# Runs the blocks in order in one namespace, each block's printed output kept.
_RUNNER = """
import contextlib, io, json, sys
blocks = json.loads(open("blocks.json").read())
namespace = {"__name__": "__main__"}
printed = []
for name, code in blocks:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec"), namespace)
    printed.append(out.getvalue())
open("printed.json", "w").write(json.dumps(printed))
"""


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, the output the page says it prints or None) of each
    ```python block."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1) != "python":
            continue
        prints = _PRINTS.match(text, match.end())
        line = text.count("\n", 0, match.start()) + 2
        blocks.append((line, match.group(2), prints.group(1) if prints else None))
    return blocks


def _same_line(expected: str, actual: str) -> bool:
    """Equal; or, for printed tuples, equal item by item with the same types,
    except a text holding ``...`` (any text) and a float (any float): the
    page's request IDs and timings are examples."""
    if expected == actual:
        return True
    try:
        want, got = ast.literal_eval(expected), ast.literal_eval(actual)
    except (ValueError, SyntaxError):
        return False
    if not (isinstance(want, tuple) and isinstance(got, tuple) and len(want) == len(got)):
        return False
    for item, other in zip(want, got, strict=True):
        if type(item) is not type(other):
            return False
        if isinstance(item, str) and "..." in item or isinstance(item, float):
            continue
        if item != other:
            return False
    return True


@pytest.mark.parametrize(
    "page", [page for page in PAGES if python_blocks(page)], ids=lambda page: page.name
)
def test_every_python_block_of_the_page_runs_as_written(page: Path, tmp_path: Path) -> None:
    """A page's ```python blocks run in order, in one namespace, in an empty
    directory, as a reader pasting them one after the other would run them
    (a page whose blocks hold tests runs under pytest); where the page says
    what a block prints, it prints that."""
    blocks = python_blocks(page)
    environment = {**os.environ, **_ENVIRONMENT}
    if any("def test_" in code for _, code, _ in blocks):
        (tmp_path / f"test_{page.stem}.py").write_text("\n\n".join(code for _, code, _ in blocks))
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   f"test_{page.stem}.py"]  # fmt: skip
    else:
        names = [(f"{page.name}:{line}", code) for line, code, _ in blocks]
        (tmp_path / "blocks.json").write_text(json.dumps(names))
        (tmp_path / "run.py").write_text(_RUNNER)
        command = [sys.executable, "run.py"]
    result = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if (tmp_path / "printed.json").exists():
        printed = json.loads((tmp_path / "printed.json").read_text())
        for (line, _, expected), actual in zip(blocks, printed, strict=True):
            if expected is None:
                continue
            want, got = expected.splitlines(), actual.splitlines()
            assert len(want) == len(got) and all(
                _same_line(a, b) for a, b in zip(want, got, strict=True)
            ), f"{page.name}:{line} prints\n{actual}\nnot, as the page says,\n{expected}"
