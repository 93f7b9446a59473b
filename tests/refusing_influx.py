"""A scripted line-protocol server that refuses some lines of a write the way
each real server does: a test double, not InfluxDB.

``RefusingInflux(mode, bad=...)`` is a real HTTP server on a free loopback
port, in a thread. It takes ``POST /api/v2/write`` (InfluxDB 2.x, 3.x,
Cloud) and ``POST /write`` (InfluxDB 1.x), gzip or not, and never checks
credentials. The judge ``bad(line) -> bool`` names the lines it refuses (by
default a tag ``poison=1``, see ``poisoned``); a line that does not parse
(``tests.servers.parse_line``) is refused too. A write holding no refused
line is stored and answered 204; otherwise ``mode`` says what the server
answers and whether it stores the good lines, as each real server does:

``bare400``
    400 with an empty body, nothing stored: a proxy in front of InfluxDB,
    Telegraf's ``influxdb_listener``/``http_listener_v2``, other
    line-protocol servers.
``other_words``
    400 ``{"code": "invalid", "line": <first>, "message": "failed to parse
    line protocol: errors encountered on line(s):\\nerror parsing line 7
    (1-based): <reason>\\nerror parsing line 12 (1-based): ..."}``, at most
    100 lines named, nothing stored: InfluxDB 3 Cloud Serverless, Cloud
    Dedicated and Clustered (IOx) on ``/api/v2/write``, as their docs and
    end-to-end tests show; IOx writes a batch all or nothing.
``v2_unable``
    400 ``{"code": "invalid", "message": "unable to parse '<first bad
    line>': <reason>"}``, nothing stored: InfluxDB 2.x as its docs describe
    it ("the response body contains the first malformed line. All request
    data was rejected and not written").
``v2_unable_all``
    The same, naming every bad line, joined by newlines, nothing stored:
    what InfluxDB OSS 2.x's source does (``http/points`` parses with
    ``models.ParsePointsWithPrecision``, which joins one ``unable to parse``
    per refused line with ``\\n``, and writes nothing when it fails).
``v1_partial``
    400 ``{"error": "partial write: unable to parse '<line>': <reason>\\n
    unable to parse '<line>': <reason> dropped=0"}``, the good lines stored;
    when no line of the write is good, ``{"error": "unable to parse ..."}``
    without ``partial write``. InfluxDB 1.x; the text is what influxd
    1.6.7 answered here (2026-12) on ``/write``; each body is one line,
    wrapped here at ``|``. One bad line among 3::

        {"error":"partial write: unable to parse 'a,r=2 v=bad= 1796275482791388527':|
         invalid boolean dropped=0"}

    2 among 5 (every bad line named; ``dropped=0`` counts none of them)::

        {"error":"partial write: unable to parse 'b,r=2 v=bad= 1796275482791388527':|
         invalid boolean\\nunable to parse 'b,r=4 v= 1796275482791388527': missing|
         field value dropped=0"}

    a write of one bad line only::

        {"error":"unable to parse 'c,r=2 v=bad= 1796275482791388527': invalid boolean"}

    The good lines of the first two were stored.
``v3_partial``
    400 ``{"error": "partial write of line protocol occurred", "data":
    [{"original_line", "line_number" (1-based), "error_message"}, ...]}``,
    one entry per refused line, the good lines stored: InfluxDB 3 Core and
    Enterprise (``accept_partial=true``, their default), as in their
    validator's source and docs.
``request_level``
    Every write refused, whatever it holds, with 400 ``{"code": "invalid",
    "message": "unable to parse '<first line>': bad timestamp"}``, nothing
    stored: a refusal about the request itself (a precision its timestamps
    do not match, a rule of a proxy) in ``v2_unable``'s words, so that a
    client that drops the line named and sends the rest is refused again
    for the next line, n times. ``bad`` is not consulted.
``v2_conflict``
    Field types are kept per (measurement, field), as InfluxDB keeps them per
    shard; a line whose field has another type than the one stored (or than
    an earlier line of the same write) is refused with 422 ``{"code":
    "unprocessable entity", "message": "failure writing points to database:
    partial write: field type conflict: input field \\"f\\" on measurement
    \\"m\\" is type float, already exists as type integer dropped=N"}``
    naming the first conflict, the other lines stored: InfluxDB OSS 2.x
    (``http/write_handler.go`` wraps ``tsdb.PartialWriteError``; its docs:
    "Data that has not been rejected is ingested"). ``bad`` is not consulted;
    a line that does not parse gets ``v2_unable_all``'s answer.

What it keeps, for tests to assert: ``writes`` (every POST to a write path),
``exchanges`` (status, lines sent, lines stored, per write), and the stored
points, de-duplicated as InfluxDB does (one point per measurement, tag set
and timestamp; a later write of the same point overwrites its fields).
"""

