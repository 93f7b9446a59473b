"""Names shared by the recording side and the exporters: the contract between
the decorator (which knows Flask) and the exporters (which know only OTel)."""

from __future__ import annotations

#: Instrumentation scope (meter name) of every decorated variable.
SCOPE_NAME = "flask_chest_otel"
#: Data-point attributes the decorator sets.
ATTR_REQUEST_ID = "request_id"
ATTR_METHOD = "http.request.method"
ATTR_ROUTE = "http.route"
#: The response's status code (an int; 500 for a view that raised).
ATTR_STATUS_CODE = "http.response.status_code"
#: Position of the variable among its request's (tracked_vars order); set on
#: the chests' own pipeline only, and stripped by the exporters.
ATTR_INDEX = "flask_chest.index"
#: Present on an info-style point (value 1) that carries a non-numeric value.
ATTR_STRING_VALUE = "flask_chest.value"
#: The request's time, set only where the pipeline cannot put it in the point's
#: own timestamp (an SDK MeterProvider); exporters strip it.
ATTR_TIME = "flask_chest.time_unix_nano"

#: The variable ``record_duration=True`` records: the request's seconds.
DURATION_VARIABLE = "duration"
#: Longest text of a tag (``tag_vars``, the OTel resource from the
#: environment), as SignalFx limits a dimension value.
MAX_TAG_TEXT = 256
#: Names no tag may take: the decorator's own attributes, and what the
#: exporters name after them (tags, fields, columns, context-tuple attributes).
RESERVED_TAG_NAMES = frozenset(
    {
        ATTR_REQUEST_ID,
        ATTR_METHOD,
        ATTR_ROUTE,
        ATTR_STATUS_CODE,
        ATTR_INDEX,
        ATTR_STRING_VALUE,
        ATTR_TIME,
        "request_id",
        "method",
        "route",
        "status_code",
        "trace_id",
        "span_id",
        "value",
        "value_str",
    }
)
