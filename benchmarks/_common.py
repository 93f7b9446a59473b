"""Shared helpers of the benchmarks: the sample app in every variant, the local
servers it exports to, interleaved timing with medians, RSS.

Every benchmark builds the route of flask-chest's sample usage (it sets
``g.transaction`` and ``g.response_time``) and measures it with and without
instrumentation in the same process and the same run, so that results are
read as differences and ratios, never as absolute times.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask, g, request  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

from flask_chest_otel import FlaskChestCustomWriter, flask_chest  # noqa: E402
from flask_chest_otel._chest import Chest  # noqa: E402
from flask_chest_otel._delivery import DELTA_TEMPORALITY  # noqa: E402
from flask_chest_otel.influxdb import FlaskChestInfluxDB  # noqa: E402
from tests.servers import stop_process  # noqa: E402

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
#: Variable names of the sample route; extra ones for the scaling benchmark.
SAMPLE_VARS = ["transaction", "response_time"]


def var_names(count: int) -> list[str]:
    return (SAMPLE_VARS + [f"var{i}" for i in range(2, count)])[:count]


def cust_payload_generator(context_tuple_list: list[Any]) -> dict[int, Any]:
    """The sample usage's payload generator."""
    return dict(enumerate(context_tuple_list))


def raw_socket(url: str) -> socket.socket:
    """A kept-alive TCP connection to ``url``'s host, Nagle off."""
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def raw_post(sock: socket.socket, message: bytes, buffer: bytes) -> bytes:
    """Writes ``message`` (a whole POST) and reads its answer by its
    ``Content-Length``, nothing else parsed; returns what followed the
    answer (``buffer`` is what followed the one before)."""
    sock.sendall(message)
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        buffer += sock.recv(65536)
    length = int(re.search(rb"(?i)content-length: *(\d+)", buffer[:end]).group(1))  # type: ignore[union-attr]
    while len(buffer) < end + 4 + length:
        buffer += sock.recv(65536)
    return buffer[end + 4 + length :]


def raw_post_wave(socks: Sequence[socket.socket], messages: Sequence[bytes]) -> None:
    """Writes one POST of ``messages`` on each of ``socks`` (kept-alive,
    blocking), then reads their answers as ``poll`` finds them answered, one
    ``recv`` each, nothing parsed (the lean sink's answer is small): the
    floor of a writer keeping that many POSTs in flight."""
    for sock, message in zip(socks, messages, strict=False):
        sock.sendall(message)
    waiting = {sock.fileno(): sock for sock in socks[: len(messages)]}
    while waiting:
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(10_000):
            if not waiting.pop(fd).recv(65536):
                raise RuntimeError("bench: the sink closed a connection")


# -- servers ------------------------------------------------------------------


@contextlib.contextmanager
def victoria_metrics() -> Iterator[str]:
    """A real VictoriaMetrics on a free loopback port (the test suite's
    starter); yields its URL."""
    from tests.servers import victoria_metrics as start

    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp, start(Path(tmp) / "vm") as vm:
        yield vm.url


