"""The spool where disks and deployments really fail (issue 24), one test
per case: real processes killed with SIGKILL, a real 2 MiB file system made
by the test, two users, and every request counted at a real HTTP endpoint
(``tests/http_sink.py``), which must receive each exactly once.

The processes are ``tests/spool_app.py``, driven line by line. The backend
is "down" while the sink answers 503, "up" once it answers 204.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_chest_otel._spool import Spool, scan, spooled_payloads
from flask_chest_otel._spool_codecs import dumps_http_item, loads_http_item
from flask_chest_otel.http_payload._exporter import Payload

from .conftest import wait_for
from .http_sink import HTTPSink, Reply

REPO = Path(__file__).resolve().parent.parent
DOWN = Reply(503, b"down")
UP = Reply(204, b"")
NOBODY = 65534


class App:
    """A process of ``tests/spool_app.py``; its stderr goes to a file."""

    #: Every process started: one a failed test left running is stopped at
    #: its teardown (``stop_leftover_apps``), not left to the garbage
    #: collector, whose warnings about its pipes would fail the next test.
    started: list[App] = []

    def __init__(self, tmp_path: Path, tag: str, *chests: dict[str, Any]) -> None:
        self.stderr_path = tmp_path / f"{tag}.{len(list(tmp_path.glob(f'{tag}.*')))}.stderr"
        config = json.dumps({"tag": tag, "chests": list(chests)})
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.spool_app", config],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                text=True,
            )  # fmt: skip
        App.started.append(self)

    def command(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, self.stderr
        return answer.strip()

    def serve(self, requests: int) -> None:
        assert self.command(f"serve {requests}") == "served"

    def stats(self) -> list[dict[str, int]]:
        stats: list[dict[str, int]] = json.loads(self.command("stats"))
        return stats

    def state(self) -> str:
        """The app's recorder queue and thread stacks (``spool_app.state``), as text."""
        found = json.loads(self.command("state"))
        threads = found.pop("threads")
        return f"{found}\n" + "\n".join(f"--- {name}\n{stack}" for name, stack in threads.items())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)
        assert self.process.returncode == -signal.SIGKILL

    def quit(self) -> None:
        self.process.communicate("quit\n", timeout=30)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


@pytest.fixture(autouse=True)
def stop_leftover_apps() -> Iterator[None]:
    yield
    apps, App.started[:] = list(App.started), []
    for app in apps:
        if app.process.returncode is None:  # neither killed nor quit
            app.process.kill()
            app.process.communicate(timeout=30)  # closes its pipes


def writer(name: str, url: str, spool_dir: Path, **options: Any) -> dict[str, Any]:
    return {"kind": "http", "name": name, "url": url, "spool_dir": str(spool_dir),
            "options": options}  # fmt: skip


def influx(name: str, url: str, spool_dir: Path, **options: Any) -> dict[str, Any]:
    return {"kind": "influx", "name": name, "url": url, "spool_dir": str(spool_dir),
            "options": options}  # fmt: skip


@pytest.fixture
def sink() -> Iterator[HTTPSink]:
    with HTTPSink() as server:
        server.default = DOWN
        yield server


def bring_up(sink: HTTPSink) -> tuple[int, int]:
    """Answers 204 from now on; returns the index of the first request so
    answered, and the connections accepted so far. Every connection a killed
    process opened is accepted first: a connection made here is accepted
    after them (the listen queue is first in, first out), and the sink
    numbers connections as it accepts them, so once it answered this one,
    theirs are all counted (``delivered`` leaves them out)."""
    marker = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=10)
    try:
        marker.request("GET", "/__count")
        assert marker.getresponse().status == 200
    finally:
        marker.close()
    with sink._lock:
        sink.default = UP
        return len(sink._requests), sink.connections


