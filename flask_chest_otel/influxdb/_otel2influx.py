"""Any OTel metric (not a decorated variable) as InfluxDB rows, the way
otel2influx writes it.

otel2influx (influxdata/influxdb-observability, used by the OpenTelemetry
Collector's InfluxDB exporter and by Telegraf) is the reference; its Go test
vectors are ported in ``tests/test_otel2influx.py``. Two schemas:

``telegraf-prometheus-v1`` (the default): measurement = metric name; tags =
resource attributes, then ``otel.library.name``/``otel.library.version`` (when
not empty), then the scope's attributes, then the point's attributes (later
ones win; an empty key is skipped); fields:

- Gauge: ``gauge``. Sum: ``counter`` if monotonic and cumulative, else
  ``gauge``. The value in its own type (int or float).
- Histogram: ``count`` and ``sum``, ``min`` and ``max`` when the point has
  them (a finite number), and one field per bucket holding the cumulative
  count up to it: keyed by its explicit bound (Go's
  ``FormatFloat(b, 'f', -1)``: ``0.05``, ``10``), the last one ``+Inf`` only
  when the point has that bucket (``len(bucket_counts) ==
  len(explicit_bounds) + 1``; no ``+Inf`` is made up). All floats.
- ExponentialHistogram (otel2influx drops these; an extension here):
  ``count``, ``sum``, ``min``, ``max``, ``zero_count``, ``scale``, then
  cumulative counts keyed by each bucket's upper bound in ascending value
  order: negative buckets (upper bound ``-base**index``), the zero bucket
  (key ``0``), positive buckets (upper bound ``base**(index + 1)``), with
  ``base = 2**(2**-scale)``; and ``+Inf`` = count.
- A non-zero start time adds the integer field ``start_time_unix_nano``.

``telegraf-prometheus-v2``: measurement ``prometheus``; the same tags;
fields named after the metric: ``<name>`` for gauges and sums; for
histograms one row with ``<name>_count``, ``<name>_sum``, ``<name>_min``,
``<name>_max`` (and the start time), then one row per bucket with tag ``le``
(the bound, ``+Inf`` for the last bucket when present) and field
``<name>_bucket`` (cumulative count).

Exemplars (both schemas): each exemplar naming a trace becomes its own row
after its point's: measurement ``<name>_exemplar``; tags = the exemplar's
filtered attributes plus ``trace_id`` and ``span_id`` (lower-case hex); field
``gauge`` = the exemplar's value; time = the exemplar's time. No resource or
scope tags. An exemplar without trace or span ID is skipped.

Tag values are attribute values turned into text as Go's
``pcommon.Value.AsString`` does: ``true``/``false``; integers in decimal;
floats as JavaScript prints them (``3``, ``0.5``, ``1e-7``, ``1e+21``);
bytes as base64; lists and maps as Go's ``encoding/json`` writes them
(``["a","b"]``, ``{"k":1}``: no spaces, map keys sorted, ``<``, ``>``, ``&``
escaped as ``\\u003c``...; a list holding NaN gives the empty text, so no
tag).

Refused, like otel2influx (which fails the whole batch for them; here only
the point is left out, the rest is written): a point with time 0, a
histogram whose bucket counts are neither as many as its bounds nor one
more, a number point whose value is not a number, a metric of another data
type. Each refusal is passed to the ``on_refused(metric_name, reason)`` hook
of the row builders; the default logs it (rate-limited) on the
``flask_chest_otel`` logger. (otel2influx means to refuse a zero timestamp,
but its check compares with Go's zero ``time.Time``, year 1, so it lets
time 0 through as 1970; here the intent is followed.) A point whose value
is None (OTLP's empty value) is skipped silently, as otel2influx does.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .._logging import LOGGER, RateLimitedLog
from .._names import SCOPE_NAME
from .._trace import hex_ids
from ._row import SCHEMAS, FieldValue, Row, Schema

#: ``on_refused(metric_name, reason)``: told of each point left out.
RefusalHook = Callable[[str, str], None]

_refusal_log = RateLimitedLog(LOGGER)


def _renew_refusal_log() -> None:
    global _refusal_log
    _refusal_log = RateLimitedLog(LOGGER)  # its lock may be held by a thread gone in the child


os.register_at_fork(after_in_child=_renew_refusal_log)


def log_refusal(metric_name: str, reason: str) -> None:
    """The default refusal hook: a warning, at most one a minute."""
    _refusal_log.log(
        logging.WARNING,
        "otel2influx-refused",
        "metric %r: a point is not written, as otel2influx refuses it: %s",
        metric_name,
        reason,
    )


class RowBuilder(Protocol):
    """Builds the rows of one metric from the tags its scope starts with."""

    def __call__(
        self, metric: Metric, base_tags: Mapping[str, str], on_refused: RefusalHook = ...
    ) -> Iterator[Row]: ...


# -- attribute values as Go's pcommon.Value.AsString writes them ------------------


def go_float_text(value: float) -> str:
    """A float as Go's encoding/json writes it (JavaScript's number to text):
    fixed notation, except below 1e-6 or from 1e21 on (``1e-7``, ``1e+21``)."""
    size = abs(value)
    if size != 0 and (size < 1e-6 or size >= 1e21):
        text = repr(value)  # Python writes these in exponent form, shortest digits
        if text[-4] == "e" and text[-3] == "-" and text[-2] == "0":
            text = text[:-2] + text[-1]  # e-07 -> e-7, as Go does
        return text
    return format_bound(value)


def format_bound(bound: float) -> str:
    """A float as Go's ``strconv.FormatFloat(b, 'f', -1, 64)``: shortest
    digits, never an exponent (``0.05``, ``10``, ``-0``, ``+Inf``)."""
    if math.isnan(bound):
        return "NaN"
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    return format(Decimal(repr(float(bound))).normalize(), "f")


_JSON_SPECIAL = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')
_JSON_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\b": "\\b", "\f": "\\f"}


def _json_char(match: re.Match[str]) -> str:
    char = match.group()
    short = _JSON_SHORT.get(char)
    if short is not None:
        return short
    if "\ud800" <= char <= "\udfff":
        return "\\ufffd"  # Go replaces invalid UTF-8 (a lone surrogate here)
    return f"\\u{ord(char):04x}"


def _json_string(text: str) -> str:
    return f'"{_JSON_SPECIAL.sub(_json_char, text)}"'


class _NoJson(ValueError):
    """A value encoding/json refuses (NaN, an infinity)."""


def _json(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NoJson(value)
        return go_float_text(value)
    if isinstance(value, (bytes, bytearray)):
        return _json_string(base64.b64encode(value).decode("ascii"))
    if isinstance(value, Mapping):
        items = sorted((str(key), item) for key, item in value.items())
        return "{" + ",".join(f"{_json_string(key)}:{_json(item)}" for key, item in items) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(_json(item) for item in value) + "]"
    return _json_string(str(value))


def attribute_text(value: Any) -> str:
    """An attribute value as tag text, as Go's ``pcommon.Value.AsString``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"json: unsupported value: {format_bound(value)}"
        return go_float_text(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (Mapping, Sequence)):
        try:
            return _json(value)
        except _NoJson:
            return ""  # Go's json.Marshal fails; AsString gives ""
    return str(value)


