"""The InfluxDB exporter and chest: decorated variables and any other OTel
metric as line protocol, written to InfluxDB 2.x (``/api/v2/write``, also
accepted by InfluxDB 1.8+, InfluxDB Cloud and VictoriaMetrics) or to
InfluxDB 1.x (``/write?db=``).

Writes go through influxdb-client's synchronous call, one request per batch,
under this library's own buffer, retries and sender thread (see
``_delivery``): never its batching mode.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from opentelemetry.sdk.metrics.export import MetricsData

from . import environment_variables
from ._chest import DEFAULT_EXPORT_INTERVAL, Chest
from ._delivery import DELIVERED, BufferedExporter, Outcome, Status
from ._http import check_url, parse_retry_after, safe_url
from ._line_protocol import LineEncoder, to_bytes
from ._schema import SCHEMAS, Schema, other_rows, scopes

__all__ = ["FlaskChestInfluxDB", "InfluxDBMetricExporter"]

# Environment variables read when an argument is not given (the names
# influxdb-client's ``InfluxDBClient.from_env_properties`` uses, plus the bucket).
ENV_URL = environment_variables.INFLUXDB_V2_URL
ENV_TOKEN = environment_variables.INFLUXDB_V2_TOKEN
ENV_ORG = environment_variables.INFLUXDB_V2_ORG
ENV_BUCKET = environment_variables.INFLUXDB_V2_BUCKET
ENV_TIMEOUT = environment_variables.INFLUXDB_V2_TIMEOUT
ENV_VERIFY_SSL = environment_variables.INFLUXDB_V2_VERIFY_SSL
ENV_SSL_CA_CERT = environment_variables.INFLUXDB_V2_SSL_CA_CERT

_DROPPED = re.compile(r"dropped=(\d+)")
_RETRY_STATUSES = frozenset({408, 429})
_MAX_MESSAGE = 500


def _env(value: str | None, variable: str) -> str | None:
    if value is not None:
        return value
    return os.environ.get(variable) or None


def _check_url(url: str) -> str:
    check_url(url, "InfluxDB")
    if urllib.parse.urlsplit(url).query or urllib.parse.urlsplit(url).fragment:
        raise ValueError(f"InfluxDB url {url!r} must not carry a query or fragment")
    return url.rstrip("/")


def _shown(url: str) -> str:
    """The URL without any user:password part, for messages."""
    return safe_url(url, keep_query=True)


def _server_message(body: Any) -> str:
    """The message of an InfluxDB error body: 2.x ``{"code","message"}``,
    1.x ``{"error"}``, else the text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = str(body or "").strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        text = str(decoded.get("message") or decoded.get("error") or text)
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    return text


