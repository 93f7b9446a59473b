"""Delivery, shared by every exporter: the bounded buffer (``_buffer``), the
settlement protocol (``settlement``), the drain that applies it
(``_drain``), the retry policy (``_retry``), the exit budget and the
process hooks (``_exit``), and the exporter that puts them together
(``_exporter``)."""

from __future__ import annotations

import atexit

from ._buffer import Buffer, DeliveryStats, Entry
from ._drain import Drain
from ._exit import (
    DEFAULT_EXIT_TIMEOUT,
    LIVE_EXPORTERS,
    exit_deadline,
    exit_millis_left,
    exit_timeout,
    set_exit_timeout,
    shutdown_all,
)
from ._exporter import ADOPT_INTERVAL, DELTA_TEMPORALITY, ENQUEUE_CHUNK, BufferedExporter
from ._retry import RetryPolicy, backoff_delay
from .settlement import DELIVERED, Fate, Settlement, refused, retry, suspect, too_large

__all__ = [
    "ADOPT_INTERVAL",
    "DEFAULT_EXIT_TIMEOUT",
    "DELIVERED",
    "DELTA_TEMPORALITY",
    "ENQUEUE_CHUNK",
    "LIVE_EXPORTERS",
    "Buffer",
    "BufferedExporter",
    "DeliveryStats",
    "Drain",
    "Entry",
    "Fate",
    "RetryPolicy",
    "Settlement",
    "backoff_delay",
    "exit_deadline",
    "exit_millis_left",
    "exit_timeout",
    "refused",
    "retry",
    "set_exit_timeout",
    "shutdown_all",
    "suspect",
    "too_large",
]

# Registered at import, before the recorder's hook: atexit runs hooks in
# reverse order, so the recorder hands over its last records first.
atexit.register(shutdown_all)
