"""How each exporter's items are written in the spool: bytes in a fixed
schema per kind of exporter, read back by checking that schema, so that a
spool file can hold data and never code.

- InfluxDB: the line's bytes as they are.
- SQLite: the row, a JSON array of text, numbers and nulls.
- HTTP payload writer: a ``Payload`` as ``P | is_json, requests, label
  length | label | body``; a batched request's tuples as ``T`` and a JSON
  array of flat tuples.
- Users' chests: one request's ``ContextTuple``s as JSON arrays.
- ``FlaskChestOTel``: one point and where it belongs (resource, scope,
  metric) as JSON, with the kind of metric named.
- ``flask_chest_otel.testing``: a ``CapturedMeasurement``'s fields.
- Anything else (``BufferedExporter``'s default): JSON in which tuples,
  lists, dicts and bytes are tagged (``dumps_value``); other types raise.

JSON keeps what the items need: ``true`` is not ``1``, ``1.0`` stays a float,
NaN and the infinities are written as Python's ``json`` writes them, and a
lone surrogate in a text survives (written ``\\udXXX``). Every reader raises
ValueError (or TypeError) on anything outside its schema.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

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

if TYPE_CHECKING:  # imported where used: the HTTP package imports this module
    from .http_payload._context_tuple import ContextTuple

T = TypeVar("T")

_encode = json.JSONEncoder(separators=(",", ":")).encode
_ATOMS = (str, int, float, type(None))


def _json(value: Any) -> bytes:
    return _encode(value).encode()


def _atom(value: Any) -> Any:
    if isinstance(value, _ATOMS):
        return value
    raise ValueError(f"expected text, a number or null, got {type(value).__name__}")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected text, got {type(value).__name__}")


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"expected an integer, got {type(value).__name__}")


def _number(value: Any) -> int | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise ValueError(f"expected a number, got {type(value).__name__}")


def _list(value: Any, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise ValueError(f"expected an array of {length or 'any number of'} values")
    return value


def _attribute_value(value: Any) -> Any:
    """An OpenTelemetry attribute value: an atom, or a sequence of atoms
    (written as an array, read back as a tuple)."""
    if isinstance(value, list):
        return tuple(_atom(element) for element in value)
    return _atom(value)


def _attributes_out(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        key: list(value) if isinstance(value, (tuple, list)) else value
        for key, value in (attributes or {}).items()
    }


def _attributes(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected an object of attributes")
    return {_text(key): _attribute_value(item) for key, item in value.items()}


# -- the default: tagged JSON -----------------------------------------------------


def _tagged(value: Any) -> Any:
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is bytes:
        return {"b": base64.b64encode(value).decode()}
    if kind is tuple:
        return {"t": [_tagged(item) for item in value]}
    if kind is list:
        return {"l": [_tagged(item) for item in value]}
    if kind is dict:
        return {"d": [[_tagged(key), _tagged(item)] for key, item in value.items()]}
    raise TypeError(f"{kind.__name__} has no spool encoding")


def _untagged(value: Any) -> Any:
    if not isinstance(value, dict):
        return _atom(value)
    if len(value) != 1:
        raise ValueError("a tagged value has one tag")
    ((tag, content),) = value.items()
    if tag == "b":
        return base64.b64decode(_text(content), validate=True)
    if tag == "t":
        return tuple(_untagged(item) for item in _list(content))
    if tag == "l":
        return [_untagged(item) for item in _list(content)]
    if tag == "d":
        return {_untagged(pair[0]): _untagged(pair[1]) for pair in map(_pair, _list(content))}
    raise ValueError(f"unknown tag {tag!r}")


def _pair(value: Any) -> list[Any]:
    return _list(value, 2)


def dumps_value(value: Any) -> bytes:
    """None, bool, int, float, str, bytes, and tuples, lists and dicts of
    them; TypeError for any other type."""
    return _json(_tagged(value))


def loads_value(data: bytes) -> Any:
    return _untagged(json.loads(data))


# -- InfluxDB and SQLite ------------------------------------------------------------


def dumps_line(line: bytes) -> bytes:
    if not isinstance(line, bytes):
        raise TypeError(f"a line is bytes, got {type(line).__name__}")
    return line


def loads_line(data: bytes) -> bytes:
    return bytes(data)


def dumps_row(row: Sequence[Any]) -> bytes:
    return _json([_atom(value) for value in row])


def loads_row(data: bytes, columns: int) -> tuple[Any, ...]:
    return tuple(_atom(value) for value in _list(json.loads(data), columns))


# -- the HTTP payload writer --------------------------------------------------------


class PayloadLike(Protocol):
    @property
    def body(self) -> bytes: ...
    @property
    def is_json(self) -> bool: ...
    @property
    def label(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def key(self) -> str: ...


_PAYLOAD = struct.Struct("<?II")
#: A payload with its Idempotency-Key ("P": written before keys, given a new one).
_KEYED = struct.Struct("<?IIB")


def dumps_http_item(item: PayloadLike | tuple[tuple[Any, ...], ...]) -> bytes:
    """A payload (per-request mode) or a request's flat tuples (batched)."""
    if isinstance(item, tuple):
        return b"T" + _json([[_flat_out(value) for value in flat] for flat in item])
    label = item.label.encode("utf-8", "surrogatepass")
    key = item.key.encode("ascii")
    head = _KEYED.pack(item.is_json, item.requests, len(label), len(key))
    return b"".join((b"K", head, key, label, bytes(item.body)))


