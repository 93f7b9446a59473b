"""What every chest is: a named destination of decorated variables, with its
own exporter, export interval and logger."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)

from . import _environment as environment
from ._delivery import BufferedExporter
from ._logging import LOGGER
from ._recorder import RECORDER, Record


class _DefaultInterval(float):
    """The ``export_interval`` a chest gets when none is given: 2.0 in every
    signature, read as ``OTEL_METRIC_EXPORT_INTERVAL`` when that is set.
    A float of its own type, so that every chest's signature can keep
    ``export_interval=DEFAULT_EXPORT_INTERVAL`` and ``Chest`` can still tell
    it from a number the user gave (even ``2.0``)."""

    __slots__ = ()


#: Default seconds between exports: short, because users watch SLIs live;
#: ``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds) replaces it when set.
DEFAULT_EXPORT_INTERVAL: float = _DefaultInterval(2.0)
#: Seconds between collections while a chest spools: with the recorder's
#: ``SPOOL_PACED_SECONDS``, what bounds the age of what a SIGKILL can lose.
SPOOL_COLLECT_INTERVAL = 0.05
#: Seconds between collections for a ``steady`` exporter (per-request POSTs)
#: while requests come (``_recorder.IDLE_COLLECT_INTERVAL`` otherwise). 20 ms:
#: each collection is still short enough to run without a pause for the GIL
#: (``_pacing.GRACE_SECONDS``), and the per-collection cost (the collector's
#: and the sender's wake-ups, a sender's round) is paid half as often as at
#: 10 ms. Pinned, interleaved rounds of 2 s, 2026-12-03 (docs/benchmarks.md):
#: per_request's req/s against prometheus-flask-exporter's 0.87x, 0.99x and
#: 0.93x at 20 ms, 0.81x and 0.88x at 10 ms, 0.89x at 30 ms, 0.98x and 0.89x
#: at 50 ms (30-40 rounds each); p99 1.16-1.22x at 20 ms, 1.16-1.31x at 10 ms.
STEADY_COLLECT_INTERVAL = 0.02


class Chest:
    """A destination for decorated variables, given to ``@flask_chest(chests=[...])``.

    A chest receives only the measurements of routes decorated with it. Its
    exporter sends them on its own thread every ``export_interval`` seconds
    (default: ``OTEL_METRIC_EXPORT_INTERVAL``, else 2); ``force_flush()``
    sends now, ``shutdown()`` (also run at interpreter exit) sends what is
    left within its timeout and stops.

    Under ``OTEL_SDK_DISABLED=true`` a chest is made shut down: it starts no
    thread and sends nothing (the decorators record nothing then).
    """

    def __init__(
        self,
        name: str,
        exporter: BufferedExporter[Any],
        *,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        logger: logging.Logger | None = None,
    ) -> None:
        if type(export_interval) is _DefaultInterval:
            export_interval = environment.export_interval() or float(export_interval)
        if not export_interval > 0:
            raise ValueError(
                f"{name}: export_interval must be > 0 seconds, got {export_interval!r}"
            )
        self.name = name
        self.logger = logger or LOGGER
        self.export_interval = float(export_interval)
        self.exporter = exporter
        exporter.flush_interval = self.export_interval
        if environment.sdk_disabled():
            # Shut down from the start: no thread now, nor after a fork.
            RECORDER.forget(self)
            exporter.shutdown(timeout_millis=0)
            return
        # The sender thread exists from now on: Python 3.12+ cannot start one
        # at interpreter exit.
        exporter._ensure_thread()

    @property
    def spools(self) -> bool:
        """Whether the exporter writes what it holds to a spool (``spool_dir``)."""
        return getattr(self.exporter, "spool_dir", None) is not None

    @property
    def collect_interval(self) -> float:
        """Seconds between hand-overs from the recorder: short for a spooling
        chest, so that what only memory holds stays small, and for an
        exporter that is ``steady`` (per-request POSTs: a stream, not a
        burst per export interval)."""
        intervals = [self.export_interval]
        if self.spools:
            intervals.append(SPOOL_COLLECT_INTERVAL)
        if getattr(self.exporter, "steady", False):
            intervals.append(STEADY_COLLECT_INTERVAL)
        return min(intervals)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def _receive_records(self, records: Sequence[Record]) -> None:
        self.exporter.export_records(records)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Collects what routes recorded and sends everything now; True when
        all of it was delivered within the timeout: False too when some of
        it could not be encoded, whether that showed while collecting (a
        payload generator called per request) or while sending (batched)."""
        lost_before = self.exporter.stats.lost
        RECORDER.collect()
        delivered = self.exporter.force_flush(timeout_millis)
        return delivered and self.exporter.stats.lost == lost_before

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Sends what is left (bounded by ``timeout_millis``) and stops. With a
        spool, what is not delivered in time stays on disk for the next process."""
        RECORDER.collect()
        RECORDER.forget(self)
        self.exporter.shutdown(timeout_millis=timeout_millis)

    def metric_reader(self, export_interval_millis: float | None = None) -> MetricReader:
        """A reader to add to the application's own MeterProvider, so that this
        chest also exports the app's other OTel metrics. The chest keeps
        ownership: shutting the provider down flushes but does not stop it."""
        interval = export_interval_millis or self.export_interval * 1000
        return PeriodicExportingMetricReader(
            _SharedExporter(self.exporter), export_interval_millis=interval
        )


class _SharedExporter(MetricExporter):
    """Forwards to a chest's exporter without letting a provider shut it down."""

    def __init__(self, exporter: BufferedExporter[Any]) -> None:
        super().__init__(preferred_temporality=exporter._preferred_temporality)
        self._exporter = exporter

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return self._exporter.export(metrics_data, timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._exporter.force_flush(timeout_millis)
