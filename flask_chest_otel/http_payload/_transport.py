"""How a payload's POST reaches the URL: the :class:`Transport` interface and
its two implementations, :class:`DirectTransport` (``_direct``: our own
kept-alive connections, answers parsed by ``http.client``) and
:class:`RequestsTransport` (through ``requests``: a proxy, or a user's
``Session``). :func:`make_transport` picks one.

``requests`` is the public face of the custom writer (``headers``,
``params``, ``proxies``, ``verify``, a ``Session``), but a
``requests.Session.post`` costs five times a raw keep-alive ``http.client``
POST: so the request is prepared once, by requests itself, and the direct
transport writes each POST from a byte template.

Both send a batch's POSTs at once over up to ``max_connections``
connections, one request in flight on each (``_lanes``): never pipelined,
as RFC 9112 (section 9.3.2) advises for POSTs.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .._http import safe_url
from .._redact import Secrets
from ._lanes import Lanes

#: Longest excerpt of a response body or an error put in a log line.
EXCERPT = 200
#: The header that lets an endpoint drop a repeated POST (IETF httpapi draft).
IDEMPOTENCY_KEY = "Idempotency-Key"

_FORBIDDEN_IN_HEADER = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server said: status, the headers we read, a body excerpt."""

    status: int
    retry_after: str | None
    location: str | None
    body: bytes


class SendError(Exception):
    """The POST got no answer; ``retry`` if it may succeed later. Its text is
    fit for a log line (no query, user info or header value)."""

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
            raise ValueError(f"{what}: header {key!r} must be a str, got a {type(value).__name__}")
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


class Post(NamedTuple):
    """One POST to make: its body, whether it is JSON (the transport adds
    the Content-Type unless the user's headers give one) and its
    ``Idempotency-Key``."""

    body: bytes
    is_json: bool
    key: str


#: What became of one POST: the server's answer, or why there was none.
Outcome = Answer | SendError
#: A POST of a batch not started, as another one's answer asked to wait.
NOT_SENT = SendError("not sent: another POST of the batch was asked to wait", True)
#: A POST whose sending raised (a bug): retried by the policy.
FAILED = SendError("unexpected error while posting", True)


class Transport(ABC):
    """Sends POSTs to one URL, as ``requests.post`` would, each batch's at
    once over up to ``max_connections`` connections.

    Args:
        url, headers, params, proxies, verify: as in ``requests.post``; the
            environment's proxy variables, ``REQUESTS_CA_BUNDLE`` and
            ``~/.netrc`` are read once, here.
        timeout: seconds, or a ``(connect, read)`` pair.
        what: the chest's name, for messages and thread names.
        secrets: the exporter's; :attr:`secrets` adds what requests sends
            on its own (user info and ``~/.netrc`` as Basic auth, a
            session's headers and auth).
        unsendable_header: the name of a header that cannot be sent: every
            POST is then refused, without its value in the message.
        max_connections: at most this many POSTs in flight at once.
        session: a ``requests.Session`` (``RequestsTransport`` only).
    """

    #: Whether POSTs go on our own connections (not through requests).
    direct = False

    def __init__(
        self,
        *,
        url: str,
        headers: Mapping[str, str],
        params: Any,
        proxies: Mapping[str, str] | None,
        verify: bool | str,
        timeout: float | tuple[float, float],
        what: str,
        secrets: Secrets | None = None,
        unsendable_header: str | None = None,
        max_connections: int = 1,
        session: requests.Session | None = None,
    ) -> None:
        self.what = what
        self.unsendable_header = unsendable_header
        self.max_connections = max_connections
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
        self.connect_timeout = timeout[0] if isinstance(timeout, tuple) else float(timeout)
        environ_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self.verify = environ_bundle if verify is True and environ_bundle else verify
        self.proxies = decide_proxies(self.url, proxies, session)
        self.headers = dict(prepared.headers)
        has_type = any(key.lower() == "content-type" for key in self.headers)
        self.json_headers = {} if has_type else {"Content-Type": "application/json"}

    def post_many(
        self,
        posts: Sequence[Post],
        deadline: float | None = None,
        stop: Callable[[Outcome], bool] | None = None,
    ) -> list[Outcome]:
        """Makes each POST, at most ``max_connections`` at once, and returns
        what became of each, in order. ``deadline`` (monotonic) caps them
        all, as does ``timeout`` each. Once an outcome satisfies ``stop``
        (the server asks to wait), POSTs not yet started are not sent:
        their outcome is :data:`NOT_SENT`."""
        if self.unsendable_header is not None:
            error = SendError(
                f"not sent: header {self.unsendable_header!r} holds a line break or NUL, "
                "which HTTP headers cannot carry (value not shown)",
                retry=False,
            )
            return [error] * len(posts)
        return self._post_many(posts, deadline, stop)

    @abstractmethod
    def _post_many(
        self, posts: Sequence[Post], deadline: float | None, stop: Callable[[Outcome], bool] | None
    ) -> list[Outcome]: ...

    @abstractmethod
    def start(self) -> None:
        """Starts the threads that carry POSTs beside the caller's (with the
        exporter's own thread: Python 3.12+ starts none at interpreter exit)."""

    @abstractmethod
    def close(self) -> None:
        """Closes every connection (the transport may still be used)."""

    @abstractmethod
    def after_fork_in_child(self) -> None:
        """Forgets the parent's connections: the child must not share them."""


