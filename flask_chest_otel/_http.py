"""HTTP details shared by the exporters that POST: URL checks, URLs fit for
a log line, and ``Retry-After``."""

from __future__ import annotations

import email.utils
import math
import re
import time
from datetime import timezone
from urllib.parse import urlsplit, urlunsplit


def check_url(url: object, what: str) -> str:
    """``url`` if it is an http(s) URL with a host and a valid port; else a
    ValueError naming ``what`` (the chest) and the URL."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what}: url must be an http(s) URL string, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        shown = redact_url(url)
        raise ValueError(f"{what}: malformed url {shown!r}: {redact_url(str(exc))}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{what}: url must be an http:// or https:// URL with a host, got {redact_url(url)!r}"
        )
    return url


def redact_url(text: str) -> str:
    """``text`` with any URL's user info and query replaced by ``***``, even
    when the URL is too malformed to parse."""
    text = re.sub(r"(//)[^/?#@\s]*@", r"\1***@", text)
    return re.sub(r"\?[^\s#'\"]*", "?***", text)


def safe_url(url: str, keep_query: bool = False) -> str:
    """The URL without user info (and without its query unless
    ``keep_query``), fit for a log line."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query if keep_query else "", ""))


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
