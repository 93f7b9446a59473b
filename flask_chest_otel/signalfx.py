"""SignalFx (Splunk Observability Cloud) ingest: a payload generator for
``POST /v2/datapoint`` and a chest that sets the ``X-SF-Token`` header.

The body is ``{"gauge": [...], "counter": [...], "cumulative_counter": [...]}``
(empty categories left out), each datapoint
``{"metric", "value", "dimensions", "timestamp"}`` with the timestamp in
milliseconds. Names are made to fit SignalFx's documented limits instead of
having the whole POST refused: metric names are cut to 256 characters;
dimension names keep letters, digits, ``_`` and ``-`` (others become ``_``),
must start with a letter and not with the reserved ``sf_`` (such names get a
``d_`` prefix; ``Sf_x`` or ``aws_x`` are valid and kept) and are cut to 128
characters; dimension values are cut to 256 characters, empty ones left out;
at most 36 dimensions are kept. Two names that become the same dimension
(``a.b`` and ``a_b``) are not merged: the first keeps it, the other is left
out and a warning names both.

Values: a bool is sent as 1 or 0, an int within 64 bits as a JSON integer, a
larger one as a float (SignalFx stores 64-bit integers or doubles). A value
that is not a finite number (a text value, NaN) has no SignalFx datapoint and
is left out. A delta sum, an UpDownCounter's included, goes in ``counter``:
it is the change over the interval, which SignalFx sums; as a gauge it would
read as the level. A cumulative UpDownCounter (the level) is a ``gauge``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ._chest import DEFAULT_EXPORT_INTERVAL
from .http_payload import FlaskChestCustomWriter, PayloadGenerator

__all__ = [
    "FlaskChestSignalFx",
    "make_signalfx_payload",
    "sanitize_dimension_name",
    "sanitize_dimension_value",
    "sanitize_metric_name",
    "signalfx_headers",
    "signalfx_payload",
    "signalfx_url",
]

MAX_METRIC_NAME = 256
MAX_DIMENSION_NAME = 128
MAX_DIMENSION_VALUE = 256
MAX_DIMENSIONS = 36
KINDS = ("gauge", "counter", "cumulative_counter")
#: The dimension-name prefix SignalFx reserves for its own dimensions.
RESERVED_PREFIXES = ("sf_",)
#: Reserved-prefix dimensions SignalFx defines and accepts from senders.
ALLOWED_RESERVED = frozenset({"sf_hires"})

_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_INT64 = 2**63
LOGGER = logging.getLogger("flask_chest_otel")
#: Collisions already reported (each pair once per process, at most 100).
_REPORTED: set[tuple[str, str]] = set()
_REPORTED_LOCK = threading.Lock()
_MAX_REPORTED = 100


def _renew_lock_in_child() -> None:
    global _REPORTED_LOCK
    _REPORTED_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_renew_lock_in_child)


def sanitize_metric_name(name: object) -> str | None:
    """The metric name cut to 256 characters; None if empty."""
    text = str(name)[:MAX_METRIC_NAME]
    return text or None


def sanitize_dimension_name(name: object) -> str | None:
    """A valid SignalFx dimension name made from ``name``; None if empty."""
    text = _INVALID_NAME_CHARS.sub("_", str(name))
    if not text:
        return None
    reserved = text.startswith(RESERVED_PREFIXES) and text not in ALLOWED_RESERVED
    if reserved or not ("a" <= text[0].lower() <= "z"):
        text = "d_" + text
    return text[:MAX_DIMENSION_NAME]


def sanitize_dimension_value(value: object) -> str | None:
    """A dimension value as a string of at most 256 characters; None if empty."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = json.dumps(list(value), ensure_ascii=False, default=str)
    else:
        text = str(value)
    return text[:MAX_DIMENSION_VALUE] or None


