"""The fault suite: real backends that go down, come back, stall, throttle,
fail and refuse, while a Flask app keeps serving. Each test asserts the exact
set of request IDs that arrived: every one, or exactly the documented drops
(docs/faults.md).

Backends: a real VictoriaMetrics stopped and restarted on the same port and
data directory, real InfluxDB 1.6, the strict InfluxDB 2.x write-API double
and the scriptable loopback HTTP sink. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from flask_chest_otel import FlaskChestCustomWriter, FlaskChestInfluxDB
from flask_chest_otel._chest import Chest

from .conftest import sample_app, wait_for
from .http_sink import HTTPSink, Reply
from .servers import (
    InfluxDB2WriteDouble,
    Scripted,
    VictoriaMetrics,
    _wait_until_up,
    free_port,
    influxdb1,
    require_binary,
    stop_process,
    victoria_metrics_command,
)

REPO = Path(__file__).resolve().parent.parent
TOKEN = "fault-token"
#: Fast retries: the suite's time goes to the faults, not to backoff.
FAST = {"retry_initial": 0.05, "retry_max": 0.3}


# -- a VictoriaMetrics that can be stopped and started again ---------------------


class RestartableVM:
    """VictoriaMetrics on a fixed loopback port and data directory, so that a
    client configured once sees the same server go away and come back."""

    def __init__(self, root: Path) -> None:
        self.binary = require_binary("victoria-metrics", "victoria-metrics")
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self, *flags: str) -> None:
        log = self.root / "victoria-metrics.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                victoria_metrics_command(self.binary, self.root, self.port, *flags),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_until_up(f"{self.url}/health", self.process, log, "victoria-metrics")

    def stop(self) -> None:
        """SIGTERM: VictoriaMetrics persists what it acknowledged, then exits."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    @property
    def server(self) -> VictoriaMetrics:
        assert self.process is not None, "VictoriaMetrics is not running"
        return VictoriaMetrics(self.url, self.process)

    def request_ids(self, suite: str, metric: str = "transaction_value") -> Counter[str]:
        """How many samples each request ID has in series ``metric`` of ``suite``."""
        series = self.server.export(f'{{__name__="{metric}",suite="{suite}"}}')
        return Counter(
            {s["metric"]["request_id"]: len(s["values"]) for s in series}
        )


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableVM]:
    server = RestartableVM(tmp_path_factory.mktemp("vm-faults"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vm_up(vm: RestartableVM) -> RestartableVM:
    if vm.process is None:
        vm.start()
    return vm


@pytest.fixture
def chests() -> Iterator[list[Chest]]:
    made: list[Chest] = []
    yield made
    for chest in made:
        chest.shutdown(timeout_millis=500)


@pytest.fixture
def sink() -> Iterator[HTTPSink]:
    with HTTPSink() as server:
        yield server


class Ids:
    """A request_id_generator giving ``prefix-0``, ``prefix-1``...; keeps them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.made: list[str] = []
        self._counter = itertools.count()

    def __call__(self) -> str:
        request_id = f"{self.prefix}-{next(self._counter)}"
        self.made.append(request_id)
        return request_id


def influx_chest(chests: list[Chest], url: str, suite: str, **options: Any) -> FlaskChestInfluxDB:
    options = {**FAST, "export_interval": 0.2, "timeout": 2.0, **options}
    chest = FlaskChestInfluxDB(
        name=suite, url=url, token=TOKEN, org="my-org", bucket="my-bucket",
        custom_tags={"suite": suite}, **options,
    )  # fmt: skip
    chests.append(chest)
    return chest


def writer_chest(chests: list[Chest], url: str, **options: Any) -> FlaskChestCustomWriter:
    options = {**FAST, "export_interval": 0.2, "timeout": 2.0, **options}
    chest = FlaskChestCustomWriter(
        name="writer", url=url, payload_generator=lambda tuples: dict(enumerate(tuples)),
        **options,
    )  # fmt: skip
    chests.append(chest)
    return chest


def posted_ids(sink: HTTPSink) -> list[str]:
    """The request ID of each POST the sink received (one request per POST)."""
    return [post.json()["0"][2] for post in sink.posts()]


def serve(app: Flask, count: int, pause: float = 0.0) -> list[float]:
    """``count`` POSTs through the test client; every one must answer 200.
    Returns each request's duration in seconds."""
    client = app.test_client()
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        assert client.post("/").status_code == 200
        durations.append(time.perf_counter() - start)
        if pause:
            time.sleep(pause)
    return durations


# -- VictoriaMetrics down and back ----------------------------------------------


def test_backend_down_at_app_start_then_up_receives_every_request(
    vm: RestartableVM, chests: list[Chest]
) -> None:
    """The app starts while VictoriaMetrics is down: requests answer, points
    wait in the buffer; when it comes up every request ID arrives, once."""
    vm.stop()
    ids = Ids("down-at-start")
    chest = influx_chest(chests, vm.url, "down-at-start")
    serve(sample_app([chest], request_id_generator=ids), 100)
    assert chest.force_flush(timeout_millis=700) is False
    assert chest.exporter.stats.buffered == 200 and chest.exporter.stats.retried > 0
    vm.start()
    assert chest.force_flush(timeout_millis=10_000)
    assert vm.request_ids("down-at-start") == Counter(ids.made)
    assert chest.exporter.stats.dropped == 0


def test_backend_stopped_mid_traffic_and_restarted_loses_nothing(
    vm_up: RestartableVM, chests: list[Chest]
) -> None:
    """Seven seconds of traffic; VictoriaMetrics stops at 2 s and is back at
    4.5 s on the same port and data: every request ID arrives, once each,
    and no request waited on the backend."""
    ids = Ids("mid-traffic")
    chest = influx_chest(chests, vm_up.url, "mid-traffic")
    app = sample_app([chest], request_id_generator=ids)
    events: list[str] = []

    def outage() -> None:
        time.sleep(2.0)
        vm_up.stop()
        events.append(f"stopped after {len(ids.made)} requests")
        time.sleep(2.5)
        vm_up.start()
        events.append(f"started after {len(ids.made)} requests")

    controller = threading.Thread(target=outage)
    controller.start()
    durations: list[float] = []
    deadline = time.monotonic() + 7.0
    while time.monotonic() < deadline:
        durations += serve(app, 1, pause=0.01)
    controller.join(30)
    assert len(events) == 2, events
    assert chest.force_flush(timeout_millis=10_000)
    assert chest.exporter.stats.retried > 0, "the outage was not seen"
    assert vm_up.request_ids("mid-traffic") == Counter(ids.made)
    assert chest.exporter.stats.dropped == 0
    durations.sort()
    assert durations[len(durations) // 2] < 0.05


def test_a_full_buffer_drops_the_oldest_counts_them_and_logs_once(
    vm: RestartableVM, chests: list[Chest], caplog: pytest.LogCaptureFixture
) -> None:
    """Backend down, buffer of 100 points, 150 requests of 2 points: the 200
    oldest points are dropped and counted, one WARNING says so with the
    count; when the backend is back exactly the 50 newest requests arrive."""
    vm.stop()
    ids = Ids("full-buffer")
    chest = influx_chest(chests, vm.url, "full-buffer", max_buffer_items=100)
    app = sample_app([chest], request_id_generator=ids)
    with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
        for _ in range(3):  # three collections, so the buffer overflows three times
            serve(app, 50)
            chest.force_flush(timeout_millis=50)
    full = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 1 and "dropped the" in full[0].getMessage()
    assert chest.exporter.stats.dropped_buffer_full == 200
    vm.start()
    assert chest.force_flush(timeout_millis=10_000)
    assert vm.request_ids("full-buffer") == Counter(ids.made[100:])
    assert vm.request_ids("full-buffer", "response_time_value") == Counter(ids.made[100:])


# -- a backend that answers late: at-least-once ----------------------------------


@pytest.mark.parametrize(
    "timeout, duplicated",
    [(1.0, True), (8.0, False)],
    ids=["timeout<delay", "timeout>delay"],
)
def test_an_endpoint_answering_after_5_s(
    sink: HTTPSink, chests: list[Chest], timeout: float, duplicated: bool
) -> None:
    """The first POST is answered after 5 s. With a 1 s timeout the writer
    gives up and re-sends: the endpoint gets that request twice (delivery is
    at least once). With an 8 s timeout it waits: once. Either way every
    request arrives, in order (one connection: over several, the others go
    by meanwhile), and no request of the app waited."""
    sink.script(Reply(delay=5.0))
    ids = Ids(f"slow-{timeout}")
    chest = writer_chest(chests, sink.url, timeout=timeout, max_connections=1)
    durations = serve(sample_app([chest], request_id_generator=ids), 5, pause=0.1)
    assert max(durations) < 0.5
    assert chest.force_flush(timeout_millis=15_000)
    expected = [ids.made[0], *ids.made] if duplicated else ids.made
    assert posted_ids(sink) == expected
    assert chest.exporter.stats.exported == 5


class DelayingProxy:
    """Forwards each POST to ``upstream`` at once, then answers the client
    only after ``delays`` (one per request, then none): a backend that
    stores the write but whose answer comes too late."""

    def __init__(self, upstream: str, delays: list[float]) -> None:
        proxy = self
        self.delays = list(delays)
        self.forwarded = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                forward = urllib.request.Request(
                    upstream + self.path, data=body, headers=headers, method="POST"
                )
                with urllib.request.urlopen(forward, timeout=10) as answer:
                    status = answer.status
                proxy.forwarded += 1
                time.sleep(proxy.delays.pop(0) if proxy.delays else 0)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_read_timeout_re_sends_and_victoria_metrics_keeps_both_unless_deduplicating(
    vm_up: RestartableVM, chests: list[Chest]
) -> None:
    """VictoriaMetrics stores the batch but the answer comes after the
    client's 1 s timeout: the batch is sent again. Every request arrives;
    VictoriaMetrics, unlike InfluxDB, keeps both copies (same series, same
    timestamp) unless started with -dedup.minScrapeInterval, which folds
    them into one."""
    proxy = DelayingProxy(vm_up.url, [2.0])
    try:
        ids = Ids("read-timeout")
        chest = influx_chest(chests, proxy.url, "read-timeout", timeout=1.0)
        serve(sample_app([chest], request_id_generator=ids), 20)
        assert chest.force_flush(timeout_millis=10_000)
        assert proxy.forwarded == 2
    finally:
        proxy.close()
    assert chest.exporter.stats.exported == 40
    assert vm_up.request_ids("read-timeout") == Counter({i: 2 for i in ids.made})
    series = vm_up.server.export('{__name__="transaction_value",suite="read-timeout"}')
    assert all(len(set(s["timestamps"])) == 1 for s in series)
    vm_up.stop()
    vm_up.start("-dedup.minScrapeInterval=1ms")
    try:
        assert vm_up.request_ids("read-timeout") == Counter(ids.made)
    finally:
        vm_up.stop()


def test_influxdb_stores_the_same_line_written_twice_as_one_point(tmp_path: Path) -> None:
    """Real InfluxDB: a batch written twice (what a re-send after a read
    timeout does) leaves one point per series and time."""
    with influxdb1(tmp_path / "influxd") as influxd:
        influxd.create_database("twice")
        t0 = 1_700_000_000_000_000_000
        body = "\n".join(
            f"transaction,request_id=r{i},suite=twice value=1 {t0 + i}" for i in range(10)
        ).encode()
        assert influxd.write("twice", body)[0] == 204
        assert influxd.write("twice", body)[0] == 204
        result = influxd.query("SELECT count(value) FROM transaction GROUP BY request_id", "twice")
        series = result["results"][0]["series"]
        counts = {s["tags"]["request_id"]: s["values"][0][1] for s in series}
        assert counts == {f"r{i}": 1 for i in range(10)}


# -- throttling, storms, size limits ---------------------------------------------


def _http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


@pytest.mark.parametrize(
    "retry_after, least",
    [("1", 0.95), (None, 0.95)],
    ids=["seconds", "http-date"],
)
def test_429_with_retry_after_is_waited_out_and_loses_nothing(
    sink: HTTPSink, chests: list[Chest], retry_after: str | None, least: float
) -> None:
    """Two 429s with Retry-After (seconds, or an HTTP date 2 s ahead): the
    writer, one POST at a time (``max_connections=1``), waits what the
    server asked before each retry, then every request arrives once, in
    order (over several connections, the POSTs beside a 429 are taken
    before its retry: test_http_endpoint.py)."""
    header = retry_after or _http_date(2.0)
    sink.script(*[Reply(429, b"slow down", {"Retry-After": header})] * 2)
    ids = Ids("throttled")
    chest = writer_chest(chests, sink.url, retry_initial=0.01, retry_max=3.0, max_connections=1)
    serve(sample_app([chest], request_id_generator=ids), 10)
    assert chest.force_flush(timeout_millis=10_000)
    posts = sink.posts()
    assert [p.json()["0"][2] for p in posts[2:]] == ids.made
    assert posts[1].received - posts[0].received >= least
    if retry_after is None:
        # The same date on the second answer is already nearer.
        assert posts[2].received - posts[1].received < 2.2
    else:
        assert posts[2].received - posts[1].received >= least


def test_a_503_storm_on_the_http_endpoint_loses_nothing(
    sink: HTTPSink, chests: list[Chest]
) -> None:
    """Forty 503s in a row, half with Retry-After: 0, then the endpoint
    recovers: every request arrives once (the 40 refused POSTs plus one per
    request); with one connection, oldest first but for the few items a
    poison probe sent alone (every fourth round probes the oldest ones: is
    one of them refused while others pass?)."""
    for connections in (1, 16):
        sink.script(
            *[Reply(503, b"busy", {"Retry-After": "0"} if i % 2 else {}) for i in range(40)]
        )
        ids = Ids(f"storm-http-{connections}")
        chest = writer_chest(
            chests, sink.url, retry_initial=0.01, retry_max=0.05, max_connections=connections
        )
        serve(sample_app([chest], request_id_generator=ids), 30)
        assert chest.force_flush(timeout_millis=15_000)
        posted = [request_id for request_id in posted_ids(sink) if request_id in ids.made]
        assert len(posted) == 40 + 30 and set(posted) == set(ids.made)
        if connections == 1:
            out_of_order = [
                n for n, request_id in enumerate(posted[40:]) if request_id != ids.made[n]
            ]
            assert all(n < 8 for n in out_of_order), out_of_order
        assert chest.exporter.stats.dropped == 0


@pytest.fixture
def double() -> Iterator[InfluxDB2WriteDouble]:
    with InfluxDB2WriteDouble(token=TOKEN, org="my-org", bucket="my-bucket") as server:
        yield server


def point_ids(double: InfluxDB2WriteDouble) -> list[str]:
    return [tags["request_id"] for measurement, tags, _, _ in double.points]


def test_a_503_storm_on_influxdb_loses_nothing_and_keeps_the_order(
    double: InfluxDB2WriteDouble, chests: list[Chest]
) -> None:
    """Thirty 503s with Retry-After: 0 from the write API while requests keep
    coming: every point is written once, oldest first."""
    double.script.extend(
        Scripted(503, {"code": "unavailable", "message": "busy"}, {"Retry-After": "0"})
        for _ in range(30)
    )
    ids = Ids("storm-influx")
    chest = influx_chest(chests, double.url, "storm-influx", retry_initial=0.01, retry_max=0.05)
    app = sample_app([chest], request_id_generator=ids)
    serve(app, 50)
    chest.force_flush(timeout_millis=100)
    serve(app, 50)
    assert chest.force_flush(timeout_millis=15_000)
    assert len(double.requests) > 30
    transactions = [tags["request_id"] for m, tags, _, _ in double.points if m == "transaction"]
    assert transactions == ids.made
    assert Counter(point_ids(double)) == Counter({i: 2 for i in ids.made})


def test_413_on_big_batches_splits_them_until_influxdb_takes_every_point(
    chests: list[Chest],
) -> None:
    """A write API that refuses bodies over 4 KB: a 600-line batch is halved
    until each part fits; every point arrives exactly once."""
    with InfluxDB2WriteDouble(
        token=TOKEN, org="my-org", bucket="my-bucket", max_body_bytes=4_000
    ) as double:
        ids = Ids("too-large")
        chest = influx_chest(chests, double.url, "too-large", export_interval=5.0)
        serve(sample_app([chest], request_id_generator=ids), 300)
        assert chest.force_flush(timeout_millis=15_000)
        statuses = Counter(len(r.body) > 4_000 for r in double.requests)
        assert statuses[True] >= 1  # some were refused and split
        assert Counter(point_ids(double)) == Counter({i: 2 for i in ids.made})
        assert chest.exporter.stats.dropped == 0


# -- isolation, request path --------------------------------------------------------


def test_a_slow_and_a_dead_backend_never_delay_another_chest_or_a_request(
    sink: HTTPSink, chests: list[Chest]
) -> None:
    """Three chests on one route: one healthy endpoint, one that takes 5 s to
    answer, one that is down. The healthy one gets each request within about
    one export interval (0.5 s) of it; no request takes longer than usual."""
    with HTTPSink() as slow:
        slow.default = Reply(delay=5.0)
        healthy = writer_chest(chests, sink.url, export_interval=0.5)
        stalled = writer_chest(chests, slow.url, export_interval=0.5, timeout=10.0)
        dead = influx_chest(chests, f"http://127.0.0.1:{free_port()}", "dead", export_interval=0.5)
        ids = Ids("isolated")
        app = sample_app([healthy, stalled, dead], request_id_generator=ids)
        sent = []
        durations = []
        for _ in range(8):
            sent.append(time.monotonic())
            durations += serve(app, 1)
            time.sleep(0.25)
        assert sink.wait_for_posts(8, timeout=3.0)
        arrived = {post.json()["0"][2]: post.received for post in sink.posts()}
        lags = [arrived[request_id] - at for request_id, at in zip(ids.made, sent, strict=True)]
        assert max(lags) < 1.0, lags
        assert max(durations) < 0.25, durations
        assert len(slow.posts()) >= 1 and dead.exporter.stats.retried > 0


# -- shutdown -------------------------------------------------------------------------


def test_shutdown_with_the_backend_down_returns_in_bounded_time_and_counts_the_loss(
    chests: list[Chest], caplog: pytest.LogCaptureFixture
) -> None:
    chest = influx_chest(chests, f"http://127.0.0.1:{free_port()}", "down-at-exit")
    serve(sample_app([chest]), 20)
    with caplog.at_level(logging.ERROR, logger="flask_chest_otel"):
        start = time.monotonic()
        chest.shutdown(timeout_millis=1_000)
        took = time.monotonic() - start
    assert 0.7 < took < 2.0
    assert chest.exporter.stats.dropped_shutdown == 40
    assert any("40 items not delivered" in r.getMessage() for r in caplog.records)


def test_shutdown_during_a_stalled_send_returns_in_bounded_time(
    chests: list[Chest],
) -> None:
    """The endpoint holds the POST for 5 s with a 10 s client timeout:
    shutdown(1 s) still returns within about 2 s."""
    with HTTPSink() as slow:
        slow.default = Reply(delay=5.0)
        chest = writer_chest(chests, slow.url, timeout=10.0)
        serve(sample_app([chest]), 3)
        assert chest.force_flush(timeout_millis=300) is False
        start = time.monotonic()
        chest.shutdown(timeout_millis=1_000)
        assert time.monotonic() - start < 2.5


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, sys, time
    # Registered first, so it runs last: the time the exit hooks took.
    done = []
    atexit.register(lambda: print(f"exit took {time.monotonic() - done[0]:.3f} s", file=sys.stderr))
    from tests.conftest import sample_app
    from flask_chest_otel import FlaskChestCustomWriter, FlaskChestInfluxDB

    up = FlaskChestCustomWriter(name="up", url=sys.argv[1],
                                payload_generator=lambda t: dict(enumerate(t)),
                                export_interval=60, retry_initial=0.05, retry_max=0.3)
    down = FlaskChestInfluxDB(name="down", url=sys.argv[2], token="t", org="o", bucket="b",
                              export_interval=60, retry_initial=0.05, retry_max=0.3)
    client = sample_app([up, down]).test_client()
    for _ in range(25):
        client.post("/")
    done.append(time.monotonic())
    """
)


def test_interpreter_exit_flushes_a_reachable_backend_and_bounds_a_dead_one(
    sink: HTTPSink,
) -> None:
    """At exit, without shutdown(): the reachable endpoint gets all 25
    requests; the dead InfluxDB costs at most its 5 s and its 50 points are
    reported lost at ERROR."""
    result = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, sink.url, f"http://127.0.0.1:{free_port()}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert len(sink.posts()) == 25
    assert "down: shut down with 50 items not delivered in time, lost" in result.stderr
    took = float(result.stderr.rsplit("exit took ", 1)[1].split()[0])
    assert 4.0 < took < 6.5


# -- gunicorn, SIGTERM ----------------------------------------------------------------


def gunicorn_influx_app() -> Flask:
    """The sample app with a FlaskChestInfluxDB chest (gunicorn app factory);
    the URL and a suite tag come from the environment."""
    chest = FlaskChestInfluxDB(
        name="gunicorn", url=os.environ["FAULT_VM_URL"], token=TOKEN, org="o", bucket="b",
        custom_tags={"suite": os.environ["FAULT_SUITE"]}, export_interval=0.5,
    )  # fmt: skip
    counter = itertools.count()
    return sample_app([chest], request_id_generator=lambda: f"{os.getpid()}-{next(counter)}")


def test_sigterm_under_gunicorn_delivers_every_request_to_victoria_metrics(
    vm_up: RestartableVM,
) -> None:
    """gunicorn -w 2 serving 200 requests with an InfluxDB chest, stopped by
    SIGTERM right after the last answer: all 200 request IDs are in
    VictoriaMetrics, once each."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
         "--graceful-timeout", "20", "tests.test_faults:gunicorn_influx_app()"],
        cwd=REPO,
        env={**os.environ, "FAULT_VM_URL": vm_up.url, "FAULT_SUITE": "gunicorn"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        assert wait_for(lambda: _answers(url) or server.poll() is not None, timeout=30)
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        for number in range(199):
            response = requests.request("POST" if number % 2 else "GET", url, timeout=30)
            assert response.status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=60)
    assert server.returncode == 0, errors
    got = vm_up.request_ids("gunicorn")
    assert sum(got.values()) == 200 and set(got.values()) == {1}
    assert 1 <= len({request_id.split("-")[0] for request_id in got}) <= 2


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=20)
    except requests.ConnectionError:
        return False
    return True


