"""``flask_chest.chests.custom``: the custom HTTP writer."""

from __future__ import annotations

from ..http_payload._chest import FlaskChestCustomWriter

__all__ = ["FlaskChestCustomWriter"]