@contextlib.contextmanager
def http_sink() -> Iterator[str]:
    """The lean HTTP endpoint (``lean_sink.py``: the custom writer's endpoint
    stands for a remote service, see there), in its own process (so that its
    CPU and memory are not the benchmark's); yields its URL."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "lean_sink.py")], stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("benchmarks: the HTTP sink did not start")
        yield url
    finally:
        stop_process(process)


def sink_posts(url: str) -> int:
    with urllib.request.urlopen(url + "/__count", timeout=5) as response:
        return int(json.load(response)["posts"])


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    from tests.servers import free_port

    return f"http://127.0.0.1:{free_port()}"


# -- the sample app in every variant --------------------------------------------


def make_chests(
    count: int,
    influx_url: str,
    sink_url: str,
    influx_only: bool = False,
    per_request: bool = True,
    **options: Any,
) -> list[Chest]:
    """``count`` chests alternating InfluxDB (VictoriaMetrics) and the custom
    writer (HTTP sink), as in the sample usage; or only InfluxDB chests.
    ``per_request=False`` makes the writers POST one payload per export."""
    chests: list[Chest] = []
    for i in range(count):
        if i % 2 == 0 or influx_only:
            chests.append(
                FlaskChestInfluxDB(
                    name=f"InfluxDB{i}", url=influx_url, token="t", org="o", bucket=f"b{i}",
                    custom_tags={"app": "bench"}, **options,
                )  # fmt: skip
            )
        else:
            chests.append(
                FlaskChestCustomWriter(
                    name=f"SignalFX{i}", url=f"{sink_url}/ingest{i}",
                    payload_generator=cust_payload_generator, verify=False,
                    success_status_codes=[200, 201], per_request=per_request, **options,
                )  # fmt: skip
            )
    return chests


def sample_view(names: list[str]) -> Callable[[], str]:
    """The sample usage's view, setting ``names`` (the first two being
    ``transaction`` and ``response_time``)."""
    extra = names[2:]

    def index() -> str:
        g.start = time.time()
        g.transaction = 1
        g.response_time = time.time() - g.start
        for name in extra:
            setattr(g, name, 1.5)
        return "Hello, World!"

    return index


class SDKFloor:
    """The floor of this design: the view records its variables by hand as
    OTel SDK gauges with a fresh UUID attribute set (one reader per chest,
    DELTA, collected by the benchmark between rounds)."""

    def __init__(self, names: list[str], readers: int = 1) -> None:
        self.readers = [
            InMemoryMetricReader(preferred_temporality=dict(DELTA_TEMPORALITY))
            for _ in range(readers)
        ]
        self.provider = MeterProvider(metric_readers=self.readers)
        meter = self.provider.get_meter("bench")
        self.gauges = [(name, meter.create_gauge(name)) for name in names]

    def record(self) -> None:
        import uuid

        attributes = {
            "request_id": str(uuid.uuid4()),
            "http.request.method": request.method,
            "http.route": "/",
        }
        values = vars(g)
        for name, gauge in self.gauges:
            gauge.set(values[name], attributes)

    def collect(self) -> None:
        for reader in self.readers:
            reader.get_metrics_data()


class Variant:
    """One way of serving the sample route: its app, the view function the
    route calls, and ``drain()``, which exports what it recorded (no-op for
    peers that export on scrape)."""

    def __init__(
        self,
        name: str,
        app: Flask,
        drain: Callable[[], None] = lambda: None,
        chests: list[Chest] | None = None,
    ) -> None:
        self.name = name
        self.app = app
        self.drain = drain
        self.chests = chests or []
        self.client = app.test_client()

    @property
    def view(self) -> Callable[[], Any]:
        return self.app.view_functions["index"]


def build_variant(
    kind: str,
    influx_url: str = "",
    sink_url: str = "",
    n_vars: int = 2,
    n_chests: int = 2,
    influx_only: bool = False,
    **chest_options: Any,
) -> Variant:
    """kind: plain | prometheus | otel | sdk_floor | flask_chest |
    flask_chest_batched (its custom writer POSTs once per export)."""
    app = Flask(f"bench_{kind}_{n_vars}_{n_chests}")
    names = var_names(n_vars)
    view = sample_view(names)
    drain: Callable[[], None] = lambda: None  # noqa: E731
    chests: list[Chest] = []
    if kind == "plain":
        pass
    elif kind == "prometheus":
        from prometheus_client import CollectorRegistry
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app, registry=CollectorRegistry())
    elif kind == "otel":
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        reader = InMemoryMetricReader()
        FlaskInstrumentor.instrument_app(
            app, meter_provider=MeterProvider(metric_readers=[reader]),
            tracer_provider=TracerProvider(),
        )  # fmt: skip
        drain = reader.get_metrics_data  # type: ignore[assignment]
    elif kind == "sdk_floor":
        floor = SDKFloor(names, readers=n_chests)
        inner = view

        def view() -> str:
            response = inner()
            floor.record()
            return response

        drain = floor.collect
    elif kind in ("flask_chest", "flask_chest_batched"):
        chests = make_chests(
            n_chests, influx_url, sink_url, influx_only, kind == "flask_chest", **chest_options
        )
        view = flask_chest(
            chests=chests, tracked_vars={"GET": names[:1], "POST": names}
        )(view)

        def drain() -> None:
            for chest in chests:
                if not chest.force_flush(60_000):
                    raise RuntimeError(f"benchmarks: {chest.name} did not deliver in 60 s")

    else:
        raise ValueError(f"unknown variant {kind!r}")
    view.__name__ = "index"
    app.add_url_rule("/", "index", view, methods=["GET", "POST"])
    return Variant(kind, app, drain, chests)


def wsgi_app_from_env() -> Flask:
    """For gunicorn: the variant named by $BENCH_VARIANT, exporting to
    $BENCH_INFLUX_URL and $BENCH_SINK_URL."""
    return build_variant(
        os.environ["BENCH_VARIANT"],
        os.environ.get("BENCH_INFLUX_URL", ""),
        os.environ.get("BENCH_SINK_URL", ""),
    ).app


# -- timing -------------------------------------------------------------------


def interleaved(
    runs: dict[str, Callable[[], Any]], rounds: int, seed: int = 1
) -> dict[str, list[float]]:
    """Calls every ``runs[name]()`` once per round, in a shuffled order each
    round; returns the seconds of each call, per name."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            gc.collect()
            started = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_overhead(times: list[float], baseline: list[float]) -> float:
    """Median over rounds of (variant - baseline), each round's pair measured
    close in time: steadier than a difference of medians on a shared host."""
    return statistics.median(t - b for t, b in zip(times, baseline, strict=True))


def stat_cpu_seconds(path: str) -> float:
    """User + system CPU seconds from a /proc ``stat`` file (a process's,
    or one thread's: ``/proc/<pid>/task/<tid>/stat``)."""
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes, all their threads, from /proc."""
    return sum(stat_cpu_seconds(f"/proc/{pid}/stat") for pid in pids)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# -- wrk ------------------------------------------------------------------------

_WRK_POST = 'wrk.method = "POST"\n'


def wrk(url: str, seconds: float, connections: int = 8, threads: int = 1) -> dict[str, float]:
    """requests/s, p50 and p99 latency (ms) of POST ``url`` under wrk."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_POST)
    try:
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency",
             "-s", script.name, url],
            capture_output=True, text=True, timeout=seconds + 30, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"benchmarks: wrk got {non2xx.group(1)} error responses from {url}")
    return {"rps": rps, "p50_ms": _latency(out, "50%"), "p99_ms": _latency(out, "99%")}


def _latency(out: str, label: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if match is None:
        raise RuntimeError(f"benchmarks: no {label} latency in wrk output:\n{out}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


@contextlib.contextmanager
def gunicorn(variant: str, env: dict[str, str]) -> Iterator[str]:
    """The sample app's ``variant`` under gunicorn (1 worker, gthread, 4
    threads); yields its URL."""
    from tests.servers import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "4",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
         "--chdir", str(ROOT / "benchmarks"), "_common:wsgi_app_from_env()"],
        env={**os.environ, **env, "BENCH_VARIANT": variant}, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"benchmarks: gunicorn ({variant}) did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        stop_process(process)
