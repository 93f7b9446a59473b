"""flask_chest_otel: Flask ``g`` variables of each request as OpenTelemetry
measurements, exported to InfluxDB, HTTP endpoints (SignalFx) and SQLite."""

from __future__ import annotations

from ._chest import Chest
from ._delivery import (
    DELTA_TEMPORALITY,
    BufferedExporter,
    DeliveryStats,
    Fate,
    Settlement,
    set_exit_timeout,
)
from ._recorder import VERSION as __version__
from ._self_metrics import register_self_metrics
from .decorator import flask_chest, trace_id_request_id
from .extension import FlaskChestExtension, flask_chest_exempt
from .http_payload import FlaskChestCustomWriter, HTTPPayloadMetricExporter
from .influxdb import FlaskChestInfluxDB, InfluxDBMetricExporter
from .meter import chest_meter
from .meter_provider import FlaskChestMeterProvider
from .otel import FlaskChestOTel
from .sqlite import FlaskChestSQLite, SQLiteMetricExporter
from .user_chests import FlaskChest

__all__ = [
    "DELTA_TEMPORALITY",
    "BufferedExporter",
    "Chest",
    "DeliveryStats",
    "Fate",
    "HTTPPayloadMetricExporter",
    "InfluxDBMetricExporter",
    "FlaskChest",
    "FlaskChestCustomWriter",
    "FlaskChestExtension",
    "FlaskChestInfluxDB",
    "FlaskChestMeterProvider",
    "FlaskChestOTel",
    "FlaskChestSQLite",
    "Settlement",
    "SQLiteMetricExporter",
    "__version__",
    "chest_meter",
    "flask_chest",
    "flask_chest_exempt",
    "register_self_metrics",
    "set_exit_timeout",
    "trace_id_request_id",
]
