"""A row: one line of line protocol, or one SQLite row per field (a leaf
module: the row builders and the encoders share it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

FieldValue = float | int | bool | str
Schema = Literal["telegraf-prometheus-v1", "telegraf-prometheus-v2"]
SCHEMAS: tuple[Schema, ...] = ("telegraf-prometheus-v1", "telegraf-prometheus-v2")


@dataclass(slots=True)
class Row:
    """One line of line protocol, or one SQLite row per field."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_unix_nano: int
    decorated: bool = False


def _finite(value: FieldValue) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def keep(row: Row) -> bool:
    """Whether the row has a field left once non-finite values are left out
    (which it then no longer holds)."""
    if all(_finite(value) for value in row.fields.values()):
        return True
    row.fields = {key: value for key, value in row.fields.items() if _finite(value)}
    return bool(row.fields)
