"""The standard OpenTelemetry environment (issue 26, item 4):
OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES as tags of every chest's
points, OTEL_SDK_DISABLED, OTEL_PYTHON_FLASK_EXCLUDED_URLS,
OTEL_METRIC_EXPORT_INTERVAL, and no trace fields on the SDK path; against
real SQLite files, VictoriaMetrics and an HTTP endpoint."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, request
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.util.http import get_excluded_urls

from flask_chest_otel import (
    FlaskChestCustomWriter,
    FlaskChestMeterProvider,
    FlaskChestSQLite,
    flask_chest,
)
from flask_chest_otel._chest import Chest
from flask_chest_otel.extension import FlaskChestExtension
from flask_chest_otel.influxdb import FlaskChestInfluxDB
from flask_chest_otel.testing import RecordingChest

from .conftest import read_rows, wait_for
from .http_sink import HTTPSink
from .servers import VictoriaMetrics

SERVICE = {
    "OTEL_SERVICE_NAME": "shop",
    "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,deployment.environment=prod,"
    "service.version=1.2%2C3",
}
#: The tags SERVICE gives, in the SDK's order (OTEL_SERVICE_NAME wins).
SERVICE_TAGS = {
    "service.name": "shop",
    "deployment.environment": "prod",
    "service.version": "1.2,3",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        *SERVICE,
        "FLASK_CHEST_RESOURCE_TAGS",
        "OTEL_SDK_DISABLED",
        "OTEL_PYTHON_FLASK_EXCLUDED_URLS",
        "OTEL_PYTHON_EXCLUDED_URLS",
        "OTEL_METRIC_EXPORT_INTERVAL",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in SERVICE.items():
        monkeypatch.setenv(variable, value)


@pytest.fixture
def recording() -> Iterator[RecordingChest]:
    chest = RecordingChest()
    yield chest
    chest.shutdown(timeout_millis=1_000)


def _app(chests: list[Any], **options: Any) -> Flask:
    app = Flask(__name__)
    options.setdefault("tracked_vars", {"GET": ["transaction"]})

    @app.route("/")
    @flask_chest(chests=chests, **options)
    def index() -> str:
        g.transaction = 1
        g.tenant = "acme"
        return "ok"

    return app


# -- OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES -----------------------------------


@pytest.mark.usefixtures("service")
def test_the_otel_resource_tags_every_point_of_every_chest(
    vm: VictoriaMetrics,
    sink: HTTPSink,
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
    recording: RecordingChest,
    chests: list[Chest],
) -> None:
    sqlite = make_sqlite_chest()
    influxdb = FlaskChestInfluxDB(
        name="InfluxDB", url=vm.url, bucket="b", custom_tags={"app": "resource-tags"}
    )
    writer = FlaskChestCustomWriter(
        name="HTTP", url=sink.url + "/in",
        payload_generator=lambda tuples: [dict(item.attributes) for item in tuples],
    )  # fmt: skip
    chests.extend([influxdb, writer])
    _app([sqlite, influxdb, writer, recording], tag_vars=["tenant"]).test_client().get("/")
    for chest in (sqlite, influxdb, writer):
        assert chest.force_flush(10_000)

    [row] = read_rows(sqlite.db_uri)
    assert json.loads(row["tags"]) == {**SERVICE_TAGS, "tenant": "acme"}
    [measurement] = recording.measurements
    assert measurement.attributes == {**SERVICE_TAGS, "tenant": "acme"}
    [post] = sink.posts()
    assert post.json() == [
        {"method": "GET", "route": "/", "status_code": 200, **SERVICE_TAGS, "tenant": "acme"}
    ]

    def labels() -> list[dict[str, str]]:
        found = vm.export('{__name__="transaction_value", app="resource-tags"}')
        return [series["metric"] for series in found]

    assert wait_for(lambda: len(labels()) == 1)
    [found] = labels()
    assert {key: found[key] for key in (*SERVICE_TAGS, "tenant")} == {
        **SERVICE_TAGS,
        "tenant": "acme",
    }


@pytest.mark.usefixtures("service")
@pytest.mark.parametrize(
    ("switch", "argument", "tagged"),
    [
        (None, None, True),
        ("false", None, False),
        ("0", None, False),
        ("true", False, False),
        ("false", True, True),
    ],
)
def test_resource_tags_turn_off_with_the_argument_or_flask_chest_resource_tags(
    monkeypatch: pytest.MonkeyPatch,
    recording: RecordingChest,
    switch: str | None,
    argument: bool | None,
    tagged: bool,
) -> None:
    """``resource_tags=`` wins; else ``FLASK_CHEST_RESOURCE_TAGS`` (default on)."""
    if switch is not None:
        monkeypatch.setenv("FLASK_CHEST_RESOURCE_TAGS", switch)
    _app([recording], resource_tags=argument).test_client().get("/")
    [measurement] = recording.measurements
    assert measurement.attributes == (SERVICE_TAGS if tagged else {})


@pytest.mark.usefixtures("service")
def test_the_extension_takes_flask_chest_resource_tags_from_the_config(
    recording: RecordingChest,
) -> None:
    app = Flask(__name__)
    app.config["FLASK_CHEST_RESOURCE_TAGS"] = False

    @app.route("/")
    def index() -> str:
        g.transaction = 1
        return "ok"

    FlaskChestExtension(app, chests=[recording])
    app.test_client().get("/")
    assert [(m.name, m.attributes) for m in recording.measurements] == [("transaction", {})]


def test_a_resource_attribute_named_as_the_decorators_own_is_left_out_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, recording: RecordingChest, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "route=/x,team=core,empty=")
    with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
        app = _app([recording])
    assert any("'route'" in record.getMessage() for record in caplog.records)
    app.test_client().get("/")
    [measurement] = recording.measurements
    assert (measurement.route, measurement.attributes) == ("/", {"team": "core"})


def test_a_tag_var_wins_over_a_resource_attribute_of_its_name(
    monkeypatch: pytest.MonkeyPatch, recording: RecordingChest
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "tenant=default,team=core")
    _app([recording], tag_vars=["tenant"]).test_client().get("/")
    [measurement] = recording.measurements
    assert measurement.attributes == {"tenant": "acme", "team": "core"}


# -- OTEL_SDK_DISABLED ---------------------------------------------------------------

_DISABLED_APP = """
    import json, sqlite3, sys, threading
    from flask import Flask, g
    from flask_chest_otel import FlaskChestInfluxDB, FlaskChestSQLite, chest_meter, flask_chest
    from flask_chest_otel.extension import FlaskChestExtension

    sqlite = FlaskChestSQLite(db_uri=sys.argv[1])
    influxdb = FlaskChestInfluxDB(name="InfluxDB", url="http://127.0.0.1:9", bucket="b")
    app = Flask(__name__)
    request_ids = []

    @app.route("/")
    @flask_chest(chests=[sqlite, influxdb], tracked_vars={"GET": ["a"]}, record_duration=True)
    def index():
        g.a = 1
        chest_meter().create_counter("hits").add(1)
        request_ids.append(g.custom_request_id)
        return "ok"

    other = Flask("other")

    @other.route("/")
    def other_index():
        g.a = 1
        return "ok"

    FlaskChestExtension(other, chests=[sqlite])
    for _ in range(5):
        assert app.test_client().get("/").status_code == 200
        assert other.test_client().get("/").status_code == 200
    assert sqlite.force_flush(1_000) and influxdb.force_flush(1_000)
    rows = sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM flask_chest").fetchone()[0]
    threads = [thread.name for thread in threading.enumerate()]
    print(json.dumps({"threads": threads, "rows": rows, "request_ids": len(set(request_ids))}))
