"""A lean HTTP/1.1 endpoint for the load benchmark: it keeps every POST and
answers ``200 OK`` at once, on one asyncio event loop in a thread.

The custom writer's endpoint in production is a remote service (SignalFx's
ingest, a collector); on this 2-core machine the benchmark's endpoint runs on
the same cores as the gunicorn workers, so whatever it spends per POST is
taken from them. The test suite's threaded ``http.server`` sink
(``tests/http_sink.py``) spends 190-390 us of CPU per POST (a thread switch
and ``email.parser`` per request); this one parses only the request line,
``Content-Length`` and ``Transfer-Encoding``, which is all the writer sends
that matters here. It is still a real server on a real socket: keep-alive,
pipelined requests, bodies split over many reads, and it answers ``411`` to a
chunked body it does not decode. ``bench_load.py --sink threaded`` runs the
old sink for comparison.

Run as a script (``python benchmarks/lean_sink.py``) it serves until killed,
keeping only counts, and prints its URL on stdout.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from dataclasses import dataclass

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nOK"
_LENGTH_REQUIRED = b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#: Refuse heads longer than this (no real client of ours sends one).
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Posted:
    """One POST as received."""

    path: str
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self, sink: LeanSink) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self.transport.close()
                return
            method, target, length, chunked = _head(bytes(buffer[:end]))
            if chunked:
                self.transport.write(_LENGTH_REQUIRED)
                self.transport.close()
                return
            start = end + 4
            if len(buffer) < start + length:
                return
            answer = _OK
            if method == "POST":
                body = bytes(buffer[start : start + length])
                self.sink._keep(Posted(target.split("?", 1)[0], body))
            elif target == "/__count":
                answer = self.sink._count_answer()
            del buffer[: start + length]
            self.transport.write(answer)


def _head(head: bytes) -> tuple[str, str, int, bool]:
    """(method, target, Content-Length, chunked) of a request head."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
    return method, target, length, chunked


class LeanSink:
    """The server; use as a context manager. ``posts(path)`` are the POSTs
    received on ``path``, in order (``record=False`` keeps only counts);
    ``GET /__count`` answers ``{"posts": N, "bytes": N}``."""

    def __init__(self, record: bool = True) -> None:
        self.record = record
        self._count = [0, 0]
        self._posted: list[Posted] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _keep(self, posted: Posted) -> None:
        with self._lock:
            self._count[0] += 1
            self._count[1] += len(posted.body)
            if self.record:
                self._posted.append(posted)

    def _count_answer(self) -> bytes:
        with self._lock:
            body = json.dumps({"posts": self._count[0], "bytes": self._count[1]}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def posts(self, path: str | None = None) -> list[Posted]:
        with self._lock:
            return [posted for posted in self._posted if path is None or posted.path == path]

    def __enter__(self) -> LeanSink:
        self._server = self._loop.run_until_complete(
            self._loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Closing the listening socket is enough: the loop's end drops any
        # keep-alive connection still open.
        assert self._server is not None
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def main() -> None:
    with LeanSink(record=False) as sink:
        print(sink.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
