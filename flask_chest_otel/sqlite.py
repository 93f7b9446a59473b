"""SQLite: ``SQLiteMetricExporter`` and ``FlaskChestSQLite``, the embedded
default chest. A file anyone can open with ``sqlite3``."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from ._chest import DEFAULT_EXPORT_INTERVAL, Chest
from ._delivery import DELIVERED, BufferedExporter, Outcome, Status
from ._schema import FieldValue, rows

__all__ = ["FlaskChestSQLite", "SQLiteMetricExporter"]

# (time, time_unix_nano, name, field, value, value_text, request_id, method, route, tags)
SQLiteRow = tuple[str, int, str, str, float | None, str | None, str | None, str | None,
                  str | None, str | None]

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS "{table}" (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    time_unix_nano INTEGER NOT NULL,
    name TEXT NOT NULL,
    field TEXT NOT NULL,
    value REAL,
    value_text TEXT,
    request_id TEXT,
    method TEXT,
    route TEXT,
    tags TEXT
);
CREATE INDEX IF NOT EXISTS "{table}_name_time" ON "{table}" (name, time_unix_nano);
CREATE INDEX IF NOT EXISTS "{table}_request_id" ON "{table}" (request_id);
"""
_INSERT = (
    'INSERT INTO "{table}" (time, time_unix_nano, name, field, value, value_text, '
    "request_id, method, route, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def iso_time(time_unix_nano: int) -> str:
    """UTC ISO 8601 with nanoseconds: sorts as text, reads as a date."""
    seconds, nanos = divmod(time_unix_nano, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def _split(value: FieldValue) -> tuple[float | None, str | None]:
    if isinstance(value, str):
        return None, value
    return float(value), None


class SQLiteMetricExporter(BufferedExporter[SQLiteRow]):
    """Writes metrics to a SQLite table, one row per field of each point.

    A decorated variable is one row: ``name`` the variable, ``field``
    ``value`` (a number in ``value``) or ``value_str`` (text in
    ``value_text``), with ``request_id``, ``method``, ``route`` and the
    request's ``time``. Another OTel metric gives one row per field of the
    otel2influx layout (``gauge``, ``counter``, ``count``, ``sum``, bucket
    bounds...) with its tags as JSON in ``tags``.

    Each export is written in one transaction. The database is opened in WAL
    mode with a busy timeout, so several processes can write one file; a
    locked or unavailable database is retried, keeping the rows.

    Args:
        db_uri: a file path, ``":memory:"`` (private to the exporter's thread),
            or a ``file:`` URI.
        table: the table, created if missing.
    """

    def __init__(
        self,
        db_uri: str = "flask_chest.sqlite3",
        table: str = "flask_chest",
        *,
        name: str = "SQLite",
        logger: logging.Logger | None = None,
        busy_timeout: float = 5.0,
        **options: Any,
    ) -> None:
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
        """Creates the table now, so that it can be queried before the first
        export; a database that cannot be opened yet is retried by the sender."""
        try:
            self._connect()
        except sqlite3.Error as exc:
            self.logger.warning(
                "%s: cannot open %s yet (%s); will retry", self.name, self.db_uri, exc
            )
        finally:
            self._close()

    def _after_fork_in_child(self) -> None:
        # A SQLite connection must not cross a fork: the child opens its own.
        self._connection = None
        super()._after_fork_in_child()

    def __repr__(self) -> str:
        return f"SQLiteMetricExporter(db_uri={self.db_uri!r}, table={self.table!r})"

    def _encode(self, metrics_data: MetricsData) -> Iterator[SQLiteRow]:
        for row in rows(metrics_data):
            time_text = iso_time(row.time_unix_nano)
            if row.decorated:
                tags = dict(row.tags)
                request_id = tags.pop("request_id", None)
                method = tags.pop("method", None)
                route = tags.pop("route", None)
            else:
                tags, request_id, method, route = row.tags, None, None, None
            tags_json = json.dumps(tags, ensure_ascii=False, sort_keys=True) if tags else None
            for field, field_value in row.fields.items():
                number, text = _split(field_value)
                yield (time_text, row.time_unix_nano, row.measurement, field, number, text,
                       request_id, method, route, tags_json)

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
                connection.executescript(_SCHEMA.format(table=self.table))
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _send(self, batch: Sequence[SQLiteRow]) -> Outcome:
        try:
            connection = self._connect()
            with connection:
                connection.executemany(self._insert, batch)
        except sqlite3.OperationalError as exc:
            # Locked, busy, disk full, read-only, cannot open: may pass; keep the rows.
            self._reset()
            return Outcome(Status.RETRY, f"{self.db_uri}: {exc}")
        except sqlite3.DatabaseError as exc:
            self._reset()
            return Outcome(Status.REJECTED, f"{self.db_uri}: {exc}")
        return DELIVERED

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
        db_uri: the database file (created if missing) or a ``file:`` URI.
        table: the table name (created if missing).
        name: shown in log lines.
        logger: where delivery problems are logged.
        export_interval: seconds between writes.
        **options: passed to ``SQLiteMetricExporter`` (buffer bounds, ...).

    Read it back with ``sqlite3 flask_chest.sqlite3 'select * from flask_chest'``.
    """

    def __init__(
        self,
        db_uri: str = "flask_chest.sqlite3",
        table: str = "flask_chest",
        logger: logging.Logger | None = None,
        *,
        name: str = "SQLite",
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        **options: Any,
    ) -> None:
        exporter = SQLiteMetricExporter(db_uri, table, name=name, logger=logger, **options)
        super().__init__(name, exporter, export_interval=export_interval, logger=logger)
        self.db_uri = db_uri
        self.table = table
