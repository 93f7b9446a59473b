"""A real HTTP server on loopback that echoes every request it receives in its
answer: a test double for the secrets tests (issue 23 item 7).

No real backend echoes a request on purpose, but proxies, gateways and debug
servers do: an error page quoting the request line and its headers, a
redirect carrying the original request in its query, a reason phrase built
from what was received. This server does all of it at once, so that every
text a chest may log from an answer holds every secret the chest sent.

Each request (any method) is answered with ``status`` (settable; 400 unless
told), a body, a reason phrase and a ``Location`` header, each holding the
echo: the request line with its query, every header, the body, and the
decoded ``user:password`` of an ``Authorization: Basic`` header. The body
gives it as received, the reason phrase on one line, ``Location``
percent-encoded in a query. HTTP/1.1 with keep-alive, in a thread of its own.
"""

from __future__ import annotations

import base64
import binascii
import threading
from urllib.parse import quote

from .loopback import LoopbackServer, QuietHandler, QuietServer


class _Server(QuietServer):
    echo: EchoServer


class _Handler(QuietHandler):
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        echo = self.server.echo._record(self._echo(body))
        status = self.server.echo.status
        content = echo.encode("utf-8", "replace")
        flat = " | ".join(echo.splitlines())
        # A reason phrase and a header value are Latin-1 on the wire.
        reason = flat.encode("latin-1", "replace").decode("latin-1")
        self.send_response(status, reason)
        self.send_header("Location", "/moved?echo=" + quote(flat, safe=""))
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _echo(self, body: bytes) -> str:
        lines = [self.requestline]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        authorization = self.headers.get("Authorization") or ""
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True)
            except binascii.Error:
                decoded = b"(not base64)"
            lines.append("Basic credentials: " + decoded.decode("utf-8", "replace"))
        lines.append("Body: " + body.decode("utf-8", "replace"))
        return "\n".join(lines)

    do_POST = do_PUT = do_GET = do_OPTIONS = _handle


class EchoServer(LoopbackServer):
    """The server; use as a context manager or call :meth:`start`/:meth:`stop`.

    :param status: the status of every answer (settable later).
    """

    def __init__(self, status: int = 400) -> None:
        self.status = status
        self._echoes: list[str] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.echo = self

    @property
    def echoes(self) -> list[str]:
        """What each request was answered with, in order."""
        with self._lock:
            return list(self._echoes)

    def _record(self, echo: str) -> str:
        with self._lock:
            self._echoes.append(echo)
        return echo