def delivered(sink: HTTPSink, since: tuple[int, int], path: str) -> Counter[str]:
    """How many times each request ID reached ``path`` (its ``transaction``
    variable), from the request ``since`` on, over connections accepted
    after it: a POST a killed process wrote just before its SIGKILL, read
    after ``bring_up``, was taken by the server but never answered to its
    sender (the case where the Idempotency-Key repeats, docs/reliability.md),
    so the heir rightly sends it again."""
    first, connections = since
    ids: Counter[str] = Counter()
    for request in sink.requests[first:]:
        if request.method != "POST" or request.path != path:
            continue
        if request.connection <= connections:
            continue
        if path == "/api/v2/write":
            for line in request.body.split(b"\n"):
                if line.startswith(b"transaction,"):
                    tags = line.split(b" ", 1)[0].split(b",")
                    ids.update(t[11:].decode() for t in tags if t.startswith(b"request_id="))
        else:
            ids.update(item["id"] for item in request.json() if item["name"] == "transaction")
    return ids


def spooled(spool_dir: Path) -> int:
    try:
        return len(spooled_payloads(spool_dir))
    except FileNotFoundError:
        return 0


def spool_bytes(spool_dir: Path) -> int | None:
    """The bytes of the spool files, or None if a file came or went while
    they were measured (the sum would mix two moments)."""
    before = sorted(spool_dir.glob("*.spool"))
    try:
        total = sum(path.stat().st_size for path in before)
    except FileNotFoundError:
        return None
    return total if sorted(spool_dir.glob("*.spool")) == before else None


def kill_when_spooled(app: App, spool_dir: Path, requests: int) -> None:
    assert wait_for(lambda: spooled(spool_dir) >= requests, timeout=30), app.stderr
    app.kill()


def delivered_once_by(
    heir: App, sink: HTTPSink, since: tuple[int, int], path: str, requests: int
) -> Counter[str]:
    """Waits for ``heir`` to deliver ``requests`` requests to ``path``, stops
    it, and checks that each came once; returns them."""
    try:
        assert wait_for(lambda: len(delivered(sink, since, path)) >= requests, timeout=60)
    finally:
        heir.quit()
    got = delivered(sink, since, path)
    assert len(got) == requests and set(got.values()) == {1}
    return got


