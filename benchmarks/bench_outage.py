"""What an outage costs: for each scenario, requests served, points sent and
points delivered, and the per-request time through the Flask test client
(median and p99) with the backend up, down or absent (no chest).

Run alone: ``python benchmarks/bench_outage.py`` (about a minute; needs the
``victoria-metrics`` binary). Backends are a real VictoriaMetrics, stopped
and restarted on the same port and data directory, and the loopback HTTP
sink of the tests.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402

from flask_chest_otel import FlaskChestCustomWriter, FlaskChestInfluxDB  # noqa: E402
from flask_chest_otel._chest import Chest  # noqa: E402
from tests.conftest import sample_app  # noqa: E402
from tests.http_sink import HTTPSink, Reply  # noqa: E402
from tests.test_faults import RestartableVM  # noqa: E402

REQUESTS = 3000
#: Each POST of the sample app records two variables.
POINTS_PER_REQUEST = 2
FAST = {"retry_initial": 0.05, "retry_max": 0.5, "export_interval": 0.5}


def timed(app: Flask, count: int, during: Callable[[int], None] | None = None) -> list[float]:
    """Per-request seconds of ``count`` POSTs; ``during(i)`` runs before request i."""
    client = app.test_client()
    times = []
    for i in range(count):
        if during is not None:
            during(i)
        start = time.perf_counter()
        client.post("/")
        times.append(time.perf_counter() - start)
    return times


def plain_app() -> Flask:
    """The sample route without @flask_chest."""
    from flask import g, request

    app = Flask(__name__)

    @app.route("/", methods=["GET", "POST"])
    def index() -> str:
        g.start = time.time()
        g.transaction = 1
        g.response_time = time.time() - g.start
        return "Hello, World!" if request.method == "POST" else "Hello"

    return app


def ids(prefix: str) -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"{prefix}-{next(counter)}"


def vm_points(vm: RestartableVM, suite: str) -> int:
    series = vm.server.export(f'{{suite="{suite}"}}')
    return sum(len(s["values"]) for s in series)


def influx(vm: RestartableVM, suite: str) -> FlaskChestInfluxDB:
    return FlaskChestInfluxDB(
        name=suite, url=vm.url, token="t", org="o", bucket="b",
        custom_tags={"suite": suite}, timeout=2.0, **FAST,
    )  # fmt: skip


def writer(sink: HTTPSink, **options: Any) -> FlaskChestCustomWriter:
    chest = FlaskChestCustomWriter(
        name="writer", url=sink.url, payload_generator=lambda t: dict(enumerate(t)),
        per_request=False, **{**FAST, "timeout": 2.0, **options},
    )  # fmt: skip
    _count_points(chest)
    return chest


Row = tuple[str, int, int, int, list[float], str]


def run(vm: RestartableVM) -> list[Row]:
    rows: list[Row] = []
    sent = REQUESTS * POINTS_PER_REQUEST
    timed(plain_app(), 1000)  # warm-up: imports, caches, CPU clock

    rows.append(("no chest", REQUESTS, 0, 0, timed(plain_app(), REQUESTS), ""))

    vm.start()
    chest: Chest = influx(vm, "up")
    times = timed(sample_app([chest], request_id_generator=ids("up")), REQUESTS)
    chest.force_flush(30_000)
    rows.append(("InfluxDB, VictoriaMetrics up", REQUESTS, sent, vm_points(vm, "up"), times, ""))
    chest.shutdown(2_000)

    vm.stop()
    chest = influx(vm, "down")
    times = timed(sample_app([chest], request_id_generator=ids("down")), REQUESTS)
    vm.start()
    chest.force_flush(30_000)
    rows.append(
        ("InfluxDB, down, then up", REQUESTS, sent, vm_points(vm, "down"), times, "all buffered")
    )
    chest.shutdown(2_000)

    chest = influx(vm, "restart")
    outage: list[threading.Thread] = []

    def restart_at(i: int) -> None:
        if i == REQUESTS // 3:
            vm.stop()
        elif i == 2 * REQUESTS // 3:
            thread = threading.Thread(target=vm.start)
            thread.start()
            outage.append(thread)

    times = timed(sample_app([chest], request_id_generator=ids("restart")), REQUESTS, restart_at)
    for thread in outage:
        thread.join(30)
    chest.force_flush(30_000)
    rows.append(
        (
            "InfluxDB, stopped+restarted",
            REQUESTS, sent, vm_points(vm, "restart"), times, "middle third down",
        )
    )  # fmt: skip
    chest.shutdown(2_000)

    chest = influx(vm, "full")
    chest.exporter.max_buffer_items = 1000
    vm.stop()
    times = timed(sample_app([chest], request_id_generator=ids("full")), REQUESTS)
    chest.force_flush(100)
    vm.start()
    chest.force_flush(30_000)
    note = f"buffer 1000: {chest.exporter.stats.dropped_buffer_full} dropped"
    rows.append(
        ("InfluxDB, down, small buffer", REQUESTS, sent, vm_points(vm, "full"), times, note)
    )
    chest.shutdown(2_000)
    vm.stop()

    with HTTPSink(record=False) as sink:
        sink.default = Reply(503, b"busy")
        chest = writer(sink)
        times = timed(sample_app([chest]), REQUESTS)
        time.sleep(2.0)  # the storm goes on after the traffic
        sink.default = Reply(200)
        chest.force_flush(30_000)
        delivered = chest.exporter.stats.exported
        note = f"{sink.count()['posts'] - delivered} 503s, {delivered} POSTs delivered"
        rows.append(("HTTP writer, 503 storm", REQUESTS, sent, _sink_points(chest), times, note))
        chest.shutdown(2_000)

    with HTTPSink(record=False) as sink:
        sink.default = Reply(delay=5.0)
        chest = writer(sink, timeout=10.0)
        times = timed(sample_app([chest]), REQUESTS)
        sink.default = Reply(200)
        chest.force_flush(30_000)
        rows.append(
            ("HTTP writer, 5 s answers", REQUESTS, sent, _sink_points(chest), times, "")
        )
        chest.shutdown(2_000)
    return rows


def _sink_points(chest: FlaskChestCustomWriter) -> int:
    """Points in the POSTs the writer counted as delivered."""
    return int(_DELIVERED_POINTS.get(id(chest), 0))


_DELIVERED_POINTS: dict[int, int] = {}


def _count_points(chest: FlaskChestCustomWriter) -> None:
    """Wraps the writer's send to count the tuples of each delivered POST."""
    exporter = chest.exporter
    original = exporter._send

    def send(batch: Any) -> Any:
        outcome = original(batch)
        if outcome.status.name == "DELIVERED":
            points = sum(payload.body.count(b"[") for payload in batch)
            _DELIVERED_POINTS[id(chest)] = _DELIVERED_POINTS.get(id(chest), 0) + points
        return outcome

    exporter._send = send  # type: ignore[method-assign]


def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        vm = RestartableVM(Path(directory) / "vm")
        try:
            rows = run(vm)
        finally:
            vm.stop()
    print(f"{REQUESTS} POST requests per scenario, 2 tracked variables each (Flask test client)")
    header = (
        f"{'scenario':30} {'requests':>8} {'points':>7} {'delivered':>9} "
        f"{'median us':>9} {'p99 us':>8}  note"
    )
    print(header)
    print("-" * len(header))
    for name, served, sent, delivered, times, note in rows:
        ordered = sorted(times)
        median = statistics.median(ordered) * 1e6
        p99 = ordered[int(len(ordered) * 0.99) - 1] * 1e6
        print(
            f"{name:30} {served:8d} {sent:7d} {delivered:9d} {median:9.0f} {p99:8.0f}  {note}"
        )
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
