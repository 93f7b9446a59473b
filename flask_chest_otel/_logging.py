"""The package's logger, and a log that says one thing once a minute.

A leaf module: the recording side (decorator, meter) and the delivery side
both log, and neither should import the other to do so.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict

LOGGER = logging.getLogger("flask_chest_otel")

_RATE_LIMITED_LOGS: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()


class RateLimitedLog:
    """Logs one message per key at most every ``interval`` seconds, counting the
    repeats in between, so a dead backend does not flood the log.

    A key names a kind of problem ("retry", "refused"), not one occurrence:
    the table keeps the ``max_keys`` most recent keys (least recently used
    go first), so nothing in it grows with the number of requests.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 256
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()
        _RATE_LIMITED_LOGS.add(self)

    def _after_fork_in_child(self) -> None:
        # Another thread of the parent may have held the lock at fork.
        self._lock = threading.Lock()

    def log(
        self, level: int, key: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[key] = (last, suppressed + 1)
                self._last.move_to_end(key)
                return
            self._last[key] = (now, 0)
            self._last.move_to_end(key)
            while len(self._last) > self.max_keys:
                self._last.popitem(last=False)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args, exc_info=exc_info)


def _after_fork_in_child() -> None:
    for log in list(_RATE_LIMITED_LOGS):
        log._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