def test_the_spool_stays_within_spool_max_bytes_while_the_backend_is_down(
    sink: HTTPSink, tmp_path: Path
) -> None:
    """spool_max_bytes=50,000, backend down, 20,000 requests: the files never
    exceed 50,000 bytes (sampled throughout), the oldest are dropped,
    counted and logged; after SIGKILL the next process delivers exactly the
    rest, once each, the newest."""
    spool_dir = tmp_path / "spool"
    chest = writer("bounded", f"{sink.url}/bounded", spool_dir, spool_max_bytes=50_000,
                   per_request=False)  # fmt: skip
    app = App(tmp_path, "bounded", chest)
    largest = samples = 0
    serving = True

    def sample() -> None:
        nonlocal largest, samples
        while serving:
            size = spool_bytes(spool_dir)
            if size is not None:
                largest, samples = max(largest, size), samples + 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    seen: dict[str, int] = {}

    def counted() -> int:
        (stats,) = app.stats()
        seen.update(stats)
        return stats["buffered"] + stats["dropped_buffer_full"]

    try:
        for _ in range(20):
            app.serve(1_000)
        assert wait_for(lambda: counted() == 20_000, timeout=30), (
            f"buffered + dropped_buffer_full != 20,000 requests: {seen}\n{app.state()}\n"
            f"{app.stderr[-4000:]}"
        )
    finally:
        serving = False
        sampler.join()
    (stats,) = app.stats()
    kept = stats["buffered"]
    assert 0 < kept < 20_000 and stats["dropped_buffer_full"] == 20_000 - kept
    assert samples > 100 and 0 < largest <= 50_000
    assert spooled(spool_dir) == kept
    app.kill()
    assert "bounded: buffer full" in app.stderr

    since = bring_up(sink)
    heir = App(tmp_path, "bounded-heir", chest)
    got = delivered_once_by(heir, sink, since, "/bounded", kept)
    numbers = sorted(int(request_id.rsplit("-", 1)[1]) for request_id in got)
    assert numbers == list(range(20_000 - kept, 20_000)), "the newest are kept"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs, mounted for the test."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_loses_nothing_already_written_and_writes_again_when_space_returns(
    sink: HTTPSink, tmp_path: Path, small_disk: Path
) -> None:
    """A 2 MiB disk filled up to 200 KB, backend down: 2,000 requests, then
    2,000 more with the disk full, then space is freed and 2,000 more come;
    SIGKILL. The files stayed whole (no torn frame), one ERROR said the disk
    refused writes, and the next process delivers all 6,000 exactly once."""
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - 200_000))
    spool_dir = small_disk / "spool"
    chest = writer("full", f"{sink.url}/full", spool_dir, per_request=False)
    app = App(tmp_path, "full", chest)
    app.serve(2_000)
    assert wait_for(lambda: "cannot write the spool" in app.stderr, timeout=30)
    app.serve(2_000)
    written = spooled(spool_dir)
    assert 0 < written < 4_000
    for path in spool_dir.glob("*.spool"):
        found = scan(path.read_bytes())
        assert not found.damaged and not found.torn, "cut back to the last whole frame"
    filler.unlink()
    app.serve(2_000)
    kill_when_spooled(app, spool_dir, 6_000)
    assert app.stderr.count("cannot write the spool") == 1
    assert "is written again" in app.stderr

    since = bring_up(sink)
    heir = App(tmp_path, "full-heir", chest)
    delivered_once_by(heir, sink, since, "/full", 6_000)


def test_chests_whose_names_sanitise_alike_never_take_each_others_files(
    sink: HTTPSink, tmp_path: Path
) -> None:
    """``orders/api`` and ``orders:api`` share a directory: B never delivers
    A's 500 requests; A's next process delivers them once each."""
    spool_dir = tmp_path / "spool"
    chest_a = writer("orders/api", f"{sink.url}/a", spool_dir)
    chest_b = writer("orders:api", f"{sink.url}/b", spool_dir)
    app_a = App(tmp_path, "a", chest_a)
    app_a.serve(500)
    kill_when_spooled(app_a, spool_dir, 500)

    since = bring_up(sink)
    app_b = App(tmp_path, "b", chest_b)
    try:
        app_b.serve(10)  # B's first look at the directory came before these
        assert wait_for(lambda: len(delivered(sink, since, "/b")) >= 10, timeout=30)
    finally:
        app_b.quit()
    assert len(delivered(sink, since, "/b")) == 10
    assert all(request_id.startswith("b-") for request_id in delivered(sink, since, "/b"))

    heir = App(tmp_path, "a-heir", chest_a)
    delivered_once_by(heir, sink, since, "/a", 500)


def test_an_http_and_an_influxdb_chest_of_one_name_each_deliver_their_own_once(
    sink: HTTPSink, tmp_path: Path
) -> None:
    """Two chests named ``metrics``, one HTTP writer and one InfluxDB, killed
    with 300 requests each in the spool: the next process delivers each
    chest's 300 to its own backend, once each."""
    spool_dir = tmp_path / "spool"
    chests = (writer("metrics", f"{sink.url}/writer", spool_dir),
              influx("metrics", sink.url, spool_dir))  # fmt: skip
    app = App(tmp_path, "same", *chests)
    app.serve(300)
    kill_when_spooled(app, spool_dir, 600)

    since = bring_up(sink)
    heir = App(tmp_path, "same-heir", *chests)
    try:
        assert wait_for(
            lambda: (
                len(delivered(sink, since, "/writer")) >= 300
                and len(delivered(sink, since, "/api/v2/write")) >= 300
            ),
            timeout=60,
        ), heir.stderr
    finally:
        heir.quit()
    for path in ("/writer", "/api/v2/write"):
        got = delivered(sink, since, path)
        assert len(got) == 300 and set(got.values()) == {1}, path
        assert all(request_id.startswith("same-") for request_id in got)


