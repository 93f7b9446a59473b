"""``flask_chest.chests.sqlite``: the SQLite chest."""

from __future__ import annotations

from ..sqlite import FlaskChestSQLite

__all__ = ["FlaskChestSQLite"]
