"""FlaskChestOTel: OpenTelemetry's own OTLP exporters (gRPC and HTTP, SDK
1.45.1) as chests, against real OTLP receivers, with
opentelemetry-instrumentation-flask tracing the requests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GRPCMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HTTPMetricExporter,
)
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flask_chest_otel import FlaskChestOTel, FlaskChestSQLite, flask_chest, trace_id_request_id
from flask_chest_otel._chest import Chest
from flask_chest_otel._delivery import Settlement
from flask_chest_otel.extension import FlaskChestExtension
from flask_chest_otel.otel import OTelExporterAdapter

from .conftest import read_rows
from .otlp_receiver import OTLPReceiver, otlp_http_receiver, otlp_receiver

Receiver = Callable[..., AbstractContextManager[OTLPReceiver]]


def grpc_exporter(receiver: OTLPReceiver) -> MetricExporter:
    return GRPCMetricExporter(endpoint=receiver.endpoint, insecure=True)


def http_exporter(receiver: OTLPReceiver) -> MetricExporter:
    return HTTPMetricExporter(endpoint=receiver.endpoint)


PROTOCOLS = pytest.mark.parametrize(
    ("receiver_of", "exporter_of"),
    [(otlp_receiver, grpc_exporter), (otlp_http_receiver, http_exporter)],
    ids=["grpc", "http"],
)


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@PROTOCOLS
@pytest.mark.parametrize("generator", [None, trace_id_request_id], ids=["uuid4", "trace-id"])
def test_5000_traced_requests_are_5000_points_each_at_its_time_with_its_trace(
    receiver_of: Receiver,
    exporter_of: Callable[[OTLPReceiver], MetricExporter],
    generator: Callable[[], str] | None,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    tmp_path: Path,
) -> None:
    """Issue 14's acceptance: instrumentation-flask + FlaskChestOTel(OTLP
    exporter), and a SQLite chest on the same route whose rows name the same
    traces."""
    tracer_provider, span_exporter = spans
    with receiver_of() as receiver:
        chest = FlaskChestOTel(exporter_of(receiver), export_interval=60)
        sqlite_chest = FlaskChestSQLite(db_uri=str(tmp_path / "traced.sqlite3"))
        app = Flask(__name__)
        FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider)

        @app.route("/orders", methods=["POST"])
        @flask_chest(
            chests=[chest, sqlite_chest],
            tracked_vars={"POST": ["transaction"]},
            request_id_generator=generator,
        )
        def orders() -> str:
            g.transaction = 1
            return "ok"

        try:
            client = app.test_client()
            for _ in range(5000):
                assert client.post("/orders").status_code == 200
            assert chest.force_flush(60_000)
            assert sqlite_chest.force_flush(60_000)
            points = receiver.points()
        finally:
            FlaskInstrumentor().uninstrument_app(app)
            chest.shutdown()
            sqlite_chest.shutdown()

    server_spans = {
        (format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")): s
        for s in span_exporter.get_finished_spans()
        if s.kind is trace.SpanKind.SERVER
    }
    assert len(server_spans) == 5000
    assert len(points) == 5000
    assert all(p.metric == "transaction" and p.value == 1 for p in points)
    assert len({p.attributes["request_id"] for p in points}) == 5000
    linked = set()
    for point in points:
        ((trace_id, span_id, exemplar_time),) = point.exemplars
        span = server_spans[(trace_id, span_id)]
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= point.time_unix_nano <= span.end_time
        assert exemplar_time == point.time_unix_nano
        assert "flask_chest.index" not in point.attributes
        if generator is trace_id_request_id:
            assert point.attributes["request_id"] == trace_id
        linked.add((trace_id, span_id))
    assert linked == set(server_spans)
    rows = read_rows(tmp_path / "traced.sqlite3")
    assert {(row["request_id"], row["trace_id"], row["span_id"]) for row in rows} == {
        (p.attributes["request_id"], *p.exemplars[0][:2]) for p in points
    }


@PROTOCOLS
def test_a_10000_request_burst_survives_refused_exports_without_loss_or_duplicates(
    receiver_of: Receiver, exporter_of: Callable[[OTLPReceiver], MetricExporter]
) -> None:
    """The receiver refuses the first 3 exports (the exporter returns FAILURE):
    our buffer retries them; every request arrives exactly once."""
    with receiver_of(refuse_first=3) as receiver:
        chest = FlaskChestOTel(
            exporter_of(receiver), export_interval=60, retry_initial=0.05, retry_max=0.2
        )
        app = Flask(__name__)
        ids = iter(range(10_000))

        @app.route("/", methods=["GET", "POST"])
        @flask_chest(
            chests=[chest],
            tracked_vars={"POST": ["transaction", "response_time", "user"]},
            request_id_generator=lambda: f"req-{next(ids)}",
        )
        def index() -> str:
            g.transaction = 1
            g.response_time = 0.25
            g.user = "user-00321"
            return "ok"

        try:
            client = app.test_client()
            for _ in range(10_000):
                client.post("/")
            assert chest.force_flush(60_000)
            points = receiver.points()
            stats = chest.exporter.stats
        finally:
            chest.shutdown()
    assert receiver.refused == 3
    assert stats.retried > 0 and stats.dropped == 0
    assert len(points) == 30_000
    by_name: dict[str, list[Any]] = {}
    for point in points:
        by_name.setdefault(point.metric, []).append(point)
    assert {name: len(found) for name, found in by_name.items()} == {
        "transaction": 10_000,
        "response_time": 10_000,
        "user": 10_000,
    }
    assert {p.attributes["request_id"] for p in by_name["transaction"]} == {
        f"req-{n}" for n in range(10_000)
    }
    assert all(p.value == 1 and isinstance(p.value, int) for p in by_name["transaction"])
    assert all(p.value == 0.25 for p in by_name["response_time"])
    # Text rides the attribute flask_chest.value; the point's value is 1.
    assert all(
        p.value == 1 and p.attributes["flask_chest.value"] == "user-00321" for p in by_name["user"]
    )
    assert all(p.exemplars == [] for p in points)  # no span was recording


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_with_no_exporter_the_chest_builds_otlp_from_the_standard_variables(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver_of = otlp_receiver if protocol == "grpc" else otlp_http_receiver
    with receiver_of() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol)
        if protocol == "grpc":
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"http://{receiver.endpoint}")
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "true")
        else:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", receiver.endpoint)
        chest = FlaskChestOTel()
        app = Flask(__name__)

        @app.route("/")
        @flask_chest(chests=[chest], tracked_vars={"GET": ["transaction"]})
        def index() -> str:
            g.transaction = 7
            return "ok"

        try:
            app.test_client().get("/")
            assert chest.force_flush(10_000)
            points = receiver.points()
        finally:
            chest.shutdown()
    assert [(p.metric, p.value) for p in points] == [("transaction", 7)]


def test_an_unknown_otlp_protocol_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        FlaskChestOTel()


def test_an_exporter_that_is_not_a_metric_exporter_is_refused() -> None:
    with pytest.raises(TypeError, match="OTel: exporter must be an OpenTelemetry MetricExporter"):
        FlaskChestOTel(exporter=object())  # type: ignore[arg-type]


def test_what_is_buffered_at_exit_reaches_the_receiver() -> None:
    """A process that exits right after its requests: the chest's shutdown at
    exit delivers every point through the wrapped exporter."""
    with otlp_receiver() as receiver:
        script = textwrap.dedent(
            f"""
            from flask import Flask, g
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
            from flask_chest_otel import FlaskChestOTel, flask_chest

            chest = FlaskChestOTel(
                OTLPMetricExporter(endpoint={receiver.endpoint!r}, insecure=True),
                export_interval=60,
            )
            app = Flask(__name__)

            @app.route("/")
            @flask_chest(chests=[chest], tracked_vars={{"GET": ["transaction"]}})
            def index():
                g.transaction = 1
                return "ok"

            client = app.test_client()
            for _ in range(300):
                client.get("/")
            """
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        points = receiver.points()
    assert len(points) == 300
    assert len({p.attributes["request_id"] for p in points}) == 300


def test_a_manual_span_links_the_points_of_its_request(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Any recording span current in the view names the trace, not only
    instrumentation-flask's."""
    tracer_provider, span_exporter = spans
    tracer = tracer_provider.get_tracer("test")
    with otlp_http_receiver() as receiver:
        chest = FlaskChestOTel(http_exporter(receiver))
        app = Flask(__name__)

        @app.route("/")
        @flask_chest(chests=[chest], tracked_vars={"GET": ["transaction"]})
        def index() -> str:
            g.transaction = 1
            return "ok"

        @app.before_request
        def open_span() -> None:
            g._span = tracer.start_span("manual")
            g._token = trace.use_span(g._span, end_on_exit=True)
            g._token.__enter__()

        @app.teardown_request
        def close_span(exc: BaseException | None) -> None:
            g._token.__exit__(None, None, None)

        try:
            app.test_client().get("/")
            assert chest.force_flush(10_000)
            points = receiver.points()
        finally:
            chest.shutdown()
    (span,) = span_exporter.get_finished_spans()
    ((trace_id, span_id, _),) = points[0].exemplars
    assert (trace_id, span_id) == (
        format(span.context.trace_id, "032x"),
        format(span.context.span_id, "016x"),
    )


