"""Under real load: gunicorn sync workers (``-w 2``; ``--worker-class
gthread`` for threaded ones) behind wrk (POST, 4 connections), for the peers
and every mode of ours, in interleaved rounds.

Per variant: requests/s, p50 and p99 latency (wrk), the total CPU of the
worker processes per request served (every thread: request handling and
background export, read from /proc after the workers went idle again, so a
backlog drained after the run is counted), and the points delivered against
the requests served (read back from VictoriaMetrics, the HTTP sink and the
SQLite files at the end). "app CPU idle" is the share of the app's CPUs
left idle while wrk ran (median over rounds; every CPU when not pinned;
from 10 ms clock ticks, so 0.5 % of one CPU over a 2 s round is its
resolution): above a few percent, the app was not the bottleneck of that
round.
"backends us/req" is the CPU the backends spent
per request meanwhile (VictoriaMetrics, and the HTTP sink's threads in this
process): they share the 2 cores with the workers, which prometheus'
variant does not pay for. "req/s ceiling" is what that alone leaves a
variant whose workers would spend no more CPU than prometheus' (at
saturation; see ``rps_ceiling``). Medians over rounds with min-max spread; ratios
against prometheus-flask-exporter are the medians of each round's ratio.
Below the table, for req/s: that median with a 95 % interval for it (the
order statistics a binomial count gives, no assumption on the spread; 6
rounds or more), and how many rounds read 0.9x or more: on a shared host
one run's median moves by several percent, and the interval says how far.

Variants: ``plain`` (no instrumentation), ``prometheus``
(prometheus-flask-exporter), ``otel`` (opentelemetry-instrumentation-flask
with an SDK reader), ``flask_chest_0010`` (flask-chest 0.0.10 from PyPI, an
InfluxDB chest and a custom writer, written in the request), and ours:
``sqlite`` (the embedded default), ``batched`` (InfluxDB + custom writer
posting one payload per export), ``per_request`` (InfluxDB + custom writer
posting once per request, the sample usage's default: up to 16 POSTs at
once over as many kept-alive connections),
``per_request_one_connection`` (the same with ``max_connections=1``: one
POST at a time), and ``post_floor``: prometheus-flask-exporter plus one POST
per request written by hand (a background thread, one kept-alive socket, a
prebuilt head, the answer read by its length, nothing parsed, no retry):
the floor of a writer that waits for each answer before the next POST, so
that ``per_request`` can be read against it (which writes a POST on each of
8 connections before reading their answers, and can go below it).
``post_floor_8`` is the same with the POSTs made as ``per_request`` makes
them: every 10 ms the thread takes the requests that ended meanwhile and
writes one POST on each of 8 kept-alive sockets, then reads their answers
after one ``poll`` for those answered, each in one ``recv`` (nothing
parsed): the floor of any writer that POSTs once per request with 8 in
flight on a collector's cadence, on top of prometheus-flask-exporter.

Pinned by default, so that the backends never count against the app
(measured fair on 2 cores): gunicorn (master, workers and every thread of
theirs, the chests' background work included) on CPU 0 with ``taskset``,
wrk, VictoriaMetrics and this process (the sinks' threads) on CPU 1; it
says so on stderr. There wrk runs ahead of the backends (``chrt -f 1``,
``SCHED_FIFO``, where the process may; ``--no-load-priority`` not): a sink
busy with a burst of POSTs would otherwise hold back wrk's next request, the
app's CPU would idle meanwhile ("app CPU idle": 2-4 % in ``per_request``'s
rounds against 0.7-1.2 % in prometheus' without it, 0.0-0.5 % in every
variant with it), and the backend's CPU would count against the app after
all. With the app's CPU saturated in every variant, req/s ratios follow
the ratios of CPU per request. ``--app-cpus``/``--rest-cpus`` choose other CPUs,
``--no-pin`` shares them all (as the runs before 2026-12 did).

The InfluxDB chests write to a VictoriaMetrics on the same cores, or with
``--influx lean`` to a lean endpoint that keeps the lines (a TSDB on
another machine); the request IDs are read back from either.

A variant may carry settings of our background threads, to weigh one
against the default in the same interleaved rounds: ``--variants
prometheus,per_request,per_request@grace=0.005`` (``@slice=`` and ``@grace=``
of ``flask_chest_otel._pacing``, ``@steady=`` the steady chests' collect
interval, all in seconds; ``@group=`` the HTTP writer's connections per
thread; ``--pacing-slice`` sets the slice of every variant). With
``--baseline DIR``, another checkout (``git worktree add DIR COMMIT``), a
variant with ``@baseline=1`` runs DIR's flask_chest_otel (the app and this
script stay this checkout's; the worker checks where it imported it from),
so that two commits are weighed in the same rounds.

    python benchmarks/bench_load.py [--rounds N] [--seconds S] [--quick] [--influx lean]
        [--app-cpus 0 --rest-cpus 1 | --no-pin] [--pacing-slice SECONDS]
        [--variants prometheus,per_request,per_request@grace=0.005]
        [--baseline DIR --variants prometheus,per_request,per_request@baseline=1]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import json
import math
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    ROOT,
    cpu_seconds,
    cust_payload_generator,
    raw_post,
    raw_post_wave,
    raw_socket,
    sample_view,
)
from flask import Flask  # noqa: E402
from lean_sink import LeanSink  # noqa: E402

from tests.http_sink import HTTPSink  # noqa: E402
from tests.servers import free_port, stop_process  # noqa: E402
from tests.servers import victoria_metrics as start_victoria_metrics  # noqa: E402

VARIANTS = [
    "plain", "prometheus", "otel", "flask_chest_0010", "sqlite", "batched", "per_request",
    "per_request_one_connection", "post_floor", "post_floor_8",
]  # fmt: skip
#: Variants that deliver points, and where to (for the read-back).
DELIVERING = {
    "flask_chest_0010", "sqlite", "batched", "per_request", "per_request_one_connection",
    "post_floor", "post_floor_8",
}  # fmt: skip
#: Settings a variant can carry, ``per_request@grace=0.002@slice=0.0001``, to
#: weigh them against the variant without, in the same interleaved rounds:
#: the module attribute each sets in the workers.
KNOBS = {
    "slice": ("flask_chest_otel._pacing", "SLICE_SECONDS"),
    "grace": ("flask_chest_otel._pacing", "GRACE_SECONDS"),
    "steady": ("flask_chest_otel._chest", "STEADY_COLLECT_INTERVAL"),
    "group": ("flask_chest_otel.http_payload._direct", "GROUP"),
    # Not an attribute: the variant runs the flask_chest_otel of --baseline.
    "baseline": ("", ""),
}
TRACKED = {"GET": ["transaction"], "POST": ["transaction", "response_time"]}
#: Threads of each gthread worker.
GTHREAD_THREADS = 4


# -- the app of each variant (built inside each gunicorn worker) ---------------


def parse_variant(spec: str) -> tuple[str, dict[str, float]]:
    """``per_request@grace=0.002`` -> ``("per_request", {"grace": 0.002})``;
    ValueError for an unknown variant or setting."""
    base, *settings = spec.split("@")
    if base not in VARIANTS:
        raise ValueError(f"unknown variant {base!r} (one of {', '.join(VARIANTS)})")
    knobs: dict[str, float] = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in KNOBS:
            raise ValueError(f"{spec}: unknown setting {name!r} (one of {', '.join(KNOBS)})")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{spec}: {name} needs a number, got {value!r}") from None
        knobs[name] = int(number) if number.is_integer() else number
    return base, knobs


def label(spec: str) -> str:
    """A variant's name in URLs, tags and file names."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", spec)


