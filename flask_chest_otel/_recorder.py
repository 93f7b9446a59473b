"""The recording pipeline of the chests: an OpenTelemetry API meter whose
gauges append each measurement, with its request's time, to one bounded
queue, and a collector thread that hands each chest's exporter the records
of the routes decorated with it (``_records``: the exporters encode them
without OpenTelemetry point objects where they can).

Why not the SDK's aggregation for this: per-request points are unique
attribute sets, which the SDK (1.45) stamps with the collection time, folds
into an overflow point past its cardinality limit (2000) and, before 1.45.2,
kept forever. A queue keeps each measurement's own time, has no cardinality
limit, and its memory is bounded by ``max_pending``. Recording costs an
append, a fraction of an SDK ``set`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import socketserver
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from types import FrameType
from typing import Protocol

from ._delivery import exit_millis_left, shutdown_all
from ._logging import LOGGER, RateLimitedLog
from ._names import ATTR_REQUEST_ID
from ._pacing import background, pause_if_due, requests_seen
from ._records import (
    ATTRIBUTES,
    SINK_KEY,
    TIME_UNIX_NANO,
    VERSION,
    FlatAttributes,
    Record,
    attributes_of,
    flat_attributes,
)


class Chest(Protocol):
    """What the recorder needs of a chest (``_chest.Chest`` is one): the
    recorder hands it records and shuts it down at exit, and knows no more
    of it (``_chest`` imports this module, not the other way round)."""

    name: str
    export_interval: float

    @property
    def collect_interval(self) -> float: ...

    def _receive_records(self, records: Sequence[Record]) -> None: ...

    def shutdown(self, timeout_millis: float = ...) -> None: ...

__all__ = [
    "RECORDER",
    "VERSION",
    "FlatAttributes",
    "Record",
    "Recorder",
    "attributes_of",
    "flat_attributes",
]

#: The collector hands over what it took after about this much work (the
#: chests encode it on the same thread); it pauses more often than that, see
#: ``_pacing``.
HAND_OVER_SECONDS = 0.001
#: While a chest spools, a collection pauses for requests (``_pacing``) only
#: until its oldest record is this old, then hands over at full speed: with
#: the spooling chests' collect interval (``_chest.SPOOL_COLLECT_INTERVAL``),
#: what bounds the age of what a SIGKILL loses, at any load.
SPOOL_PACED_SECONDS = 0.075
#: Seconds between collections while the last one found nothing, if the
#: shortest collect interval is shorter: a steady chest's 20 ms would wake
#: an idle process 50 times a second (at 10 ms, 100 times: 2.5 % of a core
#: on the development host, against 0.5 % at 50 ms). The same as a spooling
#: chest's interval, so the first record after a pause reaches the spool as
#: soon as before.
IDLE_COLLECT_INTERVAL = 0.05


class Sink:
    """What one ``@flask_chest`` use records into: its measurements go to
    exactly the chests that decorator named."""

    __slots__ = ("chests", "key", "recorder")

    def __init__(self, recorder: Recorder, chests: Sequence[Chest], key: int) -> None:
        self.recorder = recorder
        self.chests = tuple(chests)
        #: What a record holds instead of the sink (see ``Record``).
        self.key = key


class Recorder:
    """Process-wide queue of measurements and the thread that collects it.

    It collects every ``interval`` seconds (the shortest export interval of
    the registered chests), and early when ``collect_at`` records are waiting,
    so that memory stays bounded under any burst. Past ``max_pending`` the
    oldest records are dropped, counted and logged.

    While a registered chest spools, the collections keep time: each is due
    ``interval`` after the start of the last (not its end), and pauses for
    requests only until its oldest record is ``SPOOL_PACED_SECONDS`` old, so
    that a record reaches the spool within about ``interval`` +
    ``SPOOL_PACED_SECONDS`` whatever the load (given the CPU).
    """

    def __init__(self, max_pending: int = 500_000, collect_at: int = 20_000) -> None:
        self.max_pending = max_pending
        self.collect_at = collect_at
        self.dropped = 0
        self._chests: weakref.WeakSet[Chest] = weakref.WeakSet()
        #: Every sink made, indexed by its key (one per decorator use).
        self._sinks: list[Sink] = []
        self._log = RateLimitedLog(LOGGER)
        self._init_state()

    def _init_state(self) -> None:
        self._pending: deque[Record] = deque()
        self._wake = threading.Event()
        self._collect_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def sink(self, chests: Sequence[Chest]) -> Sink:
        for chest in chests:
            self._chests.add(chest)
        self._ensure_thread()
        self._wake.set()  # the collector re-reads the shortest interval
        sink = Sink(self, chests, len(self._sinks))
        self._sinks.append(sink)
        return sink

    def record_many(self, records: list[Record]) -> None:
        """Queues the measurements of one request. ``deque.extend`` of a list
        runs under the GIL in one step, so a collection takes all of them or
        none."""
        pending = self._pending
        pending.extend(records)
        if len(pending) >= self.collect_at:
            self._wake.set()
            if len(pending) > self.max_pending:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        dropped = 0
        try:
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                dropped += 1
        except IndexError:
            pass
        self.dropped += dropped
        self._log.log(
            logging.WARNING,
            "pending-full",
            "flask_chest_otel: %d measurements waiting (collector behind): dropped the %d oldest",
            self.max_pending,
            dropped,
        )

    @property
    def spooling(self) -> bool:
        """Whether a registered chest spools (its collections keep time)."""
        return any(getattr(chest, "spools", False) for chest in list(self._chests))

    @property
    def interval(self) -> float:
        intervals = [
            getattr(chest, "collect_interval", chest.export_interval)
            for chest in list(self._chests)
        ]
        return min(intervals, default=5.0)

    def _ensure_thread(self) -> None:
        if self._thread is None or self._pid != os.getpid():
            if self._pid != os.getpid():
                self._init_state()
            self._thread = threading.Thread(
                target=self._run, name="flask_chest_otel:collector", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        started = 0.0  # the last collection's
        collected = 0
        while True:
            spooling = self.spooling
            shortest = self.interval
            # Idle: a short (steady) interval would only cost wake-ups.
            interval = shortest if collected else max(shortest, IDLE_COLLECT_INTERVAL)
            if spooling:
                # Counted from the last collection's start: the time it took
                # never adds to what waits in memory only.
                self._wake.wait(max(0.0, started + interval - time.monotonic()))
            else:
                self._wake.wait(interval)
            self._wake.clear()
            started = time.monotonic()
            # Behind (a burst): collect at full speed, as losing nothing
            # comes before latency.
            background(
                paced=len(self._pending) < self.collect_at,
                deadline=self._spool_deadline() if spooling else float("inf"),
            )
            collected = 0
            try:
                collected = self.collect()
                if collected:
                    requests_seen(2 * shortest)
            except Exception:  # never let the collector die
                LOGGER.exception("flask_chest_otel: collecting measurements failed")

    def _spool_deadline(self) -> float:
        """When the collection about to start must stop pausing: once its
        oldest record is ``SPOOL_PACED_SECONDS`` old (``time.perf_counter``)."""
        try:
            recorded = self._pending[0][TIME_UNIX_NANO]
        except IndexError:
            age = 0.0
        else:  # clamped: a wall clock step never stretches the bound
            age = min(max(0.0, (time.time_ns() - recorded) / 1e9), SPOOL_PACED_SECONDS)
        return time.perf_counter() + SPOOL_PACED_SECONDS - age

    def collect(self) -> int:
        """Hands every waiting measurement to its chests' exporters (no I/O
        here; a spooling exporter writes its file).

        Hands over what it took about every ``HAND_OVER_SECONDS``, between
        two requests, never inside one; on the collector thread it pauses
        between records when due (``_pacing``). Returns how many
        measurements it took.
        """
        with self._collect_lock:
            pending = self._pending
            count = len(pending)
            if not count:
                return 0
            per_chest: dict[Chest, list[Record]] = {}
            pop = pending.popleft
            sinks = self._sinks
            clock = time.perf_counter
            hand_over_at = clock() + HAND_OVER_SECONDS
            for left in range(count - 1, -1, -1):
                pause_if_due()
                try:
                    record = pop()
                except IndexError:  # _drop_oldest took some meanwhile (and counted them)
                    break
                for chest in sinks[record[SINK_KEY]].chests:
                    if chest in per_chest:
                        per_chest[chest].append(record)
                    else:
                        per_chest[chest] = [record]
                if left and clock() > hand_over_at and _request_ends(record, pending):
                    self._hand_over(per_chest)
                    per_chest = {}
                    hand_over_at = clock() + HAND_OVER_SECONDS
                    if len(pending) >= self.collect_at:
                        background(paced=False)  # fallen behind meanwhile: full speed
            self._hand_over(per_chest)
            return count

    def _hand_over(self, per_chest: dict[Chest, list[Record]]) -> None:
        for chest, records in per_chest.items():
            try:
                chest._receive_records(records)
            except Exception:  # one chest's failure never skips the next
                LOGGER.exception("%s: handing over measurements failed", chest.name)

    def forget(self, chest: Chest) -> None:
        self._chests.discard(chest)

    def _after_fork_in_child(self) -> None:
        # Measurements recorded before the fork belong to the parent, which
        # exports them; the child starts empty with its own thread.
        self._init_state()
        if len(self._chests):
            self._ensure_thread()
        _deliver_before_forking_server_exit()

    def _at_exit(self) -> None:
        """Hands over the last measurements and shuts every chest down, all
        within the one exit budget (``FLASK_CHEST_EXIT_TIMEOUT``)."""
        try:
            self.collect()
        except Exception:
            LOGGER.exception("flask_chest_otel: collecting measurements at exit failed")
        for chest in list(self._chests):
            try:
                chest.shutdown(timeout_millis=exit_millis_left())
            except Exception:  # an error for one chest never skips the next
                LOGGER.exception("%s: shutdown at exit failed", chest.name)


def _request_ends(record: Record, pending: deque[Record]) -> bool:
    """Whether the next queued record belongs to another request."""
    try:
        following = pending[0]
    except IndexError:
        return True
    request_id = attributes_of(record[ATTRIBUTES]).get(ATTR_REQUEST_ID)
    return (
        request_id is None
        or attributes_of(following[ATTRIBUTES]).get(ATTR_REQUEST_ID) != request_id
    )


def deliver_at_exit() -> None:
    """What the interpreter's exit runs: every chest, then every other
    exporter, within one budget. Also run where atexit is not."""
    RECORDER._at_exit()
    shutdown_all()


def _in_multiprocessing_child(recorder: Recorder) -> None:
    # A multiprocessing child ends with os._exit() after running these
    # finalizers (atexit hooks do not run there).
    multiprocessing.util.Finalize(None, deliver_at_exit, exitpriority=100)


def _deliver_before_forking_server_exit() -> None:
    """In the child of a fork-per-request server (socketserver.ForkingMixIn,
    which ``app.run(processes=N)`` uses), deliver once the answer is sent and
    before the child's ``os._exit``: the server's ``shutdown_request`` is the
    last thing that child runs."""
    code = socketserver.ForkingMixIn.process_request.__code__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    if frame is None:
        return
    server = frame.f_locals.get("self")
    if server is None:
        return
    shutdown_request = server.shutdown_request

    def shutdown_request_then_deliver(request: object) -> None:
        try:
            shutdown_request(request)
        finally:
            deliver_at_exit()

    server.shutdown_request = shutdown_request_then_deliver


RECORDER = Recorder()
os.register_at_fork(after_in_child=RECORDER._after_fork_in_child)
multiprocessing.util.register_after_fork(RECORDER, _in_multiprocessing_child)
atexit.register(RECORDER._at_exit)
