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
  (VictoriaMetrics, log shippers) would not. (So a name holding a newline
  is stored as the one holding a backslash and ``n``.)
- A backslash means different things to different readers where it is
  next to another backslash, before a separator (comma, space, equals sign;
  in a measurement also a double quote), before a character written as an
  escape (newline...), or at the end: InfluxDB 1.6 stores such a measurement
  with no queryable field, reads ``\\=`` and ``\\"`` as escapes in some
  places and not in others, and VictoriaMetrics collapses ``\\\\`` to one
  backslash, so distinct names would merge. There each backslash is written
  as ``⧵`` (U+29F5, REVERSE SOLIDUS OPERATOR): ``a\\`` is stored as ``a⧵``,
  ``a\\,b`` as ``a⧵,b``, ``a\\\\b`` as ``a⧵⧵b`` -- the same by InfluxDB 1.6
  and VictoriaMetrics, every point queryable, distinct names distinct (unless
  one already holds ``⧵`` where the other holds a backslash). A measurement
  starting with a backslash before ``#`` is written with ``⧵`` too. Any other
  backslash (``a\\b``) round-trips exactly.
- A field key's lone backslash right before a double quote gets one more
  backslash: InfluxDB 1.x unescapes ``\\"`` in field keys (not in tag keys)
  and would store the key ``a\\"b`` as ``a"b``; written ``a\\\\"b`` it
  stores ``a\\"b``, as VictoriaMetrics does.
- A measurement starting with ``#`` is written ``\\#...`` (a line starting
  with ``#`` is a comment, silently dropped by the server); both servers
  store it as ``\\#...``.
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

from .._names import ATTR_INDEX, ATTR_METHOD, ATTR_REQUEST_ID, ATTR_ROUTE, ATTR_STATUS_CODE
from .._records import (
    TAGS,
    TIME_UNIX_NANO,
    VALUE,
    FlatAttributes,
    Record,
    common_layout,
    record_point,
    trace_of,
)
from .._trace import point_trace
from ._rows import DECORATED_TAGS, FieldValue, decorated_row

_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": "\\0"}
_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ ", **_CONTROL})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", **_CONTROL})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\", **_CONTROL})

# str.translate looks every character up in a dict: testing for the few
# special characters first is several times faster on the usual clean text.
_KEY_SPECIAL = re.compile(r"[,= \n\r\t\x00\\]").search
#: Written instead of a backslash no escaping carries the same to every reader.
SUBSTITUTE = "\u29f5"  # REVERSE SOLIDUS OPERATOR
_AMBIGUOUS_BACKSLASHES = re.compile(r"\\{2,}|\\+(?=[,= \n\r\t\x00]|$)")
_MEASUREMENT_AMBIGUOUS = re.compile(r'\\{2,}|\\+(?=[,= "\n\r\t\x00]|$)|^\\+(?=#)')
_BACKSLASH_BEFORE_QUOTE = re.compile(r'\\(?=")')
_STRING_SPECIAL = re.compile(r'["\\\n\r\t\x00]').search

_RESERVED_KEYS = frozenset({"time", "_field", "_measurement"})
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_CACHE_LIMIT = 10_000

#: A decorated record's series: (variable, method, route, status code, tags).
SeriesKey = tuple[str, str, str, int, FlatAttributes]


def _substitute(match: re.Match[str]) -> str:
    return SUBSTITUTE * len(match.group())


def _escape(
    text: str, table: dict[int, str], ambiguous: re.Pattern[str] = _AMBIGUOUS_BACKSLASHES
) -> str:
    if "\\" in text:
        text = ambiguous.sub(_substitute, text)
    return text.translate(table)


def escape_measurement(name: str) -> str:
    escaped = _escape(name, _MEASUREMENT, _MEASUREMENT_AMBIGUOUS)
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
        escaped = _BACKSLASH_BEFORE_QUOTE.sub(_one_more, escaped)
    return escaped


def _one_more(match: re.Match[str]) -> str:
    return match.group() + "\\"


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


def _series_line(
    around: tuple[str, str],
    request_id: str,
    value_text: str,
    trace: tuple[str, str] | None,
    time_unix_nano: int,
) -> str:
    """A decorated variable's line from its series' cached text around the
    request ID (``LineEncoder._around``), its field value and trace."""
    escaped = _escape(request_id, _KEY) if _KEY_SPECIAL(request_id) else request_id
    if trace is not None:
        value_text += f',trace_id="{trace[0]}",span_id="{trace[1]}"'
    return f"{around[0]}{escaped}{around[1]}{value_text} {time_unix_nano}"


