"""POSTs to one URL, as ``requests`` would send them, for less.

``requests`` is the public face of the custom writer (``headers``, ``params``,
``proxies``, ``verify``, a ``Session``), but a ``requests.Session.post`` costs
five times a raw keep-alive ``http.client`` POST (request preparation, an
environment look-up per call, urllib3's layers). So the request is prepared
once, by requests itself, into a byte template, and each POST is one
``sendall`` on a kept-alive socket and one answer read by ``_http_response``
(``http.client``'s reader would cost as much again: it parses headers with
``email.parser``).
Through a proxy, or with a user's ``Session``, the POST goes through requests.
``post_many`` pipelines several POSTs (the writer's ``pipeline`` option):
all are written in one ``sendall``, then their answers read in order, once
``probe_pipelining`` saw the endpoint answer two pipelined requests.

The direct path also bounds a whole send by ``timeout``: each socket
operation gets the time left, so a server answering a byte a second cannot
hold it longer.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from ._http import safe_url
from ._http_response import AnswerError, AnswerReader
from ._redact import Secrets

#: Longest excerpt of a response body or an error put in a log line.
EXCERPT = 200
#: The longest ``probe_pipelining`` waits for its two answers.
PROBE_SECONDS = 2.0

_FORBIDDEN_IN_HEADER = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server said: status, the headers we read, a body excerpt."""

    status: int
    retry_after: str | None
    location: str | None
    body: bytes


