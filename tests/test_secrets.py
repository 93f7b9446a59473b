"""Issue 23 item 7: no secret is ever printed. At DEBUG, against a server that
echoes every request in its body, reason phrase and ``Location``, nothing a
chest was configured with as a secret appears, in any of its forms, in any
log record, anything printed, or any error raised."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from opentelemetry.sdk.metrics.export import MetricExporter

from flask_chest_otel.http_payload import ContextTuple, HTTPPayloadMetricExporter, json_payload
from flask_chest_otel.influxdb import InfluxDBMetricExporter

from .conftest import wait_for
from .echo_server import EchoServer
from .test_http_payload import recorded

# Every secret holds "SECRET" and characters that percent-encoding changes.
TOKEN = "tok/SECRET+v2=="
USERNAME = "admin"  # named in hints on purpose; only user:password is secret
PASSWORD = "pw:SECRET w/@rd"
URL_USER = "url-SECRET-user"
URL_PASSWORD = "url:SECRET/pass"
HEADER_TOKEN = "sf SECRET/token+"
BEARER = "bearer/SECRET-value"
PARAM_KEY = "param SECRET+key"
QUERY_VALUE = "query/SECRET"
USERINFO = f"{quote(URL_USER, safe='')}:{quote(URL_PASSWORD, safe='')}"
RETRY = {"retry_initial": 0.01, "retry_max": 0.05}
STATUSES = [400, 401, 302, 500]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forms(secret: str) -> set[str]:
    """A secret as a server or a traceback may show it."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), b64(secret)}


SECRET_FORMS = set().union(
    *map(forms, [TOKEN, PASSWORD, URL_USER, URL_PASSWORD, HEADER_TOKEN, BEARER, PARAM_KEY]),
    forms(QUERY_VALUE),
    forms(f"{USERNAME}:{PASSWORD}"),
    forms(f"{URL_USER}:{URL_PASSWORD}"),
)