from __future__ import annotations

import gzip
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

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

from .loopback import LoopbackServer, QuietHandler, QuietServer
from .servers import _field_type, parse_line

Mode = Literal[
    "bare400",
    "other_words",
    "v2_unable",
    "v2_unable_all",
    "v1_partial",
    "v3_partial",
    "request_level",
    "v2_conflict",
]
MODES: tuple[Mode, ...] = get_args(Mode)
#: The modes that refuse the lines ``bad`` names (the others judge otherwise).
LINE_MODES: tuple[Mode, ...] = tuple(m for m in MODES if m not in ("request_level", "v2_conflict"))
#: IOx names at most this many refused lines in one answer.
MAX_NAMED_LINES = 100

#: A parsed line: measurement, tags, fields (escapes kept), timestamp.
Parsed = tuple[str, dict[str, str], dict[str, str], int | None]
#: (measurement, sorted (tag, value) pairs, timestamp): one stored point.
PointKey = tuple[str, tuple[tuple[str, str], ...], int | None]


def poisoned(line: str) -> bool:
    """The default judge: the line carries the tag ``poison=1``."""
    try:
        return parse_line(line)[1].get("poison") == "1"
    except ValueError:
        return False


@dataclass(frozen=True)
class Exchange:
    """One write: what was answered, how many lines came, how many were stored."""

    status: int
    lines: int
    stored: int


class _Handler(QuietHandler):
    server: _Server

    def _reply(self, status: int, body: Any) -> None:
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        if status != 204:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urllib.parse.urlsplit(self.path).path
        if path not in ("/api/v2/write", "/write"):
            self._reply(404, {"code": "not found", "message": "path not found"})
            return
        try:
            body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
            text = body.decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            self._reply(400, {"code": "invalid", "message": f"unable to read data: {error}"})
            return
        self._reply(*self.server.double._write(text))

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if urllib.parse.urlsplit(self.path).path in ("/health", "/ping"):
            self._reply(200, {"status": "pass"})
        else:
            self._reply(404, {"code": "not found", "message": "path not found"})


class _Server(QuietServer):
    double: RefusingInflux


