"""The recording pipeline of the chests: an OpenTelemetry API meter whose
gauges append each measurement, with its request's time, to one bounded
queue, and a collector thread that turns the queue into MetricsData and hands
each chest the points of the routes decorated with it.

Why not the SDK's aggregation for this: per-request points are unique
attribute sets, which the SDK (1.45) stamps with the collection time, folds
into an overflow point past its cardinality limit (2000) and, before 1.45.2,
kept forever. A queue keeps each measurement's own time, has no cardinality
limit, and its memory is bounded by ``max_pending``. Recording costs an
append, a fraction of an SDK ``set`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeter
from opentelemetry.metrics import _Gauge as Gauge
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    Gauge as GaugeData,
)
from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import Attributes

from ._delivery import LOGGER, RateLimitedLog
from ._names import SCOPE_NAME
from ._trace import SpanIds

if TYPE_CHECKING:
    from ._chest import Chest

VERSION = "0.1.0"

#: (sink, instrument name, value, attributes, time_unix_nano, span IDs or None).
#: ``value`` is a bool, int or float (a text travels in the attribute
#: ``flask_chest.value`` with value 1); the span IDs become the point's exemplar.
Record = tuple["Sink", str, int | float, Attributes, int, "SpanIds | None"]


class ChestGauge(Gauge):
    """A synchronous OTel Gauge whose every ``set`` is kept, with its time."""

    def __init__(self, sink: Sink, name: str, unit: str = "", description: str = "") -> None:
        # The API's Instrument.__init__ is abstract; keep its attributes here.
        self.name = name
        self.unit = unit
        self.description = description
        self._sink = sink
        self._recorder = sink.recorder

    def set(
        self,
        amount: int | float,
        attributes: Attributes = None,
        context: Context | None = None,
    ) -> None:
        self._recorder.record(self._sink, self.name, amount, attributes, time.time_ns())



class Sink(NoOpMeter):
    """The meter of one ``@flask_chest`` use: its instruments route their
    measurements to exactly the chests that decorator named."""

    def __init__(self, recorder: Recorder, chests: Sequence[Chest]) -> None:
        super().__init__(SCOPE_NAME, version=VERSION)
        self.recorder = recorder
        self.chests = tuple(chests)
        self._gauges: dict[str, ChestGauge] = {}

    def create_gauge(
        self, name: str, unit: str = "", description: str = ""
    ) -> ChestGauge:
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._gauges.setdefault(name, ChestGauge(self, name, unit, description))
        return gauge


class Recorder:
    """Process-wide queue of measurements and the thread that collects it.

    It collects every ``interval`` seconds (the shortest export interval of
    the registered chests), and early when ``collect_at`` records are waiting,
    so that memory stays bounded under any burst. Past ``max_pending`` the
    oldest records are dropped, counted and logged.
    """

    def __init__(self, max_pending: int = 500_000, collect_at: int = 20_000) -> None:
        self.max_pending = max_pending
        self.collect_at = collect_at
        self.resource = Resource.create()
        self.scope = InstrumentationScope(SCOPE_NAME, VERSION)
        self.dropped = 0
        self._chests: weakref.WeakSet[Chest] = weakref.WeakSet()
        self._log = RateLimitedLog(LOGGER)
        self._init_state()

    def _init_state(self) -> None:
        self._pending: deque[Record] = deque()
        self._wake = threading.Event()
        self._collect_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def sink(self, chests: Sequence[Chest]) -> Sink:
        for chest in chests:
            self._chests.add(chest)
        self._ensure_thread()
        self._wake.set()  # the collector re-reads the shortest interval
        return Sink(self, chests)

    def record(
        self, sink: Sink, name: str, value: float, attributes: Attributes, time_unix_nano: int
    ) -> None:
        self.record_many([(sink, name, value, attributes, time_unix_nano, None)])

    def record_many(self, records: list[Record]) -> None:
        """Queues the measurements of one request. ``deque.extend`` of a list
        runs under the GIL in one step, so a collection takes all of them or
        none."""
        pending = self._pending
        pending.extend(records)
        if len(pending) >= self.collect_at:
            self._wake.set()
            if len(pending) > self.max_pending:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        dropped = 0
        try:
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                dropped += 1
        except IndexError:
            pass
        self.dropped += dropped
        self._log.log(
            logging.WARNING,
            "pending-full",
            "flask_chest_otel: %d measurements waiting (collector behind): dropped the %d oldest",
            self.max_pending,
            dropped,
        )

    @property
    def interval(self) -> float:
        intervals = [chest.export_interval for chest in list(self._chests)]
        return min(intervals, default=5.0)

    def _ensure_thread(self) -> None:
        if self._thread is None or self._pid != os.getpid():
            if self._pid != os.getpid():
                self._init_state()
            self._thread = threading.Thread(
                target=self._run, name="flask_chest_otel:collector", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.collect()
            except Exception:  # never let the collector die
                LOGGER.exception("flask_chest_otel: collecting measurements failed")

    def collect(self) -> None:
        """Hands every waiting measurement to its chests' exporters (no I/O)."""
        with self._collect_lock:
            pending = self._pending
            count = len(pending)
            if not count:
                return
            per_chest: dict[Chest, dict[str, list[NumberDataPoint]]] = {}
            pop = pending.popleft
            for _ in range(count):
                try:
                    record = pop()
                except IndexError:  # _drop_oldest took some meanwhile (and counted them)
                    break
                sink, name, value, attributes, time_unix_nano, span_ids = record
                exemplars = (
                    [Exemplar({}, value, time_unix_nano, span_ids[1], span_ids[0])]
                    if span_ids is not None
                    else []
                )
                point = NumberDataPoint(attributes, 0, time_unix_nano, value, exemplars)
                for chest in sink.chests:
                    per_chest.setdefault(chest, {}).setdefault(name, []).append(point)
            for chest, by_name in per_chest.items():
                chest._receive(self._metrics_data(by_name))

    def _metrics_data(self, by_name: dict[str, list[NumberDataPoint]]) -> MetricsData:
        metrics = [
            Metric(name=name, description="", unit="", data=GaugeData(data_points=points))
            for name, points in by_name.items()
        ]
        return MetricsData(
            resource_metrics=[
                ResourceMetrics(
                    resource=self.resource,
                    scope_metrics=[ScopeMetrics(scope=self.scope, metrics=metrics, schema_url="")],
                    schema_url="",
                )
            ]
        )

    def forget(self, chest: Chest) -> None:
        self._chests.discard(chest)

    def _after_fork_in_child(self) -> None:
        # Measurements recorded before the fork belong to the parent, which
        # exports them; the child starts empty with its own thread.
        self._init_state()
        if len(self._chests):
            self._ensure_thread()

    def _at_exit(self) -> None:
        self.collect()
        for chest in list(self._chests):
            chest.shutdown(timeout_millis=5_000)


RECORDER = Recorder()
os.register_at_fork(after_in_child=RECORDER._after_fork_in_child)
atexit.register(RECORDER._at_exit)
