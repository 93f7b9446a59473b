"""Our background threads hold the GIL in short slices, so that a request
thread never waits long behind them.

CPython gives the GIL to a waiting thread when the holder releases it and
the waiter wakes up before the holder takes it back. A thread that returns
from I/O (a request thread after ``accept``, ``recv`` or ``send``) therefore
waits for as long as a background thread runs pure Python, up to the switch
interval (5 ms), and often several times per request: under gunicorn sync
workers that made our p99 latency 3-10x prometheus-flask-exporter's (see
docs/benchmarks.md). ``time.sleep(0)`` does not help: it releases the GIL
and takes it back before the waiter has woken.

So the long loops of our background threads (the collector building points,
exporters encoding them, senders taking batches and writing rows) call
``pause_if_due()``: once ``SLICE_SECONDS`` of wall time have passed since
the last pause, it sleeps ``PAUSE_SECONDS``, a real sleep during which a
waiting thread takes the GIL. (Growing the slice after pauses no other
thread used made p99 worse: a request thread is often in I/O at that
moment, and waits for the longer slice when it comes back.)

A pause is not free: the sleep, the timer's wake-up, which preempts the
request thread, and the wait for the GIL back cost two or three context
switches and cold caches, far more CPU than the 0.05 ms slice. So each
piece of work (from one ``background`` call: a collection, a sender's
round) runs its first ``GRACE_SECONDS`` without a pause. A collection
every 20 ms of the requests since (the per-request HTTP writer's), or a
sender's round between two socket calls, is shorter than that and never
pauses; a collection of a whole export interval's requests (seconds of
them) pauses after it as before. A request thread waits at most the
grace behind a background thread, once per piece of work, instead of the
switch interval. While no
decorated request was recorded for a while (``requests_seen``), it does not
pause at all, so that an idle process drains a backlog at full speed (an
app whose only busy routes are undecorated is then not protected; see
docs/benchmarks.md). Only threads that called
``background(True)`` pause; in any other thread (a user's ``force_flush()``,
the exit's last flush) it does nothing. A thread that is falling behind (its
queue or buffer half full) turns pausing off, as losing nothing comes before
latency. No setting global to the app (``sys.setswitchinterval``, the GC) is
touched.

Pausing has no bound of its own: each pause costs the sleep plus the wait
for the GIL back, up to the switch interval while a request computes (3.5 ms
on average at 4,000 req/s, scripts/spool_window_breakdown.py). Work that
must be done by a time (a spooling chest's hand-over, what a SIGKILL can
lose) gives ``background`` a ``deadline``: past it the thread stops pausing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: Longest stretch of wall time a background thread works between pauses.
#: 0.05 ms: under gunicorn sync -w 2, SQLite chest p99 3.5-3.9 ms against
#: 4.3-4.8 ms with 0.2 ms (prometheus-flask-exporter 2.3-2.5 ms; 6-8
#: interleaved rounds, docs/benchmarks.md). Weighed again on 2026-12-03,
#: pinned (``bench_load.py --pacing-slice``), as pausing costs context
#: switches (per_request: 0.66 pauses and 2.8 switches per request,
#: ``benchmarks/syscalls_per_request.sh``): with 0.2 ms, per_request 0.91x
#: prometheus' req/s and 1.81x its p99, against 0.98x and 1.27x with 0.05
#: ms; sqlite 1.07x and 1.71x against 1.06x and 1.27x (4 interleaved
#: pairs): fewer pauses cost more than they save.
SLICE_SECONDS = 0.00005
#: How long it sleeps then (Linux makes it about 0.15 ms).
PAUSE_SECONDS = 0.0001
#: The first stretch of each piece of work (from ``background``) before its
#: first pause. 2 ms: per_request's pauses fell from 0.71 to 0.11 per request
#: and its context switches from 3.4 to 1.4 (5 ms: 0.04 and 1.3; no pacing
#: at all: 1.1; ``benchmarks/syscalls_per_request.sh``), its workers' CPU
#: per request from 1.25x prometheus-flask-exporter's to 1.19x; with its
#: collections every 50 ms, p99 rose from 1.29x to 1.40x, which collections
#: every 10 ms brought to 1.21x (``_chest.STEADY_COLLECT_INTERVAL``, now 20
#: ms, which longer runs read as cheaper at the same p99); sqlite
#: unchanged (pinned interleaved rounds, 2026-12-03, docs/benchmarks.md).
GRACE_SECONDS = 0.002

_local = threading.local()
_NEVER = float("inf")
_clock = time.perf_counter
#: Until when requests are taken to be served (see ``requests_seen``).
_busy_until = 0.0


def requests_seen(for_seconds: float) -> None:
    """The collector found recorded requests: pause for the next ``for_seconds``."""
    global _busy_until
    _busy_until = _clock() + for_seconds


def background(paced: bool, deadline: float = _NEVER) -> None:
    """Makes the calling thread pause in its loops (True) or not (False);
    paused, until ``deadline`` (``time.perf_counter()``) at most, then at full
    speed."""
    _local.until = _clock() + GRACE_SECONDS + SLICE_SECONDS if paced else None
    _local.deadline = deadline


def pacing() -> bool:
    """Whether the calling thread pauses in its loops now: it is paced and
    requests are being served."""
    return getattr(_local, "until", None) is not None and _clock() <= _busy_until


def pause_if_due() -> None:
    """Sleeps ``PAUSE_SECONDS`` if this thread is paced and its slice is over."""
    until = getattr(_local, "until", None)
    if until is None:
        return
    now = _clock()
    if now <= until or now > _busy_until:  # slice not over, or no requests to make room for
        return
    if now > _local.deadline:  # the work is due: no more pauses
        _local.until = None
        return
    time.sleep(PAUSE_SECONDS)
    _local.until = _clock() + SLICE_SECONDS


def paced(items: Iterable[T]) -> Iterator[T]:
    """``items``, pausing between them when due (see ``pause_if_due``)."""
    if getattr(_local, "until", None) is None:
        yield from items
        return
    for item in items:
        yield item
        pause_if_due()
