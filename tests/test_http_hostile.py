"""The custom HTTP writer against hostile input and hostile servers (issue 13
items 1, 3, 6, 9; issue 12's value types), all against real loopback servers."""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask, g, request
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import Gauge as GaugeData
from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource

from flask_chest_otel import flask_chest
from flask_chest_otel._delivery import Fate
from flask_chest_otel.http_payload import (
    ContextTuple,
    FlaskChestCustomWriter,
    HTTPPayloadMetricExporter,
    json_payload,
)

from .conftest import wait_for
from .http_sink import HTTPSink, Reply
from .test_http_payload import SCOPE, T0, recorded

SECRETS = ("QUERYSECRET", "PARAMSECRET", "HEADERSECRET", "USERSECRET", "PASSSECRET")


@pytest.fixture
def make_exporter(
    http_exporters: Callable[..., HTTPPayloadMetricExporter],
) -> Callable[..., HTTPPayloadMetricExporter]:
    """Exporters with ``json_payload``, named "writer"."""

    def make(**options: Any) -> HTTPPayloadMetricExporter:
        options.setdefault("payload_generator", json_payload)
        options.setdefault("name", "writer")
        options.setdefault("retry_max", 0.5)
        return http_exporters(**options)

    return make


def points_data(points: list[tuple[str, NumberDataPoint]]) -> MetricsData:
    by_name: dict[str, list[NumberDataPoint]] = {}
    for name, point in points:
        by_name.setdefault(name, []).append(point)
    metrics = [
        Metric(name, "", "", GaugeData(data_points)) for name, data_points in by_name.items()
    ]
    return MetricsData([ResourceMetrics(Resource({}), [ScopeMetrics(SCOPE, metrics, "")], "")])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- values keep their type; the trace link rides in the attributes ------------


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        (True, True),
        (False, False),
        (7, 7),
        (2**63 - 1, 2**63 - 1),
        (0.25, 0.25),
        ("00321", "00321"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
    ],
    ids=repr,
)
def test_a_value_reaches_the_generator_and_the_server_in_its_own_type(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    value: Any,
    sent: Any,
) -> None:
    """bool stays bool, int int, float float, text the string it was; JSON
    has no NaN, so a non-finite float goes as its name, never a lost request."""
    seen: list[Any] = []

    def generator(tuples: list[ContextTuple]) -> Any:
        seen.extend(item.value for item in tuples)
        return json_payload(tuples)

    exporter = make_exporter(payload_generator=generator)
    exporter.export(recorded(("r1", [("v", value)])))
    assert exporter.force_flush(10_000)
    assert type(seen[0]) is type(value)
    assert seen[0] == value or (math.isnan(value) and math.isnan(seen[0]))
    [post] = sink.posts()
    [entry] = post.json()
    assert entry["value"] == sent and type(entry["value"]) is type(sent)


