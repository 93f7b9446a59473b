"""The records the decorator queues, and how exporters read them.

The collector hands each chest's exporter the records of its routes as they
are (``BufferedExporter.export_records``). The InfluxDB, SQLite and HTTP
exporters encode the decorator's common layout straight from a record, with
no OpenTelemetry point object, attribute dict or exemplar made on the way
(about half the collector's CPU per request, docs/benchmarks.md); any other
record, and any other exporter, goes through the ``MetricsData`` that
``records_metrics_data`` builds, exactly as the records say.

A record is a plain tuple whose fields are read by name through the index
constants ``SINK_KEY`` ... ``TAGS`` (``record[VALUE]``), not a
``typing.NamedTuple``: CPython's garbage collector stops tracking a tuple
whose items are all untracked, but only an exact tuple, never an instance
of a subclass (``gc.is_tracked`` stays True on 3.10 to 3.13), and queued
records must not be tracked (see ``Record``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, Final

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

from ._names import (
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STATUS_CODE,
    SCOPE_NAME,
)
from ._pacing import paced
from ._trace import SpanIds, hex_ids

VERSION = "0.1.0"

FlatAttributes = tuple[Any, ...]
#: A queued measurement: a plain tuple of seven fields, read by the names below
#: (``record[VALUE]``), never by number.
#:
#: - ``SINK_KEY``: the key of the ``@flask_chest`` use that recorded it
#:   (``Recorder.sink``), which names its chests;
#: - ``NAME``: the instrument (``g`` variable) name;
#: - ``VALUE``: a bool, int or float (a text travels in the attribute
#:   ``flask_chest.value``, with value 1);
#: - ``ATTRIBUTES``: the point's own attributes, flat (below); the
#:   decorator's are ``request_id``, ``http.request.method``, ``http.route``,
#:   ``http.response.status_code`` and ``flask_chest.index``, in that order;
#: - ``TIME_UNIX_NANO``: the request's time;
#: - ``SPAN_IDS``: (trace_id, span_id) of the request's span, or None; they
#:   become the point's exemplar;
#: - ``TAGS``: the request's tags (``tag_vars``, the OTel resource from the
#:   environment), flat, every value text; one tuple shared by every record of
#:   a request. A point's own attribute of the same name wins over a tag.
#:
#: Why not a ``NamedTuple``: CPython's collector untracks only exact tuples
#: whose items are all untracked (``gc.is_tracked`` stays True for an
#: instance of a tuple subclass, checked on 3.10-3.13). Every part of a
#: record is an atomic value or a flat tuple of them (attributes as ``(key1,
#: value1, key2, value2, ...)``, not a dict), so the garbage collector stops
#: tracking it in its young generations (tests/test_pipeline.py pins it):
#: records that wait up to an export interval in the queue do not fill the
#: oldest generation, whose full collections pause requests (p99 under
#: gunicorn, docs/benchmarks.md).
Record = tuple[int, str, int | float, FlatAttributes, int, "SpanIds | None", FlatAttributes]
# Final: the type checker reads ``record[VALUE]`` as the field's own type.
SINK_KEY: Final = 0
NAME: Final = 1
VALUE: Final = 2
ATTRIBUTES: Final = 3
TIME_UNIX_NANO: Final = 4
SPAN_IDS: Final = 5
TAGS: Final = 6

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


def point_attributes(record: Record) -> dict[str, Any]:
    """The record's point attributes: its own, then the request's tags
    that none of its own names."""
    attributes = attributes_of(record[ATTRIBUTES])
    tags = record[TAGS]
    if tags:
        for key, value in zip(tags[::2], tags[1::2], strict=True):
            attributes.setdefault(key, value)
    return attributes


#: (request ID, method, route, status code, index): see ``common_layout``.
Layout = tuple[str, str, str, int, int]


def common_layout(record: Record) -> Layout | None:
    """(request ID, method, route, status code, the variable's index) when
    the record's own attributes have the decorator's common layout: exactly
    those, the request ID non-empty text, method and route text, the status
    code an int (no text value, no attribute of the view's own); None for
    anything else. The request's tags (``record[TAGS]``) may be any."""
    flat = record[ATTRIBUTES]
    if (
        len(flat) == 10
        and flat[0] == ATTR_REQUEST_ID
        and flat[2] == ATTR_METHOD
        and flat[4] == ATTR_ROUTE
        and flat[6] == ATTR_STATUS_CODE
        and flat[8] == ATTR_INDEX
    ):
        request_id, method, route, status_code, index = flat[1], flat[3], flat[5], flat[7], flat[9]
        if (
            type(request_id) is str
            and type(method) is str
            and type(route) is str
            and type(status_code) is int
            and type(index) is int
            and request_id
        ):
            return request_id, method, route, status_code, index
    return None


def trace_of(record: Record) -> tuple[str, str] | None:
    """The record's (trace_id, span_id) as ``_trace.point_trace`` gives them
    for its point."""
    span_ids = record[SPAN_IDS]
    return None if span_ids is None else hex_ids(*span_ids)


def record_point(record: Record) -> NumberDataPoint:
    """The OpenTelemetry data point of a record."""
    value = record[VALUE]
    time_unix_nano = record[TIME_UNIX_NANO]
    span_ids = record[SPAN_IDS]
    exemplars = (
        [Exemplar({}, value, time_unix_nano, span_ids[1], span_ids[0])]
        if span_ids is not None
        else []
    )
    return NumberDataPoint(point_attributes(record), 0, time_unix_nano, value, exemplars)


def by_name(records: Iterable[Record]) -> dict[str, list[Record]]:
    """The records of each instrument name, names in order of first record:
    the order of the metrics in ``records_metrics_data``."""
    grouped: dict[str, list[Record]] = {}
    for record in records:
        name = record[NAME]
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
