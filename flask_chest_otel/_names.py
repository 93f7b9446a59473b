"""Names shared by the recording side and the exporters: the contract between
the decorator (which knows Flask) and the exporters (which know only OTel)."""

from __future__ import annotations

#: Instrumentation scope (meter name) of every decorated variable.
SCOPE_NAME = "flask_chest_otel"
#: Data-point attributes the decorator sets.
ATTR_REQUEST_ID = "request_id"
ATTR_METHOD = "http.request.method"
ATTR_ROUTE = "http.route"
#: Position of the variable among its request's (tracked_vars order); set on
#: the chests' own pipeline only, and stripped by the exporters.
ATTR_INDEX = "flask_chest.index"
#: Present on an info-style point (value 1) that carries a non-numeric value.
ATTR_STRING_VALUE = "flask_chest.value"
#: The request's time, set only where the pipeline cannot put it in the point's
#: own timestamp (an SDK MeterProvider); exporters strip it.
ATTR_TIME = "flask_chest.time_unix_nano"
