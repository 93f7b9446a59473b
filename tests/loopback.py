"""What every scripted HTTP server of the tests shares: a threading server
on a free loopback port that stays quiet, a keep-alive handler that answers
at once, and the start, stop and ``with`` block around them."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up (at shutdown too) are part of the tests.
        pass


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: Idle keep-alive connections are closed after this many seconds.
    timeout = 10
    #: Headers and body go out as separate writes: without this, Nagle's
    #: algorithm and the client's delayed ACK add 40 ms to every answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class LoopbackServer:
    """Runs ``self._server`` (set by the subclass) in a thread: ``port``,
    ``url``, ``start()``, ``stop()`` and a ``with`` block."""

    _server: ThreadingHTTPServer
    _thread: threading.Thread | None = None
    scheme = "http"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Any:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
