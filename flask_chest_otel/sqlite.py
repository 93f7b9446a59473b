"""SQLite: ``SQLiteMetricExporter`` and ``FlaskChestSQLite``, the embedded
default chest. A file anyone can open with ``sqlite3``."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from math import isfinite
from typing import Any, cast

from flask import Flask
from opentelemetry.sdk.metrics.export import MetricsData

from ._chest import DEFAULT_EXPORT_INTERVAL, Chest
from ._delivery import DELIVERED, BufferedExporter, Settlement, refused, retry, suspect
from ._pacing import paced
from ._records import (
    TAGS,
    TIME_UNIX_NANO,
    VALUE,
    Record,
    by_name,
    common_layout,
    record_point,
    trace_of,
)
from ._spool_codecs import dumps_row, loads_row
from .influxdb._rows import FieldValue, Row, decorated_row, keep, rows

__all__ = ["FlaskChestSQLite", "SQLiteMetricExporter"]

# (time, time_unix_nano, name, field, value, value_text, value_type, request_id,
#  method, route, tags, trace_id, span_id, status_code)
SQLiteRow = tuple[
    str,
    int,
    str,
    str,
    "int | float | str",
    str | None,
    str,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    "int | str | None",
]

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Our columns, in insert order, with the declaration a new table gets.
#: ``value`` has no declared type, so SQLite keeps each value's own type.
_COLUMNS = {
    "time": "TEXT NOT NULL",
    "time_unix_nano": "INTEGER NOT NULL",
    "name": "TEXT NOT NULL",
    "field": "TEXT NOT NULL",
    "value": "",
    "value_text": "TEXT",
    "value_type": "TEXT",
    "request_id": "TEXT",
    "method": "TEXT",
    "route": "TEXT",
    "tags": "TEXT",
    "trace_id": "TEXT",
    "span_id": "TEXT",
    "status_code": "INTEGER",
}
#: Declared types of columns added to an existing table (NULL in old rows).
_ADDED_TYPES = {"time_unix_nano": "INTEGER", "value": "", "status_code": "INTEGER"}
#: Columns a table may have besides ours: its key (ours ``id``, flask-chest's ``unique_id``).
_KEYS = ("id", "unique_id")
#: The columns flask-chest 0.0.x created: ``unique_id, request_id, name, value``.
_FLASK_CHEST_COLUMNS = frozenset({"unique_id", "request_id", "name", "value"})
#: Seconds between prunes when nothing is written (``max_age``, ``max_rows``).
PRUNE_INTERVAL = 60.0


def _create(table: str) -> str:
    columns = ",\n    ".join(f"{name} {kind}".rstrip() for name, kind in _COLUMNS.items())
    return (
        f'CREATE TABLE "{table}" (\n    id INTEGER PRIMARY KEY,\n    {columns}\n);\n'
        f'CREATE INDEX IF NOT EXISTS "{table}_name_time" ON "{table}" (name, time_unix_nano);\n'
        f'CREATE INDEX IF NOT EXISTS "{table}_request_id" ON "{table}" (request_id);\n'
    )


_INSERT = 'INSERT INTO "{table}" ({columns}) VALUES ({marks})'.format(
    table="{table}", columns=", ".join(_COLUMNS), marks=", ".join("?" * len(_COLUMNS))
)


class TableShapeError(ValueError):
    """An existing table that is neither ours nor flask-chest's."""


def iso_time(time_unix_nano: int) -> str:
    """UTC ISO 8601 with nanoseconds: sorts as text, reads as a date."""
    seconds, nanos = divmod(time_unix_nano, 1_000_000_000)
    return f"{_iso_seconds(seconds)}.{nanos:09d}Z"