"""


def test_otel_sdk_disabled_records_nothing_and_starts_no_thread(tmp_path: Path) -> None:
    """In a process of its own: the decorator and the extension record
    nothing, no chest nor the collector starts a thread; request IDs are
    still made."""
    environment = {**os.environ, "OTEL_SDK_DISABLED": "True "}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DISABLED_APP), str(tmp_path / "c.sqlite3")],
        env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"threads": ["MainThread"], "rows": 0, "request_ids": 5}


# -- OTEL_PYTHON_FLASK_EXCLUDED_URLS ---------------------------------------------------

PATHS = ["/", "/orders", "/healthz", "/api/internal/sync", "/orders?debug=1", "/api/public"]


def _catch_all(app: Flask, decorate: Callable[[Any], Any] = lambda view: view) -> None:
    """Every path: sets g.hit and g.path (the path and query)."""

    @app.route("/")
    @app.route("/<path:path>")
    @decorate
    def anything(path: str = "") -> str:
        g.hit = 1
        g.path = request.full_path.rstrip("?")
        return "ok"


@pytest.mark.parametrize(
    "variable", ["OTEL_PYTHON_FLASK_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"]
)
def test_urls_the_instrumentation_excludes_are_recorded_by_neither_decorator_nor_extension(
    monkeypatch: pytest.MonkeyPatch, recording: RecordingChest, variable: str
) -> None:
    """The same URLs as opentelemetry-instrumentation-flask's own reading
    of the variable (``opentelemetry.util.http.get_excluded_urls``)."""
    monkeypatch.setenv(variable, "healthz, /api/internal/.*,debug=1$")
    excluded = get_excluded_urls("FLASK")
    expected = [p for p in PATHS if not excluded.url_disabled("http://localhost" + p)]
    assert expected == ["/", "/orders", "/api/public"]

    decorated = Flask(__name__)
    _catch_all(
        decorated, flask_chest(chests=[recording], tracked_vars={"GET": ["hit"]}, tag_vars=["path"])
    )
    extended = Flask("extended")
    _catch_all(extended)
    FlaskChestExtension(extended, chests=[recording], tracked_vars={"GET": ["hit"]},
                        tag_vars=["path"])  # fmt: skip
    for app in (decorated, extended):
        client = app.test_client()
        for path in PATHS:
            assert client.get(path).status_code == 200
        assert [m.attributes["path"] for m in recording.measurements] == expected
        recording.clear()


def test_a_bad_excluded_urls_pattern_fails_at_decoration_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, recording: RecordingChest
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "healthz,(unclosed")
    with pytest.raises(ValueError, match=r"\$OTEL_PYTHON_FLASK_EXCLUDED_URLS: '\(unclosed'"):
        flask_chest(chests=[recording])


# -- OTEL_METRIC_EXPORT_INTERVAL -----------------------------------------------------


def test_otel_metric_export_interval_is_the_default_export_interval(
    monkeypatch: pytest.MonkeyPatch,
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Milliseconds; an export_interval given (even 2.0) wins; a value that
    is not a positive number is logged and the default stays 2 s."""
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "250")
    assert make_sqlite_chest("a").export_interval == 0.25
    assert make_sqlite_chest("b", export_interval=2.0).export_interval == 2.0
    chest = RecordingChest()
    assert chest.export_interval == 0.25
    chest.shutdown(timeout_millis=100)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "soon")
    with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
        assert make_sqlite_chest("c").export_interval == 2.0
    assert any("OTEL_METRIC_EXPORT_INTERVAL" in r.getMessage() for r in caplog.records)


