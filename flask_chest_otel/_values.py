"""What a ``g`` value becomes: a number, or a string carried as an info point.

Recorded as numbers: int (kept an int within 64 bits, as flask-chest passed
it on), bool (1/0), float, Decimal, numeric strings ("12.5", " 3 ") and
anything implementing ``__float__`` (numpy scalars), the last three as floats.
Every other value, and NaN or an infinity (which line protocol cannot carry),
is carried as text: an info-style point of value 1 whose attribute
``flask_chest.value`` holds ``str(value)`` cut to ``MAX_TEXT`` characters.
``None`` means "no value": nothing is recorded, as for an unset variable.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

#: Longest text kept for a non-numeric value (InfluxDB string fields allow 64 KiB).
MAX_TEXT = 4096


_INT64 = 2**63


def coerce(value: Any) -> int | float | str | None:
    """A number to record, a text to carry, or None to record nothing."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and -_INT64 <= value < _INT64:
        return value
    if isinstance(value, (int, float, Decimal)):
        number = _to_float(value)
    elif isinstance(value, str):
        number = _parse(value)
    elif hasattr(value, "__float__") and not isinstance(value, (bytes, bytearray)):
        number = _to_float(value)
    else:
        number = None
    if number is not None and math.isfinite(number):
        return number
    return _text(value)


def _to_float(value: Any) -> float | None:
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return None


def _parse(text: str) -> float | None:
    stripped = text.strip()
    if not stripped or len(stripped) > 64:
        return None
    return _to_float(stripped)


def _text(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception as exc:  # a __str__ that raises must not fail the request
        text = f"<unprintable {type(value).__name__}: {exc!r}>"
    return text[:MAX_TEXT]
