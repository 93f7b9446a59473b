"""``flask_chest.chests.base``: the base class of users' own chests."""

from __future__ import annotations

from ..user_chests import FlaskChest

__all__ = ["FlaskChest"]
