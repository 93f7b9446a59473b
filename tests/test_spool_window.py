"""What bounds a SIGKILL's loss in time while a chest spools (the collector's
deadline, pausing that stops at it, a sender that yields the buffer lock), and
the ``spool_fsync`` policy. Mechanisms, not timings: the measured windows are
in docs/reliability.md (``scripts/sigkill_window.py``)."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import types
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from flask_chest_otel import FlaskChestInfluxDB, _pacing
from flask_chest_otel._chest import STEADY_COLLECT_INTERVAL, Chest
from flask_chest_otel._delivery import DELIVERED, BufferedExporter, Settlement, retry
from flask_chest_otel._recorder import (
    IDLE_COLLECT_INTERVAL,
    SPOOL_PACED_SECONDS,
    Record,
    Recorder,
)
from flask_chest_otel._spool import Spool, spooled_payloads
from flask_chest_otel._spool_codecs import dumps_value, loads_value
from flask_chest_otel.environment_variables import FLASK_CHEST_SPOOL_FSYNC


@pytest.fixture(autouse=True)
def idle_afterwards() -> Iterator[None]:
    yield
    _pacing._busy_until = 0.0


class Pauses:
    """The pauses (``_pacing``'s sleeps) each thread took, with their times."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_thread: dict[int, list[float]] = {}

        def sleep(seconds: float) -> None:
            self.by_thread.setdefault(threading.get_ident(), []).append(time.perf_counter())
            time.sleep(seconds)

        monkeypatch.setattr(_pacing, "time", types.SimpleNamespace(sleep=sleep))

    def of(self, thread: threading.Thread | None) -> list[float]:
        assert thread is not None and thread.ident is not None
        return self.by_thread.get(thread.ident, [])


def test_a_paced_thread_stops_pausing_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pausing has a time budget: no pause starts after the deadline, however
    long the work goes on, while requests are being served."""
    pauses = Pauses(monkeypatch)
    _pacing.requests_seen(60.0)
    deadline = time.perf_counter() + 0.01
    _pacing.background(paced=True, deadline=deadline)
    try:
        started = time.perf_counter()
        for _ in _pacing.paced(range(10_000_000)):
            if time.perf_counter() - started > 0.05:
                break
        assert not _pacing.pacing()
    finally:
        _pacing.background(paced=False)
    taken = pauses.of(threading.current_thread())
    assert taken, "it paused before the deadline"
    assert max(taken) <= deadline


class Received(BufferedExporter[int]):
    """Items are the records' values; the backend is down (or up)."""

    def __init__(self, up: bool = False, **options: Any) -> None:
        super().__init__(name="window", retry_initial=5, retry_max=5, **options)
        self.up = up
        self.received = 0

    def _encode_records(self, records: Sequence[Record]) -> Iterable[int]:
        self.received += len(records)
        return [int(record[2]) for record in records]

    def _send(self, batch: Sequence[int]) -> Settlement:
        return DELIVERED if self.up else retry("down")


#: Records queued for the two collections below: enough that the paced one
#: outlasts its grace by many slices on a fast host (5,000 made 9 pauses,
#: not the > 10 asserted, in one run of three on 2026-12-03's development
#: host), fewer than a recorder's ``collect_at``
#: (20,000), past which a collection runs at full speed anyway.
OLD_RECORDS = 15_000


def records_recorded_ago(seconds: float, requests: int) -> list[Record]:
    """Queued records of the first sink of a new recorder, ``seconds`` old."""
    at = time.time_ns() - int(seconds * 1e9)
    return [(0, "a", n, ("request_id", f"r{n}"), at, None, ()) for n in range(requests)]


def collector_pauses(
    chest: Chest, records: list[Record], monkeypatch: pytest.MonkeyPatch
) -> list[float]:
    """The pauses a new recorder's collector thread takes handing ``records``
    (queued before it starts) to ``chest`` while requests are being served."""
    assert isinstance(chest.exporter, Received)
    pauses = Pauses(monkeypatch)
    _pacing.requests_seen(60.0)
    recorder = Recorder()
    recorder._pending.extend(records)
    with recorder._collect_lock:  # the collector waits for the sink its records name
        recorder.sink([chest])
    try:
        deadline = time.monotonic() + 30
        while chest.exporter.received < len(records) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert chest.exporter.received == len(records)
        return pauses.of(recorder._thread)
    finally:
        recorder.forget(chest)
        chest.exporter.shutdown(timeout_millis=0)


def test_a_spooling_chests_records_past_their_deadline_are_handed_over_without_pausing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records older than SPOOL_PACED_SECONDS reach a spooling chest (and its
    file) at full speed, requests being served or not: the collector's own
    thread, encoding included, never pauses for them."""
    chest = Chest("window", Received(spool_dir=tmp_path), export_interval=0.05)
    old = records_recorded_ago(SPOOL_PACED_SECONDS + 0.5, OLD_RECORDS)
    assert collector_pauses(chest, old, monkeypatch) == []


def test_a_chest_that_does_not_spool_is_collected_paced_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same records, old as they are, are handed to a chest without a
    spool in paced slices: no deadline applies there."""
    chest = Chest("window", Received(), export_interval=0.05)
    old = records_recorded_ago(SPOOL_PACED_SECONDS + 0.5, OLD_RECORDS)
    assert len(collector_pauses(chest, old, monkeypatch)) > 10


def test_the_spool_deadline_counts_from_the_oldest_queued_record(tmp_path: Path) -> None:
    """A collection may pause until its oldest record is SPOOL_PACED_SECONDS
    old, no longer; a wall clock step never stretches that."""
    chest = Chest("window", Received(spool_dir=tmp_path), export_interval=2)
    recorder = Recorder()
    try:
        with recorder._collect_lock:  # the collector holds off
            recorder.sink([chest])
            assert recorder.spooling
            assert recorder.interval == 0.05  # spooling chests are collected every 50 ms
            for age, budget in (
                (0.05, SPOOL_PACED_SECONDS - 0.05),
                (1.0, 0.0),
                (-60, SPOOL_PACED_SECONDS),  # the wall clock stepped back
            ):
                recorder._pending.clear()
                recorder._pending.extend(records_recorded_ago(age, 1))
                left = recorder._spool_deadline() - time.perf_counter()
                assert budget - 0.02 <= left <= budget + 1e-6, (age, left)
    finally:
        recorder.forget(chest)
        chest.exporter.shutdown(timeout_millis=0)


def test_a_sender_holding_the_buffer_lock_yields_to_a_spool_write(tmp_path: Path) -> None:
    """While a spooling add waits for the lock, the sender cuts its batch
    short (it keeps what it took; the rest goes in the next one)."""
    exporter = Received(spool_dir=tmp_path)
    try:
        buffer = exporter._buffer
        buffer.add([(n, 10) for n in range(100)])
        buffer._spool_waiting = True  # as ``add`` sets it before taking the lock
        batch = buffer.take(50, 10_000)
        assert [entry[1] for entry in batch] == [0]
        buffer._spool_waiting = False
        buffer.landed()
        assert [entry[1] for entry in buffer.take(50, 10_000)] == list(range(50))
    finally:
        exporter.shutdown(timeout_millis=0)


def test_a_spool_write_does_not_wait_for_the_buffer_lock(tmp_path: Path) -> None:
    """The collector's items reach the file while the sender holds the
    buffer's lock; only their entries in memory wait for it."""
    exporter = Received(spool_dir=tmp_path)
    buffer = exporter._buffer
    adding = threading.Thread(target=buffer.add, args=([(7, 10), (8, 10)],))
    try:
        with buffer.lock:  # as the sender holds it, taking or settling a batch
            adding.start()
            deadline = time.monotonic() + 10
            while not spooled_payloads(tmp_path) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert [loads_value(item) for item in spooled_payloads(tmp_path)] == [7, 8]
            assert len(buffer) == 0  # the entries wait for the lock
        adding.join(10)
        assert buffer.items() == [7, 8]
    finally:
        exporter.shutdown(timeout_millis=0)


# -- spool_fsync ------------------------------------------------------------------


class Syncs:
    """An ``os.fsync`` that notes, for each call, whether the descriptor is
    a directory and the file's size then: an honest check that the sync
    comes after the write, on the file that holds the items. (Whether the
    disk's cache is then flushed is the kernel's promise; no power is cut.)"""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, fd: int) -> None:
        info = os.fstat(fd)
        self.calls.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_size))
        os.fsync(fd)