def app_from_env() -> Flask:
    """gunicorn's app: the variant named by $BENCH_VARIANT."""
    spec = os.environ["BENCH_VARIANT"]
    variant, knobs = parse_variant(spec)
    if os.environ.get("BENCH_PACING_SLICE"):
        knobs.setdefault("slice", float(os.environ["BENCH_PACING_SLICE"]))
    if knobs.pop("baseline", 0):
        import flask_chest_otel

        baseline = Path(os.environ["BENCH_BASELINE"]).resolve()
        if not Path(flask_chest_otel.__file__).resolve().is_relative_to(baseline):
            raise RuntimeError(
                f"{spec}: imported {flask_chest_otel.__file__}, not {baseline}'s (path {sys.path})"
            )
    for name, value in knobs.items():
        module, attribute = KNOBS[name]
        setattr(importlib.import_module(module), attribute, value)
    influx_url = os.environ.get("BENCH_INFLUX_URL", "")
    sink_url = os.environ.get("BENCH_SINK_URL", "")
    app = Flask(f"bench_load_{variant}")
    view = sample_view(["transaction", "response_time"])
    tags = {"app": label(spec)}
    if variant in ("prometheus", "post_floor", "post_floor_8"):
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app)
        if variant == "post_floor":
            app.after_request(_floor_poster(f"{sink_url}/{label(spec)}"))
        elif variant == "post_floor_8":
            app.after_request(_grouped_floor_poster(f"{sink_url}/{label(spec)}"))
    elif variant == "otel":
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider

        FlaskInstrumentor.instrument_app(
            app,
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
            tracer_provider=TracerProvider(),
        )
    elif variant == "flask_chest_0010":
        from flask_chest import FlaskChestCustomWriter as OldWriter
        from flask_chest import FlaskChestInfluxDB as OldInfluxDB
        from flask_chest.decorator import flask_chest as old_flask_chest

        parts = urllib.parse.urlsplit(influx_url)
        chests = [
            OldInfluxDB(app, host=parts.hostname, port=parts.port, token="t", org="o",
                        bucket="b", custom_tags=tags),
            OldWriter(name="SignalFX", url=f"{sink_url}/{label(spec)}",
                      payload_generator=cust_payload_generator, verify=False,
                      success_status_codes=[200, 201], logger=_quiet_logger()),
        ]  # fmt: skip
        view = old_flask_chest(chests=chests, tracked_vars=TRACKED)(view)
    elif variant in ("sqlite", "batched", "per_request", "per_request_one_connection"):
        from flask_chest_otel import (
            FlaskChestCustomWriter,
            FlaskChestInfluxDB,
            FlaskChestSQLite,
            flask_chest,
        )

        chests: list[Any]
        if variant == "sqlite":
            chests = [FlaskChestSQLite(db_uri=os.environ["BENCH_SQLITE"])]
        else:
            chests = [
                FlaskChestInfluxDB(name="InfluxDB", url=influx_url, token="t", org="o",
                                   bucket="b", custom_tags=tags),
                FlaskChestCustomWriter(name="SignalFX", url=f"{sink_url}/{label(spec)}",
                                       payload_generator=cust_payload_generator, verify=False,
                                       success_status_codes=[200, 201],
                                       per_request=variant != "batched",
                                       max_connections=1 if "one_connection" in variant
                                       else None),
            ]  # fmt: skip
        view = flask_chest(chests=chests, tracked_vars=TRACKED)(view)
    elif variant != "plain":
        raise ValueError(f"unknown variant {variant!r}")
    view.__name__ = "index"
    app.add_url_rule("/", "index", view, methods=["GET", "POST"])
    return app


