"""flask-chest users' data carries over (issue 12): values keep their type
end to end, an InfluxDB 1.6 database and a SQLite file flask-chest wrote keep
working, field type conflicts heal where nothing is lost; and the bad inputs
of issue 13 that touch values and SQLite cost only their own item.

Real InfluxDB 1.6, VictoriaMetrics and SQLite files; the InfluxDB 2.x write
API is the strict test double of ``tests/servers.py`` (no 2.x server here).
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import sqlite3
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from influxdb_client import Point
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from flask_chest_otel import FlaskChestInfluxDB, FlaskChestSQLite
from flask_chest_otel._chest import Chest
from flask_chest_otel._delivery import Fate
from flask_chest_otel._names import ATTR_METHOD, ATTR_REQUEST_ID, ATTR_ROUTE, SCOPE_NAME
from flask_chest_otel._values import MAX_TEXT, coerce, conversion_errors
from flask_chest_otel.influxdb import InfluxDBMetricExporter
from flask_chest_otel.sqlite import SQLiteMetricExporter

from .conftest import app_recording
from .servers import InfluxDB1, InfluxDB2WriteDouble, VictoriaMetrics

TOKEN = "t0ken-for-tests"
_ids = itertools.count()


def database(server: InfluxDB1) -> str:
    name = f"data{next(_ids)}"
    server.create_database(name)
    return name


def stored(server: InfluxDB1, db: str, measurement: str) -> list[dict[str, Any]]:
    """Every point of one measurement as {column: value} (tags included)."""
    result = server.query(f'SELECT * FROM "{measurement}"', db)["results"][0]
    points = []
    for series in result.get("series", []):
        for values in series["values"]:
            points.append(dict(zip(series["columns"], values, strict=True)))
    return points


def field_types(server: InfluxDB1, db: str) -> dict[tuple[str, str], str]:
    result = server.query("SHOW FIELD KEYS", db)["results"][0]
    return {
        (series["name"], key): kind
        for series in result.get("series", [])
        for key, kind in series["values"]
    }


# -- values keep their type ---------------------------------------------------------


class Colour(enum.IntEnum):
    RED = 7


class NumpyBoolLike:
    """What matters of numpy.bool_ here (numpy is not installed): a dtype of
    kind "b", an __index__ that refuses, a __float__."""

    class dtype:  # noqa: N801 -- numpy's attribute name
        kind = "b"

    def __index__(self) -> int:
        raise TypeError("'numpy.bool_' object cannot be interpreted as an integer")

    def __float__(self) -> float:
        return 1.0

    def __bool__(self) -> bool:
        return True


class RefusingIndex:
    def __index__(self) -> int:
        raise TypeError("no")

    def __float__(self) -> float:
        return 2.5


class Celsius:
    def __float__(self) -> float:
        return 21.5

    def __str__(self) -> str:
        return "21.5 C"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (3, 3),
        (-(2**63), -(2**63)),
        (2**63, str(2**63)),
        (2.5, 2.5),
        ("00321", "00321"),
        (" 0.5 ", " 0.5 "),
        ("NaN", "NaN"),
        ("", ""),
        (Decimal("1.25"), 1.25),
        (Fraction(1, 4), 0.25),
        (Colour.RED, 7),
        (Celsius(), 21.5),
        (NumpyBoolLike(), True),
        (RefusingIndex(), 2.5),
        (b"ab\x00", "b'ab\\x00'"),
        (bytearray(b"ab"), "bytearray(b'ab')"),
        ({"a": 1}, "{'a': 1}"),
        ([1, "x"], "[1, 'x']"),
        ("x" * 10_000, "x" * MAX_TEXT),
        (10**5000, "<int of 16610 bits>"),
        (None, None),
    ],
    ids=lambda value: type(value).__name__,
)
def test_values_keep_their_type_numeric_text_stays_text(value: Any, expected: Any) -> None:
    """bool stays bool, int int, float float, str the same text (never
    parsed); Decimal/__float__ -> float, __index__ -> int; other objects
    their text, cut to MAX_TEXT."""
    got = coerce(value)
    assert type(got) is type(expected)
    assert got == expected


def test_non_finite_floats_stay_floats() -> None:
    assert math.isnan(coerce(float("nan")))  # type: ignore[arg-type]
    assert coerce(float("-inf")) == -math.inf


def test_big_values_are_cut_before_they_become_text() -> None:
    """A list of a million items has at most MAX_TEXT of them turned into
    text; 50 MB of bytes is sliced before its repr."""
    shown = 0

    class Item:
        def __repr__(self) -> str:
            nonlocal shown
            shown += 1
            return "i"

    text = coerce([Item() for _ in range(1_000_000)])
    assert isinstance(text, str) and len(text) <= MAX_TEXT
    assert shown <= MAX_TEXT
    big = coerce(b"\x00" * 50_000_000)
    assert isinstance(big, str) and len(big) == MAX_TEXT and big.startswith("b'\\x00")


class Exploding:
    def __float__(self) -> float:
        raise RuntimeError("boom")


def test_a_conversion_that_raises_costs_that_value_only(
    tmp_path: Path, chests: list[Chest]
) -> None:
    """A __float__ raising RuntimeError: that variable is stored as the text
    ``<unconvertible ...>`` and counted; the request's other variables land."""
    chest = FlaskChestSQLite(db_uri=str(tmp_path / "x.sqlite3"))
    chests.append(chest)
    before = conversion_errors()
    app_recording(chest, [("r1", {"a": 1, "bad": Exploding(), "c": "x"})])
    assert chest.force_flush()
    assert conversion_errors() == before + 1
    rows = sqlite_rows(chest.db_uri, "SELECT name, value FROM flask_chest ORDER BY id")
    assert rows == [
        ("a", 1),
        ("bad", "<unconvertible Exploding: RuntimeError('boom')>"),
        ("c", "x"),
    ]