def a_spool(directory: Path, fsync: str, syncs: Syncs) -> Spool:
    return Spool(
        directory, "window", logging.getLogger("test"), dumps_value, loads_value,
        identity=("test", "window", ""), fsync=fsync, sync=syncs,
    )  # fmt: skip


def test_fsync_always_syncs_the_file_after_each_write_and_a_new_files_directory(
    tmp_path: Path,
) -> None:
    syncs = Syncs()
    spool = a_spool(tmp_path, "always", syncs)
    spool.append([1, 2, 3])
    size = spool._segments[0].size
    assert syncs.calls == [("file", size), ("dir", syncs.calls[1][1])]
    spool.append([4])
    assert syncs.calls[2:] == [("file", spool._segments[0].size)]
    spool.ack(4)  # an ack is not synced on its own: losing it resends, never loses
    assert len(syncs.calls) == 3
    spool.close()


def test_fsync_interval_syncs_from_the_upkeep_at_most_once_a_second(tmp_path: Path) -> None:
    syncs = Syncs()
    spool = a_spool(tmp_path, "interval", syncs)
    spool.append([1, 2, 3])
    spool.maintain()
    assert syncs.calls == [], "not due before FSYNC_INTERVAL"
    spool._sync_at = spool._check_at = time.monotonic()  # as FSYNC_INTERVAL later
    spool.append([4])  # its upkeep is due too
    assert syncs.calls == [], "the writing thread leaves it to the exporter's upkeep"
    spool.maintain()
    assert [kind for kind, _ in syncs.calls] == ["file", "dir"]
    assert syncs.calls[0][1] == spool._segments[0].size
    spool.append([5])
    spool.maintain()  # not due yet (FSYNC_INTERVAL)
    assert len(syncs.calls) == 2
    spool.close()  # what is left for the next process is synced
    assert [kind for kind, _ in syncs.calls] == ["file", "dir", "file"]