class InfluxDBMetricExporter(BufferedExporter[bytes]):
    """An OpenTelemetry MetricExporter writing line protocol to InfluxDB.

    Decorated variables keep flask-chest's layout (measurement = variable
    name, tags ``request_id``, ``method``, ``route``, field ``value`` or
    ``value_str``, time = the request's time); other metrics follow the
    ``schema`` (see ``docs/influxdb.md``). ``custom_tags`` are added to every
    line; a metric's own attribute of the same name wins.

    Args:
        url: InfluxDB base URL (``INFLUXDB_V2_URL``), e.g. ``http://localhost:8086``.
        token: API token (``INFLUXDB_V2_TOKEN``); never logged.
        org, bucket: destination (``INFLUXDB_V2_ORG``, ``INFLUXDB_V2_BUCKET``).
        database, retention_policy, username, password: InfluxDB 1.x instead:
            writes go to ``/write?db=database&rp=retention_policy`` with basic
            auth (or ``Authorization: Token`` if only ``token`` is given).
        custom_tags: tags added to every line.
        schema: ``telegraf-prometheus-v1`` (default) or ``telegraf-prometheus-v2``.
        timeout: seconds one write may take (``INFLUXDB_V2_TIMEOUT``, in ms).
        verify_ssl, ssl_ca_cert: TLS verification (``INFLUXDB_V2_VERIFY_SSL``,
            ``INFLUXDB_V2_SSL_CA_CERT``).
        enable_gzip: gzip request bodies (on by default).
        headers: extra HTTP headers sent with every write (a proxy's, say).
        name, logger: see ``BufferedExporter``.
        **delivery: ``flush_interval``, ``max_batch_items``, ``max_batch_bytes``,
            ``max_buffer_items``, ``max_buffer_bytes``, ``retry_initial``,
            ``retry_max``, ``preferred_temporality``: see ``BufferedExporter``.

    Raises:
        ValueError: a missing or malformed URL, no bucket (or database), an
            unknown schema.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        org: str | None = None,
        bucket: str | None = None,
        *,
        database: str | None = None,
        retention_policy: str | None = None,
        username: str | None = None,
        password: str | None = None,
        custom_tags: Mapping[str, str] | None = None,
        schema: Schema = "telegraf-prometheus-v1",
        timeout: float | None = None,
        verify_ssl: bool | None = None,
        ssl_ca_cert: str | None = None,
        enable_gzip: bool = True,
        headers: Mapping[str, str] | None = None,
        name: str = "InfluxDB",
        logger: logging.Logger | None = None,
        **delivery: Any,
    ) -> None:
        resolved_url = _env(url, ENV_URL)
        if not resolved_url:
            raise ValueError(f"{name}: no InfluxDB url given (argument url or ${ENV_URL})")
        self.url = _check_url(resolved_url)
        self.database = database
        self.retention_policy = retention_policy
        self.org = None if database else _env(org, ENV_ORG)
        self.bucket = None if database else _env(bucket, ENV_BUCKET)
        if database is None and not self.bucket:
            raise ValueError(
                f"{name}: no bucket given for {_shown(self.url)} (argument bucket or "
                f"${ENV_BUCKET}; or database= for InfluxDB 1.x)"
            )
        if schema not in SCHEMAS:
            raise ValueError(f"{name}: schema must be one of {', '.join(SCHEMAS)}, got {schema!r}")
        self.schema: Schema = schema
        if timeout is None:
            env_timeout = os.environ.get(ENV_TIMEOUT)
            timeout = int(env_timeout) / 1000 if env_timeout else 10.0
        if verify_ssl is None:
            verify_ssl = os.environ.get(ENV_VERIFY_SSL, "true").lower() not in ("false", "0", "no")
        self.enable_gzip = enable_gzip
        self.custom_tags = dict(custom_tags or {})
        super().__init__(name=name, logger=logger, timeout=timeout, **delivery)
        self._encoder = LineEncoder(self.custom_tags)
        self._token = _env(token, ENV_TOKEN)
        self._username = username
        self._password = password
        self._client_options: dict[str, Any] = {
            "verify_ssl": verify_ssl,
            "ssl_ca_cert": _env(ssl_ca_cert, ENV_SSL_CA_CERT),
        }
        self._headers = dict(headers or {})
        self._client: InfluxDBClient | None = None
        self._write_api: WriteApi | None = None

    def __repr__(self) -> str:
        where = (
            f"database={self.database!r}"
            if self.database is not None
            else f"org={self.org!r}, bucket={self.bucket!r}"
        )
        return f"InfluxDBMetricExporter(name={self.name!r}, url={_shown(self.url)!r}, {where})"

    @property
    def destination(self) -> str:
        """Where lines go, for messages: URL plus org/bucket or database."""
        if self.database is not None:
            rp = f", retention policy {self.retention_policy!r}" if self.retention_policy else ""
            return f"{_shown(self.url)} database {self.database!r}{rp}"
        return f"{_shown(self.url)} org {self.org!r} bucket {self.bucket!r}"

    # -- BufferedExporter hooks -------------------------------------------------

    def _encode(self, metrics_data: MetricsData) -> Iterator[bytes]:
        encoder = self._encoder
        line = encoder.line
        build = other_rows(self.schema)
        for scope_metrics, base in scopes(metrics_data):
            for metric in scope_metrics.metrics:
                if base is None:
                    points = metric.data.data_points
                    for decorated in encoder.decorated(metric.name, points):  # type: ignore[arg-type]
                        yield to_bytes(decorated)
                    continue
                for row in build(metric, base):
                    text = line(row.measurement, row.tags, row.fields, row.time_unix_nano)
                    if text is not None:
                        yield to_bytes(text)

    def _item_size(self, item: bytes) -> int:
        return len(item) + 1

    def _send(self, batch: Sequence[bytes]) -> Outcome:
        body = b"\n".join(batch)
        try:
            if self.database is None:
                self._v2_write(body)
            else:
                self._v1_write(body)
        except ApiException as error:
            return self._outcome(error, len(batch))
        except (urllib3.exceptions.HTTPError, OSError) as error:
            return Outcome(Status.RETRY, f"cannot reach {_shown(self.url)}: {_describe(error)}")
        except ValueError:
            # http.client refuses a header value holding a newline or another
            # control character, and its message quotes the value: the token.
            return Outcome(
                Status.REJECTED,
                f"{self.destination}: not sent: the token or a header holds a newline or "
                "another character HTTP headers cannot carry (value not shown)",
            )
        return DELIVERED

    def _close(self) -> None:
        client, self._client, self._write_api = self._client, None, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    def _after_fork_in_child(self) -> None:
        # urllib3's pooled connections must not be shared with the parent.
        self._client = None
        self._write_api = None
        super()._after_fork_in_child()

    # -- HTTP -------------------------------------------------------------------

    def _connect(self) -> InfluxDBClient:
        if self._client is None:
            self._client = InfluxDBClient(
                url=self.url,
                token=(self._token or "") if self._username is None else "",
                org=self.org or "",
                timeout=int(self.timeout * 1000),
                enable_gzip=self.enable_gzip and self.database is None,
                retries=False,
                **self._client_options,
            )
            for header, value in self._headers.items():
                self._client.api_client.set_default_header(header, value)  # type: ignore[no-untyped-call]
        return self._client

    def _v2_write(self, body: bytes) -> None:
        if self._write_api is None:
            self._write_api = self._connect().write_api(write_options=SYNCHRONOUS)
        self._write_api.write(
            bucket=self.bucket or "",
            org=self.org or "",
            record=body,
            write_precision=WritePrecision.NS,  # type: ignore[arg-type]
            # A redirect must never count as delivered (a login page answers 200).
            urlopen_kw={"redirect": False},
        )

    def _v1_write(self, body: bytes) -> None:
        client = self._connect()
        query: list[tuple[str, str]] = [("db", self.database or ""), ("precision", "ns")]
        if self.retention_policy:
            query.append(("rp", self.retention_policy))
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._username is not None:
            credentials = f"{self._username}:{self._password or ''}"
            headers["Authorization"] = "Basic " + _b64(credentials)
        elif self._token:
            headers["Authorization"] = f"Token {self._token}"
        if self.enable_gzip:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        client.api_client.call_api(  # type: ignore[no-untyped-call]
            "/write",
            "POST",
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=[],
            _return_http_data_only=True,
            _preload_content=True,
            urlopen_kw={"redirect": False},
        )

    def _outcome(self, error: ApiException, batch_size: int) -> Outcome:
        status = int(error.status or 0)
        if status == 0:  # influxdb-client's wrapping of urllib3's SSLError: no HTTP answer
            reason = " ".join(str(error.reason or "").split())[:_MAX_MESSAGE]
            return Outcome(Status.RETRY, f"cannot reach {_shown(self.url)}: {reason}")
        message = _server_message(error.body)
        headers: Mapping[str, str] = error.headers or {}
        said = f" (HTTP {status}: {message})" if message else f" (HTTP {status})"
        if status == 413:
            return Outcome(Status.TOO_LARGE, f"{self.destination}: batch too large{said}")
        if status in _RETRY_STATUSES or status >= 500:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            return Outcome(Status.RETRY, f"{self.destination} is unavailable{said}", retry_after)
        if 300 <= status < 400:
            location = headers.get("Location", "?")
            return Outcome(
                Status.REJECTED,
                f"{_shown(self.url)} redirected the write to {location!r} (HTTP {status}); "
                "set url to the final address (a redirect is never counted as delivered)",
            )
        if status in (401, 403):
            what = "credentials were" if self._username is not None else "token was"
            return Outcome(
                Status.REJECTED,
                f"{self.destination}: the {what} refused{said}; check that the token is "
                "valid and may write to this bucket",
            )
        if status == 404:
            if self.database is not None:
                hint = f"check that database {self.database!r} exists"
            else:
                hint = f"check that org {self.org!r} and bucket {self.bucket!r} exist"
            return Outcome(Status.REJECTED, f"{self.destination}: not found{said}; {hint}")
        dropped = _DROPPED.search(message)
        delivered = batch_size - int(dropped.group(1)) if dropped else 0
        return Outcome(
            Status.REJECTED,
            f"{self.destination} rejected the lines{said}",
            delivered=max(0, min(batch_size, delivered)),
        )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        error = reason
    text = str(error)
    return f"{type(error).__name__}: {text[:_MAX_MESSAGE]}" if text else type(error).__name__


class FlaskChestInfluxDB(Chest):
    """A chest writing decorated variables to InfluxDB 2.x (flask-chest's
    ``FlaskChestInfluxDB``, same arguments).

    Every point of a request carries that request's time (ns), the tags
    ``request_id``, ``method``, ``route`` and ``custom_tags``, and the field
    ``value``. Keyword options of ``InfluxDBMetricExporter`` (``timeout``,
    ``enable_gzip``, ``database``...) are passed through.
    """

    exporter: InfluxDBMetricExporter

    def __init__(
        self,
        name: str,
        url: str | None = None,
        token: str | None = None,
        org: str | None = None,
        bucket: str | None = None,
        custom_tags: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        **exporter_options: Any,
    ) -> None:
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
