"""The library's own metrics: delivery counters of every exporter, as
OpenTelemetry observable instruments in meter ``flask_chest_otel.self``.

They are created on the global MeterProvider (through the API's proxy, so a
provider set later is used) when ``register_self_metrics()`` is called, or on
a provider given to it. The same counters are readable from Python as
``exporter.stats``.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from . import _delivery, _values
from ._recorder import RECORDER, VERSION

METER_NAME = "flask_chest_otel.self"
_REASONS = ("buffer_full", "rejected", "shutdown", "encoding")


def _exporters() -> list[_delivery.BufferedExporter[object]]:
    return list(_delivery.LIVE_EXPORTERS)


def _exported(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(e.stats.exported, {"exporter": e.name}) for e in _exporters()]


def _retried(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(e.stats.retried, {"exporter": e.name}) for e in _exporters()]


def _dropped(options: CallbackOptions) -> Iterable[Observation]:
    observations = [
        Observation(getattr(e.stats, f"dropped_{reason}"), {"exporter": e.name, "reason": reason})
        for e in _exporters()
        for reason in _REASONS
    ]
    observations.append(Observation(RECORDER.dropped, {"exporter": "", "reason": "queue_full"}))
    return observations


def _buffered(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(e.stats.buffered, {"exporter": e.name}) for e in _exporters()]


def _buffered_bytes(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(e.stats.buffered_bytes, {"exporter": e.name}) for e in _exporters()]


def _conversion_errors(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(_values.conversion_errors())]


def register_self_metrics(meter_provider: MeterProvider | None = None) -> None:
    """Creates the library's delivery metrics on ``meter_provider`` (the
    global one when None):

    - ``flask_chest.exported`` (counter): items delivered, per exporter;
    - ``flask_chest.retried`` (counter): items sent again after a retryable error;
    - ``flask_chest.dropped`` (counter): items lost, per exporter and reason
      (buffer_full, rejected, shutdown, encoding; queue_full for the recorder);
    - ``flask_chest.buffer.items`` / ``flask_chest.buffer.bytes`` (gauges);
    - ``flask_chest.conversion_errors`` (counter): ``g`` values whose
      conversion raised, recorded as text instead (see docs/recording.md).
    """
    provider = meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter(METER_NAME, VERSION)
    meter.create_observable_counter(
        "flask_chest.exported", [_exported], unit="{item}", description="Items delivered"
    )
    meter.create_observable_counter(
        "flask_chest.retried", [_retried], unit="{item}", description="Items retried"
    )
    meter.create_observable_counter(
        "flask_chest.dropped", [_dropped], unit="{item}", description="Items lost, by reason"
    )
    meter.create_observable_gauge(
        "flask_chest.buffer.items", [_buffered], unit="{item}", description="Items buffered"
    )
    meter.create_observable_gauge(
        "flask_chest.buffer.bytes", [_buffered_bytes], unit="By", description="Bytes buffered"
    )
    meter.create_observable_counter(
        "flask_chest.conversion_errors",
        [_conversion_errors],
        unit="{value}",
        description="Values whose conversion raised, recorded as text",
    )
