"""``FlaskChestInfluxDB``: flask-chest's InfluxDB chest, on
:class:`~flask_chest_otel.InfluxDBMetricExporter`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .._chest import DEFAULT_EXPORT_INTERVAL, Chest
from .._legacy import influxdb_from_0010, is_0010_call
from ._exporter import InfluxDBMetricExporter

__all__ = ["FlaskChestInfluxDB"]


class FlaskChestInfluxDB(Chest):
    """A chest writing decorated variables to InfluxDB 2.x (flask-chest's
    ``FlaskChestInfluxDB``, same arguments).

    Every point of a request carries that request's time (ns), the tags
    ``request_id``, ``method``, ``route`` and ``custom_tags``, and the field
    ``value`` in the value's own type. Keyword options of
    ``InfluxDBMetricExporter`` (``timeout``, ``enable_gzip``, ``database``,
    ``request_id_field``, spool options...) are passed through.

    flask-chest 0.0.10's call ``FlaskChestInfluxDB(app, https=False,
    host="localhost", port=8086, token="", org="my-org", bucket="my-bucket",
    custom_tags={}, logger=None)`` is accepted too (``app`` first or as
    ``app=``; see ``_legacy``).
    """

    exporter: InfluxDBMetricExporter

    def __init__(
        self,
        name: str = "InfluxDB",
        url: str | None = None,
        token: str | None = None,
        org: str | None = None,
        bucket: str | None = None,
        custom_tags: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        **exporter_options: Any,
    ) -> None:
        if is_0010_call(name, exporter_options):  # flask-chest 0.0.10: (app, https=, host=...)
            name, url, token, org, bucket, custom_tags, exporter_options = influxdb_from_0010(
                name, url, token, org, bucket, custom_tags, exporter_options
            )
        exporter = InfluxDBMetricExporter(
            url=url,
            token=token,
            org=org,
            bucket=bucket,
            custom_tags=custom_tags,
            name=name,
            logger=logger,
            **exporter_options,
        )
        super().__init__(name, exporter, export_interval=export_interval, logger=logger)

    def __repr__(self) -> str:
        return f"FlaskChestInfluxDB(name={self.name!r}, destination={self.exporter.destination!r})"
