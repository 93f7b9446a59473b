"""One MeterProvider feeding OTLP and the InfluxDB exporter side by side,
with opentelemetry-instrumentation-flask and @flask_chest on one app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask, g, request
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from flask_chest_otel import (
    DELTA_TEMPORALITY,
    FlaskChestInfluxDB,
    FlaskChestMeterProvider,
    flask_chest,
)

from .conftest import SAMPLE_TRACKED
from .otlp_receiver import otlp_receiver
from .servers import VictoriaMetrics, victoria_metrics


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with victoria_metrics(tmp_path_factory.mktemp("vm")) as server:
        yield server


def test_otlp_and_influxdb_exporters_share_one_meter_provider(vm: VictoriaMetrics) -> None:
    chest = FlaskChestInfluxDB(
        name="InfluxDB", url=vm.url, token="t", org="my-org", bucket="my-bucket",
        custom_tags={"app": "otlp-side-by-side"},
    )
    with otlp_receiver() as receiver:
        otlp_reader = PeriodicExportingMetricReader(
            # DELTA: per-request attribute sets are not kept between exports.
            OTLPMetricExporter(
                endpoint=receiver.endpoint, insecure=True, preferred_temporality=DELTA_TEMPORALITY
            ),
            export_interval_millis=60_000,
        )
        provider = MeterProvider(metric_readers=[otlp_reader, chest.metric_reader(60_000)])
        app = Flask(__name__)
        FlaskInstrumentor().instrument_app(app, meter_provider=provider)
        ids = iter(range(1000))

        @app.route("/", methods=["GET", "POST"])
        @flask_chest(
            chests=[FlaskChestMeterProvider(provider)],
            tracked_vars=SAMPLE_TRACKED,
            request_id_generator=lambda: f"req-{next(ids)}",
        )
        def index() -> str:
            g.transaction = 1
            if request.method == "POST":
                g.response_time = 0.5
            return "ok"

        try:
            client = app.test_client()
            methods = ["GET", "POST"] * 5
            for method in methods:
                assert client.open("/", method=method).status_code == 200
            assert provider.force_flush(10_000)
            assert chest.force_flush(10_000)
            otlp_points = receiver.points()
        finally:
            FlaskInstrumentor().uninstrument_app(app)
            provider.shutdown()
            chest.shutdown()

    expected_ids = {f"req-{n}" for n in range(10)}
    decorated = [p for p in otlp_points if p.scope == "flask_chest_otel"]
    assert {p.attributes["request_id"] for p in decorated if p.metric == "transaction"} == (
        expected_ids
    )
    assert len([p for p in decorated if p.metric == "response_time"]) == 5
    assert any(p.scope == "opentelemetry.instrumentation.flask" for p in otlp_points)

    transactions = vm.export('{__name__="transaction_value"}')
    assert {s["metric"]["request_id"] for s in transactions} == expected_ids
    assert all(s["metric"]["app"] == "otlp-side-by-side" for s in transactions)
    # The request's time travels as an attribute on this path; InfluxDB gets
    # it as the timestamp and never as a tag.
    assert all("flask_chest.time_unix_nano" not in s["metric"] for s in transactions)
    by_id = {p.attributes["request_id"]: p for p in decorated if p.metric == "transaction"}
    for series in transactions:
        sent = by_id[series["metric"]["request_id"]].attributes["flask_chest.time_unix_nano"]
        assert series["timestamps"] == [sent // 1_000_000]
    durations = vm.export('{__name__=~"http.server.*duration_count"}')
    assert sum(s["values"][-1] for s in durations) == 10
