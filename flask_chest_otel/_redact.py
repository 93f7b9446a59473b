"""The chest's own secrets, and texts scrubbed of them before they are logged
or raised.

A server may echo what it received (a proxy's or a debug server's error page
quotes the request line, the headers, the ``Authorization`` header decoded),
and a user's payload generator may name a key in its exception. Every such
text goes through :meth:`Secrets.redact` (or :meth:`Secrets.redact_exception`)
of the exporter that received it, which replaces every form of every secret
the exporter was configured with by ``***``.

What is a secret, and in which forms, is decided once, in :meth:`Secrets.of`:

- the token and the password; a username only within ``user:password``
  (a username alone is named in messages on purpose: "check username 'admin'");
- every user-given header value, except those of :data:`NON_SECRET_HEADERS`
  (``Content-Type: application/json`` names a format, not a key); of an
  ``Authorization``-like value also the credentials after the scheme word,
  and of a ``Basic`` one the decoded ``user:password`` and password;
- a URL's user and password and each of its query values, and ``params``
  values;
- each of these as given, percent-encoded (``quote`` and ``quote_plus``),
  percent-decoded, in base64 (standard, URL-safe, unpadded; so
  ``Basic base64(user:password)`` too), JSON- and ``repr``-escaped, and as its
  UTF-8 bytes read as Latin-1 or its Latin-1 bytes read as UTF-8.

A value, or a form of it, shorter than :data:`MIN_SECRET_LENGTH` characters
is not treated as a secret: masking every ``on`` or ``42`` of a message would
make it unreadable, and so short a value gives no protection anyway.

This module imports only the standard library: any part of the package may
use it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import traceback
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus, urlsplit

#: What a secret is replaced with.
MASK = "***"
#: Values (and forms of them) shorter than this are not treated as secrets.
MIN_SECRET_LENGTH = 4
#: Headers whose values are formats or software names, not secrets (lower case).
NON_SECRET_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "connection",
        "content-encoding",
        "content-type",
        "user-agent",
    }
)

_SCHEME_AND_CREDENTIALS = re.compile(r"\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s+(\S.*?)\s*")


class Secrets:
    """The secrets of one exporter, and :meth:`redact` to scrub a text of them.

    Built once, with :meth:`of`; the forms of every secret make one compiled
    regular expression (an alternation, longest first), so :meth:`redact`
    costs one scan of a text that holds none. Its ``repr`` never shows a
    value.
    """

    __slots__ = ("__weakref__", "_forms", "_pattern")

    def __init__(self, values: Iterable[str] = ()) -> None:
        """``values``: the secrets as given; their forms are derived here."""
        self._forms: tuple[str, ...] = ()
        self._pattern: re.Pattern[str] | None = None
        self._set_forms({form for value in values for form in _forms_of(value)})

    def _set_forms(self, forms: set[str]) -> None:
        # Longest first: where two forms start at one place, the longer wins.
        kept = sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=lambda f: (-len(f), f))
        self._forms = tuple(kept)
        self._pattern = re.compile("|".join(map(re.escape, kept))) if kept else None

    @classmethod
    def of(
        cls,
        *,
        url: str | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        headers: Mapping[str, Any] | None = None,
        params: Any = None,
    ) -> Secrets:
        """The secrets of an exporter configured with these arguments (see the
        module's docstring for what each contributes).

        :param url: the endpoint; its user info and query values are secrets.
        :param token: an API token.
        :param username: with ``password``, the ``user:password`` pair.
        :param password: a password.
        :param headers: headers sent with every request.
        :param params: query parameters, as :func:`requests.post` takes them
            (a mapping, a sequence of pairs, or a query string).
        """
        values: list[str] = []
        if url:
            values += _url_secrets(url)
        if token:
            values.append(token)
        if password:
            values.append(password)
            if username:
                values.append(f"{username}:{password}")
        for name, value in (headers or {}).items():
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if str(name).lower() not in NON_SECRET_HEADERS and isinstance(value, str):
                values += _header_secrets(value)
        values += _params_secrets(params)
        return cls(values)

    def union(self, other: Secrets) -> Secrets:
        """The secrets of both."""
        union = Secrets()
        union._set_forms({*self._forms, *other._forms})
        return union

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return f"Secrets({len(self._forms)} forms)"

    def redact(self, text: str, *, truncated: bool = False) -> str:
        """``text`` with every form of every secret replaced by :data:`MASK`.

        Replaced again until none is left, so that no secret is made anew of
        a mask and its neighbours. ``truncated``: the text was cut at its end
        (a body excerpt), so a trailing start of a secret (at least
        :data:`MIN_SECRET_LENGTH` characters) is masked too.
        """
        pattern = self._pattern
        if pattern is None:
            return text
        text, replaced = pattern.subn(MASK, text)
        while replaced:
            text, replaced = pattern.subn(MASK, text)
        if truncated:
            text = self._mask_cut_end(text)
        return text

    def redact_exception(self, exc: BaseException) -> str:
        """``exc``'s type, message and traceback (with its causes), formatted
        as :func:`traceback.format_exception` does, then redacted, and any
        lone surrogate escaped (a log handler could not write it): log this
        instead of calling :meth:`logging.Logger.exception`."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        text = self.redact(text.rstrip("\n"))
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

    def _mask_cut_end(self, text: str) -> str:
        """``text`` with its longest ending that starts a secret masked (a
        character cut in its UTF-8 bytes, decoded as U+FFFD, aside)."""
        kept = text.rstrip("\ufffd")
        longest = 0
        for form in self._forms:
            for length in range(min(len(form) - 1, len(kept)), longest, -1):
                if length >= MIN_SECRET_LENGTH and kept.endswith(form[:length]):
                    longest = length
                    break
        return kept[:-longest] + MASK if longest else text


def shown_url(url: str) -> str:
    """``url`` fit for a message: without user info or fragment, each query
    value shown as :data:`MASK`.

    A password holding ``/``, ``?`` or ``#`` unencoded ends the netloc early
    (``user:12/34@host`` parses as host ``user``, port 12): where an ``@``
    follows the netloc, the netloc is masked too, and what precedes the
    ``@`` in the path. A URL too malformed to parse is shown with all up to
    its last ``@`` masked.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return _shown_malformed(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    path = parts.path
    if "@" in f"{path}{parts.query}{parts.fragment}":
        netloc = MASK
        if "@" in path:
            path = f"/{MASK}@{path.rpartition('@')[2]}"
    scheme = f"{parts.scheme}:" if parts.scheme else ""
    slashes = "//" if url[len(scheme) :].startswith("//") else ""
    shown = scheme + slashes + netloc + path
    return shown + (f"?{_masked_query(parts.query)}" if parts.query else "")


def _shown_malformed(url: str) -> str:
    scheme, slashes, rest = url.partition("//")
    if not slashes:
        scheme, rest = "", url
    if "@" in rest:
        rest = MASK + "@" + rest.rpartition("@")[2]
    rest, question, query = rest.partition("#")[0].partition("?")
    return scheme + slashes + rest + (f"?{_masked_query(query)}" if question else "")


def _masked_query(query: str) -> str:
    pieces = []
    for piece in query.split("&"):
        name, equals, _value = piece.partition("=")
        pieces.append(f"{name}={MASK}" if equals else MASK if piece else "")
    return "&".join(pieces)


def _url_secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        username, password, query = parts.username, parts.password, parts.query
    except ValueError:  # pragma: no cover - urlsplit fails only on the port or brackets
        return []
    values = []
    if username:
        values += [username, unquote(username)]
    if password:
        values += [password, unquote(password)]
        values += [f"{username or ''}:{password}", f"{unquote(username or '')}:{unquote(password)}"]
    for piece in query.split("&"):
        name, equals, value = piece.partition("=")
        values += [value, unquote_plus(value)] if equals else [name, unquote_plus(name)]
    return values


def _header_secrets(value: str) -> list[str]:
    values = [value]
    scheme_and_credentials = _SCHEME_AND_CREDENTIALS.fullmatch(value)
    if scheme_and_credentials is not None:
        scheme, credentials = scheme_and_credentials.groups()
        values.append(credentials)
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(credentials, validate=True).decode("utf-8")
            except ValueError:  # not base64, or not UTF-8 (binascii.Error is a ValueError)
                pair = ""
            if pair:
                values += [pair, pair.partition(":")[2]]
    return values


def _params_secrets(params: Any) -> list[str]:
    if params is None:
        return []
    if isinstance(params, bytes):
        params = params.decode("utf-8", "replace")
    if isinstance(params, str):
        return [value or name for name, value in parse_qsl(params, keep_blank_values=True)]
    pairs = params.items() if isinstance(params, Mapping) else params
    values: list[str] = []
    try:
        for pair in pairs:
            _name, value = pair
            many = value if isinstance(value, (list, tuple)) else [value]
            values += [_text(one) for one in many if one is not None]
    except (TypeError, ValueError):  # not pairs: requests would refuse them too
        pass
    return values


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _forms_of(value: str) -> Iterator[str]:
    """``value`` and the forms in which a server or a traceback may show it."""
    if len(value) < MIN_SECRET_LENGTH:
        return
    yield value
    yield quote(value, safe="")
    yield quote(value)
    yield quote_plus(value, safe="")
    yield quote_plus(value)
    yield unquote(value)
    yield unquote_plus(value)
    yield json.dumps(value)[1:-1]
    yield json.dumps(value, ensure_ascii=False)[1:-1]
    yield value.replace("/", "\\/")
    yield repr(value)[1:-1]
    raw = value.encode("utf-8")
    yield raw.decode("latin-1")
    try:
        yield value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        pass
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        yield text
        yield text.rstrip("=")


#: Loggers of the libraries we send through, whose DEBUG lines quote what we
#: send: urllib3 logs each request line with its query (``params``).
THIRD_PARTY_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry")


class _ScrubbingFilter(logging.Filter):
    """Scrubs the secrets of every live exporter from the records of the
    loggers we do not own (``THIRD_PARTY_LOGGERS``). Called only for records
    those loggers emit (at DEBUG, only when DEBUG is on)."""

    def __init__(self) -> None:
        super().__init__()
        self.all: weakref.WeakSet[Secrets] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        every = list(self.all)
        if not every:
            return True
        text = record.getMessage()
        scrubbed = text
        for secrets in every:
            scrubbed = secrets.redact(scrubbed)
        if scrubbed != text:
            record.msg, record.args = scrubbed, None
        return True


_FILTER = _ScrubbingFilter()


def guard_third_party_logs(secrets: Secrets) -> None:
    """Keeps ``secrets`` out of the log lines of the libraries an exporter
    sends through, for as long as ``secrets`` lives."""
    if not secrets:
        return
    if not _FILTER.all:
        for name in THIRD_PARTY_LOGGERS:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
    _FILTER.all.add(secrets)
