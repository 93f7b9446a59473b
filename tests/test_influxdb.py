"""The InfluxDB exporter and chest against real VictoriaMetrics, real
InfluxDB 1.6 and a strict InfluxDB 2.x write-API test double."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import g
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from flask_chest_otel._delivery import Fate
from flask_chest_otel._names import ATTR_METHOD, ATTR_REQUEST_ID, ATTR_ROUTE, SCOPE_NAME
from flask_chest_otel.influxdb import FlaskChestInfluxDB, InfluxDBMetricExporter

from .conftest import app_recording, sample_app
from .http_sink import HTTPSink, Reply
from .servers import (
    InfluxDB1,
    InfluxDB2WriteDouble,
    Scripted,
    VictoriaMetrics,
    influxdb1,
    victoria_metrics,
)

TOKEN = "s3cr3t-token-value"
T = 1_700_000_000_123_456_789


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with victoria_metrics(tmp_path_factory.mktemp("vm")) as server:
        yield server


@pytest.fixture
def double() -> Iterator[InfluxDB2WriteDouble]:
    with InfluxDB2WriteDouble(token=TOKEN, org="my-org", bucket="my-bucket") as server:
        yield server


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    with influxdb1(tmp_path_factory.mktemp("influxd"), auth=("admin", "pw")) as server:
        server.create_database("chest")
        yield server


@pytest.fixture
def exporters() -> Iterator[list[InfluxDBMetricExporter]]:
    made: list[InfluxDBMetricExporter] = []
    yield made
    for exporter in made:
        exporter.shutdown(timeout_millis=2_000)


def make(exporters: list[InfluxDBMetricExporter], **options: Any) -> InfluxDBMetricExporter:
    options.setdefault("retry_initial", 0.05)
    exporter = InfluxDBMetricExporter(**options)
    exporters.append(exporter)
    return exporter


def decorated_data(points: list[tuple[str, str, float, int]]) -> MetricsData:
    """(variable, request id, value, time) as the recorder hands them over."""
    by_name: dict[str, list[NumberDataPoint]] = {}
    for name, request_id, value, time_ns in points:
        attributes = {ATTR_REQUEST_ID: request_id, ATTR_METHOD: "POST", ATTR_ROUTE: "/"}
        by_name.setdefault(name, []).append(NumberDataPoint(attributes, 0, time_ns, value))
    metrics = [Metric(name, "", "", Gauge(pts)) for name, pts in by_name.items()]
    scope = InstrumentationScope(SCOPE_NAME, "0.1.0")
    return MetricsData([ResourceMetrics(Resource.create(), [ScopeMetrics(scope, metrics, "")], "")])


def app_data() -> MetricsData:
    """Some other OTel metrics of an application: a counter and a histogram."""
    scope = InstrumentationScope("shop", "1.2")
    counter = Metric(
        "orders",
        "",
        "",
        Sum(
            [NumberDataPoint({"kind": "book"}, T - 10**9, T, 7)],
            AggregationTemporality.CUMULATIVE,
            True,
        ),
    )
    histogram = Metric(
        "latency",
        "",
        "s",
        Histogram(
            [
                HistogramDataPoint(
                    {"route": "/x"}, T - 10**9, T, 4, 1.5, [1, 2, 1], [0.1, 1.0], 0.05, 0.9
                )
            ],
            AggregationTemporality.DELTA,
        ),
    )
    resource = Resource({"service.name": "shop"})
    return MetricsData(
        [ResourceMetrics(resource, [ScopeMetrics(scope, [counter, histogram], "")], "")]
    )


def by_labels(series: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    return {tuple(sorted(s["metric"].items())): s for s in series}


# -- VictoriaMetrics: a real InfluxDB v2 write API ----------------------------------


def test_decorated_points_reach_victoria_metrics_with_tags_values_and_times(
    vm: VictoriaMetrics, exporters: list[InfluxDBMetricExporter]
) -> None:
    """Each decorated point arrives as measurement_value with request_id,
    method, route and the custom tags, its value and its own time."""
    exporter = make(
        exporters, url=vm.url, token=TOKEN, org="o", bucket="b", custom_tags={"app": "vm-test"}
    )
    points = [("vm_rt", f"req-{i}", i * 0.25, T + i * 1_000_000) for i in range(50)]
    assert exporter.export(decorated_data(points)).name == "SUCCESS"
    assert exporter.force_flush(10_000)
    series = by_labels(vm.export('{__name__="vm_rt_value"}'))
    assert len(series) == 50
    for _, request_id, value, time_ns in points:
        key = (
            ("__name__", "vm_rt_value"),
            ("app", "vm-test"),
            ("method", "POST"),
            ("request_id", request_id),
            ("route", "/"),
        )
        assert series[key]["values"] == [value]
        assert series[key]["timestamps"] == [time_ns // 1_000_000]
    assert exporter.stats.exported == 50 and exporter.stats.dropped == 0


def test_other_metrics_follow_telegraf_prometheus_v1_in_victoria_metrics(
    vm: VictoriaMetrics, exporters: list[InfluxDBMetricExporter]
) -> None:
    """A cumulative counter becomes field counter, a histogram count/sum/min/max
    and cumulative buckets, tagged with resource and scope."""
    exporter = make(exporters, url=vm.url, bucket="b", custom_tags={"app": "vm-test"})
    exporter.export(app_data())
    assert exporter.force_flush(10_000)
    [orders] = vm.export('{__name__="orders_counter"}')
    assert orders["metric"] == {
        "__name__": "orders_counter",
        "app": "vm-test",
        "kind": "book",
        "otel.library.name": "shop",
        "otel.library.version": "1.2",
        "service.name": "shop",
    }
    assert orders["values"] == [7] and orders["timestamps"] == [T // 1_000_000]
    fields = {s["metric"]["__name__"]: s["values"] for s in vm.export('{__name__=~"latency_.*"}')}
    assert fields == {
        "latency_count": [4],
        "latency_sum": [1.5],
        "latency_min": [0.05],
        "latency_max": [0.9],
        "latency_0.1": [1],
        "latency_1": [3],
        "latency_+Inf": [4],
        "latency_start_time_unix_nano": [pytest.approx(T - 10**9, rel=1e-15)],  # VM keeps float64
    }


def test_chest_from_the_sample_usage_exports_every_request_with_flask_instrumentation(
    vm: VictoriaMetrics,
) -> None:
    """End to end: the sample app with FlaskChestInfluxDB on VictoriaMetrics and
    opentelemetry-instrumentation-flask in a MeterProvider read by the chest:
    every request's points, tags, values and times arrive, beside the
    instrumentation's own metrics."""
    counter = itertools.count()
    chest = FlaskChestInfluxDB(
        name="InfluxDB",
        url=vm.url,
        token=TOKEN,
        org="my-org",
        bucket="my-bucket",
        custom_tags={"app": "e2e"},
        logger=logging.getLogger("e2e"),
        export_interval=0.2,
    )
    provider = MeterProvider(metric_readers=[chest.metric_reader()])
    app = sample_app([chest], request_id_generator=lambda: f"e2e-{next(counter)}")
    FlaskInstrumentor().instrument_app(app, meter_provider=provider)
    expected: dict[tuple[str, str], tuple[float, int, int, str]] = {}
    try:
        with app.test_client() as client:
            for i in range(30):
                method = "POST" if i % 2 else "GET"
                before = time.time_ns()
                response = client.open("/", method=method)
                after = time.time_ns()
                assert response.status_code == 200
                request_id = g.custom_request_id
                expected[("transaction", request_id)] = (1.0, before, after, method)
                if method == "POST":
                    expected[("response_time", request_id)] = (
                        g.response_time,
                        before,
                        after,
                        method,
                    )
        provider.force_flush()
        assert chest.force_flush(10_000)
        found = vm.export('{__name__=~"(transaction|response_time)_value", app="e2e"}')
        assert len(found) == len(expected) == 45
        for series in found:
            labels = series["metric"]
            name = labels["__name__"].removesuffix("_value")
            value, before, after, method = expected[(name, labels["request_id"])]
            assert labels == {
                "__name__": f"{name}_value",
                "app": "e2e",
                "method": method,
                "route": "/",
                "status_code": "200",
                "request_id": labels["request_id"],
            }
            assert series["values"] == [pytest.approx(value, rel=1e-11)]  # VM keeps 12 digits
            [stamp] = series["timestamps"]
            assert before // 1_000_000 <= stamp <= after // 1_000_000
        # The instrumentation's histogram went through the same chest (DELTA:
        # the per-interval counts add up to the requests made).
        durations = vm.export('{__name__="http.server.duration_count", app="e2e"}')
        assert sum(sum(series["values"]) for series in durations) == 30
    finally:
        FlaskInstrumentor().uninstrument_app(app)
        provider.shutdown()
        chest.shutdown(timeout_millis=5_000)


