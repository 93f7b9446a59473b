"""``flask_chest.chests.custom``: the custom HTTP writer."""

from __future__ import annotations

from .._custom_writer import FlaskChestCustomWriter

__all__ = ["FlaskChestCustomWriter"]
