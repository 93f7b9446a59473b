"""Every environment variable flask_chest_otel reads, in one place.

The ``OTEL_EXPORTER_*`` names are registered under the entry-point group
``opentelemetry_environment_variables``, so ``opentelemetry-instrument``
offers a matching flag for each (``--exporter_influxdb_endpoint`` ...).
"""

from __future__ import annotations

OTEL_EXPORTER_INFLUXDB_ENDPOINT = "OTEL_EXPORTER_INFLUXDB_ENDPOINT"
"""InfluxDB base URL, e.g. ``http://localhost:8086`` (falls back to ``INFLUXDB_V2_URL``)."""

OTEL_EXPORTER_INFLUXDB_TOKEN = "OTEL_EXPORTER_INFLUXDB_TOKEN"
"""API token (falls back to ``INFLUXDB_V2_TOKEN``); never logged."""

OTEL_EXPORTER_INFLUXDB_ORG = "OTEL_EXPORTER_INFLUXDB_ORG"
"""Organisation (falls back to ``INFLUXDB_V2_ORG``)."""

OTEL_EXPORTER_INFLUXDB_BUCKET = "OTEL_EXPORTER_INFLUXDB_BUCKET"
"""Bucket (falls back to ``INFLUXDB_V2_BUCKET``)."""

OTEL_EXPORTER_INFLUXDB_TIMEOUT = "OTEL_EXPORTER_INFLUXDB_TIMEOUT"
"""Milliseconds one write may take, as OTLP's timeout (falls back to ``INFLUXDB_V2_TIMEOUT``)."""

OTEL_EXPORTER_INFLUXDB_HEADERS = "OTEL_EXPORTER_INFLUXDB_HEADERS"
"""Extra HTTP headers, ``key1=value1,key2=value2`` (values URL-decoded), as OTLP's."""

OTEL_EXPORTER_INFLUXDB_COMPRESSION = "OTEL_EXPORTER_INFLUXDB_COMPRESSION"
"""``gzip`` (default) or ``none``."""

OTEL_EXPORTER_INFLUXDB_CUSTOM_TAGS = "OTEL_EXPORTER_INFLUXDB_CUSTOM_TAGS"
"""Tags added to every line, ``key1=value1,key2=value2``."""

OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT = "OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT"
"""URL the HTTP payload writer POSTs to."""

OTEL_EXPORTER_HTTP_PAYLOAD_HEADERS = "OTEL_EXPORTER_HTTP_PAYLOAD_HEADERS"
"""Extra HTTP headers, ``key1=value1,key2=value2`` (values URL-decoded)."""

OTEL_EXPORTER_HTTP_PAYLOAD_TIMEOUT = "OTEL_EXPORTER_HTTP_PAYLOAD_TIMEOUT"
"""Milliseconds one POST may take."""

OTEL_EXPORTER_HTTP_PAYLOAD_GENERATOR = "OTEL_EXPORTER_HTTP_PAYLOAD_GENERATOR"
"""The payload generator as ``module:function`` (default
``flask_chest_otel.http_payload:json_payload``)."""

OTEL_EXPORTER_HTTP_PAYLOAD_PER_REQUEST = "OTEL_EXPORTER_HTTP_PAYLOAD_PER_REQUEST"
"""``true`` (default): one POST per request; ``false``: one POST per export."""

FLASK_CHEST_HTTP_MAX_CONNECTIONS = "FLASK_CHEST_HTTP_MAX_CONNECTIONS"
"""The HTTP payload writer's ``max_connections`` when not given: at most this
many POSTs in flight at once, one per connection (1 to 256; default 16)."""

# Read when neither an argument nor an OTEL_ variable gives the setting:
# influxdb-client's own names (``InfluxDBClient.from_env_properties``), and
# INFLUXDB_V2_BUCKET, named after them but this library's (influxdb-client
# reads no bucket from the environment).
INFLUXDB_V2_URL = "INFLUXDB_V2_URL"
INFLUXDB_V2_TOKEN = "INFLUXDB_V2_TOKEN"
INFLUXDB_V2_ORG = "INFLUXDB_V2_ORG"
INFLUXDB_V2_BUCKET = "INFLUXDB_V2_BUCKET"
INFLUXDB_V2_TIMEOUT = "INFLUXDB_V2_TIMEOUT"
INFLUXDB_V2_VERIFY_SSL = "INFLUXDB_V2_VERIFY_SSL"
INFLUXDB_V2_SSL_CA_CERT = "INFLUXDB_V2_SSL_CA_CERT"

FLASK_CHEST_SPOOL_DIR = "FLASK_CHEST_SPOOL_DIR"
"""Directory of the on-disk spool of every chest that is not given ``spool_dir=``
(one file per process and chest; see docs/reliability.md)."""

FLASK_CHEST_SPOOL_FSYNC = "FLASK_CHEST_SPOOL_FSYNC"
"""When spool files are flushed to the disk, for every chest not given
``spool_fsync=``: ``never`` (default), ``interval`` (every second) or ``always``
(after every write; see docs/reliability.md for what each costs)."""

FLASK_CHEST_EXIT_TIMEOUT = "FLASK_CHEST_EXIT_TIMEOUT"
"""Seconds the interpreter's exit may wait for deliveries, all chests together
(default 5)."""

FLASK_CHEST_RESOURCE_TAGS = "FLASK_CHEST_RESOURCE_TAGS"
"""``false`` (or ``0``, ``no``, ``off``): the OTel resource from the environment
(below) is not put on the points as tags; default ``true``. The argument
``resource_tags=`` of ``@flask_chest`` and ``FlaskChestExtension`` wins."""

# The standard OpenTelemetry variables this package also reads (see
# ``_environment``). Their constants here do not start with ``OTEL_``:
# ``opentelemetry-instrument`` makes a command-line flag of every ``OTEL_``
# name of this module, and the SDK registers these already (a second flag
# of one name would stop it).
SDK_DISABLED = "OTEL_SDK_DISABLED"
"""``true``: decorators and the extension record nothing, chests start no thread."""

SERVICE_NAME = "OTEL_SERVICE_NAME"
"""Tag ``service.name`` on every decorated point (wins over a ``service.name``
in ``OTEL_RESOURCE_ATTRIBUTES``)."""

RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
"""``key1=value1,key2=value2`` (values URL-decoded): tags on every decorated point."""

FLASK_EXCLUDED_URLS = "OTEL_PYTHON_FLASK_EXCLUDED_URLS"
"""Comma-separated regular expressions; a request whose full URL one of them
matches (``re.search``) is not recorded, as opentelemetry-instrumentation-flask
does not trace it."""

EXCLUDED_URLS = "OTEL_PYTHON_EXCLUDED_URLS"
"""Read when ``OTEL_PYTHON_FLASK_EXCLUDED_URLS`` is not set, as the instrumentation does."""

METRIC_EXPORT_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
"""Milliseconds: the default ``export_interval`` of every chest (else 2 s)."""
