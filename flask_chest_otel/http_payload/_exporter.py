"""``HTTPPayloadMetricExporter``: context tuples -> a user's payload
generator -> one POST per payload, from the exporter's own thread."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from opentelemetry.sdk.metrics.export import Metric, MetricsData

from .._delivery import (
    DELIVERED,
    BufferedExporter,
    Fate,
    Settlement,
    exit_timeout,
    refused,
    retry,
    too_large,
)
from .._http import check_url, parse_retry_after, safe_url
from .._pacing import paced
from .._records import VERSION, Record, attributes_of
from .._redact import Secrets, guard_third_party_logs
from .._spool_codecs import dumps_http_item, loads_http_item
from ..environment_variables import FLASK_CHEST_HTTP_MAX_CONNECTIONS
from ._context_tuple import (
    ContextTuple,
    FlatTuple,
    context_tuples,
    flat_tuple,
    record_flat_groups,
    record_groups,
)
from ._json_payload import serialise
from ._transport import (
    EXCERPT,
    NOT_SENT,
    Answer,
    Outcome,
    Post,
    SendError,
    check_headers,
    make_transport,
)

#: A payload generator: a ``list[ContextTuple]`` in, a payload out (a
#: JSON-serialisable value, ``str`` or ``bytes``). Typed loosely so that
#: flask-chest's ``Callable[[List[Tuple[str, str, str]]], ...]`` generators fit.
PayloadGenerator = Callable[[Any], Any]

DEFAULT_SUCCESS_STATUS_CODES = (200, 201, 202, 204)
#: Most requests one batched POST carries.
MAX_BATCH_REQUESTS = 10_000
#: ... while the app is serving requests (``_pacing``): the payload's
#: ``json.dumps`` holds the GIL throughout, about 1 ms for 500 requests of
#: two variables, 6 ms for 2,500 (the sample app's share of one export).
PACED_BATCH_REQUESTS = 500
#: POSTs in flight at once per request, one per connection: an endpoint
#: 50 ms away takes 20 POSTs/s per connection, 200 ms away 5/s; 16 carry
#: 200 requests/s to the first and 50/s to the second with room to spare.
DEFAULT_MAX_CONNECTIONS = 16
#: Most connections ``max_connections`` may ask for.
MAX_CONNECTIONS = 256
#: Per request, a batch is this many POSTs per connection: enough that the
#: connections stay busy while the batch's slowest answer is awaited.
BATCH_PER_CONNECTION = 4


def _new_key() -> str:
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class Payload:
    """One POST body, ready to send (per-request mode)."""

    body: bytes
    is_json: bool
    #: What the payload holds, for log lines: "request <id>" or "3 requests".
    label: str
    requests: int
    #: Its ``Idempotency-Key``: random, made with the payload, kept in the
    #: spool, the same on every retry.
    key: str = field(default_factory=_new_key, compare=False, repr=False)


#: In batched mode an item is one request's tuples (or the tuples of the
#: other metrics of one export), each as ``flat_tuple`` makes it; a batch of
#: them makes one POST. Atomic values only, so that the garbage collector
#: stops tracking what waits for the next batch, as with the recorder's queue
#: (``_records.Record``): a request's item is two levels deep, which its
#: first two collections (young, then middle generation) untrack, so it
#: never reaches the oldest generation, whose full passes pause requests.
Tuples = tuple[FlatTuple, ...]
Item = Payload | Tuples


class HTTPPayloadMetricExporter(BufferedExporter[Item]):
    """A MetricExporter that POSTs user-generated payloads to a URL.

    Sent oldest first from the exporter's own thread, up to
    ``max_connections`` POSTs at once over kept-alive connections, one in
    flight on each; each POST carries an ``Idempotency-Key`` header, the
    same on every retry of that payload.

    Args:
        url: where to POST; a malformed URL raises ValueError here.
        payload_generator: called with a list of ``ContextTuple``; returns a
            dict/list/tuple/number/bool/None (sent as ``application/json``)
            or ``str``/``bytes`` (sent as is, without a Content-Type unless
            ``headers`` gives one). One that raises or returns anything else
            is logged with the request ID and that payload skipped (counted
            in ``stats.dropped_encoding``); in batched mode only the requests
            it fails on are skipped.
        per_request: True (default, flask-chest's behaviour): one generator
            call and one POST per request, at export time. False: one call
            and one POST per batch of buffered requests (up to 10,000; 500
            while the app is serving requests, as making a POST's JSON holds
            the GIL, about 1 ms for 500 with the sample generator), at send
            time; a batch refused with 400 is narrowed down to the requests
            the server refuses.
        max_connections: at most this many POSTs in flight at once, one per
            connection (default 16, or ``FLASK_CHEST_HTTP_MAX_CONNECTIONS``;
            1 to 256). Connections are opened as the backlog grows and
            closed after 30 s without work. POSTs are never pipelined.
        headers, params, proxies, verify: as in ``requests.post``; ``verify``
            defaults to True. A header value outside Latin-1, which HTTP
            cannot carry, raises ValueError here, without its value; one with
            a line break makes every POST a logged rejection (never sent).
        session: a ``requests.Session`` to send through (its adapters, auth,
            cookies); by default the exporter sends on its own connection.
        timeout: seconds, or a ``(connect, read)`` pair; caps a whole POST
            (connect, send, wait for and read the answer) at the seconds or
            the pair's sum. Through a proxy or a ``session``, requests
            applies it to each socket operation instead. A POST that got no
            answer in time is sent again (with the same ``Idempotency-Key``).
        success_status_codes: statuses that mean delivered (default
            200, 201, 202, 204); redirects are not followed, so a 3xx is a
            failure. 429, 5xx, connection errors and timeouts are retried
            with backoff honouring ``Retry-After``; 413 and any other status
            is logged (status, body excerpt) and the payload dropped.
        name, logger, retry_initial, retry_max, max_buffer_items, options:
            see ``BufferedExporter`` (``max_buffer_bytes``, ...).
    """

    def __init__(
        self,
        *,
        url: str,
        payload_generator: PayloadGenerator,
        name: str | None = None,
        per_request: bool = True,
        max_connections: int | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        proxies: Mapping[str, str] | None = None,
        verify: bool | str = True,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = 10.0,
        success_status_codes: Iterable[int] | None = None,
        logger: logging.Logger | None = None,
        flush_interval: float = 0.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        max_buffer_items: int = 200_000,
        max_buffer_bytes: int = 100_000_000,
        **options: Any,
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
        max_connections = _max_connections(max_connections, name)
        user_headers, unsendable = check_headers(headers or {}, name)
        raw_headers = {"User-Agent": f"flask_chest_otel/{VERSION}", **user_headers}
        self._transport = make_transport(
            url=self.url,
            headers=raw_headers,
            params=params,
            proxies=proxies,
            verify=verify,
            timeout=timeout,
            session=session,
            what=name,
            secrets=Secrets.of(url=self.url, headers=user_headers, params=params),
            unsendable_header=unsendable,
            max_connections=max_connections,
        )
        # With what requests adds on its own (``~/.netrc``, a session's auth).
        self._secrets = self._transport.secrets
        guard_third_party_logs(self._secrets)
        super().__init__(
            name=name,
            logger=logger,
            flush_interval=flush_interval,
            # Per request, a batch is the POSTs sent at once over the
            # connections; see ``_send_payloads``.
            max_batch_items=(
                max_connections * BATCH_PER_CONNECTION if per_request else MAX_BATCH_REQUESTS
            ),
            max_buffer_items=max_buffer_items,
            max_buffer_bytes=max_buffer_bytes,
            timeout=self._transport.total_timeout,
            retry_initial=retry_initial,
            retry_max=retry_max,
            **options,
        )
        self.payload_generator = payload_generator
        self.per_request = per_request
        self.max_connections = max_connections
        if per_request:
            # A request's POST goes as soon as it is encoded: the
            # connections take what waits then, not waiting to fill a batch.
            self.send_at_items = 1
        else:
            self.paced_batch_items = PACED_BATCH_REQUESTS
        self.params = params
        self.proxies = self._transport.proxies or None
        self.verify = verify
        self.request_timeout = timeout
        self.success_status_codes = frozenset(codes)
        self._safe_url = self._transport.safe_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self._safe_url!r})"

    # -- encoding: MetricsData -> context tuples -> payloads -------------------

    def context_tuple_lists(self, metrics_data: MetricsData) -> list[list[ContextTuple]]:
        """The lists the payload generator is called with for ``metrics_data``."""
        requests_, others = context_tuples(metrics_data, self._warn_unsupported)
        if not self.per_request:
            merged = [item for group in requests_ for item in group] + others
            return [merged] if merged else []
        return [*requests_, others] if others else requests_

    def _encode(self, metrics_data: MetricsData) -> Iterator[Item]:
        requests_, others = context_tuples(metrics_data, self._warn_unsupported)
        groups = [*requests_, others] if others else requests_
        if not self.per_request:
            # Through lists: see ``_records.flat_attributes``.
            yield from (tuple([flat_tuple(item) for item in group]) for group in groups)
            return
        yield from self._payloads(groups)

    def _encode_records(self, records: Sequence[Record]) -> Iterator[Item]:
        if not self.per_request:
            yield from (tuple(group) for group in record_flat_groups(records))
            return
        yield from self._payloads(record_groups(records))

    def _payloads(self, groups: list[list[ContextTuple]]) -> Iterator[Payload]:
        """Per-request mode: one payload per group (a request's tuples, or
        the other metrics')."""
        for group in groups:
            payload = self._generate(group)
            if payload is not None:
                yield payload

    def _generate(self, group: list[ContextTuple]) -> Payload | None:
        label, count = _label(group)
        try:
            body, is_json = serialise(self.payload_generator(group))
        except Exception as exc:
            self.stats.dropped_encoding += 1
            self._log_generator_failure(label, exc)
            return None
        return Payload(body, is_json, label, count)

    def _log_generator_failure(self, label: str, exc: Exception) -> None:
        self._log.log(
            logging.ERROR,
            "generator",
            "%s: payload_generator failed for %s; payload skipped: %s",
            self.name,
            label,
            self._secrets.redact_exception(exc),
        )

    def _item_size(self, item: Item) -> int:
        if isinstance(item, Payload):
            return len(item.body)
        # A request's tuples: about what their JSON takes.
        return sum(64 + len(str(flat[1])) + len(flat[2] or "") for flat in item)

    def _spool_dumps(self, item: Item) -> bytes:
        return dumps_http_item(item)

    def _spool_loads(self, data: bytes) -> Item:
        return loads_http_item(data, Payload)

    def _spool_identity(self) -> tuple[str, str, str]:
        # The query may hold a secret: only its hash is written.
        query = hashlib.sha256(self.url.encode()).hexdigest()[:12] if "?" in self.url else ""
        return "http-payload", self.name, f"{safe_url(self.url)} {query}".strip()

    def _warn_unsupported(self, metric: Metric) -> None:
        self._log.log(
            logging.WARNING,
            "unsupported",
            "%s: metric %r is a %s, which the payload writer does not convert; skipped",
            self.name,
            metric.name,
            type(metric.data).__name__,
        )

    # -- sending ---------------------------------------------------------------

    def _send(self, batch: Sequence[Item]) -> Settlement:
        if batch and not isinstance(batch[0], Payload):
            return self._send_batched(batch)  # type: ignore[arg-type]
        return self._send_payloads(batch)  # type: ignore[arg-type]

    def _send_payloads(self, batch: Sequence[Payload]) -> Settlement:
        """Per request: the batch's POSTs at once over the connections, each
        judged on its own (taken, refused alone, or retried), in one
        settlement. One that got no answer, or an answer asking for a
        retry, is retried alone: the others are settled by their answers."""
        outcomes = self._transport.post_many(
            [Post(payload.body, payload.is_json, payload.key) for payload in batch],
            self._cap(),
            self._asks_to_wait,
        )
        verdicts = _Verdicts(len(batch))
        # Those not sent last: the message is what the server said.
        order = sorted(range(len(batch)), key=lambda index: outcomes[index] is NOT_SENT)
        for index in order:
            judged = self._settle(outcomes[index], batch[index])
            if judged.rest is Fate.TOO_LARGE:  # one request's payload: alone too large
                judged = refused(judged.message)
            verdicts.set(index, judged)
        return verdicts.settlement()

    def _asks_to_wait(self, outcome: Outcome) -> bool:
        """Whether the rest of a batch should wait for the backoff: the
        connection failed, or the server asked to retry (429, 5xx)."""
        if isinstance(outcome, SendError):
            return outcome.retry
        status = outcome.status
        return status not in self.success_status_codes and (status == 429 or status >= 500)

    def _cap(self) -> float | None:
        """The deadline of every POST while shutting down (None before)."""
        deadline = self._stop_deadline
        return None if math.isinf(deadline) else deadline

    def _send_batched(self, batch: Sequence[Tuples]) -> Settlement:
        """Batched: one POST for the batch's requests. A 400 makes the batch
        suspect (the drain narrows it down to the requests refused); if the
        generator fails on the batch, the requests it fails on alone are
        dropped and the others sent."""
        merged = [_context_tuple(flat) for group in paced(batch) for flat in group]
        label, count = _label(merged)
        try:
            body, is_json = serialise(self.payload_generator(merged))
        except Exception:
            return self._send_isolated(batch)
        judged = self._post(Payload(body, is_json, label, count))
        if judged.rest is Fate.REFUSED and judged.message.startswith("HTTP 400 "):
            return Settlement(Fate.SUSPECT, message=judged.message)
        return judged

    def _send_isolated(self, batch: Sequence[Tuples]) -> Settlement:
        """The generator failed on the batch: the requests it fails on alone
        are not encodable; the others are sent (one by one if it fails on
        the whole only)."""
        verdicts = _Verdicts(len(batch))
        good: list[int] = []
        for index, group in enumerate(batch):
            tuples = [_context_tuple(flat) for flat in group]
            try:
                serialise(self.payload_generator(tuples))
            except Exception as exc:  # logged by the drain, with the others
                label = _label(tuples)[0]
                reason = (
                    f"payload_generator failed for {label}: {self._secrets.redact_exception(exc)}"
                )
                verdicts.unencodable(index, reason)
            else:
                good.append(index)
        if not good:
            return verdicts.settlement()
        if len(good) == len(batch):  # fails on the whole only: send one by one
            return self._send_one_by_one(batch)
        verdicts.merge(good, self._send_batched([batch[index] for index in good]))
        return verdicts.settlement()

    def _send_one_by_one(self, groups: Sequence[Tuples]) -> Settlement:
        """One POST per request, each judged on its own, as in per-request
        mode; a retry stops there."""
        verdicts = _Verdicts(len(groups))
        for index, group in enumerate(groups):
            judged = self._send_batched([group])
            if judged.rest is Fate.SUSPECT:  # a 400 for this request alone
                judged = refused(judged.message)
            verdicts.merge([index], judged)
            if judged.fate(0) is Fate.RETRY:
                return verdicts.rest(index + 1, verdicts.retry_settlement(index))
        return verdicts.settlement()

    def _post(self, payload: Payload) -> Settlement:
        # Batched: the key of a body is its hash, the same on a retry.
        key = hashlib.sha256(payload.body).hexdigest()[:32]
        outcome = self._transport.post_many([Post(payload.body, payload.is_json, key)], self._cap())
        return self._settle(outcome[0], payload)

    def _settle(self, outcome: Outcome, payload: Payload) -> Settlement:
        if isinstance(outcome, SendError):
            message = f"POST {self._safe_url} ({payload.label}) failed: {outcome}"
            return retry(message) if outcome.retry else refused(message)
        return self._judge(outcome, payload)

    def _judge(self, answer: Answer, payload: Payload) -> Settlement:
        if answer.status in self.success_status_codes:
            return DELIVERED
        return self._refused(answer, f"POST {self._safe_url} ({payload.label})")

    def _refused(self, answer: Answer, what: str) -> Settlement:
        status = answer.status
        excerpt = answer.body[:EXCERPT].decode("utf-8", "replace")
        excerpt = self._secrets.redact(excerpt, truncated=len(answer.body) >= EXCERPT)
        message = f"HTTP {status} from {what}: {excerpt!r}"
        if 300 <= status < 400 and answer.location:
            location = self._secrets.redact(answer.location)
            message += f" (redirect to {location!r} not followed)"
        if status == 429 or 500 <= status <= 599:
            return retry(message, parse_retry_after(answer.retry_after))
        if status == 413:
            return too_large(message)
        return refused(message)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Sends what is buffered over every connection within
        ``timeout_millis``, then stops (see ``BufferedExporter.shutdown``).
        Called by the OpenTelemetry SDK's reader (``timeout=`` in
        milliseconds: 30 s at interpreter exit, longer than a process
        manager's grace period), it takes at most the exit budget
        (:func:`~flask_chest_otel.set_exit_timeout`, 5 s by default): what
        is left then stays in the spool, or is counted in one ERROR line."""
        timeout = kwargs.pop("timeout", None)
        if timeout is not None:
            timeout_millis = min(float(timeout), exit_timeout() * 1000)
        super().shutdown(timeout_millis, **kwargs)

    def _ensure_thread(self) -> None:
        super()._ensure_thread()
        if self._thread is not None:  # the connections' threads with it
            self._transport.start()

    def _close(self) -> None:
        self._transport.close()

    def _after_fork_in_child(self) -> None:
        # The parent's kept-alive sockets must not be shared with the child.
        self._transport.after_fork_in_child()
        super()._after_fork_in_child()


class _Verdicts:
    """The fates of a batch's items as its POSTs are answered."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fates: dict[int, Fate] = {}
        self.reasons: dict[int, str] = {}
        self.message = ""
        self.retry_after: float | None = None

    def set(self, index: int, judged: Settlement) -> None:
        """Item ``index`` was posted alone and ``judged`` so."""
        self.merge([index], judged)

    def unencodable(self, index: int, reason: str) -> None:
        self.fates[index] = Fate.UNENCODABLE
        self.reasons[index] = reason

    def merge(self, indices: Sequence[int], judged: Settlement) -> None:
        """The items at ``indices`` were posted together and ``judged`` so."""
        for number, index in enumerate(indices):
            fate = judged.fate(number)
            self.fates[index] = fate
            if fate is not Fate.DELIVERED:
                self.reasons[index] = judged.reason(number)
        if judged.rest is not Fate.DELIVERED or judged.fates:
            self.message = self.message or judged.message
            if judged.retry_after is not None:
                # Several POSTs asked to wait: the longest wait holds for all.
                self.retry_after = max(self.retry_after or 0.0, judged.retry_after)

    def retry_settlement(self, index: int) -> Settlement:
        """The answer that asked to retry item ``index``."""
        return Settlement(
            Fate.RETRY, message=self.reasons.get(index, ""), retry_after=self.retry_after
        )

    def rest(self, start: int, judged: Settlement) -> Settlement:
        """The batch, items from ``start`` on not posted: they share
        ``judged``'s fate (a retry, or a refusal of every POST)."""
        for index in range(start, self.size):
            self.fates[index] = judged.rest
        self.message = judged.message
        self.retry_after = judged.retry_after
        return self.settlement()

    def settlement(self) -> Settlement:
        return Settlement(
            Fate.DELIVERED,
            {index: fate for index, fate in self.fates.items() if fate is not Fate.DELIVERED},
            message=self.message,
            reasons=self.reasons,
            retry_after=self.retry_after,
        )


def _max_connections(value: int | None, name: str) -> int:
    """``max_connections``, else ``FLASK_CHEST_HTTP_MAX_CONNECTIONS``, else 16."""
    if value is None:
        text = os.environ.get(FLASK_CHEST_HTTP_MAX_CONNECTIONS, "").strip()
        if not text:
            return DEFAULT_MAX_CONNECTIONS
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"{name}: ${FLASK_CHEST_HTTP_MAX_CONNECTIONS}: expected an integer, got {text!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONNECTIONS:
        raise ValueError(
            f"{name}: max_connections must be an int from 1 to {MAX_CONNECTIONS}, got {value!r}"
        )
    return value


def _context_tuple(flat: FlatTuple | ContextTuple) -> ContextTuple:
    """The ContextTuple ``flat_tuple`` flattened (as is if it is one already: a
    spool file written before batched mode buffered flat tuples)."""
    if isinstance(flat, ContextTuple):
        return flat
    name, value, request_id, time_unix_nano, kind = flat[:5]
    return ContextTuple(name, value, request_id, attributes_of(flat[5:]), time_unix_nano, kind)


def _label(group: Sequence[ContextTuple]) -> tuple[str, int]:
    request_ids = list(dict.fromkeys(item[2] for item in group if item[2] is not None))
    if len(request_ids) == 1:
        return f"request {_printable(request_ids[0])}", 1
    if request_ids:
        return f"{len(request_ids)} requests ({_printable(request_ids[0])}...)", len(request_ids)
    return "metrics without a request", 0


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
