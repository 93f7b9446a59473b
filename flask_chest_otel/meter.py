"""``chest_meter()``: an OpenTelemetry API ``Meter`` of the chests' pipeline,
for per-request measurements from anywhere in a recorded view.

Its synchronous instruments (gauge, counter, up-down counter, histogram) do
not aggregate: each measurement made during a request joins that request's
group, which the decorator (or the extension) queues in one step after the
view, with its tracked ``g`` variables, to the route's chests. A
measurement is one point of the metric named after its instrument, at the
request's time, with the request's attributes (``request_id``, method,
route, its trace) and its own. The decorator records the tracked variables
through this meter's gauges too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import Counter, Histogram, NoOpMeter, UpDownCounter, _Gauge
from opentelemetry.util.types import Attributes

from ._logging import LOGGER, RateLimitedLog
from ._names import SCOPE_NAME
from ._recorder import VERSION

__all__ = ["ChestMeter", "chest_meter"]

#: One measurement of a request: (instrument name, value, its own attributes).
Measurement = tuple[str, Any, Attributes]

#: The measurements of the request being served in this context, or None
#: outside a recorded request.
CURRENT_GROUP: ContextVar[list[Measurement] | None] = ContextVar(
    "flask_chest_otel_group", default=None
)

_log = RateLimitedLog(LOGGER, interval=300.0)


def _measure(name: str, amount: Any, attributes: Attributes) -> None:
    group = CURRENT_GROUP.get()
    if group is None:
        _log.log(
            logging.WARNING,
            "outside-request",
            "flask_chest_otel: %s measured outside a request recorded by @flask_chest or "
            "FlaskChestExtension; dropped (chest_meter() measures per request)",
            name,
        )
        return
    group.append((name, amount, attributes))


class _Instrument:
    """What every instrument of the meter shares: its name and description."""

    def __init__(self, name: str, unit: str = "", description: str = "") -> None:
        self.name = name
        self.unit = unit
        self.description = description


class ChestGauge(_Instrument, _Gauge):
    """``set`` adds a point to the current request's group."""

    def set(
        self, amount: int | float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        # Inlined _measure: the decorator records every tracked variable here.
        group = CURRENT_GROUP.get()
        if group is None:
            _measure(self.name, amount, attributes)
        else:
            group.append((self.name, amount, attributes))


class ChestCounter(_Instrument, Counter):
    """``add`` adds a point (the amount added in this request)."""

    def add(
        self, amount: int | float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        _measure(self.name, amount, attributes)


class ChestUpDownCounter(_Instrument, UpDownCounter):
    """``add`` adds a point (the change made in this request)."""

    def add(
        self, amount: int | float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        _measure(self.name, amount, attributes)


class ChestHistogram(_Instrument, Histogram):
    """``record`` adds a point: each value is kept, none is bucketed."""

    def record(
        self, amount: int | float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        _measure(self.name, amount, attributes)


class ChestMeter(NoOpMeter):
    """A Meter whose synchronous instruments record per request (see the
    module's description). Asynchronous instruments have no request to
    belong to: they are OpenTelemetry's no-op ones, use your MeterProvider."""

    def __init__(self) -> None:
        super().__init__(SCOPE_NAME, version=VERSION)
        self._instruments: dict[tuple[type, str], Any] = {}

    def _get(self, kind: type, name: str, unit: str, description: str) -> Any:
        instrument = self._instruments.get((kind, name))
        if instrument is None:
            instrument = self._instruments.setdefault(
                (kind, name), kind(name, unit, description)
            )
        return instrument

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> ChestGauge:
        return self._get(ChestGauge, name, unit, description)  # type: ignore[no-any-return]

    def create_counter(self, name: str, unit: str = "", description: str = "") -> ChestCounter:
        return self._get(ChestCounter, name, unit, description)  # type: ignore[no-any-return]

    def create_up_down_counter(
        self, name: str, unit: str = "", description: str = ""
    ) -> ChestUpDownCounter:
        return self._get(  # type: ignore[no-any-return]
            ChestUpDownCounter, name, unit, description
        )

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> ChestHistogram:
        return self._get(ChestHistogram, name, unit, description)  # type: ignore[no-any-return]


_METER = ChestMeter()


def chest_meter() -> ChestMeter:
    """The Meter of the chests' pipeline. In a view recorded by
    ``@flask_chest`` or ``FlaskChestExtension``::

        chest_meter().create_histogram("db_time").record(0.012, {"table": "orders"})

    adds a point to the request's measurements, sent to the route's chests
    with its tracked variables (one group per request). Outside such a
    request a measurement is dropped, with a warning (once per 5 minutes).
    """
    return _METER
