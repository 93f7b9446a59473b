"""Turns OTel MetricsData into flat rows (measurement, tags, fields, time).

Decorated variables (scope ``flask_chest_otel``) keep flask-chest's layout:
measurement = variable name, tags request_id/method/route, field ``value``
(``value_str`` for a non-numeric value, so each field keeps one type), time =
the request's time. Every other metric follows the otel2influx
``telegraf-prometheus-v1`` schema. The InfluxDB and SQLite exporters both
write these rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from ._names import (
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STRING_VALUE,
    ATTR_TIME,
    SCOPE_NAME,
)

FieldValue = float | int | bool | str

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
    """An attribute value as a tag string (sequences as JSON, bools lower-case)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


def format_bound(bound: float) -> str:
    """A histogram bound as a field key, like Go's FormatFloat(b, 'f', -1)."""
    if bound.is_integer():
        return str(int(bound))
    return format(Decimal(repr(bound)), "f")


def _finite(value: FieldValue) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def decorated_row(metric_name: str, point: NumberDataPoint) -> Row:
    """The row of one decorated variable of one request."""
    tags: dict[str, str] = {}
    string_value: str | None = None
    time_unix_nano = point.time_unix_nano
    for key, value in (point.attributes or {}).items():
        if key == ATTR_STRING_VALUE:
            string_value = str(value)
        elif key == ATTR_TIME:
            time_unix_nano = int(value)  # type: ignore[arg-type]
        else:
            tags[DECORATED_TAGS.get(key, key)] = attribute_text(value)
    fields: dict[str, FieldValue]
    if string_value is not None:
        fields = {"value_str": string_value}
    else:
        fields = {"value": float(point.value)}
    return Row(metric_name, tags, fields, time_unix_nano, decorated=True)


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


def metric_rows(metric: Metric, base_tags: Mapping[str, str]) -> Iterator[Row]:
    """Rows of one non-decorated metric (telegraf-prometheus-v1)."""
    data = metric.data
    if isinstance(data, (Gauge, Sum)):
        field = (
            "counter"
            if isinstance(data, Sum)
            and data.is_monotonic
            and data.aggregation_temporality is AggregationTemporality.CUMULATIVE
            else "gauge"
        )
        for point in data.data_points:
            fields: dict[str, FieldValue] = {field: point.value}
            if point.start_time_unix_nano:
                fields["start_time_unix_nano"] = int(point.start_time_unix_nano)
            yield Row(metric.name, _point_tags(base_tags, point.attributes), fields,
                      point.time_unix_nano)
    elif isinstance(data, Histogram):
        for hpoint in data.data_points:
            fields = {"count": int(hpoint.count), "sum": hpoint.sum}
            if hpoint.count:
                fields["min"] = hpoint.min
                fields["max"] = hpoint.max
            cumulative = 0
            for bound, count in zip(hpoint.explicit_bounds, hpoint.bucket_counts):
                cumulative += count
                fields[format_bound(float(bound))] = cumulative
            fields["+Inf"] = int(hpoint.count)
            if hpoint.start_time_unix_nano:
                fields["start_time_unix_nano"] = int(hpoint.start_time_unix_nano)
            yield Row(metric.name, _point_tags(base_tags, hpoint.attributes), fields,
                      hpoint.time_unix_nano)
    else:
        raise UnsupportedMetric(f"metric {metric.name!r}: {type(data).__name__} is not supported")


class UnsupportedMetric(ValueError):
    """A metric data type this schema has no layout for."""


def rows(metrics_data: MetricsData) -> Iterator[Row]:
    """Every row of ``metrics_data``; non-finite field values are left out and
    a row left with no field is skipped (line protocol cannot carry NaN/Inf)."""
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope
            if scope.name == SCOPE_NAME:
                for metric in scope_metrics.metrics:
                    for point in metric.data.data_points:
                        row = decorated_row(metric.name, point)  # type: ignore[arg-type]
                        if _keep(row):
                            yield row
                continue
            base = _base_tags(resource_metrics.resource, scope)
            for metric in scope_metrics.metrics:
                for row in metric_rows(metric, base):
                    if _keep(row):
                        yield row


def _keep(row: Row) -> bool:
    if all(_finite(value) for value in row.fields.values()):
        return True
    row.fields = {key: value for key, value in row.fields.items() if _finite(value)}
    return bool(row.fields)
