"""POSTs on our own kept-alive connections, answers parsed by the standard
library's :class:`http.client.HTTPResponse` (no HTTP reader of our own).

Each POST is one ``sendall`` of a byte template requests prepared once; its
answer is read by ``HTTPResponse`` from :class:`_AnswerFile`, a file over the
socket that bounds the whole answer by the POST's deadline (a server
answering a byte a second cannot hold it longer) and keeps what it read past
the answer: bytes after an answer (a 204 with a body, garbage) close the
connection, so they are never taken for the next POST's answer.

When a POST is resent. Only when it cannot have been processed (the
connection failed before a byte of it was written) or when the server never
answered (a reset, a timeout): then the server may have stored it, and the
``Idempotency-Key`` it carries lets the server drop the repeat. An answer,
even one that cannot be parsed, fails that POST through the retry policy:
never endlessly, as the drain drops an item that keeps failing alone
(``_delivery/_drain.py``, "Poison").
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from ._lanes import Lanes
from ._transport import (
    EXCERPT,
    FAILED,
    IDEMPOTENCY_KEY,
    NOT_SENT,
    Answer,
    Outcome,
    Post,
    SendError,
    Transport,
    reason,
)

#: Most body bytes read from one answer to keep its connection; a longer
#: body closes the connection instead.
MAX_DRAIN = 1 << 20
#: Seconds to read an answer waiting after our write failed (a 413 sent
#: before the body was read, then a close).
ANSWER_AFTER_FAILED_WRITE = 1.0


class DirectTransport(Transport):
    """POSTs over up to ``max_connections`` kept-alive connections of our own."""

    direct = True

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        parts = urlsplit(self.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.ssl_context = self._make_ssl_context() if self.https else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = 443 if self.https else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        host_header = host if self.port == default_port else f"{host}:{self.port}"
        lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}"]
        lines += ["Accept-Encoding: identity", "Connection: keep-alive"]
        names = {"host", "accept-encoding", "connection", "content-length", "idempotency-key"}
        lines += [f"{k}: {v}" for k, v in self.headers.items() if k.lower() not in names]
        head = "".join(line + "\r\n" for line in lines).encode("latin-1")
        json_lines = "".join(f"{k}: {v}\r\n" for k, v in self.json_headers.items())
        key = f"{IDEMPOTENCY_KEY}: ".encode()
        #: By ``Post.is_json``: the head up to the key's value.
        self._heads = (head + key, head + json_lines.encode("latin-1") + key)
        self._lanes: Lanes[_Connection] = Lanes(
            self.max_connections, lambda: _Connection(self), _Connection.close, self.what
        )

    def _make_ssl_context(self) -> ssl.SSLContext:
        if self.verify is False:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        bundle = requests.utils.DEFAULT_CA_BUNDLE_PATH if self.verify is True else str(self.verify)
        if os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        return ssl.create_default_context(cafile=bundle)

    def message(self, post: Post) -> bytes:
        """The bytes of one POST."""
        return b"%s%s\r\nContent-Length: %d\r\n\r\n%s" % (
            self._heads[post.is_json], post.key.encode("ascii"), len(post.body), post.body
        )

    def _post_many(
        self, posts: Sequence[Post], deadline: float | None, stop: Callable[[Outcome], bool] | None
    ) -> list[Outcome]:
        return self._lanes.run(
            lambda connection, post: connection.post(post, deadline), posts, FAILED, stop, NOT_SENT
        )

    @property
    def helpers(self) -> int:
        """Threads started to carry POSTs beside the sender's own."""
        return self._lanes.helpers

    def start(self) -> None:
        self._lanes.start()

    def close(self) -> None:
        self._lanes.close()

    def after_fork_in_child(self) -> None:
        self._lanes.after_fork_in_child()


