"""``flask-chest-otel report``: the SLIs of a SQLite chest's file, checked
against known series recorded through a real chest."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g

from flask_chest_otel import FlaskChestSQLite, flask_chest
from flask_chest_otel.cli import main
from flask_chest_otel.report import format_table, parse_duration, percentile, slis

HOUR_NS = 3600 * 1_000_000_000


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        # The nearest-rank examples of Wikipedia's "Percentile" article.
        ([15, 20, 35, 40, 50], 5, 15),
        ([15, 20, 35, 40, 50], 30, 20),
        ([15, 20, 35, 40, 50], 40, 20),
        ([15, 20, 35, 40, 50], 50, 35),
        ([15, 20, 35, 40, 50], 100, 50),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 25, 7),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 50, 8),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 75, 15),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 100, 20),
        ([7.5], 99, 7.5),
        ([1, 2], 0, 1),
    ],
)
def test_percentiles_are_nearest_rank(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1.5h", 5400), ("7d", 604800),
     ("1w", 604800)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "-5m", "5 minutes", "1y"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="15m"):
        parse_duration(text)


def _record(chest: FlaskChestSQLite, requests: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Serves each (method, path, {g variable: value}) through @flask_chest."""
    app = Flask(__name__)
    current: dict[str, Any] = {}
    tracked = ["latency", "items", "ok", "user", "bad"]

    def view(**_: Any) -> str:
        for name, value in current.items():
            setattr(g, name, value)
        return "ok"

    decorated = flask_chest(chests=[chest], tracked_vars={"GET": tracked, "POST": tracked})(view)
    app.add_url_rule("/orders", "orders", decorated, methods=["GET", "POST"])
    app.add_url_rule("/items/<int:item_id>", "items", decorated, methods=["GET"])
    client = app.test_client()
    for method, path, variables in requests:
        current.clear()
        current.update(variables)
        assert client.open(path, method=method).status_code == 200
    assert chest.force_flush()


@pytest.fixture
def known(make_sqlite_chest: Callable[..., FlaskChestSQLite]) -> str:
    """A file holding known series: POST /orders ``latency`` 1.5, 2.0, 3.5,
    4.0, 5.0 and ``items`` 1..100 spread over 100 requests (shuffled), text
    and bools beside them; GET /items/<int:item_id> 3 requests, no number."""
    chest = make_sqlite_chest()
    latencies = [1.5, 2.0, 3.5, 4.0, 5.0]
    items = list(range(1, 101))
    random.Random(5).shuffle(items)
    posts = [
        (
            "POST",
            "/orders",
            {
                "items": count,
                "ok": True,
                "user": "ada",
                **({"latency": latencies[index]} if index < 5 else {}),
                **({"bad": float("nan")} if index == 0 else {}),
            },
        )
        for index, count in enumerate(items)
    ]
    gets = [("GET", f"/items/{number}", {"user": "bob"}) for number in range(3)]
    _record(chest, posts + gets)
    return chest.db_uri


def test_the_report_of_known_series(known: str) -> None:
    """Counts, means and nearest-rank percentiles of the known series, per
    route and method; bools, text and NaN are not numeric variables; a table
    without status_code reports errors as unknown (None)."""
    assert slis(known) == [
        {
            "route": "/items/<int:item_id>",
            "method": "GET",
            "requests": 3,
            "errors": 0,
            "variables": {},
        },
        {
            "route": "/orders",
            "method": "POST",
            "requests": 100,
            "errors": 0,
            "variables": {
                "items": {"count": 100, "mean": 50.5, "p50": 50, "p95": 95, "p99": 99},
                "latency": {"count": 5, "mean": 3.2, "p50": 3.5, "p95": 5.0, "p99": 5.0},
            },
        },
    ]