class SendError(Exception):
    """The POST failed before an answer; ``retry`` if it may succeed later.
    Its text is fit for a log line (no query, user info or header value)."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def check_headers(headers: Mapping[str, Any], what: str) -> tuple[dict[str, str], str | None]:
    """(``headers`` as str -> str, the name of one holding a line break or
    NUL). A value outside Latin-1, which HTTP cannot carry, raises a
    ValueError naming the header but never its value. A line break is let
    through here (the chest then drops what it would send, naming the header,
    as the InfluxDB chest does with such a token) and never reaches the wire."""
    checked: dict[str, str] = {}
    broken: str | None = None
    for key, value in headers.items():
        if not isinstance(key, str) or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", key):
            raise ValueError(f"{what}: {key!r} is not a valid HTTP header name")
        if isinstance(value, bytes):
            try:
                value = value.decode("latin-1")
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
                raise ValueError(f"{what}: header {key!r} cannot be sent") from None
        if not isinstance(value, str):
            raise ValueError(
                f"{what}: header {key!r} must be a str, got a {type(value).__name__}"
            )
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(
                f"{what}: header {key!r} holds a character outside Latin-1, which HTTP "
                "headers cannot carry (value not shown)"
            ) from None
        if _FORBIDDEN_IN_HEADER.search(value):
            broken = broken or key
            continue
        checked[key] = value
    return checked, broken


def reason(exc: BaseException, redact: Callable[[str], str]) -> str:
    """The innermost cause of a requests/urllib3 error, ``redact``-ed (then
    cut: the wrappers' texts are cut, never the cause's)."""
    inner: BaseException = exc
    for _ in range(8):
        nested = getattr(inner, "reason", None)
        if not isinstance(nested, BaseException):
            args = getattr(inner, "args", ())
            nested = args[0] if args and isinstance(args[0], BaseException) else None
        if nested is None:
            break
        inner = nested
    text = redact(str(inner))
    # urllib3 prefixes its connection object: "<...HTTPConnection object at 0x..>: "
    text = re.sub(r"^<[^>]*>: ", "", text)
    if len(text) > EXCERPT:
        text = text[: EXCERPT // 2] + " ... " + text[-EXCERPT // 2 :]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


class Sender:
    """POSTs bodies to one URL from one thread, one at a time or pipelined.

    Args:
        url, headers, params, proxies, verify: as in ``requests.post``; the
            environment's proxy variables, ``REQUESTS_CA_BUNDLE`` and
            ``~/.netrc`` are read once, here.
        timeout: seconds, or a ``(connect, read)`` pair; the whole send
            (connect, send, wait, read) is capped at the seconds, or at the
            pair's sum, on the direct path; through a proxy or a ``session``
            requests applies it to each socket operation.
        session: a ``requests.Session`` to send through (its adapters, auth,
            cookies); None sends directly.
        what: the chest's name, for messages.
        secrets: the exporter's; :attr:`secrets` adds what requests sends
            on its own (user info and ``~/.netrc`` as Basic auth, the
            session's headers and auth).
        unsendable_header: the name of a header that cannot be sent: every
            POST is then refused, without its value in the message.
    """

    def __init__(
        self,
        *,
        url: str,
        headers: Mapping[str, str],
        params: Any,
        proxies: Mapping[str, str] | None,
        verify: bool | str,
        timeout: float | tuple[float, float],
        session: requests.Session | None,
        what: str,
        secrets: Secrets | None = None,
        unsendable_header: str | None = None,
    ) -> None:
        self.unsendable_header = unsendable_header
        #: A pipelined ``post_many`` failed after some answers (the caller
        #: may stop pipelining: the endpoint may not answer pipelined POSTs).
        self.pipeline_broke = False
        prepared = requests.Request("POST", url, headers=dict(headers), params=params).prepare()
        netrc_auth = requests.utils.get_netrc_auth(url)
        if netrc_auth is not None and "Authorization" not in prepared.headers:
            prepared.prepare_auth(netrc_auth)
        self.url = str(prepared.url)
        self.safe_url = safe_url(url)
        # With what requests sends on its own: the user info's or
        # ~/.netrc's Basic auth (in ``prepared.headers``), a session's.
        sent: dict[str, Any] = dict(prepared.headers)
        user = password = None
        if session is not None:
            sent.update(session.headers)
            if isinstance(session.auth, tuple) and len(session.auth) == 2:
                user, password = map(str, session.auth)
        self.secrets = (secrets or Secrets()).union(
            Secrets.of(url=self.url, headers=sent, username=user, password=password)
        )
        self.timeout = timeout
        self.total_timeout = float(sum(timeout)) if isinstance(timeout, tuple) else float(timeout)
        self._connect_timeout = timeout[0] if isinstance(timeout, tuple) else float(timeout)
        environ_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self.verify = environ_bundle if verify is True and environ_bundle else verify
        environ_proxies = requests.utils.get_environ_proxies(url)
        self.proxies = {**environ_proxies, **dict(proxies or {})}
        self._headers = dict(prepared.headers)
        self._user_session = session
        self._session: requests.Session | None = None
        direct = session is None and not requests.utils.select_proxy(self.url, self.proxies)
        self.direct = direct
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._sock: socket.socket | None = None
        self._ssl_context = self._make_ssl_context() if direct and self._https else None
        if direct:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            default_port = 443 if self._https else 80
            host = f"[{self._host}]" if ":" in self._host else self._host
            host_header = host if self._port == default_port else f"{host}:{self._port}"
            lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}"]
            lines += ["Accept-Encoding: identity", "Connection: keep-alive"]
            names = {"host", "accept-encoding", "connection", "content-length"}
            lines += [f"{k}: {v}" for k, v in self._headers.items() if k.lower() not in names]
            self._head = "".join(line + "\r\n" for line in lines).encode("latin-1")
            self._probe = b"OPTIONS" + self._head[len(b"POST") :] + b"Content-Length: 0\r\n\r\n"
            self._heads: dict[tuple[tuple[str, str], ...], bytes] = {}
        else:
            self._session = self._new_session()

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

    def _new_session(self) -> requests.Session:
        if self._user_session is not None:
            return self._user_session
        session = requests.Session()
        session.trust_env = False  # the environment was read at construction
        return session

    # -- sending ---------------------------------------------------------------

    def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POSTs ``body`` with the extra ``headers`` (a Content-Type). Raises
        SendError when no answer came."""
        return self.post_many([(body, headers)])[0]

    def post_many(self, posts: Sequence[tuple[bytes, Mapping[str, str]]]) -> list[Answer]:
        """POSTs each ``(body, headers)``; on the direct path pipelined: all
        are written, then the answers read in order. Returns the answers of
        the first ones, all of them unless the server ended the connection
        or failed after answering some (the others were not answered: send
        them again). Raises SendError when the first got no answer."""
        if self.unsendable_header is not None:
            raise SendError(
                f"not sent: header {self.unsendable_header!r} holds a line break or NUL, "
                "which HTTP headers cannot carry (value not shown)",
                retry=False,
            )
        if not posts:
            return []
        if self._session is not None:
            return self._post_requests_many(posts)
        deadline = time.monotonic() + self.total_timeout
        message = b"".join(self._message(body, headers) for body, headers in posts)
        answers: list[Answer] = []
        try:
            sock = self._socket(deadline)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(message)
            reader = AnswerReader(sock, deadline)
            for _ in posts:
                raw = reader.read(EXCERPT)
                headers = raw.headers
                answers.append(
                    Answer(raw.status, headers.get("retry-after"), headers.get("location"),
                           raw.excerpt)
                )  # fmt: skip
                if raw.will_close:
                    break
            if raw.will_close or reader.leftover:
                self.close()
        except (OSError, AnswerError) as exc:
            self.close()
            if answers:
                self.pipeline_broke = True
                return answers
            if isinstance(exc, TimeoutError):
                raise SendError(f"no answer within {self.total_timeout:g} s", True) from None
            raise SendError(reason(exc, self.secrets.redact), True) from None
        return answers

    def probe_pipelining(self) -> bool | None:
        """Whether the endpoint answers pipelined requests: two ``OPTIONS``
        requests (safe, no body, the POSTs' headers) are written at once on
        the connection, and both must be answered, in order, within
        ``PROBE_SECONDS``, with the connection kept open (any status: what
        is tested is the framing). None when they could not be sent (the
        endpoint is down: ask again later). Always False through a proxy or
        a ``session``, where POSTs go one after the other."""
        if self._session is not None or self.unsendable_header is not None:
            return False
        deadline = time.monotonic() + min(self.total_timeout, PROBE_SECONDS)
        try:
            sock = self._socket(deadline)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(self._probe * 2)
        except OSError:
            self.close()
            return None
        try:
            reader = AnswerReader(sock, deadline)
            if not reader.read(0).will_close and not reader.read(0).will_close:
                if not reader.leftover:
                    return True
        except (OSError, AnswerError):
            pass
        self.close()
        return False

    def _message(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        key = tuple(headers.items())
        head = self._heads.get(key)
        if head is None:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
            head = self._heads[key] = self._head + extra + b"Content-Length: "
        return b"%s%d\r\n\r\n%s" % (head, len(body), body)

    def _socket(self, deadline: float) -> socket.socket:
        """The kept-alive connection, unless the server closed it meanwhile;
        else a new one."""
        if self._sock is not None and not _dropped(self._sock):
            return self._sock
        self.close()
        self._sock = self._connect(deadline)
        return self._sock

    def _connect(self, deadline: float) -> socket.socket:
        timeout = min(self._connect_timeout, max(deadline - time.monotonic(), 0.001))
        sock = socket.create_connection((self._host, self._port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(
                    sock, server_hostname=self._host, do_handshake_on_connect=False
                )
                _handshake(sock, deadline)
        except BaseException:
            sock.close()
            raise
        return sock

    def _post_requests_many(
        self, posts: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[Answer]:
        """Through requests, one POST after the other (it cannot pipeline)."""
        answers: list[Answer] = []
        for body, headers in posts:
            try:
                answers.append(self._post_requests(body, headers))
            except SendError:
                if answers:
                    return answers
                raise
        return answers

    def _post_requests(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        assert self._session is not None
        try:
            response = self._session.post(
                self.url,
                data=body,
                headers={**self._headers, **headers},
                proxies=self.proxies or None,
                verify=self.verify,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            raise SendError(reason(exc, self.secrets.redact), True) from None
        except requests.RequestException as exc:
            raise SendError(reason(exc, self.secrets.redact), False) from None
        return Answer(
            response.status_code,
            response.headers.get("Retry-After"),
            response.headers.get("Location"),
            response.content[:EXCERPT],
        )

    def close(self) -> None:
        """Closes the kept-alive connection (and our own session)."""
        self._close_socket()
        if self._session is not None and self._user_session is None:
            self._session.close()
            self._session = self._new_session()

    def after_fork_in_child(self) -> None:
        """Forgets the parent's connection: the child must not share its socket."""
        # Closing the child's copy of the descriptor leaves the parent's
        # connection open (no TLS close_notify is sent).
        self._close_socket()
        if self._session is not None and self._user_session is None:
            self._session = self._new_session()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


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