# -- SQLite ----------------------------------------------------------------------------


def sqlite_rows(path: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query, params).fetchall()
    finally:
        connection.close()


def test_sqlite_stores_each_value_in_its_own_type(tmp_path: Path, chests: list[Chest]) -> None:
    """value keeps the SQLite type of the value (INTEGER, REAL, TEXT; a bool
    0/1), value_type the Python type; NaN is the text field value_str."""
    chest = FlaskChestSQLite(db_uri=str(tmp_path / "types.sqlite3"))
    chests.append(chest)
    values = {"i": 1, "f": 0.5, "b": True, "s": "00321", "n": math.nan, "big": 2**62}
    app_recording(chest, [("r1", values)])
    assert chest.force_flush()
    rows = sqlite_rows(
        chest.db_uri,
        "SELECT name, field, value, typeof(value), value_type, value_text, request_id "
        "FROM flask_chest ORDER BY id",
    )
    assert rows == [
        ("i", "value", 1, "integer", "int", None, "r1"),
        ("f", "value", 0.5, "real", "float", None, "r1"),
        ("b", "value", 1, "integer", "bool", None, "r1"),
        ("s", "value", "00321", "text", "str", "00321", "r1"),
        ("n", "value_str", "nan", "text", "str", "nan", "r1"),
        ("big", "value", 2**62, "integer", "int", None, "r1"),
    ]


# flask-chest 0.0.x's table, as its sqlite_utils.create_sqlite_table made it.
FLASK_CHEST_TABLE = (
    "CREATE TABLE IF NOT EXISTS flask_chest (unique_id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "request_id TEXT, name TEXT, value TEXT)"
)


