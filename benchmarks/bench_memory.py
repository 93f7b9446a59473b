"""Memory of a process recording 10^4, 10^5, 5*10^5 and 10^6 requests, each with a
unique request ID (a UUID4), into an InfluxDB chest whose backend is up
(VictoriaMetrics) or down (a loopback port nothing listens on).

10^6 requests through the test client would take about 5 minutes here, so the
loop calls the decorated view itself inside one ``app.test_request_context``
(a POST to "/"): the decorator does all its per-request work (request ID,
reading ``g``, recording), without Flask's request dispatch, which allocates
nothing that outlives a request. RSS is read at each checkpoint after a
collection and ``gc.collect()``, with the number of memory blocks live
Python objects hold (``sys.getallocatedblocks()``): a leak grows the blocks;
glibc's arenas make RSS wobble by tens of MB under a churning buffer while
the blocks stay flat. Backend up: the chest is flushed every 10^4
requests (a real server is slower than this loop, so the exporter keeps up);
backend down: nothing is flushed, and the exporter's buffer (200,000 items by
default) must hold its bound, dropping the oldest.

Each case runs in a fresh process:

    python benchmarks/bench_memory.py --backend up|down [--influx-url URL]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import build_variant, dead_url, rss_bytes

#: The slope is taken over the last two (the first 10^5 requests fill the
#: buffer of a down backend and warm caches up: a one-time step).
CHECKPOINTS = (10_000, 100_000, 500_000, 1_000_000)
FLUSH_EVERY = 10_000


def measure(backend: str, influx_url: str, checkpoints: tuple[int, ...]) -> dict[str, Any]:
    from flask_chest_otel._recorder import RECORDER

    url = influx_url if backend == "up" else dead_url()
    variant = build_variant("flask_chest", url, "", n_chests=1)
    chest = variant.chests[0]
    view = variant.view
    gc.collect()
    rows: list[dict[str, Any]] = []
    with variant.app.test_request_context("/", method="POST"):
        view()  # first call: imports and caches out of the baseline
        RECORDER.collect()
        gc.collect()
        start_rss = rss_bytes()
        done = 0
        started = time.perf_counter()
        for target in checkpoints:
            while done < target:
                step = min(FLUSH_EVERY, target - done)
                for _ in range(step):
                    view()
                done += step
                if backend == "up" and not chest.force_flush(60_000):
                    raise RuntimeError("bench_memory: VictoriaMetrics did not take the points")
            RECORDER.collect()
            gc.collect()
            rss = rss_bytes()
            trimmed = _trimmed_rss()
            stats = chest.exporter.stats
            rows.append({
                "requests": done,
                "rss_mb": rss / 2**20,
                # After glibc's malloc_trim(0): what RSS the process could
                # give back (free memory kept by the allocator's arenas).
                "rss_trimmed_mb": trimmed / 2**20,
                # Live Python objects' memory blocks: flat while RSS moves
                # means the allocator, not a leak.
                "python_blocks": sys.getallocatedblocks(),
                "seconds": time.perf_counter() - started,
                "buffered": stats.buffered,
                "exported": stats.exported,
                "dropped_buffer_full": stats.dropped_buffer_full,
                # Past 500,000 waiting measurements the recorder drops the
                # oldest: this loop never releases the GIL, so the collector
                # thread falls behind (a server doing I/O lets it run).
                "dropped_collector_behind": RECORDER.dropped,
            })  # fmt: skip
    # A down backend keeps its buffer until exit: lose it now, not in 5 s.
    chest.shutdown(timeout_millis=100 if backend == "down" else 30_000)
    first, last = rows[-2], rows[-1]
    requests = last["requests"] - first["requests"]
    slope = (last["rss_mb"] - first["rss_mb"]) * 2**20 / requests
    return {
        "backend": backend,
        "start_rss_mb": start_rss / 2**20,
        "checkpoints": rows,
        "slope_bytes_per_request": slope,
        "slope_blocks_per_request": (last["python_blocks"] - first["python_blocks"]) / requests,
        "max_buffer_items": chest.exporter.max_buffer_items,
    }


def _trimmed_rss() -> int:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return rss_bytes()


def run_case(backend: str, influx_url: str, quick: bool = False) -> dict[str, Any]:
    """One case in a fresh interpreter (so RSS is not the parent's)."""
    command = [sys.executable, str(Path(__file__)), "--backend", backend,
               "--influx-url", influx_url]  # fmt: skip
    if quick:
        command.append("--quick")
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"bench_memory ({backend}) failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["up", "down"], required=True)
    parser.add_argument("--influx-url", default="")
    parser.add_argument("--quick", action="store_true", help="stop at 2*10^5 requests")
    args = parser.parse_args()
    checkpoints = (10_000, 100_000, 150_000, 200_000) if args.quick else CHECKPOINTS
    if args.backend == "up" and not args.influx_url:
        from _common import victoria_metrics

        with victoria_metrics() as url:
            print(json.dumps(measure("up", url, checkpoints)))
        return
    print(json.dumps(measure(args.backend, args.influx_url, checkpoints)))


if __name__ == "__main__":
    main()
