"""Sending the buffer: batches out, settlements applied, refusals narrowed.

One place decides what a backend's answer means for each item: counted
(:meth:`Buffer.settle`), logged once per round, retried with backoff, or
narrowed down to the items it is about.

Narrowing. A batch refused for what some of its items hold, without saying
which (``SUSPECT``), or with the bad ones named and the rest not written
(``RESEND``), is first *probed*: up to five of its items are sent alone. If
every probe is refused, the refusal is about the request (a bad precision, a
proxy that refuses everything), not the data: the batch is dropped after
those few writes, logged once. Else the bad items are found by generalized
binary splitting (``Drain._split``): k bad items among n cost about
log2(C(n, k)) + k writes (k*log2(n/k) + 1.44k); items the server names cost
one write each.

Poison. When the oldest item has failed (``RETRY``) in three rounds in a
row, the next round probes its batch the same way instead of sending it
whole, failures standing for refusals: if others pass, the failing item is
bisected out and dropped alone (a user chest raising for it, an OTLP
collector refusing that one point); if none passes, the backend is down,
everything is kept, and the backoff goes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .._logging import RateLimitedLog
from ._buffer import ITEM, Buffer, Entry
from ._retry import RetryPolicy
from .settlement import DELIVERED, FINAL, Fate, Settlement

Item = TypeVar("Item")

#: Items of a refused batch sent alone to tell a refusal of the data from a
#: refusal of the request: all refused, and the batch is dropped. With a
#: share p of bad items, a batch is wrongly taken for refused whole with the
#: chance p**5 (1/32 when half of it is bad).
DATA_PROBES = 5
#: Items sent alone to tell a poison item from a backend that is down.
POISON_PROBES = 3
#: The first chunk of a refused group is this fraction of it: large enough
#: for one bad item among many, small enough not to halve many times when
#: there are several (measured with benchmarks/bench_narrowing.py).
INITIAL_DIVISOR = 8
#: Rounds an item must fail in a row before it is suspected of poison.
POISON_AFTER = 3


@dataclass
class _Pending(Generic[Item]):
    """The unsettled items of one send, by what is to be done with them."""

    retry: list[Entry[Item]] = field(default_factory=list)
    suspect: list[Entry[Item]] = field(default_factory=list)
    resend: list[Entry[Item]] = field(default_factory=list)
    too_large: list[Entry[Item]] = field(default_factory=list)
    delivered: int = 0
    settled: int = 0
    #: The send failed (a retry, while looking for poison): never clean, even
    #: when none of its items is left to suspect (the buffer dropped them for
    #: room while the send was under way).
    failed: bool = False

    @property
    def clean(self) -> bool:
        """Every item delivered."""
        return not (
            self.failed or self.retry or self.suspect or self.resend or self.too_large
        ) and (self.delivered == self.settled)


@dataclass
class _Tally:
    """What one round did, logged once at its end."""

    delivered: int = 0
    refused: int = 0
    refused_reason: str = ""
    refused_example: str = ""
    refused_whole: int = 0
    whole_reason: str = ""
    poison: int = 0
    poison_reason: str = ""
    poison_example: str = ""
    retry_message: str = ""
    retry_after: float | None = None
    retry: bool = False
    writes: int = 0
    #: What the backend said last of something it did not take.
    last_message: str = ""


class Drain(Generic[Item]):
    """Sends a :class:`Buffer`'s items with ``send`` (an exporter's ``_send``)
    and applies what each answer says, until the buffer is empty or a retry
    must wait past the deadline. ``pause(seconds)`` waits out a backoff and
    says whether shutdown interrupted it; ``stop_deadline()`` is shutdown's
    deadline (infinite before shutdown)."""

    def __init__(
        self,
        *,
        name: str,
        buffer: Buffer[Item],
        send: Callable[[Sequence[Item]], Settlement],
        logger: logging.Logger,
        log: RateLimitedLog,
        policy: RetryPolicy,
        pause: Callable[[float], bool],
        describe: Callable[[Item], str],
        batch_items: Callable[[], int],
        max_batch_bytes: int,
        stop_deadline: Callable[[], float] = lambda: math.inf,
    ) -> None:
        self.name = name
        self.buffer = buffer
        self.send = send
        self.logger = logger
        self.log = log
        self.policy = policy
        self.pause = pause
        self.describe = describe
        self.batch_items = batch_items
        self.max_batch_bytes = max_batch_bytes
        self.stop_deadline = stop_deadline

    def run(self, deadline: float | None = None) -> None:
        """Sends batches until the buffer is empty or a retry must wait past
        ``deadline`` (shutdown) or is interrupted by shutdown."""
        attempt = 0
        while deadline is None or time.monotonic() <= deadline:
            batch = self.buffer.take(self.batch_items(), self.max_batch_bytes)
            if not batch:
                return
            tally = _Tally()
            if self.buffer.failures(batch[0]) >= POISON_AFTER:
                # Probed now instead of sent whole; again after as many rounds.
                # Others must be there to pass: a batch of one item (a user
                # chest's) is widened, its items still sent alone at first.
                if len(batch) < 2 * POISON_PROBES:
                    batch = self.buffer.take(2 * POISON_PROBES, self.max_batch_bytes)
                if len(batch) > 1:
                    self.buffer.failed(batch[:1], reset=True)
                # else alone: probed again in the next round, the first with
                # others to compare (sent beside it on other connections,
                # they may all have been taken meanwhile).
                self._narrow(_Pending(suspect=batch), tally, deadline, poison=True)
            else:
                pending = self._send(batch, tally)
                if pending is not None:
                    self._narrow(pending, tally, deadline)
            self.buffer.landed()
            self._report(tally)
            if tally.delivered:
                attempt = 0
            if not tally.retry:
                continue
            attempt += 1
            delay = self.policy.delay(attempt, tally.retry_after)
            limit = self.stop_deadline() if deadline is None else deadline
            if time.monotonic() + delay > limit:
                # No retry before the deadline: shutdown's own line tells
                # what became of the rest (spooled, or lost).
                self.log.log(
                    logging.WARNING,
                    "retry",
                    "%s: send failed (%s) at the shutdown deadline; %d items not sent",
                    self.name,
                    tally.retry_message,
                    len(self.buffer),
                )
                return
            self.log.log(
                logging.WARNING,
                "retry",
                "%s: send failed (%s); %d items kept, retrying in %.1f s",
                self.name,
                tally.retry_message,
                len(self.buffer),
                delay,
            )
            if deadline is not None:
                time.sleep(delay)
            elif self.pause(delay):
                return

    # -- one send -------------------------------------------------------------

    def _send(self, entries: Sequence[Entry[Item]], tally: _Tally) -> _Pending[Item] | None:
        """Sends ``entries`` as one batch and settles what the answer settles;
        the rest by what is to be done, or None when a retry must wait."""
        tally.writes += 1
        try:
            settlement = self.send([entry[ITEM] for entry in entries])
        except Exception as exc:  # a bug in a hook: keep the items, keep the thread
            self.logger.exception("%s: unexpected error while sending", self.name)
            settlement = Settlement(Fate.RETRY, message=f"unexpected error: {exc!r}")
        pending: _Pending[Item] = _Pending()
        if settlement is not DELIVERED and settlement.message:
            tally.last_message = settlement.message
        settled: list[tuple[Entry[Item], Fate]] = []
        if settlement is DELIVERED:  # the common case, at once
            settled = [(entry, Fate.DELIVERED) for entry in entries]
            pending.settled = pending.delivered = len(entries)
        else:
            for index, entry in enumerate(entries):
                fate = settlement.fate(index)
                if fate in FINAL:
                    settled.append((entry, fate))
                    pending.settled += 1
                    if fate is Fate.DELIVERED:
                        pending.delivered += 1
                    elif fate is Fate.REFUSED:
                        self._count_refused(tally, entry, 1, settlement.reason(index))
                    else:
                        self.log.log(
                            logging.ERROR,
                            "unencodable",
                            "%s: could not encode an item, dropped: %s",
                            self.name,
                            settlement.reason(index),
                        )
                elif fate is Fate.RETRY:
                    pending.retry.append(entry)
                elif fate is Fate.SUSPECT:
                    pending.suspect.append(entry)
                elif fate is Fate.RESEND:
                    pending.resend.append(entry)
                else:
                    pending.too_large.append(entry)
        if settled:
            self.buffer.settle(settled)
        tally.delivered += pending.delivered
        if pending.retry:
            self.buffer.failed(pending.retry)
            tally.retry = True
            tally.retry_message = settlement.message
            tally.retry_after = settlement.retry_after
            return None
        if pending.resend and len(pending.resend) == len(entries):
            # Nothing judged: a RESEND of everything would go round forever.
            pending.suspect, pending.resend = pending.resend, []
        return pending

    def _refuse(self, entries: Sequence[Entry[Item]], tally: _Tally, reason: str) -> None:
        """Drops entries the backend refused when sent alone."""
        live = self.buffer.unsettled(entries)
        if not live:
            return
        self._count_refused(tally, live[0], len(live), reason)
        self.buffer.settle([(entry, Fate.REFUSED) for entry in live])

    def _count_refused(self, tally: _Tally, first: Entry[Item], count: int, reason: str) -> None:
        """Counts refusals for the round's log line, whose reason and example
        are the round's first."""
        if not tally.refused:
            tally.refused_reason = reason
            tally.refused_example = self.describe(first[ITEM])
        tally.refused += count

    # -- narrowing ------------------------------------------------------------

    def _narrow(
        self,
        pending: _Pending[Item],
        tally: _Tally,
        deadline: float | None,
        poison: bool = False,
    ) -> None:
        """Settles the suspect, resend and too-large items of a send by
        sending them in smaller groups (see the module's docstring). With
        ``poison``, the suspects are items that keep failing (RETRY)."""
        # (group, known_bad): a known-bad group was refused as a whole
        # and is split; any other group is sent as it is first.
        work = self._next(pending)
        if pending.suspect or pending.resend:
            probes = [*pending.suspect, *pending.resend]
            refused_before = tally.refused
            verdict = self._probe(probes, tally, deadline, poison)
            if verdict == "retry" or verdict == "down":
                return
            if verdict == "request":
                live = self.buffer.unsettled(probes)
                if live:
                    tally.refused_whole += len(live)
                    tally.whole_reason = tally.last_message or tally.refused_reason
                    self._refuse(live, tally, tally.whole_reason)
                return
            if tally.refused > refused_before:
                # A probe was refused: the suspects, less it, may all be good.
                work = [(group, False) for group, _ in work]
        while work:
            if deadline is not None and time.monotonic() > deadline:
                return
            group, known_bad = work.pop()
            group = self.buffer.unsettled(group)
            if not group:
                continue
            if known_bad:
                if not self._split(group, tally, deadline, poison, work):
                    return
                continue
            outcome = self._try(group, tally, poison)
            if outcome is None:
                return
            if len(group) == 1 and not outcome.clean:
                self._drop_alone(group, tally, poison)
                continue
            work.extend(self._next(outcome))

    def _split(
        self,
        group: list[Entry[Item]],
        tally: _Tally,
        deadline: float | None,
        poison: bool,
        work: list[tuple[list[Entry[Item]], bool]],
    ) -> bool:
        """Finds the bad items of a group refused as a whole, none named, by
        generalized binary splitting: a chunk is sent; taken, the next chunk
        is twice as large; refused, one bad item is found in it by halves
        (a first half taken leaves the bad one in the second, which is not
        sent whole) and the next chunk is half as large. Chunks settle near
        n/k items: at most about log2(C(n, k)) + k writes (Hwang's bound
        for generalized binary splitting; k*log2(n/k) + 1.44k). False when
        narrowing must stop (a retry)."""
        unknown = group
        known_bad = True  # ``unknown`` holds a bad item for sure
        size = max(1, len(group) // INITIAL_DIVISOR)
        while True:
            if deadline is not None and time.monotonic() > deadline:
                return False
            unknown = self.buffer.unsettled(unknown)
            if not unknown:
                return True
            chunk, rest = unknown[:size], unknown[size:]
            if known_bad and not rest:
                bad, alone = chunk, False
            else:
                outcome = self._try(chunk, tally, poison)
                if outcome is None:
                    return False
                if outcome.clean:
                    unknown, size = rest, size * 2
                    continue
                work.extend(self._next(outcome, with_suspect=False))
                bad, alone = outcome.suspect, len(chunk) == 1
            back: list[Entry[Item]] = []
            while len(bad) > 1:
                left, right = bad[: len(bad) // 2], bad[len(bad) // 2 :]
                outcome = self._try(left, tally, poison)
                if outcome is None:
                    return False
                if outcome.clean:
                    bad, alone = right, False
                    continue
                work.extend(self._next(outcome, with_suspect=False))
                back = right + back
                bad, alone = outcome.suspect, len(left) == 1
            if bad and not self._drop_alone(bad, tally, poison, sent=alone):
                back = bad + back
            unknown, known_bad = back + rest, False
            size = max(1, size // 2)

    def _try(
        self, group: list[Entry[Item]], tally: _Tally, poison: bool
    ) -> _Pending[Item] | None:
        """Sends a group while narrowing; None when narrowing must stop (a
        retry while narrowing a refusal: the backend is failing)."""
        outcome = self._send(group, tally)
        if outcome is not None:
            return outcome
        if not poison:
            return None
        tally.retry = False  # poison: a failure is what is being looked for
        # Failed, whether or not its items are still buffered: one dropped for
        # room meanwhile is gone from the suspects, but its send is no sign
        # that the backend takes anything (taken for one, a backend that is
        # down had the rest of the batch dropped as poison).
        return _Pending(suspect=self.buffer.unsettled(group), failed=True)

    @staticmethod
    def _next(
        outcome: _Pending[Item], with_suspect: bool = True
    ) -> list[tuple[list[Entry[Item]], bool]]:
        """What is left to send of a send's items: too large ones in halves,
        those to send again, and (``with_suspect``) the suspects, known bad."""
        work = [(group, False) for group in _halves(outcome.too_large)]
        if outcome.resend:
            work.append((outcome.resend, False))
        if outcome.suspect and with_suspect:
            work.append((outcome.suspect, True))
        return work

    def _drop_alone(
        self, group: list[Entry[Item]], tally: _Tally, poison: bool, sent: bool = True
    ) -> bool:
        """Drops an item found bad: refused when sent alone, or whose group
        was refused while the rest of it was taken. A poison item (failing,
        not refused) is first sent alone unless it just was: one that passes
        alone is taken. True when it was dropped."""
        live = self.buffer.unsettled(group)
        if not live:
            return True
        if not poison:
            self._refuse(live, tally, tally.last_message or "refused when sent alone")
            return True
        if not sent:
            outcome = self._try(live, tally, poison)
            if outcome is None or outcome.clean:
                return outcome is not None
            live = self.buffer.unsettled(live)
            if not live:
                return True
        if not tally.poison:
            tally.poison_reason = tally.last_message
            tally.poison_example = self.describe(live[0][ITEM])
        tally.poison += len(live)
        self.buffer.settle([(entry, Fate.REFUSED) for entry in live])
        return True

    def _probe(
        self,
        entries: list[Entry[Item]],
        tally: _Tally,
        deadline: float | None,
        poison: bool,
    ) -> str:
        """Sends a few items alone: "data" as soon as one passes, "request"
        if all are refused, "down" if all fail (poison), "retry" if a
        retry must wait."""
        count = POISON_PROBES if poison else DATA_PROBES
        if len(entries) <= count and not poison:
            return "data"  # bisecting so few costs no more than probing
        failed = 0
        for entry in _spread(entries, count):
            if deadline is not None and time.monotonic() > deadline:
                return "retry"
            outcome = self._try([entry], tally, poison)
            if outcome is None:
                return "retry"
            if outcome.clean:
                return "data"
            failed += 1
            if not poison:
                self._refuse([entry], tally, tally.last_message or "refused when sent alone")
        if poison:
            tally.retry = True
            return "down"
        return "request"

    # -- the log --------------------------------------------------------------

    def _report(self, tally: _Tally) -> None:
        """One log line per kind of loss in the round."""
        if tally.refused_whole:
            self.log.log(
                logging.ERROR,
                "refused-whole",
                "%s: the backend refused every item sent alone as it refused the batch: "
                "the refusal is about the request, not its data; %d items dropped "
                "after %d writes: %s",
                self.name,
                tally.refused,
                tally.writes,
                tally.whole_reason,
            )
        elif tally.refused:
            self.log.log(
                logging.ERROR,
                "refused",
                "%s: the backend refused %d items for good, dropped: %s; e.g. %s",
                self.name,
                tally.refused,
                tally.refused_reason,
                tally.refused_example,
            )
        if tally.poison:
            self.log.log(
                logging.ERROR,
                "poison",
                "%s: %d items failed in %d sends in a row and alone while others passed: "
                "dropped (%s); e.g. %s",
                self.name,
                tally.poison,
                POISON_AFTER + 1,
                tally.poison_reason,
                tally.poison_example,
            )


def _halves(entries: list[Entry[Item]]) -> list[list[Entry[Item]]]:
    """Two halves of a too-large group; one alone for a single item."""
    if not entries:
        return []
    if len(entries) == 1:
        return [entries]
    middle = len(entries) // 2
    return [entries[middle:], entries[:middle]]


def _spread(entries: list[Entry[Item]], count: int) -> list[Entry[Item]]:
    """Up to ``count`` entries spread over the group, the middle first."""
    size = len(entries)
    picks: list[int] = []
    for position in (size // 2, size // 4, (3 * size) // 4, 0, size - 1, size // 8):
        if position not in picks:
            picks.append(position)
    return [entries[position] for position in picks[:count]]
