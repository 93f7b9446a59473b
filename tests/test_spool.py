"""The on-disk spool (``spool_dir=``): what a killed process had not
delivered is delivered by the next process on the same directory, exactly
once per request, and a damaged spool file never stops a process.

The end-to-end tests run real processes killed with SIGKILL (``os.kill``)
against a real VictoriaMetrics; the file-level tests use the delivery test
double of tests/test_delivery.py (a scripted backend) over real files.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_chest_otel._delivery import DELIVERED, retry
from flask_chest_otel._spool import Spool, encode_frame, read_items

from .conftest import wait_for
from .test_delivery import ScriptedExporter
from .test_faults import RestartableVM

REPO = Path(__file__).resolve().parent.parent

# argv: VictoriaMetrics URL, spool_dir, suite tag, requests to serve.
SPOOLING_PROCESS = textwrap.dedent(
    """
    import itertools, os, sys, time
    from tests.conftest import sample_app
    from flask_chest_otel import FlaskChestInfluxDB

    chest = FlaskChestInfluxDB(
        name="spooled", url=sys.argv[1], token="t", org="o", bucket="b",
        custom_tags={"suite": sys.argv[3]}, spool_dir=sys.argv[2],
        export_interval=0.5, retry_initial=0.05, retry_max=0.2,
    )
    counter = itertools.count()
    client = sample_app(
        [chest], request_id_generator=lambda: f"{os.getpid()}-{next(counter)}"
    ).test_client()
    for _ in range(int(sys.argv[4])):
        assert client.get("/").status_code == 200
    try:  # Ctrl-C may come as soon as "served" is read
        print("served", flush=True)
        time.sleep(3600)
    except KeyboardInterrupt:
        pass
    """
)


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableVM]:
    server = RestartableVM(tmp_path_factory.mktemp("vm-spool"))
    try:
        yield server
    finally:
        server.stop()


def spooling_process(url: str, spool_dir: Path, suite: str, requests: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", SPOOLING_PROCESS, url, str(spool_dir), suite, str(requests)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line == "served\n", process.communicate(timeout=30)[1]
    return process


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*.spool"))


def stop_with_ctrl_c(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    return errors


def test_sigkill_with_the_backend_down_loses_nothing_the_next_process_delivers_it_once(
    vm: RestartableVM, tmp_path: Path
) -> None:
    """Backend down, 2,000 requests, 1.5 s idle, SIGKILL; backend up; a new
    process on the same spool_dir delivers all 2,000 exactly once (by request
    ID), and the spool is empty after."""
    vm.stop()
    spool_dir = tmp_path / "spool"
    killed = spooling_process(vm.url, spool_dir, "sigkill", 2_000)
    time.sleep(1.5)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert [path.stat().st_size > 0 for path in spool_files(spool_dir)] == [True]

    vm.start()
    heir = spooling_process(vm.url, spool_dir, "sigkill-heir", 0)
    try:
        assert wait_for(lambda: sum(vm.request_ids("sigkill").values()) >= 2_000, timeout=60)
    finally:
        errors = stop_with_ctrl_c(heir)
    got = vm.request_ids("sigkill")
    assert len(got) == 2_000 and set(got.values()) == {1}, "each request exactly once"
    assert {request_id.split("-")[0] for request_id in got} == {str(killed.pid)}
    assert "resending 2000 items" not in errors  # logged at INFO, not shown by default
    assert spool_files(spool_dir) == [], "the spool is empty after"


def test_files_of_two_killed_processes_are_taken_by_exactly_one_of_two_new_ones(
    vm: RestartableVM, tmp_path: Path
) -> None:
    """Two workers killed with data in their spools, two new processes start
    together on the directory: the flock lets one take each file, so every
    request arrives once."""
    vm.stop()
    spool_dir = tmp_path / "spool"
    killed = [spooling_process(vm.url, spool_dir, "shared", 300) for _ in range(2)]
    time.sleep(1.0)
    for process in killed:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
    assert len(spool_files(spool_dir)) == 2

    vm.start()
    heirs = [spooling_process(vm.url, spool_dir, "shared-heir", 0) for _ in range(2)]
    try:
        assert wait_for(lambda: sum(vm.request_ids("shared").values()) >= 600, timeout=60)
        time.sleep(1.0)  # a duplicate, if any, would arrive meanwhile
    finally:
        for heir in heirs:
            stop_with_ctrl_c(heir)
    got = vm.request_ids("shared")
    assert len(got) == 600 and set(got.values()) == {1}
    assert spool_files(spool_dir) == []


def test_a_process_stopped_while_the_backend_is_down_leaves_its_data_to_the_next(
    vm: RestartableVM, tmp_path: Path
) -> None:
    """A polite exit (Ctrl-C) with the backend down keeps what was not
    delivered in the spool, says so, and the next process delivers it."""
    vm.stop()
    spool_dir = tmp_path / "spool"
    first = spooling_process(vm.url, spool_dir, "polite", 100)
    errors = stop_with_ctrl_c(first)
    assert "spooled: shut down with 100 items not delivered, kept in the spool" in errors
    assert len(spool_files(spool_dir)) == 1
    vm.start()
    heir = spooling_process(vm.url, spool_dir, "polite-heir", 0)
    try:
        assert wait_for(lambda: sum(vm.request_ids("polite").values()) >= 100, timeout=60)
    finally:
        stop_with_ctrl_c(heir)
    assert set(vm.request_ids("polite").values()) == {1}
    assert spool_files(spool_dir) == []


# -- the spool file ---------------------------------------------------------------


def dead_spool(directory: Path, items: list[int]) -> Path:
    """A spool file as a killed process leaves it (written, never closed)."""
    spool = Spool(directory, "scripted", logging.getLogger("test"), pickle_dumps, pickle.loads)
    spool.append(items)
    assert spool.path is not None and spool._fd is not None
    os.close(spool._fd)  # the process is gone: its lock goes with it
    return spool.path


def pickle_dumps(item: int) -> bytes:
    return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)


def repr_bytes(item: int) -> bytes:
    return str(item).encode()


def int_loads(data: bytes) -> int:
    return int(data)


def test_acknowledged_items_are_not_read_back_and_an_emptied_file_is_truncated(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, "scripted", logging.getLogger("test"), repr_bytes, int_loads)
    spool.append([1, 2, 3, 4])
    spool.ack(3)
    assert spool.path is not None
    assert read_items(spool.path.read_bytes()) == ([b"4"], False)
    spool.ack(1)
    assert spool.path.stat().st_size == 0
    spool.close()
    assert not spool.path.exists()


def test_a_damaged_spool_file_is_set_aside_with_a_log_line_and_its_good_part_resent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = dead_spool(tmp_path, [1, 2, 3])
    data = bytearray(path.read_bytes())
    frame = len(encode_frame(1, pickle_dumps(1)))
    data[2 * frame + 9] ^= 0xFF  # the third item's payload
    path.write_bytes(bytes(data))
    exporter = ScriptedExporter(lambda batch: DELIVERED, spool_dir=tmp_path)
    exporter._ensure_thread()
    try:
        assert wait_for(lambda: exporter.delivered == [1, 2], timeout=10)
    finally:
        exporter.shutdown()
    assert "checksum mismatch" in caplog.text and "kept as" in caplog.text
    assert [p.suffix for p in tmp_path.iterdir()] == [".corrupt"]


def test_a_cut_off_last_write_keeps_the_whole_items_before_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = dead_spool(tmp_path, [7, 8])
    path.write_bytes(path.read_bytes()[:-1])
    exporter = ScriptedExporter(lambda batch: DELIVERED, spool_dir=tmp_path)
    exporter._ensure_thread()
    try:
        assert wait_for(lambda: exporter.delivered == [7], timeout=10)
    finally:
        exporter.shutdown()
    assert "ends in a cut-off write" in caplog.text
    assert spool_files(tmp_path) == []


def test_a_file_locked_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    live = Spool(tmp_path, "scripted", logging.getLogger("test"), repr_bytes, int_loads)
    live.append([1])
    exporter = ScriptedExporter(lambda batch: DELIVERED, spool_dir=tmp_path)
    exporter._ensure_thread()
    time.sleep(0.3)
    exporter.shutdown()
    assert exporter.delivered == []
    assert live.path is not None and live.path.exists()
    live.ack(1)
    live.close()


def test_the_spool_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    exporter = ScriptedExporter(
        lambda batch: retry("down"), spool_dir=tmp_path, spool_max_bytes=100
    )
    exporter.put(*range(20))  # 10-byte frames (9 header + 1-2 payload)
    assert exporter._buffer.spool is not None
    assert exporter._buffer.spool.live_bytes <= 100
    assert exporter.stats.dropped_buffer_full == 20 - exporter.stats.buffered
    exporter.shutdown(timeout_millis=10)
    items, _ = read_items(spool_files(tmp_path)[0].read_bytes())
    kept = [pickle.loads(item) for item in items]
    assert kept == list(range(20 - len(kept), 20)), "the newest are kept"
    assert exporter.stats.spooled == len(kept)
    assert exporter.stats.dropped_buffer_full + len(kept) == 20


def test_a_long_outage_compacts_the_file_instead_of_growing_it(tmp_path: Path) -> None:
    exporter = ScriptedExporter(
        lambda batch: retry("down"), spool_dir=tmp_path, max_buffer_items=1_000
    )
    for start in range(0, 200_000, 1_000):
        exporter.put(*range(start, start + 1_000))
    spool = exporter._buffer.spool
    assert spool is not None and spool.path is not None
    assert spool.path.stat().st_size <= max(2 * spool.live_bytes, 1 << 20) + 20_000
    exporter.shutdown(timeout_millis=10)
    items, _ = read_items(spool_files(tmp_path)[0].read_bytes())
    assert len(items) == 1_000


def test_a_chest_takes_only_the_files_of_its_own_name(tmp_path: Path) -> None:
    """Chests "scripted" and "scripted.b" share a directory: neither takes
    the other's files."""
    other = Spool(tmp_path, "scripted.b", logging.getLogger("test"), pickle_dumps, pickle.loads)
    other.append([5])
    assert other._fd is not None
    os.close(other._fd)
    mine = dead_spool(tmp_path, [1])
    exporter = ScriptedExporter(lambda batch: DELIVERED, spool_dir=tmp_path)
    exporter._ensure_thread()
    try:
        assert wait_for(lambda: exporter.delivered == [1], timeout=10)
    finally:
        exporter.shutdown()
    assert not mine.exists()
    assert other.path is not None and other.path.exists()
