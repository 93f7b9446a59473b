"""``HTTPPayloadMetricExporter``: context tuples -> a user's payload
generator -> POSTs, from the exporter's own thread.

What both modes share lives here: the arguments and their checks, the
transport, judging an answer, the spool, shutdown and fork. Each mode is a
subclass, picked by ``HTTPPayloadMetricExporter(per_request=...)``:
:class:`~._per_request.PerRequestPayloadExporter` (items are payloads, one
POST each, sent over the connections at once) and
:class:`~._batched.BatchedPayloadExporter` (items are requests' tuples, one
POST per batch, a refused request narrowed down).

Both modes share a spool (its identity is the URL and the name, not the
mode): items the other mode left there are adopted and sent as this mode
can (``_send_adopted``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

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
from .._random import random16
from .._records import VERSION
from .._redact import Secrets, guard_third_party_logs
from .._spool_codecs import dumps_http_item, loads_http_item
from ..environment_variables import FLASK_CHEST_HTTP_MAX_CONNECTIONS
from ._context_tuple import ContextTuple, FlatTuple, context_tuples, from_flat_tuple
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
from ._verdicts import Verdicts

#: A payload generator: a ``list[ContextTuple]`` in, a payload out (a
#: JSON-serialisable value, ``str`` or ``bytes``). Typed loosely so that
#: flask-chest's ``Callable[[List[Tuple[str, str, str]]], ...]`` generators fit.
PayloadGenerator = Callable[[Any], Any]

DEFAULT_SUCCESS_STATUS_CODES = (200, 201, 202, 204)
#: POSTs in flight at once per request, one per connection: an endpoint
#: 50 ms away takes 20 POSTs/s per connection, 200 ms away 5/s; 16 carry
#: 200 requests/s to the first and 50/s to the second with room to spare.
DEFAULT_MAX_CONNECTIONS = 16
#: Most connections ``max_connections`` may ask for.
MAX_CONNECTIONS = 256


def _new_key() -> str:
    return random16().hex()


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
Exporter = TypeVar("Exporter", bound="HTTPPayloadMetricExporter")


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

    #: The mode: one POST per request (True) or per batch (False); set by
    #: each mode's class.
    per_request: ClassVar[bool]
    #: The items this mode makes; the other mode's, found in the spool, are
    #: sent apart (``_send_adopted``).
    _item_type: ClassVar[type]
    #: Whether the spool gave this exporter items of the other mode: until
    #: then, a batch is not looked through for them.
    _adopted_other = False

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
        self.url = check_url(url, name or self._class_name())
        name = name or safe_url(self.url)
        if bool(per_request) is not self.per_request:
            # A subclass's own __init__ passed per_request on, too late for
            # ``__new__`` to pick the mode's class from it.
            raise TypeError(
                f"{name}: per_request={per_request!r} must be given to "
                f"{self._class_name()}(...) itself, which picks the mode's class"
            )
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
            max_batch_items=self._max_batch_items(max_connections),
            max_buffer_items=max_buffer_items,
            max_buffer_bytes=max_buffer_bytes,
            timeout=self._transport.total_timeout,
            retry_initial=retry_initial,
            retry_max=retry_max,
            **options,
        )
        self.payload_generator = payload_generator
        self.max_connections = max_connections
        self.params = params
        self.proxies = self._transport.proxies or None
        self.verify = verify
        self.request_timeout = timeout
        self.success_status_codes = frozenset(codes)
        self._safe_url = self._transport.safe_url

    def __new__(cls: type[Exporter], *args: Any, **kwargs: Any) -> Exporter:
        """An instance of the class of the mode ``per_request`` asks for."""
        return super().__new__(_with_mode(cls, bool(kwargs.get("per_request", True))))

    # What help() and the docs show as the class's signature: __init__'s.
    __new__.__signature__ = inspect.signature(__init__)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{self._class_name()}(name={self.name!r}, url={self._safe_url!r})"

    def _class_name(self) -> str:
        """The class users name: a mode's own class stands for this one."""
        cls = type(self)
        return HTTPPayloadMetricExporter.__name__ if cls in _modes() else cls.__name__

    # -- what each mode's class defines -----------------------------------------

    @classmethod
    def _max_batch_items(cls, max_connections: int) -> int:
        """The most items one ``_send`` takes."""
        raise NotImplementedError

    def context_tuple_lists(self, metrics_data: MetricsData) -> list[list[ContextTuple]]:
        """The lists the payload generator is called with for ``metrics_data``."""
        raise NotImplementedError

    def _send_own(self, batch: Sequence[Any]) -> Settlement:
        """Sends a batch of this mode's items."""
        raise NotImplementedError

    def _send_adopted(self, batch: Sequence[Any]) -> Settlement:
        """Sends a batch of the items the other mode left in the spool."""
        raise NotImplementedError

    # -- encoding: MetricsData -> context tuples -> payloads -------------------

    def _groups(self, metrics_data: MetricsData) -> list[list[ContextTuple]]:
        """``metrics_data``'s tuples: one list per request, then one of the
        other metrics (if any)."""
        requests_, others = context_tuples(metrics_data, self._warn_unsupported)
        return [*requests_, others] if others else requests_

    def _payloads_of(self, groups: Sequence[Tuples], verdicts: Verdicts) -> dict[int, Payload]:
        """The payload of each group of flat tuples, by index, keyed by its
        body (the same key on every retry); those the generator fails on are
        not encodable in ``verdicts``."""
        payloads: dict[int, Payload] = {}
        for index, group in enumerate(groups):
            tuples = [from_flat_tuple(flat) for flat in group]
            label, count = label_of(tuples)
            try:
                body, is_json = serialise(self.payload_generator(tuples))
            except Exception as exc:  # logged by the drain, with the others
                reason = (
                    f"payload_generator failed for {label}: {self._secrets.redact_exception(exc)}"
                )
                verdicts.unencodable(index, reason)
            else:
                payloads[index] = Payload(body, is_json, label, count, body_key(body))
        return payloads

    def _item_size(self, item: Item) -> int:
        if isinstance(item, Payload):
            return len(item.body)
        # A request's tuples: about what their JSON takes.
        return sum(64 + len(str(flat[1])) + len(flat[2] or "") for flat in item)

    def _spool_dumps(self, item: Item) -> bytes:
        return dumps_http_item(item)

    def _spool_loads(self, data: bytes) -> Item:
        item = loads_http_item(data, Payload)
        if not isinstance(item, self._item_type):
            self._adopted_other = True
        return item

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
        """This mode's items by ``_send_own``; the other mode's, adopted from
        the spool, apart by ``_send_adopted``; one settlement for both."""
        if not self._adopted_other:
            return self._send_own(batch)
        adopted = [
            index for index, item in enumerate(batch) if not isinstance(item, self._item_type)
        ]
        if not adopted:
            return self._send_own(batch)
        verdicts = Verdicts(len(batch))
        verdicts.merge(adopted, self._send_adopted([batch[index] for index in adopted]))
        taken = set(adopted)
        own = [index for index in range(len(batch)) if index not in taken]
        if own:
            verdicts.merge(own, self._send_own([batch[index] for index in own]))
        return verdicts.settlement()

    def _send_payloads(self, batch: Sequence[Payload]) -> Settlement:
        """Ready payloads (per request, or left in the spool by that mode):
        the batch's POSTs at once over the connections, each judged on its
        own (taken, refused alone, or retried), in one settlement. One that
        got no answer, or an answer asking for a retry, is retried alone:
        the others are settled by their answers."""
        outcomes = self._transport.post_many(
            [Post(payload.body, payload.is_json, payload.key) for payload in batch],
            self._cap(),
            self._asks_to_wait,
        )
        success = self.success_status_codes
        if all(type(outcome) is Answer and outcome.status in success for outcome in outcomes):
            return DELIVERED
        verdicts = Verdicts(len(batch))
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