def test_the_extension_reads_the_trace_for_its_request_ids_and_points(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """FlaskChestExtension registered after instrumentation-flask runs its
    hook after the span starts: trace_id_request_id gives the trace ID, and
    each point's exemplar names the request's span."""
    tracer_provider, span_exporter = spans
    with otlp_receiver() as receiver:
        chest = FlaskChestOTel(grpc_exporter(receiver))
        app = Flask(__name__)
        FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider)
        FlaskChestExtension(
            app, chests=[chest], tracked_vars={"GET": ["transaction"]},
            request_id_generator=trace_id_request_id,
        )  # fmt: skip
        seen: list[str] = []

        @app.route("/")
        def index() -> str:
            g.transaction = 1
            seen.append(g.custom_request_id)
            return "ok"

        try:
            client = app.test_client()
            for _ in range(3):
                client.get("/")
            assert chest.force_flush(10_000)
            points = receiver.points()
        finally:
            FlaskInstrumentor().uninstrument_app(app)
            chest.shutdown()
    traces = {
        format(s.context.trace_id, "032x"): format(s.context.span_id, "016x")
        for s in span_exporter.get_finished_spans()
    }
    assert sorted(seen) == sorted(traces)
    assert sorted(p.attributes["request_id"] for p in points) == sorted(traces)
    for point in points:
        ((trace_id, span_id, _),) = point.exemplars
        assert point.attributes["request_id"] == trace_id and traces[trace_id] == span_id


