"""Turns OTel MetricsData into flat rows (measurement, tags, fields, time).

Decorated variables (scope ``flask_chest_otel``) keep flask-chest's layout:
measurement = variable name, tags request_id/method/route, field ``value`` in
the value's own type (``value_str`` for a NaN or infinite float, so ``value``
keeps one type), string fields ``trace_id``/``span_id`` when traced, time =
the request's time (see ``decorated_row``).

Every other metric follows otel2influx's ``telegraf-prometheus-v1`` schema
(the layout of the OpenTelemetry Collector's InfluxDB exporter and of
Telegraf), or ``telegraf-prometheus-v2`` on request:

v1: measurement = metric name; tags = resource attributes, then
``otel.library.name``/``otel.library.version``, then data-point attributes
(later ones win); fields (a gauge or sum point in its own type, int or float,
as otel2influx writes it; histogram fields as floats):

- Gauge: ``gauge``. Sum: ``counter`` if monotonic and cumulative, else
  ``gauge`` (the chests export DELTA sums: each value is the increase over
  the export interval that ``start_time_unix_nano`` opens).
- Histogram: ``count``, ``sum``, ``min``, ``max`` (when count > 0), one
  field per explicit bound holding the cumulative count up to that bound
  (key formatted like Go's ``FormatFloat(b, 'f', -1)``: ``0.05``, ``10``),
  and ``+Inf`` = count.
- ExponentialHistogram (otel2influx drops these; here they get the same
  Prometheus-style layout): ``count``, ``sum``, ``min``, ``max``,
  ``zero_count``, ``scale``, then cumulative counts keyed by each bucket's
  upper bound in ascending value order: negative buckets (upper bound
  ``-base**index``), the zero bucket (key ``0``), positive buckets (upper
  bound ``base**(index + 1)``), with ``base = 2**(2**-scale)``; and ``+Inf``
  = count. Bounds are exact powers of two for scale <= 0.
- A non-zero start time adds the integer field ``start_time_unix_nano``.

v2: measurement ``prometheus``; the same tags; fields named after the metric:
``<name>`` for gauges and sums; for histograms ``<name>_count``,
``<name>_sum``, ``<name>_min``, ``<name>_max`` on one row, and one row per
bucket with tag ``le`` (the bound, ``+Inf`` last) and field
``<name>_bucket`` (cumulative count).

Non-finite values are left out (line protocol cannot carry NaN or Inf).
The InfluxDB and SQLite exporters both write these rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

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

from ._names import (
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STRING_VALUE,
    ATTR_TIME,
    SCOPE_NAME,
)
from ._trace import point_trace

FieldValue = float | int | bool | str
Schema = Literal["telegraf-prometheus-v1", "telegraf-prometheus-v2"]
SCHEMAS: tuple[Schema, ...] = ("telegraf-prometheus-v1", "telegraf-prometheus-v2")

#: How decorated-variable attributes become tags.
DECORATED_TAGS = {ATTR_REQUEST_ID: "request_id", ATTR_METHOD: "method", ATTR_ROUTE: "route"}


@dataclass(slots=True)
class Row:
    """One line of line protocol, or one SQLite row per field."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_unix_nano: int
    decorated: bool = False


def attribute_text(value: Any) -> str:
    """An attribute value as a tag string (sequences and mappings as JSON,
    bools lower-case, bytes decoded as UTF-8)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), ensure_ascii=False, default=attribute_text)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), ensure_ascii=False, default=attribute_text)
    return str(value)


def format_bound(bound: float) -> str:
    """A histogram bound as a field key, like Go's FormatFloat(b, 'f', -1)."""
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    if bound.is_integer():
        return str(int(bound))
    return format(Decimal(repr(bound)), "f")


def _finite(value: FieldValue) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def decorated_row(metric_name: str, point: NumberDataPoint, request_id_field: bool = False) -> Row:
    """The row of one decorated variable of one request.

    Field ``value`` holds the value in its own type (bool, int, float, or the
    text of a text value), as flask-chest wrote it; a NaN or infinite float,
    which line protocol cannot carry, is the string field ``value_str``
    (``"nan"``, ``"inf"``, ``"-inf"``) so the request's point is kept and the
    ``value`` field keeps one type. The trace link, when the request had a
    recording span, is the string fields ``trace_id`` and ``span_id``. With
    ``request_id_field`` the request ID is a field, not a tag.
    """
    tags: dict[str, str] = {}
    string_value: str | None = None
    time_unix_nano = point.time_unix_nano
    for key, value in (point.attributes or {}).items():
        if key == ATTR_STRING_VALUE:
            string_value = value if type(value) is str else str(value)
        elif key == ATTR_TIME:
            time_unix_nano = int(value)  # type: ignore[arg-type]
        elif key == ATTR_INDEX:
            continue
        else:
            tags[DECORATED_TAGS.get(key, key)] = (
                value if type(value) is str else attribute_text(value)
            )
    fields: dict[str, FieldValue]
    if string_value is not None:
        fields = {"value": string_value}
    else:
        number = point.value
        if type(number) is float and not math.isfinite(number):
            fields = {"value_str": repr(number)}
        else:
            fields = {"value": number}
    if request_id_field and "request_id" in tags:
        fields["request_id"] = tags.pop("request_id")
    trace = point_trace(point)
    if trace is not None:
        fields["trace_id"], fields["span_id"] = trace
    return Row(metric_name, tags, fields, time_unix_nano, True)