@functools.lru_cache(maxsize=4)
def _iso_seconds(seconds: int) -> str:
    # Points come in time order, many per second: the date is formatted
    # once per second, not once per row.
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _clean(text: str) -> str:
    """Text SQLite can store: lone surrogates (which UTF-8 cannot encode)
    become ``?``, as on InfluxDB; so one bad value costs nothing else."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
    return text


def _maybe(text: str | None) -> str | None:
    return None if text is None else _clean(text)


def _split(value: FieldValue) -> tuple[int | float | str, str | None, str]:
    """(value, value_text, value_type) of one field value."""
    if isinstance(value, str):
        text = _clean(value)
        return text, text, "str"
    if isinstance(value, bool):
        return int(value), None, "bool"
    if isinstance(value, int):
        return int(value), None, "int"
    return float(value), None, "float"


#: value_type of a number, by its exact type (a subclass takes the slow path).
_NUMBER_TYPES = {bool: "bool", int: "int", float: "float"}


def _row_tuples(row: Row) -> Iterator[SQLiteRow]:
    """The SQLite rows of one schema row: one per field."""
    time_text = iso_time(row.time_unix_nano)
    fields = row.fields
    trace_id = span_id = status_code = None
    if row.decorated:
        tags = dict(row.tags)
        request_id = _maybe(tags.pop("request_id", None))
        method = _maybe(tags.pop("method", None))
        route = _maybe(tags.pop("route", None))
        status_code = _status_code(tags.pop("status_code", None))
        if "trace_id" in fields:
            fields = dict(fields)
            trace_id = str(fields.pop("trace_id"))
            span_id = str(fields.pop("span_id"))
    else:
        tags, request_id, method, route = row.tags, None, None, None
    tags_json = _clean(json.dumps(tags, ensure_ascii=False, sort_keys=True)) if tags else None
    name = _clean(row.measurement)
    for field, field_value in fields.items():
        value, text, kind = _split(field_value)
        yield (
            time_text,
            row.time_unix_nano,
            name,
            _clean(field),
            value,
            text,
            kind,
            request_id,
            method,
            route,
            tags_json,
            trace_id,
            span_id,
            status_code,
        )


def _status_code(text: str | None) -> int | str | None:
    """The ``status_code`` column of a row's tag: the number, as the
    decorator recorded it."""
    if text is not None and text.isascii() and text.isdigit():
        return int(text)
    return _maybe(text)


@functools.lru_cache(maxsize=256)
def _tags_json(tags: tuple[str, ...]) -> str | None:
    """The ``tags`` column of a record's request tags (flat): JSON, as
    ``_row_tuples`` writes the tags of a row."""
    if not tags:
        return None
    pairs = dict(zip(tags[::2], tags[1::2], strict=True))
    return _clean(json.dumps(pairs, ensure_ascii=False, sort_keys=True))


def check_table(connection: sqlite3.Connection, table: str) -> list[str]:
    """The columns to add to an existing ``table`` to make it ours (none if
    it is missing or already ours); ``TableShapeError`` naming the
    table and its columns if it is neither ours nor flask-chest's."""
    info = connection.execute(f'PRAGMA table_info("{table}")').fetchall()
    if not info:
        return []
    columns = {row[1]: row for row in info}
    known = set(_COLUMNS) | set(_KEYS)
    # A column we do not fill must accept NULL or have a default.
    required = {name for name, row in columns.items() if row[3] and row[4] is None and not row[5]}
    unknown = set(columns) - known
    if unknown or not {"name", "value"} <= set(columns) or required - set(_COLUMNS):
        raise TableShapeError(
            f"table {table!r} has columns {', '.join(columns)}: neither this library's "
            f"({', '.join(['id', *_COLUMNS])}) nor flask-chest's "
            f"({', '.join(sorted(_FLASK_CHEST_COLUMNS))}); give another table= or "
            "migrate it yourself"
        )
    return [name for name in _COLUMNS if name not in columns]


