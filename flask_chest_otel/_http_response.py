"""Reads one HTTP/1.x answer from the writer's kept-alive socket.

``http.client.HTTPResponse`` parses the header block with ``email.parser``:
here that is about 50 us of CPU per answer, more than the rest of a POST
(``benchmarks/bench_http_writer.py``). The writer needs only the status,
two headers (``Retry-After``, ``Location``), a body excerpt for its log
line, and to know where the answer ends so that the connection can carry the
next POST. This reader does that and nothing more, with the same framing
rules as ``http.client`` (RFC 9112 section 6.3):

- ``1xx`` interim answers (``100 Continue``, ``103 Early Hints``) are read
  and skipped; ``101`` too, as nothing here upgrades;
- ``204``, ``304`` and ``1xx`` have no body;
- ``Transfer-Encoding: chunked`` is decoded (extensions and trailers read
  and ignored); otherwise ``Content-Length``; otherwise, or when it is not a
  number, the body runs to the end of the connection;
- the connection is closed after an ``HTTP/1.0`` answer without
  ``Connection: keep-alive``, after ``Connection: close``, after a body read
  to its end, and, by the sender, when bytes follow the last answer it
  expected (a confused server).

Every read gets only the time left before the caller's deadline (give or
take 10 ms), so a server answering a byte at a time cannot outlast it.
Limits as ``http.client``'s: a line of at most 64 KiB, at most 100 headers.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

_MAX_LINE = 65536
_MAX_HEADERS = 100
_READ_SIZE = 65536
#: A read may wait this much past the deadline rather than reset the timeout.
_SLACK = 0.01


class AnswerError(Exception):
    """The bytes the server sent are not a whole HTTP/1.x answer."""


@dataclass(frozen=True, slots=True)
class RawAnswer:
    status: int
    #: Header names in lower case; repeated headers joined with ", ".
    headers: dict[str, str]
    #: The body's first ``keep`` bytes (the rest is read and dropped).
    excerpt: bytes
    #: The connection cannot carry another request.
    will_close: bool


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()
        self.received = 0

    def fill(self) -> bool:
        """Reads what the socket has; False at the end of the connection."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        timeout = self.sock.gettimeout()
        if timeout is None or timeout - remaining > _SLACK:  # each settimeout is a syscall
            self.sock.settimeout(remaining)
        data = self.sock.recv(_READ_SIZE)
        self.buffer += data
        self.received += len(data)
        return bool(data)

    def line(self) -> bytes:
        """The next line, without its line end."""
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                if end > _MAX_LINE:
                    raise AnswerError("a line of the answer is longer than 64 KiB")
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buffer) > _MAX_LINE:
                raise AnswerError("a line of the answer is longer than 64 KiB")
            start = len(self.buffer)
            if not self.fill():
                raise self.closed()

    def closed(self) -> AnswerError:
        if self.received:
            return AnswerError("the server closed the connection before its answer was complete")
        return AnswerError("the server closed the connection without answering")

    def body(self, length: int, keep: int, excerpt: bytearray) -> None:
        """Reads ``length`` bytes, adding at most ``keep`` to ``excerpt``."""
        while len(self.buffer) < length:
            taken = len(self.buffer)
            self._keep(self.buffer, keep, excerpt)
            self.buffer.clear()
            length -= taken
            if not self.fill():
                raise self.closed()
        self._keep(self.buffer[:length], keep, excerpt)
        del self.buffer[:length]

    def to_end(self, keep: int, excerpt: bytearray) -> None:
        """Reads until the server closes the connection."""
        while True:
            self._keep(self.buffer, keep, excerpt)
            self.buffer.clear()
            if not self.fill():
                return

    @staticmethod
    def _keep(data: bytes | bytearray, keep: int, excerpt: bytearray) -> None:
        room = keep - len(excerpt)
        if room > 0:
            excerpt += data[:room]


class AnswerReader:
    """Reads the answers to the requests sent on ``sock``, in order (several
    when they were pipelined). Every ``read`` raises ``AnswerError`` for
    bytes that are not an answer, ``OSError`` (``TimeoutError`` past
    ``deadline``) for the socket's failures."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._reader = _Reader(sock, deadline)

    @property
    def leftover(self) -> bool:
        """Bytes came after the answers read so far."""
        return bool(self._reader.buffer)

    def read(self, keep: int) -> RawAnswer:
        """The next answer; its body's first ``keep`` bytes kept."""
        reader = self._reader
        while True:
            version, status = _status_line(reader.line())
            headers = _headers(reader)
            if not 100 <= status <= 199:
                break
        excerpt = bytearray()
        connection = headers.get("connection", "").lower()
        will_close = "close" in connection or (
            version == "HTTP/1.0" and "keep-alive" not in connection
        )
        if status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            _chunked(reader, keep, excerpt)
        else:
            length = _content_length(headers.get("content-length"))
            if length is None:
                reader.to_end(keep, excerpt)
                will_close = True
            else:
                reader.body(length, keep, excerpt)
        return RawAnswer(status, headers, bytes(excerpt), will_close)


def _status_line(line: bytes) -> tuple[str, int]:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        shown = line[:60].decode("latin-1")
        raise AnswerError(f"not an HTTP/1.x status line: {shown!r}")
    code = parts[1]
    if len(code) != 3 or not code.isdigit():
        raise AnswerError(f"not an HTTP status: {code[:10].decode('latin-1')!r}")
    return parts[0].decode("latin-1"), int(code)


def _headers(reader: _Reader) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = ""
    for _ in range(_MAX_HEADERS + 1):
        line = reader.line()
        if not line:
            return headers
        text = line.decode("latin-1")
        if text[0] in " \t" and last:  # an obsolete folded continuation line
            headers[last] = f"{headers[last]} {text.strip()}".lstrip()
            continue
        name, colon, value = text.partition(":")
        if not colon:
            continue  # not a header: skipped, as http.client's parser does
        last = name.strip().lower()
        value = value.strip()
        headers[last] = f"{headers[last]}, {value}" if last in headers else value
    raise AnswerError(f"the answer has more than {_MAX_HEADERS} headers")


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _chunked(reader: _Reader, keep: int, excerpt: bytearray) -> None:
    while True:
        size_text = reader.line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise AnswerError(
                f"not a chunk size: {size_text[:20].decode('latin-1')!r}"
            ) from None
        if size < 0:
            raise AnswerError("a negative chunk size")
        if size == 0:
            while reader.line():  # trailers, up to the blank line
                pass
            return
        reader.body(size, keep, excerpt)
        if reader.line():
            raise AnswerError("a chunk is longer than its size")
