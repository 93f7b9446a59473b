"""Servers the tests run against: real VictoriaMetrics and InfluxDB 1.6
processes on free loopback ports with throw-away data directories, a real
forward proxy (tinyproxy), and a strict test double of the InfluxDB 2.x write
API for the status codes those real servers cannot produce.

A missing server binary raises ``MissingServer`` (a test error, never a skip):
CI must fail when a real-server test cannot run.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class MissingServer(RuntimeError):
    """A server binary the tests need is not installed."""


def require_binary(name: str, package: str) -> str:
    """The path of ``name``, or MissingServer saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise MissingServer(
            f"{name} is not installed: run `apt-get install -y {package}` (as root). "
            "These tests must not be skipped."
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body) for every status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_until(
    answers: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, what: str, where: str
) -> None:
    """Polls ``answers`` (an OSError counts as no) for 30 s while ``process`` runs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
        try:
            if answers():
                return
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{what} did not answer {where} within 30 s: {log.read_text()[-2000:]}")


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    _wait_until(lambda: http("GET", url, timeout=1)[0] < 300, process, log, what, url)


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- VictoriaMetrics ------------------------------------------------------------


_INFINITE_SAMPLE = re.compile(r"(?<=[\[,])\+?(-?)Inf(?=[,\]])")


class VictoriaMetrics:
    """A running VictoriaMetrics (it accepts the InfluxDB 2.x write API at
    ``/api/v2/write`` and names a series ``<measurement>_<field>``)."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process

    def flush(self) -> None:
        """Makes every accepted sample searchable now (VictoriaMetrics
        otherwise buffers recent rows for about a second)."""
        status, body = http("GET", f"{self.url}/internal/force_flush")
        assert status == 200, body

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching the selector, as VictoriaMetrics' JSON lines
        ({"metric": labels, "values": [...], "timestamps": [ms...]})."""
        self.flush()
        # An explicit end: the default (now) hides samples of the last second.
        query = urllib.parse.urlencode({"match[]": match, "start": "0", "end": "4102444800"})
        status, body = http("GET", f"{self.url}/api/v1/export?{query}")
        assert status == 200, body
        # Infinite samples come as bare +Inf/-Inf, which JSON does not have.
        return [
            json.loads(_INFINITE_SAMPLE.sub(r"\1Infinity", line))
            for line in body.decode().splitlines()
            if line
        ]

    def delete_all(self) -> None:
        query = urllib.parse.urlencode({"match[]": '{__name__=~".+"}'})
        status, body = http("POST", f"{self.url}/api/v1/admin/tsdb/delete_series?{query}")
        assert status == 204, body


def victoria_metrics_command(binary: str, data_dir: Path, port: int, *flags: str) -> list[str]:
    """The command line of a test VictoriaMetrics on a loopback port."""
    return [
        binary,
        f"-storageDataPath={data_dir / 'data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",
        # Recent samples are hidden from queries for 30 s by default.
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-loggerLevel=ERROR",
        *flags,
    ]


@contextmanager
def victoria_metrics(data_dir: Path) -> Iterator[VictoriaMetrics]:
    """Starts VictoriaMetrics on a free loopback port, storing under ``data_dir``."""
    binary = require_binary("victoria-metrics", "victoria-metrics")
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "victoria-metrics.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            victoria_metrics_command(binary, data_dir, port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{url}/health", process, log, "victoria-metrics")
        yield VictoriaMetrics(url, process)
    finally:
        stop_process(process)


# -- InfluxDB 1.6 ---------------------------------------------------------------

_INFLUXD_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  trace-logging-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {auth}
  log-enabled = false
  flux-enabled = false

[logging]
  level = "error"

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false
"""


