"""A scripted HTTP/1.1 endpoint on real sockets, one thread per connection.

A test double, and why: the misbehaviours the HTTP writer must survive (a
204 with a body, 120 header lines, HTTP/1.0 without a length, a 413 sent
before the body is read and then a close, an answer dribbled a byte at a
time, a close without an answer) are what real servers and proxies do now
and then, but no server we can start here does them on demand. Each
request is answered by ``script(request) -> Behaviour``; every request that
reached the endpoint whole is stored, with its ``Idempotency-Key``, so a
test asserts what was stored once and what was stored again.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stored:
    """One request as the endpoint received it."""

    body: bytes
    key: str | None
    connection: int
    number: int


@dataclass
class Behaviour:
    """How to answer one request.

    ``delay``: seconds before answering; ``kind``: "ok" (200 with a length),
    "slow" (the answer a byte every ``dribble`` seconds), "close" (store,
    then close without an answer), "body204" (a 204 followed by a body),
    "headers120" (a 200 with 120 header lines), "chunked", "http10" (HTTP/1.0
    without a length, then a close), "close_after" (a 200 with
    ``Connection: close``, then a close), "early_hints" (a 103, then the
    answer), "cut" (the head of "ok", then half its body and a close). A
    body longer than the endpoint's ``refuse_larger_than`` gets a 413 after
    the head, before the body is read, then a close (as a proxy's body
    limit does); it is not stored.
    """

    kind: str = "ok"
    delay: float = 0.0
    status: int = 200
    dribble: float = 0.01


Script = Callable[[Stored], Behaviour]


@dataclass
class ScriptedEndpoint:
    """Start with ``with ScriptedEndpoint(script) as endpoint:``; POST to
    ``endpoint.url``."""

    script: Script = field(default=lambda stored: Behaviour())
    refuse_larger_than: int | None = None
    stored: list[Stored] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/ingest"
        self._connections = 0
        self._numbers = 0
        #: Requests that arrived before the answer to the one before them.
        self.pipelined = 0
        self._closing = False
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> ScriptedEndpoint:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closing = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

    @property
    def connections(self) -> int:
        return self._connections

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [item.body for item in self.stored]

    def counts(self) -> Counter[bytes]:
        return Counter(self.bodies())

    def keys_of(self, body: bytes) -> list[str | None]:
        with self._lock:
            return [item.key for item in self.stored if item.body == body]

    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections += 1
                number = self._connections
                self._sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, connection: int) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower().decode()] = value.strip().decode()
                length = int(headers.get("content-length", "0"))
                with self._lock:
                    self._numbers += 1
                    number = self._numbers
                key = headers.get("idempotency-key")
                if self.refuse_larger_than is not None and length > self.refuse_larger_than:
                    sock.sendall(
                        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n"
                        b"Connection: close\r\n\r\ntoo big!"
                    )
                    return
                while len(buffer) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                if buffer:  # the next request came before this one's answer
                    with self._lock:
                        self.pipelined += 1
                stored = Stored(body, key, connection, number)
                with self._lock:
                    self.stored.append(stored)
                behaviour = self.script(stored)
                time.sleep(behaviour.delay)
                if not self._answer(sock, behaviour):
                    return
        except OSError:
            return
        finally:
            sock.close()

    @staticmethod
    def _answer(sock: socket.socket, behaviour: Behaviour) -> bool:
        """Answers; False when the connection is to be closed."""
        kind = behaviour.kind
        ok = b"HTTP/1.1 %d Scripted\r\nContent-Length: 2\r\n\r\nok" % behaviour.status
        if kind == "ok":
            sock.sendall(ok)
        elif kind == "slow":
            for byte in ok:
                sock.sendall(bytes([byte]))
                time.sleep(behaviour.dribble)
        elif kind == "close":
            return False
        elif kind == "cut":
            sock.sendall(ok[:-1])
            return False
        elif kind == "early_hints":
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n" + ok)
        elif kind == "body204":
            sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\nstray body bytes")
        elif kind == "headers120":
            lines = b"".join(b"X-Filler-%d: x\r\n" % n for n in range(120))
            sock.sendall(b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok")
        elif kind == "chunked":
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
        elif kind == "http10":
            sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nstored, bye")
            return False
        elif kind == "close_after":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            return False
        else:
            raise ValueError(kind)
        return True
