"""The spool's encodings (``flask_chest_otel._spool_codecs``): each
exporter's items come back from the spool as they went in, through its own
``_spool_dumps``/``_spool_loads``, and anything outside an encoding's schema
is refused, never run."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Buckets,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from flask_chest_otel._delivery import BufferedExporter
from flask_chest_otel._spool_codecs import loads_row, loads_value
from flask_chest_otel.http_payload._context_tuple import ContextTuple
from flask_chest_otel.http_payload._exporter import HTTPPayloadMetricExporter, Payload
from flask_chest_otel.influxdb import InfluxDBMetricExporter
from flask_chest_otel.otel import OTelExporterAdapter, _PointItem
from flask_chest_otel.sqlite import SQLiteMetricExporter
from flask_chest_otel.testing import CapturedMeasurement, InMemoryMetricExporter
from flask_chest_otel.user_chests import _WriteExporter

from .test_delivery import ScriptedExporter
from .test_otel_chest import KeepingExporter

RESOURCE = Resource({"service.name": "app", "list": ("a", "b")}, "https://schema")
SCOPE = InstrumentationScope("flask_chest_otel", "1.0", None, {"k": 1})
EXEMPLAR = Exemplar({"e": "x"}, 2.5, 7, span_id=0x1234, trace_id=(1 << 127) + 5)


def point_item(data: Any, point: Any) -> _PointItem:
    return _PointItem(RESOURCE, SCOPE, Metric("m", "about m", "ms", data), point)


POINT_ITEMS = [
    point_item(Gauge([]), NumberDataPoint({"a": True}, 1, 2, 3, [EXEMPLAR])),
    point_item(
        Sum([], AggregationTemporality.DELTA, True), NumberDataPoint({"a": 1.5}, 1, 2, 0.25)
    ),
    point_item(
        Histogram([], AggregationTemporality.CUMULATIVE),
        HistogramDataPoint({}, 1, 2, 3, 6.0, [1, 2, 0], [1.0, 5.0], 1.0, 4.0, [EXEMPLAR]),
    ),
    point_item(
        ExponentialHistogram([], AggregationTemporality.DELTA),
        ExponentialHistogramDataPoint(
            {"b": "x"}, 1, 2, 3, 6, 2, 0, Buckets(-1, [1, 2]), Buckets(0, []), 0, 1, 4
        ),
    ),
]


def exporters(tmp_path: Path) -> dict[str, BufferedExporter[Any]]:
    return {
        "influxdb": InfluxDBMetricExporter(url="http://localhost:8086", token="t", bucket="b"),
        "sqlite": SQLiteMetricExporter(str(tmp_path / "db.sqlite3")),
        "http": HTTPPayloadMetricExporter(url="http://localhost/x", payload_generator=list),
        "writer": _WriteExporter(print, name="writer"),
        "otel": OTelExporterAdapter(KeepingExporter(), name="otel"),
        "recording": InMemoryMetricExporter(),
        "default": ScriptedExporter(list),
    }


CASES: list[tuple[str, Any]] = [
    ("influxdb", b"m,t=a\\ b value=1i,text=\"\xc3\xa9\" 1700000000000000000"),
    ("sqlite", ("2024", 17, "m", "value", 1.5, None, "float", "id", "GET", "/", None, "a", "b",
                200)),  # fmt: skip
    ("sqlite", ("2024", 17, "m", "value_str", "nan", "nan", "float", None, None, None, "{}", None,
                None, None)),  # fmt: skip
    ("http", Payload(b"\x00\xff{}", True, "request \udc80id", 1)),
    ("http", (("x", 1, "id", 5, "gauge", "method", "GET", "seq", ("a", "b")), ("y", "t", None, 0,
              "counter"))),  # fmt: skip
    ("writer", [ContextTuple("a", True, "id", {"method": "GET", "seq": (1, 2)}, 5, "gauge"),
                ContextTuple("b", math.inf, None, {}, 0, "counter")]),  # fmt: skip
    *(("otel", item) for item in POINT_ITEMS),
    ("recording", CapturedMeasurement("a", 2, "id", "GET", "/", 5, {"x": "y"}, 1, "ab", "cd")),
    ("default", (1, [2.5, None], {"k": b"\x00"}, "s", True)),
]


def same(left: Any, right: Any) -> bool:
    if isinstance(left, float) and math.isnan(left):
        return isinstance(right, float) and math.isnan(right)
    if isinstance(left, _PointItem):
        return (
            dict(left.resource.attributes) == dict(right.resource.attributes)
            and left.resource.schema_url == right.resource.schema_url
            and left.scope == right.scope
            and left.metric == right.metric
            and left.point == right.point
        )
    if isinstance(left, ContextTuple):
        return (
            tuple(left) == tuple(right)
            and type(right) is ContextTuple
            and dict(left.attributes) == dict(right.attributes)
            and (left.time_unix_nano, left.kind) == (right.time_unix_nano, right.kind)
        )
    if isinstance(left, (tuple, list)):
        return (
            type(left) is type(right)
            and len(left) == len(right)
            and all(same(a, b) for a, b in zip(left, right, strict=True))
        )
    return type(left) is type(right) and bool(left == right)


@pytest.mark.parametrize(("kind", "item"), CASES, ids=[case[0] for case in CASES])
def test_an_item_comes_back_from_the_spool_as_it_went_in(
    tmp_path: Path, kind: str, item: Any
) -> None:
    exporter = exporters(tmp_path)[kind]
    try:
        data = exporter._spool_dumps(item)
        assert b"__reduce__" not in data and not data.startswith(b"\x80")  # not a pickle
        assert same(item, exporter._spool_loads(data))
    finally:
        exporter.shutdown(timeout_millis=10)


def test_each_kind_of_exporter_names_its_destination_in_its_identity(tmp_path: Path) -> None:
    made = exporters(tmp_path)
    try:
        identities = {name: exporter._spool_identity() for name, exporter in made.items()}
    finally:
        for exporter in made.values():
            exporter.shutdown(timeout_millis=10)
    influx = ("influxdb", "InfluxDB", "http://localhost:8086 org None bucket 'b'")
    assert identities["influxdb"] == influx
    database = f"{tmp_path / 'db.sqlite3'} table flask_chest"
    assert identities["sqlite"] == ("sqlite", "SQLite", database)
    assert identities["http"] == ("http-payload", "http://localhost/x", "http://localhost/x")
    assert identities["writer"][0] == "writer"
    assert identities["otel"] == ("otel", "otel", "tests.test_otel_chest.KeepingExporter")
    assert len(set(identities.values())) == len(identities)


class Boom:
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (eval, ("1/0",))


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps(Boom()),
        b'{"__class__": "os.system"}',
        b'[1, 2, {"__reduce__": 1}]',
        b"[" * 10 + b"]" * 10,
    ],
)
def test_anything_outside_an_encoding_is_refused(data: bytes) -> None:
    for loads in (loads_value, lambda data: loads_row(data, 13)):
        with pytest.raises((ValueError, TypeError)):
            loads(data)