class RefusingInflux(LoopbackServer):
    """The scripted server (see the module's docstring); a context manager.

    Args:
        mode: how a write holding refused lines is answered (``MODES``).
        bad: the judge of the lines refused (default ``poisoned``).
        reason: the reason given for a line ``bad`` refuses.
    """

    def __init__(
        self,
        mode: Mode,
        bad: Callable[[str], bool] = poisoned,
        reason: str = "invalid field format",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode: Mode = mode
        self.bad = bad
        self.reason = reason
        self.writes = 0
        self.exchanges: list[Exchange] = []
        self.points: dict[PointKey, dict[str, str]] = {}
        self.field_types: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.double = self

    # -- what a test reads ----------------------------------------------------

    def tag_values(self, tag: str) -> list[str]:
        """The value of ``tag`` of every stored point (one per point)."""
        with self._lock:
            return [dict(tags)[tag] for _, tags, _ in self.points if tag in dict(tags)]

    def stored_lines(self) -> Iterator[tuple[PointKey, dict[str, str]]]:
        with self._lock:
            yield from list(self.points.items())

    # -- answering a write ------------------------------------------------------

    def _write(self, text: str) -> tuple[int, Any]:
        numbered = [
            (number, line.strip())
            for number, line in enumerate(text.split("\n"), start=1)
            if line.strip() and not line.strip().startswith("#")
        ]
        with self._lock:
            self.writes += 1
            status, body, stored = self._answer(numbered)
            self.exchanges.append(Exchange(status, len(numbered), stored))
        return status, body

    def _answer(self, numbered: list[tuple[int, str]]) -> tuple[int, Any, int]:
        """(status, JSON body or None, lines stored); the caller holds the lock."""
        if self.mode == "request_level":
            first = numbered[0][1] if numbered else ""
            message = f"unable to parse '{first}': bad timestamp"
            return 400, {"code": "invalid", "message": message}, 0
        good: list[Parsed] = []
        refused: list[tuple[int, str, str]] = []
        for number, line in numbered:
            try:
                parsed = parse_line(line)
            except ValueError as error:
                refused.append((number, line, str(error)))
                continue
            if self.mode != "v2_conflict" and self.bad(line):
                refused.append((number, line, self.reason))
            else:
                good.append(parsed)
        unable = [f"unable to parse '{line}': {reason}" for _, line, reason in refused]
        if self.mode == "v2_conflict":
            if refused:
                return 400, {"code": "invalid", "message": "\n".join(unable)}, 0
            return self._store_typed(good)
        if not refused:
            return 204, None, self._store(good)
        if self.mode == "bare400":
            return 400, None, 0
        if self.mode == "other_words":
            named = refused[:MAX_NAMED_LINES]
            message = "failed to parse line protocol: errors encountered on line(s):" + "".join(
                f"\nerror parsing line {number} (1-based): {reason}" for number, _, reason in named
            )
            return 400, {"code": "invalid", "line": named[0][0], "message": message}, 0
        if self.mode == "v2_unable":
            return 400, {"code": "invalid", "message": unable[0]}, 0
        if self.mode == "v2_unable_all":
            return 400, {"code": "invalid", "message": "\n".join(unable)}, 0
        if self.mode == "v1_partial":
            if not good:
                return 400, {"error": "\n".join(unable)}, 0
            stored = self._store(good)
            return 400, {"error": f"partial write: {chr(10).join(unable)} dropped=0"}, stored
        # v3_partial
        stored = self._store(good)
        data = [
            {"original_line": line, "line_number": number, "error_message": reason}
            for number, line, reason in refused
        ]
        return 400, {"error": "partial write of line protocol occurred", "data": data}, stored

    def _store(self, points: Sequence[Parsed]) -> int:
        for measurement, tags, fields, timestamp in points:
            key = (measurement, tuple(sorted(tags.items())), timestamp)
            self.points.setdefault(key, {}).update(fields)
        return len(points)

    def _store_typed(self, points: Sequence[Parsed]) -> tuple[int, Any, int]:
        kept, conflicts = [], []
        for point in points:
            measurement, _, fields, _ = point
            conflict = None
            for key, value in fields.items():
                kind = _field_type(value)
                known = self.field_types.get((measurement, key))
                if known is not None and known != kind and conflict is None:
                    conflict = (
                        f'field type conflict: input field "{key}" on measurement '
                        f'"{measurement}" is type {kind}, already exists as type {known}'
                    )
            if conflict is not None:
                conflicts.append(conflict)
                continue
            for key, value in fields.items():
                self.field_types.setdefault((measurement, key), _field_type(value))
            kept.append(point)
        stored = self._store(kept)
        if not conflicts:
            return 204, None, stored
        message = (
            "failure writing points to database: partial write: "
            f"{conflicts[0]} dropped={len(conflicts)}"
        )
        return 422, {"code": "unprocessable entity", "message": message}, stored


# -- the data the tests and the benchmark send ------------------------------------

#: The time of the first probe point (ns); point i is at BASE_TIME + i.
BASE_TIME = 1_700_000_000_000_000_000


def probe_data(
    n: int,
    bad: Sequence[int],
    *,
    name: str = "refusal_probe",
    good_value: int | float = 1.5,
    bad_value: int | float | None = None,
) -> MetricsData:
    """One OTel Gauge of ``n`` points, request IDs ``r00000``... as a point
    attribute (a tag in line protocol), those at the indices ``bad`` also
    tagged ``poison=1``; ``bad_value`` gives those another value (a float
    among ints for ``v2_conflict``)."""
    marked = set(bad)
    points = []
    for i in range(n):
        attributes = {"request_id": request_id(i)}
        value: int | float = good_value
        if i in marked:
            attributes["poison"] = "1"
            if bad_value is not None:
                value = bad_value
        points.append(NumberDataPoint(attributes, 0, BASE_TIME + i, value))
    metric = Metric(name, "", "", Gauge(points))
    scope = ScopeMetrics(InstrumentationScope("refusals"), [metric], "")
    return MetricsData([ResourceMetrics(Resource({}), [scope], "")])


def request_id(i: int) -> str:
    return f"r{i:05}"


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, each in the middle of its
    share (the worst case of a bisection)."""
    step = n / k
    return [int(step * j + step / 2) for j in range(k)]
