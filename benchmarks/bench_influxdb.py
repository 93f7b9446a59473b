"""InfluxDB exporter benchmark: encoding speed against influxdb-client's
``Point``, and end-to-end throughput into a real VictoriaMetrics (started
here) against a plain batched influxdb-client write of the same lines.

Run: ``python benchmarks/bench_influxdb.py`` (needs ``victoria-metrics``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from influxdb_client import Point
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_chest_otel._names import (  # noqa: E402
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    SCOPE_NAME,
)
from flask_chest_otel.influxdb import InfluxDBMetricExporter  # noqa: E402
from tests.servers import victoria_metrics  # noqa: E402

N = 100_000
ROUNDS = 3
CUSTOM_TAGS = {"app": "bench app"}
TAG_NAMES = {ATTR_REQUEST_ID: "request_id", ATTR_METHOD: "method", ATTR_ROUTE: "route"}


def decorated_data(n: int) -> MetricsData:
    """n decorated points as the recorder hands them over: two variables,
    a fresh request ID each, the request's time."""
    now = time.time_ns()
    by_name: dict[str, list[NumberDataPoint]] = {"transaction": [], "response_time": []}
    for i in range(n // 2):
        attributes = {ATTR_REQUEST_ID: str(uuid.uuid4()), ATTR_METHOD: "POST", ATTR_ROUTE: "/api"}
        by_name["transaction"].append(
            NumberDataPoint({**attributes, ATTR_INDEX: 0}, 0, now + i * 1000, 1.0)
        )
        by_name["response_time"].append(
            NumberDataPoint({**attributes, ATTR_INDEX: 1}, 0, now + i * 1000, 0.001 * (i % 997))
        )
    metrics = [Metric(name, "", "", Gauge(points)) for name, points in by_name.items()]
    scope = InstrumentationScope(SCOPE_NAME, "0.1.0")
    return MetricsData([ResourceMetrics(Resource.create(), [ScopeMetrics(scope, metrics, "")], "")])


def with_point(data: MetricsData) -> list[bytes]:
    """The same lines through influxdb-client's Point, as a user would build them."""
    lines = []
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    p = Point(metric.name)
                    for key, value in CUSTOM_TAGS.items():
                        p.tag(key, value)
                    for key, value in (point.attributes or {}).items():
                        if key in TAG_NAMES:
                            p.tag(TAG_NAMES[key], value)
                    p.field("value", float(point.value))
                    p.time(point.time_unix_nano, WritePrecision.NS)
                    lines.append(p.to_line_protocol().encode())
    return lines


def best_of(runs: int, work: object) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


def through_exporter(url: str, data: MetricsData) -> float:
    """Seconds for the exporter to encode and deliver ``data`` (5,000 lines a batch)."""
    exporter = InfluxDBMetricExporter(
        url=url, bucket="b", custom_tags=CUSTOM_TAGS, max_batch_items=5_000, flush_interval=60.0
    )
    started = time.perf_counter()
    exporter.export(data)
    assert exporter.force_flush(120_000)
    took = time.perf_counter() - started
    assert exporter.stats.exported == N and exporter.stats.dropped == 0
    exporter.shutdown()
    return took


def through_client(url: str, data: MetricsData) -> float:
    """Seconds for a plain influxdb-client SYNCHRONOUS write of the same lines,
    ready-made, 5,000 a batch, gzip on as the exporter's."""
    client = InfluxDBClient(url=url, token="", org="o", enable_gzip=True)
    write_api = client.write_api(write_options=SYNCHRONOUS)
    lines = with_point(data)
    started = time.perf_counter()
    for start in range(0, N, 5_000):
        write_api.write(
            bucket="b", record=lines[start : start + 5_000], write_precision=WritePrecision.NS
        )
    took = time.perf_counter() - started
    client.close()
    return took


def main() -> None:
    data = decorated_data(N)
    exporter = InfluxDBMetricExporter(url="http://127.0.0.1:9", bucket="b", custom_tags=CUSTOM_TAGS)
    ours = list(exporter._encode(data))
    assert ours == with_point(data), "the two encodings must give identical lines"
    ours_s = best_of(3, lambda: list(exporter._encode(data)))
    point_s = best_of(3, lambda: with_point(data))
    exporter.shutdown(timeout_millis=100)

    rows = [
        ("encode: flask_chest_otel", N / ours_s, ours_s / N * 1e6),
        ("encode: influxdb_client.Point", N / point_s, point_s / N * 1e6),
    ]

    with tempfile.TemporaryDirectory() as tmp, victoria_metrics(Path(tmp) / "vm") as vm:
        # Alternate the two writers, each on fresh series, and take medians:
        # whichever writes first into a new VictoriaMetrics pays its warm-up.
        e2e_runs: list[float] = []
        plain_runs: list[float] = []
        for round_number in range(ROUNDS):
            writers = [(e2e_runs, through_exporter), (plain_runs, through_client)]
            if round_number % 2:
                writers.reverse()
            for runs, write in writers:
                runs.append(write(vm.url, decorated_data(N)))
        e2e_s, plain_s = statistics.median(e2e_runs), statistics.median(plain_runs)
        rows += [
            ("end-to-end: exporter (encode+gzip+POST)", N / e2e_s, e2e_s / N * 1e6),
            (
                "end-to-end: influxdb-client SYNCHRONOUS, lines ready",
                N / plain_s,
                plain_s / N * 1e6,
            ),
        ]

    print(f"{N:,} decorated points (2 variables, unique request IDs), best of 3 for encoding")
    print(f"{'what':<52} {'points/s':>12} {'us/point':>9}")
    for label, rate, micros in rows:
        print(f"{label:<52} {rate:>12,.0f} {micros:>9.2f}")
    print(f"encoding speed-up over Point: {point_s / ours_s:.1f}x")
    print(f"end-to-end: exporter / plain client: {plain_s / e2e_s:.2f} (median of {ROUNDS} rounds)")


if __name__ == "__main__":
    main()
