"""What a ``g`` value becomes: a value of its own type, or text.

A value keeps its type end to end, as flask-chest passed it on:

- ``bool`` stays a bool (``True``, not ``1``);
- ``int`` stays an int within the signed 64-bit range (InfluxDB's integer);
  a larger int is carried as its decimal text;
- ``float`` stays a float, NaN and infinities included (each chest says what
  it does with them);
- ``str`` stays the same text, never parsed into a number (``"00321"``
  stays ``"00321"``), cut to ``MAX_TEXT`` characters;
- ``Decimal`` and any object with ``__float__`` (``Fraction``, numpy
  floats) become a float; any object with ``__index__`` (numpy integers, an
  ``IntEnum``) an int; a numpy bool a bool;
- anything else is carried as text, cut *before* it is turned into text so
  that a 50 MB ``bytes`` or a list of a million items costs as little as a
  short one: bytes, bytearrays, lists, tuples, sets and dicts are shown as
  ``repr`` shows them, limited to ``MAX_TEXT`` items and characters; other
  objects as ``str()`` shows them.

A text travels as a point of value 1 whose attribute ``flask_chest.value``
holds the text. ``None`` means "no value": nothing is recorded, as for an
unset variable.

A conversion that raises (a ``__float__``, ``__index__`` or ``__str__`` of
the user's) costs that value only: it is carried as the text
``<unconvertible TYPE: ERROR>`` and counted in :func:`conversion_errors`.

A tag (``tag_vars``) is text only: :func:`tag_text`.
"""

from __future__ import annotations

import operator
import reprlib
from collections import deque
from decimal import Decimal
from typing import Any

from ._names import MAX_TAG_TEXT

#: Longest text kept for a non-numeric value (InfluxDB string fields allow 64 KiB).
MAX_TEXT = 4096

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_CONTAINERS = (bytes, bytearray, memoryview, list, tuple, dict, set, frozenset, deque)

_repr = reprlib.Repr()
_repr.maxlevel = 6
_repr.maxstring = _repr.maxother = _repr.maxlong = MAX_TEXT
_repr.maxlist = _repr.maxtuple = _repr.maxdict = MAX_TEXT
_repr.maxset = _repr.maxfrozenset = _repr.maxdeque = _repr.maxarray = MAX_TEXT

_errors = 0


def conversion_errors() -> int:
    """How many values raised while being converted (carried as text instead)."""
    return _errors


def coerce(value: Any) -> bool | int | float | str | None:
    """The value to record (its own type, or text), or None to record nothing."""
    kind = type(value)
    if kind is str:
        return value[:MAX_TEXT]  # type: ignore[no-any-return]
    if kind is float or kind is bool:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else _int_text(value)
    if value is None:
        return None
    try:
        return _convert(value)
    except Exception as exc:  # a user's __float__/__index__/__str__ must not fail the request
        global _errors
        _errors += 1
        return _unconvertible(value, exc)


def tag_text(value: Any) -> str | None:
    """The text of a tag: ``str()`` of the value, cut to ``MAX_TAG_TEXT``
    characters (a container cut before it is turned into text, as for
    values); None (no tag) for ``None`` and for empty text. A ``__str__``
    that raises gives ``<unconvertible TYPE: ERROR>``, counted."""
    if value is None:
        return None
    if type(value) is str:
        return value[:MAX_TAG_TEXT] or None
    try:
        if isinstance(value, str):
            text = str.__getitem__(value, slice(0, MAX_TAG_TEXT))
        elif isinstance(value, _CONTAINERS):
            text = _container_text(value)
        elif type(value) is int:
            text = _int_text(value)
        else:
            text = str(value)
    except Exception as exc:
        global _errors
        _errors += 1
        text = _unconvertible(value, exc)
    return text[:MAX_TAG_TEXT] or None


def _convert(value: Any) -> bool | int | float | str:
    if isinstance(value, str):
        return str.__getitem__(value, slice(0, MAX_TEXT))
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, _CONTAINERS):
        return _container_text(value)
    if isinstance(value, Decimal):
        return float(value)
    if getattr(getattr(value, "dtype", None), "kind", None) == "b":
        return bool(value)  # numpy.bool_, which has no __index__
    if hasattr(type(value), "__index__"):
        try:
            number = operator.index(value)
        except TypeError:  # an __index__ that refuses: try __float__
            pass
        else:
            return number if _INT64_MIN <= number <= _INT64_MAX else _int_text(number)
    if hasattr(type(value), "__float__"):
        return float(value)
    return str(value)[:MAX_TEXT]


def _int_text(number: int) -> str:
    try:
        return str(number)[:MAX_TEXT]
    except ValueError:  # beyond sys.get_int_max_str_digits()
        return f"<int of {number.bit_length()} bits>"


def _container_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        head = bytes(value[:MAX_TEXT])
        text = repr(head) if not isinstance(value, bytearray) else f"bytearray({head!r})"
    else:
        text = _repr.repr(value)
    return text[:MAX_TEXT]


def _unconvertible(value: Any, exc: BaseException) -> str:
    try:
        detail = repr(exc)[:200]
    except Exception:
        detail = type(exc).__name__
    return f"<unconvertible {type(value).__name__}: {detail}>"
