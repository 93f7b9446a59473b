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
import logging
import os
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import urllib3
from influxdb_client.client import exceptions as _client_exceptions
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.write_service import WriteService
from opentelemetry.sdk.metrics.export import MetricsData

from .. import environment_variables
from .._delivery import (
    DELIVERED,
    BufferedExporter,
    Fate,
    Settlement,
    refused,
    retry,
    too_large,
)
from .._http import check_url, parse_retry_after, safe_url
from .._records import Record, by_name
from .._redact import Secrets, guard_third_party_logs, shown_url
from .._spool_codecs import dumps_line, loads_line
from ._answers import MAX_MESSAGE, Conflict, conflict_of, judge_refusal, server_message
from ._line_protocol import (
    LineEncoder,
    field_type_of,
    measurement_of,
    retype_field,
    to_bytes,
    unescape,
)
from ._rows import SCHEMAS, Schema, other_rows, scopes

__all__ = ["InfluxDBMetricExporter"]

# Environment variables read when an argument is not given (the names
# influxdb-client's ``InfluxDBClient.from_env_properties`` uses, plus the bucket).
ENV_URL = environment_variables.INFLUXDB_V2_URL
ENV_TOKEN = environment_variables.INFLUXDB_V2_TOKEN
ENV_ORG = environment_variables.INFLUXDB_V2_ORG
ENV_BUCKET = environment_variables.INFLUXDB_V2_BUCKET
ENV_TIMEOUT = environment_variables.INFLUXDB_V2_TIMEOUT
ENV_VERIFY_SSL = environment_variables.INFLUXDB_V2_VERIFY_SSL
ENV_SSL_CA_CERT = environment_variables.INFLUXDB_V2_SSL_CA_CERT

#: gzip level of request bodies. On 5,000 decorated lines (650 KB), level 1
#: took 6.1 ms for 153 KB, influxdb-client's level 9 20.4 ms for 140 KB.
GZIP_LEVEL = 1
_RETRY_STATUSES = frozenset({408, 429})


