"""Helpers to assert, in an application's own tests, what its routes record
(as ``structlog.testing`` does for logs).

``RecordingChest`` is a real chest that keeps what it receives in memory:
put it where the real chests go (``chests=[...]`` or ``FLASK_CHEST_CHESTS``)
and read ``chest.measurements``. ``capture_measurements()`` captures, inside a
``with`` block, what every route records, whatever its chests.

>>> from flask import Flask, g
>>> from flask_chest_otel import flask_chest
>>> from flask_chest_otel.testing import RecordingChest
>>> chest = RecordingChest()
>>> app = Flask(__name__)
>>> @app.route("/", methods=["GET", "POST"])
... @flask_chest(chests=[chest],
...              tracked_vars={"GET": ["transaction"],
...                            "POST": ["transaction", "response_time"]})
... def index():
...     g.transaction = 1
...     g.response_time = 0.25
...     return "Hello, World!"
>>> app.test_client().post("/").status_code
200
>>> [(m.name, m.value, m.method, m.route) for m in chest.measurements]
[('transaction', 1, 'POST', '/'), ('response_time', 0.25, 'POST', '/')]
>>> len({m.request_id for m in chest.measurements})
1
>>> chest.shutdown()
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData, NumberDataPoint

from ._chest import Chest
from ._delivery import DELIVERED, BufferedExporter, Settlement
from ._names import (
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STATUS_CODE,
    ATTR_STRING_VALUE,
    ATTR_TIME,
    SCOPE_NAME,
)
from ._recorder import RECORDER, Record, Recorder
from ._records import NAME, SPAN_IDS, TIME_UNIX_NANO, VALUE, point_attributes
from ._spool_codecs import dumps_measurement, loads_measurement
from ._trace import hex_ids, point_trace

__all__ = [
    "CapturedMeasurement",
    "InMemoryMetricExporter",
    "RecordingChest",
    "capture_measurements",
]


@dataclass(frozen=True)
class CapturedMeasurement:
    """One variable of one request, as a chest received it.

    Attributes:
        name: the ``g`` variable.
        value: the number as recorded (a bool, int or float), or the text of a
            value that is not a number (see
            ``docs/recording.md``, Values).
        request_id: the request's ``g.custom_request_id``.
        method: the HTTP method.
        route: the URL rule (``/items/<int:item_id>``); None if none matched.
        time_unix_nano: the request's time (when the view returned).
        attributes: any other attribute of the point: the request's tags
            (``tag_vars``, the OTel resource from the environment), a
            ``chest_meter()`` measurement's own attributes.
        status_code: the response's status code (500 for a view that raised).
    """

    name: str
    value: bool | int | float | str
    request_id: str | None
    method: str | None
    route: str | None
    time_unix_nano: int
    attributes: Mapping[str, Any] = field(default_factory=dict)
    #: The variable's position among its request's (``tracked_vars`` order).
    index: int = field(default=0, repr=False, compare=False)
    #: The request's trace and span (32 and 16 hex digits), when a span was
    #: recording during the request; else None.
    trace_id: str | None = field(default=None, repr=False, compare=False)
    span_id: str | None = field(default=None, repr=False, compare=False)
    status_code: int | None = field(default=None, compare=False)

    @property
    def time(self) -> datetime:
        """``time_unix_nano`` as an aware UTC datetime (microseconds)."""
        return datetime.fromtimestamp(self.time_unix_nano / 1e9, tz=timezone.utc)

    @classmethod
    def from_point(
        cls,
        name: str,
        value: float,
        attributes: Mapping[str, Any] | None,
        time_unix_nano: int,
        trace: tuple[str, str] | None = None,
    ) -> CapturedMeasurement:
        """Builds one from a recorded value, its attributes and its trace."""
        others = dict(attributes or {})
        text = others.pop(ATTR_STRING_VALUE, None)
        request_id = others.pop(ATTR_REQUEST_ID, None)
        method = others.pop(ATTR_METHOD, None)
        route = others.pop(ATTR_ROUTE, None)
        index = others.pop(ATTR_INDEX, 0)
        status_code = others.pop(ATTR_STATUS_CODE, None)
        time_unix_nano = int(others.pop(ATTR_TIME, time_unix_nano))
        return cls(
            name=name,
            value=str(text) if text is not None else value,
            request_id=None if request_id is None else str(request_id),
            method=None if method is None else str(method),
            route=None if route is None else str(route),
            time_unix_nano=time_unix_nano,
            attributes=others,
            index=int(index),
            trace_id=trace[0] if trace else None,
            span_id=trace[1] if trace else None,
            status_code=status_code if isinstance(status_code, int) else None,
        )


def _in_request_order(measurements: Iterable[CapturedMeasurement]) -> list[CapturedMeasurement]:
    # A collection groups points by variable; put each request's back in order.
    return sorted(measurements, key=lambda m: (m.time_unix_nano, m.index))


class InMemoryMetricExporter(BufferedExporter[CapturedMeasurement]):
    """Keeps the decorated variables it receives in a list (other OTel
    metrics are ignored). Delivery goes through the usual buffer and thread,
    so flushing and shutdown behave as in any chest."""

    def __init__(self, *, name: str = "Recording", **options: Any) -> None:
        super().__init__(name=name, **options)
        self._received: list[CapturedMeasurement] = []
        self._received_lock = threading.Lock()

    def _after_fork_in_child(self) -> None:
        # A lock held by another thread at fork would never be released here.
        super()._after_fork_in_child()
        self._received_lock = threading.Lock()

    def _encode(self, metrics_data: MetricsData) -> list[CapturedMeasurement]:
        captured = []
        for resource_metrics in metrics_data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                if scope_metrics.scope.name != SCOPE_NAME:
                    continue
                for metric in scope_metrics.metrics:
                    for point in metric.data.data_points:
                        if isinstance(point, NumberDataPoint):
                            captured.append(
                                CapturedMeasurement.from_point(
                                    metric.name, point.value, point.attributes,
                                    point.time_unix_nano, point_trace(point),
                                )
                            )
        return _in_request_order(captured)

    def _spool_dumps(self, item: CapturedMeasurement) -> bytes:
        return dumps_measurement(item)

    def _spool_loads(self, data: bytes) -> CapturedMeasurement:
        return loads_measurement(data, CapturedMeasurement)

    def _spool_identity(self) -> tuple[str, str, str]:
        return "recording", self.name, "memory"

    def _send(self, batch: Sequence[CapturedMeasurement]) -> Settlement:
        with self._received_lock:
            self._received.extend(batch)
        return DELIVERED

    def received(self) -> list[CapturedMeasurement]:
        """A copy of what was delivered so far."""
        with self._received_lock:
            return list(self._received)

    def clear(self) -> None:
        with self._received_lock:
            self._received.clear()


class RecordingChest(Chest):
    """A chest that keeps, in memory, what routes decorated with it record.

    ``measurements`` flushes first, so it holds every request that has
    returned. Call ``shutdown()`` when done (a test fixture is a good place).
    """

    exporter: InMemoryMetricExporter

    def __init__(self, name: str = "Recording", **options: Any) -> None:
        super().__init__(name, InMemoryMetricExporter(name=name, **options))

    @property
    def measurements(self) -> list[CapturedMeasurement]:
        """Every measurement received so far, request after request, each
        request's variables in ``tracked_vars`` order."""
        self.force_flush()
        return self.exporter.received()

    def clear(self) -> None:
        """Forgets what was received (what routes recorded is collected first)."""
        self.force_flush()
        self.exporter.clear()