def test_each_tuple_carries_the_trace_link_of_its_request(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    attributes = {"request_id": "r1", "http.request.method": "GET", "http.route": "/"}
    traced = NumberDataPoint(
        attributes, 0, T0, 1, exemplars=[Exemplar({}, 1, T0, span_id, trace_id)]
    )
    untraced = NumberDataPoint({**attributes, "request_id": "r2"}, 0, T0 + 1, 2)
    exporter = make_exporter()
    first, second = exporter.context_tuple_lists(points_data([("v", traced), ("v", untraced)]))
    [item] = first
    assert len(item) == 3
    assert item.attributes == {
        "method": "GET",
        "route": "/",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
    }
    assert "trace_id" not in second[0].attributes
    assert json_payload(first)[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "trace_id" not in json_payload(second)[0]


# -- issue 13 item 1: one poisoned request costs only itself ---------------------


def _app_posting_to(chest: FlaskChestCustomWriter) -> Flask:
    app = Flask(__name__)

    @app.route("/", methods=["POST"])
    @flask_chest(chests=[chest], tracked_vars={"POST": ["customer", "transaction"]})
    def index() -> str:
        body = request.get_json()
        g.customer = body["customer"]
        g.transaction = body["n"]
        return "ok"

    return app


@pytest.mark.parametrize("per_request", [True, False], ids=["per-request", "batched"])
@pytest.mark.parametrize("strict_generator", [False, True], ids=["json", "strict-generator"])
def test_a_lone_surrogate_in_one_request_of_100_costs_at_most_that_request(
    sink: HTTPSink, per_request: bool, strict_generator: bool
) -> None:
    """A JSON body's "\\ud800" copied into g: the other 99 requests land. With
    the JSON generator it lands too, as U+FFFD; a generator that refuses it
    costs only that request's tuples, in batched mode too."""

    def strict(tuples: list[ContextTuple]) -> bytes:
        # UTF-8 refuses a lone surrogate: this generator raises on it.
        return json.dumps(json_payload(tuples), ensure_ascii=False).encode("utf-8")

    chest = FlaskChestCustomWriter(
        name="writer",
        url=sink.url + "/ingest",
        payload_generator=strict if strict_generator else json_payload,
        per_request=per_request,
        export_interval=0.2,
        retry_initial=0.05,
    )
    try:
        client = _app_posting_to(chest).test_client()
        for number in range(100):
            customer = "\\ud800" if number == 42 else f"c{number}"
            body = f'{{"customer": "{customer}", "n": {number}}}'
            response = client.post("/", data=body, content_type="application/json")
            assert response.status_code == 200

        def landed(_: HTTPSink | None = None) -> dict[int, str]:
            entries = [entry for post in sink.posts() for entry in json.loads(post.body)]
            customers = {e["request_id"]: e["value"] for e in entries if e["name"] == "customer"}
            return {
                e["value"]: customers[e["request_id"]]
                for e in entries
                if e["name"] == "transaction"
            }

        expected = {n: f"c{n}" for n in range(100) if n != 42}
        if not strict_generator:
            expected[42] = "\ufffd"
        assert sink.wait_for(lambda s: len(landed()) >= len(expected), timeout=20)
        # Counted once the POST is answered (the sink has it a moment before).
        stats = chest.exporter.stats
        dropped = 1 if strict_generator else 0
        assert wait_for(lambda: stats.buffered == 0 and stats.dropped_encoding == dropped)
        assert landed() == expected
        assert stats.exported == 100 - dropped
    finally:
        chest.shutdown(2_000)


def test_a_lone_surrogate_in_a_request_id_costs_nothing(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter(per_request=False)
    exporter.export(
        recorded(("ok-1", [("v", 1)]), ("bad-\udc80", [("v", 2)]), ("ok-2", [("v", 3)]))
    )
    assert exporter.force_flush(10_000)
    [post] = sink.posts()
    assert [entry["request_id"] for entry in post.json()] == ["ok-1", "bad-\ufffd", "ok-2"]


def test_a_batch_refused_with_400_is_returned_as_suspect_for_delivery_to_narrow(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    sink.default = Reply(400, b'{"error": "bad datapoint"}')
    exporter = make_exporter(per_request=False)
    batch = list(exporter._encode(recorded(("r1", [("v", 1)]), ("r2", [("v", 2)]))))
    assert len(batch) == 2  # one item per request: delivery can split the batch
    outcome = exporter._send(batch)
    assert outcome.rest is Fate.SUSPECT
    assert "HTTP 400" in outcome.message and "bad datapoint" in outcome.message


def test_a_400_for_one_poisoned_request_of_100_drops_only_that_request(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """The server refuses every batch holding "poison"; the other 99 land."""

    def reply(recorded_body: bytes) -> Reply:
        return Reply(400, b"poisoned") if b"poison" in recorded_body else Reply(200)

    original = sink._record_and_reply

    def judging(request: Any) -> Reply:
        original(request)
        return reply(request.body)

    sink._record_and_reply = judging  # type: ignore[method-assign]
    exporter = make_exporter(per_request=False)
    requests_ = [(f"r{n}", [("v", "poison" if n == 42 else n)]) for n in range(100)]
    exporter.export(recorded(*requests_))
    assert not exporter.force_flush(20_000)  # one request was refused
    landed = {
        entry["request_id"]
        for post in sink.posts()
        if b"poison" not in post.body
        for entry in post.json()
    }
    assert len(landed) == 99 and "r42" not in landed


# -- issue 13 item 3: secrets are never printed ---------------------------------


def _outputs(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        record.getMessage() + (logging.Formatter().formatException(record.exc_info)
                               if record.exc_info else "")
        for record in caplog.records
        if not record.name.startswith("urllib3")
    )  # fmt: skip


@pytest.mark.parametrize("route", ["direct", "through-proxy"])
@pytest.mark.parametrize("answer", ["down", "401", "302", "timeout"])
def test_no_secret_of_url_params_or_headers_appears_in_any_output(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    caplog: pytest.LogCaptureFixture,
    route: str,
    answer: str,
) -> None:
    port = sink.port if answer != "down" else free_port()
    url = f"http://USERSECRET:PASSSECRET@127.0.0.1:{port}/ingest?api_key=QUERYSECRET"
    proxies = {"http": sink.url if answer != "down" else f"http://127.0.0.1:{free_port()}"}
    if answer == "401":
        sink.default = Reply(401, b"bad key QUERYSECRET")
    elif answer == "302":
        sink.default = Reply(302, b"", {"Location": "http://elsewhere/?api_key=QUERYSECRET"})
    elif answer == "timeout":
        sink.default = Reply(200, delay=2.0)
    caplog.set_level(logging.DEBUG)
    exporter = make_exporter(
        url=url,
        params={"token": "PARAMSECRET"},
        headers={"Authorization": "Bearer HEADERSECRET"},
        proxies=proxies if route == "through-proxy" else None,
        timeout=0.5,
    )
    exporter.export(recorded(("r1", [("v", 1)])))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        "writer" in record.getMessage() for record in caplog.records
    ):
        time.sleep(0.05)
    exporter.shutdown(timeout_millis=500)
    text = _outputs(caplog) + repr(exporter)
    assert "writer" in text  # something was logged
    assert not [secret for secret in SECRETS if secret in text], text


@pytest.mark.parametrize(
    "headers",
    [{"X-SF-Token": "tök€nSECRET"}, {"Authorization": "Bearer SECRET€"}],
    ids=["token", "authorization"],
)
def test_a_header_outside_latin_1_fails_at_construction_without_its_value(
    sink: HTTPSink, headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError) as raised:
        FlaskChestCustomWriter(
            name="writer", url=sink.url, payload_generator=json_payload, headers=headers
        )
    message = str(raised.value)
    assert "writer" in message and list(headers)[0] in message
    assert "SECRET" not in message and "SECRET" not in repr(raised.value.__cause__)


# -- issue 10 item 4 / issue 13 item 6: errors and the time a send may take -----


@pytest.mark.parametrize("route", ["direct", "through-proxy"])
def test_a_connection_error_message_keeps_its_reason(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/ingest"
    proxies = {"http": f"http://127.0.0.1:{free_port()}"} if route == "through-proxy" else None
    exporter = make_exporter(url=url, proxies=proxies)
    exporter.export(recorded(("r1", [("v", 1)])))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not caplog.records:
        time.sleep(0.05)
    [message, *_] = [record.getMessage() for record in caplog.records]
    assert "writer" in message and "Connection refused" in message, message
    assert "[);" not in message


class TricklingServer:
    """A real server that reads a request, then answers one byte every
    ``interval`` seconds (a slowloris answer)."""

    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close() while accepting
                return
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
            for byte in answer:
                if self._stop.wait(self.interval):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@pytest.mark.parametrize(
    ("scheme", "timeout"),
    [("http", 1.0), ("http", (0.5, 0.5)), ("https", 1.0)],
    ids=["seconds", "pair", "tls-handshake"],
)
def test_timeout_caps_a_whole_send_against_a_server_answering_a_byte_at_a_time(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    caplog: pytest.LogCaptureFixture,
    scheme: str,
    timeout: Any,
) -> None:
    """Also when the bytes trickle during the TLS handshake."""
    server = TricklingServer(interval=0.3)
    try:
        url = f"{scheme}://127.0.0.1:{server.port}/"
        exporter = make_exporter(url=url, timeout=timeout)
        started = time.time()
        exporter.export(recorded(("r1", [("v", 1)])))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not caplog.records:
            time.sleep(0.02)
        elapsed = caplog.records[0].created - started
        [message, *_] = [record.getMessage() for record in caplog.records]
        assert "no answer within 1 s" in message, message
        assert elapsed < 1.0 + 0.5, elapsed  # the cap, plus scheduling slack
        assert exporter.stats.buffered == 1  # kept for a retry
    finally:
        server.close()


# -- item 8 and the public face of requests --------------------------------------


def test_the_chest_passes_other_keyword_options_to_its_exporter(sink: HTTPSink) -> None:
    chest = FlaskChestCustomWriter(
        "writer", sink.url, payload_generator=json_payload, max_buffer_items=5, retry_max=3.0
    )
    try:
        assert chest.exporter.max_buffer_items == 5
        assert chest.exporter.retry_max == 3.0
    finally:
        chest.shutdown(100)
    with pytest.raises(TypeError):
        FlaskChestCustomWriter("writer", sink.url, payload_generator=json_payload, nonsense=1)


def test_a_users_session_carries_the_posts(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    session = requests.Session()
    session.headers["X-From-Session"] = "yes"
    exporter = make_exporter(session=session, params={"a": "1"})
    exporter.export(recorded(("r1", [("v", 1)])))
    assert exporter.force_flush(10_000)
    [post] = sink.posts()
    assert post.header("X-From-Session") == "yes" and post.query == {"a": ["1"]}
    exporter.shutdown(1_000)
    assert session.get(sink.url + "/after").status_code == 200  # not closed by us
    session.close()


def test_a_kept_alive_connection_the_server_closed_is_replaced_without_loss(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    sink.script(Reply(200, headers={"Connection": "close"}))
    exporter = make_exporter()
    for number in range(3):
        exporter.export(recorded((f"r{number}", [("v", number)]), start=T0 + number))
        assert exporter.force_flush(10_000)
    assert len(sink.posts()) == 3 and exporter.stats.retried == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://USERSECRET:PASSSECRET@127.0.0.1:99999/x?api_key=QUERYSECRET",
        "ftp://USERSECRET:PASSSECRET@127.0.0.1/x?api_key=QUERYSECRET",
    ],
    ids=["bad-port", "bad-scheme"],
)
def test_a_refused_url_is_shown_without_its_secrets(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        FlaskChestCustomWriter(name="writer", url=url, payload_generator=json_payload)
    message = str(raised.value)
    assert "writer" in message and "127.0.0.1" in message
    assert not [secret for secret in SECRETS if secret in message], message


def test_a_413_splits_a_batch_and_every_request_arrives_once(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """Batched, the writer buffers requests, not a ready payload: a 413 splits
    the batch and the halves are sent, so nothing is lost."""
    sink.script(Reply(413, b"entity too large"))
    exporter = make_exporter(per_request=False)
    exporter.export(recorded(*[(f"r{n}", [("v", n)]) for n in range(10)]))
    assert exporter.force_flush(10_000)
    refused, *accepted = sink.posts()
    assert len(refused.json()) == 10
    arrived = [entry["request_id"] for post in accepted for entry in post.json()]
    assert sorted(arrived) == sorted(f"r{n}" for n in range(10))
    assert len(accepted) == 2 and exporter.stats.dropped_rejected == 0


def test_a_413_per_request_drops_exactly_that_request(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    sink.script(Reply(413, b"entity too large"))
    exporter = make_exporter()
    exporter.export(recorded(*[(f"r{n}", [("v", n)]) for n in range(3)]))
    assert not exporter.force_flush(10_000)  # the first to arrive was refused
    arrived = sorted(post.json()[0]["request_id"] for post in sink.posts())
    assert arrived == ["r0", "r1", "r2"]  # each sent once: one refused, two delivered
    assert exporter.stats.dropped_rejected == 1 and exporter.stats.exported == 2


FORK_SCRIPT = """
import os, sys
from flask_chest_otel.http_payload import HTTPPayloadMetricExporter, json_payload
from tests.test_http_payload import recorded

exporter = HTTPPayloadMetricExporter(url=sys.argv[1], payload_generator=json_payload)
exporter.export(recorded(("before-fork", [("v", 1)])))
assert exporter.force_flush(10_000)
pid = os.fork()
who = "child" if pid == 0 else "parent"
exporter.export(recorded((who, [("v", 2)])))
ok = exporter.force_flush(10_000) and exporter.stats.exported == (1 if pid == 0 else 2)
if pid == 0:
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(0 if ok and status == 0 else 1)
"""


def test_a_forked_child_opens_its_own_connection(sink: HTTPSink) -> None:
    """The parent's kept-alive socket is not shared: each process's POST
    arrives whole, the child's on a connection of its own."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, sink.url + "/ingest"],
        cwd=root, timeout=60, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    by_id = {post.json()[0]["request_id"]: post.client for post in sink.posts()}
    assert set(by_id) == {"before-fork", "parent", "child"}
    assert by_id["child"] != by_id["before-fork"]
    assert by_id["parent"] == by_id["before-fork"]  # the parent keeps its connection
