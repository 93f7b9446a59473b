"""How fast the custom HTTP payload writer delivers, per request and batched.

Runs the test suite's loopback HTTP sink in its own process, feeds an
``HTTPPayloadMetricExporter`` the MetricsData the recorder would hand it for
N requests of the sample app (``transaction`` and ``response_time``), and
times export + delivery until the sink has acknowledged every POST.

    python benchmarks/bench_http_writer.py [--requests 5000] [--cpu-posts 2000] [--no-pin]

Pinned by default: this process (the writer) on CPU 0, the sink on CPU 1.

"payloads/s" counts requests whose tuples were delivered per second (in
per-request mode one POST each; batched, many per POST).

It then prints the client CPU per POST (``time.process_time`` around N POSTs
of the same one-request body to the same keep-alive sink, median of 5
interleaved rounds, spread in brackets): a raw keep-alive ``http.client``
POST (the practical floor), the same bytes on a socket with the answer read
by its length and not parsed (below any HTTP client), the same on 8
sockets at once (one ``poll`` for their answers: the floor of a writer
keeping 8 POSTs in flight, as ours does per thread),
``requests.Session.post`` (with and without its per-call environment
look-up), urllib3's pool (what a requests adapter
sends through), and the per-request writer, once fed ready payloads (its
send path) and once fed MetricsData (generator, encoding and send: the whole
per-request path), each with ``max_connections=1`` (one POST at a time,
like for like with the others) and with its default (16 connections, one
POST in flight on each). Last, the Python function calls the writer makes
per POST on its send path (every thread of it), a count that a busy host
does not change.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3
from _common import raw_post, raw_post_wave, raw_socket
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from flask_chest_otel.http_payload import HTTPPayloadMetricExporter, Payload, json_payload

ROOT = Path(__file__).resolve().parent.parent


def cust_payload_generator(context_tuple_list: list[Any]) -> dict[int, Any]:
    """The sample usage's generator."""
    return dict(enumerate(context_tuple_list))


def metrics_for(first: int, count: int) -> MetricsData:
    """What the recorder hands a chest for ``count`` sample-app POSTs."""
    transaction: list[NumberDataPoint] = []
    response_time: list[NumberDataPoint] = []
    now = time.time_ns()
    for number in range(first, first + count):
        attributes = {"request_id": f"req-{number}", "http.request.method": "POST",
                      "http.route": "/"}  # fmt: skip
        transaction.append(NumberDataPoint(attributes, 0, now + number, 1.0))
        response_time.append(NumberDataPoint(attributes, 0, now + number, 0.000123))
    metrics = [
        Metric("transaction", "", "", Gauge(transaction)),
        Metric("response_time", "", "", Gauge(response_time)),
    ]
    scope = InstrumentationScope("flask_chest_otel", "0.1.0")
    return MetricsData([ResourceMetrics(Resource({}), [ScopeMetrics(scope, metrics, "")], "")])