def leaked(text: str) -> list[str]:
    """The secret forms in ``text``, and any leftover "SECRET" (a part of one)."""
    found = sorted(form for form in SECRET_FORMS if form in text)
    return found + (["SECRET"] if "SECRET" in text else [])


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def output(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Callable[[], str]:
    """Everything logged (the root logger at DEBUG: every library's records)
    or printed so far, tracebacks included."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="flask_chest_otel")
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    printed: list[str] = []

    def text() -> str:
        printed.extend(capfd.readouterr())
        records = [formatter.format(record) for record in caplog.records]
        return "\n".join(records + printed)

    return text


@pytest.fixture
def exporters() -> Iterator[list[MetricExporter]]:
    """Exporters to shut down after the test, whatever its outcome."""
    made: list[MetricExporter] = []
    yield made
    for exporter in made:
        exporter.shutdown(timeout_millis=500)


def deliver_and_stop(
    exporter: MetricExporter,
    exporters: list[MetricExporter],
    echo: EchoServer,
    output: Callable[[], str],
) -> str:
    """Exports two requests, waits until the exporter logged the server's
    answer, then flushes and shuts it down; returns all the output."""
    exporters.append(exporter)
    exporter.export(recorded(("r1", [("v", 1)]), ("r2", [("v", 2)])))
    status = str(echo.status)
    assert wait_for(lambda: status in output() and "***" in output()), output()
    exporter.force_flush(timeout_millis=200)
    exporter.shutdown(timeout_millis=500)
    return output() + repr(exporter)


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("version", ["v2-token", "v1-basic"])
def test_the_influxdb_exporter_prints_no_secret_a_server_echoes(
    echo: EchoServer,
    output: Callable[[], str],
    exporters: list[MetricExporter],
    status: int,
    version: str,
) -> None:
    echo.status = status
    auth: dict[str, Any] = (
        {"token": TOKEN, "org": "org", "bucket": "bucket"}
        if version == "v2-token"
        else {"database": "db", "username": USERNAME, "password": PASSWORD}
    )
    exporter = InfluxDBMetricExporter(
        url=f"http://{USERINFO}@127.0.0.1:{echo.port}",
        headers={"X-Proxy-Token": HEADER_TOKEN},
        name="influx",
        **auth,
        **RETRY,
    )
    text = deliver_and_stop(exporter, exporters, echo, output)
    assert echo.echoes and leaked("\n".join(echo.echoes))  # the server did echo secrets
    assert not leaked(text), text


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("per_request", [True, False], ids=["per-request", "batched"])
def test_the_http_payload_exporter_prints_no_secret_a_server_or_its_generator_shows(
    echo: EchoServer,
    output: Callable[[], str],
    exporters: list[MetricExporter],
    status: int,
    per_request: bool,
) -> None:
    echo.status = status

    def generator(tuples: list[ContextTuple]) -> Any:
        if any(item.value == 2 for item in tuples):
            raise ValueError(f"no payload for key {HEADER_TOKEN!r} ({quote(PARAM_KEY)})")
        return json_payload(tuples)

    exporter = HTTPPayloadMetricExporter(
        url=f"http://{USERINFO}@127.0.0.1:{echo.port}/ingest?sig={quote(QUERY_VALUE, safe='')}",
        payload_generator=generator,
        per_request=per_request,
        headers={"X-SF-Token": HEADER_TOKEN, "Authorization": f"Bearer {BEARER}"},
        params={"api_key": PARAM_KEY},
        name="writer",
        **RETRY,
    )
    text = deliver_and_stop(exporter, exporters, echo, output)
    assert "payload_generator failed" in text and "Traceback" in text
    assert echo.echoes and leaked("\n".join(echo.echoes))
    assert not leaked(text), text


MALFORMED = [
    f"http://{USERINFO}@127.0.0.1:99999/x?sig={QUERY_VALUE}",
    f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1/x?sig={QUERY_VALUE}",
    f"http://{URL_USER}:{PASSWORD}@127.0.0.1:8086/x?sig={QUERY_VALUE}#{TOKEN}",
    f"http://{USERINFO}@[::1/x?sig={QUERY_VALUE}",
    f"ftp://{USERINFO}@127.0.0.1/x?sig={QUERY_VALUE}",
    f"http://{USERINFO}@/x?sig={QUERY_VALUE}",
]


@pytest.mark.parametrize("url", MALFORMED)
@pytest.mark.parametrize("chest", ["influxdb", "http-payload"])
def test_a_malformed_url_is_refused_without_its_user_info_or_query_values(
    url: str, chest: str
) -> None:
    with pytest.raises(ValueError) as raised:
        if chest == "influxdb":
            InfluxDBMetricExporter(url=url, token=TOKEN, org="o", bucket="b")
        else:
            HTTPPayloadMetricExporter(url=url, payload_generator=json_payload, name="writer")
    message = str(raised.value)
    assert "url" in message
    assert not leaked(message), message


def test_an_influxdb_url_with_a_query_is_refused_without_its_values() -> None:
    with pytest.raises(ValueError, match="must not carry a query") as raised:
        InfluxDBMetricExporter(url=f"http://127.0.0.1:8086?token={TOKEN}", org="o", bucket="b")
    assert not leaked(str(raised.value)), raised.value


def test_urllib3s_own_debug_lines_through_a_session_show_no_secret(
    echo: EchoServer,
    output: Callable[[], str],
    exporters: list[MetricExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through a ``requests.Session``, urllib3 logs each request line with
    its query at DEBUG: the chest's ``params`` values are scrubbed from it
    too (a filter on urllib3's loggers, for as long as the exporter lives)."""
    import requests

    # influxdb-client sets "urllib3" to WARNING when an InfluxDB exporter is made.
    caplog.set_level(logging.DEBUG, logger="urllib3")
    echo.status = 400
    exporter = HTTPPayloadMetricExporter(
        url=f"http://127.0.0.1:{echo.port}/ingest",
        payload_generator=json_payload,
        session=requests.Session(),
        params={"api_key": PARAM_KEY},
        name="session-writer",
        **RETRY,
    )
    text = deliver_and_stop(exporter, exporters, echo, output)
    assert "urllib3.connectionpool" in text and "/ingest?api_key=***" in text, text
    assert not leaked(text), text
