"""``FlaskChestMeterProvider``: a chest that records decorated variables into
an existing OpenTelemetry MeterProvider, so they flow through the
application's own readers (OTLP and others)."""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider

from ._names import SCOPE_NAME

__all__ = ["FlaskChestMeterProvider"]


class FlaskChestMeterProvider:
    """Records each decorated variable on a synchronous Gauge named after it,
    in meter ``flask_chest_otel`` of ``meter_provider`` (the global one when
    None, resolved when the first variable is recorded).

    The provider's own readers then export the points. Each point carries the
    attributes ``request_id``, ``http.request.method``, ``http.route``,
    ``http.response.status_code``, the request's tags (``tag_vars``, the OTel
    resource from the environment) and ``flask_chest.time_unix_nano`` (the
    request's time; this library's exporters use it as the point's
    timestamp, others show it as an attribute). The trace link is the SDK's
    exemplar, which this library's exporters do not write as fields. Give
    that provider's readers DELTA temporality: under CUMULATIVE the SDK
    keeps every request ID's attribute set for good (and SDK 1.45.1 keeps
    them under DELTA too; 1.45.2 frees them). Where the SDK
    has a cardinality limit, raise it above the requests of one interval.
    For OTLP, ``FlaskChestOTel`` avoids all of this: the points skip the
    SDK's aggregation and keep their request's time as their timestamp.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        self.meter_provider = meter_provider
        self.name = "MeterProvider"
        self._meter: metrics.Meter | None = None
        self._gauges: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"FlaskChestMeterProvider(meter_provider={self.meter_provider!r})"

    def gauge(self, name: str) -> Any:
        """The provider's Gauge for variable ``name``."""
        gauge = self._gauges.get(name)
        if gauge is None:
            if self._meter is None:
                provider = self.meter_provider or metrics.get_meter_provider()
                self._meter = provider.get_meter(SCOPE_NAME)
            gauge = self._gauges.setdefault(name, self._meter.create_gauge(name))
        return gauge

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flushes the provider, if it can."""
        provider = self.meter_provider or metrics.get_meter_provider()
        flush = getattr(provider, "force_flush", None)
        return bool(flush(timeout_millis)) if flush is not None else True

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Nothing to stop: the provider belongs to the application."""