_captures: list[list[CapturedMeasurement]] = []
_captures_lock = threading.Lock()


def _renew_captures_lock() -> None:
    global _captures_lock
    _captures_lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_captures_lock)
#: What ``RECORDER.record_many`` was on the instance before the first capture.
_shadowed: list[Any] = []


def _tap(recorder: Recorder, records: list[Record]) -> None:
    forward = _shadowed[0] if _shadowed else functools.partial(Recorder.record_many, recorder)
    captured = [
        CapturedMeasurement.from_point(
            record[NAME],
            record[VALUE],
            point_attributes(record),
            record[TIME_UNIX_NANO],
            hex_ids(*record[SPAN_IDS]) if record[SPAN_IDS] else None,
        )
        for record in records
    ]
    with _captures_lock:
        for capture in _captures:
            capture.extend(captured)
    forward(records)


@contextmanager
def capture_measurements() -> Iterator[list[CapturedMeasurement]]:
    """Yields a list that receives, as they are recorded, the measurements
    every route records inside the ``with`` block, whatever its chests (the
    chests receive them too). Measurements recorded only into a
    ``FlaskChestMeterProvider`` are not seen: use ``RecordingChest`` there.

    >>> from flask import Flask, g
    >>> from flask_chest_otel import flask_chest
    >>> chest = RecordingChest()
    >>> app = Flask(__name__)
    >>> @app.route("/orders", methods=["POST"])
    ... @flask_chest(chests=[chest], tracked_vars={"POST": ["transaction"]})
    ... def orders():
    ...     g.transaction = 1
    ...     return "created", 201
    >>> with capture_measurements() as measurements:
    ...     _ = app.test_client().post("/orders")
    >>> [(m.name, m.value, m.route) for m in measurements]
    [('transaction', 1, '/orders')]
    >>> chest.shutdown()
    """
    captured: list[CapturedMeasurement] = []
    with _captures_lock:
        _captures.append(captured)
        if len(_captures) == 1:
            # The recorder's own method, shadowed on the instance while any
            # capture is open; every recording path goes through it.
            own = vars(RECORDER)
            _shadowed[:] = [own["record_many"]] if "record_many" in own else []
            RECORDER.record_many = lambda records: _tap(RECORDER, records)  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        with _captures_lock:
            del _captures[next(i for i, c in enumerate(_captures) if c is captured)]
            if not _captures:
                del RECORDER.record_many
                if _shadowed:
                    RECORDER.record_many = _shadowed.pop()  # type: ignore[method-assign]