def _base_tags(resource: Resource, scope: InstrumentationScope) -> dict[str, str]:
    tags = {key: attribute_text(value) for key, value in resource.attributes.items()}
    tags["otel.library.name"] = scope.name
    if scope.version:
        tags["otel.library.version"] = scope.version
    return tags


def _point_tags(base: Mapping[str, str], attributes: Any) -> dict[str, str]:
    tags = dict(base)
    for key, value in (attributes or {}).items():
        tags[key] = attribute_text(value)
    return tags


def _start(fields: dict[str, FieldValue], start_time_unix_nano: int) -> dict[str, FieldValue]:
    if start_time_unix_nano:
        fields["start_time_unix_nano"] = int(start_time_unix_nano)
    return fields


def _histogram_summary(
    point: HistogramDataPoint | ExponentialHistogramDataPoint,
) -> dict[str, float]:
    summary = {"count": float(point.count), "sum": float(point.sum)}
    if point.count:
        summary["min"] = float(point.min)
        summary["max"] = float(point.max)
    return summary


def histogram_buckets(point: HistogramDataPoint) -> Iterator[tuple[str, float]]:
    """(upper bound key, cumulative count) of an explicit-bucket histogram, +Inf last."""
    cumulative = 0
    # bucket_counts has one more entry (+Inf) than explicit_bounds.
    for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
        cumulative += count
        yield format_bound(float(bound)), float(cumulative)
    yield "+Inf", float(point.count)


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


def metric_rows(metric: Metric, base_tags: Mapping[str, str]) -> Iterator[Row]:
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
        for point in data.data_points:
            fields = _start({field: point.value}, point.start_time_unix_nano)
            yield Row(name, _point_tags(base_tags, point.attributes), fields, point.time_unix_nano)
    elif isinstance(data, Histogram):
        for hpoint in data.data_points:
            fields = dict(_histogram_summary(hpoint))
            fields.update(histogram_buckets(hpoint))
            yield Row(
                name,
                _point_tags(base_tags, hpoint.attributes),
                _start(fields, hpoint.start_time_unix_nano),
                hpoint.time_unix_nano,
            )
    elif isinstance(data, ExponentialHistogram):
        for epoint in data.data_points:
            fields = dict(_histogram_summary(epoint))
            fields["zero_count"] = float(epoint.zero_count)
            fields["scale"] = float(epoint.scale)
            fields.update(exponential_buckets(epoint))
            yield Row(
                name,
                _point_tags(base_tags, epoint.attributes),
                _start(fields, epoint.start_time_unix_nano),
                epoint.time_unix_nano,
            )
    else:
        raise UnsupportedMetric(f"metric {name!r}: {type(data).__name__} is not supported")


def metric_rows_v2(metric: Metric, base_tags: Mapping[str, str]) -> Iterator[Row]:
    """Rows of one non-decorated metric (telegraf-prometheus-v2)."""
    data = metric.data
    name = metric.name
    if isinstance(data, (Gauge, Sum)):
        for point in data.data_points:
            fields = _start({name: point.value}, point.start_time_unix_nano)
            yield Row(
                "prometheus", _point_tags(base_tags, point.attributes), fields, point.time_unix_nano
            )
    elif isinstance(data, (Histogram, ExponentialHistogram)):
        for hpoint in data.data_points:
            tags = _point_tags(base_tags, hpoint.attributes)
            if isinstance(hpoint, HistogramDataPoint):
                buckets = histogram_buckets(hpoint)
            else:
                buckets = exponential_buckets(hpoint)
            for bound, cumulative in buckets:
                yield Row(
                    "prometheus",
                    {**tags, "le": bound},
                    {f"{name}_bucket": cumulative},
                    hpoint.time_unix_nano,
                )
            summary = {f"{name}_{key}": value for key, value in _histogram_summary(hpoint).items()}
            yield Row(
                "prometheus",
                tags,
                _start(dict(summary), hpoint.start_time_unix_nano),
                hpoint.time_unix_nano,
            )
    else:
        raise UnsupportedMetric(f"metric {name!r}: {type(data).__name__} is not supported")


class UnsupportedMetric(ValueError):
    """A metric data type this schema has no layout for."""


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


def other_rows(schema: Schema) -> Callable[[Metric, Mapping[str, str]], Iterator[Row]]:
    """The row builder of non-decorated metrics for ``schema``."""
    if schema == "telegraf-prometheus-v1":
        return metric_rows
    if schema == "telegraf-prometheus-v2":
        return metric_rows_v2
    raise ValueError(f"schema must be one of {', '.join(SCHEMAS)}, got {schema!r}")


def rows(metrics_data: MetricsData, schema: Schema = "telegraf-prometheus-v1") -> Iterator[Row]:
    """Every row of ``metrics_data``; non-finite field values are left out and
    a row left with no field is skipped (line protocol cannot carry NaN/Inf)."""
    build = other_rows(schema)
    for scope_metrics, base in scopes(metrics_data):
        if base is None:
            for metric in scope_metrics.metrics:
                name = metric.name
                for point in metric.data.data_points:
                    row = decorated_row(name, point)  # type: ignore[arg-type]
                    if _keep(row):
                        yield row
        else:
            for metric in scope_metrics.metrics:
                for row in build(metric, base):
                    if _keep(row):
                        yield row


def _keep(row: Row) -> bool:
    if all(_finite(value) for value in row.fields.values()):
        return True
    row.fields = {key: value for key, value in row.fields.items() if _finite(value)}
    return bool(row.fields)
