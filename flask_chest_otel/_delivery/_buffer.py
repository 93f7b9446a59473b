"""The exporter's bounded buffer: oldest first, settled in any order.

Items wait here (and, with a spool, in its file) until the backend settles
them. A batch may be settled out of order (the server took the second POST
and asked to retry the first): a settled item stays as a tombstone behind an
unsettled older one, skipped by :meth:`Buffer.take`, and leaves when every
older item has, so that the spool, which is told "the oldest N are gone",
hears it in the order it wrote them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from .._logging import RateLimitedLog
from .._pacing import pacing, pause_if_due
from .._spool import Spool
from .settlement import Fate

Item = TypeVar("Item")


@dataclass
class DeliveryStats:
    """Counters of one exporter, readable from Python: ``exporter.stats``,
    live, or ``exporter.stats_snapshot()``, a copy whose counters add up."""

    exported: int = 0
    retried: int = 0
    dropped_buffer_full: int = 0
    dropped_rejected: int = 0
    dropped_shutdown: int = 0
    dropped_encoding: int = 0
    buffered: int = 0
    buffered_bytes: int = 0
    #: Items left in the spool file at shutdown, for the next process.
    spooled: int = 0

    @property
    def dropped(self) -> int:
        return (
            self.dropped_buffer_full
            + self.dropped_rejected
            + self.dropped_shutdown
            + self.dropped_encoding
        )

    @property
    def lost(self) -> int:
        """Items refused, dropped for room or not encodable, so far."""
        return self.dropped_rejected + self.dropped_buffer_full + self.dropped_encoding


#: One buffered item: (sequence number, item, size in bytes, bytes it takes
#: in the spool file or 0). A tuple of atomic values, so that the garbage
#: collector stops tracking it (``_records.Record`` says why that matters
#: for p99): what else an item needs (settled out of order, failures) is
#: kept by sequence number, for the few items that need it.
Entry = tuple[int, Item, int, int]
SEQ: Final = 0
ITEM: Final = 1
SIZE: Final = 2
SPOOLED: Final = 3


class Buffer(Generic[Item]):
    """Bounded by items, bytes and the spool's bytes: when full, the oldest
    are dropped, counted (``dropped_buffer_full``) and logged. Thread-safe:
    the collector adds, the sender takes and settles.

    Args:
        stats: the exporter's counters, kept up to date here.
        spool: the on-disk copy, or None.
    """

    def __init__(
        self,
        *,
        name: str,
        stats: DeliveryStats,
        log: RateLimitedLog,
        max_items: int,
        max_bytes: int,
        spool: Spool | None,
        spool_max_bytes: int,
    ) -> None:
        self.name = name
        self.stats = stats
        self.log = log
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.spool = spool
        self.spool_max_bytes = spool_max_bytes
        self.lock = threading.Lock()
        self._init_spool_locks()
        self._reset()

    def _init_spool_locks(self) -> None:
        #: The spool's own lock (taken inside ``lock`` where both are held),
        #: so that ``add`` writes to the spool without waiting for the
        #: sender's work under ``lock`` (a batch taken or settled: a thread
        #: descheduled there held the collector's write back 50-120 ms on a
        #: loaded 2-core host, scripts/spool_window_breakdown.py).
        self.spool_lock = threading.Lock()
        #: One ``add`` at a time: the spool's order is the buffer's.
        self._add_lock = threading.Lock()
        #: A spooling add waits for ``lock``: the sender holding it stops
        #: pausing (``_pacing``) and cuts its work short (a smaller batch, the
        #: rest of what it settled left for ``add`` to let go).
        self._spool_waiting = False

    def _reset(self) -> None:
        self._entries: deque[Entry[Item]] = deque()
        self._next_seq = 0
        #: Settled while an older entry is not (tombstones).
        self._settled: set[int] = set()
        #: Sends that failed in a row, by entry.
        self._failures: dict[int, int] = {}
        #: Entries the sender holds in a batch, and those of them the buffer
        #: dropped for room meanwhile.
        self._in_flight: set[int] = set()
        self._dropped_in_flight: set[int] = set()

    def after_fork_in_child(self, stats: DeliveryStats) -> None:
        """The parent sends what it buffered; the child must not send it again."""
        self.lock = threading.Lock()
        self._init_spool_locks()
        self._reset()
        self.stats = stats
        if self.spool is not None:
            self.spool.after_fork_in_child()

    def __len__(self) -> int:
        """Unsettled items."""
        return self.stats.buffered

    def snapshot(self) -> DeliveryStats:
        """A copy of the counters, taken under ``lock``, where every change
        that moves items from one counter to another is made: the copy's
        counters add up (each item added is buffered, exported, dropped or
        spooled in it once), where reading the live ones could see an item
        leave ``buffered`` before it reaches ``dropped_buffer_full``."""
        with self.lock:
            return dataclasses.replace(self.stats)

    def count_not_encoded(self, items: int = 1) -> None:
        """Counts ``items`` lost to encoding (``stats.dropped_encoding``),
        under the lock the sender counts its own under: an unlocked ``+=``
        from the collector's thread could lose the sender's increment."""
        with self.lock:
            self.stats.dropped_encoding += items

    def count_dropped_shutdown(self, items: int) -> None:
        """Counts ``items`` refused after shutdown (``stats.dropped_shutdown``),
        under ``lock`` as ``count_not_encoded`` does."""
        with self.lock:
            self.stats.dropped_shutdown += items

    def add(self, items: Sequence[tuple[Item, int]]) -> int:
        """Adds (item, size) pairs, oldest first, spooling them; drops the
        oldest beyond the bounds. Returns how many were dropped."""
        with self._add_lock:
            if self.spool is None:
                spooled = [0] * len(items)
            else:
                # Written first, under the spool's lock only: what the sender
                # does under ``lock`` never holds the write back.
                with self.spool_lock:
                    spooled = self._spool_append(items)
                self._spool_waiting = True
            with self.lock:
                self._spool_waiting = False
                dropped = self._add_written(items, spooled)
        if dropped:
            self.log.log(
                logging.WARNING,
                "buffer-full",
                "%s: buffer full (%d items / %d bytes, spool %d bytes): "
                "dropped the %d oldest items",
                self.name,
                self.max_items,
                self.max_bytes,
                self.spool_max_bytes,
                dropped,
            )
        return dropped

    def _add_written(self, items: Sequence[tuple[Item, int]], spooled: list[int]) -> int:
        """``add``'s part under ``lock``: the entries (the spool holds them
        already), the bounds. Returns how many were dropped."""
        dropped = 0
        seq = self._next_seq
        self._next_seq = seq + len(items)
        self._entries.extend(
            (number, item, size, spool_size)
            for number, (item, size), spool_size in zip(
                range(seq, seq + len(items)), items, spooled, strict=True
            )
        )
        stats = self.stats
        stats.buffered += len(items)
        stats.buffered_bytes += sum(size for _, size in items)
        spool = self.spool
        while self._entries and (
            stats.buffered > self.max_items
            or stats.buffered_bytes > self.max_bytes
            or (spool is not None and self._spool_bytes() > self.spool_max_bytes)
        ):
            if self._drop_oldest():
                dropped += 1
        self._pop_settled(write=True)
        stats.dropped_buffer_full += dropped
        return dropped

    def _spool_bytes(self) -> int:
        assert self.spool is not None
        with self.spool_lock:
            return self.spool.live_bytes

    def _drop_oldest(self) -> bool:
        """Drops the oldest entry (caller holds the lock); True if it was
        unsettled. One the sender holds in a batch is remembered: if the
        backend takes it after all, it is counted as exported instead."""
        seq, _, size, spooled = self._entries.popleft()
        if self.spool is not None and spooled:
            with self.spool_lock:
                self.spool.ack(1, write=False)
        self._failures.pop(seq, None)
        if seq in self._settled:
            self._settled.discard(seq)
            return False
        if seq in self._in_flight:
            self._dropped_in_flight.add(seq)
        self.stats.buffered -= 1
        self.stats.buffered_bytes -= size
        return True

    def take(self, limit: int, max_bytes: int) -> list[Entry[Item]]:
        """The oldest unsettled entries that fit one batch; they stay in the
        buffer until settled."""
        batch: list[Entry[Item]] = []
        size = 0
        with self.lock:
            settled = self._settled
            pause = pacing()
            for entry in self._entries:
                if self._spool_waiting:
                    if batch:
                        break
                elif pause:
                    pause_if_due()
                if settled and entry[SEQ] in settled:
                    continue
                if batch and (len(batch) >= limit or size + entry[SIZE] > max_bytes):
                    break
                batch.append(entry)
                size += entry[SIZE]
            self._in_flight = {entry[SEQ] for entry in batch}
            self._dropped_in_flight = set()
        return batch

    def landed(self) -> None:
        """The sender is done with its batch (settled or kept for a retry)."""
        with self.lock:
            self._in_flight = set()
            self._dropped_in_flight = set()
            if not self._failures:
                self._failures = {}  # a dict keeps its largest table: let it go

    def unsettled(self, entries: Sequence[Entry[Item]]) -> list[Entry[Item]]:
        """Those of ``entries`` still in the buffer: not settled, nor
        dropped for room."""
        with self.lock:
            if not self._entries:
                return []
            head = self._entries[0][SEQ]
            settled = self._settled
            return [entry for entry in entries if entry[SEQ] >= head and entry[SEQ] not in settled]

    def failures(self, entry: Entry[Item]) -> int:
        """Sends of the entry that failed in a row."""
        return self._failures.get(entry[SEQ], 0)

    def failed(self, entries: Sequence[Entry[Item]], reset: bool = False) -> None:
        """One more failed send of each entry, counted in ``stats.retried``
        (``reset``: count again from 0, not a retry)."""
        with self.lock:
            failures = self._failures
            for entry in entries:
                failures[entry[SEQ]] = 0 if reset else failures.get(entry[SEQ], 0) + 1
            if not reset:
                self.stats.retried += len(entries)

    def settle(self, settled: Sequence[tuple[Entry[Item], Fate]]) -> None:
        """Counts each entry by its final fate and lets go of the settled
        oldest ones. An entry dropped for room while it was being sent was
        counted as dropped: if the backend took it after all, it is counted
        as exported instead."""
        with self.lock:
            stats = self.stats
            head = self._entries[0][SEQ] if self._entries else self._next_seq
            now: set[int] = set()
            for (seq, _, size, _), fate in settled:
                if seq < head or seq in self._settled or seq in now:
                    if seq in self._dropped_in_flight and fate is Fate.DELIVERED:
                        self._dropped_in_flight.discard(seq)
                        stats.dropped_buffer_full -= 1
                        stats.exported += 1
                    continue
                now.add(seq)
                if self._failures:
                    self._failures.pop(seq, None)
                stats.buffered -= 1
                stats.buffered_bytes -= size
                if fate is Fate.DELIVERED:
                    stats.exported += 1
                elif fate is Fate.REFUSED:
                    stats.dropped_rejected += 1
                else:
                    stats.dropped_encoding += 1
            self._pop_settled(write=True, now=now)

    def _pop_settled(self, write: bool, now: set[int] | None = None) -> None:
        """Removes the settled oldest entries (``now``: just settled),
        acknowledged to the spool in one frame; the settled ones behind an
        unsettled entry stay as tombstones (caller holds the lock)."""
        entries = self._entries
        settled = self._settled
        now = now or set()
        spooled = 0
        pause = pacing()
        while entries and (entries[0][SEQ] in now or entries[0][SEQ] in settled):
            if self._spool_waiting:
                break  # what is left stays settled, for the waiting add to let go
            if pause:
                pause_if_due()
            seq, _, _, spool_size = entries.popleft()
            now.discard(seq)
            settled.discard(seq)
            if spool_size:
                spooled += 1
        if now:
            settled.update(now)
        if not settled:
            self._settled = set()  # a set keeps its largest table: let it go
        if self.spool is None:
            return
        try:
            with self.spool_lock:
                self.spool.ack(spooled, write=write)
        except Exception as exc:
            self.log.log(
                logging.ERROR,
                "spool-write",
                "%s: could not update the spool in %s (%r); its items may be sent again",
                self.name,
                self.spool.directory,
                exc,
            )

    def _spool_append(self, items: Sequence[tuple[Item, int]]) -> list[int]:
        """Writes the items to the spool file (caller holds ``spool_lock``); a write
        that fails keeps them in memory only, logged."""
        if self.spool is None:
            return [0] * len(items)
        try:
            return self.spool.append([item for item, _ in items])
        except Exception as exc:
            self.log.log(
                logging.ERROR,
                "spool-write",
                "%s: could not write to the spool in %s (%r); %d items are kept in memory only",
                self.name,
                self.spool.directory,
                exc,
                len(items),
            )
            return [0] * len(items)

    def adopt(self) -> list[Any]:
        """The items of spool files of processes that are gone (see
        :meth:`Spool.adopt`); call :meth:`release_adopted` once they are added."""
        if self.spool is None:
            return []
        with self.spool_lock:
            return self.spool.adopt()

    def release_adopted(self) -> None:
        if self.spool is not None:
            with self.spool_lock:
                self.spool.release_adopted()

    def close(self) -> tuple[int, int]:
        """Empties the buffer at shutdown: (unsettled items lost, unsettled
        items kept in the spool file for the next process), counted in
        ``stats.dropped_shutdown`` and ``stats.spooled``."""
        with self.lock:
            left = [entry for entry in self._entries if entry[SEQ] not in self._settled]
            kept = sum(1 for entry in left if entry[SPOOLED])
            self._reset()
            if self.spool is not None:
                # Items the disk never took are not kept, whatever their frame.
                with self.spool_lock:
                    kept -= min(kept, self.spool.close())
            stats = self.stats
            stats.buffered = 0
            stats.buffered_bytes = 0
            stats.spooled += kept
            stats.dropped_shutdown += len(left) - kept
        return len(left) - kept, kept

    def items(self) -> list[Item]:
        """The unsettled items, oldest first (for tests and diagnostics)."""
        with self.lock:
            return [entry[ITEM] for entry in self._entries if entry[SEQ] not in self._settled]
