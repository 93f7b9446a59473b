"""The custom writer's own reading of HTTP answers (``_http_response``),
against a real server on loopback that answers with scripted raw bytes: the
framings http.client reads (chunked, lengths, read-to-close, interim 1xx),
answers split over many reads, and broken answers. Each test then sends a
second POST to see whether the connection was rightly kept or replaced."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from flask_chest_otel._http_sender import EXCERPT, Sender, SendError
from flask_chest_otel.http_payload import HTTPPayloadMetricExporter

from .servers import free_port
from .test_http_payload import cust_payload_generator, recorded

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"


@dataclass(frozen=True)
class Raw:
    """An answer as raw bytes, sent in ``pieces`` writes 5 ms apart; then
    the connection is closed if ``close``."""

    data: bytes
    pieces: int = 1
    close: bool = False


class RawServer:
    """A real server on loopback: reads each request (head and
    Content-Length body), answers it with the next scripted ``Raw`` (then
    with ``OK``), and counts connections and requests."""

    def __init__(
        self,
        *answers: Raw,
        pipelining: bool = True,
        pipelined_requests: int | None = None,
        port: int = 0,
    ) -> None:
        #: False: whatever came behind a request is dropped unanswered, as a
        #: proxy that does not take pipelined requests might; only from the
        #: request after the first ``pipelined_requests`` if that is given.
        self.pipelining = pipelining
        self.pipelined_requests = pipelined_requests
        self.answers = deque(answers)
        self.connections = 0
        self.requests = 0
        #: The method of each request read.
        self.methods: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/ingest"
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        try:
            self._serve_connection(connection)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the client hung up (after an answer it took for the last)

    def _serve_connection(self, connection: socket.socket) -> None:
        with connection:
            buffer = b""
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buffer:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                limit = self.pipelined_requests
                keep = self.pipelining or (limit is not None and self.requests < limit)
                buffer = buffer[length:] if keep else b""
                self.requests += 1
                self.methods.append(head.split(b" ", 1)[0].decode())
                answer = self.answers.popleft() if self.answers else Raw(OK)
                step = max(1, -(-len(answer.data) // answer.pieces))
                for start in range(0, len(answer.data), step):
                    if start:
                        time.sleep(0.005)
                    connection.sendall(answer.data[start : start + step])
                if answer.close:
                    return

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[type[RawServer]]:
    servers: list[RawServer] = []

    class Started(RawServer):
        def __init__(self, *answers: Raw, **options: Any) -> None:
            super().__init__(*answers, **options)
            servers.append(self)

    yield Started
    for server in servers:
        server.close()


@contextlib.contextmanager
def sender(url: str, timeout: float = 5.0) -> Iterator[Sender]:
    post = Sender(url=url, headers={}, params=None, proxies=None, verify=True,
                  timeout=timeout, session=None, what="writer")  # fmt: skip
    try:
        yield post
    finally:
        post.close()


CHUNKED = (
    b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
    b"5;name=value\r\nslow \r\n5\r\ndown!\r\n0\r\nX-Trailer: yes\r\n\r\n"
)
BIG = b"x" * 100_000
KEPT = [
    pytest.param(Raw(CHUNKED), 429, b"slow down!", "7", id="chunked-extensions-trailers"),
    pytest.param(Raw(CHUNKED, pieces=len(CHUNKED)), 429, b"slow down!", "7", id="chunked-bytewise"),
    pytest.param(Raw(b"HTTP/1.1 100 Continue\r\n\r\n" + OK), 200, b"OK", None, id="100-continue"),
    pytest.param(
        Raw(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK), 200, b"OK", None,
        id="103-early-hints",
    ),  # fmt: skip
    pytest.param(Raw(OK, pieces=len(OK)), 200, b"OK", None, id="bytewise"),
    pytest.param(
        Raw(b"HTTP/1.1 503 Busy\r\nContent-Length: %d\r\n\r\n%s" % (len(BIG), BIG), pieces=7),
        503, BIG[:EXCERPT], None, id="body-longer-than-the-excerpt",
    ),  # fmt: skip
    pytest.param(Raw(b"HTTP/1.1 204 No Content\r\n\r\n"), 204, b"", None, id="204-no-length"),
    pytest.param(
        Raw(b"HTTP/1.1 429 x\r\nretry-after:   12  \r\nContent-Length: 0\r\n\r\n"), 429, b"",
        "12", id="header-case-and-spaces",
    ),  # fmt: skip
    pytest.param(
        Raw(b"HTTP/1.1 429 x\r\nRetry-After:\r\n 30\r\nContent-Length: 0\r\n\r\n"), 429, b"",
        "30", id="folded-header",
    ),  # fmt: skip
    pytest.param(
        Raw(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nOK"), 200,
        b"OK", None, id="http-1.0-keep-alive",
    ),  # fmt: skip
    pytest.param(
        Raw(b"HTTP/1.1 200\nContent-Length: 2\n\nOK"), 200, b"OK", None,
        id="bare-line-feeds-no-reason",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("answer", "status", "body", "retry_after"), KEPT)
def test_an_answer_is_read_whole_and_the_connection_carries_the_next_post(
    serve: type[RawServer], answer: Raw, status: int, body: bytes, retry_after: str | None
) -> None:
    server = serve(answer)
    with sender(server.url) as post:
        first = post.post(b"{}", {})
        assert (first.status, first.body, first.retry_after) == (status, body, retry_after)
        assert post.post(b"{}", {}).status == 200
        assert (server.requests, server.connections) == (2, 1)


CLOSED = [
    pytest.param(Raw(b"HTTP/1.0 200 OK\r\n\r\nread to the end", close=True), b"read to the end",
                 id="http-1.0-to-the-end"),  # fmt: skip
    pytest.param(Raw(b"HTTP/1.1 200 OK\r\n\r\nno length", close=True), b"no length",
                 id="no-length-to-the-end"),  # fmt: skip
    pytest.param(Raw(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nbad length", close=True),
                 b"bad length", id="unreadable-length-to-the-end"),  # fmt: skip
    pytest.param(Raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nOK"),
                 b"OK", id="connection-close"),  # fmt: skip
    pytest.param(Raw(OK + b"HTTP/1.1 200 OK\r\n"), b"OK", id="bytes-after-the-answer"),
]


@pytest.mark.parametrize(("answer", "body"), CLOSED)
def test_an_answer_ending_the_connection_makes_the_next_post_use_a_new_one(
    serve: type[RawServer], answer: Raw, body: bytes
) -> None:
    server = serve(answer)
    with sender(server.url) as post:
        first = post.post(b"{}", {})
        assert (first.status, first.body) == (200, body)
        assert post.post(b"{}", {}).status == 200
        assert (server.requests, server.connections) == (2, 2)


BROKEN = [
    pytest.param(Raw(b"", close=True), "closed the connection without answering", id="no-answer"),
    pytest.param(Raw(b"SSH-2.0-OpenSSH\r\n\r\n"), "not an HTTP/1.x status line", id="not-http"),
    pytest.param(Raw(b"HTTP/1.1 2000 OK\r\n\r\n"), "not an HTTP status", id="bad-status"),
    pytest.param(Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True),
                 "before its answer was complete", id="truncated-body"),  # fmt: skip
    pytest.param(Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
                 "not a chunk size", id="bad-chunk-size"),  # fmt: skip
    pytest.param(Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n"),
                 "longer than its size", id="chunk-overrun"),  # fmt: skip
    pytest.param(Raw(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n"),
                 "more than 100 headers", id="too-many-headers"),  # fmt: skip
    pytest.param(Raw(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n"),
                 "longer than 64 KiB", id="endless-line"),  # fmt: skip
]


@pytest.mark.parametrize(("answer", "reason"), BROKEN)
def test_a_broken_answer_is_a_retryable_send_error_and_the_next_post_reconnects(
    serve: type[RawServer], answer: Raw, reason: str
) -> None:
    server = serve(answer)
    with sender(server.url) as post:
        with pytest.raises(SendError) as raised:
            post.post(b"{}", {})
        assert raised.value.retry and reason in str(raised.value), raised.value
        assert post.post(b"{}", {}).status == 200
        assert server.connections == 2


def test_an_answer_that_never_ends_is_cut_at_the_timeout(serve: type[RawServer]) -> None:
    """A body announced longer than sent, the connection left open."""
    server = serve(Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    with sender(server.url, timeout=0.5) as post:
        started = time.monotonic()
        with pytest.raises(SendError, match="no answer within 0.5 s"):
            post.post(b"{}", {})
        assert time.monotonic() - started < 1.0


def test_through_the_exporter_a_chunked_429_after_100_continue_is_retried_as_told(
    serve: type[RawServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The writer as users run it: the 429's Retry-After, read from a chunked
    answer behind an interim one, decides the retry; the payload arrives."""
    server = serve(Raw(b"HTTP/1.1 100 Continue\r\n\r\n" + CHUNKED.replace(b": 7", b": 2")))
    exporter = HTTPPayloadMetricExporter(
        url=server.url, payload_generator=cust_payload_generator, name="writer",
        retry_initial=0.05,
    )
    try:
        with caplog.at_level(logging.WARNING):
            exporter.export(recorded(("r1", [("v", 1)])))
            assert exporter.force_flush(10_000)
        assert server.requests == 2 and exporter.stats.retried == 1
        [message] = [record.getMessage() for record in caplog.records]
        assert "HTTP 429" in message and "slow down!" in message, message
        waited = float(re.search(r"retrying in ([\d.]+) s", message).group(1))  # type: ignore[union-attr]
        assert 2.0 <= waited < 3.0, message  # the server's 2 s, not the 0.05 s backoff
    finally:
        exporter.shutdown(1_000)