def _modes() -> tuple[type[HTTPPayloadMetricExporter], ...]:
    """The modes' classes: (batched, per request), indexed by ``per_request``."""
    # Their modules import this one.
    from ._batched import BatchedPayloadExporter
    from ._per_request import PerRequestPayloadExporter

    return BatchedPayloadExporter, PerRequestPayloadExporter


#: A subclass of ``HTTPPayloadMetricExporter`` and a mode's class, as one
#: class, by (subclass, per_request).
_WITH_MODE: dict[tuple[type, bool], type] = {}


def _with_mode(cls: type[Exporter], per_request: bool) -> type[Exporter]:
    """The class of an exporter ``cls(per_request=per_request)``: the mode's
    class; for a subclass of ``HTTPPayloadMetricExporter`` (the entry point's,
    a user's), one that is both, named as the subclass."""
    modes = _modes()
    if issubclass(cls, modes):
        return cls
    mode = modes[per_request]
    if cls is HTTPPayloadMetricExporter:
        return mode  # type: ignore[return-value]
    combined = _WITH_MODE.get((cls, per_request))
    if combined is None:
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        combined = _WITH_MODE[cls, per_request] = type(cls.__name__, (cls, mode), namespace)
    return combined


def body_key(body: bytes) -> str:
    """An ``Idempotency-Key`` for ``body``: its hash, the same on a retry."""
    return hashlib.sha256(body).hexdigest()[:32]


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


def label_of(group: Sequence[ContextTuple]) -> tuple[str, int]:
    first = group[0][2] if group else None
    if first is not None:  # the common case, one request's tuples, in one pass
        for item in group:
            if item[2] != first:
                break
        else:
            return f"request {_printable(first)}", 1
    request_ids = list(dict.fromkeys(item[2] for item in group if item[2] is not None))
    if len(request_ids) == 1:
        return f"request {_printable(request_ids[0])}", 1
    if request_ids:
        return f"{len(request_ids)} requests ({_printable(request_ids[0])}...)", len(request_ids)
    return "metrics without a request", 0


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
