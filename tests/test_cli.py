"""The main job: `flask-chest-otel demo`."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from flask_chest_otel.cli import main

from .conftest import read_rows
from .http_sink import HTTPSink, Reply
from .servers import influxdb1, victoria_metrics


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


def test_demo_reports_what_every_target_acknowledged_and_hides_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`demo --influxdb-url ... --http-url ...` against a real VictoriaMetrics and a
    real HTTP server: one OK line per target, the points really stored, and no
    token, URL query or credentials in the output."""
    with victoria_metrics(tmp_path / "vm") as vm, HTTPSink() as sink:
        http_url = f"http://user:hunter2@127.0.0.1:{sink.port}/ingest?api_key=SECRET-KEY"
        status = main([
            "demo", "-n", "60", "--seed", "3", "--db", str(tmp_path / "demo.sqlite3"),
            "--influxdb-url", vm.url, "--influxdb-token", "TOKEN-VALUE",
            "--http-url", http_url,
        ])  # fmt: skip
        output = capsys.readouterr()
        assert status == 0, output
        assert "OK: every request landed (60 sent, 60 request IDs stored)" in output.out
        assert "OK: every request reached InfluxDB" in output.out
        assert "OK: every request reached HTTP" in output.out
        assert len(sink.requests) == 60
        stored = vm.export('{__name__="transaction_value"}')
        assert len({series["metric"]["request_id"] for series in stored}) == 60
    for secret in ("SECRET-KEY", "hunter2", "TOKEN-VALUE", "api_key"):
        assert secret not in output.out + output.err


def test_demo_says_which_target_missed_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target that refuses every POST makes the demo fail and name that target."""
    with HTTPSink() as sink:
        sink.default = Reply(status=401)
        status = main([
            "demo", "-n", "10", "--db", str(tmp_path / "demo.sqlite3"),
            "--http-url", sink.url + "/ingest",
        ])  # fmt: skip
    output = capsys.readouterr().out
    assert status == 1
    assert "OK: every request landed (10 sent" in output
    assert "MISMATCH: HTTP did not acknowledge every request" in output
    assert "0 of 10 payloads acknowledged" in output


def test_demo_help_is_plain_text_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """`demo --help` shows no reStructuredText markup and says each default."""
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal width
    assert "``" not in text
    assert "(default: flask_chest_demo.sqlite3)" in text
    for option, variable in (
        ("--influxdb-token", "INFLUXDB_V2_TOKEN"),
        ("--influxdb-org", "INFLUXDB_V2_ORG"),
        ("--influxdb-bucket", "INFLUXDB_V2_BUCKET"),
    ):
        assert f"{option} {option[2:].upper().replace('-', '_')} " in text, option
        assert f"(env {variable}" in text, option


def test_demo_writes_to_an_influxdb_1x_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`demo --influxdb-database` targets a real InfluxDB 1.6 (/write?db=, no
    org or bucket, no token): every point stored, and the target named so."""
    with influxdb1(tmp_path / "influxd") as server:
        server.create_database("demo")
        status = main([
            "demo", "-n", "30", "--seed", "4", "--db", str(tmp_path / "demo.sqlite3"),
            "--influxdb-url", server.url, "--influxdb-database", "demo",
        ])  # fmt: skip
        output = capsys.readouterr().out
        assert status == 0, output
        assert f"InfluxDB at {server.url} (database demo)" in output
        assert "OK: every request reached InfluxDB" in output
        stored = server.series("demo")
        transactions = [series for series in stored if series["name"] == "transaction"]
        assert sum(len(series["values"]) for series in transactions) == 30