def _floor_head(url: str) -> bytes:
    """The head of the floor posters' POSTs to ``url``, the length left to fill."""
    parts = urllib.parse.urlsplit(url)
    return (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ).encode()


def _floor_poster(url: str) -> Callable[[Any], Any]:
    """``post_floor``'s after-request hook: queues the request's ID; a
    thread POSTs one JSON payload per request (the sample generator's shape)
    over one kept-alive socket, each answer read by its ``Content-Length``."""
    import queue
    import threading
    import uuid

    head = _floor_head(url)
    waiting: queue.SimpleQueue[str] = queue.SimpleQueue()

    def post() -> None:
        sock = raw_socket(url)
        buffer = b""
        while True:
            body = json.dumps({"0": ["transaction", 1, waiting.get()]}).encode()
            buffer = raw_post(sock, head % len(body) + body, buffer)

    threading.Thread(target=post, daemon=True).start()

    def queue_post(response: Any) -> Any:
        waiting.put(uuid.uuid4().hex)
        return response

    return queue_post


def _grouped_floor_poster(url: str, width: int = 8, every: float = 0.01) -> Callable[[Any], Any]:
    """``post_floor_8``'s after-request hook: queues the request's ID; every
    ``every`` seconds a thread POSTs those queued, ``width`` at a time, one
    on each kept-alive socket, then reads their answers as ``poll`` finds
    them answered, one ``recv`` each, nothing parsed."""
    import collections
    import threading
    import uuid

    head = _floor_head(url)
    waiting: collections.deque[str] = collections.deque()

    def post() -> None:
        socks = [raw_socket(url) for _ in range(width)]
        while True:
            time.sleep(every)
            while waiting:
                wave = []
                while waiting and len(wave) < width:
                    body = json.dumps({"0": ["transaction", 1, waiting.popleft()]}).encode()
                    wave.append(head % len(body) + body)
                raw_post_wave(socks, wave)

    threading.Thread(target=post, daemon=True).start()

    def queue_post(response: Any) -> Any:
        waiting.append(uuid.uuid4().hex)
        return response

    return queue_post