def to_bytes(line: str) -> bytes:
    try:
        return line.encode()
    except UnicodeEncodeError:
        return line.encode("utf-8", "replace")


class LineEncoder:
    """Builds lines, caching the escaped form of measurements and keys (few,
    and repeated on every point); values are escaped each time.

    ``default_tags`` are added to every line; a row's own tag of the same key
    wins. ``request_id_field`` writes a decorated point's request ID as a
    string field instead of a tag.
    """

    def __init__(
        self, default_tags: Mapping[str, str] | None = None, request_id_field: bool = False
    ) -> None:
        self.request_id_field = request_id_field
        self.default_tags = {str(key): str(value) for key, value in (default_tags or {}).items()}
        self._measurements: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        self._field_keys: dict[str, str] = {}
        # (variable, method, route) -> (text before the request ID, text after it)
        self._series: dict[tuple[str, str, str], tuple[str, str] | None] = {}
        # The same for records: (variable, method, route, status code, tags).
        self._record_series: dict[SeriesKey, tuple[str, str] | None] = {}

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
        three string attributes (and its index; the common case) and a
        finite int or float."""
        series = self._series
        fast = not self.request_id_field
        for point in points:
            attributes = point.attributes or {}
            request_id = attributes.get(ATTR_REQUEST_ID)
            method = attributes.get(ATTR_METHOD)
            route = attributes.get(ATTR_ROUTE)
            value = point.value
            kind = type(value)
            around = None
            text: str | None = None
            if (
                fast
                and (len(attributes) == 3 or (len(attributes) == 4 and ATTR_INDEX in attributes))
                and type(request_id) is str
                and type(method) is str
                and type(route) is str
                and request_id
                and metric_name
                and (kind is float or kind is int)
            ):
                text = format_field(value)
                if text is not None:
                    cache_key = (metric_name, method, route)
                    around = series[cache_key] if cache_key in series else self._around(cache_key)
            if around is not None:
                assert type(request_id) is str and text is not None  # for the type checker
                trace = point_trace(point) if point.exemplars else None
                yield _series_line(around, request_id, text, trace, point.time_unix_nano)
            else:
                row = decorated_row(metric_name, point, self.request_id_field)
                line = self.line(row.measurement, row.tags, row.fields, row.time_unix_nano)
                if line is not None:
                    yield line

    def decorated_records(self, metric_name: str, records: Iterable[Record]) -> Iterator[str]:
        """``decorated`` of the recorder's records of one variable, without
        making their points where a record has the common layout
        (``_records.common_layout``) and a finite int or float value."""
        series = self._record_series
        fast = bool(metric_name) and not self.request_id_field
        for record in records:
            layout = common_layout(record) if fast else None
            value = record[VALUE]
            kind = type(value)
            if layout is not None and (kind is float or kind is int):
                request_id, method, route, status_code, _index = layout
                text = format_field(value)
                key = (metric_name, method, route, status_code, record[TAGS])
                around = series[key] if key in series else self._record_around(key)
                if text is not None and around is not None:
                    time_unix_nano = record[TIME_UNIX_NANO]
                    yield _series_line(around, request_id, text, trace_of(record), time_unix_nano)
                    continue
            yield from self.decorated(metric_name, [record_point(record)])

    def _around(self, cache_key: tuple[str, str, str]) -> tuple[str, str] | None:
        """The cached series text of (variable, method, route), made if missing."""
        around = self._decorated_series(*cache_key)
        if len(self._series) >= _CACHE_LIMIT:
            self._series.clear()
        self._series[cache_key] = around
        return around

    def _record_around(self, key: SeriesKey) -> tuple[str, str] | None:
        """The cached series text of a record's (variable, method, route,
        status code, tags), made if missing."""
        metric_name, method, route, status_code, tags = key
        extra = dict(zip(tags[::2], tags[1::2], strict=True))
        extra[DECORATED_TAGS[ATTR_STATUS_CODE]] = str(status_code)
        around = self._decorated_series(metric_name, method, route, extra)
        if len(self._record_series) >= _CACHE_LIMIT:
            self._record_series.clear()
        self._record_series[key] = around
        return around

    def _decorated_series(
        self,
        metric_name: str,
        method: str,
        route: str,
        extra_tags: Mapping[str, str] | None = None,
    ) -> tuple[str, str] | None:
        # Private-use characters: no escaping touches them.
        marker = "\ue000flask-chest-request-id\ue000"
        tags = {
            **(extra_tags or {}),
            DECORATED_TAGS[ATTR_REQUEST_ID]: marker,
            DECORATED_TAGS[ATTR_METHOD]: method,
            DECORATED_TAGS[ATTR_ROUTE]: route,
        }
        line = self.line(metric_name, tags, {"value": 0.0}, None)
        if line is None or line.count(marker) != 1:
            return None  # a custom tag holds the marker: no template
        before, after = line.split(marker)
        return before, after[: -len("0")]


# -- field type conflicts -------------------------------------------------------

#: Largest integer a float holds exactly: ints beyond it are not converted.
_EXACT_FLOAT_INT = 2**53


def _split_fields(text: str) -> list[str]:
    """``key=value`` parts of a line's field section (commas inside string
    fields and escaped ones kept)."""
    parts, start, i, quoted = [], 0, 0, False
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _series_end(line: str) -> int:
    """Index of the space ending a line's measurement and tags."""
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\\":
            i += 2
            continue
        if char == " ":
            return i
        i += 1
    return -1


