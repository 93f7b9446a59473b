"""The settlement protocol: what a backend made of one batch, item by item.

Every exporter's ``_send`` answers with a :class:`Settlement`; the drain
(``_drain.py``) applies it in one place: counting, logging, acknowledging the
spool, retrying, narrowing a refusal down to the items it is about.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class Fate(enum.Enum):
    """What became of one item of a batch."""

    #: The backend took it.
    DELIVERED = "delivered"
    #: Refused for good, for what it holds (its reason is logged): dropped.
    REFUSED = "refused"
    #: The exporter could not encode it (a payload generator that raises):
    #: dropped, counted apart from refusals.
    UNENCODABLE = "unencodable"
    #: Not taken for a reason that may pass (connection, timeout, 429, 5xx):
    #: kept, and sent again after a backoff.
    RETRY = "retry"
    #: Refused together with others for what some of them hold, without
    #: saying which (a bare 400): the drain narrows the group down.
    SUSPECT = "suspect"
    #: Neither taken nor refused, while others of the batch were judged (the
    #: server named the bad lines and wrote nothing): sent again at once.
    RESEND = "resend"
    #: The batch was too large for the backend (413): sent again in halves.
    TOO_LARGE = "too_large"


#: The fates that settle an item (it leaves the buffer).
FINAL = frozenset({Fate.DELIVERED, Fate.REFUSED, Fate.UNENCODABLE})


class Settlement:
    """A backend's answer to one batch of ``n`` items.

    Items named in ``fates`` (by their index in the batch) have that fate;
    every other item has the fate ``rest``. ``reasons`` gives, by index, why
    an item was refused or could not be encoded (default: ``message``).
    ``message`` is what the backend said of the batch, for the log: it must
    hold no secret. ``retry_after`` is the backend's ``Retry-After`` in
    seconds, if it gave one.
    """

    __slots__ = ("fates", "message", "reasons", "rest", "retry_after")

    def __init__(
        self,
        rest: Fate = Fate.DELIVERED,
        fates: Mapping[int, Fate] | None = None,
        *,
        message: str = "",
        reasons: Mapping[int, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.rest = rest
        self.fates: Mapping[int, Fate] = fates or {}
        self.message = message
        self.reasons: Mapping[int, str] = reasons or {}
        self.retry_after = retry_after

    @classmethod
    def each(
        cls,
        fates: Iterable[Fate],
        *,
        message: str = "",
        reasons: Mapping[int, str] | None = None,
        retry_after: float | None = None,
    ) -> Settlement:
        """A settlement giving every item's fate in order."""
        return cls(
            Fate.DELIVERED,
            {index: fate for index, fate in enumerate(fates) if fate is not Fate.DELIVERED},
            message=message,
            reasons=reasons,
            retry_after=retry_after,
        )

    @property
    def delivered_all(self) -> bool:
        """Whether every item was delivered."""
        return self.rest is Fate.DELIVERED and all(
            fate is Fate.DELIVERED for fate in self.fates.values()
        )

    def fate(self, index: int) -> Fate:
        """The fate of the batch's item number ``index``."""
        return self.fates.get(index, self.rest)

    def expand(self, size: int) -> list[Fate]:
        """The fate of every item of a batch of ``size``, in order."""
        return [self.fates.get(index, self.rest) for index in range(size)]

    def reason(self, index: int) -> str:
        """Why item ``index`` was refused or not encoded."""
        return self.reasons.get(index) or self.message

    def __repr__(self) -> str:
        return (
            f"Settlement(rest={self.rest.name}, fates={dict(self.fates)!r}, "
            f"message={self.message!r}, retry_after={self.retry_after!r})"
        )


#: Every item delivered.
DELIVERED = Settlement()


def retry(message: str, retry_after: float | None = None) -> Settlement:
    """Nothing taken, for a reason that may pass: keep everything."""
    return Settlement(Fate.RETRY, message=message, retry_after=retry_after)


def refused(message: str) -> Settlement:
    """Everything refused for good (a bad token, a missing bucket)."""
    return Settlement(Fate.REFUSED, message=message)


def suspect(message: str) -> Settlement:
    """Refused as a whole for what some items hold: narrow it down."""
    return Settlement(Fate.SUSPECT, message=message)


def too_large(message: str) -> Settlement:
    """The batch is too large: send it in smaller parts."""
    return Settlement(Fate.TOO_LARGE, message=message)
