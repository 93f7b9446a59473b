"""HTTP details shared by the exporters that POST: URL checks, URLs fit for
a log line, and ``Retry-After``."""

from __future__ import annotations

import email.utils
import math
import time
from datetime import timezone
from urllib.parse import urlsplit

from ._redact import shown_url


def check_url(url: object, what: str) -> str:
    """``url`` if it is an http(s) URL with a host and a valid port; else a
    ValueError naming ``what`` (the chest) and the URL, shown without its
    user info or query values (:func:`~flask_chest_otel._redact.shown_url`)."""
    if not isinstance(url, str) or not url:
        # Not its repr: bytes or an object may hold user info as well.
        got = "an empty string" if isinstance(url, str) else f"a {type(url).__name__}"
        raise ValueError(f"{what}: url must be an http(s) URL string, got {got}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"{what}: malformed url {shown_url(url)!r}: {_url_problem(exc)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{what}: url must be an http:// or https:// URL with a host, got {shown_url(url)!r}"
        )
    return url


def _url_problem(exc: ValueError) -> str:
    """What :func:`urllib.parse.urlsplit` found wrong, in words of our own:
    its messages quote parts of the netloc (a port made of a password's
    first characters, say)."""
    text = str(exc)
    if "Port" in text:
        return "the port is not a number from 0 to 65535"
    if "IPv6" in text or "IPv4" in text:
        return "the host is not a valid IP address in brackets"
    if "NFKC" in text:
        return "the host holds characters that change under NFKC normalization"
    return "it cannot be parsed"


def safe_url(url: str, keep_query: bool = False) -> str:
    """The URL without user info (and without its query unless
    ``keep_query``; query values are never shown), fit for a log line."""
    shown = shown_url(url)
    return shown if keep_query else shown.partition("?")[0]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an
    HTTP date (a past date gives 0). None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)
