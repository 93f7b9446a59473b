"""The link from a recorded point to its request's trace.

The decorator reads the current span once per request; the collector puts
its IDs on each point as an OpenTelemetry exemplar (the data model's link
from a metric point to a trace), and every exporter reads them back from
there: OTLP sends the exemplar as is, InfluxDB writes string fields
``trace_id``/``span_id``, SQLite columns of those names, the HTTP writer
attributes of its context tuples.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import NumberDataPoint

#: (trace_id, span_id) as the integers OpenTelemetry uses.
SpanIds = tuple[int, int]


def current_span_ids() -> SpanIds | None:
    """The IDs of the span current in this context, if it is recording."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    context = span.get_span_context()
    return context.trace_id, context.span_id


def point_trace(point: NumberDataPoint) -> tuple[str, str] | None:
    """(trace_id, span_id) of a point's first exemplar that names a trace,
    as the lower-case hex of W3C trace context (32 and 16 characters)."""
    for exemplar in point.exemplars or ():
        trace = hex_ids(exemplar.trace_id, exemplar.span_id)
        if trace is not None:
            return trace
    return None


def hex_ids(trace_id: int | None, span_id: int | None) -> tuple[str, str] | None:
    """(trace_id, span_id) as the lower-case hex of W3C trace context (32 and
    16 characters); None unless both are set."""
    if not (trace_id and span_id):
        return None
    return format(trace_id, "032x"), format(span_id, "016x")
