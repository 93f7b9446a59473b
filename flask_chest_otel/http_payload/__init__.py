"""Custom HTTP payloads: context tuples -> a user's payload generator -> POST.

``HTTPPayloadMetricExporter`` turns each export into context tuples
``(variable_name, variable_value, request_id)``, calls the user's payload
generator with them (one call per request by default, as flask-chest did) and
POSTs each payload from its own thread, up to ``max_connections`` at once
over kept-alive connections, each with an ``Idempotency-Key``, with retries.
``FlaskChestCustomWriter`` is the chest built on it.

What the generator receives:

* Decorated variables (scope ``flask_chest_otel``): the tuples of one request,
  in the order the decorator recorded them (``tracked_vars`` order). Each
  value keeps its type: a ``bool``, an ``int``, a ``float`` (NaN and the
  infinities included) or the ``str`` a text value was.
* Any other OTel metric (through ``Chest.metric_reader()`` or the exporter in
  one's own reader): one tuple per data point, ``(metric_name, value, None)``,
  all of one export in one call. A histogram point gives ``name_count``,
  ``name_sum``, ``name_min``, ``name_max`` and one ``name_bucket`` per bound
  (cumulative, attribute ``le``, ending with ``+Inf``), as Prometheus does.

Each tuple is a ``ContextTuple``: a real 3-tuple (it unpacks, compares equal to
a plain tuple and serialises to a JSON list) that also carries
``attributes`` (with ``trace_id``/``span_id`` when the request was traced),
``time_unix_nano`` and ``kind`` for generators that want them.

The parts live in private modules: ``_context_tuple`` (the tuple type and
MetricsData -> tuples), ``_json_payload`` (the JSON generator and how a
result becomes a body), ``_exporter`` (what both modes share: the
arguments, judging an answer, the spool; ``HTTPPayloadMetricExporter(...)``
makes an instance of the mode's class), ``_per_request`` (one payload and
POST per request), ``_batched`` (one POST per batch of requests, a refused
request narrowed down), ``_verdicts`` (a batch's fates as its POSTs are
answered), ``_transport`` (the transport interface, proxies, the ``requests``
transport), ``_direct`` (our own connections, answers parsed by
``http.client``), ``_lanes`` (several POSTs at once) and ``_chest`` (the
chest).
"""

from __future__ import annotations

from .._http import parse_retry_after
from ._chest import FlaskChestCustomWriter
from ._context_tuple import ContextTuple
from ._exporter import HTTPPayloadMetricExporter, Payload, PayloadGenerator
from ._json_payload import json_payload

__all__ = [
    "ContextTuple",
    "FlaskChestCustomWriter",
    "HTTPPayloadMetricExporter",
    "Payload",
    "PayloadGenerator",
    "json_payload",
    "parse_retry_after",
]