def test_fsync_never_syncs_nothing(tmp_path: Path) -> None:
    syncs = Syncs()
    spool = a_spool(tmp_path, "never", syncs)
    spool.append([1, 2, 3])
    spool.maintain()
    spool.close()
    assert syncs.calls == []


def test_spool_fsync_is_an_option_of_every_spooling_chest_and_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chest = FlaskChestInfluxDB(
        name="fsync", url="http://127.0.0.1:9", token="t", org="o", bucket="b",
        spool_dir=tmp_path, spool_fsync="always",
    )  # fmt: skip
    try:
        spool = chest.exporter._buffer.spool
        assert spool is not None and spool.fsync == "always"
    finally:
        chest.shutdown(timeout_millis=0)
    monkeypatch.setenv(FLASK_CHEST_SPOOL_FSYNC, "Interval")
    exporter = Received(spool_dir=tmp_path / "env")
    try:
        assert exporter._buffer.spool is not None
        assert exporter._buffer.spool.fsync == "interval"
    finally:
        exporter.shutdown(timeout_millis=0)
    monkeypatch.setenv(FLASK_CHEST_SPOOL_FSYNC, "sometimes")
    with pytest.raises(ValueError, match=r"\$FLASK_CHEST_SPOOL_FSYNC must be one of"):
        Received(spool_dir=tmp_path / "bad")
    monkeypatch.delenv(FLASK_CHEST_SPOOL_FSYNC)
    exporter = Received(spool_dir=tmp_path / "default")
    try:
        assert exporter._buffer.spool is not None and exporter._buffer.spool.fsync == "never"
    finally:
        exporter.shutdown(timeout_millis=0)
    with pytest.raises(ValueError, match="spool_fsync must be one of"):
        Received(spool_dir=tmp_path / "bad", spool_fsync="often")


def test_a_steady_chest_is_collected_every_20_ms_while_requests_come_and_less_often_idle() -> None:
    """The per-request writer is ``steady``: its requests are handed over
    every ``STEADY_COLLECT_INTERVAL`` (short collections, which never pause
    for the GIL); an idle process wakes only every ``IDLE_COLLECT_INTERVAL``."""
    exporter = Received(up=True)
    exporter.steady = True  # type: ignore[attr-defined]
    chest = Chest("window", exporter, export_interval=2)
    recorder = Recorder()
    collections: list[int] = []
    collect = recorder.collect

    def counted() -> int:
        collections.append(collected := collect())
        return collected

    recorder.collect = counted  # type: ignore[method-assign]
    try:
        sink = recorder.sink([chest])
        assert recorder.interval == STEADY_COLLECT_INTERVAL == 0.02
        ended = time.monotonic() + 0.4
        number = 0
        while time.monotonic() < ended:  # a request every 2 ms for 0.4 s
            number += 1
            recorder.record_many([(sink.key, "a", number, ("request_id", f"r{number}"),
                                   time.time_ns(), None, ())])  # fmt: skip
            time.sleep(0.002)
        busy = sum(1 for count in collections if count)
        assert busy >= 12, collections  # every 20 ms: about 20; every 50 ms: 8
        time.sleep(0.1)
        collections.clear()
        time.sleep(0.5)
        assert len(collections) <= 0.5 / IDLE_COLLECT_INTERVAL + 2, collections
        assert exporter.received == number
    finally:
        recorder.forget(chest)
        chest.exporter.shutdown(timeout_millis=1_000)
