"""Series count after 100,000 requests, ``request_id`` as a tag (the
default, flask-chest's layout) against ``request_id_field=True``, on a real
VictoriaMetrics and a real InfluxDB 1.6 (both started here).

Each request records one variable (``transaction``) with its own request ID,
through ``InfluxDBMetricExporter`` exactly as the chest sends it.

Run: ``python benchmarks/influxdb_series.py [requests]`` (needs
``victoria-metrics`` and ``influxd``).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

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
from tests.servers import http, influxdb1, victoria_metrics  # noqa: E402

BATCH = 10_000


def requests_data(count: int, start: int) -> MetricsData:
    """``count`` requests of one variable each, as the recorder hands them over."""
    points = [
        NumberDataPoint(
            {
                ATTR_REQUEST_ID: str(uuid.uuid4()),
                ATTR_METHOD: "POST",
                ATTR_ROUTE: "/orders",
                ATTR_INDEX: 0,
            },
            0,
            start + i * 1_000,
            i % 7,
        )
        for i in range(count)
    ]
    metric = Metric("transaction", "", "", Gauge(points))
    scope = ScopeMetrics(InstrumentationScope(SCOPE_NAME), [metric], "")
    return MetricsData([ResourceMetrics(Resource.get_empty(), [scope], "")])


def send(exporter: InfluxDBMetricExporter, requests: int) -> None:
    start = time.time_ns() - requests * 1_000
    for offset in range(0, requests, BATCH):
        exporter.export(requests_data(min(BATCH, requests - offset), start + offset * 1_000))
    assert exporter.force_flush(300_000)
    assert exporter.stats.exported == requests, exporter.stats
    exporter.shutdown()


def vm_series(url: str, suite: str) -> int:
    """Series of the run, counted by VictoriaMetrics' own query (its series
    listing API stops at 30,000)."""
    http("GET", f"{url}/internal/force_flush")
    query = urllib.parse.urlencode(
        {"query": f'count({{__name__=~"transaction_.*",suite="{suite}"}})'}
    )
    status, body = http("GET", f"{url}/api/v1/query?{query}")
    assert status == 200, body
    return int(json.loads(body)["data"]["result"][0]["value"][1])


def influx_series(server: object, db: str) -> int:
    result = server.query("SHOW SERIES CARDINALITY", db)  # type: ignore[attr-defined]
    return int(result["results"][0]["series"][0]["values"][0][0])


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with victoria_metrics(Path(tmp) / "vm") as vm, influxdb1(Path(tmp) / "influx") as influx:
            for field in (False, True):
                db = f"series_{'field' if field else 'tag'}"
                influx.create_database(db)
                send(InfluxDBMetricExporter(url=influx.url, database=db, request_id_field=field),
                     requests)  # fmt: skip
                suite = db
                send(
                    InfluxDBMetricExporter(
                        url=vm.url, bucket="b", custom_tags={"suite": suite},
                        request_id_field=field,
                    ),
                    requests,
                )  # fmt: skip
                time.sleep(2)  # VictoriaMetrics registers new series in the background
                rows.append((
                    "field" if field else "tag (default)",
                    influx_series(influx, db),
                    vm_series(vm.url, suite),
                ))  # fmt: skip
    print(f"{requests:,} requests, one variable each")
    print(f"{'request_id':<16} {'InfluxDB 1.6 series':>20} {'VictoriaMetrics series':>24}")
    for label, in_influx, in_vm in rows:
        print(f"{label:<16} {in_influx:>20,} {in_vm:>24,}")


if __name__ == "__main__":
    main()