def test_flask_chest_sqlite_file_is_migrated_in_place_old_rows_untouched(
    tmp_path: Path, chests: list[Chest], caplog: pytest.LogCaptureFixture
) -> None:
    """flask-chest's file and call (``FlaskChestSQLite(app, name=..., db_uri=...)``):
    missing columns are added, old rows read as before, new rows land."""
    path = str(tmp_path / "db.sqlite3")
    connection = sqlite3.connect(path)
    connection.execute(FLASK_CHEST_TABLE)
    connection.executemany(
        "INSERT INTO flask_chest (request_id, name, value) VALUES (?, ?, ?)",
        [("old1", "transaction", "1"), ("old2", "user", "abc")],
    )
    connection.commit()
    connection.close()
    app = Flask(__name__)
    with caplog.at_level(logging.WARNING):
        chest = FlaskChestSQLite(app, name="flask_chest", db_uri=path)
    chests.append(chest)
    assert chest.table == "flask_chest" and chest.db_uri == path
    assert "migrated in place" in caplog.text
    app_recording(chest, [("new1", {"transaction": 2, "user": "00321"})])
    assert chest.force_flush()
    old = sqlite_rows(path, "SELECT unique_id, request_id, name, value FROM flask_chest")
    assert old == [
        (1, "old1", "transaction", "1"),
        (2, "old2", "user", "abc"),
        (3, "new1", "transaction", "2"),  # TEXT affinity, as flask-chest declared it
        (4, "new1", "user", "00321"),
    ]
    types = sqlite_rows(path, "SELECT value_type, time IS NOT NULL FROM flask_chest")
    assert types == [(None, 0), (None, 0), ("int", 1), ("str", 1)]


def test_table_of_unknown_shape_is_an_error_at_construction_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "other.sqlite3")
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE flask_chest (a TEXT NOT NULL, b INTEGER)")
    connection.close()
    with pytest.raises(ValueError, match=r"table 'flask_chest' has columns a, b"):
        SQLiteMetricExporter(path)


