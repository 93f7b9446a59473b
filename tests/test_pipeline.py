"""The recording pipeline end to end: bursts, memory, intervals, flush and
shutdown, SQLite storage across processes, and the MeterProvider chest."""

from __future__ import annotations

import gc
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from flask_chest_otel import FlaskChestMeterProvider, FlaskChestSQLite, flask_chest
from flask_chest_otel._chest import Chest
from flask_chest_otel._delivery import DELTA_TEMPORALITY
from flask_chest_otel._recorder import RECORDER
from flask_chest_otel._records import TAGS

from .conftest import read_rows, sample_app, wait_for

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, *args: str, timeout: float = 120) -> str:
    """Runs ``code`` in a fresh interpreter; returns its stdout, failing on error."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_a_burst_of_10000_requests_in_one_interval_lands_10000_request_ids(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    """No per-request point is lost or merged, however many requests one
    export interval holds."""
    chest = make_sqlite_chest(export_interval=60.0)
    client = sample_app([chest]).test_client()
    for number in range(10_000):
        (client.post if number % 2 else client.get)("/")
    assert chest.force_flush(timeout_millis=30_000)
    connection = sqlite3.connect(chest.db_uri)
    try:
        count, distinct = connection.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM flask_chest WHERE name='transaction'"
        ).fetchone()
    finally:
        connection.close()
    assert (count, distinct) == (10_000, 10_000)
    assert chest.exporter.stats.dropped == 0


def test_memory_does_not_grow_with_requests_served(tmp_path: Path) -> None:
    """The Python heap after 8,000 more requests is where 2,000 requests left
    it: nothing is kept per request once exported. Anything kept per request
    would be an object of at least 16 bytes, 128 KB over 8,000 requests;
    the allowance is half that (fresh interpreter, tracemalloc; the RSS slope
    over 10^6 requests is in benchmarks/)."""
    output = run_python(
        """
        import gc, sys, tracemalloc
        sys.path.insert(0, ".")
        from tests.conftest import sample_app
        from flask_chest_otel import FlaskChestSQLite
        chest = FlaskChestSQLite(db_uri=sys.argv[1], export_interval=0.5)
        client = sample_app([chest]).test_client()
        def serve(count):
            for number in range(count):
                (client.post if number % 2 else client.get)("/")
            chest.force_flush(30_000)
            gc.collect()
            return tracemalloc.get_traced_memory()[0]
        serve(1_000)
        tracemalloc.start()
        warm = serve(2_000)
        after = serve(8_000)
        print(warm, after, chest.exporter.stats.exported)
        """,
        str(tmp_path / "memory.sqlite3"),
        timeout=300,
    )
    warm, after, exported = (int(part) for part in output.split())
    assert exported == 16_500  # 11,000 requests, half of them with two variables
    assert after - warm < 64 * 1024, f"{after - warm} bytes kept by 8,000 requests"


def test_export_interval_is_configurable_per_chest(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    """Without force_flush, rows appear after about one export interval."""
    chest = make_sqlite_chest(export_interval=0.2)
    sample_app([chest]).test_client().get("/")
    assert wait_for(lambda: len(read_rows(chest.db_uri)) == 1, timeout=5.0)


def test_shutdown_flushes_what_the_chest_holds(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    chest = make_sqlite_chest(export_interval=60.0)
    client = sample_app([chest]).test_client()
    for _ in range(50):
        client.post("/")
    chest.shutdown()
    assert len(read_rows(chest.db_uri)) == 100
    assert chest.exporter.stats.dropped == 0


def test_interpreter_exit_flushes_without_an_explicit_shutdown(tmp_path: Path) -> None:
    db = tmp_path / "atexit.sqlite3"
    run_python(
        """
        import sys
        sys.path.insert(0, ".")
        from tests.conftest import sample_app
        from flask_chest_otel import FlaskChestSQLite
        chest = FlaskChestSQLite(db_uri=sys.argv[1], export_interval=3600)
        client = sample_app([chest]).test_client()
        for _ in range(25):
            client.post("/")
        """,
        str(db),
    )
    assert len(read_rows(db)) == 50


def test_sqlite_uses_wal_and_several_processes_can_write_one_file(tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite3"
    code = """
        import sys
        sys.path.insert(0, ".")
        from tests.conftest import sample_app
        from flask_chest_otel import FlaskChestSQLite
        chest = FlaskChestSQLite(db_uri=sys.argv[1], export_interval=0.05)
        client = sample_app([chest], request_id_generator=lambda: sys.argv[2]).test_client()
        for _ in range(2_000):
            client.get("/")
        chest.shutdown()
        print(chest.exporter.stats.exported)
        """
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(db), f"process-{number}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for number in range(3)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert outputs == ["2000\n"] * 3
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        counts = dict(
            connection.execute("SELECT request_id, count(*) FROM flask_chest GROUP BY request_id")
        )
    finally:
        connection.close()
    assert counts == {f"process-{number}": 2_000 for number in range(3)}


def test_a_locked_database_is_retried_and_loses_nothing(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    chest = make_sqlite_chest(busy_timeout=0.05, retry_initial=0.05, retry_max=0.2)
    blocker = sqlite3.connect(chest.db_uri, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        client = sample_app([chest]).test_client()
        for _ in range(10):
            client.post("/")
        assert chest.force_flush(timeout_millis=500) is False
        assert chest.exporter.stats.retried > 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert chest.force_flush(timeout_millis=10_000)
    assert len(read_rows(chest.db_uri)) == 20


def test_rows_of_one_export_are_written_in_one_transaction(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    """A reader polling during a large export sees none or all of its rows."""
    chest = make_sqlite_chest(export_interval=60.0)
    client = sample_app([chest]).test_client()
    for _ in range(3_000):
        client.post("/")
    seen: set[int] = set()
    stop = threading.Event()

    def poll() -> None:
        connection = sqlite3.connect(chest.db_uri)
        while not stop.is_set():
            seen.add(connection.execute("SELECT count(*) FROM flask_chest").fetchone()[0])
        connection.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        assert chest.force_flush()
    finally:
        stop.set()
        poller.join()
    assert seen <= {0, 6_000}


def test_sqlite_rejects_a_table_name_that_is_not_an_identifier(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="table must be a SQL identifier"):
        FlaskChestSQLite(db_uri=str(tmp_path / "x.sqlite3"), table='x"; DROP TABLE y; --')


def test_meter_provider_chest_records_into_an_existing_provider() -> None:
    """Decorated variables reach the app's own SDK readers, with their
    request's time as an attribute."""
    reader = InMemoryMetricReader(preferred_temporality=DELTA_TEMPORALITY)
    provider = MeterProvider(metric_readers=[reader])
    app = sample_app([FlaskChestMeterProvider(provider)], request_id_generator=lambda: "rid-1")
    app.test_client().post("/")
    data = reader.get_metrics_data()
    assert data is not None
    [scope_metrics] = data.resource_metrics[0].scope_metrics
    assert scope_metrics.scope.name == "flask_chest_otel"
    points = {metric.name: metric.data.data_points for metric in scope_metrics.metrics}
    assert set(points) == {"transaction", "response_time"}
    [point] = points["transaction"]
    assert point.value == 1
    attributes = dict(point.attributes or {})
    assert attributes.pop("flask_chest.time_unix_nano") > 0
    assert attributes == {
        "request_id": "rid-1",
        "http.request.method": "POST",
        "http.route": "/",
        "http.response.status_code": 200,
    }
    provider.shutdown()


