"""Shared fixtures: SQLite chests on temporary files and the sample app."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, request
from hypothesis import settings

from flask_chest_otel import FlaskChestSQLite, flask_chest
from flask_chest_otel._chest import Chest
from flask_chest_otel.http_payload import HTTPPayloadMetricExporter

from .http_sink import HTTPSink
from .servers import InfluxDB1, TinyProxy, VictoriaMetrics, influxdb1, tinyproxy, victoria_metrics

# CI explores the same examples on every run and never replays a failure
# saved by an earlier run: its result depends on the commit alone. Locally
# (no CI variable) Hypothesis picks new examples each run.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

SAMPLE_TRACKED = {"GET": ["transaction"], "POST": ["transaction", "response_time"]}


def read_rows(
    db_path: Path | str, where: str = "", params: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    """Every row of the chest table, as dicts."""
    connection = sqlite3.connect(db_path)
    connection.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM flask_chest " + where + " ORDER BY id"
        return [dict(row) for row in connection.execute(query, params)]
    finally:
        connection.close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Polls ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: (certificate path, key path)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.fixture
def make_sqlite_chest(tmp_path: Path) -> Iterator[Callable[..., FlaskChestSQLite]]:
    """Builds SQLite chests on files under tmp_path; shuts them all down after."""
    chests: list[Chest] = []

    def make(name: str = "SQLite", **options: Any) -> FlaskChestSQLite:
        options.setdefault("db_uri", str(tmp_path / f"{name}.sqlite3"))
        chest = FlaskChestSQLite(name=name, **options)
        chests.append(chest)
        return chest

    yield make
    for chest in chests:
        chest.shutdown(timeout_millis=5_000)


@pytest.fixture
def sqlite_chest(make_sqlite_chest: Callable[..., FlaskChestSQLite]) -> FlaskChestSQLite:
    return make_sqlite_chest()


def sample_app(chests: list[Any], **decorator_options: Any) -> Flask:
    """The sample usage of flask-chest's docs, with only the import changed."""
    app = Flask(__name__)
    decorator_options.setdefault("tracked_vars", SAMPLE_TRACKED)

    @app.route("/", methods=["GET", "POST"])
    @flask_chest(chests=chests, **decorator_options)
    def index() -> str:
        g.start = time.time()
        if request.method == "POST":
            g.transaction = 1
            g.response_time = time.time() - g.start
            return "Hello, World!"
        g.transaction = 1
        g.response_time = time.time() - g.start
        return "Hello, World!"

    return app


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A real VictoriaMetrics for the module (InfluxDB v2 write API)."""
    with victoria_metrics(tmp_path_factory.mktemp("vm")) as server:
        yield server


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """A real InfluxDB 1.6 for the module (the real line-protocol parser)."""
    with influxdb1(tmp_path_factory.mktemp("influxd")) as server:
        yield server


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    """A real forward proxy (tinyproxy) for the session, Via ``proxy``,
    reaching servers from 127.0.0.2."""
    with tinyproxy(tmp_path_factory.mktemp("proxy"), "proxy", "127.0.0.2") as server:
        yield server


@pytest.fixture(scope="session")
def other_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    """A second tinyproxy, Via ``other-proxy``, reaching servers from 127.0.0.3."""
    with tinyproxy(tmp_path_factory.mktemp("other-proxy"), "other-proxy", "127.0.0.3") as server:
        yield server


@pytest.fixture
def chests() -> Iterator[list[Chest]]:
    """Chests a test makes; each is shut down after it."""
    made: list[Chest] = []
    yield made
    for chest in made:
        chest.shutdown(timeout_millis=2_000)


def app_recording(chest: Chest, requests: list[tuple[str, dict[str, Any]]]) -> None:
    """Serves one GET per (request ID, {g variable: value}) through @flask_chest."""
    names = list(dict.fromkeys(name for _, variables in requests for name in variables))
    ids = iter([request_id for request_id, _ in requests])
    app = Flask(__name__)
    current: dict[str, Any] = {}

    @app.route("/")
    @flask_chest(
        chests=[chest], tracked_vars={"GET": names}, request_id_generator=lambda: next(ids)
    )
    def index() -> str:
        for name, value in current.items():
            setattr(g, name, value)
        return "ok"

    client = app.test_client()
    for _, variables in requests:
        current.clear()
        current.update(variables)
        assert client.get("/").status_code == 200


@pytest.fixture
def sink() -> Iterator[HTTPSink]:
    """A real HTTP server on a free loopback port, recording what it gets."""
    with HTTPSink() as server:
        yield server


@pytest.fixture
def http_exporters(sink: HTTPSink) -> Iterator[Callable[..., HTTPPayloadMetricExporter]]:
    """Builds HTTP payload exporters posting to ``sink`` (path ``/ingest``,
    fast retries, 5 s timeout, keyword defaults overridable); shuts them down
    after the test."""
    exporters: list[HTTPPayloadMetricExporter] = []

    def make(**options: Any) -> HTTPPayloadMetricExporter:
        options.setdefault("url", sink.url + "/ingest")
        options.setdefault("retry_initial", 0.05)
        options.setdefault("timeout", 5.0)
        exporter = HTTPPayloadMetricExporter(**options)
        exporters.append(exporter)
        return exporter

    yield make
    for exporter in exporters:
        exporter.shutdown(timeout_millis=2_000)


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """1,100 descriptors held open, so that the writer's sockets get numbers
    above 1024 (where ``select.select`` refuses them)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        if hard != resource.RLIM_INFINITY and hard < 2048:
            pytest.skip(f"the descriptor limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1_100)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def interruptible_by_ctrl_c() -> None:
    """Called first in a child a test stops with SIGINT: Ctrl-C raises
    KeyboardInterrupt there, as in a terminal, even when the test run itself
    ignores SIGINT (a run started in the background by a shell without job
    control): a child inherits that, and Python leaves an ignored SIGINT
    ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