class _ModuleLogging:
    """Stands for the ``logging`` module inside influxdb-client's
    ``client.exceptions``: its ``InfluxDBError`` logs a non-JSON error body
    with the module-level ``logging.debug()``, which runs
    ``logging.basicConfig()`` on an application that configured no logging
    (a root handler appears, and the application's own ``basicConfig()``
    then does nothing). Here that call goes to the module's own logger."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def debug(self, message: object, *args: object, **kwargs: Any) -> None:
        # Its one call quotes the error body, which may echo a token: the
        # exporter logs that body itself, redacted (``_answers.server_message``).
        self._logger.debug("an error body is not JSON (shown redacted by the exporter)")

    def __getattr__(self, name: str) -> Any:
        return getattr(logging, name)


if not isinstance(getattr(_client_exceptions, "logging", None), _ModuleLogging):
    setattr(  # noqa: B010 -- a module attribute mypy does not know as writable
        _client_exceptions, "logging", _ModuleLogging(_client_exceptions.logger)
    )


def _env(value: str | None, variable: str) -> str | None:
    if value is not None:
        return value
    return os.environ.get(variable) or None


def _check_url(url: str) -> str:
    check_url(url, "InfluxDB")
    if urllib.parse.urlsplit(url).query or urllib.parse.urlsplit(url).fragment:
        raise ValueError(f"InfluxDB url {shown_url(url)!r} must not carry a query or fragment")
    return url.rstrip("/")


def _shown(url: str) -> str:
    """The URL without any user:password part, for messages."""
    return safe_url(url, keep_query=True)


class InfluxDBMetricExporter(BufferedExporter[bytes]):
    """An OpenTelemetry MetricExporter writing line protocol to InfluxDB.

    Decorated variables keep flask-chest's layout (measurement = variable
    name, tags ``request_id``, ``method``, ``route``, field ``value`` in the
    value's own type -- ``value_str`` for a NaN or infinite float --, string
    fields ``trace_id``/``span_id`` when traced, time = the request's time);
    other metrics follow the ``schema`` (see ``docs/influxdb.md``). A field
    type conflict is healed where a lossless conversion exists (an int sent
    as a float, an integral float as an int), else those points are refused.
    ``custom_tags`` are added to every line; a metric's own attribute of the
    same name wins.

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
        enable_gzip: gzip request bodies (on by default), at level 1: 3x faster
            than level 9 for 9 % more bytes on line protocol.
        headers: extra HTTP headers sent with every write (a proxy's, say).
        request_id_field: write a decorated point's request ID as a string
            field instead of a tag (one series per variable, not per request).
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
        request_id_field: bool = False,
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
        self.request_id_field = request_id_field
        self._encoder = LineEncoder(self.custom_tags, request_id_field)
        #: (measurement, field) -> the type the server stores, learnt from conflicts.
        self._stored_types: dict[tuple[str, str], str] = {}
        self._token = _env(token, ENV_TOKEN)
        self._username = username
        self._password = password
        self._secrets = Secrets.of(
            url=self.url, token=self._token, username=username, password=password, headers=headers
        )
        guard_third_party_logs(self._secrets)
        self._client_options: dict[str, Any] = {
            "verify_ssl": verify_ssl,
            "ssl_ca_cert": _env(ssl_ca_cert, ENV_SSL_CA_CERT),
        }
        self._headers = dict(headers or {})
        self._client: InfluxDBClient | None = None
        self._write_service: WriteService | None = None

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

    def _encode_records(self, records: Sequence[Record]) -> Iterator[bytes]:
        decorated = self._encoder.decorated_records
        for name, group in by_name(records).items():
            for line in decorated(name, group):
                yield to_bytes(line)

    def _item_size(self, item: bytes) -> int:
        return len(item) + 1

    def _spool_dumps(self, item: bytes) -> bytes:
        return dumps_line(item)

    def _spool_loads(self, data: bytes) -> bytes:
        return loads_line(data)

    def _spool_identity(self) -> tuple[str, str, str]:
        return "influxdb", self.name, self.destination

    def _send(self, batch: Sequence[bytes]) -> Settlement:
        """One write of the batch, healing field type conflicts first.

        A conflict the server names teaches the type it stores for that
        (measurement, field): lines holding another type are converted where
        nothing is lost (an int as a float, an integral float as an int), else
        refused, and the batch is written again; as many rounds as the batch
        holds distinct conflicts, each learnt once (a rewritten point
        overwrites itself). Any other refusal is judged by ``_answers``."""
        refused: dict[int, str] = {}
        positions = list(range(len(batch)))
        learnt: set[tuple[str, str]] = set()
        while True:
            lines, positions = self._retype(batch, positions, refused)
            if not lines:
                settlement: Settlement = DELIVERED
                break
            settlement, conflict = self._write(lines)
            if conflict is None or (conflict.measurement, conflict.field) in learnt:
                break
            learnt.add((conflict.measurement, conflict.field))
            self._learn(conflict)
        if not refused and len(positions) == len(batch):
            return settlement
        fates = dict.fromkeys(refused, Fate.REFUSED)
        reasons = dict(refused)
        for sent, index in enumerate(positions):
            fates[index] = settlement.fate(sent)
            if sent in settlement.reasons:
                reasons[index] = settlement.reasons[sent]
        return Settlement(
            Fate.DELIVERED,
            fates,
            message=settlement.message,
            reasons=reasons,
            retry_after=settlement.retry_after,
        )

    def _learn(self, conflict: Conflict) -> None:
        key = (conflict.measurement, conflict.field)
        known = self._stored_types.get(key)
        self._stored_types[key] = conflict.stored
        if known != conflict.stored:
            self.logger.warning(
                "%s: %s: field %r of measurement %r is stored as %s: points holding "
                "another type are converted where nothing is lost, else dropped",
                self.name,
                self.destination,
                conflict.field,
                conflict.measurement,
                conflict.stored,
            )

    def _retype(
        self, batch: Sequence[bytes], positions: list[int], refused: dict[int, str]
    ) -> tuple[list[bytes], list[int]]:
        """The lines at ``positions`` with fields converted to the types the
        server stores (``_stored_types``), and their positions; a line that
        cannot be converted is left out, its reason put in ``refused``."""
        if not self._stored_types:
            return [batch[index] for index in positions], positions
        lines: list[bytes] = []
        kept: list[int] = []
        for index in positions:
            raw = batch[index]
            line = raw.decode("utf-8", "replace")
            measurement = measurement_of(line)
            names = (measurement, unescape(measurement))
            keep: str | None = line
            for (name, field), stored in self._stored_types.items():
                if name not in names or keep is None:
                    continue
                retyped = retype_field(keep, field, stored)
                if retyped is None:
                    refused[index] = (
                        f"{self.destination}: field type conflict that no lossless conversion "
                        f"heals: measurement {name!r} field {field!r}: "
                        f"{field_type_of(keep, field)} sent, {stored} stored"
                    )
                    keep = None
                else:
                    keep = retyped[0]
            if keep is None:
                continue
            lines.append(raw if keep is line else to_bytes(keep))
            kept.append(index)
        return lines, kept

    def _write(self, lines: Sequence[bytes]) -> tuple[Settlement, Conflict | None]:
        """One POST of ``lines``: what the server made of each, and the field
        type conflict it named, if any."""
        body = b"\n".join(lines)
        if self.enable_gzip:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
        try:
            if self.database is None:
                self._v2_write(body)
            else:
                self._v1_write(body)
        except ApiException as error:
            return self._judge(error, lines)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            reason = _describe(error, self._secrets.redact)
            return retry(f"cannot reach {_shown(self.url)}: {reason}"), None
        except ValueError:
            # http.client refuses a header value holding a newline or another
            # control character, and its message quotes the value: the token.
            return refused(
                f"{self.destination}: not sent: the token or a header holds a newline or "
                "another character HTTP headers cannot carry (value not shown)"
            ), None
        return DELIVERED, None

    def _close(self) -> None:
        client, self._client, self._write_service = self._client, None, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    def _after_fork_in_child(self) -> None:
        # urllib3's pooled connections must not be shared with the parent.
        self._client = None
        self._write_service = None
        super()._after_fork_in_child()

    # -- HTTP -------------------------------------------------------------------

    def _connect(self) -> InfluxDBClient:
        if self._client is None:
            self._client = InfluxDBClient(
                url=self.url,
                token=(self._token or "") if self._username is None else "",
                org=self.org or "",
                timeout=int(self.timeout * 1000),
                enable_gzip=False,  # we compress, faster (``GZIP_LEVEL``)
                retries=False,
                **self._client_options,
            )
            for header, value in self._headers.items():
                self._client.api_client.set_default_header(header, value)  # type: ignore[no-untyped-call]
        return self._client

    def _v2_write(self, body: bytes) -> None:
        # influxdb-client's service, not its WriteApi: that one would gzip at
        # level 9 and drop ``urlopen_kw``.
        if self._write_service is None:
            self._write_service = WriteService(self._connect().api_client)  # type: ignore[no-untyped-call]
        compressed = {"content_encoding": "gzip"} if self.enable_gzip else {}
        self._write_service.post_write(  # type: ignore[no-untyped-call]
            org=self.org or "",
            bucket=self.bucket or "",
            body=body,
            precision=WritePrecision.NS,
            content_type="text/plain; charset=utf-8",
            # A redirect must never count as delivered (a login page answers 200).
            urlopen_kw={"redirect": False},
            **compressed,
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

    def _judge(
        self, error: ApiException, lines: Sequence[bytes]
    ) -> tuple[Settlement, Conflict | None]:
        """A refused write: retried (no answer, 408, 429, 5xx), split (413),
        refused whole (a redirect, the credentials, a missing bucket, any
        other refusal of the request), or, for a 400 or 422 about the data,
        narrowed down to the lines it is about (``_answers``)."""
        status = int(error.status or 0)
        if status == 0:  # influxdb-client's wrapping of urllib3's SSLError: no HTTP answer
            reason = " ".join(self._secrets.redact(str(error.reason or "")).split())
            return retry(f"cannot reach {_shown(self.url)}: {reason[:MAX_MESSAGE]}"), None
        # What a server says may echo the request (the token, the URL's
        # query): scrubbed before anything reads it.
        body = self._secrets.redact(_text(error.body))
        message = server_message(body, self._secrets.redact)
        headers: Mapping[str, str] = error.headers or {}
        said = f" (HTTP {status}: {message})" if message else f" (HTTP {status})"
        if status == 413:
            return too_large(f"{self.destination}: batch too large{said}"), None
        if status in _RETRY_STATUSES or status >= 500:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            return retry(f"{self.destination} is unavailable{said}", retry_after), None
        if 300 <= status < 400:
            location = self._secrets.redact(headers.get("Location", "?"))
            return refused(
                f"{_shown(self.url)} redirected the write to {location!r} (HTTP {status}); "
                "set url to the final address (a redirect is never counted as delivered)"
            ), None
        if status in (401, 403):
            return refused(f"{self.destination}: {self._credentials_refused()}{said}"), None
        if status == 404:
            return refused(f"{self.destination}: not found{said}; {self._not_found(headers)}"), None
        if status not in (400, 422):
            return refused(f"{self.destination} refused the write{said}"), None
        refusal = f"{self.destination} refused lines{said}"
        return judge_refusal(body, lines, refusal, self._secrets.redact), conflict_of(message)

    def _credentials_refused(self) -> str:
        if self._username is not None:
            return (
                f"username {self._username!r} and its password were refused; check them, "
                f"and that this user may write to database {self.database!r}"
            )
        if not self._token:
            return (
                "the server asks for credentials and none were given (token=, or "
                "username=/password= for InfluxDB 1.x)"
            )
        if self.database is not None:
            return (
                "the token was refused; check that it is valid and may write to "
                f"database {self.database!r}"
            )
        return "the token was refused; check that it is valid and may write to this bucket"

    def _not_found(self, headers: Mapping[str, str]) -> str:
        version = str(headers.get("X-Influxdb-Version") or "")
        if self.database is None and version.startswith(("0.", "1.")):
            return (
                f"this server is InfluxDB {version}, which has no /api/v2/write: give "
                "database= (and username=/password= if it checks them) instead of "
                "org/bucket, or upgrade it to 1.8 or later"
            )
        if self.database is not None:
            return f"check that database {self.database!r} exists"
        return f"check that org {self.org!r} and bucket {self.bucket!r} exist"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _describe(error: BaseException, redact: Callable[[str], str]) -> str:
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        error = reason
    text = redact(str(error))
    return f"{type(error).__name__}: {text[:MAX_MESSAGE]}" if text else type(error).__name__


def _text(body: Any) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return str(body or "")