def sink_count(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/__count", timeout=5) as response:
        counts: dict[str, int] = json.load(response)
        return counts


def run(
    url: str, requests: int, per_export: int, per_request: bool, generator: Any
) -> dict[str, Any]:
    exporter = HTTPPayloadMetricExporter(
        url=url + "/ingest", payload_generator=generator, per_request=per_request, name="bench"
    )
    exports = [metrics_for(first, per_export) for first in range(0, requests, per_export)]
    before = sink_count(url)
    start = time.perf_counter()
    for data in exports:
        exporter.export(data)
    encoded = time.perf_counter() - start
    if not exporter.force_flush(timeout_millis=120_000):
        raise SystemExit("bench: delivery did not finish in 120 s")
    elapsed = time.perf_counter() - start
    exporter.shutdown()
    after = sink_count(url)
    posts = after["posts"] - before["posts"]
    assert exporter.stats.dropped == 0, exporter.stats
    return {
        "posts": posts,
        "kib": (after["bytes"] - before["bytes"]) / 1024,
        "seconds": elapsed,
        "encode_us": encoded / requests * 1e6,
        "posts_s": posts / elapsed,
        "payloads_s": requests / elapsed,
    }


def _cpu_raw(url: str, body: bytes, posts: int) -> float:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    headers = {"Content-Type": "application/json", "User-Agent": "bench"}
    start = time.process_time()
    for _ in range(posts):
        connection.request("POST", "/ingest", body, headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    cpu = time.process_time() - start
    connection.close()
    return cpu


def _cpu_socket(url: str, body: bytes, posts: int) -> float:
    """The same POST as bytes on a kept-alive socket, the answer read by its
    length and not parsed: below what any HTTP client can do."""
    parts = urllib.parse.urlsplit(url)
    sock = raw_socket(url)
    message = (
        b"POST /ingest HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (parts.netloc.encode(), len(body), body)
    )
    buffer = b""
    start = time.process_time()
    for _ in range(posts):
        buffer = raw_post(sock, message, buffer)
    cpu = time.process_time() - start
    sock.close()
    return cpu


def _cpu_sockets(url: str, body: bytes, posts: int, width: int = 8) -> float:
    """The same POST as bytes on ``width`` kept-alive sockets at once: one
    written on each, then one ``poll`` for those answered, each answer read
    in one ``recv`` and not parsed (the lean sink's answer is small): the
    floor of a writer that keeps ``width`` POSTs in flight, as ours does."""
    parts = urllib.parse.urlsplit(url)
    socks = [raw_socket(url) for _ in range(width)]
    message = (
        b"POST /ingest HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (parts.netloc.encode(), len(body), body)
    )
    start = time.process_time()
    for _ in range(posts // width):
        raw_post_wave(socks, [message] * width)
    cpu = time.process_time() - start
    for sock in socks:
        sock.close()
    return cpu * posts / (posts // width * width)


def _cpu_requests(url: str, body: bytes, posts: int, trust_env: bool = True) -> float:
    session = requests.Session()
    session.trust_env = trust_env
    headers = {"Content-Type": "application/json"}
    start = time.process_time()
    for _ in range(posts):
        response = session.post(url + "/ingest", data=body, headers=headers)
        assert response.status_code == 200
    cpu = time.process_time() - start
    session.close()
    return cpu


def _cpu_urllib3(url: str, body: bytes, posts: int) -> float:
    pool = urllib3.PoolManager(maxsize=1).connection_from_url(url)
    headers = {"Content-Type": "application/json"}
    start = time.process_time()
    for _ in range(posts):
        response = pool.urlopen("POST", "/ingest", body=body, headers=headers, retries=False)
        assert response.status == 200
    cpu = time.process_time() - start
    pool.close()
    return cpu


def _cpu_writer(
    url: str, body: bytes, posts: int, whole_path: bool, connections: int | None
) -> float:
    exporter = HTTPPayloadMetricExporter(
        url=url + "/ingest", payload_generator=json_payload, max_connections=connections
    )
    exports = [metrics_for(first, 100) for first in range(0, posts, 100)]
    payload = Payload(body, True, "request bench", 1)
    start = time.process_time()
    if whole_path:
        for data in exports:
            exporter.export(data)
    else:
        exporter.enqueue([(payload, len(body))] * posts)
    if not exporter.force_flush(timeout_millis=120_000):
        raise SystemExit("bench: delivery did not finish in 120 s")
    cpu = time.process_time() - start
    exporter.shutdown()
    assert exporter.stats.exported == posts and exporter.stats.dropped == 0, exporter.stats
    return cpu


def calls_per_post(url: str, body: bytes, posts: int, chunk: int = 10) -> float:
    """Python function calls (Python and C) the per-request writer makes per
    POST on its send path, every thread counted: ``chunk`` ready payloads
    every 2 ms (what 10 ms collections of a busy worker hand it), default
    connections. A count, not a timing: a busy host does not change it."""
    calls = itertools.count()

    def count(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            next(calls)

    threading.setprofile(count)  # the exporter's threads start after this
    try:
        exporter = HTTPPayloadMetricExporter(
            url=url + "/ingest", payload_generator=json_payload, per_request=True
        )
        payload = Payload(body, True, "request bench", 1)
        exporter.enqueue([(payload, len(body))] * chunk)  # connections opened
        if not exporter.force_flush(timeout_millis=120_000):
            raise SystemExit("bench: delivery did not finish in 120 s")
        before = next(calls)
        for _ in range(posts // chunk):
            exporter.enqueue([(payload, len(body))] * chunk)
            time.sleep(0.002)
        if not exporter.force_flush(timeout_millis=120_000):
            raise SystemExit("bench: delivery did not finish in 120 s")
        counted = next(calls) - before
        exporter.shutdown()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    return counted / (posts // chunk * chunk)


def cpu_per_post(url: str, posts: int, rounds: int = 5) -> None:
    [body_items] = [json_payload(group) for group in _one_request()]
    body = json.dumps(body_items, separators=(",", ":")).encode()
    variants: list[tuple[str, Callable[[], float]]] = [
        ("raw http.client keep-alive", lambda: _cpu_raw(url, body, posts)),
        ("bytes on a socket, answer not parsed", lambda: _cpu_socket(url, body, posts)),
        ("bytes on 8 sockets at once, not parsed", lambda: _cpu_sockets(url, body, posts)),
        ("requests.Session.post", lambda: _cpu_requests(url, body, posts)),
        ("  the same, trust_env=False", lambda: _cpu_requests(url, body, posts, False)),
        ("urllib3 pool urlopen", lambda: _cpu_urllib3(url, body, posts)),
        # max_connections=1 is like for like with the one-at-a-time POSTs
        # above; the default sends up to 16 at once, one per connection.
        ("writer, send path, 1 connection",
         lambda: _cpu_writer(url, body, posts, whole_path=False, connections=1)),
        ("writer, export + send, 1 connection",
         lambda: _cpu_writer(url, body, posts, whole_path=True, connections=1)),
        ("writer, send path, default (16)",
         lambda: _cpu_writer(url, body, posts, whole_path=False, connections=None)),
        ("writer, export + send, default (16)",
         lambda: _cpu_writer(url, body, posts, whole_path=True, connections=None)),
    ]
    results: dict[str, list[float]] = {label: [] for label, _ in variants}
    for _ in range(rounds):
        for label, measure in variants:
            results[label].append(measure() / posts * 1e6)
    floor = statistics.median(results[variants[0][0]])
    print(
        f"\nclient CPU per POST ({posts} POSTs of {len(body)} bytes, median of {rounds} rounds)\n"
    )
    header = f"{'path':42} {'us/POST':>8} {'spread':>15} {'vs raw':>7}"
    print(header)
    print("-" * len(header))
    for label, samples in results.items():
        median = statistics.median(samples)
        spread = f"[{min(samples):.0f}-{max(samples):.0f}]"
        print(f"{label:42} {median:>8.1f} {spread:>15} {median / floor:>6.2f}x")
    print(
        "\nPython calls per POST, the writer's send path (every thread, 10 ready payloads "
        f"every 2 ms, default connections): {calls_per_post(url, body, posts):.1f}"
    )


def _one_request() -> list[list[Any]]:
    exporter = HTTPPayloadMetricExporter(url="http://127.0.0.1:9/", payload_generator=json_payload)
    groups = exporter.context_tuple_lists(metrics_for(0, 1))
    exporter.shutdown()
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--cpu-posts", type=int, default=2000)
    parser.add_argument(
        "--no-pin", action="store_true",
        help="share every CPU (default: this process on CPU 0, the sink on CPU 1)",
    )
    args = parser.parse_args()
    sink_pin: list[str] = []
    if not args.no_pin and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})
        sink_pin = ["taskset", "-c", "1"]
        print("bench_http_writer: this process pinned to CPU 0, the sink to CPU 1", file=sys.stderr)
    server = subprocess.Popen(
        [*sink_pin, sys.executable, "-m", "tests.http_sink"], cwd=ROOT,
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        cases = [
            ("per request, sample generator", 100, True, cust_payload_generator),
            ("per request, json_payload", 100, True, json_payload),
            ("batched, 100 requests/export", 100, False, cust_payload_generator),
            ("batched, 1000 requests/export", 1000, False, json_payload),
        ]
        print(f"{args.requests} requests (2 variables each) to {url}, one keep-alive session\n")
        header = (
            f"{'mode':32} {'POSTs':>6} {'KiB':>7} {'s':>6} {'encode us/req':>13} "
            f"{'POSTs/s':>8} {'payloads/s':>10}"
        )
        print(header)
        print("-" * len(header))
        for label, per_export, per_request, generator in cases:
            r = run(url, args.requests, per_export, per_request, generator)
            print(
                f"{label:32} {r['posts']:>6} {r['kib']:>7.0f} {r['seconds']:>6.2f} "
                f"{r['encode_us']:>13.1f} {r['posts_s']:>8.0f} {r['payloads_s']:>10.0f}"
            )
        cpu_per_post(url, args.cpu_posts)
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
