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
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_chest_otel._delivery import DELIVERED, retry
from flask_chest_otel._spool import Spool, scan, spooled_payloads
from flask_chest_otel._spool._frames import ITEM, encode_frame
from flask_chest_otel._spool_codecs import dumps_value, loads_value

from .conftest import wait_for
from .test_delivery import ScriptedExporter
from .test_faults import RestartableVM

REPO = Path(__file__).resolve().parent.parent

# argv: VictoriaMetrics URL, spool_dir, suite tag, requests to serve.
SPOOLING_PROCESS = textwrap.dedent(
    """
    import itertools, os, sys, time
    from tests.conftest import interruptible_by_ctrl_c, sample_app
    interruptible_by_ctrl_c()
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


# -- the spool files ---------------------------------------------------------------

#: The identity of ScriptedExporter's chest (its default ``_spool_identity``).
SCRIPTED = ("tests.test_delivery.ScriptedExporter", "scripted", "")


def a_spool(directory: Path, identity: tuple[str, str, str] = SCRIPTED, **options: Any) -> Spool:
    return Spool(
        directory, identity[1], logging.getLogger("test"), dumps_value, loads_value,
        identity=identity, **options,
    )  # fmt: skip


def dead_spool(directory: Path, items: list[Any], **options: Any) -> list[Path]:
    """Spool files as a killed process leaves them (written, never closed)."""
    spool = a_spool(directory, **options)
    spool.append(items)
    paths = [segment.path for segment in spool._segments]
    for segment in spool._segments:
        os.close(segment.fd)  # the process is gone: its locks go with it
    return paths


def adopting_exporter(directory: Path, **options: Any) -> ScriptedExporter:
    exporter = ScriptedExporter(lambda batch: DELIVERED, spool_dir=directory, **options)
    exporter._ensure_thread()
    return exporter


def test_acknowledged_items_are_not_read_back_and_an_emptied_file_keeps_only_its_header(
    tmp_path: Path,
) -> None:
    spool = a_spool(tmp_path)
    spool.append([1, 2, 3, 4])
    spool.ack(3)
    path = spool.path
    assert path is not None
    assert spooled_payloads(tmp_path) == [b"4"]
    spool.ack(1)
    assert scan(path.read_bytes()).items == {}
    assert path.stat().st_size == spool._segments[0].header_size
    spool.close()
    assert not path.exists()


def test_a_damaged_frame_is_skipped_and_every_whole_item_after_it_is_resent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (path,) = dead_spool(tmp_path, list(range(10)))
    data = bytearray(path.read_bytes())
    third = data.index(encode_frame(ITEM, 2, dumps_value(2)))
    data[third + 21] ^= 0xFF  # the third item's payload
    after_fourth = third + 2 * len(encode_frame(ITEM, 2, dumps_value(2)))
    data[after_fourth:after_fourth] = b"\xfcCS\xfdtorn"  # and a cut-off frame after the fourth
    path.write_bytes(bytes(data))
    exporter = adopting_exporter(tmp_path)
    try:
        assert wait_for(lambda: exporter.delivered == [0, 1, *range(3, 10)], timeout=10)
    finally:
        exporter.shutdown()
    assert "is damaged at bytes" in caplog.text
    assert spool_files(tmp_path) == []


def test_a_cut_off_last_write_keeps_the_whole_items_before_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (path,) = dead_spool(tmp_path, [7, 8])
    path.write_bytes(path.read_bytes()[:-1])
    exporter = adopting_exporter(tmp_path)
    try:
        assert wait_for(lambda: exporter.delivered == [7], timeout=10)
    finally:
        exporter.shutdown()
    assert "ends in a cut-off write" in caplog.text
    assert spool_files(tmp_path) == []


def test_a_file_locked_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    live = a_spool(tmp_path)
    live.append([1])
    exporter = adopting_exporter(tmp_path)
    time.sleep(0.3)
    exporter.shutdown()
    assert exporter.delivered == []
    assert live.path is not None and live.path.exists()
    live.ack(1)
    live.close()
    assert spool_files(tmp_path) == []


def test_the_spool_bound_holds_on_disk_at_every_write_while_the_backend_is_down(
    tmp_path: Path,
) -> None:
    """Compaction used to wait for a successful send: now whole files go as
    the oldest items are dropped, and nothing is written beyond the bound."""
    exporter = ScriptedExporter(
        lambda batch: retry("down"), spool_dir=tmp_path, spool_max_bytes=20_000
    )
    largest = 0
    for start in range(0, 20_000, 100):
        exporter.put(*range(start, start + 100))
        largest = max(largest, sum(path.stat().st_size for path in spool_files(tmp_path)))
    assert exporter._buffer.spool is not None
    assert largest <= 20_000
    assert exporter._buffer.spool._pending_bytes == 0, "everything kept is on disk"
    kept = exporter.stats.buffered
    assert exporter.stats.dropped_buffer_full == 20_000 - kept
    exporter.shutdown(timeout_millis=10)
    payloads = [loads_value(payload) for payload in spooled_payloads(tmp_path)]
    assert payloads == list(range(20_000 - kept, 20_000)), "the newest are kept"
    assert exporter.stats.spooled == kept


def test_a_chest_takes_only_the_files_whose_header_names_it(tmp_path: Path) -> None:
    """Names that sanitise alike (``scripted/x``, ``scripted:x``), or one name
    for two kinds of exporter: each chest takes its own files only."""
    others = [
        ("tests.test_delivery.ScriptedExporter", "scripted/x", ""),
        ("tests.test_delivery.ScriptedExporter", "scripted:x", ""),
        ("influxdb", "scripted", "http://localhost:8086 org 'o' bucket 'b'"),
    ]
    kept = [path for identity in others for path in dead_spool(tmp_path, [5], identity=identity)]
    mine = dead_spool(tmp_path, [1])
    exporter = adopting_exporter(tmp_path)
    try:
        assert wait_for(lambda: exporter.delivered == [1], timeout=10)
        time.sleep(0.2)
    finally:
        exporter.shutdown()
    assert exporter.delivered == [1]
    assert not any(path.exists() for path in mine)
    assert all(path.exists() for path in kept)


def test_a_file_of_an_unknown_format_is_set_aside_with_one_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (path,) = dead_spool(tmp_path, [1])
    path.write_bytes(b"not a spool file at all")
    exporter = adopting_exporter(tmp_path)
    try:
        assert wait_for(lambda: (tmp_path / f"{path.name}.rejected").exists(), timeout=10)
    finally:
        exporter.shutdown()
    assert exporter.delivered == []
    assert caplog.text.count("not a spool file of a format this version reads") == 1


class Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/flask-chest-otel-spool-pickle-ran"


def test_a_pickled_spool_file_of_an_earlier_version_is_never_unpickled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Path(MARKER).unlink(missing_ok=True)
    legacy = tmp_path / "scripted.12345.0123abcd.spool"
    legacy.write_bytes(b"\x01" + len(pickle.dumps(Boom())).to_bytes(4, "little") + b"\0" * 4
                       + pickle.dumps(Boom()))  # fmt: skip
    legacy.chmod(0o600)
    exporter = adopting_exporter(tmp_path)
    try:
        assert wait_for(lambda: (tmp_path / f"{legacy.name}.rejected").exists(), timeout=10)
    finally:
        exporter.shutdown()
    assert not Path(MARKER).exists()
    assert exporter.delivered == []
    assert "whose format (pickle) is never read" in caplog.text


def test_a_file_writable_by_others_is_never_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (path,) = dead_spool(tmp_path, [1])
    path.chmod(0o666)
    exporter = adopting_exporter(tmp_path)
    try:
        assert wait_for(lambda: "is writable by others" in caplog.text, timeout=10)
    finally:
        exporter.shutdown()
    assert exporter.delivered == []
    assert path.exists()
    assert caplog.text.count("is writable by others") == 1


def test_the_directory_is_created_0700_and_a_shared_one_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a_spool(tmp_path / "made" / "here")
    assert stat.S_IMODE((tmp_path / "made" / "here").stat().st_mode) == 0o700
    assert "spool directory" not in caplog.text
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    a_spool(shared)
    assert f"spool directory {shared} is this user's, mode 0o777" in caplog.text


def test_a_deleted_file_is_noticed_and_what_it_held_is_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = a_spool(tmp_path / "spool")
    spool.append([1, 2, 3])
    spool.ack(1)
    for path in spool_files(tmp_path / "spool"):
        path.unlink()
    (tmp_path / "spool").rmdir()
    spool.maintain()
    assert [loads_value(item) for item in spooled_payloads(tmp_path / "spool")] == [2, 3]
    assert caplog.text.count("went away") == 1
    spool.append([4])
    spool.ack(3)
    assert spooled_payloads(tmp_path / "spool") == []
    spool.close()
    assert spool_files(tmp_path / "spool") == []


def test_one_deleted_file_of_several_is_noticed_and_every_buffered_item_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = a_spool(tmp_path, max_bytes=64_000)
    spool.append([f"item {n}" * 20 for n in range(100)])
    spool.ack(10)
    before = spool_files(tmp_path)
    assert len(before) >= 3
    before[0].unlink()
    spool.maintain()
    assert [loads_value(item) for item in spooled_payloads(tmp_path)] == [
        f"item {n}" * 20 for n in range(10, 100)
    ]
    assert not set(before) & set(spool_files(tmp_path)), "the old files are replaced"
    assert caplog.text.count("went away") == 1
    spool.ack(90)
    spool.close()
    assert spool_files(tmp_path) == []
