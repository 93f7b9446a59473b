"""POSTs on our own kept-alive connections, answers parsed by the standard
library's :class:`http.client.HTTPResponse` (no HTTP reader of our own).

Each POST is one ``send`` of a byte template requests prepared once. A
lane (thread) carries a :class:`_Group` of up to ``GROUP`` connections: it
writes a POST on each, then reads their answers as they come (never two
in flight on one connection): one ``poll`` waits for all those not answered
yet, and each answer there is read then (``_answers``). The sockets are
non-blocking: a write is tried first and waited for (``poll``, bounded by
the POST's deadline) only when the kernel cannot take its bytes at once,
and a wave checks its idle connections with one ``poll``. A socket with a
timeout would ``poll`` before every call and switch its mode with an
``ioctl`` at every ``settimeout``: 7 system calls per POST, now about 2.5,
each one a moment the GIL goes to another thread and must be waited for
again (the app's request thread among them). An answer whose head
``http.client`` read before, byte for byte, is not parsed again
(:class:`_KnownHeads`): when the first read brings exactly that head and
its body, the answer is known from those bytes alone, with no file over the
socket (most answers); any other answer is read by ``HTTPResponse`` from
:class:`_AnswerFile`, a file over the socket that bounds the whole answer
by the POST's deadline (a server answering a byte a second cannot hold it
longer) and keeps what it read past the answer: bytes after an answer (a
204 with a body, garbage) close the connection, so they are never taken for
the next POST's answer.

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
import math
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
#: Connections one lane (one thread) carries: it writes a POST on each, then
#: reads their answers, so that one wake-up finds several answers waiting.
#: Waiting for each answer alone cost 33 us of CPU per POST on the
#: benchmark machine, 4 at a time 15 us, 8 at a time 11 us (bytes on
#: sockets, no HTTP: a thread's sleep and wake-up per answer is most of it);
#: measured again on 2026-12-03 against the lean sink, 63, 39 and 32 us.
GROUP = 8


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
        self.known_heads = _KnownHeads()
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
        lanes = -(-self.max_connections // GROUP)
        self._lanes: Lanes[_Group] = Lanes(lanes, self._new_group, _Group.close, self.what)

    def _new_group(self, index: int) -> _Group:
        """Lane ``index``'s connections: ``GROUP``, the last lane the rest of
        ``max_connections``."""
        return _Group(self, min(GROUP, self.max_connections - GROUP * index))

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
        """Each lane takes ``GROUP`` POSTs at a time, one per connection."""
        chunks = [posts[start : start + GROUP] for start in range(0, len(posts), GROUP)]
        asks_to_stop = None if stop is None else lambda outcomes: any(map(stop, outcomes))
        results = self._lanes.run(
            lambda group, chunk: group.post_all(chunk, deadline, stop),
            chunks,
            _FAILED_CHUNK,
            asks_to_stop,
            _SKIPPED_CHUNK,
        )
        outcomes: list[Outcome] = []
        for chunk, result in zip(chunks, results, strict=True):
            if result is _FAILED_CHUNK:
                outcomes += [FAILED] * len(chunk)
            elif result is _SKIPPED_CHUNK:
                outcomes += [NOT_SENT] * len(chunk)
            else:
                outcomes += result
        return outcomes

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


#: A chunk whose sending raised (a bug), and one not started.
_FAILED_CHUNK: list[Outcome] = []
_SKIPPED_CHUNK: list[Outcome] = []


class _Group:
    """A lane's connections: ``post_all`` writes one POST on each, then
    reads their answers as they come (never two POSTs in flight on one)."""

    __slots__ = ("connections",)

    def __init__(self, transport: DirectTransport, size: int) -> None:
        self.connections = [_Connection(transport) for _ in range(size)]

    def post_all(
        self, posts: Sequence[Post], cap: float | None, stop: Callable[[Outcome], bool] | None
    ) -> list[Outcome]:
        """What became of each POST; once one satisfies ``stop``, those not
        yet written are not: :data:`NOT_SENT`."""
        connections = self.connections
        outcomes: list[Outcome] = []
        for start in range(0, len(posts), len(connections)):
            _close_dropped(connections)
            wave = zip(connections, posts[start : start + len(connections)], strict=False)
            written = [(connection, connection.send(post, cap)) for connection, post in wave]
            wave_outcomes = _answers(written)
            outcomes += wave_outcomes
            if stop is not None and any(map(stop, wave_outcomes)):
                return outcomes + [NOT_SENT] * (len(posts) - len(outcomes))
        return outcomes

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


class _Connection:
    """One kept-alive connection (opened on first use, and again after a
    close), carrying one POST at a time."""

    __slots__ = ("_capped", "_deadline", "_sock", "_transport")

    def __init__(self, transport: DirectTransport) -> None:
        self._transport = transport
        self._sock: socket.socket | None = None
        #: The POST under way must end before shutdown's deadline.
        self._capped = False
        #: When the POST under way must have its answer.
        self._deadline = 0.0

    def send(self, post: Post, cap: float | None) -> Outcome | None:
        """Writes ``post``: None, its answer to be read by ``answer``; else
        what became of it (no connection, or the write failed)."""
        transport = self._transport
        deadline = time.monotonic() + transport.total_timeout
        self._capped = cap is not None and cap < deadline
        if cap is not None:
            deadline = min(deadline, cap)
        self._deadline = deadline
        if self._capped and deadline <= time.monotonic():
            return SendError("not sent: the shutdown deadline passed", True)
        try:
            sock = self._socket(deadline)
        except OSError as exc:  # nothing sent: safe to send again
            self.close()
            return self._error(exc)
        try:
            _send_all(sock, transport.message(post), deadline)
        except OSError as exc:
            # A server may answer (413) and close before reading the body.
            answer = self._read(sock, min(deadline, time.monotonic() + ANSWER_AFTER_FAILED_WRITE))
            self.close()
            return answer if isinstance(answer, Answer) else self._error(exc)
        return None

    def fileno(self) -> int | None:
        """The open connection's descriptor; None when there is none."""
        return self._sock.fileno() if self._sock is not None else None

    @property
    def deadline(self) -> float:
        """When the POST under way must have its answer (monotonic)."""
        return self._deadline

    def answer(self) -> Outcome:
        """The answer to the POST ``send`` wrote."""
        sock = self._sock
        if sock is None:  # pragma: no cover - send returned an outcome then
            return SendError("no connection", True)
        return self._read(sock, self._deadline)

    def _read(self, sock: socket.socket, deadline: float) -> Outcome:
        """The answer to the POST just written: parsed by ``http.client``
        (or known by its head's bytes, see :class:`_KnownHeads`); the
        connection is kept only if nothing follows the answer."""
        heads = self._transport.known_heads
        try:
            first = _io(sock.recv, 65536, sock, deadline, select.POLLIN)
        except OSError as exc:  # a timeout, a reset
            self.close()
            return self._error(exc)
        # Most answers are one known head and its body, read at once.
        whole = heads.whole_answer(first)
        if whole is not None:
            return whole
        answer_file = _AnswerFile(sock, deadline, first)
        try:
            head_bytes, known = heads.match(answer_file)
            if known is not None:
                return self._known_answer(answer_file, known)
            interim = False
            while True:
                response = http.client.HTTPResponse(answer_file, method="POST")  # type: ignore[arg-type]
                response.begin()
                # ``begin`` skips a 100 Continue only; an interim answer
                # (103 Early Hints) is not the answer to the POST either.
                if not 100 <= response.status < 200 or response.status == 101:
                    break
                interim = True
            if not interim and answer_file.taken == len(head_bytes):
                heads.learn(head_bytes, response)
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

    def _known_answer(self, answer_file: _AnswerFile, head: _Head) -> Outcome:
        """The answer whose head ``http.client`` read before, byte for byte:
        its body is ``head.length`` bytes."""
        body = answer_file.read(head.length)
        if len(body) < head.length:  # as ``http.client`` reads a cut body
            self.close()
            return self._error(http.client.IncompleteRead(body, head.length - len(body)))
        if head.will_close or answer_file.buffer:
            self.close()
        return head.answer_with(body[:EXCERPT])

    def _error(self, exc: BaseException) -> SendError:
        transport = self._transport
        if isinstance(exc, TimeoutError):
            if self._capped:
                return SendError("no answer before the shutdown deadline", True)
            return SendError(f"no answer within {transport.total_timeout:g} s", True)
        return SendError(reason(exc, transport.secrets.redact), True)

    def _socket(self, deadline: float) -> socket.socket:
        """The kept-alive connection (``_close_dropped`` closed it if the
        server did meanwhile), else a new one."""
        if self._sock is None:
            self._sock = self._connect(deadline)
        return self._sock

    def _connect(self, deadline: float) -> socket.socket:
        transport = self._transport
        timeout = min(transport.connect_timeout, max(deadline - time.monotonic(), 0.001))
        sock = socket.create_connection((transport.host, transport.port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
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


class _Head:
    """What ``http.client`` read from an answer's head."""

    __slots__ = ("answer", "length", "location", "retry_after", "status", "will_close")

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        #: Bytes of body (0 for a 204 or 304).
        self.length: int = response.length or 0
        self.will_close = bool(response.will_close)
        self.retry_after = response.getheader("Retry-After")
        self.location = response.getheader("Location")
        #: The last answer with this head (reused while its body is the same).
        self.answer: Answer | None = None

    def answer_with(self, body: bytes) -> Answer:
        """The answer of this head and ``body`` (an immutable Answer is
        kept: the same body comes again)."""
        answer = self.answer
        if answer is None or answer.body != body:
            self.answer = answer = Answer(self.status, self.retry_after, self.location, body)
        return answer


class _KnownHeads:
    """Answers' heads that ``http.client`` parsed, by their exact bytes.

    An endpoint sends the same head again and again (at most ``Date``
    changes, once a second), and parsing it anew (``email.parser``) cost
    about 100 us of CPU per POST on the benchmark machine: three times the
    socket's own cost, taken from the app's requests on the same core. A
    head's parse depends on its bytes alone, so bytes that ``http.client``
    read as a whole head before (up to and including the first empty line,
    nothing more) stand for the same status, body length, connection state
    and headers when they come again. Only heads with a length are kept
    (a ``Content-Length``, or a 204 or 304): a chunked answer, one read to
    the close, an interim 1xx or a head that does not end at the first
    ``CRLF CRLF`` goes through ``http.client`` every time. Shared by the
    lanes (a dict's get and set are atomic); emptied when full, so heads
    that never repeat (a request ID in each) cost one dict entry each for a
    while and nothing more.
    """

    __slots__ = ("_heads",)

    #: Heads kept at most.
    SIZE = 64
    #: Bytes looked through for a head's end before leaving it to ``http.client``.
    LONGEST = 8192

    def __init__(self) -> None:
        self._heads: dict[bytes, _Head] = {}

    def whole_answer(self, data: bytes) -> Answer | None:
        """The answer ``data`` is when it is exactly a known head and its
        whole body, on a connection that stays open; else None."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        end += 4
        head = self._heads.get(data[:end])
        if head is None or head.will_close or len(data) != end + head.length:
            return None
        return head.answer_with(data[end : end + EXCERPT])

    def match(self, answer_file: _AnswerFile) -> tuple[bytes, _Head | None]:
        """(the bytes up to the first empty line, the head they stand for
        if known: then they are taken from ``answer_file``)."""
        buffer = answer_file.buffer
        end = buffer.find(b"\r\n\r\n")
        while end < 0 and len(buffer) <= self.LONGEST:
            searched = max(0, len(buffer) - 3)
            if not answer_file.fill():
                break
            end = buffer.find(b"\r\n\r\n", searched)
        if end < 0:
            return b"", None
        head_bytes = bytes(buffer[: end + 4])
        known = self._heads.get(head_bytes)
        if known is not None:
            answer_file.skip(len(head_bytes))
        return head_bytes, known

    def learn(self, head_bytes: bytes, response: http.client.HTTPResponse) -> None:
        """Keeps what ``http.client`` read from ``head_bytes`` (its whole head)."""
        if response.chunked or response.length is None or response.length > MAX_DRAIN:
            return
        if len(self._heads) >= self.SIZE:
            self._heads.clear()
        self._heads[head_bytes] = _Head(response)


class _AnswerFile:
    """What ``HTTPResponse`` reads an answer from (in place of
    ``socket.makefile``): each read waits at most until the deadline, and
    what was read past the answer stays in :attr:`buffer`."""

    __slots__ = ("_deadline", "_eof", "_sock", "buffer", "taken")

    def __init__(self, sock: socket.socket, deadline: float, first: bytes) -> None:
        self._sock = sock
        self._deadline = deadline
        #: ``first``: what the first ``recv`` read (``b""``: the end of the stream).
        self._eof = not first
        self.buffer = bytearray(first)
        #: Bytes read out of the buffer so far.
        self.taken = 0

    def makefile(self, mode: str) -> _AnswerFile:
        return self

    def fill(self) -> bool:
        """Reads what arrived into the buffer, waiting until the deadline
        for it; False at the end of the stream."""
        if self._eof:
            return False
        data = _io(self._sock.recv, 65536, self._sock, self._deadline, select.POLLIN)
        if not data:
            self._eof = True
            return False
        self.buffer += data
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        self.skip(len(data))
        return data

    def skip(self, size: int) -> None:
        del self.buffer[:size]
        self.taken += size

    def readline(self, limit: int = -1) -> bytes:
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0 and (limit < 0 or end < limit):
                return self._take(end + 1)
            if 0 <= limit <= len(self.buffer):
                return self._take(limit)
            start = len(self.buffer)
            if not self.fill():
                return self._take(len(self.buffer))

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self.fill():
                pass
            return self._take(len(self.buffer))
        while len(self.buffer) < size and self.fill():
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


def _answers(written: list[tuple[_Connection, Outcome | None]]) -> list[Outcome]:
    """What became of each POST of a wave: the outcome ``send`` gave, else
    the answer read from its connection. One ``poll`` waits for those not
    answered yet, and each answer that came is read then, in the order
    they came: no read is tried before its answer is there, and one
    wake-up reads all that arrived meanwhile. A connection whose deadline
    passes is read anyway, which ends its POST (a timeout)."""
    outcomes: list[Outcome | None] = [outcome for _, outcome in written]
    waiting: dict[int, tuple[int, _Connection]] = {}
    poller = select.poll()
    for index, (connection, outcome) in enumerate(written):
        fd = connection.fileno() if outcome is None else None
        if fd is not None:
            waiting[fd] = (index, connection)
            poller.register(fd, select.POLLIN)
        elif outcome is None:  # pragma: no cover - send returned an outcome then
            outcomes[index] = connection.answer()
    while waiting:
        first_deadline = min(connection.deadline for _, connection in waiting.values())
        remaining = first_deadline - time.monotonic()
        ready = poller.poll(max(0, math.ceil(remaining * 1000))) if remaining > 0 else []
        if not ready and time.monotonic() >= first_deadline:
            ready = [
                (fd, 0) for fd, (_, connection) in waiting.items()
                if connection.deadline <= first_deadline
            ]  # fmt: skip
        for fd, _ in ready:
            index, connection = waiting.pop(fd)
            poller.unregister(fd)
            outcomes[index] = connection.answer()
    return outcomes  # type: ignore[return-value]


def _close_dropped(connections: Sequence[_Connection]) -> None:
    """Closes the idle kept-alive connections the server closed meanwhile
    (readable: an EOF or stray bytes), as urllib3 checks before reuse: one
    ``poll`` for them all."""
    open_ = {
        fd: connection for connection in connections if (fd := connection.fileno()) is not None
    }
    if not open_:
        return
    poller = select.poll()
    for fd in open_:
        poller.register(fd, select.POLLIN)
    for fd, _ in poller.poll(0):
        open_[fd].close()


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Writes ``data`` on the non-blocking ``sock``, waiting for room until
    ``deadline`` (``TimeoutError`` then)."""
    sent = _io(sock.send, data, sock, deadline, select.POLLOUT)
    if sent < len(data):
        view = memoryview(data)
        while sent < len(data):
            sent += _io(sock.send, view[sent:], sock, deadline, select.POLLOUT)


def _io(
    call: Callable[[Any], Any], argument: Any, sock: socket.socket, deadline: float, ready: int
) -> Any:
    """``call(argument)`` on the non-blocking ``sock`` (its ``send`` or
    ``recv``), tried at once and again each time the socket has ``ready``
    (``POLLOUT``, ``POLLIN``), until ``deadline`` (``TimeoutError`` then).
    TLS may need to read to write, or the reverse."""
    while True:
        try:
            return call(argument)
        except ssl.SSLWantReadError:
            waiting = select.POLLIN
        except ssl.SSLWantWriteError:
            waiting = select.POLLOUT
        except BlockingIOError:
            waiting = ready
        _wait(sock, waiting, deadline)


def _wait(sock: socket.socket, events: int, deadline: float) -> None:
    """Until ``sock`` has one of ``events`` (or an error), at most until
    ``deadline``: ``TimeoutError`` then. ``poll``: no limit on the file
    descriptor's number, unlike ``select``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the POST's deadline passed")
    poller = select.poll()
    poller.register(sock, events)
    poller.poll(math.ceil(remaining * 1000))


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """The TLS handshake, bounded as a whole by ``deadline`` (a blocking one
    would give each of its reads the full timeout)."""
    try:
        _io(lambda _: sock.do_handshake(), None, sock, deadline, select.POLLIN)
    except TimeoutError:
        raise TimeoutError("TLS handshake timed out") from None
