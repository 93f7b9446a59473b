"""Where a request's latency goes under load: one of bench_load.py's
variants under gunicorn sync ``-w 2`` behind wrk (POST, 4 connections), with
each worker timing, per request, the view plus Flask (the WSGI call) and
gunicorn's whole handling of the connection (accept to close), the time
from one handling to the next (the worker's loop back to ``accept``), and
every garbage collection pause. What wrk sees beyond the handling is the wait for
a free worker; what the handling adds to the WSGI call is gunicorn's own
code and the GIL waits after its socket calls.

    .venv/bin/python scripts/latency_breakdown.py sqlite [--seconds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import bench_load  # noqa: E402

from tests.http_sink import HTTPSink  # noqa: E402
from tests.servers import victoria_metrics  # noqa: E402


def instrumented_app() -> Callable[..., Iterable[bytes]]:
    """gunicorn's app (in each worker): bench_load's app of $BENCH_VARIANT,
    timed; the timings go to $BREAKDOWN_DIR/<pid>.json at the worker's exit."""
    from gunicorn.workers import sync

    app = bench_load.app_from_env()
    timings: dict[str, list[float]] = {
        "wsgi": [], "handle": [], "gap": [], "gc0": [], "gc1": [], "gc2": []
    }  # fmt: skip
    last_end = [0.0]
    clock = time.perf_counter
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = clock()
        else:
            timings[f"gc{info['generation']}"].append(clock() - gc_started[0])

    gc.callbacks.append(on_gc)
    wsgi = app.wsgi_app

    def timed_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = clock()
        try:
            return wsgi(environ, start_response)
        finally:
            timings["wsgi"].append(clock() - started)

    app.wsgi_app = timed_wsgi  # type: ignore[method-assign]
    handle = sync.SyncWorker.handle

    def timed_handle(self: Any, *args: Any) -> Any:
        started = clock()
        if last_end[0]:
            timings["gap"].append(started - last_end[0])
        try:
            return handle(self, *args)
        finally:
            last_end[0] = clock()
            timings["handle"].append(last_end[0] - started)

    sync.SyncWorker.handle = timed_handle  # type: ignore[method-assign]

    def dump() -> None:
        path = Path(os.environ["BREAKDOWN_DIR"]) / f"{os.getpid()}.json"
        path.write_text(json.dumps(timings))

    import atexit

    atexit.register(dump)
    return app


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "-"

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1e3

    return f"p50 {at(0.5):.2f}  p90 {at(0.9):.2f}  p99 {at(0.99):.2f}  max {ordered[-1] * 1e3:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=bench_load.VARIANTS)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="breakdown-") as tmp,
        victoria_metrics(Path(tmp) / "vm") as vm,
        HTTPSink() as sink,
        contextlib.ExitStack() as stack,
    ):
        env = {"BENCH_INFLUX_URL": vm.url, "BENCH_SINK_URL": sink.url,
               "BENCH_SQLITE": str(Path(tmp) / "chest.sqlite3"), "BREAKDOWN_DIR": tmp,
               "PYTHONPATH": os.pathsep.join(sys.path[:2])}  # fmt: skip
        url, master = stack.enter_context(
            bench_load.gunicorn(args.variant, env, app="latency_breakdown:instrumented_app()",
                                directory=Path(__file__).resolve().parent)
        )  # fmt: skip
        bench_load.wrk(url, 1)
        measured = bench_load.wrk(url, args.seconds)
        os.kill(master, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while len(list(Path(tmp).glob("*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        merged: dict[str, list[float]] = {}
        for path in Path(tmp).glob("*.json"):
            for key, values in json.loads(path.read_text()).items():
                merged.setdefault(key, []).extend(values)
    print(f"{args.variant}: {measured['rps']:.0f} req/s for {args.seconds:g} s")
    print(f"  wrk (client side)      p50 {measured['p50_ms']:.2f}  p99 {measured['p99_ms']:.2f} ms")
    print(f"  gunicorn handle (ms)   {percentiles(merged.get('handle', []))}")
    print(f"  WSGI call (ms)         {percentiles(merged.get('wsgi', []))}")
    print(f"  between two handlings  {percentiles(merged.get('gap', []))}")
    for generation in range(3):
        pauses = merged.get(f"gc{generation}", [])
        print(f"  GC gen {generation}: {len(pauses)} pauses, {sum(pauses) * 1e3:.0f} ms in all, "
              f"longest {max(pauses, default=0) * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
