"""Exporters configured from the environment, for OpenTelemetry's
auto-configuration (``opentelemetry-instrument --metrics_exporter influxdb``,
or ``OTEL_METRICS_EXPORTER=influxdb`` with the SDK configurator).

The SDK builds an entry point's class with no arguments, so these read their
settings from the variables of ``flask_chest_otel.environment_variables``
(the ``OTEL_EXPORTER_INFLUXDB_*`` names, falling back to the ``INFLUXDB_V2_*``
names influxdb-client reads, and to ``INFLUXDB_V2_BUCKET``, which it does
not: that one is this library's). A missing or malformed setting raises a ValueError naming
the variable and its ``opentelemetry-instrument`` flag. Note that the
OpenTelemetry distro catches that error: it logs it ("Configuration of
configurator failed", with our message) and the application goes on serving
without metrics, so read the start-up log.
"""

from __future__ import annotations

import importlib
import os
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.util.re import parse_env_headers

from . import environment_variables as names
from .http_payload import HTTPPayloadMetricExporter, json_payload
from .influxdb import InfluxDBMetricExporter

__all__ = [
    "HTTPPayloadEnvMetricExporter",
    "InfluxDBEnvMetricExporter",
    "http_payload_settings",
    "influxdb_settings",
]


def flag(variable: str) -> str:
    """The ``opentelemetry-instrument`` flag of an ``OTEL_`` variable."""
    return "--" + variable.removeprefix("OTEL_").lower()


def _missing(variable: str, fallback: str, what: str, whose: str) -> ValueError:
    return ValueError(
        f"{what} is not set: set ${variable} (opentelemetry-instrument flag {flag(variable)}), "
        f"or {whose} ${fallback}"
    )


def parse_pairs(text: str, variable: str) -> dict[str, str]:
    """``key1=value1,key2=value2``, read by OpenTelemetry's own parser of
    OTLP's header variables (``opentelemetry.util.re.parse_env_headers``,
    liberal: values URL-decoded, or taken as written when they are not
    encoded). Two differences: a key keeps its case (they are tag names too),
    and an item the parser drops (OTLP logs it and goes on) is a ValueError
    naming the variable."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        parsed = parse_env_headers(item, liberal=True)
        if not parsed:
            raise ValueError(
                f"${variable}: expected key=value pairs separated by commas, got {item!r}"
            )
        [value] = parsed.values()
        pairs[urllib.parse.unquote(item.partition("=")[0]).strip()] = value
    return pairs


def _milliseconds(text: str, variable: str) -> float:
    try:
        milliseconds = float(text)
    except ValueError:
        raise ValueError(f"${variable}: expected milliseconds, got {text!r}") from None
    if not milliseconds > 0:
        raise ValueError(f"${variable}: must be > 0 milliseconds, got {text!r}")
    return milliseconds / 1000


def _boolean(text: str, variable: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"${variable}: expected true or false, got {text!r}")


def influxdb_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``InfluxDBMetricExporter`` from the environment.
    Settings an OTEL_ variable does not give are left to the exporter, which
    reads the ``INFLUXDB_V2_*`` variables."""
    env = os.environ if environ is None else environ
    settings: dict[str, Any] = {
        "url": env.get(names.OTEL_EXPORTER_INFLUXDB_ENDPOINT) or None,
        "token": env.get(names.OTEL_EXPORTER_INFLUXDB_TOKEN) or None,
        "org": env.get(names.OTEL_EXPORTER_INFLUXDB_ORG) or None,
        "bucket": env.get(names.OTEL_EXPORTER_INFLUXDB_BUCKET) or None,
    }
    timeout = env.get(names.OTEL_EXPORTER_INFLUXDB_TIMEOUT)
    if timeout:
        settings["timeout"] = _milliseconds(timeout, names.OTEL_EXPORTER_INFLUXDB_TIMEOUT)
    headers = env.get(names.OTEL_EXPORTER_INFLUXDB_HEADERS)
    if headers:
        settings["headers"] = parse_pairs(headers, names.OTEL_EXPORTER_INFLUXDB_HEADERS)
    tags = env.get(names.OTEL_EXPORTER_INFLUXDB_CUSTOM_TAGS)
    if tags:
        settings["custom_tags"] = parse_pairs(tags, names.OTEL_EXPORTER_INFLUXDB_CUSTOM_TAGS)
    compression = env.get(names.OTEL_EXPORTER_INFLUXDB_COMPRESSION)
    if compression:
        if compression.strip().lower() not in ("gzip", "none"):
            raise ValueError(
                f"${names.OTEL_EXPORTER_INFLUXDB_COMPRESSION}: expected gzip or none, "
                f"got {compression!r}"
            )
        settings["enable_gzip"] = compression.strip().lower() == "gzip"
    if not settings["url"] and not env.get(names.INFLUXDB_V2_URL):
        raise _missing(
            names.OTEL_EXPORTER_INFLUXDB_ENDPOINT,
            names.INFLUXDB_V2_URL,
            "the InfluxDB URL",
            "influxdb-client's",
        )
    if not settings["bucket"] and not env.get(names.INFLUXDB_V2_BUCKET):
        raise _missing(
            names.OTEL_EXPORTER_INFLUXDB_BUCKET,
            names.INFLUXDB_V2_BUCKET,
            "the InfluxDB bucket",
            "this library's",
        )
    return settings


