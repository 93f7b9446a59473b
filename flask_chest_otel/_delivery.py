"""Delivery machinery shared by every exporter: a bounded buffer, one sender
thread per exporter, retries with backoff, flush and shutdown.

The OpenTelemetry reader ignores a failed export, so an exporter that must
not lose data owns its delivery. ``BufferedExporter.export`` only encodes and
enqueues (it never does I/O); a thread of the exporter's own sends batches,
oldest first, and keeps what a reachable-again backend could still take.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
    _Gauge,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

Item = TypeVar("Item")

LOGGER = logging.getLogger("flask_chest_otel")

#: DELTA for every instrument kind: storage is emptied at each collection, so
#: per-request attribute sets do not accumulate (see docs/reliability.md).
DELTA_TEMPORALITY: dict[type, AggregationTemporality] = {
    kind: AggregationTemporality.DELTA
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        _Gauge,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}


class Status(enum.Enum):
    """What became of one attempt to send a batch."""

    DELIVERED = "delivered"
    #: Transient (connection error, timeout, 429, 5xx): keep and try again.
    RETRY = "retry"
    #: Permanent (400, 401, 403, 404, 422...): drop, count and log.
    REJECTED = "rejected"
    #: 413: split the batch and send the halves.
    TOO_LARGE = "too_large"
    #: The backend refused the whole batch for what some of its items hold
    #: (a 400 for one malformed line): narrow it down so that only the
    #: refused items are dropped.
    INVALID = "invalid"


@dataclass(frozen=True)
class Outcome:
    """Result of ``BufferedExporter._send``.

    ``retry_after`` is the server's ``Retry-After`` in seconds, if it gave one.
    ``message`` is logged for RETRY and REJECTED; it must never hold a secret.
    ``delivered`` lets a REJECTED outcome say how many items of the batch
    nevertheless reached the backend (a partial write).
    """

    status: Status
    message: str = ""
    retry_after: float | None = None
    delivered: int = 0


DELIVERED = Outcome(Status.DELIVERED)


class RateLimitedLog:
    """Logs one message per key at most every ``interval`` seconds, counting the
    repeats in between, so a dead backend does not flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def log(
        self, level: int, key: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args, exc_info=exc_info)


