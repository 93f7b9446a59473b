"""``BufferedExporter``: an OpenTelemetry ``MetricExporter`` that encodes on
``export`` and delivers from a thread of its own.

The OpenTelemetry reader ignores a failed export, so an exporter that must
not lose data owns its delivery: ``export`` only encodes and enqueues (it
never does I/O) into the :class:`~._buffer.Buffer`; the sender thread runs the
:class:`~._drain.Drain`, which sends batches oldest first and applies each
backend's :class:`~.settlement.Settlement`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
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

from .._logging import LOGGER, RateLimitedLog
from .._pacing import background, paced, pacing
from .._records import Record, records_metrics_data
from .._redact import Secrets
from .._spool import CHECK_INTERVAL as SPOOL_CHECK_INTERVAL
from .._spool import FSYNC_POLICIES, Spool
from .._spool_codecs import dumps_value, loads_value
from ..environment_variables import FLASK_CHEST_SPOOL_DIR, FLASK_CHEST_SPOOL_FSYNC
from ._buffer import Buffer, DeliveryStats
from ._drain import Drain
from ._exit import LIVE_EXPORTERS
from ._retry import RetryPolicy
from .settlement import Settlement

Item = TypeVar("Item")

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

#: ``_encode_and_enqueue`` hands the sender at least this many items at once.
ENQUEUE_CHUNK = 64
#: Seconds between looks for spool files of processes that are gone.
ADOPT_INTERVAL = 10.0


class BufferedExporter(MetricExporter, Generic[Item]):
    """A MetricExporter that encodes on ``export`` and sends on its own thread.

    Subclasses implement ``_encode`` (MetricsData -> items, no I/O), ``_send``
    (one batch -> :class:`~flask_chest_otel.Settlement`, may block up to
    ``timeout``) and may override ``_item_size`` (bytes, for the byte bound
    and batch splitting).

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
        spool_fsync: when the spool files are flushed to the disk: "never"
            (the default; a SIGKILL loses nothing written, a power cut may),
            "interval" (every second) or "always" (after every write); default
            the environment variable ``FLASK_CHEST_SPOOL_FSYNC``, else "never".
            Costs in docs/reliability.md.
    """

    #: The largest batch while the sender is paced (``_pacing``): for an
    #: exporter whose ``_send`` runs C code holding the GIL in proportion to
    #: the batch (``json.dumps``), so that requests never wait long behind it.
    paced_batch_items: int | None = None
    #: The sender wakes as soon as this many items wait (None: a full batch,
    #: ``max_batch_items``), else after ``flush_interval``.
    send_at_items: int | None = None
    #: What must never be printed: an exporter with credentials sets its own.
    _secrets: Secrets = Secrets()

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
        spool_fsync: str | None = None,
    ) -> None:
        super().__init__(preferred_temporality=preferred_temporality or dict(DELTA_TEMPORALITY))
        spool_max_bytes = max_buffer_bytes if spool_max_bytes is None else spool_max_bytes
        for label, number in (
            ("max_batch_items", max_batch_items),
            ("max_batch_bytes", max_batch_bytes),
            ("max_buffer_items", max_buffer_items),
            ("max_buffer_bytes", max_buffer_bytes),
            ("spool_max_bytes", spool_max_bytes),
        ):
            if number < 1:
                raise ValueError(f"{label} must be at least 1, got {number!r}")
        if flush_interval < 0 or timeout <= 0:
            raise ValueError("flush_interval must be >= 0 and timeout > 0")
        self.policy = RetryPolicy(retry_initial, retry_max)
        self.name = name
        self.logger = logger or LOGGER
        self.flush_interval = flush_interval
        self.max_batch_items = max_batch_items
        self.max_batch_bytes = max_batch_bytes
        self.max_buffer_items = max_buffer_items
        self.max_buffer_bytes = max_buffer_bytes
        self.spool_max_bytes = spool_max_bytes
        self.timeout = timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stats = DeliveryStats()
        self._log = RateLimitedLog(self.logger)
        self._shut_down = False
        if spool_dir is None:
            spool_dir = os.environ.get(FLASK_CHEST_SPOOL_DIR) or None
        fsync_source = "spool_fsync"
        if spool_fsync is None:
            fsync_source = f"${FLASK_CHEST_SPOOL_FSYNC}"
            spool_fsync = os.environ.get(FLASK_CHEST_SPOOL_FSYNC, "").strip().lower() or "never"
        if spool_fsync not in FSYNC_POLICIES:
            raise ValueError(
                f"{name}: {fsync_source} must be one of {', '.join(FSYNC_POLICIES)}, "
                f"got {spool_fsync!r}"
            )
        spool = None
        if spool_dir is not None:
            spool = Spool(
                spool_dir, name, self.logger, self._spool_dumps, self._spool_loads,
                identity=self._spool_identity, max_bytes=spool_max_bytes, fsync=spool_fsync,
            )  # fmt: skip
        self._buffer: Buffer[Item] = Buffer(
            name=name,
            stats=self.stats,
            log=self._log,
            max_items=max_buffer_items,
            max_bytes=max_buffer_bytes,
            spool=spool,
            spool_max_bytes=spool_max_bytes,
        )
        self._init_thread_state()
        self._drain = Drain(
            name=name,
            buffer=self._buffer,
            send=self._send,
            logger=self.logger,
            log=self._log,
            policy=self.policy,
            pause=self._pause,
            describe=self._mask_example,
            batch_items=self._batch_items,
            max_batch_bytes=max_batch_bytes,
            stop_deadline=lambda: self._stop_deadline,
        )
        LIVE_EXPORTERS.add(self)

    @property
    def spool_dir(self) -> Path | None:
        """The spool's directory, or None when the exporter does not spool."""
        spool = self._buffer.spool
        return spool.directory if spool is not None else None

    # -- subclass hooks -------------------------------------------------------

    def _encode(self, metrics_data: MetricsData) -> Iterable[Item]:
        raise NotImplementedError

    def _send(self, batch: Sequence[Item]) -> Settlement:
        raise NotImplementedError

    def _item_size(self, item: Item) -> int:
        return 1

    def _close(self) -> None:
        """Releases the exporter's resources; called once, on the sender thread."""

    def _housekeeping(self) -> None:
        """Work of the exporter's own between sends (SQLite's retention): on
        the sender thread, after each time it emptied the buffer or waits."""

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
        """An item as quoted in a log line, e.g. the example of a refused item,
        scrubbed of the exporter's secrets (``_secrets``). Override to mask
        more (personal data)."""
        text = self._secrets.redact(repr(item))
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
        self._buffer.count_dropped_shutdown(points)
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
            self._buffer.count_not_encoded()
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
        self._buffer.add(items)
        stats = self.stats
        if (
            self.flush_interval == 0
            or stats.buffered >= (self.send_at_items or self.max_batch_items)
            or stats.buffered_bytes >= self.max_batch_bytes
        ):
            self._wake.set()

    def _batch_items(self) -> int:
        if self.paced_batch_items is not None and pacing():
            return min(self.max_batch_items, self.paced_batch_items)
        return self.max_batch_items

    def stats_snapshot(self) -> DeliveryStats:
        """A copy of ``stats`` taken at one moment, under the buffer's lock:
        its counters add up, where ``stats``, live, read field by field, can
        catch items between two counters (see ``Buffer.snapshot``)."""
        return self._buffer.snapshot()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Sends everything buffered now; True only if the buffer emptied in
        time and nothing was refused or dropped meanwhile."""
        deadline = time.monotonic() + timeout_millis / 1000
        lost_before = self.stats.lost
        if not len(self._buffer):
            return True
        self._ensure_thread()
        if self._thread is None:  # no thread can start (interpreter exit): send here
            self._drain.run(deadline=deadline)
            return not len(self._buffer) and self.stats.lost == lost_before
        self._wake.set()
        with self._idle:
            while len(self._buffer):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.5))
                self._wake.set()
        return self.stats.lost == lost_before

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
                self._drain.run(deadline=self._stop_deadline)
            finally:
                self._close()
        spool = self._buffer.spool
        lost, kept = self._buffer.close()
        refused = self.stats.dropped_rejected - refused_before
        if lost or refused:
            self.logger.error(
                "%s: shut down with %d items not delivered in time, lost; "
                "%d refused by the backend meanwhile, dropped",
                self.name,
                lost,
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
        self._idle = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread_lock = threading.Lock()
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None

    def _after_fork_in_child(self) -> None:
        # The parent sends what it buffered; the child must not send it again.
        self.stats = DeliveryStats()
        self._buffer.after_fork_in_child(self.stats)
        self._init_thread_state()
        if not self._shut_down:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        """Starts the sender thread. Chests call it at creation: Python 3.12+
        refuses to start a thread once the interpreter is exiting, where the
        exit hook then sends on its own thread."""
        if self._thread is not None or self._shut_down:
            return
        with self._thread_lock:
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
        spool = self._buffer.spool
        try:
            if spool is not None:
                with self._buffer.spool_lock:
                    spool.prepare()
            while not self._stopping.is_set():
                if spool is not None and time.monotonic() >= next_adoption:
                    self._adopt()
                    next_adoption = time.monotonic() + ADOPT_INTERVAL
                timeout = self.flush_interval or None
                if spool is not None:
                    timeout = min(timeout or ADOPT_INTERVAL, ADOPT_INTERVAL)
                self._wait(self._wake, timeout)
                self._wake.clear()
                # Half full: send at full speed, as losing nothing comes first.
                background(paced=self.stats.buffered < self.max_buffer_items // 2)
                self._drain.run()
                self._housekeeping()
                self._notify_idle()
            self._drain.run(deadline=self._stop_deadline)
        except Exception:  # a bug here must not go unnoticed, nor stop flushing forever
            self.logger.exception("%s: sender thread failed", self.name)
        finally:
            try:
                self._close()
            finally:
                self._notify_idle()

    def _pause(self, seconds: float) -> bool:
        """The drain's backoff: True if shutdown interrupted it."""
        return self._wait(self._stopping, seconds)

    def _wait(self, event: threading.Event, seconds: float | None) -> bool:
        """``event.wait(seconds)``; while spooling, in slices of at most
        ``SPOOL_CHECK_INTERVAL`` with the spool's upkeep between them (a
        lost file, writes a full disk refused)."""
        spool = self._buffer.spool
        if spool is None:
            return event.wait(seconds)
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            with self._buffer.spool_lock:
                spool.maintain()
            left = SPOOL_CHECK_INTERVAL
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
            if event.wait(max(0.0, left)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _adopt(self) -> None:
        """Takes the spool files of processes that are gone: their items join
        this process's buffer and spool file, then their files are deleted."""
        try:
            items = self._buffer.adopt()
            if items:
                self.enqueue([(item, self._item_size(item)) for item in items])
                self._wake.set()
            self._buffer.release_adopted()
        except Exception:
            self.logger.exception(
                "%s: could not take over the spool files in %s", self.name, self.spool_dir
            )
