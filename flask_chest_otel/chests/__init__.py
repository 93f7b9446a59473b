"""flask-chest's ``flask_chest.chests`` import paths, kept: ``from
flask_chest_otel.chests import FlaskChestInfluxDB`` (and ``.base``,
``.sqlite``, ``.influxDB``, ``.custom``) give this library's classes, the
same as ``from flask_chest_otel import ...``."""

from __future__ import annotations

from .base import FlaskChest
from .custom import FlaskChestCustomWriter
from .influxDB import FlaskChestInfluxDB
from .sqlite import FlaskChestSQLite

__all__ = ["FlaskChest", "FlaskChestCustomWriter", "FlaskChestInfluxDB", "FlaskChestSQLite"]