def field_type(value: str) -> str:
    """InfluxDB's name of the type of a written field value."""
    if value.startswith('"'):
        return "string"
    if value.endswith("i"):
        return "integer"
    if value.endswith("u"):
        return "unsigned"
    if value in ("true", "false", "t", "f", "T", "F", "True", "False", "TRUE", "FALSE"):
        return "boolean"
    return "float"


def convert_value(value: str, to_type: str) -> str | None:
    """A written field value converted to ``to_type`` where nothing is lost
    (an integer as a float up to 2**53; a float with no fraction as an
    integer), else None."""
    kind = field_type(value)
    if kind == to_type:
        return value
    if kind == "integer" and to_type == "float":
        number = int(value[:-1])
        return str(number) if abs(number) <= _EXACT_FLOAT_INT else None
    if kind == "float" and to_type == "integer":
        real = float(value)
        if math.isfinite(real) and real.is_integer() and _INT64_MIN <= real <= _INT64_MAX:
            return f"{int(real)}i"
    return None


def measurement_of(line: str) -> str:
    """The measurement of a line as written (escapes kept)."""
    end = _series_end(line)
    series = line[:end] if end >= 0 else line
    i = 0
    while i < len(series):
        if series[i] == "\\":
            i += 2
            continue
        if series[i] == ",":
            return series[:i]
        i += 1
    return series


def unescape(text: str) -> str:
    """A name or key as InfluxDB reports it in messages (escapes removed)."""
    return re.sub(r"\\(.)", r"\1", text) if "\\" in text else text


def retype_field(line: str, field: str, to_type: str) -> tuple[str, str] | None:
    """(the line with field ``field`` -- as InfluxDB names it, unescaped --
    converted to ``to_type``, the type it had), the line itself if it has no
    such field or it already has that type, or None if it cannot be converted
    without loss."""
    end = _series_end(line)
    if end < 0:
        return line, to_type
    rest = line[end + 1 :]
    fields_text, space, timestamp = rest.rpartition(" ")
    if not space or not timestamp.lstrip("-").isdigit():
        fields_text, timestamp = rest, ""
    parts = _split_fields(fields_text)
    for index, part in enumerate(parts):
        key, _, value = part.partition("=")
        while key.endswith("\\") and _:  # an escaped equals sign inside the key
            more_key, _, value = value.partition("=")
            key = f"{key}={more_key}"
        if unescape(key) != field and key != field:
            continue
        converted = convert_value(value, to_type)
        if converted is None:
            return None
        kind = field_type(value)
        if converted == value:
            return line, kind
        parts[index] = f"{key}={converted}"
        tail = f" {timestamp}" if timestamp else ""
        return f"{line[:end]} {','.join(parts)}{tail}", kind
    return line, to_type


def field_type_of(line: str, field: str) -> str:
    """The type of field ``field`` in a line, for messages."""
    end = _series_end(line)
    for part in _split_fields(line[end + 1 :].rpartition(" ")[0] if end >= 0 else ""):
        key, _, value = part.partition("=")
        if unescape(key) == field or key == field:
            return field_type(value)
    return "?"
