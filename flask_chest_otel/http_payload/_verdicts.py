"""The fates of a batch's items, gathered as its POSTs are answered, into
one :class:`~flask_chest_otel.Settlement`."""

from __future__ import annotations

from collections.abc import Sequence

from .._delivery import Fate, Settlement


class Verdicts:
    """The fates of a batch's items as its POSTs are answered."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fates: dict[int, Fate] = {}
        self.reasons: dict[int, str] = {}
        self.message = ""
        self.retry_after: float | None = None

    def set(self, index: int, judged: Settlement) -> None:
        """Item ``index`` was posted alone and ``judged`` so."""
        self.merge([index], judged)

    def unencodable(self, index: int, reason: str) -> None:
        self.fates[index] = Fate.UNENCODABLE
        self.reasons[index] = reason

    def merge(self, indices: Sequence[int], judged: Settlement) -> None:
        """The items at ``indices`` were posted together and ``judged`` so."""
        for number, index in enumerate(indices):
            fate = judged.fate(number)
            self.fates[index] = fate
            if fate is not Fate.DELIVERED:
                self.reasons[index] = judged.reason(number)
        if judged.rest is not Fate.DELIVERED or judged.fates:
            self.message = self.message or judged.message
            if judged.retry_after is not None:
                # Several POSTs asked to wait: the longest wait holds for all.
                self.retry_after = max(self.retry_after or 0.0, judged.retry_after)

    def retry_settlement(self, index: int) -> Settlement:
        """The answer that asked to retry item ``index``."""
        return Settlement(
            Fate.RETRY, message=self.reasons.get(index, ""), retry_after=self.retry_after
        )

    def rest(self, start: int, judged: Settlement) -> Settlement:
        """The batch, items from ``start`` on not posted: they share
        ``judged``'s fate (a retry, or a refusal of every POST)."""
        for index in range(start, self.size):
            self.fates[index] = judged.rest
        self.message = judged.message
        self.retry_after = judged.retry_after
        return self.settlement()

    def settlement(self) -> Settlement:
        return Settlement(
            Fate.DELIVERED,
            {index: fate for index, fate in self.fates.items() if fate is not Fate.DELIVERED},
            message=self.message,
            reasons=self.reasons,
            retry_after=self.retry_after,
        )
