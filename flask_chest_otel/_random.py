"""Random 16-byte values (request IDs, idempotency keys) from the operating
system's generator, drawn 256 at a time.

``os.urandom`` releases the GIL around its ``getrandom`` call: in a request
thread, that lets a background thread (our collector or sender) take the GIL,
and the request then waits for it back, up to the switch interval (5 ms).
Two such calls per request (its ID, its payload's key) were half of the
request path's GIL hand-offs under load. One ``os.urandom`` of 4 KiB per 256
values keeps the same source and leaves one call in 256.

Thread-safe: taking the next value is one ``next()`` on a C iterator, atomic
under the GIL (two threads that find the pool empty at once each draw a new
one; no value is given twice). Fork-safe: a forked child empties the pool it
inherited, or parent and child would hand out the same values.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

#: Values drawn per ``os.urandom`` call.
POOL = 256

_pool: Iterator[tuple[Any, ...]] = iter(())


def random16() -> bytes:
    """16 random bytes, never the same twice in this or any other process
    (up to the chance of a collision of 128 random bits)."""
    global _pool
    value: bytes
    for (value,) in _pool:
        return value
    _pool = pool = struct.iter_unpack("16s", os.urandom(16 * POOL))
    value = next(pool)[0]
    return value


def _forget_pool() -> None:
    global _pool
    _pool = iter(())


os.register_at_fork(after_in_child=_forget_pool)
