"""The SLIs of a SQLite chest's file, without writing SQL: per route and
method, the requests, the errors and, for each numeric variable, its count,
mean and 50th, 95th and 99th percentiles. ``flask-chest-otel report``
prints them (docs/report.md).

Percentiles are nearest-rank: the p-th percentile of n sorted values is the
value at rank ``ceil(p / 100 * n)`` (1-based), the smallest recorded value
with at least p % of the values at or below it; always a value that was
recorded, never an interpolation.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PERCENTILES", "format_table", "parse_duration", "percentile", "slis"]

#: The percentiles reported, as keys ``p50``, ``p95``, ``p99``.
PERCENTILES = (50, 95, 99)
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def parse_duration(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``15m``, ``2h``, ``7d`` or ``1w``."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 15m, 2h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ``ordered`` (sorted, not empty)."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _connect(db: str | Path) -> sqlite3.Connection:
    path = Path(db)
    if not path.is_file():
        raise FileNotFoundError(f"{db}: no such file")
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        connection.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise ValueError(f"{db} is not a SQLite database ({exc})") from None
    return connection


def slis(
    db: str | Path,
    *,
    since_ns: int | None = None,
    route: str | None = None,
    table: str = "flask_chest",
) -> list[dict[str, Any]]:
    """The report of a SQLite chest's file, one dict per route and method
    (sorted by route, then method)::

        {"route": "/", "method": "POST", "requests": 130, "errors": 2,
         "variables": {"response_time": {"count": 130, "mean": 0.0012,
                                         "p50": 0.0011, "p95": 0.0019, "p99": 0.0023}}}

    ``requests`` counts the request IDs with at least one row. ``errors``
    counts those whose ``status_code`` is 500 or more; it is None when the
    table has no ``status_code`` column (a file written before status codes
    were recorded), as the errors are then unknown. ``variables`` holds each
    numeric variable (values recorded as an int or a float; bools, text and
    NaN or infinite floats are left out). Rows of other OTel metrics are not
    requests and are left out; rows flask-chest wrote have no route nor
    method (None) and no time (left out with ``since_ns``).

    Args:
        db: the SQLite file (opened read-only).
        since_ns: only rows of requests at or after this time (ns since the epoch).
        route: only this route (the URL rule, such as ``/items/<int:item_id>``).
        table: the chest's table.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a SQLite database, no such table, a bad table name.
    """
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"table must be an SQL identifier, got {table!r}")
    connection = _connect(db)
    try:
        columns = {row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')}
        if not columns:
            raise ValueError(f"{db} has no table {table!r}")
        where = ["request_id IS NOT NULL"]
        params: list[Any] = []
        if since_ns is not None:
            where.append("time_unix_nano >= ?")
            params.append(since_ns)
        if route is not None:
            where.append("route = ?")
            params.append(route)

        def column(name: str) -> str:
            return name if name in columns else f"NULL AS {name}"

        source = (
            f"(SELECT request_id, {column('route')}, {column('method')}, name, "
            f"{column('field')}, value, {column('value_type')}, {column('time_unix_nano')}, "
            f'{column("status_code")} FROM "{table}")'
        )
        condition = " AND ".join(where)
        has_status = "status_code" in columns
        groups: dict[tuple[Any, Any], dict[str, Any]] = {}
        for route_, method, requests, errors in connection.execute(
            f"SELECT route, method, count(DISTINCT request_id), "
            f"count(DISTINCT CASE WHEN status_code >= 500 THEN request_id END) "
            f"FROM {source} WHERE {condition} GROUP BY route, method",
            params,
        ):
            groups[route_, method] = {
                "route": route_,
                "method": method,
                "requests": requests,
                "errors": errors if has_status else None,
                "variables": {},
            }
        rows = connection.execute(
            f"SELECT route, method, name, value, value_type FROM {source} "
            f"WHERE {condition} AND (field = 'value' OR field IS NULL) "
            "AND (value_type IN ('int', 'float') "
            "OR (value_type IS NULL AND typeof(value) IN ('integer', 'real'))) "
            "ORDER BY route, method, name, value",
            params,
        )
        for (route_, method, name), values in _runs(rows):
            finite = [value for value in values if math.isfinite(value)]
            if finite and (route_, method) in groups:
                groups[route_, method]["variables"][name] = _stats(finite)
    finally:
        connection.close()
    return [
        groups[key]
        for key in sorted(groups, key=lambda key: (key[0] is None, key[0] or "", key[1] or ""))
    ]


def _runs(
    rows: Iterable[tuple[Any, Any, str, Any, str | None]],
) -> Iterable[tuple[tuple[Any, Any, str], list[float]]]:
    """The values of each (route, method, variable), in the rows' order."""
    key: tuple[Any, Any, str] | None = None
    values: list[float] = []
    for route, method, name, value, value_type in rows:
        if (route, method, name) != key:
            if key is not None:
                yield key, values
            key, values = (route, method, name), []
        values.append(int(value) if value_type == "int" else value)
    if key is not None:
        yield key, values


def _stats(ordered: list[float]) -> dict[str, Any]:
    stats: dict[str, Any] = {"count": len(ordered), "mean": math.fsum(ordered) / len(ordered)}
    for p in PERCENTILES:
        stats[f"p{p}"] = percentile(ordered, p)
    return stats


def _number(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def format_table(report: Sequence[dict[str, Any]]) -> str:
    """The report as a text table: one line per route, method and variable."""
    header: tuple[str, ...] = ("route", "method", "requests", "errors", "variable", "count", "mean")
    header += tuple(f"p{p}" for p in PERCENTILES)
    lines: list[tuple[str, ...]] = [header]
    for group in report:
        first = (
            str(group["route"]),
            str(group["method"]),
            str(group["requests"]),
            _number(group["errors"]),
        )
        variables = group["variables"] or {"": None}
        for name, stats in variables.items():
            numbers: tuple[str, ...] = ("",) * (2 + len(PERCENTILES))
            if stats is not None:
                numbers = (str(stats["count"]), _number(stats["mean"]))
                numbers += tuple(_number(stats[f"p{p}"]) for p in PERCENTILES)
            lines.append((*first, name, *numbers))
            first = ("", "", "", "")
    widths = [max(len(line[index]) for line in lines) for index in range(len(header))]
    numeric = {2, 3, *range(5, len(header))}
    text = [
        "  ".join(
            cell.rjust(width) if index in numeric else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    text.insert(1, "-" * len(text[0]))
    if not report:
        text.append("(no requests)")
    if any(group["errors"] is None for group in report):
        text.append("errors ?: this table has no status_code column, so errors are unknown")
    return "\n".join(text) + "\n"
