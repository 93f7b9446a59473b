"""The main job: `flask-chest-otel demo`."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from flask_chest_otel.cli import main

from .conftest import read_rows


def test_demo_prints_slis_that_match_the_requests_it_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "demo.sqlite3"
    assert main(["demo", "-n", "120", "--db", str(db), "--seed", "7"]) == 0
    output = capsys.readouterr().out
    assert "OK: every request landed (120 sent, 120 request IDs stored)" in output
    total_line = next(line for line in output.splitlines() if line.strip().startswith("total"))
    assert total_line.split()[1:4] == ["120", "120", "120"]
    rows = read_rows(db)
    assert len({row["request_id"] for row in rows}) == 120
    posts = [row for row in rows if row["name"] == "response_time"]
    assert all(row["method"] == "POST" for row in posts)


def test_demo_runs_as_a_module_and_keeps_runs_apart(tmp_path: Path) -> None:
    """`python -m flask_chest_otel demo` twice on one file reports each run's own requests."""
    db = tmp_path / "demo.sqlite3"
    for _ in range(2):
        completed = subprocess.run(
            [sys.executable, "-m", "flask_chest_otel", "demo", "-n", "40", "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr
        assert "(40 sent, 40 request IDs stored)" in completed.stdout
    assert len(read_rows(db, "WHERE name = 'transaction'")) == 80


def test_demo_rejects_a_request_count_below_one() -> None:
    with pytest.raises(SystemExit):
        main(["demo", "-n", "0"])


def test_demo_progress_bar_ends_on_the_total() -> None:
    from flask_chest_otel.cli import _progress

    out = io.StringIO()
    _progress(10, 10, out)
    assert out.getvalue().endswith("10/10\n")
