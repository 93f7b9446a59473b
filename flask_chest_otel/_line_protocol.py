"""Where a row becomes a line of InfluxDB line protocol.

Every input gives a line InfluxDB's own parser accepts and reads back as
written, or no line at all; the rules, beyond the documented escaping
(measurement: comma and space; tag keys, tag values and field keys: comma,
equals sign and space; string field values: double quote and backslash):

- A newline, carriage return, tab or NUL in a name, key or value is written
  as the two characters ``\\n``, ``\\r``, ``\\t``, ``\\0`` (``Point`` does so
  for the first three), so one point is always one physical line and no
  character is taken for a separator (InfluxDB skips a NUL at the start of a
  field key, and tabs like spaces); also inside string fields,
  where line protocol would allow a raw newline but line-splitting readers
  (VictoriaMetrics, log shippers) would not.
- A backslash is ambiguous right before a comma, space or equals sign, or
  at the end (InfluxDB reads tags and field keys with different rules, and
  an unlucky backslash escapes the separator after it). There the run of
  backslashes is written doubled, and a trailing one also gets an escaped space: ``a\\,b`` gives
  ``a\\\\\\,b``, ``a\\`` gives ``a\\\\\\ ``. Every InfluxDB parser accepts
  these; InfluxDB stores such names with the backslash doubled (``a\\\\,b``)
  and the trailing case as ``a\\\\ ``, VictoriaMetrics as given. Text without
  that sequence round-trips exactly.
- A field key's backslashes right before a double quote get one more
  backslash: InfluxDB 1.x unescapes ``\\"`` in field keys (not in tag keys)
  and would store the key ``a\\"b`` as ``a"b``; written ``a\\\\"b`` it
  stores ``a\\"b``, as VictoriaMetrics does, so every field key round-trips.
  In a measurement InfluxDB 1.6 also reads ``\\"`` as ``"``, and a name
  written with two or more backslashes before a quote is stored but can no
  longer be queried; so there a run of backslashes before a double quote is
  written as one backslash: ``a\\"b`` and ``a\\\\"b`` are both stored as
  ``a"b`` by InfluxDB and as ``a\\"b`` by VictoriaMetrics (the one mapping
  that merges names, only names with a backslash before a quote).
- A measurement starting with ``#`` is written ``\\#...``: a line starting
  with ``#`` is a comment, silently dropped by the server.
- Tag and field keys InfluxDB refuses (``time``; ``_field`` and
  ``_measurement`` in 2.x) get a trailing underscore (``time_``).
- Empty tag keys and values are left out; so are empty field keys, NaN and
  infinities. A line left with no field, or with no measurement, is not
  written (``None``).
- Integers are written with ``i``, except outside the signed 64-bit range,
  where they are written as floats; bools as ``true``/``false``; floats in
  Python's shortest round-trip form without a trailing ``.0``.
- Text that cannot be encoded as UTF-8 (lone surrogates) is replaced by ``?``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping

from opentelemetry.sdk.metrics.export import NumberDataPoint

from ._names import ATTR_INDEX, ATTR_METHOD, ATTR_REQUEST_ID, ATTR_ROUTE
from ._schema import DECORATED_TAGS, FieldValue, decorated_row

_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": "\\0"}
_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ ", **_CONTROL})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", **_CONTROL})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\", **_CONTROL})

# str.translate looks every character up in a dict: testing for the few
# special characters first is several times faster on the usual clean text.
_KEY_SPECIAL = re.compile(r"[,= \n\r\t\x00\\]").search
_AMBIGUOUS_BACKSLASHES = re.compile(r"\\+(?=[,= ]|$)")
_BACKSLASHES_BEFORE_QUOTE = re.compile(r'\\+(?=")')
_STRING_SPECIAL = re.compile(r'["\\\n\r\t\x00]').search

_RESERVED_KEYS = frozenset({"time", "_field", "_measurement"})
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_CACHE_LIMIT = 10_000


def _double(match: re.Match[str]) -> str:
    return match.group() * 2


def _escape(text: str, table: dict[int, str]) -> str:
    if "\\" in text:
        escaped = _AMBIGUOUS_BACKSLASHES.sub(_double, text).translate(table)
        return escaped + "\\ " if text.endswith("\\") else escaped
    return text.translate(table)


def escape_measurement(name: str) -> str:
    escaped = _escape(name, _MEASUREMENT)
    if '\\"' in escaped:
        escaped = _BACKSLASHES_BEFORE_QUOTE.sub("\\\\", escaped)
    return "\\" + escaped if escaped.startswith("#") else escaped


def escape_key(key: str) -> str:
    """A tag key or field key, reserved keys renamed."""
    if key in _RESERVED_KEYS:
        key += "_"
    return _escape(key, _KEY)


def escape_field_key(key: str) -> str:
    """A field key: as a tag key, plus one backslash before a double quote."""
    escaped = escape_key(key)
    if '\\"' in escaped:
        escaped = _BACKSLASHES_BEFORE_QUOTE.sub(_one_more, escaped)
    return escaped


def _one_more(match: re.Match[str]) -> str:
    return match.group() + "\\"


def escape_tag_value(value: str) -> str:
    return _escape(value, _KEY) if _KEY_SPECIAL(value) else value


def format_field(value: FieldValue) -> str | None:
    """A field value as line protocol, or None if it cannot be written."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            return None
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        if _STRING_SPECIAL(value):  # type: ignore[arg-type]
            value = value.translate(_STRING)  # type: ignore[union-attr]
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return f"{int(value)}i"
        try:
            return format_field(float(value))
        except OverflowError:
            return None
    if isinstance(value, float):
        return format_field(float(value))
    if isinstance(value, str):
        return format_field(str(value))
    raise TypeError(f"a field value must be float, int, bool or str, not {kind.__name__}")


