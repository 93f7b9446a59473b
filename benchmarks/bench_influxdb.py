"""InfluxDB exporter benchmark: encoding speed against influxdb-client's
``Point``, and end-to-end throughput into a real VictoriaMetrics (started
here) against a plain batched influxdb-client write of the same lines:
ready-made before the clock starts (the issue's yardstick), and built with
``Point`` from the same OTel data inside the timing (what an app writes
without this library). The exporter runs with and without gzip, to compare
like with like.

VictoriaMetrics runs on the same 2 cores, and registering one new series per
point (each request ID is a tag) costs it far more CPU than any writer
spends: its CPU per point is printed beside the writers', with what that
makes the ceiling of any writer that must encode the lines against one that
gets them ready (the same CPU budget shared by writer and database).

Run: ``python benchmarks/bench_influxdb.py`` (needs ``victoria-metrics``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
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

from _common import cpu_seconds  # noqa: E402

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
ROUNDS = 5
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


#: (wall seconds, CPU seconds of this process, every thread) of one write.
Timing = tuple[float, float]
#: Seconds VictoriaMetrics' CPU is still counted after a write returned.
SETTLE = 0.5


def through_exporter(url: str, data: MetricsData, gzip: bool) -> Timing:
    """The exporter encoding and delivering ``data`` (5,000 lines a batch)."""
    exporter = InfluxDBMetricExporter(
        url=url, bucket="b", custom_tags=CUSTOM_TAGS, max_batch_items=5_000, flush_interval=60.0,
        enable_gzip=gzip,
    )  # fmt: skip
    started, cpu = time.perf_counter(), time.process_time()
    exporter.export(data)
    assert exporter.force_flush(120_000)
    took = (time.perf_counter() - started, time.process_time() - cpu)
    assert exporter.stats.exported == N and exporter.stats.dropped == 0
    exporter.shutdown()
    return took


def through_client(url: str, data: MetricsData, gzip: bool, ready: bool = True) -> Timing:
    """A plain influxdb-client SYNCHRONOUS write of the same lines, 5,000 a
    batch, with gzip (the client's level 9) or without (the client's
    default); the lines made with ``Point`` before the clock starts
    (``ready``) or inside the timing."""
    client = InfluxDBClient(url=url, token="", org="o", enable_gzip=gzip)
    write_api = client.write_api(write_options=SYNCHRONOUS)
    lines = with_point(data) if ready else []
    started, cpu = time.perf_counter(), time.process_time()
    if not ready:
        lines = with_point(data)
    for start in range(0, N, 5_000):
        write_api.write(
            bucket="b", record=lines[start : start + 5_000], write_precision=WritePrecision.NS
        )
    took = (time.perf_counter() - started, time.process_time() - cpu)
    client.close()
    return took


#: The writers, each a label and a function; the first is the exporter as
#: configured by default.
WRITERS: list[tuple[str, Callable[[str, MetricsData], Timing]]] = [
    ("end-to-end: exporter (encode+gzip+POST)",
     lambda url, data: through_exporter(url, data, True)),
    ("end-to-end: exporter without gzip (encode+POST)",
     lambda url, data: through_exporter(url, data, False)),
    ("end-to-end: influxdb-client SYNCHRONOUS, lines ready, gzip",
     lambda url, data: through_client(url, data, gzip=True)),
    ("end-to-end: influxdb-client SYNCHRONOUS, lines ready, no gzip",
     lambda url, data: through_client(url, data, gzip=False)),
    ("end-to-end: influxdb-client SYNCHRONOUS, Point from the data, no gzip",
     lambda url, data: through_client(url, data, gzip=False, ready=False)),
]  # fmt: skip


def main() -> None:
    data = decorated_data(N)
    exporter = InfluxDBMetricExporter(url="http://127.0.0.1:9", bucket="b", custom_tags=CUSTOM_TAGS)
    ours = list(exporter._encode(data))
    assert ours == with_point(data), "the two encodings must give identical lines"
    ours_s = best_of(3, lambda: list(exporter._encode(data)))
    point_s = best_of(3, lambda: with_point(data))
    exporter.shutdown(timeout_millis=100)

    print(f"{N:,} decorated points (2 variables, unique request IDs), best of 3 for encoding")
    print(f"{'what':<70} {'points/s':>12} {'us/point':>9}")
    for label, took in (
        ("encode: flask_chest_otel", ours_s),
        ("encode: influxdb_client.Point", point_s),
    ):
        print(f"{label:<70} {N / took:>12,.0f} {took / N * 1e6:>9.2f}")
    print(f"encoding speed-up over Point: {point_s / ours_s:.1f}x")

    with tempfile.TemporaryDirectory() as tmp, victoria_metrics(Path(tmp) / "vm") as vm:
        # Rotate the writers, each on fresh series, and take medians:
        # whichever writes first into a new VictoriaMetrics pays its warm-up.
        runs: dict[str, list[Timing]] = {label: [] for label, _ in WRITERS}
        vm_cpu: dict[str, list[float]] = {label: [] for label, _ in WRITERS}
        for round_number in range(ROUNDS):
            for label, write in WRITERS[round_number:] + WRITERS[:round_number]:
                data = decorated_data(N)
                before = cpu_seconds([vm.process.pid])
                runs[label].append(write(vm.url, data))
                time.sleep(SETTLE)
                vm_cpu[label].append(cpu_seconds([vm.process.pid]) - before)
    print(
        f"\nend to end into VictoriaMetrics (same machine), median (min-max) of {ROUNDS} "
        "rounds; CPU: this process, every thread; VM CPU: VictoriaMetrics' meanwhile "
        f"(and {SETTLE} s after); cores busy: both CPUs over 2 cores x wall time"
    )
    print(
        f"{'what':<70} {'points/s':>12} {'us/point':>9} {'CPU us/point':>13} {'spread':>18} "
        f"{'VM CPU us/pt':>13} {'cores busy':>11}"
    )
    medians: dict[str, float] = {}
    per_point: dict[str, tuple[float, float]] = {}
    for label, timings in runs.items():
        walls = [wall for wall, _ in timings]
        medians[label] = wall = statistics.median(walls)
        cpu = statistics.median(cpu for _, cpu in timings)
        vm_us = statistics.median(vm_cpu[label]) / N * 1e6
        per_point[label] = (cpu / N * 1e6, vm_us)
        busy = statistics.median(
            (cpu_s + vm_s) / (2 * wall_s)
            for (wall_s, cpu_s), vm_s in zip(timings, vm_cpu[label], strict=True)
        )
        spread = f"{N / max(walls):,.0f}-{N / min(walls):,.0f}"
        print(
            f"{label:<70} {N / wall:>12,.0f} {wall / N * 1e6:>9.2f} {cpu / N * 1e6:>13.2f} "
            f"{spread:>18} {vm_us:>13.2f} {busy:>11.2f}"
        )
    ours, ours_raw, client_gzip, client_raw, client_point = (label for label, _ in WRITERS)
    # With the cores busy, points/s ~ 2 cores / (writer CPU + VM CPU) per
    # point: a writer that must encode pays at least the encoding on top of
    # what the ready-lines client pays.
    client_cpu, client_vm = per_point[client_raw]
    encode_us = ours_s / N * 1e6
    ceiling = (client_cpu + client_vm) / (client_cpu + client_vm + encode_us)
    print(
        f"ceiling of any writer that encodes, against the client with lines ready, no gzip "
        f"(CPU model): {ceiling:.2f} = ({client_cpu:.2f} + {client_vm:.2f}) / "
        f"({client_cpu:.2f} + {client_vm:.2f} + {encode_us:.2f} encoding) us/point"
    )
    print(f"end-to-end: exporter / faster plain client: "
          f"{min(medians[client_gzip], medians[client_raw]) / medians[ours]:.2f}")
    print(f"like for like: exporter / client, both gzip: "
          f"{medians[client_gzip] / medians[ours]:.2f}; neither: "
          f"{medians[client_raw] / medians[ours_raw]:.2f}; exporter (default) / client "
          f"building lines with Point: {medians[client_point] / medians[ours]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