def _import_generator(path: str) -> Callable[..., Any]:
    module_name, separator, attribute = path.partition(":")
    variable = names.OTEL_EXPORTER_HTTP_PAYLOAD_GENERATOR
    if not separator or not module_name or not attribute:
        raise ValueError(f"${variable}: expected module:function, got {path!r}")
    try:
        generator = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"${variable}: cannot import {path!r}: {exc}") from None
    if not callable(generator):
        raise ValueError(f"${variable}: {path!r} is not callable")
    return generator  # type: ignore[no-any-return]


def http_payload_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``HTTPPayloadMetricExporter`` from the environment."""
    env = os.environ if environ is None else environ
    url = env.get(names.OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT)
    if not url:
        variable = names.OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT
        raise ValueError(
            f"${variable} (opentelemetry-instrument flag {flag(variable)}) is not set: the "
            "HTTP payload exporter needs the URL to POST to"
        )
    settings: dict[str, Any] = {"url": url, "payload_generator": json_payload}
    generator = env.get(names.OTEL_EXPORTER_HTTP_PAYLOAD_GENERATOR)
    if generator:
        settings["payload_generator"] = _import_generator(generator)
    headers = env.get(names.OTEL_EXPORTER_HTTP_PAYLOAD_HEADERS)
    if headers:
        settings["headers"] = parse_pairs(headers, names.OTEL_EXPORTER_HTTP_PAYLOAD_HEADERS)
    timeout = env.get(names.OTEL_EXPORTER_HTTP_PAYLOAD_TIMEOUT)
    if timeout:
        settings["timeout"] = _milliseconds(timeout, names.OTEL_EXPORTER_HTTP_PAYLOAD_TIMEOUT)
    per_request = env.get(names.OTEL_EXPORTER_HTTP_PAYLOAD_PER_REQUEST)
    if per_request:
        settings["per_request"] = _boolean(
            per_request, names.OTEL_EXPORTER_HTTP_PAYLOAD_PER_REQUEST
        )
    return settings


class InfluxDBEnvMetricExporter(InfluxDBMetricExporter):
    """``InfluxDBMetricExporter`` configured from the environment; entry point
    ``influxdb`` of group ``opentelemetry_metrics_exporter``."""

    def __init__(self) -> None:
        super().__init__(**influxdb_settings())


class HTTPPayloadEnvMetricExporter(HTTPPayloadMetricExporter):
    """``HTTPPayloadMetricExporter`` configured from the environment; entry
    point ``http_payload`` of group ``opentelemetry_metrics_exporter``."""

    def __new__(cls) -> HTTPPayloadEnvMetricExporter:
        # The environment's per_request picks the mode's class, which
        # ``__new__`` must know: the settings are read, and the exporter
        # made, here.
        settings = http_payload_settings()
        exporter = super().__new__(cls, **settings)
        HTTPPayloadMetricExporter.__init__(exporter, **settings)
        return exporter

    def __init__(self) -> None:
        """Made by ``__new__``."""
