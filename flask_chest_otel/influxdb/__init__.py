"""InfluxDB: decorated variables and any other OTel metric as line protocol,
written to InfluxDB 2.x (``/api/v2/write``, also accepted by InfluxDB 1.8+,
InfluxDB Cloud and VictoriaMetrics) or to InfluxDB 1.x (``/write?db=``).

The path of a point: rows (``_rows``, ``_otel2influx``; ``_row`` is the row
itself) -> line protocol (``_line_protocol``) -> the exporter's write
(``_exporter``) -> what the server's answer says of each line
(``_answers``) -> the delivery core (``flask_chest_otel._delivery``). The
chest is ``_chest``.
"""

from __future__ import annotations

from ._chest import FlaskChestInfluxDB
from ._exporter import InfluxDBMetricExporter

__all__ = ["FlaskChestInfluxDB", "InfluxDBMetricExporter"]