def test_errors_count_requests_with_a_status_of_500_or_more(known: str) -> None:
    """The distinct requests whose status_code is >= 500 (a row with none,
    written before the column existed, counts as not an error)."""
    with sqlite3.connect(known) as connection:
        ids = [row[0] for row in connection.execute(
            "SELECT DISTINCT request_id FROM flask_chest WHERE method = 'POST' ORDER BY id"
        )]  # fmt: skip
        statuses = {ids[0]: 500, ids[1]: 503, ids[2]: 404, ids[3]: None}
        for request_id, status in statuses.items():
            connection.execute(
                "UPDATE flask_chest SET status_code = ? WHERE request_id = ?", (status, request_id)
            )
    by_route = {group["route"]: group for group in slis(known)}
    assert by_route["/orders"]["errors"] == 2
    assert by_route["/items/<int:item_id>"]["errors"] == 0
    assert "errors ?" not in format_table(slis(known))


def test_since_and_route_select_the_rows(known: str) -> None:
    with sqlite3.connect(known) as connection:
        connection.execute(
            "UPDATE flask_chest SET time_unix_nano = time_unix_nano - ? WHERE route = '/orders'",
            (2 * HOUR_NS,),
        )
    assert [group["route"] for group in slis(known, since_ns=time.time_ns() - HOUR_NS)] == [
        "/items/<int:item_id>"
    ]
    [only] = slis(known, route="/orders")
    assert only["requests"] == 100
    assert slis(known, route="/nowhere") == []


def test_the_command_prints_json_and_a_table(
    known: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--db", known, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == slis(known)
    assert main(["report", "--db", known, "--route", "/orders", "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "route", "method", "requests", "errors", "variable", "count", "mean", "p50", "p95", "p99",
    ]  # fmt: skip
    assert lines[2].split() == ["/orders", "POST", "100", "0", "items", "100", "50.5", "50", "95",
                                "99"]  # fmt: skip
    assert lines[3].split() == ["latency", "5", "3.2", "3.5", "5", "5"]


def test_a_table_without_status_codes_reports_errors_as_unknown(
    known: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A table written before the status_code column (flask-chest's, or this
    package's before 0.2): errors are unknown, None in JSON and ? in the
    table with a footnote, never 0."""
    with sqlite3.connect(known) as connection:
        connection.execute("ALTER TABLE flask_chest DROP COLUMN status_code")
    assert {group["errors"] for group in slis(known)} == {None}
    assert main(["report", "--db", known, "--route", "/orders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[3] == "?"
    assert lines[-1].startswith("errors ?: this table has no status_code column")


def test_the_command_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", str(tmp_path / "missing.sqlite3")]) == 2
    assert "no such file" in capsys.readouterr().err
    not_a_db = tmp_path / "text.sqlite3"
    not_a_db.write_text("hello, this is not a database file at all" * 10)
    assert main(["report", "--db", str(not_a_db)]) == 2
    assert "not a SQLite database" in capsys.readouterr().err
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    assert main(["report", "--db", str(empty)]) == 2
    assert "no table 'flask_chest'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--db", str(empty), "--since", "soon"])
    assert "--since" in capsys.readouterr().err


def test_the_report_of_an_empty_table(make_sqlite_chest: Callable[..., FlaskChestSQLite]) -> None:
    chest = make_sqlite_chest()
    assert slis(chest.db_uri) == []
    assert "(no requests)" in format_table([])


def test_the_demo_ends_with_the_report_of_its_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "demo.sqlite3"
    assert main(["demo", "-n", "40", "--db", str(db), "--seed", "2"]) == 0
    assert main(["demo", "-n", "10", "--db", str(db), "--seed", "3"]) == 0
    output = capsys.readouterr().out
    report = output.rsplit("The report of this run", 1)[1].splitlines()
    header = next(
        index for index, line in enumerate(report) if line.split()[:2] == ["route", "method"]
    )
    requests = [
        int(line.split()[2]) for line in report[header + 2 :] if line.strip().startswith("/")
    ]
    assert sum(requests) == 10  # this run's, not the first run's