class InfluxDB1:
    """A running InfluxDB 1.6: the real line-protocol parser, v1 API only."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], auth: tuple[str, str] | None):
        self.url = url
        self.process = process
        self.auth = auth

    def _headers(self) -> dict[str, str]:
        if self.auth is None:
            return {}
        token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def query(self, q: str, db: str | None = None) -> dict[str, Any]:
        """Runs InfluxQL (POST /query, epoch=ns) and returns the decoded JSON."""
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        body = urllib.parse.urlencode(params).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self._headers()}
        status, answer = http("POST", f"{self.url}/query", body, headers)
        assert status == 200, answer
        result: dict[str, Any] = json.loads(answer)
        for statement in result.get("results", []):
            assert "error" not in statement, statement
        return result

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def write(self, db: str, body: bytes) -> tuple[int, bytes]:
        return http("POST", f"{self.url}/write?db={db}&precision=ns", body, self._headers())

    def measurements(self, db: str) -> list[str]:
        """The measurement names of ``db``, as InfluxDB stores them."""
        result = self.query("SHOW MEASUREMENTS", db)
        series = result["results"][0].get("series", [])
        return [row[0] for row in series[0]["values"]] if series else []

    def series(self, db: str) -> list[dict[str, Any]]:
        """Every point of ``db``: one dict per series with name, tags, columns, values.

        One query per measurement: a single ``SELECT * FROM /.*/`` omits a
        measurement whose field key has another type in a second measurement
        (InfluxDB 1.6 merges the columns of one statement)."""
        found: list[dict[str, Any]] = []
        for name in self.measurements(db):
            quoted = name.replace("\\", "\\\\").replace('"', '\\"')
            result = self.query(f'SELECT * FROM "{quoted}" GROUP BY *', db)
            found.extend(result["results"][0].get("series", []))
        return found


@contextmanager
def influxdb1(root: Path, auth: tuple[str, str] | None = None) -> Iterator[InfluxDB1]:
    """Starts InfluxDB 1.6 on free loopback ports, storing under ``root``.
    With ``auth`` (user, password), authentication is on and that admin exists."""
    binary = require_binary("influxd", "influxdb")
    root.mkdir(parents=True, exist_ok=True)
    http_port, rpc_port = free_port(), free_port()
    config = root / "influxdb.conf"
    config.write_text(
        _INFLUXD_CONFIG.format(
            root=root,
            http_port=http_port,
            rpc_port=rpc_port,
            auth="true" if auth else "false",
        )
    )
    log = root / "influxd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_until_up(f"{url}/ping", process, log, "influxd")
        server = InfluxDB1(url, process, auth)
        if auth is not None:
            # The first admin may be created without credentials.
            user, password = auth
            body = urllib.parse.urlencode(
                {"q": f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"}
            ).encode()
            status, answer = http("POST", f"{url}/query", body)
            assert status == 200, answer
        yield server
    finally:
        stop_process(process)


# -- tinyproxy (a forward HTTP proxy) ------------------------------------------

_TINYPROXY_CONFIG = """\
Port {port}
Listen 127.0.0.1
Bind {outgoing}
Timeout 10
MaxClients 100
Allow 127.0.0.1
ViaProxyName "{name}"
LogFile "{log}"
LogLevel Connect
"""

#: tinyproxy's log line for each request it takes (CONNECT included).
_TINYPROXY_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


class TinyProxy:
    """A running tinyproxy. What it forwards carries ``Via: 1.1 <name>
    (tinyproxy/...)`` and reaches the server from ``outgoing`` (a loopback
    address of its own), a tunnel's (CONNECT's) POSTs too: a server tells a
    POST it got through this proxy by the peer address."""

    def __init__(self, url: str, name: str, outgoing: str, log: Path) -> None:
        self.url = url
        self.name = name
        self.outgoing = outgoing
        self.log = log

    def requests_for(self, port: int) -> list[tuple[str, str]]:
        """(method, target) of each request the proxy took for 127.0.0.1:``port``."""
        found = _TINYPROXY_REQUEST.findall(self.log.read_text(errors="replace"))
        host = f"127.0.0.1:{port}"
        return [
            (method, target)
            for method, target in found
            if target == host or urllib.parse.urlsplit(target).netloc == host
        ]


def _accepts(port: int) -> bool:
    """Whether a loopback connection to ``port`` is taken (else an OSError)."""
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


@contextmanager
def tinyproxy(root: Path, name: str, outgoing: str) -> Iterator[TinyProxy]:
    """Starts tinyproxy on a free loopback port (config and log under
    ``root``), taking clients from 127.0.0.1 only and connecting to servers
    from the loopback address ``outgoing`` (127.0.0.2, ...), as Via ``name``."""
    binary = require_binary("tinyproxy", "tinyproxy")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log, config = root / "tinyproxy.log", root / "tinyproxy.conf"
    log.touch()
    config.write_text(_TINYPROXY_CONFIG.format(port=port, outgoing=outgoing, name=name, log=log))
    with (root / "tinyproxy.out").open("wb") as out:
        # -d: in the foreground, so that stop_process ends it.
        process = subprocess.Popen(
            [binary, "-d", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_until(lambda: _accepts(port), process, log, "tinyproxy", f"on port {port}")
        yield TinyProxy(f"http://127.0.0.1:{port}", name, outgoing, log)
    finally:
        stop_process(process)


# -- InfluxDB 2.x write API test double -----------------------------------------


@dataclass
class Scripted:
    """A response the double gives instead of processing a write."""

    status: int
    body: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    """One write request the double received (body decompressed)."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


