"""Payload bodies: the ready-made ``json_payload`` generator, and how any
generator's result becomes the bytes of a POST.

JSON has no NaN or infinity, and UTF-8 has no lone surrogate (a ``str`` can
hold one, from a JSON body's ``"\\ud800"``, say). Neither may cost a request
its payload, so: a non-finite float is sent as the JSON string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"`` (the spelling of the protobuf JSON
mapping), and a lone surrogate, in JSON or in a text payload, as U+FFFD
(the replacement character any UTF-8 decoder puts for a bad sequence).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

_JSON_TYPES = (dict, list, tuple, int, float, bool, type(None))
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
#: Compact JSON; one encoder for every payload (``json.dumps`` with options
#: builds one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: The same encoder's C core, made once, called straight (``JSONEncoder.encode``
#: makes one per call, through two Python frames). Without a circular check,
#: which would keep state between calls: a circular value fails it with a
#: RecursionError, and ``_ENCODER`` says why. None where ``json`` has no C
#: accelerator.
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # not in typeshed
_C_ENCODE = (
    None
    if _C_MAKE_ENCODER is None
    else _C_MAKE_ENCODER(
        None, _ENCODER.default, json.encoder.encode_basestring,
        None, ":", ",", False, False, False,
    )
)  # fmt: skip


def json_payload(context_tuple_list: Sequence[tuple[str, Any, str | None]]) -> list[dict[str, Any]]:
    """A ready-made generator: a JSON list of
    ``{"name", "value", "request_id", "time"}`` objects, ``time`` being an
    RFC 3339 UTC timestamp (``null`` when unknown), ``value`` in its own JSON
    type (``true``, ``3``, ``0.5``, ``"text"``; ``"NaN"`` for a NaN), and
    ``trace_id``/``span_id`` added when the request ran in a recording span."""
    out = []
    for item in context_tuple_list:
        name, value, request_id = item
        time_unix_nano = getattr(item, "time_unix_nano", 0)
        entry = {
            "name": name,
            "value": value,
            "request_id": request_id,
            "time": _rfc3339(time_unix_nano) if time_unix_nano else None,
        }
        attributes = getattr(item, "attributes", None) or {}
        if "trace_id" in attributes:
            entry["trace_id"] = attributes["trace_id"]
            entry["span_id"] = attributes.get("span_id")
        out.append(entry)
    return out


def _rfc3339(time_unix_nano: int) -> str:
    seconds, nanos = divmod(time_unix_nano, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos // 1000:06d}Z"


def serialise(result: Any) -> tuple[bytes, bool]:
    """(the body, whether it is JSON) for a generator's result: bytes as they
    are, a ``str`` in UTF-8, any JSON value as compact JSON."""
    if isinstance(result, bytes):
        return result, False
    if isinstance(result, (bytearray, memoryview)):
        return bytes(result), False
    if isinstance(result, str):
        return _utf8(result), False
    if isinstance(result, _JSON_TYPES):
        try:
            text = _json(result)
        except ValueError:  # a NaN or an infinity somewhere
            text = _ENCODER.encode(_finite(result))
        return _utf8(text), True
    raise TypeError(
        f"payload_generator returned a {type(result).__name__}; expected a JSON-serialisable "
        "dict/list/tuple/number/bool/None, or str/bytes"
    )


def _json(value: Any) -> str:
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    try:
        return "".join(_C_ENCODE(value, 0))
    except RecursionError:  # circular, or too deep: ValueError or RecursionError
        return _ENCODER.encode(value)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A surrogate pair written as two code points joins up; a lone one
        # becomes U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _NON_FINITE[value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
