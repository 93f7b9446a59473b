"""Lanes: up to N jobs at once, one per lane (a thread with its own state:
for the direct transport, a group of connections, ``_direct._Group``).

Why threads and not ``selectors``: ``http.client.HTTPResponse`` reads its
answer from a blocking file, and parsing with the standard library is the
point (no hand-written HTTP reader); one non-blocking loop would need a
parser of its own again. The GIL cost stays low because the calling thread
(the exporter's sender) is a lane itself: a batch of one POST, the common
case below saturation, never hands anything to another thread; nor does a
batch the calling thread alone finishes in ``BATCH_SECONDS`` at the
measured time per POST (an endpoint on the same host). Helper threads take
the rest of a batch only when round trips make it worth it.

Helper threads are started with the exporter's sender thread (``start``) and stay,
blocked on a condition (no CPU): Python 3.12 cannot start a thread at
interpreter exit, where a backlog queued just before must still go out over
every connection. Connections are opened as the backlog grows (a helper
opens its own on its first job) and closed after ``IDLE_SECONDS`` without
work.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

State = TypeVar("State")
Job = TypeVar("Job")
Result = TypeVar("Result")

#: Seconds a lane's connection stays open without work.
IDLE_SECONDS = 30.0
#: A batch is spread over as many lanes as finish it in about this many
#: seconds at the measured time per job: against an endpoint that answers
#: at once (on the same host), a batch stays on the calling thread, as
#: handing jobs to threads would cost more CPU, and GIL time taken from the
#: app's requests, than it saves; 50 ms away, it takes every lane.
BATCH_SECONDS = 0.025
#: Weight of the last job's time in the running mean.
SMOOTHING = 0.2


class _Lane(Generic[State]):
    __slots__ = ("idle_since", "state")

    def __init__(self, state: State) -> None:
        self.state = state
        self.idle_since = time.monotonic()


class Lanes(Generic[State]):
    """Runs a batch of jobs over up to ``size`` lanes, each with a state of
    its own made by ``new_state(index)`` (the lane's number, in the order
    lanes are made, from 0) and released by
    ``close_state``."""

    def __init__(
        self,
        size: int,
        new_state: Callable[[int], State],
        close_state: Callable[[State], None],
        name: str,
    ) -> None:
        self.size = size
        self._new_state = new_state
        self._close_state = close_state
        self._name = name
        #: Running mean of the seconds one job takes (None: none measured).
        self.job_seconds: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Callable[[State], None]] = deque()
        self._helpers: list[threading.Thread] = []
        self._lanes: list[_Lane[State]] = []
        self._caller: _Lane[State] | None = None
        self._closed = False
        #: Whether helper threads can be started (not at interpreter exit on 3.12).
        self._can_start = True

    def start(self) -> None:
        """Starts the helper threads: before they are needed, as a backlog
        met at interpreter exit (Python 3.12+: no new thread) must still go
        out over every connection. An idle helper opens no connection and
        is woken only when a batch wants it."""
        if len(self._helpers) >= self.size - 1 or not self._can_start or self._closed:
            return
        with self._cond:
            self._start_helpers(self.size - 1)

    @property
    def helpers(self) -> int:
        """Helper threads started so far."""
        return len(self._helpers)

    def run(
        self,
        work: Callable[[State, Job], Result],
        jobs: Sequence[Job],
        failed: Result,
        stop: Callable[[Result], bool] | None = None,
        skipped: Result | None = None,
    ) -> list[Result]:
        """``work(state, job)`` for each job, at most ``size`` at once; the
        result of each, in order. ``failed`` stands for a job whose ``work``
        raised (a bug: the job is then retried by the caller's policy). Once
        a result satisfies ``stop``, jobs not yet started are not started:
        their result is ``skipped``."""
        results: list[Result] = [failed if skipped is None else skipped] * len(jobs)
        caller = self._caller_lane()
        lanes = self._lanes_for(len(jobs))
        if lanes == 1:
            for index, job in enumerate(jobs):
                results[index] = result = self._guarded(work, caller.state, job, failed)
                if stop is not None and stop(result):
                    break
            caller.idle_since = time.monotonic()
            return results
        left = [len(jobs)]
        done = threading.Condition(self._lock)
        queue = self._queue

        def task(index: int, job: Job) -> Callable[[State], None]:
            def run_on(state: State) -> None:
                results[index] = result = self._guarded(work, state, job, failed)
                with self._cond:
                    left[0] -= 1
                    if stop is not None and stop(result):
                        # Only this batch's jobs wait in the queue.
                        left[0] -= len(queue)
                        queue.clear()
                    if not left[0]:
                        done.notify_all()

            return run_on

        with self._cond:
            self._queue.extend(task(index, job) for index, job in enumerate(jobs))
            self._start_helpers(lanes - 1)  # if ``start`` could not
            self._cond.notify(lanes - 1)
        while True:
            with self._cond:
                if not self._queue:
                    break
                next_task = self._queue.popleft()
            next_task(caller.state)
        caller.idle_since = time.monotonic()
        with self._cond:
            while left[0]:
                done.wait()
        return results

    def _lanes_for(self, jobs: int) -> int:
        """Lanes for a batch of ``jobs``: enough to finish it in about
        ``BATCH_SECONDS``; all it can use until a job was timed."""
        most = min(jobs, self.size)
        if most <= 1 or self.job_seconds is None:
            return most
        return max(1, min(most, math.ceil(jobs * self.job_seconds / BATCH_SECONDS)))

    def _guarded(
        self, work: Callable[[State, Job], Result], state: State, job: Job, failed: Result
    ) -> Result:
        started = time.monotonic()
        try:
            result = work(state, job)
        except Exception:  # a bug: must not leave the batch waiting forever
            return failed
        took = time.monotonic() - started
        mean = self.job_seconds
        # Races between lanes lose an update at worst: it is an estimate.
        self.job_seconds = took if mean is None else mean + SMOOTHING * (took - mean)
        return result

    def _caller_lane(self) -> _Lane[State]:
        lane = self._caller
        if lane is None:
            lane = self._caller = _Lane(self._new_state(len(self._lanes)))
            with self._cond:
                self._lanes.append(lane)
        elif time.monotonic() - lane.idle_since > IDLE_SECONDS:
            self._close_state(lane.state)
        return lane

    def _start_helpers(self, wanted: int) -> None:
        """Starts helper threads up to ``wanted`` (under ``_cond``)."""
        while self._can_start and not self._closed and len(self._helpers) < wanted:
            lane = _Lane(self._new_state(len(self._lanes)))
            thread = threading.Thread(
                target=self._help,
                args=(lane,),
                name=f"flask_chest_otel:{self._name}:lane{len(self._helpers) + 1}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # interpreter exit (3.12+): the lanes there do it all
                self._can_start = False
                return
            self._helpers.append(thread)
            self._lanes.append(lane)

    def _help(self, lane: _Lane[State]) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closed:
                    idle = time.monotonic() - lane.idle_since
                    if idle >= IDLE_SECONDS:
                        self._close_state(lane.state)
                        cond.wait()
                    else:
                        cond.wait(IDLE_SECONDS - idle)
                if self._closed:
                    return
                next_task = self._queue.popleft()
            next_task(lane.state)
            lane.idle_since = time.monotonic()

    def close(self) -> None:
        """Closes every lane's state; helper threads end (a later ``run``
        goes over the calling thread's lane alone)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            lanes = list(self._lanes)
        for lane in lanes:
            self._close_state(lane.state)

    def after_fork_in_child(self) -> None:
        """In a forked child: the parent's helper threads do not exist here,
        and its connections must not be shared; all is made anew."""
        for lane in self._lanes:
            self._close_state(lane.state)
        self._reset()
