"""A real HTTP server on loopback that records every request and answers as
scripted: the endpoint the custom writer's tests (and its benchmark) post to.

It is a threaded ``http.server`` speaking HTTP/1.1 with keep-alive, so the
writer's session, retries and timeouts meet a real socket. Each request is
answered by the next scripted ``Reply`` (status, headers, body, a delay before
answering, or dropping the connection), then by ``default``.

Run as a script (``python tests/http_sink.py``) it serves until killed, prints
its URL on stdout, and answers ``GET /__count`` with the number of POSTs and
their total body bytes (the benchmark runs it in its own process).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .loopback import LoopbackServer, QuietHandler, QuietServer


@dataclass(frozen=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    body: bytes = b"OK"
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering (to provoke a client timeout).
    delay: float = 0.0
    #: Close the connection without answering.
    drop: bool = False


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    #: The request target as sent: a path, or an absolute URL through a proxy.
    target: str
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int]
    received: float
    #: The connection it came on: 1 for the first the sink accepted, and so on.
    connection: int = 0

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(QuietServer):
    sink: HTTPSink

    def process_request(self, request: Any, client_address: Any) -> None:
        """Numbers the connection here, in the accepting thread, in the order
        accepted (a handler's own thread may start later than the next)."""
        with self.sink._lock:
            self.sink.connections += 1
            self.sink._numbers[request] = self.sink.connections
        super().process_request(request, client_address)


class _Handler(QuietHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sink._lock:
            self.connection_number = self.server.sink._numbers.pop(self.request)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        sink = self.server.sink
        if self.command == "GET" and self.path == "/__count":
            self._answer(Reply(200, json.dumps(sink.count()).encode()))
            return
        reply = sink._record_and_reply(
            Recorded(
                method=self.command,
                target=self.path,
                headers={key.lower(): value for key, value in self.headers.items()},
                body=body,
                client=self.client_address[:2],
                received=time.monotonic(),
                connection=self.connection_number,
            )
        )
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._answer(reply)

    def _answer(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def do_OPTIONS(self) -> None:
        """Counted in ``probes``, not recorded: the writer's probe for
        pipelining."""
        with self.server.sink._lock:
            self.server.sink.probes += 1
        self._answer(Reply(204, b""))

    do_POST = do_PUT = do_GET = _handle


class HTTPSink(LoopbackServer):
    """The server; use as a context manager or call ``start``/``stop``.

    Args:
        port: 0 for a free port.
        tls: ``(certfile, keyfile)`` to serve HTTPS.
        record: False keeps only counts (for the benchmark).
    """

    def __init__(
        self, port: int = 0, tls: tuple[str, str] | None = None, record: bool = True
    ) -> None:
        self.default = Reply()
        self.record = record
        self._script: deque[Reply] = deque()
        self._requests: list[Recorded] = []
        self._posts = 0
        self._bytes = 0
        #: Connections accepted so far; each is numbered in the order accepted.
        self.connections = 0
        self._numbers: dict[Any, int] = {}
        #: OPTIONS requests answered (the writer's probe for pipelining).
        self.probes = 0
        self._lock = threading.Condition()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.sink = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"

    def script(self, *replies: Reply) -> None:
        """Answers the next requests with ``replies``, in order."""
        with self._lock:
            self._script.extend(replies)

    def _record_and_reply(self, recorded: Recorded) -> Reply:
        with self._lock:
            if recorded.method == "POST":
                self._posts += 1
                self._bytes += len(recorded.body)
            if self.record:
                self._requests.append(recorded)
            reply = self._script.popleft() if self._script else self.default
            self._lock.notify_all()
            return reply

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def posts(self, path: str | None = None) -> list[Recorded]:
        return [
            request
            for request in self.requests
            if request.method == "POST" and (path is None or request.path == path)
        ]

    def count(self) -> dict[str, int]:
        with self._lock:
            return {"posts": self._posts, "bytes": self._bytes}

    def wait_for(self, condition: Callable[[HTTPSink], bool], timeout: float = 10.0) -> bool:
        """Waits until ``condition(self)`` holds (checked at each request)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.1))
            return True

    def wait_for_posts(self, count: int, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda sink: sink._posts >= count, timeout)


def main() -> None:
    sink = HTTPSink(record=False).start()
    print(sink.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