def test_a_connection_dropped_after_some_answers_loses_and_repeats_nothing(
    serve: type[RawServer],
) -> None:
    """The raw server answers the first POST, then hangs up on the second:
    ``post_many`` returns the one answer; the others go on a new
    connection."""
    server = serve(Raw(OK), Raw(b"", close=True))
    with sender(server.url) as post:
        first = post.post_many([(b"{}", {})] * 4)
        assert [answer.status for answer in first] == [200]
        rest = post.post_many([(b"{}", {})] * 3)
        assert [answer.status for answer in rest] == [200, 200, 200]
    assert server.connections == 2


def pipelined_writer(url: str) -> HTTPPayloadMetricExporter:
    return HTTPPayloadMetricExporter(
        url=url, payload_generator=cust_payload_generator, name="writer",
        pipeline=4, timeout=0.5, retry_initial=0.05,
    )  # fmt: skip


def send_six(exporter: HTTPPayloadMetricExporter) -> float:
    """Six requests' POSTs exported and flushed; the seconds it took."""
    started = time.monotonic()
    exporter.export(recorded(*[(f"r{number}", [("v", number)]) for number in range(6)]))
    assert exporter.force_flush(10_000)
    return time.monotonic() - started


def test_an_endpoint_not_answering_pipelined_requests_fails_the_probe_once(
    serve: type[RawServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The server answers the first request of what was written at once and
    drops the rest: the probe's second OPTIONS goes unanswered, so after
    that one wait (the timeout, 0.5 s) the POSTs go one at a time, each
    taken once."""
    server = serve(pipelining=False)
    exporter = pipelined_writer(server.url)
    try:
        with caplog.at_level(logging.INFO):
            took = send_six(exporter)
        assert server.methods == ["OPTIONS"] + ["POST"] * 6
        assert exporter.stats.exported == 6 and exporter.stats.retried == 0
        assert 0.5 <= took < 0.5 + 1.0  # one probe timeout, not one per POST
        assert any("POSTs go one at a time" in record.getMessage() for record in caplog.records)
        assert send_six(exporter) < 0.5  # no second probe
        assert server.methods.count("OPTIONS") == 1
    finally:
        exporter.shutdown(1_000)


def test_an_endpoint_that_passed_the_probe_then_drops_pipelined_posts(
    serve: type[RawServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that answered the probe's two requests but drops POSTs
    written behind another: after one timeout the exporter sends one POST at
    a time, with a warning, and each request is taken once."""
    server = serve(pipelining=False, pipelined_requests=2)
    exporter = pipelined_writer(server.url)
    try:
        with caplog.at_level(logging.WARNING):
            took = send_six(exporter)
        assert server.methods == ["OPTIONS", "OPTIONS"] + ["POST"] * 6
        assert exporter.stats.exported == 6
        assert took < 0.5 + 1.0  # one timeout, not one per POST
        assert any("one POST at a time" in record.getMessage() for record in caplog.records)
    finally:
        exporter.shutdown(1_000)


def test_an_endpoint_answering_pipelined_requests_gets_them(serve: type[RawServer]) -> None:
    """The probe's two OPTIONS are answered on the connection it keeps; the
    POSTs then go four at a time on that same connection."""
    server = serve()
    exporter = pipelined_writer(server.url)
    try:
        assert send_six(exporter) < 0.5
        assert server.methods == ["OPTIONS", "OPTIONS"] + ["POST"] * 6
        assert server.connections == 1 and exporter._pipelining is True
    finally:
        exporter.shutdown(1_000)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(Raw(b"HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\n"
                         b"Content-Length: 0\r\n\r\n"), id="connection-close"),
        pytest.param(Raw(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK"), id="http-1.0"),
        pytest.param(Raw(b"nonsense\r\n\r\n"), id="not-http"),
    ],
)  # fmt: skip
def test_the_probe_says_no_unless_both_answers_come_on_a_kept_connection(
    serve: type[RawServer], answer: Raw
) -> None:
    server = serve(answer)
    with sender(server.url) as post:
        assert post.probe_pipelining() is False
        assert post.post(b"{}", {}).status == 200  # and the POSTs still go


def test_the_probe_of_an_endpoint_that_is_down_is_undecided() -> None:
    """None, not False: the writer asks again at its next send."""
    port = free_port()
    with sender(f"http://127.0.0.1:{port}/ingest") as post:
        assert post.probe_pipelining() is None


def test_an_endpoint_down_at_first_is_probed_again_once_it_is_up(serve: type[RawServer]) -> None:
    """No answer to the probe is no verdict: the writer retries its POSTs,
    probes again when it next sends, and pipelines once the endpoint is up."""
    port = free_port()
    exporter = pipelined_writer(f"http://127.0.0.1:{port}/ingest")
    try:
        exporter.export(recorded(*[(f"r{number}", [("v", number)]) for number in range(6)]))
        deadline = time.monotonic() + 5
        while exporter.stats.retried == 0:
            assert time.monotonic() < deadline, "the writer never tried to send"
            time.sleep(0.01)
        assert exporter._pipelining is None
        server = serve(port=port)
        assert exporter.force_flush(10_000)
        assert server.methods == ["OPTIONS", "OPTIONS"] + ["POST"] * 6
        assert exporter._pipelining is True and exporter.stats.exported == 6
    finally:
        exporter.shutdown(1_000)