class RunsCommand:
    """Unpickled, runs ``command``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def forged_files(scratch: Path, identity: tuple[str, str, str], marker: Path) -> dict[str, bytes]:
    """What an attacker writes: a file in this version's format, named and
    headed as the victim's, and one in the earlier, pickled format."""
    spool = Spool(scratch, identity[1], logging.getLogger("forger"), dumps_http_item,
                  lambda data: loads_http_item(data, Payload), identity=identity)  # fmt: skip
    body = b'[{"name": "transaction", "value": 1, "id": "forged-%d"}]'
    spool.append([Payload(body % n, True, "forged", 1) for n in range(50)])
    assert spool.path is not None
    forged = {spool.path.name: spool.path.read_bytes()}
    for segment in spool._segments:
        os.close(segment.fd)
    forged[f"{identity[1]}.4242.0badc0de.spool"] = pickle.dumps(RunsCommand(f"touch {marker}"))
    return forged


def test_a_file_another_user_put_in_the_spool_directory_is_never_read(
    sink: HTTPSink, tmp_path: Path
) -> None:
    """A spool directory others may write to (mode 0777): user ``nobody``
    puts a file named and headed as this chest's, and a pickled one whose
    unpickling runs a command. The next process reports the directory and
    both files (ERROR naming them), runs nothing, delivers none of them and
    delivers its own 100 requests once each."""
    if os.geteuid() != 0:
        pytest.skip("dropping privileges to another user needs root")
    shared = Path(tempfile.mkdtemp(prefix="spool-shared-"))
    try:
        shared.chmod(0o777)
        marker = shared / "pickle-ran"
        chest = writer("victim", f"{sink.url}/victim", shared)
        app = App(tmp_path, "victim", chest)
        app.serve(100)
        kill_when_spooled(app, shared, 100)
        identity = ("http-payload", "victim", f"{sink.url}/victim")
        for name, data in forged_files(tmp_path / "forge", identity, marker).items():
            subprocess.run(
                ["tee", str(shared / name)], input=data, stdout=subprocess.DEVNULL,
                user=NOBODY, group=NOBODY, extra_groups=[], check=True,
            )  # fmt: skip
        by_nobody = [path for path in shared.iterdir() if path.stat().st_uid == NOBODY]
        assert len(by_nobody) == 2

        since = bring_up(sink)
        heir = App(tmp_path, "victim-heir", chest)
        try:
            assert wait_for(lambda: len(delivered(sink, since, "/victim")) >= 100, timeout=60)
            assert wait_for(lambda: "uid 65534" in heir.stderr, timeout=30)
        finally:
            heir.quit()
        got = delivered(sink, since, "/victim")
        assert len(got) == 100 and set(got.values()) == {1}
        assert all(request_id.startswith("victim-") for request_id in got)
        assert not marker.exists(), "nothing from the file ran"
        errors = heir.stderr
        assert f"spool directory {shared} is this user's, mode 0o777" in errors
        for path in by_nobody:
            assert errors.count(f"spool file {path} belongs to uid 65534") == 1
            assert path.exists()
    finally:
        shutil.rmtree(shared)