def _quiet_logger() -> Any:
    import logging

    logger = logging.getLogger("bench_load.flask_chest_0010")
    logger.setLevel(logging.WARNING)
    return logger


# -- processes ------------------------------------------------------------------


@contextlib.contextmanager
def gunicorn(
    variant: str,
    env: dict[str, str],
    app: str = "bench_load:app_from_env()",
    directory: Path = HERE,
    worker_class: str = "sync",
) -> Iterator[tuple[str, int]]:
    """``variant`` under gunicorn ``-w 2``, sync workers or gthread with 4
    threads each (``app`` from ``directory``); yields (URL, master pid)."""
    port = free_port()
    threads = ["--threads", str(GTHREAD_THREADS)] if worker_class == "gthread" else []
    process = subprocess.Popen(
        [*_pinned(APP_CPUS), sys.executable, "-m", "gunicorn", "-w", "2", "-k", worker_class,
         *threads,
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
         "--chdir", str(directory), app],
        env={**os.environ, **env, "BENCH_VARIANT": variant}, stdout=subprocess.DEVNULL,
        cwd=directory,  # ``-m`` puts the working directory first on the path
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while len(_workers(process.pid)) < 2 or not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench_load: gunicorn ({variant}) did not start")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        stop_process(process)


#: CPUs for gunicorn, and for wrk and the backends; empty: not pinned.
APP_CPUS: list[int] = []
REST_CPUS: list[int] = []
#: What wrk's command starts with to run ahead of the backends on its CPU
#: (``chrt -f 1``); empty: the same priority as they have.
LOAD_PRIORITY: list[str] = []


def _pinned(cpus: list[int]) -> list[str]:
    """The ``taskset`` prefix running a command on ``cpus`` (none if empty)."""
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def pin(app_cpus: list[int], rest_cpus: list[int]) -> str:
    """Pins this process (and what it starts from now on: VictoriaMetrics,
    the sinks' threads) to ``rest_cpus``; gunicorn goes to ``app_cpus`` and
    wrk to ``rest_cpus`` when started. Returns what was done, to print."""
    available = sorted(os.sched_getaffinity(0))
    if (
        not app_cpus
        or not set(app_cpus + rest_cpus) <= set(available)
        or set(app_cpus) & set(rest_cpus)
    ):
        return f"bench_load: not pinned (CPUs available: {available})"
    APP_CPUS[:], REST_CPUS[:] = app_cpus, rest_cpus
    os.sched_setaffinity(0, rest_cpus)
    return (
        f"bench_load: gunicorn pinned to CPU {','.join(map(str, app_cpus))}; wrk, the "
        f"backends and the sinks to CPU {','.join(map(str, rest_cpus))}"
    )


def prioritise_load() -> str:
    """Runs wrk under ``SCHED_FIFO`` from now on, when this process may,
    so that a backend busy on wrk's CPU never holds back the next request
    (the app would idle meanwhile, and the backend's CPU count against the
    app after all). Returns what was done, to print."""
    command = ["chrt", "-f", "1"]
    try:
        subprocess.run([*command, "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return "bench_load: wrk at the backends' priority (chrt -f refused here)"
    LOAD_PRIORITY[:] = command
    return "bench_load: wrk ahead of the backends on its CPU (chrt -f 1, SCHED_FIFO)"


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        return True
    except OSError:
        return False


def _workers(master: int) -> list[int]:
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children]


def _backends_cpu(victoria_metrics_pid: int | None) -> float:
    """CPU seconds of the backends sharing the machine: VictoriaMetrics and
    this process, where the lean endpoints' threads run (wrk's is not counted)."""
    vm = cpu_seconds([victoria_metrics_pid]) if victoria_metrics_pid is not None else 0.0
    return vm + time.process_time()


def _cpu_times(cpus: list[int]) -> tuple[int, int]:
    """(idle, total) clock ticks so far of ``cpus`` (every CPU if empty),
    from /proc/stat: idle and iowait count as idle."""
    wanted = {f"cpu{cpu}" for cpu in cpus} if cpus else None
    idle = total = 0
    with open("/proc/stat") as stat:
        for line in stat:
            fields = line.split()
            if not fields[0].startswith("cpu") or fields[0] == "cpu":
                continue
            if wanted is None or fields[0] in wanted:
                ticks = [int(field) for field in fields[1:9]]
                idle += ticks[3] + ticks[4]
                total += sum(ticks)
    return idle, total


def _settled_cpu(pids: list[int], limit: float = 60.0) -> float:
    """The workers' CPU once they are idle again (background export done)."""
    deadline = time.monotonic() + limit
    previous = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = cpu_seconds(pids)
        if current - previous <= 0.01:  # under 2% of one core over 0.5 s
            return current
        previous = current
    return previous


# -- wrk -------------------------------------------------------------------------


def wrk(url: str, seconds: float, delay_ms: float = 0.0) -> dict[str, float]:
    """One wrk run (1 thread, 4 connections, POST, each connection waiting
    ``delay_ms`` before each request): req/s, p50/p99 ms, requests."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        if delay_ms:
            script.write(f"function delay()\n  return {delay_ms:g}\nend\n")
    try:
        out = subprocess.run(
            [*LOAD_PRIORITY, *_pinned(REST_CPUS), "wrk", "-t1", "-c4", f"-d{seconds:.0f}s",
             "--latency", "-s", script.name, url],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    if re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        raise RuntimeError(f"bench_load: error responses from {url}:\n{out}")
    return {
        "rps": float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        "requests": float(_find(r"(\d+) requests in", out)),
        "p50_ms": _latency(out, "50%"),
        "p99_ms": _latency(out, "99%"),
    }


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"bench_load: {pattern!r} not in wrk output:\n{text}")
    return match.group(1)


def _latency(out: str, label: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if match is None:
        raise RuntimeError(f"bench_load: no {label} latency in wrk output:\n{out}")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


# -- read-back -------------------------------------------------------------------


def _sink_request_ids(sink: HTTPSink | LeanSink, path: str) -> set[str]:
    """Request IDs in the bodies POSTed to ``path``: JSON ``{i: [name, value,
    id]}`` (ours) or the same form-encoded (flask-chest 0.0.10)."""
    ids: set[str] = set()
    for posted in sink.posts(path):
        try:
            payload = json.loads(posted.body)
            items = payload.values() if isinstance(payload, dict) else payload
        except ValueError:
            items = urllib.parse.parse_qs(posted.body.decode()).values()
        ids.update(str(item[2]) for item in items if isinstance(item, list) and len(item) == 3)
    return ids


def _vm_request_ids(influx_url: str, variant: str) -> set[str]:
    urllib.request.urlopen(f"{influx_url}/internal/force_flush", timeout=10).read()
    query = urllib.parse.urlencode({
        "match[]": f'{{__name__="transaction_value",app="{variant}"}}',
        "start": "0", "end": "4102444800",
    })  # fmt: skip
    with urllib.request.urlopen(f"{influx_url}/api/v1/export?{query}", timeout=60) as answer:
        return {json.loads(line)["metric"]["request_id"] for line in answer if line.strip()}


def _lean_influx_request_ids(endpoint: LeanSink, variant: str) -> set[str]:
    """Request IDs of the ``transaction`` lines tagged ``app=variant`` in the
    line protocol POSTed to the lean endpoint standing in for InfluxDB."""
    ids: set[str] = set()
    for posted in endpoint.posts("/api/v2/write"):
        body = gzip.decompress(posted.body) if posted.body[:2] == b"\x1f\x8b" else posted.body
        for line in body.decode().splitlines():
            measurement, *tags = line.split(" ", 1)[0].split(",")
            pairs = dict(tag.split("=", 1) for tag in tags)
            if measurement == "transaction" and pairs.get("app") == variant:
                ids.add(pairs["request_id"])
    return ids


def _sqlite_request_ids(path: str) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        return {row[0] for row in connection.execute(
            "SELECT DISTINCT request_id FROM flask_chest WHERE name = 'transaction'"
        )}  # fmt: skip
    finally:
        connection.close()


def _sqlite_path(directory: str, variant: str) -> str:
    return str(Path(directory) / f"{label(variant)}.sqlite3")


def delivered(
    variant: str, influx: str | LeanSink, sink: HTTPSink | LeanSink, sqlite_dir: str
) -> dict[str, int]:
    """Distinct request IDs each target of ``variant`` holds (``influx``:
    VictoriaMetrics' URL, or the lean endpoint standing in for it)."""
    base, name = parse_variant(variant)[0], label(variant)
    if base == "sqlite":
        return {"SQLite": len(_sqlite_request_ids(_sqlite_path(sqlite_dir, variant)))}
    if base in ("post_floor", "post_floor_8"):
        return {"HTTP": len(_sink_request_ids(sink, f"/{name}"))}
    influx_ids = (
        _lean_influx_request_ids(influx, name)
        if isinstance(influx, LeanSink)
        else _vm_request_ids(influx, name)
    )
    return {"InfluxDB": len(influx_ids), "HTTP": len(_sink_request_ids(sink, f"/{name}"))}


# -- the run ---------------------------------------------------------------------


#: Another checkout of this repository (``--baseline``), whose
#: flask_chest_otel the variants with ``@baseline=1`` run.
BASELINE: Path | None = None


def _checkout(variant: str) -> dict[str, str]:
    """The environment that makes ``variant``'s workers import the
    flask_chest_otel of ``BASELINE`` (its directory first on the path, so
    its ``tests`` helpers too; the app and ``benchmarks/`` stay this
    checkout's)."""
    if not parse_variant(variant)[1].get("baseline"):
        return {}
    if BASELINE is None:
        raise SystemExit(f"bench_load: {variant} needs --baseline DIR")
    return {"PYTHONPATH": f"{BASELINE}{os.pathsep}{ROOT}", "BENCH_BASELINE": str(BASELINE)}


def run(
    rounds: int,
    seconds: float,
    variants: list[str],
    delay_ms: float = 0.0,
    sink_kind: str = "lean",
    worker_class: str = "sync",
    influx_kind: str = "victoria-metrics",
) -> dict[str, Any]:
    results: dict[str, Any] = {name: {"runs": []} for name in variants}
    served = dict.fromkeys(variants, 0)
    with (
        tempfile.TemporaryDirectory(prefix="bench-load-") as tmp,
        LeanSink() if sink_kind == "lean" else HTTPSink() as sink,
        contextlib.ExitStack() as stack,
    ):
        influx: str | LeanSink
        vm_pid: int | None = None
        if influx_kind == "lean":
            influx = stack.enter_context(LeanSink())
            influx_url = influx.url
        else:
            vm = stack.enter_context(start_victoria_metrics(Path(tmp) / "vm"))
            influx = influx_url = vm.url
            vm_pid = vm.process.pid
        env = {"BENCH_INFLUX_URL": influx_url, "BENCH_SINK_URL": sink.url,
               "PYTHONPATH": str(ROOT)}  # fmt: skip
        servers = {
            name: stack.enter_context(
                gunicorn(
                    name,
                    {**env, "BENCH_SQLITE": _sqlite_path(tmp, name), **_checkout(name)},
                    worker_class=worker_class,
                )
            )
            for name in variants
        }
        for name, (url, _) in servers.items():
            served[name] += int(wrk(url, 1)["requests"])  # warm-up, counted as served
        order = list(variants)
        rng = random.Random(1)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                url, master = servers[name]
                pids = _workers(master)
                before = _settled_cpu(pids)
                backends_before = _backends_cpu(vm_pid)
                idle_before = _cpu_times(APP_CPUS)
                measured = wrk(url, seconds, delay_ms)
                idle_after = _cpu_times(APP_CPUS)
                after = _settled_cpu(pids)
                backends = _backends_cpu(vm_pid) - backends_before
                measured["cpu_us_per_request"] = (after - before) / measured["requests"] * 1e6
                measured["backend_cpu_us_per_request"] = backends / measured["requests"] * 1e6
                ticks = max(1, idle_after[1] - idle_before[1])
                measured["app_cpu_idle_pct"] = (idle_after[0] - idle_before[0]) / ticks * 100
                served[name] += int(measured["requests"])
                results[name]["runs"].append(measured)
        for name in variants:
            results[name]["served"] = served[name]
            if parse_variant(name)[0] in DELIVERING:
                deadline = time.monotonic() + 120
                while True:
                    got = delivered(name, influx, sink, tmp)
                    if all(count >= served[name] for count in got.values()):
                        break
                    if time.monotonic() > deadline:
                        break
                    time.sleep(1)
                results[name]["delivered"] = got
    for name in variants:
        runs = results[name]["runs"]
        for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "backend_cpu_us_per_request",
                    "app_cpu_idle_pct"):  # fmt: skip
            values = [run[key] for run in runs]
            results[name][key] = {
                "median": statistics.median(values), "min": min(values), "max": max(values)
            }  # fmt: skip
    return results


def round_ratio(result: dict[str, Any], base: dict[str, Any], key: str) -> float:
    """The median over rounds of ``result``'s ``key`` against ``base``'s in
    the same round: the rounds interleave the variants, so a round's ratio
    cancels what the host did between rounds (in one run prometheus' req/s
    spread over 2,042-3,574)."""
    return statistics.median(round_ratios(result, base, key))


def round_ratios(result: dict[str, Any], base: dict[str, Any], key: str) -> list[float]:
    """Each round's ratio of ``result``'s ``key`` against ``base``'s."""
    pairs = zip(result["runs"], base["runs"], strict=True)
    return [ours[key] / theirs[key] for ours, theirs in pairs]


def median_interval(values: list[float], coverage: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median of what ``values`` were
    drawn from: the k-th smallest and k-th largest value, k the largest for
    which the interval covers the median with at least ``coverage`` (the
    binomial count of values below it). None with too few values (fewer
    than 6 for 95 %)."""
    ordered = sorted(values)
    n = len(ordered)

    def below(k: int) -> float:  # P(fewer than k of n values below the median)
        return sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 0
    while k + 1 <= n // 2 and 1 - 2 * below(k + 1) >= coverage:
        k += 1
    return None if k == 0 else (ordered[k - 1], ordered[n - k])


def rps_ceiling(result: dict[str, Any], base: dict[str, Any]) -> float:
    """The req/s against prometheus' that the variant would reach at
    saturation if its workers spent no more CPU per request than
    prometheus' do, paying only its backends' CPU on the same cores (beyond
    what they spent during prometheus' run): each round, the cores' time per
    prometheus request (cores / its req/s: its workers, wrk, the kernel) over
    that plus the variant's extra backend CPU per request; the median of
    rounds. Only meaningful at saturation (both cores busy)."""
    cores = os.cpu_count() or 1
    ceilings = []
    for ours, theirs in zip(result["runs"], base["runs"], strict=True):
        per_request = cores * 1e6 / theirs["rps"]
        extra = max(0.0, ours["backend_cpu_us_per_request"] - theirs["backend_cpu_us_per_request"])
        ceilings.append(per_request / (per_request + extra))
    return statistics.median(ceilings)


def table(results: dict[str, Any]) -> str:
    base = results.get("prometheus")
    lines = [
        f"{'variant':<22} {'req/s':>16} {'p50 ms':>14} {'p99 ms':>16} {'CPU us/req':>18}"
        f" {'vs prometheus (req/s, p99, CPU)':>32} {'backends us/req':>16}"
        f" {'req/s ceiling':>14} {'app CPU idle':>12}  delivered/served"
    ]
    for name, result in results.items():
        cells = []
        for key, digits in (("rps", 0), ("p50_ms", 2), ("p99_ms", 2), ("cpu_us_per_request", 0)):
            stat = result[key]
            cells.append(f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-"
                         f"{stat['max']:.{digits}f})")  # fmt: skip
        ratios = "-"
        if base is not None and name != "prometheus":
            ratios = ", ".join(
                f"{round_ratio(result, base, key):.2f}x"
                for key in ("rps", "p99_ms", "cpu_us_per_request")
            )
        got = result.get("delivered")
        delivery = (
            ", ".join(f"{target} {count}/{result['served']}" for target, count in got.items())
            if got
            else "-"
        )
        backends = f"{result['backend_cpu_us_per_request']['median']:.0f}"
        ceiling = "-"
        if base is not None and name != "prometheus" and got:
            ceiling = f"{rps_ceiling(result, base):.2f}x"
        idle = f"{result['app_cpu_idle_pct']['median']:.1f} %"
        lines.append(f"{name:<22} {cells[0]:>16} {cells[1]:>14} {cells[2]:>16} {cells[3]:>18}"
                     f" {ratios:>32} {backends:>16} {ceiling:>14} {idle:>12}"
                     f"  {delivery}")  # fmt: skip
    if base is not None:
        lines.append("")
        lines.append("req/s against prometheus, each round's ratio: the median, a 95 % interval "
                     "for it (distribution-free), and the rounds at or above 0.9x")  # fmt: skip
        for name, result in results.items():
            if name == "prometheus":
                continue
            ratios = round_ratios(result, base, "rps")
            interval = median_interval(ratios)
            shown = "too few rounds"
            if interval is not None:
                shown = f"{interval[0]:.2f}-{interval[1]:.2f}x"
            at_least = sum(ratio >= 0.9 for ratio in ratios)
            lines.append(f"{name:<22} {statistics.median(ratios):.2f}x  [{shown}]  "
                         f"{at_least} of {len(ratios)} rounds >= 0.9x")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS),
        help="comma-separated; a variant may carry settings (slice, grace, steady, group) to weigh "
        "them in the same rounds, e.g. per_request,per_request@grace=0.002@slice=0.0001",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--worker-class", choices=("sync", "gthread"), default="sync",
        help=f"gunicorn's workers (gthread: {GTHREAD_THREADS} threads each)",
    )  # fmt: skip
    parser.add_argument(
        "--sink", choices=("lean", "threaded"), default="lean",
        help="the custom writer's endpoint: lean_sink.py, or the tests' threaded http.server",
    )  # fmt: skip
    parser.add_argument(
        "--influx", choices=("victoria-metrics", "lean"), default="victoria-metrics",
        help="the InfluxDB chest's endpoint: VictoriaMetrics on the same cores, or a lean "
        "endpoint that keeps the lines (a TSDB elsewhere)",
    )  # fmt: skip
    parser.add_argument(
        "--delay-ms", type=float, default=0.0,
        help="each connection waits this long before each request (below saturation)",
    )  # fmt: skip
    parser.add_argument("--app-cpus", default="0", help="CPUs for gunicorn (taskset -c)")
    parser.add_argument("--rest-cpus", default="1", help="CPUs for wrk and the backends")
    parser.add_argument("--no-pin", action="store_true", help="share every CPU")
    parser.add_argument(
        "--no-load-priority", action="store_true",
        help="wrk at the backends' priority (by default SCHED_FIFO, ahead of them)",
    )  # fmt: skip
    parser.add_argument(
        "--pacing-slice", type=float, default=None, metavar="SECONDS",
        help="our background threads' slice between pauses (flask_chest_otel._pacing."
        "SLICE_SECONDS) in the workers, to weigh it",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", type=Path, default=None, metavar="DIR",
        help="another checkout (git worktree add DIR COMMIT): variants with @baseline=1 run its "
        "flask_chest_otel, e.g. --variants prometheus,per_request,per_request@baseline=1",
    )  # fmt: skip
    args = parser.parse_args()
    if args.baseline is not None:
        global BASELINE
        BASELINE = args.baseline.resolve()
        if not (BASELINE / "flask_chest_otel" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no flask_chest_otel package there")
    for spec in args.variants.split(","):
        try:
            knobs = parse_variant(spec)[1]
        except ValueError as exc:
            parser.error(str(exc))
        if knobs.get("baseline") and BASELINE is None:
            parser.error(f"{spec} needs --baseline DIR")
    if args.no_pin:
        print("bench_load: not pinned (--no-pin)", file=sys.stderr)
    else:
        cpus = [[int(cpu) for cpu in text.split(",")] for text in (args.app_cpus, args.rest_cpus)]
        print(pin(*cpus), file=sys.stderr)
    if REST_CPUS and not args.no_load_priority:  # pinned: wrk shares its CPUs with the backends
        print(prioritise_load(), file=sys.stderr)
    rounds, seconds = (1, 2.0) if args.quick else (args.rounds, args.seconds)
    if args.pacing_slice is not None:  # read by app_from_env in each worker
        os.environ["BENCH_PACING_SLICE"] = str(args.pacing_slice)
    results = run(
        rounds,
        seconds,
        args.variants.split(","),
        args.delay_ms,
        args.sink,
        args.worker_class,
        args.influx,
    )
    print(json.dumps(results) if args.json else table(results))


if __name__ == "__main__":
    main()