# -- tags ----------------------------------------------------------------------


def _add_attributes(tags: dict[str, str], attributes: Mapping[str, Any] | None) -> None:
    for key, value in (attributes or {}).items():
        if key:
            tags[key] = value if type(value) is str else attribute_text(value)


def _base_tags(resource: Resource, scope: InstrumentationScope) -> dict[str, str]:
    tags: dict[str, str] = {}
    _add_attributes(tags, resource.attributes)
    if scope.name:
        tags["otel.library.name"] = scope.name
    if scope.version:
        tags["otel.library.version"] = scope.version
    _add_attributes(tags, getattr(scope, "attributes", None))
    return tags


def _point_tags(base: Mapping[str, str], attributes: Any) -> dict[str, str]:
    tags = dict(base)
    _add_attributes(tags, attributes)
    return tags


def scopes(
    metrics_data: MetricsData,
) -> Iterator[tuple[ScopeMetrics, dict[str, str] | None]]:
    """Each scope's metrics with the tags its rows start from; None for the
    decorated variables' scope, whose rows carry no resource or scope tags."""
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name == SCOPE_NAME:
                yield scope_metrics, None
            else:
                yield scope_metrics, _base_tags(resource_metrics.resource, scope_metrics.scope)


# -- fields --------------------------------------------------------------------