def _number(value: object) -> int | float | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and -_INT64 <= value < _INT64:
        return value
    if isinstance(value, (int, float, Decimal, Fraction)):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _dimensions(sources: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    dimensions: dict[str, str] = {}
    raw_names: dict[str, str] = {}
    for source in sources:
        for raw_name, raw_value in source.items():
            name = sanitize_dimension_name(raw_name)
            value = sanitize_dimension_value(raw_value)
            if name is None or value is None:
                continue
            first = raw_names.setdefault(name, str(raw_name))
            if name in dimensions:
                if first != str(raw_name):
                    _report_collision(first, str(raw_name), name)
                continue
            if len(dimensions) >= MAX_DIMENSIONS:
                return dimensions
            dimensions[name] = value
    return dimensions


def _report_collision(first: str, other: str, name: str) -> None:
    key = (first, other)
    with _REPORTED_LOCK:
        if key in _REPORTED or len(_REPORTED) >= _MAX_REPORTED:
            return
        _REPORTED.add(key)
    LOGGER.warning(
        "SignalFx: dimensions %r and %r both become %r; %r is kept, %r left out "
        "(rename one of them)",
        first,
        other,
        name,
        first,
        other,
    )


def make_signalfx_payload(
    *,
    dimensions: Mapping[str, Any] | None = None,
    request_id_dimension: str | None = None,
    metric_prefix: str = "",
) -> Callable[[Sequence[tuple[str, Any, str | None]]], dict[str, list[dict[str, Any]]]]:
    """A payload generator for SignalFx ``/v2/datapoint``.

    Args:
        dimensions: added to every datapoint (they win over the data point's
            own attributes when a name clashes or the 36 limit is reached).
        request_id_dimension: if set, the request ID becomes a dimension of
            this name. Off by default: each request would make its own metric
            time series, which SignalFx counts (and bills) one by one.
        metric_prefix: prepended to every metric name (``"myapp."``).

    Dimensions otherwise come from the tuple's attributes (for decorated
    variables ``method`` and ``route``); the category from its ``kind``
    (``gauge`` for decorated variables and plain tuples); the timestamp from its
    ``time_unix_nano`` (left out when unknown: SignalFx then uses the time of
    receipt).
    """
    static = dict(dimensions or {})
    id_dimension = sanitize_dimension_name(request_id_dimension) if request_id_dimension else None

    def signalfx(
        context_tuple_list: Sequence[tuple[str, Any, str | None]],
    ) -> dict[str, list[dict[str, Any]]]:
        body: dict[str, list[dict[str, Any]]] = {}
        for item in context_tuple_list:
            name, value, request_id = item
            metric = sanitize_metric_name(metric_prefix + str(name))
            number = _number(value)
            if metric is None or number is None:
                continue
            sources: list[Mapping[str, Any]] = [static]
            if id_dimension is not None and request_id is not None:
                sources.append({id_dimension: request_id})
            sources.append(getattr(item, "attributes", None) or {})
            datapoint: dict[str, Any] = {
                "metric": metric,
                "value": number,
                "dimensions": _dimensions(sources),
            }
            time_unix_nano = getattr(item, "time_unix_nano", 0)
            if time_unix_nano:
                datapoint["timestamp"] = int(time_unix_nano) // 1_000_000
            kind = getattr(item, "kind", "gauge")
            body.setdefault(kind if kind in KINDS else "gauge", []).append(datapoint)
        return body

    return signalfx


#: The default SignalFx generator: dimensions from the tuples' attributes, no
#: request-ID dimension, no prefix.
signalfx_payload = make_signalfx_payload()


def signalfx_headers(token: str) -> dict[str, str]:
    """The headers a SignalFx ingest POST needs."""
    if not token or not isinstance(token, str):
        raise ValueError("SignalFx: an access token (X-SF-Token) is required")
    return {"X-SF-Token": token, "Content-Type": "application/json"}


def signalfx_url(realm: str) -> str:
    """The datapoint ingest URL of a Splunk Observability Cloud realm (``us0``...)."""
    if not realm or not re.fullmatch(r"[A-Za-z0-9-]+", realm):
        raise ValueError(f"SignalFx: {realm!r} is not a realm name (us0, eu0, ...)")
    return f"https://ingest.{realm}.signalfx.com/v2/datapoint"


class FlaskChestSignalFx(FlaskChestCustomWriter):
    """A ``FlaskChestCustomWriter`` preset for SignalFx ingest.

    Give ``realm`` (``"us0"``) or a full ``url`` (a local Smart Agent or
    OTel Collector, ``http://host:9943/v2/datapoint``). By default one POST per
    export carries every request's datapoints (``per_request=False``). The
    token is sent as ``X-SF-Token`` and never logged. ``dimensions``,
    ``request_id_dimension`` and ``metric_prefix`` go to
    ``make_signalfx_payload``; a custom ``payload_generator`` replaces it.
    Other keyword options go to ``HTTPPayloadMetricExporter``.
    """

    def __init__(
        self,
        name: str = "SignalFx",
        *,
        token: str,
        realm: str | None = None,
        url: str | None = None,
        dimensions: Mapping[str, Any] | None = None,
        request_id_dimension: str | None = None,
        metric_prefix: str = "",
        payload_generator: PayloadGenerator | None = None,
        per_request: bool = False,
        headers: Mapping[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
        verify: bool | str = True,
        success_status_codes: Iterable[int] | None = None,
        logger: logging.Logger | None = None,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        timeout: float | tuple[float, float] = 10.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        **options: Any,
    ) -> None:
        if (realm is None) == (url is None):
            raise ValueError(f"{name}: give exactly one of realm= and url=")
        target = url if url is not None else signalfx_url(realm or "")
        generator = payload_generator or make_signalfx_payload(
            dimensions=dimensions,
            request_id_dimension=request_id_dimension,
            metric_prefix=metric_prefix,
        )
        super().__init__(
            name,
            target,
            {**(headers or {}), **signalfx_headers(token)},
            None,
            proxies,
            generator,
            verify,
            success_status_codes,
            logger,
            export_interval=export_interval,
            timeout=timeout,
            per_request=per_request,
            retry_initial=retry_initial,
            retry_max=retry_max,
            **options,
        )
