"""Every way a process ends delivers what it recorded: interpreter exit
without ``shutdown()``, ``multiprocessing`` fork children (which end with
``os._exit``), fork-per-request servers (``app.run(processes=N)``) and
Ctrl-C; one total exit budget shared by all chests; an error for one chest
never skips the next. Real processes, real backends (SQLite, VictoriaMetrics,
an HTTP endpoint). ``make test`` runs this file on Python 3.10 to 3.13.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import read_rows, wait_for
from .http_sink import HTTPSink
from .servers import free_port
from .test_faults import RestartableVM

REPO = Path(__file__).resolve().parent.parent

# argv: chest kind, target (db file or URL), suite, how ("exit" or "multiprocessing").
RECORD_THEN_END = textwrap.dedent(
    """
    import itertools, multiprocessing, os, sys
    from tests.conftest import sample_app
    from flask_chest_otel import FlaskChestCustomWriter, FlaskChestInfluxDB, FlaskChestSQLite

    kind, target, suite, how = sys.argv[1:5]
    if kind == "sqlite":
        chest = FlaskChestSQLite(name="exit", db_uri=target, export_interval=60)
    elif kind == "influxdb":
        chest = FlaskChestInfluxDB(name="exit", url=target, token="t", org="o", bucket="b",
                                   custom_tags={"suite": suite}, export_interval=60)
    else:
        chest = FlaskChestCustomWriter(name="exit", url=target, export_interval=60,
                                       payload_generator=lambda t: dict(enumerate(t)))
    counter = itertools.count()
    app = sample_app([chest], request_id_generator=lambda: f"{suite}-{next(counter)}")

    def serve():
        client = app.test_client()
        for _ in range(50):
            assert client.get("/").status_code == 200

    if how == "multiprocessing":
        child = multiprocessing.get_context("fork").Process(target=serve)
        child.start()
        child.join()
        assert child.exitcode == 0, child.exitcode
        os._exit(0)  # the parent delivers nothing: what arrived, the child sent
    serve()
    """
)


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableVM]:
    server = RestartableVM(tmp_path_factory.mktemp("vm-exit"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["exit", "multiprocessing"])
@pytest.mark.parametrize("kind", ["sqlite", "influxdb", "http"])
def test_a_process_that_records_and_ends_without_shutdown_delivers_everything(
    kind: str, how: str, vm: RestartableVM, tmp_path: Path
) -> None:
    """50 requests, then the end of the script (or of a multiprocessing fork
    child, which ends with os._exit): all 50 reach the chest's backend."""
    suite = f"{kind}-{how}"
    with HTTPSink() as sink:
        target = {
            "sqlite": str(tmp_path / "exit.sqlite3"),
            "influxdb": vm.url,
            "http": sink.url,
        }[kind]
        result = subprocess.run(
            [sys.executable, "-c", RECORD_THEN_END, kind, target, suite, how],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        if kind == "sqlite":
            delivered = len(read_rows(target, "WHERE name = 'transaction'"))
        elif kind == "influxdb":
            got = vm.request_ids(suite)
            assert set(got.values()) == {1}
            delivered = len(got)
        else:
            delivered = len(sink.posts())
    assert delivered == 50


BUDGET_SCRIPT = textwrap.dedent(
    """
    import atexit, sys, time
    done = []
    atexit.register(lambda: print(f"exit took {time.monotonic() - done[0]:.3f} s", file=sys.stderr))
    from tests.conftest import sample_app
    from flask_chest_otel import FlaskChestCustomWriter, FlaskChestInfluxDB

    chests = [
        FlaskChestInfluxDB(name=f"dead-{n}", url=url, token="t", org="o", bucket="b",
                           export_interval=60, retry_initial=0.05, retry_max=0.2)
        for n, url in enumerate(sys.argv[1:])
    ]
    client = sample_app(chests).test_client()
    for _ in range(10):
        client.get("/")
    done.append(time.monotonic())
    """
)


def test_the_exit_budget_is_one_deadline_for_all_chests(tmp_path: Path) -> None:
    """Three chests whose backends are down, FLASK_CHEST_EXIT_TIMEOUT=1.5:
    the exit takes about 1.5 s in all (not 1.5 s each), and each chest's
    loss is counted and logged."""
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    result = subprocess.run(
        [sys.executable, "-c", BUDGET_SCRIPT, *dead],
        cwd=REPO,
        env={**os.environ, "FLASK_CHEST_EXIT_TIMEOUT": "1.5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    took = float(result.stderr.rsplit("exit took ", 1)[1].split()[0])
    assert 1.0 < took < 3.0
    for number in range(3):
        assert f"dead-{number}: shut down with 10 items not delivered in time, lost" in (
            result.stderr
        )


BROKEN_SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.conftest import sample_app
    from flask_chest_otel import FlaskChestSQLite

    class Broken(FlaskChestSQLite):
        def shutdown(self, timeout_millis=30_000):
            raise RuntimeError("this chest cannot shut down")

    chests = [Broken(name="broken-a", db_uri=sys.argv[1] + ".a", export_interval=60),
              FlaskChestSQLite(name="good", db_uri=sys.argv[1], export_interval=60),
              Broken(name="broken-b", db_uri=sys.argv[1] + ".b", export_interval=60)]
    client = sample_app(chests).test_client()
    for _ in range(20):
        client.get("/")
    """
)


def test_an_error_for_one_chest_at_exit_never_skips_the_next(tmp_path: Path) -> None:
    db = tmp_path / "good.sqlite3"
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_SCRIPT, str(db)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(read_rows(db, "WHERE name = 'transaction'")) == 20
    assert result.stderr.count("shutdown at exit failed") == 2
    assert "this chest cannot shut down" in result.stderr


# argv: db file, port, processes.
DEV_SERVER = textwrap.dedent(
    """
    import itertools, os, sys
    from tests.conftest import interruptible_by_ctrl_c, sample_app
    interruptible_by_ctrl_c()
    from flask_chest_otel import FlaskChestSQLite

    chest = FlaskChestSQLite(name="dev-server", db_uri=sys.argv[1], export_interval=60)
    counter = itertools.count()
    app = sample_app([chest], request_id_generator=lambda: f"{os.getpid()}-{next(counter)}")
    app.run(port=int(sys.argv[2]), processes=int(sys.argv[3]), threaded=sys.argv[3] == "1")
    """
)


@pytest.mark.parametrize("processes", [1, 3], ids=["threaded-ctrl-c", "fork-per-request"])
def test_the_development_server_delivers_every_request(tmp_path: Path, processes: int) -> None:
    """``app.run(processes=3)`` forks a child per request that ends with
    os._exit: each child delivers its request once answered, so all 30 are
    stored while the server still runs. Threaded, Ctrl-C delivers them."""
    db = tmp_path / "dev.sqlite3"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", DEV_SERVER, str(db), str(port), str(processes)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        assert wait_for(lambda: _answers(url) or server.poll() is not None, timeout=30)
        for _ in range(29):
            assert requests.get(url, timeout=30).status_code == 200
        if processes > 1:
            assert wait_for(
                lambda: db.exists() and len(read_rows(db, "WHERE name = 'transaction'")) >= 30,
                timeout=30,
            )
    finally:
        server.send_signal(signal.SIGINT)
        _, errors = server.communicate(timeout=30)
    rows = read_rows(db, "WHERE name = 'transaction'")
    assert len(rows) == 30, errors
    assert len({row["request_id"] for row in rows}) == 30
    assert "Traceback" not in errors.replace("KeyboardInterrupt", ""), errors


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=20)
    except requests.ConnectionError:
        return False
    return True


def test_an_exit_hook_on_python_3_12_sends_on_its_own_thread_when_none_can_start(
    tmp_path: Path,
) -> None:
    """An exporter never given to a chest, first used inside an atexit hook
    (where Python 3.12+ refuses new threads): shutdown sends synchronously."""
    script = textwrap.dedent(
        """
        import atexit, sys
        from tests.test_delivery import ScriptedExporter
        from flask_chest_otel._delivery import DELIVERED

        exporter = ScriptedExporter(lambda batch: DELIVERED)

        def late():
            exporter.put(1, 2, 3)
            exporter.shutdown(timeout_millis=2_000)
            print("delivered", exporter.delivered, flush=True)

        atexit.register(late)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "delivered [1, 2, 3]" in result.stdout, result.stderr