def backoff_delay(attempt: int, initial: float, maximum: float, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential
    with +-20% jitter, or the server's ``Retry-After`` plus a little jitter;
    both capped at ``maximum``."""
    if retry_after is not None and retry_after >= 0:
        return float(min(retry_after + random.uniform(0, 0.1 * initial), maximum))
    return float(min(initial * 2 ** (attempt - 1) * random.uniform(0.8, 1.2), maximum))


@dataclass
class DeliveryStats:
    """Counters of one exporter, readable from Python (``exporter.stats``)."""

    exported: int = 0
    retried: int = 0
    dropped_buffer_full: int = 0
    dropped_rejected: int = 0
    dropped_shutdown: int = 0
    dropped_encoding: int = 0
    buffered: int = 0
    buffered_bytes: int = 0

    @property
    def dropped(self) -> int:
        return (
            self.dropped_buffer_full
            + self.dropped_rejected
            + self.dropped_shutdown
            + self.dropped_encoding
        )


_LIVE_EXPORTERS: weakref.WeakSet[BufferedExporter[Any]] = weakref.WeakSet()


class BufferedExporter(MetricExporter, Generic[Item]):
    """A MetricExporter that encodes on ``export`` and sends on its own thread.

    Subclasses implement ``_encode`` (MetricsData -> items, no I/O), ``_send``
    (one batch -> Outcome, may block up to ``timeout``) and may override
    ``_item_size`` (bytes, for the byte bound and batch splitting).

    Args:
        name: shown in every log line, to tell chests apart.
        logger: where delivery problems are logged (``flask_chest_otel`` if None).
        flush_interval: seconds between sends; 0 sends as soon as data arrives.
        max_batch_items / max_batch_bytes: the largest batch one request carries.
        max_buffer_items / max_buffer_bytes: the buffer's bound; when full the
            oldest items are dropped, counted and logged once per interval.
        timeout: seconds one send may take.
        retry_initial / retry_max: backoff bounds in seconds (Retry-After is
            honoured up to ``retry_max``).
        preferred_temporality: as for any MetricExporter; DELTA by default.
    """

    def __init__(
        self,
        *,
        name: str,
        logger: logging.Logger | None = None,
        flush_interval: float = 0.0,
        max_batch_items: int = 10_000,
        max_batch_bytes: int = 10_000_000,
        max_buffer_items: int = 200_000,
        max_buffer_bytes: int = 100_000_000,
        timeout: float = 10.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        preferred_temporality: dict[type, AggregationTemporality] | None = None,
    ) -> None:
        super().__init__(preferred_temporality=preferred_temporality or dict(DELTA_TEMPORALITY))
        for label, number in (
            ("max_batch_items", max_batch_items),
            ("max_batch_bytes", max_batch_bytes),
            ("max_buffer_items", max_buffer_items),
            ("max_buffer_bytes", max_buffer_bytes),
        ):
            if number < 1:
                raise ValueError(f"{label} must be at least 1, got {number!r}")
        if flush_interval < 0 or timeout <= 0 or retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError(
                "flush_interval must be >= 0, timeout and retry_initial > 0, "
                "retry_max >= retry_initial"
            )
        self.name = name
        self.logger = logger or LOGGER
        self.flush_interval = flush_interval
        self.max_batch_items = max_batch_items
        self.max_batch_bytes = max_batch_bytes
        self.max_buffer_items = max_buffer_items
        self.max_buffer_bytes = max_buffer_bytes
        self.timeout = timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stats = DeliveryStats()
        self._log = RateLimitedLog(self.logger)
        self._buffer: deque[tuple[Item, int]] = deque()
        self._shut_down = False
        self._init_thread_state()
        _LIVE_EXPORTERS.add(self)

    # -- subclass hooks -------------------------------------------------------

    def _encode(self, metrics_data: MetricsData) -> Iterable[Item]:
        raise NotImplementedError

    def _send(self, batch: Sequence[Item]) -> Outcome:
        raise NotImplementedError

    def _item_size(self, item: Item) -> int:
        return 1

    def _close(self) -> None:
        """Releases the exporter's resources; called once, on the sender thread."""

    # -- MetricExporter -------------------------------------------------------

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Encodes and enqueues; never blocks on I/O. FAILURE only if the data
        could not be encoded or the exporter is shut down."""
        if self._shut_down:
            points = sum(
                len(metric.data.data_points)
                for resource_metrics in metrics_data.resource_metrics
                for scope_metrics in resource_metrics.scope_metrics
                for metric in scope_metrics.metrics
            )
            self.stats.dropped_shutdown += points
            self._log.log(
                logging.WARNING,
                "after-shutdown",
                "%s: received %d points after shutdown(); they are dropped",
                self.name,
                points,
            )
            return MetricExportResult.FAILURE
        try:
            items = [(item, self._item_size(item)) for item in self._encode(metrics_data)]
        except Exception:
            self.stats.dropped_encoding += 1
            self.logger.exception("%s: could not encode metrics; they are dropped", self.name)
            return MetricExportResult.FAILURE
        if not items:
            return MetricExportResult.SUCCESS
        self.enqueue(items)
        return MetricExportResult.SUCCESS

    def enqueue(self, items: Sequence[tuple[Item, int]]) -> None:
        """Adds encoded (item, size) pairs to the buffer, dropping the oldest
        beyond the bound, and wakes the sender if a batch is ready."""
        self._ensure_thread()
        dropped = 0
        with self._lock:
            self._buffer.extend(items)
            self.stats.buffered += len(items)
            self.stats.buffered_bytes += sum(size for _, size in items)
            while self._buffer and (
                self.stats.buffered > self.max_buffer_items
                or self.stats.buffered_bytes > self.max_buffer_bytes
            ):
                _, size = self._buffer.popleft()
                self.stats.buffered -= 1
                self.stats.buffered_bytes -= size
                dropped += 1
            self.stats.dropped_buffer_full += dropped
            ready = (
                self.flush_interval == 0
                or self.stats.buffered >= self.max_batch_items
                or self.stats.buffered_bytes >= self.max_batch_bytes
            )
        if dropped:
            self._log.log(
                logging.WARNING,
                "buffer-full",
                "%s: buffer full (%d items / %d bytes): dropped the %d oldest items",
                self.name,
                self.max_buffer_items,
                self.max_buffer_bytes,
                dropped,
            )
        if ready:
            self._wake.set()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Sends everything buffered now; True if the buffer emptied in time."""
        deadline = time.monotonic() + timeout_millis / 1000
        if not self._buffer:
            return True
        self._ensure_thread()
        self._wake.set()
        with self._idle:
            while self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.5))
                self._wake.set()
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Sends what is buffered within ``timeout_millis``, then stops; what
        could not be sent is counted as dropped (reason ``shutdown``) and logged."""
        if self._shut_down:
            return
        self._shut_down = True
        self._stop_deadline = time.monotonic() + timeout_millis / 1000
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, self._stop_deadline - time.monotonic()) + 1.0)
        if thread is None:
            self._close()
        with self._lock:
            left = len(self._buffer)
            self._buffer.clear()
            self.stats.buffered = 0
            self.stats.buffered_bytes = 0
            self.stats.dropped_shutdown += left
        if left:
            self.logger.error(
                "%s: shut down with %d items not delivered; they are lost", self.name, left
            )

    # -- the sender thread ----------------------------------------------------

    def _init_thread_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None

    def _after_fork_in_child(self) -> None:
        # The parent sends what it buffered; the child must not send it again.
        self._buffer.clear()
        self.stats = DeliveryStats()
        self._init_thread_state()

    def _ensure_thread(self) -> None:
        if self._thread is not None or self._shut_down:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"flask_chest_otel:{self.name}", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.wait(self.flush_interval or None)
                self._wake.clear()
                self._drain()
            self._drain(deadline=self._stop_deadline)
        except Exception:  # a bug here must not go unnoticed, nor stop flushing forever
            self.logger.exception("%s: sender thread failed", self.name)
        finally:
            try:
                self._close()
            finally:
                with self._idle:
                    self._idle.notify_all()

    def _take(self, limit: int) -> list[Item]:
        """The oldest items that fit one batch; left in the buffer until sent."""
        batch: list[Item] = []
        size = 0
        with self._lock:
            for item, item_size in self._buffer:
                if batch and (len(batch) >= limit or size + item_size > self.max_batch_bytes):
                    break
                batch.append(item)
                size += item_size
        return batch

    def _discard(self, count: int) -> None:
        with self._lock:
            for _ in range(min(count, len(self._buffer))):
                _, size = self._buffer.popleft()
                self.stats.buffered -= 1
                self.stats.buffered_bytes -= size

    def _drain(self, deadline: float | None = None) -> None:
        """Sends batches until the buffer is empty or a retry must wait past
        ``deadline`` (shutdown) or is interrupted by shutdown."""
        attempt = 0
        limit = self.max_batch_items
        while True:
            batch = self._take(limit)
            if not batch:
                break
            try:
                outcome = self._send(batch)
            except Exception as exc:  # a bug in a hook: drop the batch, keep the thread
                self.logger.exception("%s: unexpected error while sending", self.name)
                outcome = Outcome(Status.REJECTED, f"unexpected error: {exc!r}")
            if outcome.status is Status.DELIVERED:
                self._discard(len(batch))
                self.stats.exported += len(batch)
                attempt, limit = 0, self.max_batch_items
            elif outcome.status is Status.TOO_LARGE and len(batch) > 1:
                limit = max(1, len(batch) // 2)
            elif outcome.status in (Status.REJECTED, Status.TOO_LARGE, Status.INVALID):
                self._discard(len(batch))
                self.stats.exported += outcome.delivered
                self.stats.dropped_rejected += len(batch) - outcome.delivered
                self._log.log(
                    logging.ERROR,
                    "rejected:" + outcome.message[:80],
                    "%s: dropped %d items the backend rejected: %s",
                    self.name,
                    len(batch) - outcome.delivered,
                    outcome.message,
                )
                attempt = 0
            else:
                attempt += 1
                self.stats.retried += len(batch)
                delay = backoff_delay(
                    attempt, self.retry_initial, self.retry_max, outcome.retry_after
                )
                self._log.log(
                    logging.WARNING,
                    "retry",
                    "%s: send failed (%s); %d items kept, retrying in %.1f s",
                    self.name,
                    outcome.message,
                    self.stats.buffered,
                    delay,
                )
                if deadline is not None:
                    if time.monotonic() + delay > deadline:
                        break
                    time.sleep(delay)
                elif self._stopping.wait(delay):
                    break
        with self._idle:
            self._idle.notify_all()


def _after_fork_in_child() -> None:
    for exporter in list(_LIVE_EXPORTERS):
        exporter._after_fork_in_child()


def _shutdown_all() -> None:
    for exporter in list(_LIVE_EXPORTERS):
        exporter.shutdown(timeout_millis=5_000)


os.register_at_fork(after_in_child=_after_fork_in_child)
# Registered at import, before the recorder's hook: atexit runs hooks in
# reverse order, so the recorder hands over its last records first.
atexit.register(_shutdown_all)
