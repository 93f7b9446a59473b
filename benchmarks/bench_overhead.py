"""Per-request overhead of ``@flask_chest`` (2 variables, an InfluxDB chest on
VictoriaMetrics and a custom writer on an HTTP sink) against the undecorated
route, prometheus-flask-exporter (defaults), opentelemetry-instrumentation-flask
(SDK meter and tracer providers) and the SDK floor (two gauges set by hand
with a fresh UUID attribute set).

Two harnesses:

* the Flask test client, in one process: every round POSTs ``batch``
  requests to each variant in a shuffled order; a variant's ``drain()``
  (flush the chests, collect the SDK readers) follows its requests and is
  timed apart. Reported: median over rounds of (variant - undecorated) per
  request, for the request path alone and with the drain.
* gunicorn (1 worker, gthread, 4 threads) under wrk (1 thread, 8
  connections), one server per variant, rounds interleaved: requests/s and
  p50/p99 latency, medians over rounds.

    python benchmarks/bench_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import shutil
import statistics
import time
from typing import Any

from _common import (
    Variant,
    build_variant,
    gunicorn,
    http_sink,
    paired_overhead,
    victoria_metrics,
    wrk,
)

KINDS = ["plain", "prometheus", "otel", "sdk_floor", "flask_chest", "flask_chest_batched"]


def test_client(influx_url: str, sink_url: str, rounds: int, batch: int) -> dict[str, Any]:
    variants = {kind: build_variant(kind, influx_url, sink_url) for kind in KINDS}
    chest_variant = variants["flask_chest"]
    for variant in variants.values():  # warm-up: imports, first-request setup
        _post(variant, batch)
    chest_variant.drain()
    exported_before = _exported(chest_variant)

    request_s: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu_s: dict[str, list[float]] = {kind: [] for kind in KINDS}
    rng = random.Random(5)
    order = list(KINDS)
    for _ in range(rounds):
        rng.shuffle(order)
        for kind in order:
            variant = variants[kind]
            gc.collect()
            cpu_started = time.process_time()
            started = time.perf_counter()
            _post(variant, batch)
            request_s[kind].append((time.perf_counter() - started) / batch)
            variant.drain()
            # CPU of every thread of this process: the export's real cost to
            # the app (the drain's wall time is mostly the backends' answers).
            cpu_s[kind].append((time.process_time() - cpu_started) / batch)

    # Every request of the timed rounds reached both backends.
    after = _exported(chest_variant)
    delivered = {name: after[name] - exported_before[name] for name in after}
    if delivered != {"InfluxDB0": 2 * rounds * batch, "SignalFX1": rounds * batch}:
        raise RuntimeError(f"bench_overhead: not every point was delivered: {delivered}")

    result: dict[str, Any] = {"rounds": rounds, "batch": batch, "variants": {}}
    for kind in KINDS:
        result["variants"][kind] = {
            "request_us": statistics.median(request_s[kind]) * 1e6,
            "overhead_us": paired_overhead(request_s[kind], request_s["plain"]) * 1e6,
            "cpu_overhead_with_export_us": paired_overhead(cpu_s[kind], cpu_s["plain"]) * 1e6,
        }
    return result


def _post(variant: Variant, count: int) -> None:
    client = variant.client
    for _ in range(count):
        response = client.post("/")
        if response.status_code != 200:
            raise RuntimeError(f"{variant.name}: HTTP {response.status_code}")


def _exported(variant: Variant) -> dict[str, int]:
    return {chest.name: chest.exporter.stats.exported for chest in variant.chests}


def under_wrk(influx_url: str, sink_url: str, rounds: int, seconds: float) -> dict[str, Any]:
    env = {"BENCH_INFLUX_URL": influx_url, "BENCH_SINK_URL": sink_url}
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    with contextlib.ExitStack() as stack:
        urls = {kind: stack.enter_context(gunicorn(kind, env)) for kind in KINDS}
        for url in urls.values():
            wrk(url, 1)  # warm-up
        rng = random.Random(7)
        order = list(KINDS)
        for _ in range(rounds):
            rng.shuffle(order)
            for kind in order:
                runs[kind].append(wrk(urls[kind], seconds))
    result: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "variants": {}}
    for kind in KINDS:
        result["variants"][kind] = {
            key: statistics.median(run[key] for run in runs[kind])
            for key in ("rps", "p50_ms", "p99_ms")
        }
    return result


def run(
    influx_url: str, sink_url: str, quick: bool = False, with_wrk: bool = True
) -> dict[str, Any]:
    result = {
        "test_client": test_client(
            influx_url, sink_url, rounds=8 if quick else 30, batch=100 if quick else 200
        )
    }
    if with_wrk and shutil.which("wrk") is None:
        result["wrk_missing"] = "wrk is not installed (apt-get install -y wrk)"
    elif with_wrk:
        result["wrk"] = under_wrk(influx_url, sink_url, rounds=1 if quick else 5,
                                  seconds=2 if quick else 3)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-wrk", action="store_true")
    parser.add_argument("--influx-url", default="")
    parser.add_argument("--sink-url", default="")
    args = parser.parse_args()
    if args.influx_url and args.sink_url:
        print(json.dumps(run(args.influx_url, args.sink_url, args.quick, not args.no_wrk)))
        return
    with victoria_metrics() as influx_url, http_sink() as sink_url:
        print(json.dumps(run(influx_url, sink_url, args.quick, not args.no_wrk)))


if __name__ == "__main__":
    main()