AnyPoint = NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint


def _refusal(point: AnyPoint) -> str | None:
    """Why otel2influx refuses ``point``, or None."""
    if not point.time_unix_nano:
        return "it has no timestamp (time_unix_nano 0)"
    if isinstance(point, HistogramDataPoint):
        counts, bounds = len(point.bucket_counts), len(point.explicit_bounds)
        if counts and counts != bounds and counts != bounds + 1:
            return f"its {counts} bucket counts do not match its {bounds} explicit bounds"
    return None


def _start(fields: dict[str, FieldValue], start_time_unix_nano: int) -> dict[str, FieldValue]:
    if start_time_unix_nano:
        fields["start_time_unix_nano"] = int(start_time_unix_nano)
    return fields


def _histogram_summary(
    point: HistogramDataPoint | ExponentialHistogramDataPoint,
) -> dict[str, float]:
    summary = {"count": float(point.count)}
    if point.sum is not None:
        summary["sum"] = float(point.sum)
    # The SDK gives min=+inf, max=-inf when it kept none; those are left out.
    if point.min is not None and math.isfinite(point.min):
        summary["min"] = float(point.min)
    if point.max is not None and math.isfinite(point.max):
        summary["max"] = float(point.max)
    return summary


def histogram_buckets(point: HistogramDataPoint) -> Iterator[tuple[str, float]]:
    """(bound key, cumulative count) of each bucket of an explicit-bucket
    histogram; the bucket past the last bound is ``+Inf``, if present."""
    bounds = point.explicit_bounds
    cumulative = 0
    for index, count in enumerate(point.bucket_counts):
        cumulative += count
        key = format_bound(float(bounds[index])) if index < len(bounds) else "+Inf"
        yield key, float(cumulative)


def exponential_buckets(point: ExponentialHistogramDataPoint) -> Iterator[tuple[str, float]]:
    """(upper bound key, cumulative count) of an exponential histogram, in
    ascending value order, +Inf last."""

    def power(index: int) -> float:
        # base**index = 2**(index * 2**-scale); exact for scale <= 0.
        try:
            if point.scale <= 0:
                return math.ldexp(1.0, index << -point.scale)
            return float(2.0 ** (index / (1 << point.scale)))
        except OverflowError:
            return math.inf

    cumulative = 0
    negative = point.negative
    for position in range(len(negative.bucket_counts) - 1, -1, -1):
        cumulative += negative.bucket_counts[position]
        yield format_bound(-power(negative.offset + position)), float(cumulative)
    cumulative += point.zero_count
    yield "0", float(cumulative)
    positive = point.positive
    for position, count in enumerate(positive.bucket_counts):
        cumulative += count
        bound = power(positive.offset + position + 1)
        if math.isinf(bound):
            break
        yield format_bound(bound), float(cumulative)
    yield "+Inf", float(point.count)


def exemplar_rows(name: str, point: AnyPoint, on_refused: RefusalHook) -> Iterator[Row]:
    """The ``<name>_exemplar`` rows of a point's exemplars that name a trace."""
    for exemplar in point.exemplars or ():
        value = exemplar.value
        if value is None:
            continue
        if type(value) not in (int, float):
            on_refused(name, f"an exemplar value of type {type(value).__name__}")
            continue
        trace = hex_ids(exemplar.trace_id, exemplar.span_id)
        if trace is None:
            continue
        tags: dict[str, str] = {}
        _add_attributes(tags, exemplar.filtered_attributes)
        tags["trace_id"], tags["span_id"] = trace
        yield Row(f"{name}_exemplar", tags, {"gauge": value}, exemplar.time_unix_nano)


def _number(name: str, point: NumberDataPoint, on_refused: RefusalHook) -> int | float | None:
    """The point's value, or None when it is left out (refused if not a number)."""
    value = point.value
    if isinstance(value, (int, float)):
        return value
    if value is not None:
        on_refused(name, f"its value is a {type(value).__name__}, not a number")
    return None