# -- status codes: the InfluxDB 2.x write-API test double ---------------------------

LINE = b"m,request_id=r1 value=1 1700000000000000000"


def test_lines_are_posted_gzipped_with_token_org_bucket_and_ns_precision(
    double: InfluxDB2WriteDouble, exporters: list[InfluxDBMetricExporter]
) -> None:
    exporter = make(exporters, url=double.url, token=TOKEN, org="my-org", bucket="my-bucket")
    assert exporter._send([LINE, LINE.replace(b"r1", b"r2")]).delivered_all
    [request] = double.requests
    assert request.path == "/api/v2/write"
    assert request.query == {"org": "my-org", "bucket": "my-bucket", "precision": "ns"}
    assert request.headers["Authorization"] == f"Token {TOKEN}"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.body == LINE + b"\n" + LINE.replace(b"r1", b"r2")


def test_wrong_token_is_rejected_with_an_actionable_message_without_the_token(
    double: InfluxDB2WriteDouble,
    exporters: list[InfluxDBMetricExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = make(
        exporters, url=double.url, token="wrong-" + TOKEN, org="my-org", bucket="my-bucket"
    )
    outcome = exporter._send([LINE])
    assert outcome.rest is Fate.REFUSED
    assert "401" in outcome.message and "token" in outcome.message
    with caplog.at_level(logging.DEBUG):
        exporter.export(decorated_data([("m", "r", 1.0, T)]))
        exporter.force_flush(5_000)
    assert exporter.stats.dropped_rejected == 1
    assert "401" in caplog.text
    for text in (caplog.text, outcome.message, repr(exporter)):
        assert TOKEN not in text


@pytest.mark.parametrize(
    ("org", "bucket", "named"),
    [("my-org", "nope", "'nope'"), ("other-org", "my-bucket", "'other-org'")],
)
def test_missing_org_or_bucket_is_rejected_naming_both(
    double: InfluxDB2WriteDouble,
    exporters: list[InfluxDBMetricExporter],
    org: str,
    bucket: str,
    named: str,
) -> None:
    outcome = make(exporters, url=double.url, token=TOKEN, org=org, bucket=bucket)._send([LINE])
    assert outcome.rest is Fate.REFUSED
    assert "404" in outcome.message and named in outcome.message
    assert f"org {org!r}" in outcome.message and f"bucket {bucket!r}" in outcome.message


def test_malformed_line_makes_the_batch_invalid_quoting_the_line(
    double: InfluxDB2WriteDouble, exporters: list[InfluxDBMetricExporter]
) -> None:
    """A 400 for one line refuses the batch for what one item holds: INVALID,
    which the delivery layer narrows down to that item."""
    exporter = make(exporters, url=double.url, token=TOKEN, org="my-org", bucket="my-bucket")
    outcome = exporter._send([LINE, b"broken line here"])
    # 2.x names the line it could not parse and writes nothing: the other is sent again.
    assert outcome.expand(2) == [Fate.RESEND, Fate.REFUSED]
    assert "400" in outcome.message and "broken line here" in outcome.reason(1)


def test_unhealable_field_type_conflict_422_is_rejected_counting_the_delivered_points(
    double: InfluxDB2WriteDouble, exporters: list[InfluxDBMetricExporter]
) -> None:
    """A string where a float is stored cannot be converted: that point is
    refused (named, with both types), the other one delivered."""
    exporter = make(exporters, url=double.url, token=TOKEN, org="my-org", bucket="my-bucket")
    assert exporter._send([LINE]).delivered_all
    outcome = exporter._send([b'm value="text" 2', b"m2 value=1 2"])
    assert outcome.expand(2) == [Fate.REFUSED, Fate.DELIVERED]
    assert "field type conflict" in outcome.reason(0)
    assert "measurement 'm' field 'value': string sent, float stored" in outcome.reason(0)


def test_413_splits_the_batch_until_it_fits(
    exporters: list[InfluxDBMetricExporter],
) -> None:
    with InfluxDB2WriteDouble(token=TOKEN, max_body_bytes=200) as double:
        exporter = make(
            exporters,
            url=double.url,
            token=TOKEN,
            org="my-org",
            bucket="my-bucket",
            enable_gzip=False,
        )
        points = [("m", f"req-{i:03}", float(i), T + i) for i in range(20)]
        exporter.export(decorated_data(points))
        assert exporter.force_flush(10_000)
        assert exporter.stats.exported == 20 and exporter.stats.dropped == 0
        assert len(double.points) == 20
        assert any(r.body and len(r.body) > 200 for r in double.requests)


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (429, {"Retry-After": "0.3"}, 0.3),
        (503, {"Retry-After": "1"}, 1.0),
        (503, {}, None),
        (500, {}, None),
    ],
)
def test_429_and_5xx_are_retried_honouring_retry_after(
    double: InfluxDB2WriteDouble,
    exporters: list[InfluxDBMetricExporter],
    status: int,
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    exporter = make(exporters, url=double.url, token=TOKEN, org="my-org", bucket="my-bucket")
    double.script.append(Scripted(status, {"code": "x", "message": "busy"}, headers))
    outcome = exporter._send([LINE])
    assert outcome.rest is Fate.RETRY and outcome.retry_after == retry_after
    double.script.append(Scripted(status, {"code": "x", "message": "busy"}, headers))
    exporter.export(decorated_data([("m", "r", 1.0, T)]))
    started = time.monotonic()
    assert exporter.force_flush(10_000)
    assert time.monotonic() - started >= (retry_after or 0)
    assert exporter.stats.retried == 1 and exporter.stats.exported == 1
    assert len(double.points) == 1


def test_redirect_is_never_counted_as_delivered(
    double: InfluxDB2WriteDouble, exporters: list[InfluxDBMetricExporter]
) -> None:
    exporter = make(exporters, url=double.url, token=TOKEN, org="my-org", bucket="my-bucket")
    double.script.append(Scripted(302, None, {"Location": "https://login.example/"}))
    outcome = exporter._send([LINE])
    assert outcome.rest is Fate.REFUSED and "login.example" in outcome.message


def test_unreachable_server_is_retried_and_data_kept(
    exporters: list[InfluxDBMetricExporter],
) -> None:
    from .servers import free_port

    exporter = make(
        exporters,
        url=f"http://127.0.0.1:{free_port()}",
        token=TOKEN,
        org="o",
        bucket="b",
        timeout=1.0,
    )
    outcome = exporter._send([LINE])
    assert outcome.rest is Fate.RETRY and "cannot reach" in outcome.message
    assert TOKEN not in outcome.message


# -- InfluxDB 1.6: the real server, 1.x API -------------------------------------------


def test_v1_mode_writes_to_real_influxdb_with_basic_auth(
    influxd: InfluxDB1, exporters: list[InfluxDBMetricExporter]
) -> None:
    exporter = make(
        exporters,
        url=influxd.url,
        database="chest",
        username="admin",
        password="pw",
        custom_tags={"app": "v1"},
    )
    points = [("v1_rt", f"req-{i}", i + 0.5, T + i) for i in range(10)]
    exporter.export(decorated_data(points))
    assert exporter.force_flush(10_000) and exporter.stats.exported == 10
    result = influxd.query("SELECT * FROM v1_rt", "chest")
    [series] = result["results"][0]["series"]
    rows = [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
    assert rows == [
        {
            "time": T + i,
            "app": "v1",
            "method": "POST",
            "request_id": f"req-{i}",
            "route": "/",
            "value": i + 0.5,
        }
        for i in range(10)
    ]


def test_v1_field_type_conflict_is_rejected(
    influxd: InfluxDB1, exporters: list[InfluxDBMetricExporter]
) -> None:
    exporter = make(exporters, url=influxd.url, database="chest", username="admin", password="pw")
    assert exporter._send([b"conflict value=1 1"]).delivered_all
    outcome = exporter._send([b'conflict value="s" 2'])
    assert outcome.expand(1) == [Fate.REFUSED] and "field type conflict" in outcome.reason(0)


def test_v1_wrong_password_and_missing_database_are_rejected(
    influxd: InfluxDB1, exporters: list[InfluxDBMetricExporter]
) -> None:
    bad = make(exporters, url=influxd.url, database="chest", username="admin", password="no")
    outcome = bad._send([LINE])
    assert outcome.rest is Fate.REFUSED and "401" in outcome.message
    missing = make(exporters, url=influxd.url, database="nodb", username="admin", password="pw")
    outcome = missing._send([LINE])
    assert outcome.rest is Fate.REFUSED and "'nodb'" in outcome.message


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["localhost:8086", "ftp://host", "http://", "http://h:port", "http://h:8086?x=1"]
)
def test_malformed_url_fails_at_construction_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        InfluxDBMetricExporter(url=url, token=TOKEN, org="o", bucket="b")


def test_settings_fall_back_to_influxdb_v2_environment_variables(
    monkeypatch: pytest.MonkeyPatch, exporters: list[InfluxDBMetricExporter]
) -> None:
    monkeypatch.setenv("INFLUXDB_V2_URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", TOKEN)
    monkeypatch.setenv("INFLUXDB_V2_ORG", "env-org")
    monkeypatch.setenv("INFLUXDB_V2_BUCKET", "env-bucket")
    exporter = make(exporters)
    assert (exporter.url, exporter.org, exporter.bucket) == (
        "http://127.0.0.1:9999",
        "env-org",
        "env-bucket",
    )
    assert TOKEN not in repr(exporter)


def test_missing_bucket_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFLUXDB_V2_BUCKET", raising=False)
    with pytest.raises(ValueError, match="bucket"):
        InfluxDBMetricExporter(url="http://localhost:8086", token=TOKEN, org="o")


def test_chest_repr_names_destination_not_token() -> None:
    chest = FlaskChestInfluxDB(
        name="Influx", url="http://localhost:8086", token=TOKEN, org="o", bucket="b"
    )
    try:
        assert "'b'" in repr(chest) and TOKEN not in repr(chest)
    finally:
        chest.shutdown(timeout_millis=100)


def test_int_points_are_written_as_integers_and_float_points_as_floats(
    double: InfluxDB2WriteDouble, exporters: list[InfluxDBMetricExporter]
) -> None:
    """As otel2influx writes a NumberDataPoint: its own type; histogram
    counts and buckets as floats (the schema's layout)."""
    exporter = make(exporters, url=double.url, token=TOKEN, org="my-org", bucket="my-bucket")
    gauge = Metric("temperature", "", "", Gauge([NumberDataPoint({}, 0, T, 21.0)]))
    data = app_data()
    data.resource_metrics[0].scope_metrics[0].metrics.append(gauge)  # type: ignore[attr-defined]
    lines = [line.decode() for line in exporter._encode(data)]
    [orders] = [line for line in lines if line.startswith("orders,")]
    assert " counter=7i,start_time_unix_nano=" in orders
    [temperature] = [line for line in lines if line.startswith("temperature,")]
    assert " gauge=21 " in temperature
    [latency] = [line for line in lines if line.startswith("latency,")]
    assert " count=4," in latency and ",+Inf=4," in latency


def test_telegraf_prometheus_v2_schema_is_available(
    double: InfluxDB2WriteDouble, exporters: list[InfluxDBMetricExporter]
) -> None:
    exporter = make(
        exporters,
        url=double.url,
        token=TOKEN,
        org="my-org",
        bucket="my-bucket",
        schema="telegraf-prometheus-v2",
    )
    lines = [line.decode() for line in exporter._encode(app_data())]
    assert any(line.startswith("prometheus,") and " orders=7i," in line for line in lines)
    assert any(",le=+Inf," in line and "latency_bucket=4" in line for line in lines)


# -- messages users act on ------------------------------------------------------------


def test_v2_mode_against_influxdb_1x_names_database_as_the_fix(
    influxd: InfluxDB1, exporters: list[InfluxDBMetricExporter]
) -> None:
    """org/bucket given to an InfluxDB 1.6 server (no /api/v2/write): the
    message names the server version and database= as the fix."""
    exporter = make(exporters, url=influxd.url, token=TOKEN, org="o", bucket="b")
    outcome = exporter._send([LINE])
    assert outcome.rest is Fate.REFUSED
    assert "404" in outcome.message and "InfluxDB 1.6" in outcome.message
    assert "give database=" in outcome.message


def test_v1_basic_auth_failure_talks_about_username_and_password_not_a_token(
    influxd: InfluxDB1, exporters: list[InfluxDBMetricExporter]
) -> None:
    bad = make(exporters, url=influxd.url, database="chest", username="admin", password="no")
    outcome = bad._send([LINE])
    assert outcome.rest is Fate.REFUSED and "401" in outcome.message
    assert "username 'admin' and its password" in outcome.message
    assert "token" not in outcome.message.lower() and "bucket" not in outcome.message


def test_non_json_error_body_does_not_configure_the_applications_logging(
    exporters: list[InfluxDBMetricExporter],
) -> None:
    """influxdb-client logs a non-JSON error body with the module-level
    logging.debug(), which would add a handler to the root logger of an app
    that configured no logging: the root logger gains no handler."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # an application that has configured no logging
    try:
        with HTTPSink() as sink:
            sink.default = Reply(status=400, body=b"<html>bad gateway page</html>")
            exporter = make(exporters, url=sink.url, token=TOKEN, org="o", bucket="b")
            outcome = exporter._send([LINE])
            # A 400 that names no line: the drain narrows the batch down.
            assert outcome.rest is Fate.SUSPECT and "bad gateway page" in outcome.message
            added = root.handlers[:]
    finally:
        root.handlers[:] = saved
    assert added == []


def test_v1_malformed_line_makes_the_batch_invalid(
    influxd: InfluxDB1, exporters: list[InfluxDBMetricExporter]
) -> None:
    """InfluxDB 1.6 answers 400 "unable to parse" for one bad line among good
    ones: INVALID (narrowed by the delivery layer), the line quoted."""
    exporter = make(exporters, url=influxd.url, database="chest", username="admin", password="pw")
    outcome = exporter._send([b"good value=1 1", b"broken line here"])
    # 1.x names the line and writes the other ("partial write"), but its
    # "dropped=0" does not count the unparsable line: the other is sent again.
    assert outcome.expand(2)[1] is Fate.REFUSED
    assert "400" in outcome.message and "broken line here" in outcome.reason(1)


def test_one_line_the_server_refuses_costs_only_its_own_request(
    double: InfluxDB2WriteDouble, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13's acceptance for InfluxDB: the write API refuses a whole
    request for one line it cannot take (400 "unable to parse"); of 100
    requests, one poisoned, the other 99 land, the refused one is counted and
    logged once with its line, and the flush reports the refusal."""
    double.refuse_line = lambda line: "poisoned value" if "poison" in line else None
    chest = FlaskChestInfluxDB(
        name="strict", url=double.url, token=TOKEN, org="my-org", bucket="my-bucket",
        export_interval=3600,
    )  # fmt: skip
    try:
        app_recording(
            chest,
            [(f"r{n}", {"customer": "poison" if n == 42 else f"c{n}"}) for n in range(100)],
        )
        with caplog.at_level(logging.ERROR, logger="flask_chest_otel"):
            assert chest.force_flush(10_000) is False
        landed = {tags["request_id"] for _, tags, _, _ in double.points}
        assert landed == {f"r{n}" for n in range(100)} - {"r42"}
        assert chest.exporter.stats.dropped_rejected == 1
        assert chest.exporter.stats.exported == 99
        refused = [r.getMessage() for r in caplog.records if "r42" in r.getMessage()]
        assert len(refused) == 1 and "unable to parse" in refused[0]
        assert TOKEN not in caplog.text
    finally:
        chest.shutdown(timeout_millis=2_000)
