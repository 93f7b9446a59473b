"""Retention of the SQLite chest: ``max_age`` and ``max_rows``, applied at
every write and, between writes, by the chest's own sender thread."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g

from flask_chest_otel import FlaskChestSQLite, flask_chest
from flask_chest_otel import sqlite as sqlite_module

from .conftest import read_rows, wait_for

HOUR_NS = 3600 * 1_000_000_000


def _serve(chest: FlaskChestSQLite, requests: int) -> None:
    app = Flask(__name__)

    @app.route("/", methods=["POST"])
    @flask_chest(chests=[chest], tracked_vars={"POST": ["n"]})
    def index() -> str:
        g.n = 1
        return "ok"

    client = app.test_client()
    for _ in range(requests):
        assert client.post("/").status_code == 200


def _insert_aged(db: str, ages_ns: list[int | None]) -> None:
    """Rows as another process wrote them, ``ages_ns`` old (None: no time)."""
    now = time.time_ns()
    with sqlite3.connect(db) as connection:
        connection.executemany(
            "INSERT INTO flask_chest (time, time_unix_nano, name, field, value, value_type) "
            "VALUES ('', ?, 'old', 'value', 1, 'int')",
            [(None if age is None else now - age,) for age in ages_ns],
        )


def test_max_rows_keeps_the_newest_rows_at_every_write(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    chest = make_sqlite_chest(max_rows=10)
    _serve(chest, 4)
    assert chest.force_flush()
    assert len(read_rows(chest.db_uri)) == 4
    _serve(chest, 21)
    assert chest.force_flush()
    rows = read_rows(chest.db_uri)
    assert [row["id"] for row in rows] == list(range(16, 26))


def test_max_age_deletes_rows_older_than_it_at_the_next_write(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    chest = make_sqlite_chest(max_age=3600)
    _insert_aged(chest.db_uri, [5 * HOUR_NS, 2 * HOUR_NS, HOUR_NS // 2])
    _serve(chest, 2)
    assert chest.force_flush()
    rows = read_rows(chest.db_uri)
    assert [row["name"] for row in rows] == ["old", "n", "n"]
    assert time.time_ns() - rows[0]["time_unix_nano"] < HOUR_NS


def test_a_row_behind_a_younger_one_waits_for_a_later_prune(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    """Rows are deleted oldest rowid first up to the first young row: a
    younger row is never deleted, an old one after it stays a while."""
    chest = make_sqlite_chest(max_age=3600)
    _insert_aged(chest.db_uri, [2 * HOUR_NS, HOUR_NS // 2, 2 * HOUR_NS])
    _serve(chest, 1)
    assert chest.force_flush()
    ages = [time.time_ns() - row["time_unix_nano"] for row in read_rows(chest.db_uri)]
    assert len(ages) == 3 and ages[0] < HOUR_NS and ages[1] > HOUR_NS


def test_retention_applies_between_writes_from_the_senders_thread(
    make_sqlite_chest: Callable[..., FlaskChestSQLite], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no request at all, the chest's thread prunes when a prune is due
    (every minute; a fifth of a second here): old rows, rows beyond
    max_rows, then rows that aged past max_age meanwhile."""
    monkeypatch.setattr(sqlite_module, "PRUNE_INTERVAL", 0.2)
    chest = make_sqlite_chest(max_age=60, max_rows=3, export_interval=0.05)
    _insert_aged(chest.db_uri, [HOUR_NS, HOUR_NS, 0, 0, 0, 0, 0])
    assert wait_for(lambda: len(read_rows(chest.db_uri)) == 3, timeout=10)
    assert all(time.time_ns() - row["time_unix_nano"] < HOUR_NS for row in read_rows(chest.db_uri))
    with sqlite3.connect(chest.db_uri) as connection:
        connection.execute("DELETE FROM flask_chest")
    _insert_aged(chest.db_uri, [59_500_000_000] * 2)  # past max_age half a second later
    assert wait_for(lambda: not read_rows(chest.db_uri), timeout=10)


def test_no_retention_keeps_every_row(make_sqlite_chest: Callable[..., FlaskChestSQLite]) -> None:
    chest = make_sqlite_chest()
    _insert_aged(chest.db_uri, [100 * HOUR_NS])
    _serve(chest, 2)
    assert chest.force_flush()
    assert len(read_rows(chest.db_uri)) == 3


def test_retention_prunes_a_table_flask_chest_made(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TABLE flask_chest (unique_id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "request_id TEXT, name TEXT, value TEXT)"
        )
        connection.executemany(
            "INSERT INTO flask_chest (request_id, name, value) VALUES ('r', 'x', ?)",
            [(str(number),) for number in range(5)],
        )
    chest = FlaskChestSQLite(Flask(__name__), db_uri=str(db), max_rows=3)
    try:
        _serve(chest, 1)
        assert chest.force_flush()
        with sqlite3.connect(db) as connection:
            kept = [row[0] for row in connection.execute("SELECT value FROM flask_chest")]
        assert kept == ["3", "4", "1"]
        # Its rows have no time: with max_age they count as old.
        chest.exporter.max_age = 3600
        _serve(chest, 1)
        assert chest.force_flush()
        with sqlite3.connect(db) as connection:
            kept = [row[0] for row in connection.execute("SELECT value FROM flask_chest")]
        assert kept == ["1", "1"]
    finally:
        chest.shutdown()


@pytest.mark.parametrize(
    "options",
    [{"max_age": 0}, {"max_age": -1}, {"max_age": "1h"}, {"max_rows": 0}, {"max_rows": 1.5},
     {"max_rows": True}],
)  # fmt: skip
def test_bad_retention_settings_are_refused(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        FlaskChestSQLite(db_uri=str(tmp_path / "x.sqlite3"), **options)
