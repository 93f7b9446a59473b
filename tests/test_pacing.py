"""Background threads hold the GIL in short slices (``_pacing``): what a
request thread waits for while one of them works pure Python."""

from __future__ import annotations

import statistics
import threading
import time
import types
from collections.abc import Iterator

import pytest

from flask_chest_otel import _pacing


def _work(paced: bool, stop: threading.Event) -> None:
    """A background thread encoding: pure Python, no I/O."""
    _pacing.background(paced=paced)
    try:
        while not stop.is_set():
            for item in _pacing.paced(range(10_000)):
                str(item * 3.5)
    finally:
        _pacing.background(paced=False)


def _gil_waits(paced: bool, busy: bool) -> list[float]:
    """How late 1 ms sleeps of this thread wake (the GIL wait after I/O, as a
    request thread's after ``recv``), while a background thread works."""
    if busy:
        _pacing.requests_seen(60.0)
    stop = threading.Event()
    worker = threading.Thread(target=_work, args=(paced, stop))
    worker.start()
    try:
        time.sleep(0.05)
        waits = []
        for _ in range(100):
            started = time.perf_counter()
            time.sleep(0.001)
            waits.append(time.perf_counter() - started - 0.001)
        return waits
    finally:
        stop.set()
        worker.join()


@pytest.fixture(autouse=True)
def idle_afterwards() -> Iterator[None]:
    yield
    _pacing._busy_until = 0.0


def test_a_paced_background_thread_keeps_gil_waits_short_while_requests_are_served() -> None:
    """Unpaced, the waiting thread gets the GIL only at the switch interval
    (5 ms); paced, within about a slice (0.05 ms) and a pause."""
    unpaced = statistics.median(_gil_waits(paced=False, busy=True))
    paced = statistics.median(_gil_waits(paced=True, busy=True))
    assert unpaced > 0.003, unpaced
    assert paced < 0.001, paced


def test_without_recorded_requests_a_background_thread_does_not_pause() -> None:
    """An idle process drains a backlog at full speed: nothing to make room for."""
    waits = statistics.median(_gil_waits(paced=True, busy=False))
    assert waits > 0.003, waits


def test_only_background_threads_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's thread (force_flush, the exit's last flush) never sleeps in
    them; a background thread does, once per slice."""
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(_pacing, "time", types.SimpleNamespace(sleep=sleep))
    _pacing.requests_seen(60.0)

    def encode() -> None:
        started = time.perf_counter()
        for _ in _pacing.paced(range(1_000_000)):
            if time.perf_counter() - started > 0.05:
                break

    encode()
    assert pauses == []
    _pacing.background(paced=True)
    try:
        encode()
    finally:
        _pacing.background(paced=False)
    # 50 ms of work in slices, each followed by a pause (0.1 ms asked for).
    assert 50 <= len(pauses) <= 0.05 / _pacing.SLICE_SECONDS, len(pauses)
    assert set(pauses) == {_pacing.PAUSE_SECONDS}


def test_a_piece_of_work_shorter_than_the_grace_never_pauses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A collection or a sender's round (one ``background`` call) pauses
    only once it has run ``GRACE_SECONDS``: a request handed over alone
    costs no context switch. A longer one pauses every slice after that,
    and the next piece of work has its grace again. (On a clock of the
    test's own, 10 us per item, so that the host's hiccups do not count.)"""
    now = [0.0]
    started = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(now[0] - started[0])

    monkeypatch.setattr(_pacing, "_clock", lambda: now[0])
    monkeypatch.setattr(_pacing, "time", types.SimpleNamespace(sleep=sleep))
    monkeypatch.setattr(_pacing, "GRACE_SECONDS", 0.002)
    _pacing.requests_seen(60.0)

    def work(seconds: float) -> None:
        _pacing.background(paced=True)
        started[0] = now[0]
        for _ in _pacing.paced(range(10_000_000)):
            now[0] += 0.00001
            if now[0] - started[0] >= seconds:
                break

    try:
        for _ in range(20):
            work(0.0019)
        assert pauses == []
        work(0.03)
        # After 2 ms, one pause per 0.05 ms slice: 28 ms / 0.06 ms (the
        # slice and the item that ends it).
        assert pauses[0] >= 0.002, pauses[:3]
        assert 400 <= len(pauses) <= 600, len(pauses)
        pauses.clear()
        work(0.0019)
        assert pauses == []
    finally:
        _pacing.background(paced=False)
