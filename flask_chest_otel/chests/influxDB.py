"""``flask_chest.chests.influxDB`` (its module name, capitals included): the
InfluxDB chest."""

from __future__ import annotations

from ..influxdb import FlaskChestInfluxDB

__all__ = ["FlaskChestInfluxDB"]