class SQLiteMetricExporter(BufferedExporter[SQLiteRow]):
    """Writes metrics to a SQLite table, one row per field of each point.

    A decorated variable is one row: ``name`` the variable, ``field``
    ``value``, ``value`` the value in its own SQLite type (INTEGER for an
    int, 0/1 for a bool, REAL for a float, TEXT for a text), ``value_type``
    the Python type it had (``bool``, ``int``, ``float``, ``str``),
    ``value_text`` the text of a text value, ``request_id``, ``method``,
    ``route``, ``status_code`` (the response's), the request's ``time`` and
    ``time_unix_nano``, ``tags`` (JSON of the request's tags: ``tag_vars``,
    ``service.name`` and the rest of the OTel resource from the environment;
    NULL when none), and ``trace_id``/``span_id`` (hex) when the request had
    a recording span. A
    NaN or infinite float is the row of field ``value_str`` holding
    ``"nan"``, ``"inf"`` or ``"-inf"``. Text that UTF-8 cannot encode (a lone
    surrogate) is stored with ``?`` in its place. Another OTel metric gives
    one row per field of the otel2influx layout (``gauge``, ``counter``,
    ``count``, ``sum``, bucket bounds...) with its tags as JSON in ``tags``.

    A table flask-chest created (``unique_id, request_id, name, value``) is
    migrated in place: the missing columns are added, old rows are left as
    they were (their new columns NULL). A table of any other shape is an
    error at construction.

    Each export is written in one transaction. The database is opened in WAL
    mode with a busy timeout, so several processes can write one file; a
    locked or unavailable database is retried, keeping the rows.

    Args:
        db_uri: a file path, ``":memory:"`` (private to the exporter's thread),
            or a ``file:`` URI.
        table: the table, created if missing.
        max_age: seconds a row is kept (by the request's time); None: forever.
        max_rows: rows the table keeps at most (the newest); None: no bound.
            Both are applied in the transaction of every write and, between
            writes, when the sender thread wakes a minute or more after the
            last prune (see ``_prune``).

    Raises:
        ValueError: a bad table name, a file that is not a SQLite database,
            a table of an unknown shape.
    """

    def __init__(
        self,
        db_uri: str = "flask_chest.sqlite3",
        table: str = "flask_chest",
        *,
        name: str = "SQLite",
        logger: logging.Logger | None = None,
        busy_timeout: float = 5.0,
        max_age: float | None = None,
        max_rows: int | None = None,
        **options: Any,
    ) -> None:
        self._retention(name, max_age, max_rows)
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise ValueError(
                f"{name}: table must be a SQL identifier (letters, digits, _), got {table!r}"
            )
        if not isinstance(db_uri, str) or not db_uri:
            raise ValueError(f"{name}: db_uri must be a file path or file: URI, got {db_uri!r}")
        options.setdefault("max_batch_items", 50_000)
        super().__init__(name=name, logger=logger, **options)
        self.db_uri = db_uri
        self.table = table
        self.busy_timeout = busy_timeout
        self._insert = _INSERT.format(table=table)
        self._connection: sqlite3.Connection | None = None
        if db_uri != ":memory:":
            self._create_table()

    def _create_table(self) -> None:
        """Creates or migrates the table now, so that it can be queried before
        the first export and a wrong file or table fails here; a database
        that cannot be opened yet is retried by the sender."""
        try:
            self._connect()
        except TableShapeError as exc:
            raise ValueError(f"{self.name}: {self.db_uri}: {exc}") from None
        except sqlite3.OperationalError as exc:
            self.logger.warning(
                "%s: cannot open %s yet (%s); will retry", self.name, self.db_uri, exc
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(
                f"{self.name}: {self.db_uri} is not a SQLite database ({exc}); "
                "give the path of a SQLite file, or of a file to create"
            ) from None
        finally:
            self._close()

    def _after_fork_in_child(self) -> None:
        # A SQLite connection must not cross a fork: the child opens its own.
        self._connection = None
        super()._after_fork_in_child()

    def __repr__(self) -> str:
        return f"SQLiteMetricExporter(db_uri={self.db_uri!r}, table={self.table!r})"

    def _spool_dumps(self, item: SQLiteRow) -> bytes:
        return dumps_row(item)

    def _spool_loads(self, data: bytes) -> SQLiteRow:
        return cast(SQLiteRow, loads_row(data, len(_COLUMNS)))

    def _spool_identity(self) -> tuple[str, str, str]:
        uri = self.db_uri
        where = uri if uri.startswith("file:") or uri == ":memory:" else os.path.abspath(uri)
        return "sqlite", self.name, f"{where} table {self.table}"

    def _encode(self, metrics_data: MetricsData) -> Iterator[SQLiteRow]:
        for row in rows(metrics_data):
            yield from _row_tuples(row)

    def _encode_records(self, records: Sequence[Record]) -> Iterator[SQLiteRow]:
        # The rows _encode gives for the records' MetricsData: by name, then
        # record order; a finite number of the common layout without a point.
        for name, group in by_name(records).items():
            clean_name = _clean(name)
            for record in group:
                layout = common_layout(record)
                value = record[VALUE]
                kind = _NUMBER_TYPES.get(type(value))
                if layout is None or kind is None or (kind == "float" and not isfinite(value)):
                    row = decorated_row(name, record_point(record))
                    if keep(row):
                        yield from _row_tuples(row)
                    continue
                request_id, method, route, status_code, _index = layout
                trace = trace_of(record)
                time_unix_nano = record[TIME_UNIX_NANO]
                yield (
                    iso_time(time_unix_nano),
                    time_unix_nano,
                    clean_name,
                    "value",
                    int(value) if kind == "bool" else value,
                    None,
                    kind,
                    _clean(request_id),
                    _clean(method),
                    _clean(route),
                    _tags_json(record[TAGS]),
                    *(trace or (None, None)),
                    status_code,
                )

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self.db_uri,
                timeout=self.busy_timeout,
                uri=self.db_uri.startswith("file:"),
                check_same_thread=False,
            )
            try:
                if self.db_uri != ":memory:":
                    connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                with connection:
                    connection.execute("BEGIN IMMEDIATE")
                    missing = check_table(connection, self.table)
                    for column in missing:
                        kind = _ADDED_TYPES.get(column, "TEXT")
                        connection.execute(f'ALTER TABLE "{self.table}" ADD COLUMN {column} {kind}')
                    if missing:
                        self.logger.warning(
                            "%s: %s: table %r migrated in place (added columns %s; old rows kept)",
                            self.name,
                            self.db_uri,
                            self.table,
                            ", ".join(missing),
                        )
                    exists = connection.execute(
                        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (self.table,),
                    ).fetchone()
                if not exists:
                    connection.executescript(_create(self.table))
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _send(self, batch: Sequence[SQLiteRow]) -> Settlement:
        try:
            connection = self._connect()
            with connection:
                connection.executemany(self._insert, paced(batch))
                self._prune(connection)
        except TableShapeError as exc:
            self._reset()
            return refused(f"{self.db_uri}: {exc}")
        except sqlite3.OperationalError as exc:
            # Locked, busy, disk full, read-only, cannot open: may pass; keep the rows.
            self._reset()
            return retry(f"{self.db_uri}: {exc}")
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError) as exc:
            # About a row's values: the transaction wrote nothing; narrow it down.
            self._reset()
            return suspect(f"{self.db_uri}: {exc}")
        except sqlite3.DatabaseError as exc:
            self._reset()
            return refused(f"{self.db_uri}: {exc}")
        return DELIVERED

    # -- retention ----------------------------------------------------------------

    def _retention(self, name: str, max_age: float | None, max_rows: int | None) -> None:
        if max_age is not None and not (isinstance(max_age, (int, float)) and max_age > 0):
            raise ValueError(f"{name}: max_age must be > 0 seconds or None, got {max_age!r}")
        if max_rows is not None and (
            isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1
        ):
            raise ValueError(f"{name}: max_rows must be an int >= 1 or None, got {max_rows!r}")
        self.max_age = max_age
        self.max_rows = max_rows
        self._next_prune = 0.0

    def _prune(self, connection: sqlite3.Connection) -> None:
        """Deletes the rows past ``max_age`` and beyond ``max_rows``, oldest
        (lowest rowid) first, in the caller's transaction.

        Both walk the table in rowid order, never the whole table: ``max_age``
        deletes the rows before the first one younger than it (a row that
        arrived after a younger one, from another process, waits for the next
        prune; a row without a time, as flask-chest wrote them, counts as
        old); ``max_rows`` keeps the rows whose rowid is within ``max_rows``
        of the highest (rowids grow by one per row, so that is the newest
        ``max_rows`` rows, fewer where rows were deleted in between)."""
        if self.max_age is None and self.max_rows is None:
            return
        table = self.table
        if self.max_age is not None:
            oldest_kept = time.time_ns() - int(self.max_age * 1e9)
            connection.execute(
                f'DELETE FROM "{table}" WHERE rowid < coalesce('
                f'(SELECT rowid FROM "{table}" WHERE time_unix_nano >= ? ORDER BY rowid LIMIT 1), '
                f'(SELECT max(rowid) FROM "{table}") + 1)',
                (oldest_kept,),
            )
        if self.max_rows is not None:
            connection.execute(
                f'DELETE FROM "{table}" WHERE rowid <= (SELECT max(rowid) FROM "{table}") - ?',
                (self.max_rows,),
            )
        self._next_prune = time.monotonic() + PRUNE_INTERVAL

    def _housekeeping(self) -> None:
        # Between writes, retention still applies: the sender wakes every
        # flush interval; a prune is due a minute after the last.
        if (self.max_age is None and self.max_rows is None) or time.monotonic() < self._next_prune:
            return
        try:
            connection = self._connect()
            with connection:
                self._prune(connection)
        except sqlite3.Error as exc:
            self._reset()
            self._next_prune = time.monotonic() + PRUNE_INTERVAL
            self._log.log(
                logging.WARNING, "prune", "%s: %s: could not prune: %s", self.name, self.db_uri, exc
            )

    def _reset(self) -> None:
        if self._connection is not None and self.db_uri != ":memory:":
            self._connection.close()
            self._connection = None

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class FlaskChestSQLite(Chest):
    """The embedded default chest: decorated variables into a SQLite table.

    Args:
        db_uri: the database file (created if missing) or a ``file:`` URI;
            positional or keyword.
        table: the table name (created if missing; a flask-chest table is
            migrated in place, see ``SQLiteMetricExporter``).
        name: shown in log lines.
        logger: where delivery problems are logged.
        export_interval: seconds between writes.
        **options: passed to ``SQLiteMetricExporter``: ``max_age`` (seconds)
            and ``max_rows``, the retention, applied at every write and at
            least every minute (while ``export_interval`` is at most a
            minute); buffer bounds, spool...

    flask-chest's call ``FlaskChestSQLite(app, name="flask_chest",
    db_uri="db.sqlite3")`` is accepted as it was: given a Flask app first,
    ``name`` (or the second positional argument) is the table, as it was in
    flask-chest, and ``db_uri`` defaults to flask-chest's ``db.sqlite3``.

    Read it back with ``sqlite3 flask_chest.sqlite3 'select * from flask_chest'``.
    """

    def __init__(
        self,
        target: str | Flask | None = None,
        /,
        table: str | None = None,
        logger: logging.Logger | str | None = None,
        *,
        db_uri: str | None = None,
        name: str | None = None,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        **options: Any,
    ) -> None:
        if isinstance(target, Flask):
            # flask-chest: FlaskChestSQLite(app, name="flask_chest", db_uri="db.sqlite3")
            if isinstance(logger, str):  # its third positional argument: db_uri
                db_uri, logger = db_uri or logger, None
            table = table or name or "flask_chest"
            name = "SQLite"
            db_uri = db_uri or "db.sqlite3"
        else:
            if target is not None and db_uri is not None:
                raise TypeError("FlaskChestSQLite: db_uri given twice (positional and keyword)")
            db_uri = target if target is not None else (db_uri or "flask_chest.sqlite3")
            table = table or "flask_chest"
            name = name or "SQLite"
        if isinstance(logger, str):
            raise TypeError(f"{name}: logger must be a logging.Logger, got {logger!r}")
        exporter = SQLiteMetricExporter(db_uri, table, name=name, logger=logger, **options)
        super().__init__(name, exporter, export_interval=export_interval, logger=logger)
        self.db_uri = db_uri
        self.table = table