def test_meter_provider_and_sqlite_chests_side_by_side(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    reader = InMemoryMetricReader(preferred_temporality=DELTA_TEMPORALITY)
    provider = MeterProvider(metric_readers=[reader])
    chest = make_sqlite_chest()
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[chest, FlaskChestMeterProvider(provider)], tracked_vars={"GET": ["x"]})
    def index() -> str:
        g.x = "not a number"
        return "ok"

    app.test_client().get("/")
    chest.force_flush()
    assert read_rows(chest.db_uri)[0]["value_text"] == "not a number"
    data = reader.get_metrics_data()
    assert data is not None
    [point] = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert (point.attributes or {})["flask_chest.value"] == "not a number"
    provider.shutdown()


def test_chest_metric_reader_exports_the_apps_other_metrics(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    chest = make_sqlite_chest()
    provider = MeterProvider(metric_readers=[chest.metric_reader()])
    counter = provider.get_meter("shop").create_counter("orders")
    counter.add(3, {"region": "eu"})
    provider.force_flush()
    provider.shutdown()  # flushes; the chest itself keeps running
    assert chest.force_flush()
    rows = read_rows(chest.db_uri)
    # A DELTA monotonic sum is a gauge in telegraf-prometheus-v1, with its start time.
    assert [(r["name"], r["field"]) for r in rows] == [
        ("orders", "gauge"),
        ("orders", "start_time_unix_nano"),
    ]
    assert rows[0]["value"] == 3.0
    assert '"region": "eu"' in rows[0]["tags"]


def test_a_forked_child_exports_only_its_own_requests(tmp_path: Path) -> None:
    """Measurements waiting in the parent at fork time are not exported twice."""
    db = tmp_path / "fork.sqlite3"
    output = run_python(
        """
        import os, sys
        sys.path.insert(0, ".")
        from tests.conftest import sample_app
        from flask_chest_otel import FlaskChestSQLite
        chest = FlaskChestSQLite(db_uri=sys.argv[1], export_interval=3600)
        ids = iter(range(10**6))
        app = sample_app([chest], request_id_generator=lambda: f"{os.getpid()}-{next(ids)}")
        client = app.test_client()
        for _ in range(10):
            client.get("/")
        pid = os.fork()
        if pid == 0:
            for _ in range(5):
                client.get("/")
            chest.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        chest.shutdown()
        print(pid)
        """,
        str(db),
    )
    child = output.strip()
    rows = read_rows(db)
    by_process: dict[str, int] = {}
    for row in rows:
        pid = row["request_id"].split("-")[0]
        by_process[pid] = by_process.get(pid, 0) + 1
    assert by_process[child] == 5
    assert sum(by_process.values()) == 15
    assert len({row["request_id"] for row in rows}) == 15


def test_the_collector_hands_a_burst_over_in_slices_that_never_split_a_request() -> None:
    """20,000 requests of two variables collected at once reach the chest in
    several exports (slices of about 1 ms, the GIL yielded between them),
    and both variables of each request are always in the same export."""
    from opentelemetry.sdk.metrics.export import MetricsData

    from flask_chest_otel._delivery import DELIVERED, BufferedExporter
    from flask_chest_otel._recorder import RECORDER

    class Exports(BufferedExporter[int]):
        def __init__(self) -> None:
            super().__init__(name="slices")
            self.exports: list[list[str]] = []

        def _encode(self, metrics_data: MetricsData) -> list[int]:
            self.exports.append(
                [
                    str((point.attributes or {})["request_id"])
                    for resource in metrics_data.resource_metrics
                    for scope in resource.scope_metrics
                    for metric in scope.metrics
                    for point in metric.data.data_points
                ]
            )
            return []

        def _send(self, batch: Any) -> Any:
            return DELIVERED

    exporter = Exports()
    chest = Chest("slices", exporter, export_interval=3600)
    sink = RECORDER.sink([chest])
    try:
        with RECORDER._collect_lock:  # hold the collector off while the burst queues
            for number in range(20_000):
                attributes = ("request_id", f"r{number}")
                key = sink.key
                RECORDER.record_many(
                    [
                        (key, "a", 1, attributes, 1, None, ()),
                        (key, "b", 2, attributes, 1, None, ()),
                    ]
                )
        RECORDER.collect()
        assert len(exporter.exports) > 1
        seen = [request_id for export in exporter.exports for request_id in set(export)]
        assert len(seen) == len(set(seen)) == 20_000, "no request split across two exports"
        assert all(Counter(export) == dict.fromkeys(set(export), 2) for export in exporter.exports)
    finally:
        chest.shutdown(timeout_millis=1_000)


def test_queued_records_hold_nothing_the_garbage_collector_must_track(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    """A record waiting in the queue holds only atomic values and flat tuples
    of them, so the cyclic GC stops tracking it and records never fill its
    oldest generation (whose full passes pause requests under load)."""
    chest = FlaskChestSQLite(db_uri=sqlite_chest.db_uri, name="gc", export_interval=3600)
    try:
        client = sample_app([chest]).test_client()
        with RECORDER._collect_lock:  # keep them queued
            for _ in range(50):
                client.post("/")
            queued = list(RECORDER._pending)
            gc.collect()
            gc.collect()
            assert len(queued) == 100
            assert not [record for record in queued if gc.is_tracked(record)]
        assert chest.force_flush(10_000)
    finally:
        chest.shutdown(timeout_millis=2_000)


def test_queued_records_with_tags_hold_nothing_the_garbage_collector_must_track(
    sqlite_chest: FlaskChestSQLite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with a status code, a duration, tag_vars and the OTel
    resource's tags: the request's tags are a flat tuple too."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop")
    chest = FlaskChestSQLite(db_uri=sqlite_chest.db_uri, name="gc-tags", export_interval=3600)
    try:
        app = sample_app([chest], tag_vars=["start"], record_duration=True)
        client = app.test_client()
        with RECORDER._collect_lock:  # keep them queued
            for _ in range(50):
                client.post("/")
            queued = list(RECORDER._pending)
            gc.collect()
            gc.collect()
            assert len(queued) == 150
            assert all(record[TAGS][:2] == ("service.name", "shop") for record in queued)
            assert not [record for record in queued if gc.is_tracked(record)]
        assert chest.force_flush(10_000)
    finally:
        chest.shutdown(timeout_millis=2_000)
