"""How long to wait before sending again."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with +-20% jitter from ``initial`` seconds, or the
    server's ``Retry-After`` plus a little jitter; both capped at ``maximum``.

    The attempt count starts again whenever a round delivers anything: a
    batch making progress is never held back by earlier failures.
    """

    initial: float = 1.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError(
                f"retry_initial must be > 0 and retry_max >= retry_initial, "
                f"got {self.initial!r} and {self.maximum!r}"
            )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return backoff_delay(attempt, self.initial, self.maximum, retry_after)


def backoff_delay(attempt: int, initial: float, maximum: float, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential
    with +-20% jitter, or the server's ``Retry-After`` plus a little jitter;
    both capped at ``maximum``."""
    if retry_after is not None and retry_after >= 0:
        return float(min(retry_after + random.uniform(0, 0.1 * initial), maximum))
    return float(min(initial * 2 ** (attempt - 1) * random.uniform(0.8, 1.2), maximum))