def test_a_deleted_spool_directory_is_noticed_and_a_sigkill_after_loses_nothing(
    sink: HTTPSink, tmp_path: Path
) -> None:
    """Backend down, 3,000 requests spooled, the directory deleted: within
    a second it is made again with what the buffer holds (one ERROR); then
    SIGKILL, and the next process delivers all 3,000 once each."""
    spool_dir = tmp_path / "spool"
    chest = writer("lost", f"{sink.url}/lost", spool_dir, per_request=False)
    app = App(tmp_path, "lost", chest)
    app.serve(3_000)
    assert wait_for(lambda: spooled(spool_dir) >= 3_000, timeout=30)
    shutil.rmtree(spool_dir)
    assert wait_for(lambda: "went away" in app.stderr, timeout=30)
    kill_when_spooled(app, spool_dir, 3_000)
    assert app.stderr.count("went away") == 1

    since = bring_up(sink)
    heir = App(tmp_path, "lost-heir", chest)
    delivered_once_by(heir, sink, since, "/lost", 3_000)


@pytest.mark.parametrize("per_request", [True, False], ids=["per-request-heir", "batched-heir"])
def test_a_spool_left_by_the_other_mode_is_delivered_once_per_request(
    sink: HTTPSink, tmp_path: Path, per_request: bool
) -> None:
    """Backend down, 200 requests spooled by one mode, SIGKILL; a process of
    the other mode, same name and URL, adopts the spool and delivers each
    request once (as payloads left ready, or as tuples it makes its own)."""
    spool_dir = tmp_path / "spool"
    app = App(tmp_path, "switch", writer("switch", f"{sink.url}/switch", spool_dir,
                                         per_request=not per_request))  # fmt: skip
    app.serve(200)
    kill_when_spooled(app, spool_dir, 200)

    since = bring_up(sink)
    heir = App(tmp_path, "switch-heir", writer("switch", f"{sink.url}/switch", spool_dir,
                                               per_request=per_request))  # fmt: skip
    delivered_once_by(heir, sink, since, "/switch", 200)
    assert "ERROR" not in heir.stderr


RACE_WRITER = textwrap.dedent(
    """
    import logging, os, sys
    from flask_chest_otel._spool import Spool
    from flask_chest_otel._spool_codecs import dumps_value, loads_value

    directory, rounds = sys.argv[1], int(sys.argv[2])
    identity = ("race", "race", "")
    refused = lost = 0
    for n in range(rounds):
        spool = Spool(directory, "race", logging.getLogger("race"), dumps_value, loads_value,
                      identity=identity, max_bytes=8192)
        for item in range(6):  # a new file about every other append
            refused += spool.append([[n, item, "x" * 300]]) == [0] or bool(spool._pending)
            for segment in spool._segments:
                try:
                    lost += os.stat(segment.path).st_ino != segment.inode
                except FileNotFoundError:
                    lost += 1
        spool.ack(6)
        spool.close()
    print(refused, lost)
    """
)

RACE_ADOPTER = textwrap.dedent(
    """
    import logging, os, sys
    from flask_chest_otel._spool import Spool
    from flask_chest_otel._spool_codecs import dumps_value, loads_value

    directory, stop = sys.argv[1], sys.argv[2]
    spool = Spool(directory, "race", logging.getLogger("race"), dumps_value, loads_value,
                  identity=("race", "race", ""))
    taken = 0
    while not os.path.exists(stop):
        taken += len(spool.adopt())
        spool.release_adopted()
    print(taken)
    """
)


def test_creating_files_while_others_adopt_never_loses_a_live_file_nor_refuses_an_append(
    tmp_path: Path,
) -> None:
    """One process makes 6,000 spool files (a new one every other append)
    while two others adopt in a loop: no live file is ever taken or deleted,
    no append refused, and nothing is adopted (every file was live)."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    stop = tmp_path / "stop"
    adopters = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_ADOPTER, str(spool_dir), str(stop)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        result = subprocess.run(
            [sys.executable, "-c", RACE_WRITER, str(spool_dir), "2000"],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        stop.touch()
        taken = [int(process.communicate(timeout=60)[0]) for process in adopters]
    refused, lost = map(int, result.stdout.split())
    assert (refused, lost) == (0, 0), result.stderr
    assert taken == [0, 0]
    assert list(spool_dir.glob("*.spool")) == []