_FIELD_RE = re.compile(
    r'^(?:-?\d+i|-?\d+u|[tT]|[fF]|true|True|TRUE|false|False|FALSE|"(?:[^"\\]|\\.)*"'
    r"|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$",
    re.DOTALL,
)


def _split_unescaped(text: str, separator: str, quotes: bool = False) -> list[str]:
    parts, current, i, quoted = [], [], 0, False
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if quotes and char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _field_type(value: str) -> str:
    if value.startswith('"'):
        return "string"
    if value.endswith("i"):
        return "integer"
    if value.endswith("u"):
        return "unsigned"
    if value[0] in "tTfF":
        return "boolean"
    return "float"


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, str], int | None]:
    """Splits one line of line protocol (escapes kept); ValueError says why a
    line is malformed, in the words InfluxDB uses."""
    sections = _split_unescaped(line, " ", quotes=True)
    if len(sections) not in (2, 3):
        raise ValueError("invalid field format" if len(sections) < 2 else "bad timestamp")
    series, field_text = sections[0], sections[1]
    timestamp: int | None = None
    if len(sections) == 3:
        if not re.fullmatch(r"-?\d+", sections[2]):
            raise ValueError("bad timestamp")
        timestamp = int(sections[2])
    measurement, *tag_texts = _split_unescaped(series, ",")
    if not measurement:
        raise ValueError("missing measurement")
    tags: dict[str, str] = {}
    for text in tag_texts:
        pair = _split_unescaped(text, "=")
        if len(pair) != 2 or not pair[0] or not pair[1]:
            raise ValueError("missing tag key" if not pair[0] else "missing tag value")
        tags[pair[0]] = pair[1]
    fields: dict[str, str] = {}
    for text in _split_unescaped(field_text, ",", quotes=True):
        pair = _split_unescaped(text, "=", quotes=True)
        if len(pair) != 2 or not pair[0]:
            raise ValueError("missing field key")
        if not pair[1] or not _FIELD_RE.match(pair[1]):
            raise ValueError("invalid field value")
        fields[pair[0]] = pair[1]
    return measurement, tags, fields, timestamp


class _Handler(BaseHTTPRequestHandler):
    server: InfluxDB2WriteDouble._Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, str] | None, headers: dict[str, str]) -> None:
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        double = self.server.double
        status, body, headers = double._handle(self)
        self._answer(status, body, headers)

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path == "/health":
            self._answer(200, {"status": "pass"}, {})
        else:
            self._answer(404, {"code": "not found", "message": "path not found"}, {})