class _Connection:
    """One kept-alive connection (opened on first use, and again after a
    close), carrying one POST at a time."""

    __slots__ = ("_capped", "_sock", "_transport")

    def __init__(self, transport: DirectTransport) -> None:
        self._transport = transport
        self._sock: socket.socket | None = None
        #: The POST under way must end before shutdown's deadline.
        self._capped = False

    def post(self, post: Post, cap: float | None) -> Outcome:
        transport = self._transport
        deadline = time.monotonic() + transport.total_timeout
        self._capped = cap is not None and cap < deadline
        if cap is not None:
            deadline = min(deadline, cap)
        try:
            sock = self._socket(deadline)
        except OSError as exc:  # nothing sent: safe to send again
            self.close()
            return self._error(exc)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(transport.message(post))
        except OSError as exc:
            # A server may answer (413) and close before reading the body.
            answer = self._read(sock, min(deadline, time.monotonic() + ANSWER_AFTER_FAILED_WRITE))
            self.close()
            return answer if isinstance(answer, Answer) else self._error(exc)
        return self._read(sock, deadline)

    def _read(self, sock: socket.socket, deadline: float) -> Outcome:
        """The answer to the POST just written: parsed by ``http.client``;
        the connection is kept only if nothing follows the answer."""
        answer_file = _AnswerFile(sock, deadline)
        try:
            while True:
                response = http.client.HTTPResponse(answer_file, method="POST")  # type: ignore[arg-type]
                response.begin()
                # ``begin`` skips a 100 Continue only; an interim answer
                # (103 Early Hints) is not the answer to the POST either.
                if not 100 <= response.status < 200 or response.status == 101:
                    break
            body = response.read(EXCERPT)
            drained = len(body)
            # The rest of the body, to keep the connection; not a body that
            # ends with the connection (HTTP/1.0 without a length): that one
            # is closed instead of waited for.
            while not _complete(response) and drained <= MAX_DRAIN and not response.will_close:
                chunk = response.read(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return self._error(exc)
        if not _complete(response) or response.will_close or answer_file.buffer:
            self.close()
        return Answer(
            response.status, response.getheader("Retry-After"), response.getheader("Location"),
            body,
        )  # fmt: skip

    def _error(self, exc: BaseException) -> SendError:
        transport = self._transport
        if isinstance(exc, TimeoutError):
            if self._capped:
                return SendError("no answer before the shutdown deadline", True)
            return SendError(f"no answer within {transport.total_timeout:g} s", True)
        return SendError(reason(exc, transport.secrets.redact), True)

    def _socket(self, deadline: float) -> socket.socket:
        """The kept-alive connection, unless the server closed it meanwhile;
        else a new one."""
        if self._sock is not None and not _dropped(self._sock):
            return self._sock
        self.close()
        self._sock = self._connect(deadline)
        return self._sock

    def _connect(self, deadline: float) -> socket.socket:
        transport = self._transport
        timeout = min(transport.connect_timeout, max(deadline - time.monotonic(), 0.001))
        sock = socket.create_connection((transport.host, transport.port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if transport.ssl_context is not None:
                sock = transport.ssl_context.wrap_socket(
                    sock, server_hostname=transport.host, do_handshake_on_connect=False
                )
                _handshake(sock, deadline)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


class _AnswerFile:
    """What ``HTTPResponse`` reads an answer from (in place of
    ``socket.makefile``): each read waits at most until the deadline, and
    what was read past the answer stays in :attr:`buffer`."""

    __slots__ = ("_deadline", "_eof", "_sock", "buffer")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._eof = False
        self.buffer = bytearray()

    def makefile(self, mode: str) -> _AnswerFile:
        return self

    def _fill(self) -> bool:
        """Reads what arrived into the buffer; False at the end of the stream."""
        if self._eof:
            return False
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("answer not complete before the deadline")
        self._sock.settimeout(remaining)
        data = self._sock.recv(65536)
        if not data:
            self._eof = True
            return False
        self.buffer += data
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def readline(self, limit: int = -1) -> bytes:
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0 and (limit < 0 or end < limit):
                return self._take(end + 1)
            if 0 <= limit <= len(self.buffer):
                return self._take(limit)
            start = len(self.buffer)
            if not self._fill():
                return self._take(len(self.buffer))

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self.buffer))
        while len(self.buffer) < size and self._fill():
            pass
        return self._take(size)

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        # ``HTTPResponse`` closes its file at the answer's end; the buffer
        # must outlive it (what follows the answer closes the connection).
        pass


def _complete(response: http.client.HTTPResponse) -> bool:
    """Whether the whole answer was read (a 204's or 304's is its head)."""
    return response.isclosed() or (response.length == 0 and not response.chunked)


def _dropped(sock: socket.socket) -> bool:
    """True if an idle kept-alive connection was closed by the server (it is
    readable: an EOF or stray bytes), as urllib3 checks before reuse."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """The TLS handshake, bounded as a whole by ``deadline`` (a blocking one
    would give each of its reads the full timeout)."""
    sock.setblocking(False)
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            readers, writers = [sock], []
        except ssl.SSLWantWriteError:
            readers, writers = [], [sock]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(readers, writers, [], remaining)[:2]):
            raise TimeoutError("TLS handshake timed out")
