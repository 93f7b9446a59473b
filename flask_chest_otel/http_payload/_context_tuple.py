"""Context tuples: what a payload generator receives, made from MetricsData.

A decorated variable (scope ``flask_chest_otel``) becomes one tuple
``(variable_name, value, request_id)``; the tuples of one request are grouped
in the order the decorator recorded them. Any other OTel metric becomes one
tuple per data point, ``(metric_name, value, None)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)

from .._names import (
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STATUS_CODE,
    ATTR_STRING_VALUE,
    ATTR_TIME,
    SCOPE_NAME,
)
from .._pacing import paced
from .._records import (
    NAME,
    TAGS,
    TIME_UNIX_NANO,
    VALUE,
    Layout,
    Record,
    attributes_of,
    by_name,
    common_layout,
    flat_attributes,
    record_point,
    trace_of,
)
from .._trace import point_trace

T = TypeVar("T")
#: See ``flat_tuple``.
FlatTuple = tuple[Any, ...]

#: How the decorator's attributes are named in ``ContextTuple.attributes``
#: (the InfluxDB tag names).
_DECORATED_ATTRIBUTES = {
    ATTR_METHOD: "method",
    ATTR_ROUTE: "route",
    ATTR_STATUS_CODE: "status_code",
}


class _AttributesOfRecord:
    """``ContextTuple.attributes`` of a tuple made from a recorder's record
    (``_common_context_tuple``): the dict is made on its first read, then
    kept in the tuple's own ``__dict__``, which hides this descriptor from
    then on (it has no ``__set__``). Most payload generators never read
    the attributes (the sample usage's does not): a per-request payload then
    costs no dict per variable. A tuple made with ``attributes`` has them in
    its ``__dict__`` from the start."""

    def __get__(self, instance: ContextTuple | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        own = instance.__dict__
        record = own.get("_record")
        if record is None:  # another thread made them meanwhile
            return own["attributes"]
        layout = common_layout(record)
        assert layout is not None  # only records of the common layout are kept
        attributes = own.setdefault("attributes", _record_attributes(record, layout))
        own.pop("_record", None)
        return attributes


class ContextTuple(tuple[str, Any, "str | None"]):
    """``(variable_name, variable_value, request_id)``, plus what OTel knew.

    The value keeps its type: a ``bool``, an ``int``, a ``float`` (possibly
    NaN or an infinity) or the ``str`` a text value was.

    Attributes:
        attributes: the data point's attributes; for a decorated variable
            ``method``, ``route`` and ``status_code`` (an int; the request ID
            is the tuple's third item), the request's tags (``tag_vars``,
            ``service.name`` and the rest of the OTel resource from the
            environment) and ``trace_id``/``span_id`` (lower-case hex) when
            the request ran in a recording span.
        time_unix_nano: the request's time (decorated variables) or the data
            point's time (other metrics); 0 if unknown.
        kind: ``"gauge"`` (a gauge, a decorated variable, or the level a
            cumulative non-monotonic sum holds), ``"counter"`` (a delta sum:
            the change over the interval, negative for an UpDownCounter going
            down) or ``"cumulative_counter"`` (a cumulative monotonic sum).
    """

    attributes: Mapping[str, Any] = _AttributesOfRecord()  # type: ignore[assignment]
    time_unix_nano: int
    kind: str

    def __new__(
        cls,
        name: str,
        value: Any,
        request_id: str | None,
        attributes: Mapping[str, Any] | None = None,
        time_unix_nano: int = 0,
        kind: str = "gauge",
    ) -> ContextTuple:
        self = super().__new__(cls, (name, value, request_id))
        self.attributes = attributes or {}
        self.time_unix_nano = time_unix_nano
        self.kind = kind
        return self

    # A plain tuple's pickling would call __new__ with one argument.
    def __getnewargs__(self) -> tuple[Any, ...]:
        return (*self, dict(self.attributes), self.time_unix_nano, self.kind)

    @property
    def name(self) -> str:
        return self[0]

    @property
    def value(self) -> Any:
        return self[1]

    @property
    def request_id(self) -> str | None:
        return self[2]


class _Requests(Generic[T]):
    """Groups the items of decorated variables by request, ordered as
    ``context_tuples`` orders them."""

    def __init__(self) -> None:
        # request key -> (time, first seen, [(position, item)])
        self._entries: dict[tuple[Any, ...], tuple[int, int, list[tuple[int, T]]]] = {}

    def add(self, key: tuple[Any, ...], time_unix_nano: int, position: int, item: T) -> None:
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = (time_unix_nano, len(entries), [])
        entry[2].append((position, item))

    def groups(self) -> list[list[T]]:
        ordered = sorted(self._entries.values(), key=lambda entry: (entry[0], entry[1]))
        return [
            [item for _, item in sorted(entry[2], key=lambda pair: pair[0])] for entry in ordered
        ]


def context_tuples(
    metrics_data: MetricsData, unsupported: Callable[[Metric], None]
) -> tuple[list[list[ContextTuple]], list[ContextTuple]]:
    """(the tuples of each request, in request time order; the tuples of
    every other metric). ``unsupported`` is called for a metric that has no
    tuple layout (an exponential histogram)."""
    requests_: _Requests[ContextTuple] = _Requests()
    others: list[ContextTuple] = []
    order = 0
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            decorated = scope_metrics.scope.name == SCOPE_NAME
            for metric in scope_metrics.metrics:
                order += 1
                if not decorated:
                    others.extend(_metric_tuples(metric, unsupported))
                    continue
                for point in paced(metric.data.data_points):
                    key, item, index = _decorated_tuple(
                        metric.name,
                        point,  # type: ignore[arg-type]
                    )
                    requests_.add(key, item.time_unix_nano, order if index is None else index, item)
    return requests_.groups(), others


def record_groups(records: Sequence[Record]) -> list[list[ContextTuple]]:
    """``context_tuples``' groups of the recorder's records (all decorated)."""
    return _record_groups(records, _same, _common_context_tuple)


def record_flat_groups(records: Sequence[Record]) -> list[list[FlatTuple]]:
    """``record_groups`` with each tuple as ``flat_tuple`` makes it."""
    return _record_groups(records, flat_tuple, _common_flat_tuple)


def flat_tuple(item: ContextTuple) -> FlatTuple:
    """``(name, value, request_id, time_unix_nano, kind, key1, value1, ...)``:
    a context tuple as atomic values, its attributes inline."""
    return (*item, item.time_unix_nano, item.kind, *flat_attributes(item.attributes))


def from_flat_tuple(flat: FlatTuple | ContextTuple) -> ContextTuple:
    """The ContextTuple ``flat_tuple`` flattened (as is if it is one already: a
    spool file written before batched mode buffered flat tuples)."""
    if isinstance(flat, ContextTuple):
        return flat
    name, value, request_id, time_unix_nano, kind = flat[:5]
    return ContextTuple(name, value, request_id, attributes_of(flat[5:]), time_unix_nano, kind)


def _record_groups(
    records: Sequence[Record],
    make: Callable[[ContextTuple], T],
    common: Callable[[str, Record, Layout], T],
) -> list[list[T]]:
    # A record of the common layout (``_records.common_layout``) makes its
    # item with ``common``, without a point or a ContextTuple first.
    groups = _consecutive_groups(records, common)
    if groups is not None:
        return groups
    requests_: _Requests[T] = _Requests()
    for order, (name, group) in enumerate(by_name(records).items(), start=1):
        for record in paced(group):
            layout = common_layout(record)
            if layout is None:
                key, item, index = _decorated_tuple(name, record_point(record))
                position = order if index is None else index
                requests_.add(key, item.time_unix_nano, position, make(item))
                continue
            request_id, method, route, _status_code, index = layout
            time_unix_nano = record[TIME_UNIX_NANO]
            key = (request_id, time_unix_nano, method, route)
            requests_.add(key, time_unix_nano, index, common(name, record, layout))
    return requests_.groups()


def _consecutive_groups(
    records: Sequence[Record], common: Callable[[str, Record, Layout], T]
) -> list[list[T]] | None:
    """``_record_groups``' groups, read in one pass, when the records come as
    a worker thread queues them: each of the common layout, each request's
    records one after another with rising indices, the requests' times
    rising. Their order is then the groups' order, with nothing to sort.
    None as soon as one record breaks that (the general path then)."""
    groups: list[list[T]] = []
    group: list[T] = []
    last_key: tuple[Any, ...] = ()
    last_time = -1
    last_index = 0
    for record in paced(records):
        layout = common_layout(record)
        if layout is None:
            return None
        time_unix_nano = record[TIME_UNIX_NANO]
        key = (layout[0], time_unix_nano, layout[1], layout[2])
        index = layout[4]
        if key == last_key:
            if index <= last_index:
                return None
        elif time_unix_nano > last_time:
            group = []
            groups.append(group)
            last_key, last_time = key, time_unix_nano
        else:
            return None
        last_index = index
        group.append(common(record[NAME], record, layout))
    return groups


def _same(item: ContextTuple) -> ContextTuple:
    return item


def _common_context_tuple(name: str, record: Record, layout: Layout) -> ContextTuple:
    """The tuple of a record of the common layout; its attributes are made
    from the record when first read (``_AttributesOfRecord``)."""
    item = _new_tuple(ContextTuple, (name, record[VALUE], layout[0]))
    own = item.__dict__
    own["time_unix_nano"] = record[TIME_UNIX_NANO]
    own["kind"] = "gauge"
    own["_record"] = record
    return item


_new_tuple = tuple.__new__


def _record_attributes(record: Record, layout: Layout) -> dict[str, Any]:
    """``ContextTuple.attributes`` of a record of the common layout."""
    _request_id, method, route, status_code, _index = layout
    attributes: dict[str, Any] = {"method": method, "route": route, "status_code": status_code}
    tags = record[TAGS]
    if tags:
        attributes.update(zip(tags[::2], tags[1::2], strict=True))
    trace = trace_of(record)
    if trace is not None:
        attributes["trace_id"], attributes["span_id"] = trace
    return attributes


def _common_flat_tuple(name: str, record: Record, layout: Layout) -> FlatTuple:
    request_id, method, route, status_code, _index = layout
    trace = trace_of(record)
    return (
        name, record[VALUE], request_id, record[TIME_UNIX_NANO], "gauge",
        "method", method, "route", route, "status_code", status_code, *record[TAGS],
        *(() if trace is None else ("trace_id", trace[0], "span_id", trace[1])),
    )  # fmt: skip


def _decorated_tuple(
    name: str, point: NumberDataPoint
) -> tuple[tuple[Any, ...], ContextTuple, int | None]:
    """(the request's key, the tuple, its position among the request's
    variables when the decorator gave one)."""
    attributes: dict[str, Any] = {}
    value: Any = point.value
    request_id: str | None = None
    index: int | None = None
    time_unix_nano = point.time_unix_nano
    through_sdk = False
    for attribute, attribute_value in (point.attributes or {}).items():
        if attribute == ATTR_INDEX:
            index = int(attribute_value)  # type: ignore[arg-type]
        elif attribute == ATTR_REQUEST_ID:
            request_id = str(attribute_value)
        elif attribute == ATTR_STRING_VALUE:
            value = str(attribute_value)
        elif attribute == ATTR_TIME:
            time_unix_nano = int(attribute_value)  # type: ignore[arg-type]
            through_sdk = True
        else:
            attributes[_DECORATED_ATTRIBUTES.get(attribute, attribute)] = attribute_value
    if not through_sdk:  # the SDK's exemplar is its sample: see influxdb._rows.decorated_row
        _add_trace(attributes, point)
    item = ContextTuple(name, value, request_id, attributes, time_unix_nano, "gauge")
    # Two requests may share an ID (a clock-based generator): their times differ.
    key = (request_id, time_unix_nano, attributes.get("method"), attributes.get("route"))
    return key, item, index


def _add_trace(attributes: dict[str, Any], point: NumberDataPoint) -> None:
    link = point_trace(point)
    if link is not None:
        attributes["trace_id"], attributes["span_id"] = link


def _sum_kind(data: Sum) -> str:
    # A delta is a change over the interval, whether or not the sum may go
    # down (an UpDownCounter): read as a gauge it would pass for the level.
    if data.aggregation_temporality is not AggregationTemporality.CUMULATIVE:
        return "counter"
    return "cumulative_counter" if data.is_monotonic else "gauge"


def _metric_tuples(metric: Metric, unsupported: Callable[[Metric], None]) -> list[ContextTuple]:
    data = metric.data
    name = metric.name
    out: list[ContextTuple] = []
    if isinstance(data, (Gauge, Sum)):
        kind = _sum_kind(data) if isinstance(data, Sum) else "gauge"
        for point in data.data_points:
            attributes = dict(point.attributes or {})
            _add_trace(attributes, point)
            at = point.time_unix_nano
            out.append(ContextTuple(name, point.value, None, attributes, at, kind))
    elif isinstance(data, Histogram):
        kind = (
            "cumulative_counter"
            if data.aggregation_temporality is AggregationTemporality.CUMULATIVE
            else "counter"
        )
        for hpoint in data.data_points:
            attributes = dict(hpoint.attributes or {})
            at = hpoint.time_unix_nano
            out.append(ContextTuple(f"{name}_count", hpoint.count, None, attributes, at, kind))
            out.append(ContextTuple(f"{name}_sum", hpoint.sum, None, attributes, at, kind))
            if hpoint.count:
                out.append(ContextTuple(f"{name}_min", hpoint.min, None, attributes, at, "gauge"))
                out.append(ContextTuple(f"{name}_max", hpoint.max, None, attributes, at, "gauge"))
            cumulative = 0
            bounds = [*(str(float(bound)) for bound in hpoint.explicit_bounds), "+Inf"]
            for bound, count in zip(bounds, hpoint.bucket_counts, strict=False):
                cumulative += count
                bucket_attributes = {**attributes, "le": bound}
                out.append(
                    ContextTuple(f"{name}_bucket", cumulative, None, bucket_attributes, at, kind)
                )
    else:  # ExponentialHistogram: no tuple layout that generators could rely on
        unsupported(metric)
    return out