# -- the two schemas -----------------------------------------------------------


def _accepted(name: str, points: Sequence[Any], on_refused: RefusalHook) -> Iterator[Any]:
    """The points otel2influx would write; each refused one is reported."""
    for point in points:
        reason = _refusal(point)
        if reason is None:
            yield point
        else:
            on_refused(name, reason)


def metric_rows(
    metric: Metric, base_tags: Mapping[str, str], on_refused: RefusalHook = log_refusal
) -> Iterator[Row]:
    """Rows of one non-decorated metric (telegraf-prometheus-v1)."""
    data = metric.data
    name = metric.name
    fields: dict[str, FieldValue]
    if isinstance(data, (Gauge, Sum)):
        field = (
            "counter"
            if isinstance(data, Sum)
            and data.is_monotonic
            and data.aggregation_temporality is AggregationTemporality.CUMULATIVE
            else "gauge"
        )
        for point in _accepted(name, data.data_points, on_refused):
            value = _number(name, point, on_refused)
            if value is None:
                continue
            fields = _start({field: value}, point.start_time_unix_nano)
            yield Row(name, _point_tags(base_tags, point.attributes), fields, point.time_unix_nano)
            if point.exemplars:
                yield from exemplar_rows(name, point, on_refused)
    elif isinstance(data, (Histogram, ExponentialHistogram)):
        for hpoint in _accepted(name, data.data_points, on_refused):
            fields = dict(_histogram_summary(hpoint))
            if isinstance(hpoint, HistogramDataPoint):
                fields.update(histogram_buckets(hpoint))
            else:
                fields["zero_count"] = float(hpoint.zero_count)
                fields["scale"] = float(hpoint.scale)
                fields.update(exponential_buckets(hpoint))
            yield Row(
                name,
                _point_tags(base_tags, hpoint.attributes),
                _start(fields, hpoint.start_time_unix_nano),
                hpoint.time_unix_nano,
            )
            if hpoint.exemplars:
                yield from exemplar_rows(name, hpoint, on_refused)
    elif data is not None:
        on_refused(name, f"its data type {type(data).__name__} has no layout")


def metric_rows_v2(
    metric: Metric, base_tags: Mapping[str, str], on_refused: RefusalHook = log_refusal
) -> Iterator[Row]:
    """Rows of one non-decorated metric (telegraf-prometheus-v2)."""
    data = metric.data
    name = metric.name
    fields: dict[str, FieldValue]
    if isinstance(data, (Gauge, Sum)):
        for point in _accepted(name, data.data_points, on_refused):
            value = _number(name, point, on_refused)
            if value is None:
                continue
            fields = _start({name: value}, point.start_time_unix_nano)
            yield Row("prometheus", _point_tags(base_tags, point.attributes), fields,
                      point.time_unix_nano)
            if point.exemplars:
                yield from exemplar_rows(name, point, on_refused)
    elif isinstance(data, (Histogram, ExponentialHistogram)):
        for hpoint in _accepted(name, data.data_points, on_refused):
            tags = _point_tags(base_tags, hpoint.attributes)
            summary = {f"{name}_{key}": value for key, value in _histogram_summary(hpoint).items()}
            yield Row("prometheus", tags, _start(dict(summary), hpoint.start_time_unix_nano),
                      hpoint.time_unix_nano)
            if isinstance(hpoint, HistogramDataPoint):
                buckets = histogram_buckets(hpoint)
            else:
                buckets = exponential_buckets(hpoint)
            for bound, cumulative in buckets:
                yield Row("prometheus", {**tags, "le": bound}, {f"{name}_bucket": cumulative},
                          hpoint.time_unix_nano)
            if hpoint.exemplars:
                yield from exemplar_rows(name, hpoint, on_refused)
    elif data is not None:
        on_refused(name, f"its data type {type(data).__name__} has no layout")


def other_rows(schema: Schema) -> RowBuilder:
    """The row builder of non-decorated metrics for ``schema``."""
    if schema == "telegraf-prometheus-v1":
        return metric_rows
    if schema == "telegraf-prometheus-v2":
        return metric_rows_v2
    raise ValueError(f"schema must be one of {', '.join(SCHEMAS)}, got {schema!r}")
