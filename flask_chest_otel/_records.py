"""The records the decorator queues, and how exporters read them.

The collector hands each chest's exporter the records of its routes as they
are (``BufferedExporter.export_records``). The InfluxDB, SQLite and HTTP
exporters encode the decorator's common layout straight from a record, with
no OpenTelemetry point object, attribute dict or exemplar made on the way
(about half the collector's CPU per request, docs/benchmarks.md); any other
record, and any other exporter, goes through the ``MetricsData`` that
``records_metrics_data`` builds, exactly as the records say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

from opentelemetry.sdk.metrics import Exemplar
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

from ._names import ATTR_INDEX, ATTR_METHOD, ATTR_REQUEST_ID, ATTR_ROUTE, SCOPE_NAME
from ._pacing import paced
from ._trace import SpanIds, hex_ids

VERSION = "0.1.0"

#: (sink key, instrument name, value, attributes, time_unix_nano, span IDs or
#: None). Every part is an atomic value or a flat tuple of them (the
#: attributes as ``(key1, value1, key2, value2, ...)``, not a dict), so the
#: garbage collector stops tracking a record in its young generations
#: (tests/test_pipeline.py pins it): records that wait up to an export
#: interval in the queue do not fill the oldest generation, whose full
#: collections pause requests (p99 under gunicorn, docs/benchmarks.md).
#: ``value`` is a bool, int or float (a text travels in the attribute
#: ``flask_chest.value`` with value 1); the span IDs become the point's exemplar.
FlatAttributes = tuple[Any, ...]
Record = tuple[int, str, int | float, FlatAttributes, int, "SpanIds | None"]

#: The resource and scope of the decorated variables' MetricsData.
RESOURCE = Resource.create()
SCOPE = InstrumentationScope(SCOPE_NAME, VERSION)


def flat_attributes(attributes: Mapping[str, Any]) -> FlatAttributes:
    """``{k1: v1, k2: v2}`` as ``(k1, v1, k2, v2)``: see ``Record``."""
    # Through a list: tuple() of an iterator grows the tuple, which moves it
    # behind the record in the collector's list, so the record would be
    # examined first, while its attributes are still tracked, and kept.
    return tuple(list(chain.from_iterable(attributes.items())))


def attributes_of(flat: FlatAttributes) -> dict[str, Any]:
    """The dict ``flat_attributes`` flattened."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def common_layout(record: Record) -> tuple[str, str, str] | None:
    """(request ID, method, route) when the record's attributes have the
    decorator's common layout: exactly those three, the request ID non-empty
    text and the others text, then the variable's index (no text value, no
    attribute of the view's own); None for anything else."""
    flat = record[3]
    if (
        len(flat) == 8
        and flat[0] == ATTR_REQUEST_ID
        and flat[2] == ATTR_METHOD
        and flat[4] == ATTR_ROUTE
        and flat[6] == ATTR_INDEX
    ):
        request_id, method, route = flat[1], flat[3], flat[5]
        if type(request_id) is str and type(method) is str and type(route) is str and request_id:
            return request_id, method, route
    return None


def trace_of(record: Record) -> tuple[str, str] | None:
    """The record's (trace_id, span_id) as ``_trace.point_trace`` gives them
    for its point."""
    span_ids = record[5]
    return None if span_ids is None else hex_ids(*span_ids)


def record_point(record: Record) -> NumberDataPoint:
    """The OpenTelemetry data point of a record."""
    _key, _name, value, attributes, time_unix_nano, span_ids = record
    exemplars = (
        [Exemplar({}, value, time_unix_nano, span_ids[1], span_ids[0])]
        if span_ids is not None
        else []
    )
    return NumberDataPoint(attributes_of(attributes), 0, time_unix_nano, value, exemplars)


def by_name(records: Iterable[Record]) -> dict[str, list[Record]]:
    """The records of each instrument name, names in order of first record:
    the order of the metrics in ``records_metrics_data``."""
    grouped: dict[str, list[Record]] = {}
    for record in records:
        name = record[1]
        if name in grouped:
            grouped[name].append(record)
        else:
            grouped[name] = [record]
    return grouped


def records_metrics_data(records: Sequence[Record]) -> MetricsData:
    """The records as MetricsData: one gauge per instrument name (in order of
    first record), one point per record, the span IDs as its exemplar."""
    metrics = [
        Metric(
            name=name,
            description="",
            unit="",
            data=Gauge(data_points=[record_point(record) for record in paced(group)]),
        )
        for name, group in by_name(records).items()
    ]
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=RESOURCE,
                scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url="")],
                schema_url="",
            )
        ]
    )