def to_bytes(line: str) -> bytes:
    try:
        return line.encode()
    except UnicodeEncodeError:
        return line.encode("utf-8", "replace")


class LineEncoder:
    """Builds lines, caching the escaped form of measurements and keys (few,
    and repeated on every point); values are escaped each time.

    ``default_tags`` are added to every line; a row's own tag of the same key
    wins.
    """

    def __init__(self, default_tags: Mapping[str, str] | None = None) -> None:
        self.default_tags = {str(key): str(value) for key, value in (default_tags or {}).items()}
        self._measurements: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        self._field_keys: dict[str, str] = {}
        # (variable, method, route) -> (text before the request ID, text after it)
        self._series: dict[tuple[str, str, str], tuple[str, str] | None] = {}

    def _measurement(self, name: str) -> str:
        cached = self._measurements.get(name)
        if cached is None:
            if len(self._measurements) >= _CACHE_LIMIT:
                self._measurements.clear()
            cached = self._measurements[name] = escape_measurement(name)
        return cached

    def _key(self, key: str) -> str:
        cached = self._keys.get(key)
        if cached is None:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            cached = self._keys[key] = escape_key(key)
        return cached

    def _field_key(self, key: str) -> str:
        cached = self._field_keys.get(key)
        if cached is None:
            if len(self._field_keys) >= _CACHE_LIMIT:
                self._field_keys.clear()
            cached = self._field_keys[key] = escape_field_key(key)
        return cached

    def line(
        self,
        measurement: str,
        tags: Mapping[str, str],
        fields: Mapping[str, FieldValue],
        time_unix_nano: int | None,
    ) -> str | None:
        """One line (no trailing newline), or None if nothing can be written."""
        if not measurement:
            return None
        key = self._key
        if self.default_tags:
            tags = {**self.default_tags, **tags}
        parts = [self._measurement(measurement)]
        for tag_key in sorted(tags):
            tag_value = tags[tag_key]
            if tag_key and tag_value:
                value = _escape(tag_value, _KEY) if _KEY_SPECIAL(tag_value) else tag_value
                parts.append(f",{key(tag_key)}={value}")
        separator = " "
        for field_key, field_value in fields.items():
            if not field_key:
                continue
            text = format_field(field_value)
            if text is None:
                continue
            parts.append(f"{separator}{self._field_key(field_key)}={text}")
            separator = ","
        if separator == " ":
            return None
        if time_unix_nano is not None:
            parts.append(f" {int(time_unix_nano)}")
        return "".join(parts)

    def decorated(self, metric_name: str, points: Iterable[NumberDataPoint]) -> Iterator[str]:
        """The lines of a decorated variable's points: the same lines as
        ``line(*decorated_row(...))`` gives, built from a cached series text
        around the request ID when a point carries exactly the decorator's
        three string attributes (and its index; the common case)."""
        series = self._series
        special = _KEY_SPECIAL
        for point in points:
            attributes = point.attributes or {}
            request_id = attributes.get(ATTR_REQUEST_ID)
            method = attributes.get(ATTR_METHOD)
            route = attributes.get(ATTR_ROUTE)
            value = point.value
            if (
                (len(attributes) == 3 or (len(attributes) == 4 and ATTR_INDEX in attributes))
                and type(request_id) is str
                and type(method) is str
                and type(route) is str
                and request_id
                and metric_name
                and (type(value) is float or type(value) is int)
            ):
                number = float(value)
                if number - number != 0.0:  # NaN or an infinity: no field to write
                    continue
                cache_key = (metric_name, method, route)
                if cache_key in series:
                    around = series[cache_key]
                else:
                    around = self._decorated_series(metric_name, method, route)
                    if len(series) >= _CACHE_LIMIT:
                        series.clear()
                    series[cache_key] = around
            else:
                around = None
            if around is not None:
                assert type(request_id) is str  # checked above; for the type checker
                escaped = _escape(request_id, _KEY) if special(request_id) else request_id
                text = repr(number)
                if text.endswith(".0"):
                    text = text[:-2]
                yield f"{around[0]}{escaped}{around[1]}{text} {point.time_unix_nano}"
            else:
                row = decorated_row(metric_name, point)
                line = self.line(row.measurement, row.tags, row.fields, row.time_unix_nano)
                if line is not None:
                    yield line

    def _decorated_series(
        self, metric_name: str, method: str, route: str
    ) -> tuple[str, str] | None:
        # Private-use characters: no escaping touches them.
        marker = "\ue000flask-chest-request-id\ue000"
        tags = {
            DECORATED_TAGS[ATTR_REQUEST_ID]: marker,
            DECORATED_TAGS[ATTR_METHOD]: method,
            DECORATED_TAGS[ATTR_ROUTE]: route,
        }
        line = self.line(metric_name, tags, {"value": 0.0}, None)
        if line is None or line.count(marker) != 1:
            return None  # a custom tag holds the marker: no template
        before, after = line.split(marker)
        return before, after[: -len("0")]
