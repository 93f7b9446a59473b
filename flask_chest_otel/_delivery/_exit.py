"""The exit budget every chest shares, and what runs at exit and after fork."""

from __future__ import annotations

import os
import time
import weakref
from typing import Any, Protocol

from .._logging import LOGGER
from ..environment_variables import FLASK_CHEST_EXIT_TIMEOUT

#: Seconds the exit hooks may take in all, for every chest together.
DEFAULT_EXIT_TIMEOUT = 5.0
_exit_timeout: float | None = None
_exit_deadline: float | None = None


class _Exporter(Protocol):
    name: str

    def shutdown(self, timeout_millis: float = ..., **kwargs: Any) -> None: ...

    def _after_fork_in_child(self) -> None: ...


#: Every exporter alive in this process, for the exit and fork hooks.
LIVE_EXPORTERS: weakref.WeakSet[Any] = weakref.WeakSet()


def set_exit_timeout(seconds: float) -> None:
    """Sets how long the interpreter's exit may wait for deliveries, in
    seconds, shared by all chests (default 5, or ``FLASK_CHEST_EXIT_TIMEOUT``)."""
    global _exit_timeout
    if not seconds >= 0:
        raise ValueError(f"the exit timeout must be >= 0 seconds, got {seconds!r}")
    _exit_timeout = float(seconds)


def exit_timeout() -> float:
    """The exit budget in seconds: :func:`set_exit_timeout`, else the
    environment variable ``FLASK_CHEST_EXIT_TIMEOUT``, else 5."""
    if _exit_timeout is not None:
        return _exit_timeout
    text = os.environ.get(FLASK_CHEST_EXIT_TIMEOUT, "").strip()
    if text:
        try:
            value = float(text)
            if value >= 0:
                return value
        except ValueError:
            pass
        LOGGER.warning(
            "flask_chest_otel: %s=%r is not a number of seconds >= 0; using %s",
            FLASK_CHEST_EXIT_TIMEOUT, text, DEFAULT_EXIT_TIMEOUT,
        )  # fmt: skip
    return DEFAULT_EXIT_TIMEOUT


def exit_deadline() -> float:
    """The one monotonic deadline of this process's exit, fixed by the first
    exit hook that asks for it."""
    global _exit_deadline
    if _exit_deadline is None:
        _exit_deadline = time.monotonic() + exit_timeout()
    return _exit_deadline


def exit_millis_left() -> float:
    """Milliseconds left of the exit budget."""
    return max(0.0, exit_deadline() - time.monotonic()) * 1000


def shutdown_all(deadline_millis: float | None = None) -> None:
    """Shuts every exporter down within the exit budget; an error for one
    never skips the next."""
    exporter: _Exporter
    for exporter in list(LIVE_EXPORTERS):
        try:
            exporter.shutdown(
                timeout_millis=exit_millis_left() if deadline_millis is None else deadline_millis
            )
        except Exception:
            LOGGER.exception("%s: shutdown at exit failed", exporter.name)


def _after_fork_in_child() -> None:
    exporter: _Exporter
    for exporter in list(LIVE_EXPORTERS):
        exporter._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