def decide_proxies(
    url: str, proxies: Mapping[str, str] | None, session: requests.Session | None = None
) -> dict[str, str]:
    """The proxies requests would use for ``session.post(url, proxies=...)``
    (a new ``Session`` if None), decided as ``Session.request`` does: the
    environment's (``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, with
    ``proxies["no_proxy"]`` honoured) only if ``session.trust_env``, never
    over one given; then the session's own ``proxies`` under those given, and
    None values dropped. ``requests.utils.select_proxy(url, ...)`` of the
    result is the proxy."""
    chosen = dict(proxies or {})
    if session is None or session.trust_env:
        no_proxy = chosen.get("no_proxy")
        for scheme, proxy in requests.utils.get_environ_proxies(url, no_proxy=no_proxy).items():
            chosen.setdefault(scheme, proxy)
    # requests' ``merge_setting``: the session's (``requests.post`` makes one,
    # without proxies), then those given; a None unsets after the environment's
    # were added, so ``{"http": None}`` leaves ``ALL_PROXY`` in force.
    merged = {**(session.proxies if session is not None else {}), **chosen}
    return {key: value for key, value in merged.items() if value is not None}


def make_transport(**settings: Any) -> Transport:
    """The direct transport, unless the POSTs must go through requests (a
    ``session`` given, or a proxy for the URL)."""
    from ._direct import DirectTransport

    session = settings.get("session")
    url = settings["url"]
    if session is None and not requests.utils.select_proxy(
        url, decide_proxies(url, settings.get("proxies"))
    ):
        settings.pop("session", None)
        return DirectTransport(**settings)
    return RequestsTransport(**settings)


class RequestsTransport(Transport):
    """POSTs through ``requests``: through a proxy, or a user's ``Session``
    (its adapters, auth, cookies), shared by up to ``max_connections``
    threads at once (urllib3's pool is thread-safe)."""

    def __init__(self, *, session: requests.Session | None = None, **settings: Any) -> None:
        super().__init__(session=session, **settings)
        self._user_session = session
        self._session = self._new_session()
        # A session trusting the environment adds its proxies again on each
        # POST, and its own ``proxies`` under those given: every key
        # ``select_proxy`` reads for the URL is given, None (unset) where
        # ``decide_proxies`` chose none, so the proxy stays the one decided.
        parts = urlsplit(self.url)
        consulted = [parts.scheme, "all"]
        consulted += [f"{key}://{parts.hostname}" for key in consulted]
        # (Any: requests takes None values, which its type stubs do not say.)
        self._proxies: dict[str, Any] = {**dict.fromkeys(consulted), **self.proxies}
        self._lanes: Lanes[None] = Lanes(
            self.max_connections, lambda index: None, lambda state: None, self.what
        )

    def _new_session(self) -> requests.Session:
        if self._user_session is not None:
            return self._user_session
        session = requests.Session()
        session.trust_env = False  # the environment was read at construction
        adapter = HTTPAdapter(pool_maxsize=self.max_connections)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _post_many(
        self, posts: Sequence[Post], deadline: float | None, stop: Callable[[Outcome], bool] | None
    ) -> list[Outcome]:
        return self._lanes.run(lambda state, post: self._post(post), posts, FAILED, stop, NOT_SENT)

    def _post(self, post: Post) -> Outcome:
        headers = {**self.headers, IDEMPOTENCY_KEY: post.key}
        if post.is_json:
            headers.update(self.json_headers)
        try:
            response = self._session.post(
                self.url,
                data=post.body,
                headers=headers,
                proxies=self._proxies,
                verify=self.verify,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            return SendError(reason(exc, self.secrets.redact), True)
        except requests.RequestException as exc:
            return SendError(reason(exc, self.secrets.redact), False)
        return Answer(
            response.status_code,
            response.headers.get("Retry-After"),
            response.headers.get("Location"),
            response.content[:EXCERPT],
        )

    def start(self) -> None:
        self._lanes.start()

    def close(self) -> None:
        self._lanes.close()
        if self._user_session is None:
            self._session.close()
            self._session = self._new_session()

    def after_fork_in_child(self) -> None:
        self._lanes.after_fork_in_child()
        if self._user_session is None:
            self._session = self._new_session()