def _flat_out(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else _atom(value)


def loads_http_item(
    data: bytes, payload: Callable[..., T]
) -> T | tuple[tuple[Any, ...], ...]:
    """The inverse of :func:`dumps_http_item`; ``payload(body, is_json,
    label, requests[, key=])`` makes the payload."""
    tag = data[:1]
    if tag == b"T":
        flats = _list(json.loads(data[1:]))
        return tuple(tuple(_attribute_value(value) for value in _list(flat)) for flat in flats)
    keyed = tag == b"K"
    layout = _KEYED if keyed else _PAYLOAD
    if tag not in (b"K", b"P") or len(data) < 1 + layout.size:
        raise ValueError("not a payload")
    fields = layout.unpack_from(data, 1)
    is_json, requests, length = fields[:3]
    start = 1 + layout.size
    extra: dict[str, str] = {}
    if keyed:
        key_length = fields[3]
        extra["key"] = data[start : start + key_length].decode("ascii")
        start += key_length
    if start + length > len(data):
        raise ValueError("a payload's label runs past its end")
    label = data[start : start + length].decode("utf-8", "surrogatepass")
    return payload(bytes(data[start + length :]), bool(is_json), label, requests, **extra)


# -- users' chests -----------------------------------------------------------------


def dumps_context_tuples(group: Iterable[ContextTuple]) -> bytes:
    return _json(
        [
            [item[0], _atom(item[1]), item[2], _attributes_out(item.attributes),
             item.time_unix_nano, item.kind]
            for item in group
        ]
    )  # fmt: skip


def loads_context_tuples(data: bytes) -> list[ContextTuple]:
    from .http_payload._context_tuple import ContextTuple

    return [
        ContextTuple(
            _text(row[0]), _atom(row[1]), _optional_text(row[2]), _attributes(row[3]),
            _int(row[4]), _text(row[5]),
        )
        for row in map(lambda row: _list(row, 6), _list(json.loads(data)))
    ]  # fmt: skip


# -- FlaskChestOTel: one point and where it belongs ----------------------------------


class PointItemLike(Protocol):
    @property
    def resource(self) -> Resource: ...
    @property
    def scope(self) -> InstrumentationScope: ...
    @property
    def metric(self) -> Metric: ...
    @property
    def point(self) -> Any: ...


_KINDS: dict[type, str] = {
    Gauge: "gauge",
    Sum: "sum",
    Histogram: "histogram",
    ExponentialHistogram: "exponential_histogram",
}


def dumps_point_item(item: PointItemLike) -> bytes:
    resource, scope, metric, point = item.resource, item.scope, item.metric, item.point
    data: Any = metric.data
    kind = _KINDS[type(data)]
    temporality = getattr(data, "aggregation_temporality", None)
    return _json(
        {
            "resource": [_attributes_out(resource.attributes), resource.schema_url],
            "scope": [scope.name, scope.version, scope.schema_url,
                      _attributes_out(scope.attributes)],
            "metric": [metric.name, metric.description, metric.unit, kind,
                       None if temporality is None else int(temporality),
                       getattr(data, "is_monotonic", None)],
            "point": _point_out(kind, point),
        }
    )  # fmt: skip


def _point_out(kind: str, point: Any) -> list[Any]:
    head = [_attributes_out(point.attributes), point.start_time_unix_nano, point.time_unix_nano]
    exemplars = [
        [_attributes_out(e.filtered_attributes), e.value, e.time_unix_nano, e.span_id, e.trace_id]
        for e in point.exemplars
    ]
    if kind in ("gauge", "sum"):
        return [*head, point.value, exemplars]
    if kind == "histogram":
        return [*head, point.count, point.sum, list(point.bucket_counts),
                list(point.explicit_bounds), point.min, point.max, exemplars]  # fmt: skip
    return [*head, point.count, point.sum, point.scale, point.zero_count,
            [point.positive.offset, list(point.positive.bucket_counts)],
            [point.negative.offset, list(point.negative.bucket_counts)],
            point.flags, point.min, point.max, exemplars]  # fmt: skip


def loads_point_item(
    data: bytes, make: Callable[[Resource, InstrumentationScope, Metric, Any], T]
) -> T:
    fields = json.loads(data)
    if not isinstance(fields, dict):
        raise ValueError("expected an object")
    attributes, schema_url = _list(fields["resource"], 2)
    resource = Resource(_attributes(attributes), _text(schema_url))
    name, version, scope_schema, scope_attributes = _list(fields["scope"], 4)
    scope = InstrumentationScope(
        _text(name), _optional_text(version), _optional_text(scope_schema),
        _attributes(scope_attributes) or None,
    )  # fmt: skip
    metric_name, description, unit, kind, temporality, monotonic = _list(fields["metric"], 6)
    shape: Any
    if kind == "gauge":
        shape = Gauge(data_points=[])
    elif kind == "sum":
        shape = Sum([], AggregationTemporality(_int(temporality)), bool(monotonic))
    elif kind == "histogram":
        shape = Histogram([], AggregationTemporality(_int(temporality)))
    elif kind == "exponential_histogram":
        shape = ExponentialHistogram([], AggregationTemporality(_int(temporality)))
    else:
        raise ValueError(f"unknown kind of metric {kind!r}")
    metric = Metric(_text(metric_name), _optional_text(description), _optional_text(unit), shape)
    return make(resource, scope, metric, _point(kind, _list(fields["point"])))


def _point(kind: str, fields: list[Any]) -> Any:
    attributes = _attributes(fields[0])
    start, time = _int(fields[1]), _int(fields[2])
    exemplars = [_exemplar(_list(e, 5)) for e in _list(fields[-1])]
    if kind in ("gauge", "sum"):
        _list(fields, 5)
        return NumberDataPoint(attributes, start, time, _number(fields[3]), exemplars)
    if kind == "histogram":
        count, total, counts, bounds, low, high, _ = _list(fields[3:], 7)
        return HistogramDataPoint(
            attributes, start, time, _int(count), _number(total),
            [_int(c) for c in _list(counts)], [_number(b) for b in _list(bounds)],
            _number(low), _number(high), exemplars,
        )  # fmt: skip
    count, total, scale, zero, positive, negative, flags, low, high, _ = _list(fields[3:], 10)
    return ExponentialHistogramDataPoint(
        attributes, start, time, _int(count), _number(total), _int(scale), _int(zero),
        _buckets(positive), _buckets(negative), _int(flags), _number(low), _number(high),
        exemplars,
    )  # fmt: skip


def _buckets(value: Any) -> Buckets:
    offset, counts = _list(value, 2)
    return Buckets(_int(offset), [_int(count) for count in _list(counts)])


def _exemplar(fields: list[Any]) -> Exemplar:
    attributes, value, time, span_id, trace_id = fields
    return Exemplar(
        _attributes(attributes) or None, _number(value), _int(time),
        None if span_id is None else _int(span_id), None if trace_id is None else _int(trace_id),
    )  # fmt: skip


# -- flask_chest_otel.testing ----------------------------------------------------------


def dumps_measurement(item: Any) -> bytes:
    return _json(
        [item.name, _atom(item.value), item.request_id, item.method, item.route,
         item.time_unix_nano, _attributes_out(item.attributes), item.index, item.trace_id,
         item.span_id]
    )  # fmt: skip


def loads_measurement(data: bytes, make: Callable[..., T]) -> T:
    name, value, request_id, method, route, time, attributes, index, trace_id, span_id = _list(
        json.loads(data), 10
    )
    return make(
        name=_text(name), value=_atom(value), request_id=_optional_text(request_id),
        method=_optional_text(method), route=_optional_text(route), time_unix_nano=_int(time),
        attributes=_attributes(attributes), index=_int(index),
        trace_id=_optional_text(trace_id), span_id=_optional_text(span_id),
    )  # fmt: skip