class KeepingExporter(MetricExporter):
    """An OpenTelemetry exporter that keeps what it is given (in memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.exported: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class SpoolingAdapter(OTelExporterAdapter):
    """Sends what went through the spool's encoding and back."""

    def _send(self, batch: Sequence[Any]) -> Settlement:
        return super()._send([self._spool_loads(self._spool_dumps(item)) for item in batch])


def test_buffered_points_survive_the_spool_encoding() -> None:
    """Written as the spool writes them and read back, a request's points
    regroup into one resource, one scope and one metric per name, with their
    values, times and traces."""
    keeping = KeepingExporter()
    chest = Chest("spooled", SpoolingAdapter(keeping, name="spooled"))
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[chest], tracked_vars={"GET": ["a", "b"]})
    def index() -> str:
        g.a, g.b = 1, "text"
        return "ok"

    tracer = TracerProvider().get_tracer("test")
    try:
        for _ in range(3):
            with tracer.start_as_current_span("request"):
                app.test_client().get("/")
        assert chest.force_flush()
    finally:
        chest.shutdown()
    (data,) = keeping.exported
    (resource_metrics,) = data.resource_metrics
    (scope_metrics,) = resource_metrics.scope_metrics
    assert scope_metrics.scope.name == "flask_chest_otel"
    assert resource_metrics.resource.attributes["telemetry.sdk.name"] == "opentelemetry"
    by_name = {m.name: m.data.data_points for m in scope_metrics.metrics}
    assert [p.value for p in by_name["a"]] == [1, 1, 1]
    assert [p.attributes["flask_chest.value"] for p in by_name["b"]] == ["text"] * 3
    for points in by_name.values():
        for point in points:
            assert "flask_chest.index" not in point.attributes
            (exemplar,) = point.exemplars
            assert exemplar.trace_id and exemplar.time_unix_nano == point.time_unix_nano


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12+)
def test_a_forked_child_sends_its_own_points_and_never_the_parents() -> None:
    with otlp_http_receiver() as receiver:
        chest = FlaskChestOTel(http_exporter(receiver), export_interval=60)
        app = Flask(__name__)
        ids = iter(range(1_000_000))

        @app.route("/")
        @flask_chest(chests=[chest], tracked_vars={"GET": ["transaction"]},
                     request_id_generator=lambda: f"{os.getpid()}-{next(ids)}")  # fmt: skip
        def index() -> str:
            g.transaction = 1
            return "ok"

        client = app.test_client()
        try:
            for _ in range(50):
                client.get("/")
            from flask_chest_otel._recorder import RECORDER

            RECORDER.collect()  # the parent's 50 points now wait in its buffer
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for _ in range(20):
                        client.get("/")
                    code = 0 if chest.force_flush(20_000) else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert chest.force_flush(20_000)
            points = receiver.points()
        finally:
            chest.shutdown()
    by_process: dict[str, int] = {}
    for point in points:
        process = point.attributes["request_id"].split("-")[0]
        by_process[process] = by_process.get(process, 0) + 1
    assert by_process == {str(os.getpid()): 50, str(pid): 20}


def test_the_apps_other_metrics_reach_the_exporter_through_metric_reader() -> None:
    """chest.metric_reader() in the app's MeterProvider: a counter and a
    histogram go through the chest's buffer to the wrapped OTLP exporter."""
    from opentelemetry.sdk.metrics import MeterProvider

    with otlp_receiver() as receiver:
        chest = FlaskChestOTel(grpc_exporter(receiver))
        provider = MeterProvider(metric_readers=[chest.metric_reader(60_000)])
        meter = provider.get_meter("shop")
        meter.create_counter("orders").add(3, {"region": "eu"})
        meter.create_histogram("latency").record(0.2)
        try:
            assert provider.force_flush(10_000)
            assert chest.force_flush(10_000)
            points = receiver.points()
        finally:
            provider.shutdown()
            chest.shutdown()
    found = {(p.scope, p.metric): (p.value, p.attributes) for p in points}
    assert found == {
        ("shop", "orders"): (3, {"region": "eu"}),
        ("shop", "latency"): (1, {}),  # a histogram: its count
    }