# -- the SDK path --------------------------------------------------------------------


@pytest.mark.usefixtures("service")
def test_the_sdk_path_keeps_the_service_name_and_makes_no_trace_series(
    vm: VictoriaMetrics, chests: list[Chest]
) -> None:
    """FlaskChestMeterProvider in a provider read by an InfluxDB chest, the
    request traced: VictoriaMetrics has the value series with the service's
    tags, and no ``<name>_trace_id``/``<name>_span_id`` series of zeros."""
    chest = FlaskChestInfluxDB(name="InfluxDB", url=vm.url, bucket="b",
                               custom_tags={"app": "sdk-path"})  # fmt: skip
    chests.append(chest)
    provider = MeterProvider(metric_readers=[chest.metric_reader(60_000)])
    tracer = TracerProvider().get_tracer(__name__)
    app = _app([FlaskChestMeterProvider(provider)])
    try:
        with tracer.start_as_current_span("request"):
            assert app.test_client().get("/").status_code == 200
        assert provider.force_flush(10_000)
        assert chest.force_flush(10_000)
    finally:
        provider.shutdown()

    def series() -> list[dict[str, Any]]:
        return vm.export('{__name__=~"transaction_.*", app="sdk-path"}')

    assert wait_for(lambda: len(series()) >= 1)
    [found] = series()
    assert found["metric"]["__name__"] == "transaction_value"
    assert found["metric"]["status_code"] == "200"
    assert {key: found["metric"][key] for key in SERVICE_TAGS} == SERVICE_TAGS