class InfluxDB2WriteDouble:
    """A test double of the InfluxDB 2.x write API, ``POST /api/v2/write``,
    following its documented behaviour (InfluxDB OSS 2.x API reference,
    "Write data"): ``Authorization: Token <token>`` else 401; ``org`` and
    ``bucket`` must name an existing org and bucket else 404; ``precision``
    one of ns/us/ms/s else 400; a body (after ``Content-Encoding: gzip``) over
    ``max_body_bytes`` is 413; any malformed line rejects the whole request
    with 400 "unable to parse '<line>': <reason>"; a field whose type differs
    from the type stored for that measurement and field is a 422 partial write
    ("field type conflict", the other points are kept); otherwise 204.
    Error bodies are the documented JSON ``{"code": ..., "message": ...}``.

    It is not InfluxDB: it stores parsed lines in memory (``points``), keeps
    every request (``requests``) and answers ``script``-ed responses first
    (429/503 with ``Retry-After``, redirects...), so tests can make it fail on
    demand. Real-parser checks are done against InfluxDB 1.6 and VictoriaMetrics.
    """

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        double: InfluxDB2WriteDouble

    def __init__(
        self,
        token: str = "test-token",
        org: str = "my-org",
        bucket: str = "my-bucket",
        max_body_bytes: int = 50_000_000,
    ) -> None:
        self.token = token
        self.org = org
        self.bucket = bucket
        self.max_body_bytes = max_body_bytes
        self.script: deque[Scripted] = deque()
        self.requests: list[Received] = []
        self.points: list[tuple[str, dict[str, str], dict[str, str], int | None]] = []
        self.field_types: dict[tuple[str, str], str] = {}
        #: A stricter rule than line protocol's, set by a test to stand for a
        #: line some server refuses: it returns why the line is refused, or
        #: None. Such a line fails the whole request with 400, as any
        #: malformed line does.
        self.refuse_line: Callable[[str], str | None] | None = None
        self._lock = threading.Lock()
        self._server = self._Server(("127.0.0.1", 0), _Handler)
        self._server.double = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> InfluxDB2WriteDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def lines(self) -> list[str]:
        """Every line of every received request, in order."""
        return [
            line
            for request in self.requests
            for line in request.body.decode().split("\n")
            if line and not line.startswith("#")
        ]

    def _handle(self, handler: _Handler) -> tuple[int, dict[str, str] | None, dict[str, str]]:
        split = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(split.query))
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        headers = {key: value for key, value in handler.headers.items()}
        try:
            body = gzip.decompress(raw) if headers.get("Content-Encoding") == "gzip" else raw
        except OSError:
            return 400, {"code": "invalid", "message": "gzip: invalid header"}, {}
        with self._lock:
            self.requests.append(Received(split.path, query, headers, body))
            if self.script:
                scripted = self.script.popleft()
                return scripted.status, scripted.body, scripted.headers
        if split.path != "/api/v2/write":
            return 404, {"code": "not found", "message": "path not found"}, {}
        if headers.get("Authorization") != f"Token {self.token}":
            return 401, {"code": "unauthorized", "message": "unauthorized access"}, {}
        if query.get("org") != self.org:
            return (
                404,
                {
                    "code": "not found",
                    "message": f'organization name "{query.get("org")}" not found',
                },
                {},
            )
        if query.get("bucket") != self.bucket:
            return (
                404,
                {"code": "not found", "message": f'bucket "{query.get("bucket")}" not found'},
                {},
            )
        if query.get("precision", "ns") not in ("ns", "us", "ms", "s"):
            return 400, {"code": "invalid", "message": "invalid precision"}, {}
        if len(body) > self.max_body_bytes:
            return (
                413,
                {
                    "code": "request too large",
                    "message": "unable to read data: points batch is too large",
                },
                {},
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return 400, {"code": "invalid", "message": "invalid UTF-8 in body"}, {}
        parsed = []
        for line in text.split("\n"):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                reason = self.refuse_line(stripped) if self.refuse_line else None
                if reason is not None:
                    raise ValueError(reason)
                parsed.append(parse_line(stripped))
            except ValueError as error:
                return (
                    400,
                    {"code": "invalid", "message": f"unable to parse '{stripped}': {error}"},
                    {},
                )
        conflicts = []
        with self._lock:
            for point in parsed:
                measurement, _, fields, _ = point
                conflict = None
                for key, value in fields.items():
                    kind = _field_type(value)
                    known = self.field_types.setdefault((measurement, key), kind)
                    if known != kind:
                        conflict = (
                            f'field type conflict: input field "{key}" on measurement '
                            f'"{measurement}" is type {kind}, already exists as type {known}'
                        )
                if conflict:
                    conflicts.append(conflict)
                else:
                    self.points.append(point)
        if conflicts:
            message = (
                "failure writing points to database: partial write: "
                f"{conflicts[0]} dropped={len(conflicts)}"
            )
            return 422, {"code": "unprocessable entity", "message": message}, {}
        return 204, None, {}
