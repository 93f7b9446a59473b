"""Where the app's CPU goes under ``bench_load.py``'s pinned load, by kind of
thread, sampled by ``perf``: the workers' request threads, their background
threads (our collector and senders; the floor posters' thread), and the
app's CPU left idle. Microseconds per request, each with its share spent in
the kernel (system calls and what they run: the loopback's TCP processing
among it).

Each variant runs once under gunicorn (``-w 2``, sync) on CPU 0, wrk (at
``SCHED_FIFO``) and the backends on CPU 1, as ``bench_load.py`` runs them;
``perf record`` samples CPU 0 at 499 Hz with DWARF stacks for ``--seconds``
from half a second into wrk's run, which goes on a second past it (the
requests counted are wrk's rate times those seconds). Needs perf (Debian:
linux-perf) and root, or ``kernel.perf_event_paranoid`` <= 1, and the bench
extra (``pip install -e '.[bench]'``)::

    python benchmarks/perf_split.py [--seconds 5] [plain,prometheus,batched,per_request]

Sampling slows the app (fewer req/s than ``bench_load.py`` reads): compare
the variants of one run, not its req/s with another tool's.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_load  # noqa: E402
from _common import ROOT  # noqa: E402
from lean_sink import LeanSink  # noqa: E402

from tests.servers import victoria_metrics  # noqa: E402

#: Kinds of thread, in the order printed.
KINDS = ("request threads", "background threads", "idle")


def split(script: str, requests: int, seconds: float) -> dict[str, tuple[float, float]]:
    """(microseconds per request, of which in the kernel) by kind of thread,
    from ``perf script`` output of ``seconds`` of one CPU: each kind's share
    of the samples (idle ones included) times that CPU time, over the
    requests served. The two threads with the most samples among the
    workers' are their request threads (a sync worker's main thread)."""
    per_thread: collections.Counter[tuple[str, str]] = collections.Counter()
    in_kernel: collections.Counter[tuple[str, str]] = collections.Counter()
    for block in script.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        head = lines[0].split()
        thread = (head[0], head[1] if len(head) > 1 else "")
        per_thread[thread] += 1
        if "entry_SYSCALL" in block or "asm_" in block:
            in_kernel[thread] += 1
    workers = [thread for thread, _ in per_thread.most_common() if thread[0] == "python"]
    kinds: dict[str, list[tuple[str, str]]] = {
        "request threads": workers[:2],
        "background threads": workers[2:],
        "idle": [thread for thread in per_thread if thread[0] == "swapper"],
    }
    us = seconds * 1e6 / max(1, sum(per_thread.values())) / requests
    return {
        kind: (
            sum(per_thread[thread] for thread in threads) * us,
            sum(in_kernel[thread] for thread in threads) * us,
        )
        for kind, threads in kinds.items()
    }


def _load(measured: dict[str, float], url: str, seconds: float) -> None:
    """wrk against ``url`` for ``seconds``, its figures into ``measured``."""
    measured.update(bench_load.wrk(url, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="?", default="plain,prometheus,batched,per_request,"
                        "post_floor_8")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frequency", type=int, default=499)
    args = parser.parse_args()
    print(bench_load.pin([0], [1]), file=sys.stderr)
    print(bench_load.prioritise_load(), file=sys.stderr)
    print("| variant | req/s | " + " | ".join(f"{kind} us/req (kernel)" for kind in KINDS) + " |")
    print("| --- | --- |" + " --- |" * len(KINDS))
    with (
        tempfile.TemporaryDirectory() as tmp,
        LeanSink() as sink,
        victoria_metrics(Path(tmp) / "vm") as vm,
    ):
        env = {"BENCH_INFLUX_URL": vm.url, "BENCH_SINK_URL": sink.url,
               "PYTHONPATH": str(ROOT), "BENCH_SQLITE": f"{tmp}/chest.sqlite3"}  # fmt: skip
        for variant in args.variants.split(","):
            data = f"{tmp}/{variant}.perf"
            with bench_load.gunicorn(variant, env) as (url, _):
                bench_load.wrk(url, 2)  # warm-up
                time.sleep(1)
                measured: dict[str, float] = {}
                load = threading.Thread(target=_load, args=(measured, url, args.seconds + 2))
                load.start()
                time.sleep(0.5)
                subprocess.run(
                    ["perf", "record", "-F", str(args.frequency), "-C", "0",
                     "--call-graph", "dwarf,8192", "-o", data, "--", "sleep", str(args.seconds)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                )  # fmt: skip
                load.join()
            script = subprocess.run(
                ["perf", "script", "-i", data, "-F", "comm,tid,ip,sym"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            figures = split(script, round(measured["rps"] * args.seconds), args.seconds)
            cells = " | ".join(f"{total:.1f} ({kernel:.1f})" for total, kernel in figures.values())
            print(f"| {variant} | {measured['rps']:.0f} | {cells} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
