"""Custom HTTP payloads: context tuples -> a user's payload generator -> POST.

``HTTPPayloadMetricExporter`` turns each export into context tuples
``(variable_name, variable_value, request_id)``, calls the user's payload
generator with them (one call per request by default, as flask-chest did) and
POSTs each payload on one keep-alive session, from its own thread, with
retries. ``FlaskChestCustomWriter`` is the chest built on it.

What the generator receives:

* Decorated variables (scope ``flask_chest_otel``): the tuples of one request,
  in the order the decorator recorded them (``tracked_vars`` order). A
  non-numeric value arrives as the string it was; numbers as numbers.
* Any other OTel metric (through ``Chest.metric_reader()`` or the exporter in
  one's own reader): one tuple per data point, ``(metric_name, value, None)``,
  all of one export in one call. A histogram point gives ``name_count``,
  ``name_sum``, ``name_min``, ``name_max`` and one ``name_bucket`` per bound
  (cumulative, attribute ``le``, ending with ``+Inf``), as Prometheus does.

Each tuple is a ``ContextTuple``: a real 3-tuple (it unpacks, compares equal to
a plain tuple and serialises to a JSON list) that also carries
``attributes``, ``time_unix_nano`` and ``kind`` for generators that want them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import requests
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)

from ._chest import DEFAULT_EXPORT_INTERVAL, Chest
from ._delivery import DELIVERED, BufferedExporter, Outcome, Status
from ._http import check_url, parse_retry_after, safe_url
from ._names import (
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STRING_VALUE,
    ATTR_TIME,
    SCOPE_NAME,
)
from ._recorder import VERSION

__all__ = [
    "ContextTuple",
    "FlaskChestCustomWriter",
    "HTTPPayloadMetricExporter",
    "PayloadGenerator",
    "json_payload",
    "parse_retry_after",
]

#: A payload generator: a ``list[ContextTuple]`` in, a payload out (a
#: JSON-serialisable value, ``str`` or ``bytes``). Typed loosely so that
#: flask-chest's ``Callable[[List[Tuple[str, str, str]]], ...]`` generators fit.
PayloadGenerator = Callable[[Any], Any]

DEFAULT_SUCCESS_STATUS_CODES = (200, 201, 202, 204)
#: Longest excerpt of a response body put in a log line.
BODY_EXCERPT = 200

#: How the decorator's attributes are named in ``ContextTuple.attributes``
#: (the InfluxDB tag names).
_DECORATED_ATTRIBUTES = {ATTR_METHOD: "method", ATTR_ROUTE: "route"}
_JSON_TYPES = (dict, list, tuple, int, float, bool, type(None))


class ContextTuple(tuple[str, Any, "str | None"]):
    """``(variable_name, variable_value, request_id)``, plus what OTel knew.

    Attributes:
        attributes: the data point's attributes; for a decorated variable
            ``method`` and ``route`` (the request ID is the tuple's third item).
        time_unix_nano: the request's time (decorated variables) or the data
            point's time (other metrics); 0 if unknown.
        kind: ``"gauge"``, ``"counter"`` (a delta monotonic sum) or
            ``"cumulative_counter"`` (a cumulative monotonic sum).
    """

    attributes: Mapping[str, Any]
    time_unix_nano: int
    kind: str

    def __new__(
        cls,
        name: str,
        value: Any,
        request_id: str | None,
        attributes: Mapping[str, Any] | None = None,
        time_unix_nano: int = 0,
        kind: str = "gauge",
    ) -> ContextTuple:
        self = super().__new__(cls, (name, value, request_id))
        self.attributes = attributes or {}
        self.time_unix_nano = time_unix_nano
        self.kind = kind
        return self

    # A plain tuple's pickling would call __new__ with one argument.
    def __getnewargs__(self) -> tuple[Any, ...]:
        return (*self, dict(self.attributes), self.time_unix_nano, self.kind)

    @property
    def name(self) -> str:
        return self[0]

    @property
    def value(self) -> Any:
        return self[1]

    @property
    def request_id(self) -> str | None:
        return self[2]


@dataclass(frozen=True, slots=True)
class Payload:
    """One POST body, ready to send."""

    body: bytes
    is_json: bool
    #: What the payload holds, for log lines: "request <id>" or "3 requests".
    label: str
    requests: int


def json_payload(context_tuple_list: Sequence[tuple[str, Any, str | None]]) -> list[dict[str, Any]]:
    """A ready-made generator: a JSON list of
    ``{"name", "value", "request_id", "time"}`` objects, ``time`` being an
    RFC 3339 UTC timestamp (``null`` when unknown)."""
    out = []
    for item in context_tuple_list:
        name, value, request_id = item
        time_unix_nano = getattr(item, "time_unix_nano", 0)
        out.append(
            {
                "name": name,
                "value": value,
                "request_id": request_id,
                "time": _rfc3339(time_unix_nano) if time_unix_nano else None,
            }
        )
    return out


def _rfc3339(time_unix_nano: int) -> str:
    seconds, nanos = divmod(time_unix_nano, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos // 1000:06d}Z"


class HTTPPayloadMetricExporter(BufferedExporter[Payload]):
    """A MetricExporter that POSTs user-generated payloads to a URL.

    Payloads are generated at export time (never on a request thread) and
    sent oldest first by the exporter's own thread, one POST at a time on one
    keep-alive ``requests.Session``.

    Args:
        url: where to POST; a malformed URL raises ValueError here.
        payload_generator: called with a list of ``ContextTuple``; returns a
            dict/list/tuple/number/bool/None (sent as ``application/json``)
            or ``str``/``bytes`` (sent as is, without a Content-Type unless
            ``headers`` gives one). One that raises or returns anything else
            is logged with the request ID and its payload skipped (counted in
            ``stats.dropped_encoding``).
        per_request: True (default, flask-chest's behaviour): one generator
            call and one POST per request. False: one call and one POST per
            export, holding the tuples of every request in it.
        headers, params, proxies, verify: as in ``requests.post``; ``verify``
            defaults to True.
        timeout: seconds, or a ``(connect, read)`` pair, as in requests.
        success_status_codes: statuses that mean delivered (default
            200, 201, 202, 204); redirects are not followed, so a 3xx is a
            failure. 429, 5xx, connection errors and timeouts are retried
            with backoff honouring ``Retry-After``; 413 and any other status
            is logged (status, body excerpt) and the payload dropped.
        name, logger, retry_initial, retry_max, max_buffer_items, max_buffer_bytes: see
            ``BufferedExporter``.
    """

    def __init__(
        self,
        *,
        url: str,
        payload_generator: PayloadGenerator,
        name: str | None = None,
        per_request: bool = True,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        proxies: Mapping[str, str] | None = None,
        verify: bool | str = True,
        timeout: float | tuple[float, float] = 10.0,
        success_status_codes: Iterable[int] | None = None,
        logger: logging.Logger | None = None,
        flush_interval: float = 0.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        max_buffer_items: int = 200_000,
        max_buffer_bytes: int = 100_000_000,
    ) -> None:
        self.url = check_url(url, name or type(self).__name__)
        name = name or safe_url(self.url)
        if not callable(payload_generator):
            raise TypeError(
                f"{name}: payload_generator must be callable, got {payload_generator!r}"
            )
        codes = tuple(
            DEFAULT_SUCCESS_STATUS_CODES if success_status_codes is None else success_status_codes
        )
        for code in codes:
            if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                raise ValueError(f"{name}: {code!r} in success_status_codes is not an HTTP status")
        # The drain loop's bound on one send; requests gets ``timeout`` as given.
        send_timeout = float(sum(timeout)) if isinstance(timeout, tuple) else float(timeout)
        super().__init__(
            name=name,
            logger=logger,
            flush_interval=flush_interval,
            # One POST per _send: a retry then never re-sends a payload that
            # already went (the drain loop retries whole batches).
            max_batch_items=1,
            max_buffer_items=max_buffer_items,
            max_buffer_bytes=max_buffer_bytes,
            timeout=send_timeout,
            retry_initial=retry_initial,
            retry_max=retry_max,
        )
        self.payload_generator = payload_generator
        self.per_request = per_request
        self.params = params
        # What requests would read from the environment on every call (proxy
        # variables, REQUESTS_CA_BUNDLE, ~/.netrc) is read once, here: that
        # look-up was 30% of the CPU of a POST (measured, docs/benchmarks.md).
        environ_proxies = requests.utils.get_environ_proxies(self.url)
        self.proxies = {**environ_proxies, **dict(proxies or {})} or None
        self.verify = verify
        environ_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._verify = environ_bundle if verify is True and environ_bundle else verify
        self._netrc_auth = requests.utils.get_netrc_auth(self.url)
        self.request_timeout = timeout
        self.success_status_codes = frozenset(codes)
        self._safe_url = safe_url(self.url)
        user_headers = dict(headers or {})
        self._raw_headers = {"User-Agent": f"flask_chest_otel/{VERSION}", **user_headers}
        self._json_headers = dict(self._raw_headers)
        if not any(key.lower() == "content-type" for key in user_headers):
            self._json_headers["Content-Type"] = "application/json"
        self._session = self._new_session()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # the environment was read at construction
        if self._netrc_auth is not None:
            session.auth = self._netrc_auth
        return session

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self._safe_url!r})"

    # -- encoding: MetricsData -> context tuples -> payloads -------------------

    def context_tuple_lists(self, metrics_data: MetricsData) -> list[list[ContextTuple]]:
        """The lists the payload generator is called with for ``metrics_data``."""
        requests_, others = _context_tuples(metrics_data, self._warn_unsupported)
        if not self.per_request:
            merged = [item for group in requests_ for item in group] + others
            return [merged] if merged else []
        return [*requests_, others] if others else requests_

    def _encode(self, metrics_data: MetricsData) -> Iterator[Payload]:
        for group in self.context_tuple_lists(metrics_data):
            payload = self._generate(group)
            if payload is not None:
                yield payload

    def _generate(self, group: list[ContextTuple]) -> Payload | None:
        request_ids = list(dict.fromkeys(item[2] for item in group if item[2] is not None))
        if len(request_ids) == 1:
            label = f"request {request_ids[0]}"
        elif request_ids:
            label = f"{len(request_ids)} requests ({request_ids[0]}...)"
        else:
            label = "metrics without a request"
        try:
            result = self.payload_generator(group)
            body, is_json = _serialise(result)
        except Exception as exc:
            self.stats.dropped_encoding += 1
            self._log.log(
                logging.ERROR,
                "generator",
                "%s: payload_generator failed for %s: %r; payload skipped",
                self.name,
                label,
                exc,
            )
            return None
        return Payload(body, is_json, label, len(request_ids))

    def _item_size(self, item: Payload) -> int:
        return len(item.body)

    def _warn_unsupported(self, metric: Metric) -> None:
        self._log.log(
            logging.WARNING,
            "unsupported:" + metric.name,
            "%s: metric %r is a %s, which the payload writer does not convert; skipped",
            self.name,
            metric.name,
            type(metric.data).__name__,
        )

    # -- sending ---------------------------------------------------------------

    def _send(self, batch: Sequence[Payload]) -> Outcome:
        for sent, payload in enumerate(batch):
            outcome = self._post(payload)
            if outcome.status is not Status.DELIVERED:
                return Outcome(outcome.status, outcome.message, outcome.retry_after, sent)
        return DELIVERED

    def _post(self, payload: Payload) -> Outcome:
        try:
            response = self._session.post(
                self.url,
                data=payload.body,
                headers=self._json_headers if payload.is_json else self._raw_headers,
                params=self.params,
                proxies=self.proxies,
                verify=self._verify,
                timeout=self.request_timeout,
                allow_redirects=False,
            )
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            return Outcome(
                Status.RETRY, f"POST {self._safe_url} ({payload.label}) failed: {_reason(exc)}"
            )
        except requests.exceptions.InvalidHeader:
            # requests' message quotes the header value: a token, usually.
            return Outcome(
                Status.REJECTED,
                f"POST {self._safe_url} ({payload.label}) not sent: a header value holds a "
                "newline or another character HTTP headers cannot carry (value not shown)",
            )
        except requests.RequestException as exc:
            return Outcome(
                Status.REJECTED, f"POST {self._safe_url} ({payload.label}) failed: {_reason(exc)}"
            )
        status = response.status_code
        if status in self.success_status_codes:
            return DELIVERED
        excerpt = response.content[:BODY_EXCERPT].decode("utf-8", "replace")
        message = f"HTTP {status} from POST {self._safe_url} ({payload.label}): {excerpt!r}"
        if 300 <= status < 400 and "Location" in response.headers:
            message += f" (redirect to {response.headers['Location']!r} not followed)"
        if status == 429 or 500 <= status <= 599:
            return Outcome(
                Status.RETRY, message, parse_retry_after(response.headers.get("Retry-After"))
            )
        if status == 413:
            return Outcome(Status.TOO_LARGE, message)
        return Outcome(Status.REJECTED, message)

    def _close(self) -> None:
        self._session.close()

    def _after_fork_in_child(self) -> None:
        # The parent's pooled sockets must not be shared with the child.
        super()._after_fork_in_child()
        self._session = self._new_session()


def _reason(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:BODY_EXCERPT]}"


def _serialise(result: Any) -> tuple[bytes, bool]:
    if isinstance(result, bytes):
        return result, False
    if isinstance(result, (bytearray, memoryview)):
        return bytes(result), False
    if isinstance(result, str):
        return result.encode("utf-8"), False
    if isinstance(result, _JSON_TYPES):
        text = json.dumps(result, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8"), True
    raise TypeError(
        f"payload_generator returned a {type(result).__name__}; expected a JSON-serialisable "
        "dict/list/tuple/number/bool/None, or str/bytes"
    )


# -- MetricsData -> context tuples ---------------------------------------------


def _context_tuples(
    metrics_data: MetricsData, unsupported: Callable[[Metric], None]
) -> tuple[list[list[ContextTuple]], list[ContextTuple]]:
    """(the tuples of each request, in request time order; the tuples of
    every other metric)."""
    # request key -> (time, first seen, [(metric order, tuple)])
    requests_: dict[tuple[Any, ...], tuple[int, int, list[tuple[int, ContextTuple]]]] = {}
    others: list[ContextTuple] = []
    order = 0
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            decorated = scope_metrics.scope.name == SCOPE_NAME
            for metric in scope_metrics.metrics:
                order += 1
                if not decorated:
                    others.extend(_metric_tuples(metric, unsupported))
                    continue
                for point in metric.data.data_points:
                    key, item, index = _decorated_tuple(
                        metric.name, point  # type: ignore[arg-type]
                    )
                    entry = requests_.get(key)
                    if entry is None:
                        entry = requests_[key] = (item.time_unix_nano, len(requests_), [])
                    entry[2].append((order if index is None else index, item))
    groups = sorted(requests_.values(), key=lambda entry: (entry[0], entry[1]))
    return [
        [item for _, item in sorted(entry[2], key=lambda pair: pair[0])] for entry in groups
    ], others


def _decorated_tuple(
    name: str, point: NumberDataPoint
) -> tuple[tuple[Any, ...], ContextTuple, int | None]:
    """(the request's key, the tuple, its position among the request's
    variables when the decorator gave one)."""
    attributes: dict[str, Any] = {}
    value: Any = point.value
    request_id: str | None = None
    index: int | None = None
    time_unix_nano = point.time_unix_nano
    for attribute, attribute_value in (point.attributes or {}).items():
        if attribute == ATTR_INDEX:
            index = int(attribute_value)  # type: ignore[arg-type]
        elif attribute == ATTR_REQUEST_ID:
            request_id = str(attribute_value)
        elif attribute == ATTR_STRING_VALUE:
            value = str(attribute_value)
        elif attribute == ATTR_TIME:
            time_unix_nano = int(attribute_value)  # type: ignore[arg-type]
        else:
            attributes[_DECORATED_ATTRIBUTES.get(attribute, attribute)] = attribute_value
    item = ContextTuple(name, value, request_id, attributes, time_unix_nano, "gauge")
    # Two requests may share an ID (a clock-based generator): their times differ.
    key = (request_id, time_unix_nano, attributes.get("method"), attributes.get("route"))
    return key, item, index


def _sum_kind(data: Sum) -> str:
    if not data.is_monotonic:
        return "gauge"
    if data.aggregation_temporality is AggregationTemporality.CUMULATIVE:
        return "cumulative_counter"
    return "counter"


def _metric_tuples(metric: Metric, unsupported: Callable[[Metric], None]) -> list[ContextTuple]:
    data = metric.data
    name = metric.name
    out: list[ContextTuple] = []
    if isinstance(data, (Gauge, Sum)):
        kind = _sum_kind(data) if isinstance(data, Sum) else "gauge"
        for point in data.data_points:
            attributes = dict(point.attributes or {})
            at = point.time_unix_nano
            out.append(ContextTuple(name, point.value, None, attributes, at, kind))
    elif isinstance(data, Histogram):
        kind = (
            "cumulative_counter"
            if data.aggregation_temporality is AggregationTemporality.CUMULATIVE
            else "counter"
        )
        for hpoint in data.data_points:
            attributes = dict(hpoint.attributes or {})
            at = hpoint.time_unix_nano
            out.append(ContextTuple(f"{name}_count", hpoint.count, None, attributes, at, kind))
            out.append(ContextTuple(f"{name}_sum", hpoint.sum, None, attributes, at, kind))
            if hpoint.count:
                out.append(ContextTuple(f"{name}_min", hpoint.min, None, attributes, at, "gauge"))
                out.append(ContextTuple(f"{name}_max", hpoint.max, None, attributes, at, "gauge"))
            cumulative = 0
            bounds = [*(str(float(bound)) for bound in hpoint.explicit_bounds), "+Inf"]
            for bound, count in zip(bounds, hpoint.bucket_counts, strict=False):
                cumulative += count
                bucket_attributes = {**attributes, "le": bound}
                out.append(
                    ContextTuple(f"{name}_bucket", cumulative, None, bucket_attributes, at, kind)
                )
    else:  # ExponentialHistogram: no tuple layout that generators could rely on
        unsupported(metric)
    return out


class FlaskChestCustomWriter(Chest):
    """A chest that POSTs each request's tracked variables, as the payload
    its ``payload_generator`` makes of them, to ``url``.

    The positional order of flask-chest's ``FlaskChestCustomWriter`` is kept;
    ``name`` defaults to the URL, as there. See ``HTTPPayloadMetricExporter``
    for the parameters; ``export_interval`` is the seconds between exports.
    Differences from flask-chest: ``verify`` defaults to True, a dict payload
    is sent as JSON (flask-chest form-encoded it), and the POST happens on an
    exporter thread with retries, never in the request.
    """

    exporter: HTTPPayloadMetricExporter

    def __init__(
        self,
        name: str | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        proxies: Mapping[str, str] | None = None,
        payload_generator: PayloadGenerator | None = None,
        verify: bool | str = True,
        success_status_codes: Iterable[int] | None = None,
        logger: logging.Logger | None = None,
        *,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        timeout: float | tuple[float, float] = 10.0,
        per_request: bool = True,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        max_buffer_items: int = 200_000,
        max_buffer_bytes: int = 100_000_000,
    ) -> None:
        if url is None:
            raise ValueError(f"FlaskChestCustomWriter {name!r}: url is required")
        if payload_generator is None:
            raise TypeError(f"FlaskChestCustomWriter {name!r}: payload_generator is required")
        exporter = HTTPPayloadMetricExporter(
            url=url,
            payload_generator=payload_generator,
            name=name,
            per_request=per_request,
            headers=headers,
            params=params,
            proxies=proxies,
            verify=verify,
            timeout=timeout,
            success_status_codes=success_status_codes,
            logger=logger,
            retry_initial=retry_initial,
            retry_max=retry_max,
            max_buffer_items=max_buffer_items,
            max_buffer_bytes=max_buffer_bytes,
        )
        super().__init__(exporter.name, exporter, export_interval=export_interval, logger=logger)

    @property
    def url(self) -> str:
        return self.exporter.url

    @property
    def payload_generator(self) -> PayloadGenerator:
        return self.exporter.payload_generator
