"""What an InfluxDB-compatible server's refusal says about each line.

A 400 or 422 that is not about authorisation or a missing bucket is about
the data. The server may name the lines it refused, in several dialects:

- InfluxDB 2.x: ``unable to parse '<line>': <reason>``, the first bad line
  only, nothing written;
- InfluxDB 2.x and Cloud, newer: ``failed to parse line protocol: errors
  encountered on line(s): line 7: ...; line 12: ...``, 1-based numbers,
  nothing written;
- InfluxDB 1.x: ``partial write: unable to parse '<line>': ... dropped=N``
  (one ``unable to parse`` per bad line), the other lines written;
- InfluxDB 3: ``{"error": "partial write of line protocol occurred", "data":
  [{"original_line", "line_number", "error_message"}, ...]}``, the other
  lines written;
- anything else (a proxy's bare 400): nothing named.

:func:`judge_refusal` turns each into a :class:`Settlement`: the named lines
refused, the others delivered where the server wrote them, else sent again
(a line written twice overwrites itself); with nothing named, the batch is
suspect and the drain narrows it down.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._delivery import Fate, Settlement, suspect

_CONFLICT = re.compile(
    r'field type conflict: input field "(?P<field>.*?)" on measurement "(?P<measurement>.*?)" '
    r"is type (?P<sent>\w+), already exists as type (?P<stored>\w+)"
)
_UNABLE = re.compile(r"unable to parse '(?P<line>(?:[^'\\]|\\.)*)'")
_DROPPED = re.compile(r"dropped=(\d+)")
_LINE_NUMBERS = re.compile(r"\bline (\d+)\b")
_ENCOUNTERED = "errors encountered on line(s)"
#: Longest server message kept for a log line.
MAX_MESSAGE = 500

Redact = Callable[[str], str]


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class Conflict:
    """A field type conflict the server named: ``field`` of ``measurement``
    is stored as ``stored``, and a line of the batch sent it as ``sent``."""

    measurement: str
    field: str
    sent: str
    stored: str


def server_message(body: Any, redact: Redact = _same) -> str:
    """The message of an InfluxDB error body: 2.x ``{"code","message"}``,
    1.x and 3.x ``{"error"}``, else the text; ``redact``-ed once decoded
    (JSON escapes may hide a secret from a scrub of the raw body), then cut
    at :data:`MAX_MESSAGE`."""
    text = _decoded(body)
    return _cut(redact(_message_of(_json(text), text)))


def _message_of(document: Any, text: str) -> str:
    """The whole message of a decoded body (``document``) or its ``text``."""
    if isinstance(document, dict):
        return str(document.get("message") or document.get("error") or text)
    return text


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def conflict_of(message: str) -> Conflict | None:
    """The field type conflict a refusal names, if any."""
    match = _CONFLICT.search(message)
    if match is None:
        return None
    return Conflict(
        match.group("measurement"), match.group("field"), match.group("sent"), match.group("stored")
    )


def judge_refusal(
    body: Any, lines: Sequence[bytes], message: str, redact: Redact = _same
) -> Settlement:
    """The settlement of a 400 or 422 about the data of ``lines`` (the batch
    as sent, in order). ``message`` is what the log says of the batch; the
    reasons quoted from the body are ``redact``-ed."""
    text = _decoded(body)
    document = _json(text)
    partial = _influxdb3_partial(document, lines, redact)
    if partial is not None:
        return _named(partial, Fate.DELIVERED, message)
    full = _message_of(document, text)
    said = _cut(redact(full))
    if _ENCOUNTERED in full:
        numbers = _LINE_NUMBERS.findall(full.split(_ENCOUNTERED, 1)[1])
        named = {int(number) - 1: said for number in numbers if 0 < int(number) <= len(lines)}
        if named:
            return _named(named, Fate.RESEND, message)
        return suspect(message)
    quoted = _UNABLE.findall(full)
    if quoted:
        named = _indices_of(quoted, lines, said)
        if named:
            dropped = _DROPPED.search(full)
            # 1.x wrote the others ("partial write"); 2.x wrote nothing.
            rest = (
                Fate.DELIVERED
                if dropped is not None and int(dropped.group(1)) == len(named)
                else Fate.RESEND
            )
            return _named(named, rest, message)
    return suspect(message)


def _named(named: dict[int, str], rest: Fate, message: str) -> Settlement:
    return Settlement(rest, dict.fromkeys(named, Fate.REFUSED), message=message, reasons=named)


def _indices_of(quoted: list[str], lines: Sequence[bytes], said: str) -> dict[int, str]:
    """The batch indices of the lines a server quoted (each the first line
    of the batch equal to it and not yet named)."""
    positions: dict[bytes, list[int]] = {}
    wanted = {text.replace("\\'", "'").encode("utf-8", "replace") for text in quoted}
    for index, line in enumerate(lines):
        if line in wanted:
            positions.setdefault(line, []).append(index)
    named: dict[int, str] = {}
    for text in quoted:
        line = text.replace("\\'", "'").encode("utf-8", "replace")
        candidates = positions.get(line)
        if candidates:
            named[candidates.pop(0)] = said
    return named


def _influxdb3_partial(
    document: Any, lines: Sequence[bytes], redact: Redact
) -> dict[int, str] | None:
    """InfluxDB 3's list of refused lines, by batch index; None if the body
    is not one."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return None
    if "partial write" not in str(document.get("error", "")):
        return None
    named: dict[int, str] = {}
    by_line = {line: index for index, line in reversed(list(enumerate(lines)))}
    for refusal in document["data"]:
        if not isinstance(refusal, dict):
            return None
        reason = redact(str(refusal.get("error_message") or "refused"))[:MAX_MESSAGE]
        original = refusal.get("original_line")
        index = by_line.get(original.encode()) if isinstance(original, str) else None
        number = refusal.get("line_number")
        if index is None and isinstance(number, int) and 0 < number <= len(lines):
            index = number - 1
        if index is None:
            return None  # a line we cannot place: let the drain narrow it down
        named[index] = reason
    return named or None


def _decoded(body: Any) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return str(body or "").strip()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
