"""``FlaskChestExporterInfluxDB``: flask-chest 0.0.10's exporter, which copies
a SQLite chest's rows into InfluxDB every few minutes (``from
flask_chest.exporter import FlaskChestExporterInfluxDB``, kept).

Each row is copied once: the copier remembers the last row it delivered in
a small table of the same SQLite file (``flask_chest_otel_copied``, one row
per destination), so a restarted process goes on where the last one
stopped, and several processes on one file (gunicorn workers) take turns
instead of copying the same rows (a copier claims a range of rows before
sending it). The rows themselves are left in place (flask-chest deleted
them): bound the table with ``FlaskChestSQLite(max_age=, max_rows=)``,
longer than the copy interval.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ._legacy import http_url
from ._logging import LOGGER
from ._pacing import background, paced
from .influxdb import InfluxDBMetricExporter
from .influxdb._line_protocol import LineEncoder, to_bytes
from .influxdb._row import FieldValue

__all__ = ["FlaskChestExporterInfluxDB"]

#: The table of the SQLite file holding what was copied where.
STATE_TABLE = "flask_chest_otel_copied"
#: Rows claimed and sent at a time.
BATCH_ROWS = 10_000
#: Seconds a round waits for InfluxDB to take a batch before it leaves the
#: batch to the exporter's retries and goes back to sleep.
FLUSH_SECONDS = 30.0

_CREATE_STATE = f"""CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    destination TEXT PRIMARY KEY,
    copied_rowid INTEGER NOT NULL DEFAULT 0,
    claimed_rowid INTEGER,
    claimed_by TEXT,
    claimed_until REAL
)"""
#: Columns read from the chest's table; those a table lacks read as NULL.
_COLUMNS = (
    "name",
    "field",
    "value",
    "value_text",
    "value_type",
    "request_id",
    "method",
    "route",
    "status_code",
    "tags",
    "trace_id",
    "span_id",
    "time_unix_nano",
)


def _typed(value: Any, value_text: str | None, value_type: str | None) -> FieldValue:
    """A stored value back in the type it was recorded with (``value_type``);
    a row flask-chest wrote (no type) keeps the type SQLite holds."""
    if value_type == "bool":
        return bool(value)
    if value_type == "int":
        return int(value)
    if value_type == "float":
        return float(value)
    if value_type == "str":
        return value_text if value_text is not None else str(value)
    if isinstance(value, (int, float)):
        return value
    return str(value)


class FlaskChestExporterInfluxDB:
    """Copies the rows of a SQLite chest into InfluxDB every
    ``interval_minutes``, each row once, on a background thread.

    The arguments are flask-chest 0.0.10's, in its order. A row becomes the
    point the InfluxDB chest writes for it: measurement = the variable,
    tags ``request_id``, ``method``, ``route`` (and ``status_code`` and the
    row's other tags where present), field ``value`` in the type it was
    recorded with, time = the request's time. (flask-chest wrote every row
    as measurement ``sample`` with string fields ``name`` and ``value`` at
    the copy's time, and deleted the rows.)

    Delivery runs through an ``InfluxDBMetricExporter`` (its buffer,
    retries and error messages). A batch is marked copied once InfluxDB has
    taken it, or refused it for good (logged); until then no further row is
    read. If the process ends before that, the next copier sends the batch
    again: InfluxDB stores a point sent twice once (same series, same
    time), except rows flask-chest wrote, which have no time.

    Args:
        chest: the ``FlaskChestSQLite`` (or anything with ``db_uri`` and
            ``table``) whose file to copy.
        https, host, port: where InfluxDB listens (``url=`` instead takes a
            whole URL).
        token, org, bucket: as for ``FlaskChestInfluxDB``.
        interval_minutes: minutes between copies (a float is accepted).
        url: the InfluxDB base URL, instead of ``https``/``host``/``port``.
        logger: where problems are logged.
        start: start the background thread now (as flask-chest did).
        **options: passed to ``InfluxDBMetricExporter`` (``database=`` for
            InfluxDB 1.x, ``custom_tags``, ``timeout``...).

    Raises:
        ValueError: a chest without a file (``":memory:"``), an interval
            that is not positive, a bad InfluxDB setting.
    """

    def __init__(
        self,
        chest: Any,
        https: bool = False,
        host: str = "localhost",
        port: int = 8086,
        token: str = "",
        org: str = "my-org",
        bucket: str = "my-bucket",
        interval_minutes: float = 5,
        *,
        url: str | None = None,
        logger: logging.Logger | None = None,
        start: bool = True,
        **options: Any,
    ) -> None:
        db_uri = getattr(chest, "db_uri", None)
        if not isinstance(db_uri, str) or not db_uri or db_uri == ":memory:":
            raise ValueError(
                f"FlaskChestExporterInfluxDB: the chest must write a SQLite file, got {chest!r}"
            )
        if not interval_minutes > 0:
            raise ValueError(
                "FlaskChestExporterInfluxDB: interval_minutes must be > 0, "
                f"got {interval_minutes!r}"
            )
        self.chest = chest
        self.db_uri = db_uri
        self.table = str(getattr(chest, "table", None) or "flask_chest")
        self.interval_minutes = interval_minutes
        self.org = org
        self.bucket = bucket
        self.logger = logger or LOGGER
        options.setdefault("name", "FlaskChestExporterInfluxDB")
        self.exporter = InfluxDBMetricExporter(
            url=url or http_url(https, host, port),
            token=token,
            org=org,
            bucket=bucket,
            logger=logger,
            **options,
        )
        self.name = self.exporter.name
        self._encoder = LineEncoder(self.exporter.custom_tags, self.exporter.request_id_field)
        self._destination = f"{self.table} -> {self.exporter.destination}"
        self._me = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        #: The last row of the batch handed to the exporter and not yet settled.
        self._pending: int | None = None
        self._round = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self._connect().close()  # the state table exists from now on
        except sqlite3.OperationalError as exc:
            self.logger.warning("%s: cannot open %s yet (%s)", self.name, self.db_uri, exc)
        if start:
            self.start()

    def __repr__(self) -> str:
        return (
            f"FlaskChestExporterInfluxDB(db_uri={self.db_uri!r}, table={self.table!r}, "
            f"destination={self.exporter.destination!r})"
        )

    @property
    def interval_seconds(self) -> float:
        return float(self.interval_minutes) * 60

    # -- flask-chest's names ----------------------------------------------------

    def start_export_task(self) -> None:
        """flask-chest's name for ``start``."""
        self.start()

    def export_data(self) -> None:
        """flask-chest's name for one copy now (``copy_now``)."""
        self.copy_now()

    # -- the thread -------------------------------------------------------------

    def start(self) -> None:
        """Starts the background thread (once): a copy every interval."""
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(
                target=self._run, name=f"flask_chest_otel:{self.name}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        background(True)
        while not self._stopping.wait(self.interval_seconds):
            try:
                self.copy_now()
            except Exception:  # a bug must not stop the copies for good
                self.logger.exception("%s: copy from %s failed", self.name, self.db_uri)

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the thread, then sends what was handed to the exporter
        within ``timeout`` seconds and marks it copied if it was taken."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._round:
            self._settle(timeout)
        self.exporter.shutdown(timeout_millis=timeout * 1000)

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """``stop``, in the chests' terms (milliseconds)."""
        self.stop(timeout_millis / 1000)

    # -- one round --------------------------------------------------------------

    def copy_now(self, timeout: float = FLUSH_SECONDS) -> int:
        """Copies every row not copied yet, a batch at a time; returns the
        rows InfluxDB took (or refused for good) in this call. Waits up to
        ``timeout`` seconds per batch; a batch still unsent then is left to
        the exporter's retries and settled by a later call."""
        with self._round:
            done = 0
            while not self._stopping.is_set():
                if self._pending is None:
                    claimed = self._claim()
                    if claimed is None:
                        break
                    rows, last = claimed
                    self.exporter.enqueue([(line, len(line) + 1) for line in self._lines(rows)])
                    self._pending = last
                    count = len(rows)
                else:
                    count = 0  # a batch of an earlier call: its rows were counted then
                if not self._settle(timeout):
                    break
                done += count
            return done

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.db_uri, timeout=10.0, uri=self.db_uri.startswith("file:"))
        connection.execute(_CREATE_STATE)
        return connection

    def _claim(self) -> tuple[list[sqlite3.Row], int] | None:
        """The next batch of rows, claimed for this copier; None when none
        is left or another copier holds a live claim."""
        connection = self._connect()
        try:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    f"INSERT OR IGNORE INTO {STATE_TABLE} (destination) VALUES (?)",
                    (self._destination,),
                )
                copied, claimed, owner, until = connection.execute(
                    f"SELECT copied_rowid, claimed_rowid, claimed_by, claimed_until "
                    f"FROM {STATE_TABLE} WHERE destination = ?",
                    (self._destination,),
                ).fetchone()
                if claimed is not None and owner != self._me and (until or 0) > time.time():
                    return None  # another process is copying that range
                last = connection.execute(
                    f'SELECT max(rowid) FROM (SELECT rowid FROM "{self.table}" '
                    "WHERE rowid > ? ORDER BY rowid LIMIT ?)",
                    (copied, BATCH_ROWS),
                ).fetchone()[0]
                if last is None:
                    return None
                connection.execute(
                    f"UPDATE {STATE_TABLE} SET claimed_rowid = ?, claimed_by = ?, "
                    "claimed_until = ? WHERE destination = ?",
                    (last, self._me, self._lease_end(), self._destination),
                )
            present = {row[1] for row in connection.execute(f'PRAGMA table_info("{self.table}")')}
            columns = ", ".join(
                column if column in present else f"NULL AS {column}" for column in _COLUMNS
            )
            connection.row_factory = sqlite3.Row
            rows = connection.execute(
                f'SELECT {columns} FROM "{self.table}" WHERE rowid > ? AND rowid <= ? '
                "ORDER BY rowid",
                (copied, last),
            ).fetchall()
            return rows, int(last)
        finally:
            connection.close()

    def _lease_end(self) -> float:
        """Until when a claim holds: past the next round, so that only a
        copier that stopped loses it."""
        return time.time() + 2 * self.interval_seconds + FLUSH_SECONDS

    def _settle(self, timeout: float) -> bool:
        """Waits for the pending batch; True once InfluxDB took or refused
        every line of it (then it is marked copied), False while it is
        still being retried (the claim is renewed)."""
        last = self._pending
        if last is None:
            return True
        self.exporter.force_flush(timeout * 1000)
        settled = self.exporter.stats.buffered == 0
        connection = self._connect()
        try:
            with connection:
                if settled:
                    connection.execute(
                        f"UPDATE {STATE_TABLE} SET copied_rowid = max(copied_rowid, ?) "
                        "WHERE destination = ?",
                        (last, self._destination),
                    )
                    connection.execute(
                        f"UPDATE {STATE_TABLE} SET claimed_rowid = NULL, claimed_by = NULL, "
                        "claimed_until = NULL WHERE destination = ? AND claimed_by = ?",
                        (self._destination, self._me),
                    )
                else:
                    connection.execute(
                        f"UPDATE {STATE_TABLE} SET claimed_until = ? "
                        "WHERE destination = ? AND claimed_by = ?",
                        (self._lease_end(), self._destination, self._me),
                    )
        finally:
            connection.close()
        if settled:
            self._pending = None
        return settled

    def _lines(self, rows: Sequence[sqlite3.Row]) -> Iterator[bytes]:
        line = self._encoder.line
        request_id_field = self._encoder.request_id_field
        for row in paced(rows):
            if row["value"] is None and row["value_text"] is None:
                continue
            tags: dict[str, str] = {}
            if row["tags"]:
                try:
                    decoded = json.loads(row["tags"])
                except ValueError:
                    decoded = None
                if isinstance(decoded, Mapping):
                    tags.update({str(key): str(value) for key, value in decoded.items()})
            for column in ("request_id", "method", "route", "status_code"):
                if row[column] is not None:
                    tags[column] = str(row[column])
            fields: dict[str, FieldValue] = {
                row["field"] or "value": _typed(row["value"], row["value_text"], row["value_type"])
            }
            if request_id_field and "request_id" in tags:
                fields["request_id"] = tags.pop("request_id")
            if row["trace_id"] is not None and row["span_id"] is not None:
                fields["trace_id"], fields["span_id"] = row["trace_id"], row["span_id"]
            text = line(row["name"], tags, fields, row["time_unix_nano"])
            if text is not None:
                yield to_bytes(text)
