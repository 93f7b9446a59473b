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
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

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

from ._pacing import background, paced, pacing, pause_if_due
from ._records import Record, records_metrics_data
from ._spool import CHECK_INTERVAL as SPOOL_CHECK_INTERVAL
from ._spool import Spool
from ._spool_codecs import dumps_value, loads_value
from .environment_variables import FLASK_CHEST_EXIT_TIMEOUT, FLASK_CHEST_SPOOL_DIR

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
    nevertheless reached the backend (a partial write), and a RETRY how many
    the backend took and the retry will not send again.

    ``refused`` and ``unencodable`` count items of the batch that ``_send``
    dropped on its own, the backend having refused them alone or the hook
    having failed to encode them: ``_send`` logs them, the drain loop counts
    them (``dropped_rejected``, ``dropped_encoding``) once the batch is done,
    never as exported. A RETRY's are not counted: the retry finds them again.
    """

    status: Status
    message: str = ""
    retry_after: float | None = None
    delivered: int = 0
    refused: int = 0
    unencodable: int = 0


DELIVERED = Outcome(Status.DELIVERED)

#: ``_encode_and_enqueue`` hands the sender at least this many items at once.
ENQUEUE_CHUNK = 64


_RATE_LIMITED_LOGS: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()


class RateLimitedLog:
    """Logs one message per key at most every ``interval`` seconds, counting the
    repeats in between, so a dead backend does not flood the log.

    A key names a kind of problem ("retry", "rejected"), not one occurrence:
    the table keeps the ``max_keys`` most recent keys (least recently used
    go first), so nothing in it grows with the number of requests.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 256
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()
        _RATE_LIMITED_LOGS.add(self)

    def _after_fork_in_child(self) -> None:
        # Another thread of the parent may have held the lock at fork.
        self._lock = threading.Lock()

    def log(
        self, level: int, key: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[key] = (last, suppressed + 1)
                self._last.move_to_end(key)
                return
            self._last[key] = (now, 0)
            self._last.move_to_end(key)
            while len(self._last) > self.max_keys:
                self._last.popitem(last=False)
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
    #: Items left in the spool file at shutdown, for the next process.
    spooled: int = 0

    @property
    def dropped(self) -> int:
        return (
            self.dropped_buffer_full
            + self.dropped_rejected
            + self.dropped_shutdown
            + self.dropped_encoding
        )


_LIVE_EXPORTERS: weakref.WeakSet[BufferedExporter[Any]] = weakref.WeakSet()

#: Seconds the exit hooks may take in all, for every chest together.
DEFAULT_EXIT_TIMEOUT = 5.0
#: Seconds between looks for spool files of processes that are gone.
ADOPT_INTERVAL = 10.0
_exit_timeout: float | None = None
_exit_deadline: float | None = None


def set_exit_timeout(seconds: float) -> None:
    """Sets how long the interpreter's exit may wait for deliveries, in
    seconds, shared by all chests (default 5, or ``FLASK_CHEST_EXIT_TIMEOUT``)."""
    global _exit_timeout
    if not seconds >= 0:
        raise ValueError(f"the exit timeout must be >= 0 seconds, got {seconds!r}")
    _exit_timeout = float(seconds)


def exit_timeout() -> float:
    """The exit budget in seconds: ``set_exit_timeout``, else the environment
    variable ``FLASK_CHEST_EXIT_TIMEOUT``, else 5."""
    if _exit_timeout is not None:
        return _exit_timeout
    text = os.environ.get(FLASK_CHEST_EXIT_TIMEOUT, "").strip()
    if text:
        try:
            value = float(text)
            if value >= 0:
                return value
        except ValueError:
            pass
        LOGGER.warning(
            "flask_chest_otel: %s=%r is not a number of seconds >= 0; using %s",
            FLASK_CHEST_EXIT_TIMEOUT, text, DEFAULT_EXIT_TIMEOUT,
        )  # fmt: skip
    return DEFAULT_EXIT_TIMEOUT


def exit_deadline() -> float:
    """The one monotonic deadline of this process's exit, fixed by the first
    exit hook that asks for it."""
    global _exit_deadline
    if _exit_deadline is None:
        _exit_deadline = time.monotonic() + exit_timeout()
    return _exit_deadline


def exit_millis_left() -> float:
    return max(0.0, exit_deadline() - time.monotonic()) * 1000


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
        spool_dir: a directory for the on-disk spool (default: the
            environment variable ``FLASK_CHEST_SPOOL_DIR``, else none): what
            the buffer holds is also written there, and a later process on the
            same directory resends what this one could not deliver.
        spool_max_bytes: the spool file's bound (default ``max_buffer_bytes``);
            beyond it the oldest items are dropped and counted.
    """

    #: The largest batch while the sender is paced (``_pacing``): for an
    #: exporter whose ``_send`` runs C code holding the GIL in proportion to
    #: the batch (``json.dumps``), so that requests never wait long behind it.
    paced_batch_items: int | None = None
    #: The sender wakes as soon as this many items wait (None: a full batch,
    #: ``max_batch_items``), else after ``flush_interval``.
    send_at_items: int | None = None

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
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
    ) -> None:
        super().__init__(preferred_temporality=preferred_temporality or dict(DELTA_TEMPORALITY))
        for label, number in (
            ("max_batch_items", max_batch_items),
            ("max_batch_bytes", max_batch_bytes),
            ("max_buffer_items", max_buffer_items),
            ("max_buffer_bytes", max_buffer_bytes),
            ("spool_max_bytes", max_buffer_bytes if spool_max_bytes is None else spool_max_bytes),
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
        #: (item, size, bytes it takes in the spool file or 0 if not spooled)
        self._buffer: deque[tuple[Item, int, int]] = deque()
        self._shut_down = False
        if spool_dir is None:
            spool_dir = os.environ.get(FLASK_CHEST_SPOOL_DIR) or None
        self.spool_max_bytes = max_buffer_bytes if spool_max_bytes is None else spool_max_bytes
        self._spool: Spool | None = None
        if spool_dir is not None:
            self._spool = Spool(
                spool_dir, name, self.logger, self._spool_dumps, self._spool_loads,
                identity=self._spool_identity, max_bytes=self.spool_max_bytes,
            )  # fmt: skip
        self._init_thread_state()
        _LIVE_EXPORTERS.add(self)

    @property
    def spool_dir(self) -> Path | None:
        """The spool's directory, or None when the exporter does not spool."""
        return self._spool.directory if self._spool is not None else None

    # -- subclass hooks -------------------------------------------------------

    def _encode(self, metrics_data: MetricsData) -> Iterable[Item]:
        raise NotImplementedError

    def _send(self, batch: Sequence[Item]) -> Outcome:
        raise NotImplementedError

    def _item_size(self, item: Item) -> int:
        return 1

    def _close(self) -> None:
        """Releases the exporter's resources; called once, on the sender thread."""

    def _spool_dumps(self, item: Item) -> bytes:
        """An item as stored in the spool file: by default tagged JSON of
        None, bool, int, float, str, bytes, tuples, lists and dicts (see
        ``_spool_codecs``); override, with ``_spool_loads``, for other items.
        Never code (no pickle): a spool file is data."""
        return dumps_value(item)

    def _spool_loads(self, data: bytes) -> Item:
        """The inverse of ``_spool_dumps``; raises on anything else."""
        return cast(Item, loads_value(data))

    def _spool_identity(self) -> tuple[str, str, str]:
        """(kind of exporter, chest name, destination): a spool file is
        adopted only by a chest of the same identity. Exporters add their
        destination (URL and bucket, file...)."""
        return f"{type(self).__module__}.{type(self).__qualname__}", self.name, ""

    def _mask_example(self, item: Item) -> str:
        """An item as quoted in a log line, e.g. the example of a refused item.
        Override to mask what must never be logged (tokens, personal data)."""
        text = repr(item)
        return text if len(text) <= 300 else text[:300] + "..."

    # -- MetricExporter -------------------------------------------------------

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Encodes and enqueues; never blocks on I/O. FAILURE only if the data
        could not be encoded or the exporter is shut down."""
        if self._shut_down:
            return self._refuse_after_shutdown(
                sum(
                    len(metric.data.data_points)
                    for resource_metrics in metrics_data.resource_metrics
                    for scope_metrics in resource_metrics.scope_metrics
                    for metric in scope_metrics.metrics
                )
            )
        return self._encode_and_enqueue(lambda: self._encode(metrics_data))

    def export_records(self, records: Sequence[Record]) -> MetricExportResult:
        """``export`` of the recorder's records of decorated variables (what
        the collector hands a chest; see ``_records``)."""
        if self._shut_down:
            return self._refuse_after_shutdown(len(records))
        return self._encode_and_enqueue(lambda: self._encode_records(records))

    def _encode_records(self, records: Sequence[Record]) -> Iterable[Item]:
        """The items of the recorder's records: by default ``_encode`` of the
        MetricsData they make. An override gives the same items, faster."""
        return self._encode(records_metrics_data(records))

    def _refuse_after_shutdown(self, points: int) -> MetricExportResult:
        self.stats.dropped_shutdown += points
        self._log.log(
            logging.WARNING,
            "after-shutdown",
            "%s: received %d points after shutdown(); they are dropped",
            self.name,
            points,
        )
        return MetricExportResult.FAILURE

    def _encode_and_enqueue(self, encode: Callable[[], Iterable[Item]]) -> MetricExportResult:
        items: list[tuple[Item, int]] = []
        # A batch is ready: the sender sends it while the rest is encoded; in
        # chunks of at least ENQUEUE_CHUNK items, as each enqueue takes the
        # lock and wakes the sender (batches of one POST per request).
        chunk = max(self.max_batch_items, ENQUEUE_CHUNK)
        try:
            for item in paced(encode()):
                items.append((item, self._item_size(item)))
                if len(items) >= chunk:
                    self.enqueue(items)
                    items = []
        except Exception:
            self.stats.dropped_encoding += 1
            self.logger.exception(
                "%s: could not encode metrics; the rest of this export is dropped", self.name
            )
            if items:
                self.enqueue(items)
            return MetricExportResult.FAILURE
        if items:
            self.enqueue(items)
        return MetricExportResult.SUCCESS

    def enqueue(self, items: Sequence[tuple[Item, int]]) -> None:
        """Adds encoded (item, size) pairs to the buffer (and the spool file),
        dropping the oldest beyond the bounds, and wakes the sender if a batch
        is ready. Runs on the collector's or the sender's thread, never on a
        request's."""
        self._ensure_thread()
        dropped = 0
        with self._lock:
            spooled = self._spool_append(items)
            self._buffer.extend(
                (item, size, spool_size)
                for (item, size), spool_size in zip(items, spooled, strict=True)
            )
            self.stats.buffered += len(items)
            self.stats.buffered_bytes += sum(size for _, size in items)
            spool = self._spool
            while self._buffer and (
                self.stats.buffered > self.max_buffer_items
                or self.stats.buffered_bytes > self.max_buffer_bytes
                or (spool is not None and spool.live_bytes > self.spool_max_bytes)
            ):
                self._pop_oldest(1, write=False)
                dropped += 1
            if dropped:
                self._pop_oldest(0)  # one ack frame for all of them
            self.stats.dropped_buffer_full += dropped
            ready = (
                self.flush_interval == 0
                or self.stats.buffered >= (self.send_at_items or self.max_batch_items)
                or self.stats.buffered_bytes >= self.max_batch_bytes
            )
        if dropped:
            self._log.log(
                logging.WARNING,
                "buffer-full",
                "%s: buffer full (%d items / %d bytes, spool %d bytes): "
                "dropped the %d oldest items",
                self.name,
                self.max_buffer_items,
                self.max_buffer_bytes,
                self.spool_max_bytes,
                dropped,
            )
        if ready:
            self._wake.set()

    def _spool_append(self, items: Sequence[tuple[Item, int]]) -> list[int]:
        """Writes the items to the spool file (caller holds the lock); a write
        that fails keeps them in memory only, logged."""
        if self._spool is None:
            return [0] * len(items)
        try:
            return self._spool.append([item for item, _ in items])
        except Exception as exc:
            self._log.log(
                logging.ERROR,
                "spool-write",
                "%s: could not write to the spool in %s (%r); %d items are kept in memory only",
                self.name,
                self._spool.directory,
                exc,
                len(items),
            )
            return [0] * len(items)

    def _pop_oldest(self, count: int, write: bool = True) -> None:
        """Removes the ``count`` oldest items from the buffer and the spool
        (caller holds the lock)."""
        count = min(count, len(self._buffer))
        popleft = self._buffer.popleft
        pause = pacing()
        sizes = spooled = 0
        for _ in range(count):
            if pause:
                pause_if_due()
            _, size, spool_size = popleft()
            sizes += size
            if spool_size:
                spooled += 1
        self.stats.buffered -= count
        self.stats.buffered_bytes -= sizes
        if self._spool is not None:
            try:
                self._spool.ack(spooled, write=write)
            except OSError as exc:
                self._log.log(
                    logging.ERROR,
                    "spool-write",
                    "%s: could not update the spool in %s (%r); its items may be sent again",
                    self.name,
                    self._spool.directory,
                    exc,
                )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Sends everything buffered now; True only if the buffer emptied in
        time and nothing was refused or dropped meanwhile."""
        deadline = time.monotonic() + timeout_millis / 1000
        lost_before = self._lost_count()
        if not self._buffer:
            return True
        self._ensure_thread()
        if self._thread is None:  # no thread can start (interpreter exit): send here
            self._drain(deadline=deadline)
            return not self._buffer and self._lost_count() == lost_before
        self._wake.set()
        with self._idle:
            while self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.5))
                self._wake.set()
        return self._lost_count() == lost_before

    def _lost_count(self) -> int:
        stats = self.stats
        return stats.dropped_rejected + stats.dropped_buffer_full + stats.dropped_encoding

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Sends what is buffered within ``timeout_millis``, then stops. What
        could not be sent stays in the spool file for the next process, or,
        without a spool, is counted as dropped (reason ``shutdown``); the log
        line tells what the backend refused meanwhile from what is lost."""
        if self._shut_down:
            return
        refused_before = self.stats.dropped_rejected
        self._shut_down = True
        self._stop_deadline = time.monotonic() + timeout_millis / 1000
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            # A little grace past the deadline, for a send already under way.
            thread.join(max(0.0, self._stop_deadline - time.monotonic()) + 0.2)
        if thread is None:  # never started, or no thread can start now: send here
            try:
                self._drain(deadline=self._stop_deadline)
            finally:
                self._close()
        with self._lock:
            left = len(self._buffer)
            kept = sum(1 for _, _, spool_size in self._buffer if spool_size)
            self._buffer.clear()
            self.stats.buffered = 0
            self.stats.buffered_bytes = 0
            self.stats.spooled += kept
            self.stats.dropped_shutdown += left - kept
            spool = self._spool
            if spool is not None:
                spool.close()
        refused = self.stats.dropped_rejected - refused_before
        if left - kept or refused:
            self.logger.error(
                "%s: shut down with %d items not delivered in time, lost; "
                "%d refused by the backend meanwhile, dropped",
                self.name,
                left - kept,
                refused,
            )
        if kept:
            self.logger.warning(
                "%s: shut down with %d items not delivered, kept in the spool %s for the "
                "next process on that directory",
                self.name,
                kept,
                spool.path if spool is not None else "",
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
        if self._spool is not None:
            self._spool.after_fork_in_child()
        if not self._shut_down:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        """Starts the sender thread. Chests call it at creation: Python 3.12+
        refuses to start a thread once the interpreter is exiting, where the
        exit hook then sends on its own thread."""
        if self._thread is not None or self._shut_down:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name=f"flask_chest_otel:{self.name}", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # "can't create new thread at interpreter shutdown"
                    return
                self._thread = thread

    def _run(self) -> None:
        next_adoption = 0.0
        try:
            while not self._stopping.is_set():
                if self._spool is not None and time.monotonic() >= next_adoption:
                    self._adopt()
                    next_adoption = time.monotonic() + ADOPT_INTERVAL
                timeout = self.flush_interval or None
                if self._spool is not None:
                    timeout = min(timeout or ADOPT_INTERVAL, ADOPT_INTERVAL)
                self._wait(self._wake, timeout)
                self._wake.clear()
                # Half full: send at full speed, as losing nothing comes first.
                background(paced=self.stats.buffered < self.max_buffer_items // 2)
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

    def _wait(self, event: threading.Event, seconds: float | None) -> bool:
        """``event.wait(seconds)``; while spooling, in slices of at most
        ``SPOOL_CHECK_INTERVAL`` with the spool's upkeep between them (a
        lost file, writes a full disk refused)."""
        spool = self._spool
        if spool is None:
            return event.wait(seconds)
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            with self._lock:
                spool.maintain()
            left = SPOOL_CHECK_INTERVAL
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
            if event.wait(max(0.0, left)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _adopt(self) -> None:
        """Takes the spool files of processes that are gone: their items join
        this process's buffer and spool file, then their files are deleted."""
        spool = self._spool
        if spool is None:
            return
        try:
            with self._lock:
                items = spool.adopt()
            if items:
                self.enqueue([(item, self._item_size(item)) for item in items])
                self._wake.set()
            with self._lock:
                spool.release_adopted()
        except Exception:
            self.logger.exception(
                "%s: could not take over the spool files in %s", self.name, spool.directory
            )

    def _take(self, limit: int) -> list[Item]:
        """The oldest items that fit one batch; left in the buffer until sent."""
        with self._lock:
            if not pacing():
                head = list(islice(self._buffer, limit))
                if sum(size for _, size, _ in head) <= self.max_batch_bytes:
                    return [item for item, _, _ in head]
            batch: list[Item] = []
            size = 0
            for item, item_size, _ in paced(self._buffer):
                if batch and (len(batch) >= limit or size + item_size > self.max_batch_bytes):
                    break
                batch.append(item)
                size += item_size
        return batch

    def _discard(self, count: int) -> None:
        with self._lock:
            self._pop_oldest(count)
            spool = self._spool
            if spool is not None and spool.needs_compaction():
                try:
                    spool.compact([item for item, _, spool_size in self._buffer if spool_size])
                except Exception as exc:
                    self._log.log(
                        logging.ERROR,
                        "spool-write",
                        "%s: could not compact the spool in %s (%r)",
                        self.name,
                        spool.directory,
                        exc,
                    )

    def _drop_rejected(self, count: int, message: str) -> None:
        """Counts and logs ``count`` items the backend refused for good."""
        self.stats.dropped_rejected += count
        self._log_rejected(count, message)

    def _log_rejected(self, count: int, message: str) -> None:
        self._log.log(
            logging.ERROR,
            "rejected",
            "%s: dropped %d items the backend rejected: %s",
            self.name,
            count,
            message,
        )

    def _drain(self, deadline: float | None = None) -> None:
        """Sends batches until the buffer is empty or a retry must wait past
        ``deadline`` (shutdown) or is interrupted by shutdown.

        A batch refused for what some of its items hold (INVALID) is split in
        halves, like a 413, until the refused items are alone; only those are
        dropped, counted and logged with one example.
        """
        attempt = 0
        limit = self.max_batch_items
        narrowing = 0  # items of a refused batch still to send in smaller batches
        while True:
            if deadline is not None and time.monotonic() > deadline:
                break
            size = limit
            if self.paced_batch_items is not None and pacing():
                size = min(size, self.paced_batch_items)
            batch = self._take(min(size, narrowing) if narrowing else size)
            if not batch:
                break
            try:
                outcome = self._send(batch)
            except Exception as exc:  # a bug in a hook: drop the batch, keep the thread
                self.logger.exception("%s: unexpected error while sending", self.name)
                outcome = Outcome(Status.REJECTED, f"unexpected error: {exc!r}")
            status = outcome.status
            if status is Status.DELIVERED:
                self._discard(len(batch))
                self.stats.exported += len(batch) - outcome.refused - outcome.unencodable
                self.stats.dropped_rejected += outcome.refused
                self.stats.dropped_encoding += outcome.unencodable
                attempt = 0
                narrowing = max(0, narrowing - len(batch))
                if not narrowing:
                    limit = self.max_batch_items
            elif status in (Status.TOO_LARGE, Status.INVALID) and len(batch) > 1:
                limit = max(1, len(batch) // 2)
                if status is Status.INVALID:
                    narrowing = max(narrowing, len(batch))
            elif status is Status.INVALID:
                self._discard(1)
                self.stats.dropped_rejected += 1
                narrowing = max(0, narrowing - 1)
                if not narrowing:
                    limit = self.max_batch_items
                self._log.log(
                    logging.ERROR,
                    "invalid",
                    "%s: the backend refused an item, which is dropped: %s; the item: %s",
                    self.name,
                    outcome.message,
                    self._mask_example(batch[0]),
                )
                attempt = 0
            elif status in (Status.REJECTED, Status.TOO_LARGE):
                self._discard(len(batch))
                self.stats.exported += outcome.delivered
                self.stats.dropped_encoding += outcome.unencodable
                narrowing = max(0, narrowing - len(batch))
                self._drop_rejected(
                    len(batch) - outcome.delivered - outcome.unencodable, outcome.message
                )
                attempt = 0
            else:
                attempt += 1
                self.stats.retried += len(batch) - outcome.delivered
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
                elif self._wait(self._stopping, delay):
                    break
        with self._idle:
            self._idle.notify_all()


def _after_fork_in_child() -> None:
    for log in list(_RATE_LIMITED_LOGS):
        log._after_fork_in_child()
    for exporter in list(_LIVE_EXPORTERS):
        exporter._after_fork_in_child()


def shutdown_all(deadline_millis: float | None = None) -> None:
    """Shuts every exporter down within the exit budget; an error for one
    never skips the next."""
    for exporter in list(_LIVE_EXPORTERS):
        try:
            exporter.shutdown(
                timeout_millis=exit_millis_left() if deadline_millis is None else deadline_millis
            )
        except Exception:
            LOGGER.exception("%s: shutdown at exit failed", exporter.name)


os.register_at_fork(after_in_child=_after_fork_in_child)
# Registered at import, before the recorder's hook: atexit runs hooks in
# reverse order, so the recorder hands over its last records first.
atexit.register(shutdown_all)