def test_file_that_is_not_a_database_is_an_error_that_says_so(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(ValueError, match="is not a SQLite database"):
        FlaskChestSQLite(db_uri=str(path))


def test_lone_surrogate_costs_only_its_own_text(tmp_path: Path, chests: list[Chest]) -> None:
    """A lone surrogate in a value or a request ID is stored as '?'; every
    other row of the batch lands (issue 13 item 1)."""
    chest = FlaskChestSQLite(db_uri=str(tmp_path / "s.sqlite3"))
    chests.append(chest)
    requests = [(f"r{i}", {"customer": f"c{i}"}) for i in range(100)]
    requests[10] = ("r10", {"customer": "\ud800"})
    requests[20] = ("r\udcff20", {"customer": "c20"})
    app_recording(chest, requests)
    assert chest.force_flush()
    assert chest.exporter.stats.dropped == 0
    rows = sqlite_rows(chest.db_uri, "SELECT request_id, value FROM flask_chest ORDER BY id")
    assert len(rows) == 100
    assert rows[10] == ("r10", "?") and rows[20] == ("r?20", "c20")


# -- InfluxDB 1.6: flask-chest's layout --------------------------------------------


def flask_chest_lines(points: list[tuple[str, Any, str]], time_ns: int) -> bytes:
    """Lines as flask-chest's InfluxDB chest wrote them (a dict record through
    influxdb-client's Point.from_dict)."""
    return "\n".join(
        Point.from_dict(
            {
                "measurement": name,
                "tags": {"request_id": request_id},
                "fields": {"value": value},
                "time": time_ns + index,
            }
        ).to_line_protocol()
        for index, (name, value, request_id) in enumerate(points)
    ).encode()


def test_database_seeded_by_flask_chest_keeps_working(
    influxd: InfluxDB1, chests: list[Chest]
) -> None:
    """Every request lands, 0 points refused; int, float, bool and text keep
    their field types; "00321" is stored as the string "00321"."""
    db = database(influxd)
    seed = [
        ("transaction", 1, "old"),
        ("ratio", 0.5, "old"),
        ("flag", True, "old"),
        ("user", "abc", "old"),
        ("user_id", "00042", "old"),
    ]
    status, body = influxd.write(db, flask_chest_lines(seed, time.time_ns() - 10**9))
    assert status == 204, body
    chest = FlaskChestInfluxDB(name="influx", url=influxd.url, database=db, retry_initial=0.05)
    chests.append(chest)
    values = {"transaction": 1, "ratio": 0.25, "flag": False, "user": "abc", "user_id": "00321"}
    app_recording(chest, [(f"r{i}", values) for i in range(20)])
    assert chest.force_flush(10_000)
    assert chest.exporter.stats.exported == 100 and chest.exporter.stats.dropped == 0
    assert field_types(influxd, db) == {
        ("transaction", "value"): "integer",
        ("ratio", "value"): "float",
        ("flag", "value"): "boolean",
        ("user", "value"): "string",
        ("user_id", "value"): "string",
    }
    assert {p["value"] for p in stored(influxd, db, "user_id")} == {"00042", "00321"}
    assert len(stored(influxd, db, "transaction")) == 21


def test_field_type_conflicts_heal_where_nothing_is_lost_on_influxdb_16(
    influxd: InfluxDB1, chests: list[Chest]
) -> None:
    """An int where floats are stored is written as a float, an integral
    float where ints are stored as an int; a float where strings are stored
    cannot be converted: refused and counted, the others delivered."""
    db = database(influxd)
    seed = [("as_int", 5, "old"), ("as_float", 1.5, "old"), ("as_text", "a", "old")]
    status, body = influxd.write(db, flask_chest_lines(seed, time.time_ns() - 10**9))
    assert status == 204, body
    chest = FlaskChestInfluxDB(name="heal", url=influxd.url, database=db, retry_initial=0.05)
    chests.append(chest)
    requests = [(f"r{i}", {"as_int": 7.0, "as_float": 2, "as_text": 2.5}) for i in range(5)]
    app_recording(chest, requests)
    chest.force_flush(10_000)
    stats = chest.exporter.stats
    assert (stats.exported, stats.dropped_rejected) == (10, 5)
    assert sorted(p["value"] for p in stored(influxd, db, "as_int")) == [5, 7, 7, 7, 7, 7]
    assert sorted(p["value"] for p in stored(influxd, db, "as_float")) == [1.5, 2, 2, 2, 2, 2]
    assert [p["value"] for p in stored(influxd, db, "as_text")] == ["a"]
    # The next batch is converted before it is sent: no new conflict.
    app_recording(chest, [("r9", {"as_int": 8.0})])
    chest.force_flush(10_000)
    assert (stats.exported, stats.dropped_rejected) == (11, 5)


def test_field_type_conflict_422_heals_on_the_v2_write_api(chests: list[Chest]) -> None:
    with InfluxDB2WriteDouble(token=TOKEN, org="o", bucket="b") as double:
        double.field_types[("as_int", "value")] = "integer"
        double.field_types[("as_text", "value")] = "string"
        exporter = InfluxDBMetricExporter(
            url=double.url, token=TOKEN, org="o", bucket="b", retry_initial=0.05
        )
        try:
            outcome = exporter._send([b"as_int value=3 1", b"as_text value=1.5 1", b"m v=1 1"])
        finally:
            exporter.shutdown(timeout_millis=1_000)
    assert outcome.expand(3) == [Fate.DELIVERED, Fate.REFUSED, Fate.DELIVERED]
    assert "measurement 'as_text' field 'value': float sent, string stored" in outcome.reason(1)
    assert ("as_int", {}, {"value": "3i"}, 1) in [(m, t, f, ts) for m, t, f, ts in double.points]


# -- trace link, request ID as a field ---------------------------------------------


def traced_data(request_ids: list[str]) -> MetricsData:
    points = [
        NumberDataPoint(
            {ATTR_REQUEST_ID: request_id, ATTR_METHOD: "GET", ATTR_ROUTE: "/"},
            0,
            1_700_000_000_000_000_000 + index,
            index,
            [Exemplar({}, index, 0, span_id=0xABC, trace_id=0x1234)],
        )
        for index, request_id in enumerate(request_ids)
    ]
    metric = Metric("hits", "", "", Gauge(points))
    scope = ScopeMetrics(InstrumentationScope(SCOPE_NAME), [metric], "")
    return MetricsData([ResourceMetrics(Resource.get_empty(), [scope], "")])


def test_trace_ids_are_string_fields_in_influxdb_and_columns_in_sqlite(
    influxd: InfluxDB1, tmp_path: Path
) -> None:
    db = database(influxd)
    exporter = InfluxDBMetricExporter(url=influxd.url, database=db)
    sqlite_exporter = SQLiteMetricExporter(str(tmp_path / "t.sqlite3"))
    try:
        assert (
            exporter._send(list(exporter._encode(traced_data(["r1"])))).delivered_all
        )
        rows = list(sqlite_exporter._encode(traced_data(["r1"])))
        assert sqlite_exporter._send(rows).delivered_all
    finally:
        exporter.shutdown(timeout_millis=1_000)
        sqlite_exporter.shutdown(timeout_millis=1_000)
    trace, span = "0" * 28 + "1234", "0" * 13 + "abc"
    [point] = stored(influxd, db, "hits")
    assert (point["trace_id"], point["span_id"], point["request_id"]) == (trace, span, "r1")
    assert field_types(influxd, db)[("hits", "trace_id")] == "string"
    assert sqlite_rows(sqlite_exporter.db_uri, "SELECT trace_id, span_id FROM flask_chest") == [
        (trace, span)
    ]


@pytest.mark.parametrize(("request_id_field", "series"), [(False, 30), (True, 1)])
def test_request_id_as_field_keeps_one_series_per_variable(
    influxd: InfluxDB1, vm: VictoriaMetrics, request_id_field: bool, series: int
) -> None:
    """Tag (default): one series per request on InfluxDB 1.6 and
    VictoriaMetrics; ``request_id_field=True``: one series, the request ID
    still stored with each point."""
    db = database(influxd)
    data = traced_data([f"req{i}" for i in range(30)])
    tag = f"rid{request_id_field}"
    made = [
        InfluxDBMetricExporter(url=influxd.url, database=db, request_id_field=request_id_field),
        InfluxDBMetricExporter(
            url=vm.url, token="x", org="o", bucket="b", custom_tags={"suite": tag},
            request_id_field=request_id_field,
        ),
    ]  # fmt: skip
    try:
        for exporter in made:
            assert exporter._send(list(exporter._encode(data))).delivered_all
    finally:
        for exporter in made:
            exporter.shutdown(timeout_millis=1_000)
    in_influxd = influxd.query("SHOW SERIES", db)["results"][0]["series"][0]["values"]
    assert len(in_influxd) == series
    assert len(stored(influxd, db, "hits")) == 30
    assert len(vm.export(f'{{__name__="hits_value",suite="{tag}"}}')) == series


def test_table_of_an_earlier_version_is_migrated_text_exact_in_value_text(
    tmp_path: Path, chests: list[Chest]
) -> None:
    """The previous layout (value REAL, value_text): columns added; REAL
    affinity turns "00321" into 321.0 in value, value_text keeps the text."""
    path = str(tmp_path / "v0.sqlite3")
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE flask_chest (id INTEGER PRIMARY KEY, time TEXT NOT NULL, "
        "time_unix_nano INTEGER NOT NULL, name TEXT NOT NULL, field TEXT NOT NULL, "
        "value REAL, value_text TEXT, request_id TEXT, method TEXT, route TEXT, tags TEXT)"
    )
    connection.close()
    chest = FlaskChestSQLite(db_uri=path)
    chests.append(chest)
    app_recording(chest, [("r1", {"user_id": "00321"})])
    assert chest.force_flush()
    assert sqlite_rows(path, "SELECT value, value_text, value_type FROM flask_chest") == [
        (321.0, "00321", "str")
    ]
