"""Turns OTel MetricsData into flat rows (measurement, tags, fields, time).

Decorated variables (scope ``flask_chest_otel``) keep flask-chest's layout:
measurement = variable name, tags request_id/method/route, field ``value`` in
the value's own type (``value_str`` for a NaN or infinite float, so ``value``
keeps one type), string fields ``trace_id``/``span_id`` when traced, time =
the request's time (see ``decorated_row``).

Every other metric follows otel2influx's ``telegraf-prometheus-v1`` schema
(or ``telegraf-prometheus-v2`` on request), built in ``_otel2influx``,
whose docstring holds the layout.

Non-finite values are left out (line protocol cannot carry NaN or Inf).
The InfluxDB and SQLite exporters both write these rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from opentelemetry.sdk.metrics.export import MetricsData, NumberDataPoint

from .._names import (
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STATUS_CODE,
    ATTR_STRING_VALUE,
    ATTR_TIME,
)
from .._trace import point_trace
from ._otel2influx import RefusalHook, attribute_text, log_refusal
from ._otel2influx import other_rows as other_rows  # re-exported for the exporters
from ._otel2influx import scopes as scopes
from ._row import SCHEMAS as SCHEMAS
from ._row import FieldValue as FieldValue
from ._row import Row as Row
from ._row import Schema as Schema
from ._row import keep as keep

#: How decorated-variable attributes become tags.
DECORATED_TAGS = {
    ATTR_REQUEST_ID: "request_id",
    ATTR_METHOD: "method",
    ATTR_ROUTE: "route",
    ATTR_STATUS_CODE: "status_code",
}


def decorated_row(metric_name: str, point: NumberDataPoint, request_id_field: bool = False) -> Row:
    """The row of one decorated variable of one request.

    Field ``value`` holds the value in its own type (bool, int, float, or the
    text of a text value), as flask-chest wrote it; a NaN or infinite float,
    which line protocol cannot carry, is the string field ``value_str``
    (``"nan"``, ``"inf"``, ``"-inf"``) so the request's point is kept and the
    ``value`` field keeps one type. The trace link, when the request had a
    recording span, is the string fields ``trace_id`` and ``span_id``; not
    for a point that came through an SDK MeterProvider (``FlaskChestMeterProvider``,
    which sets ``flask_chest.time_unix_nano``): there the exemplar is the
    SDK's sample, left to OTLP, and as fields it would add two series of
    zeros per variable on backends that turn string fields into numbers
    (VictoriaMetrics). With ``request_id_field`` the request ID is a field,
    not a tag.
    """
    tags: dict[str, str] = {}
    string_value: str | None = None
    time_unix_nano = point.time_unix_nano
    through_sdk = False
    for key, value in (point.attributes or {}).items():
        if key == ATTR_STRING_VALUE:
            string_value = value if type(value) is str else str(value)
        elif key == ATTR_TIME:
            time_unix_nano = int(value)  # type: ignore[arg-type]
            through_sdk = True
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
    trace = None if through_sdk else point_trace(point)
    if trace is not None:
        fields["trace_id"], fields["span_id"] = trace
    return Row(metric_name, tags, fields, time_unix_nano, True)


def rows(
    metrics_data: MetricsData,
    schema: Schema = "telegraf-prometheus-v1",
    on_refused: RefusalHook = log_refusal,
) -> Iterator[Row]:
    """Every row of ``metrics_data``; non-finite field values are left out and
    a row left with no field is skipped (line protocol cannot carry NaN/Inf).
    ``on_refused(metric_name, reason)`` is told of each point otel2influx
    would refuse, which is left out (default: a rate-limited warning)."""
    build = other_rows(schema)
    for scope_metrics, base in scopes(metrics_data):
        if base is None:
            for metric in scope_metrics.metrics:
                name = metric.name
                for point in metric.data.data_points:
                    row = decorated_row(name, point)  # type: ignore[arg-type]
                    if keep(row):
                        yield row
        else:
            for metric in scope_metrics.metrics:
                for row in build(metric, base, on_refused):
                    if keep(row):
                        yield row
