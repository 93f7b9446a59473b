"""CPU per request of each of our threads, for a ``bench_load.py`` variant.

One process, no gunicorn: the variant's Flask app (``bench_load.app_from_env``)
serves ``--requests`` POSTs from its test client at ``--rate`` per second,
its chests writing to a real VictoriaMetrics and the lean HTTP sink (both in
their own processes). Each thread's CPU time is read from
``/proc/self/task/<id>/stat`` before and after, so the collector's and each
sender's share of a request can be weighed apart; the main thread paces the
requests by spinning, so its own figure is left out. Pin it to one core
(the servers it starts inherit the pin; each thread's figure is its own CPU
time, which they do not add to):

    taskset -c 0 python benchmarks/thread_cpu.py per_request per_request@steady=0.01 batched

Prints a table: per variant, each thread's CPU microseconds per request.
Each variant runs in its own process. The clock ticks are 10 ms: 8,000
requests read to about 1.3 us.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # flask_chest_otel and tests, from this checkout

from _common import http_sink, stat_cpu_seconds, victoria_metrics  # noqa: E402


def thread_cpu() -> dict[str, float]:
    """Seconds of CPU (user + system) of each live thread, by name."""
    seconds = {}
    for thread in threading.enumerate():
        try:
            seconds[thread.name] = stat_cpu_seconds(f"/proc/self/task/{thread.native_id}/stat")
        except OSError:  # the thread ended meanwhile
            continue
    return seconds


def measure(variant: str, requests: int, rate: float) -> dict[str, float]:
    """Each of our threads' CPU microseconds per request for ``variant``."""
    os.environ["BENCH_VARIANT"] = variant
    from bench_load import app_from_env

    client = app_from_env().test_client()
    for _ in range(300):  # warm-up: connections open, caches made
        client.post("/", json={"a": 1})
        time.sleep(0.001)
    time.sleep(1.5)
    before = thread_cpu()
    start = time.perf_counter()
    for number in range(requests):
        client.post("/", json={"a": 1})
        due = start + (number + 1) / rate
        while time.perf_counter() < due:
            pass
    time.sleep(1.5)  # the last collections and POSTs
    after = thread_cpu()
    return {
        name: (after[name] - before[name]) / requests * 1e6
        for name in after
        if name in before and name.startswith("flask_chest_otel:")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--rate", type=float, default=800.0)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one variant, its figures as JSON
        print(json.dumps(measure(args.variants[0], args.requests, args.rate)))
        return
    with (
        victoria_metrics() as influx,
        http_sink() as sink,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = {**os.environ, "BENCH_INFLUX_URL": influx, "BENCH_SINK_URL": sink,
               "BENCH_SQLITE": f"{tmp}/chest.sqlite3"}  # fmt: skip
        print(f"| variant | thread | CPU us per request ({args.requests} at {args.rate:g}/s) |")
        print("| --- | --- | --- |")
        for variant in args.variants:
            # Its own process: one recorder, one set of threads per variant.
            child = subprocess.run(
                [sys.executable, __file__, "--one", variant, f"--requests={args.requests}",
                 f"--rate={args.rate}"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            figures = json.loads(child.stdout.strip().splitlines()[-1])
            for name, us in sorted(figures.items()):
                print(f"| {variant} | {name.removeprefix('flask_chest_otel:')} | {us:.1f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
