"""Where the time goes between a request's answer and the ``os.write`` of its
item in the spool (a dev tool: it wraps the package's functions from the
outside; nothing in the package is instrumented).

Serves ``--rate`` requests per second for ``--seconds`` with a spooling
InfluxDB chest whose backend is down (as ``sigkill_window.py`` does, in one
process), and prints:

- the age of the oldest record at each write (the loss window a SIGKILL at
  that instant would see, just before the write), by percentile and worst;
- the collector's cycles: the wait before each, how long a collection took,
  records per collection, hand-overs per collection;
- inside a collection: pacing pauses (count, wall time, the part spent
  waiting for the GIL after the sleep), encoding, the buffer lock, the
  spool's append (framing) and its writes.

    .venv/bin/python scripts/spool_window_breakdown.py [--rate 4000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import itertools
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_chest_otel import FlaskChestInfluxDB, _pacing  # noqa: E402
from flask_chest_otel._delivery import _buffer, _exporter  # noqa: E402
from flask_chest_otel._recorder import RECORDER, Recorder  # noqa: E402
from flask_chest_otel._spool import _spool  # noqa: E402
from tests.conftest import sample_app  # noqa: E402

ANSWER_204 = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Answer).serve_forever()
"""
clock = time.perf_counter
#: Seconds spent, by part, on the collector thread.
spent: dict[str, float] = defaultdict(float)
counts: dict[str, int] = defaultdict(int)
worst: dict[str, float] = defaultdict(float)
#: (when, age of the oldest record written) per hand-over, unix seconds.
ages: list[float] = []
cycles: list[tuple[float, float, int, int]] = []  # (waited, took, records, hand-overs)
collector_ident: list[int] = []
#: When the spool's writes of the current hand-over were made (unix seconds).
wrote_at: list[float] = []


def on_collector() -> bool:
    return bool(collector_ident) and threading.get_ident() == collector_ident[0]


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not on_collector():
            return function(*args, **kwargs)
        started = clock()
        try:
            return function(*args, **kwargs)
        finally:
            took = clock() - started
            spent[name] += took
            worst[name] = max(worst[name], took)
            counts[name] += 1

    return wrapper


def instrument() -> None:
    real_sleep = time.sleep

    class PacingTime:
        @staticmethod
        def sleep(seconds: float) -> None:
            started = clock()
            real_sleep(seconds)
            slept = clock()
            if on_collector():
                counts["pause"] += 1
                spent["pause: sleep"] += slept - started
                # The GIL is taken back before this line runs; what the
                # sleep's return waited for it shows as sleep beyond 0.1 ms.

    _pacing.time = PacingTime  # type: ignore[assignment]

    # What the write waits for: the spool's lock (the sender's upkeep and acks).
    real_add = _buffer.Buffer.add

    def add(self: _buffer.Buffer[Any], items: Any) -> int:
        if not on_collector():
            return real_add(self, items)
        started = clock()
        lock = self.spool_lock
        lock.acquire()
        waited = clock() - started
        spent["spool lock wait"] += waited
        worst["spool lock wait"] = max(worst["spool lock wait"], waited)
        lock.release()
        started = clock()
        try:
            return real_add(self, items)
        finally:
            spent["buffer add (incl. spool)"] += clock() - started
            counts["buffer add"] += 1

    _buffer.Buffer.add = add  # type: ignore[method-assign]
    _spool.Spool.append = timed("spool append (frame + write)", _spool.Spool.append)  # type: ignore[method-assign]
    real_write = timed("os.write", _spool.write_some)

    def write_some(fd: int, data: bytes) -> Any:
        result = real_write(fd, data)
        if on_collector():
            wrote_at.append(time.time())
        return result

    _spool.write_some = write_some

    real_export = _exporter.BufferedExporter.export_records

    def export_records(self: Any, records: Any) -> Any:
        if not on_collector():
            return real_export(self, records)
        oldest = min(record[4] for record in records) / 1e9
        started = clock()
        wrote_at.clear()
        try:
            return real_export(self, records)
        finally:
            spent["export_records (encode + add)"] += clock() - started
            counts["hand-over"] += 1
            if wrote_at:  # the records' items were written then
                ages.append(wrote_at[-1] - oldest)

    _exporter.BufferedExporter.export_records = export_records  # type: ignore[method-assign]

    real_collect = Recorder.collect
    last_end = [0.0]

    def collect(self: Recorder) -> int:
        if not collector_ident:
            collector_ident.append(threading.get_ident())
        if not on_collector():
            return real_collect(self)
        started = clock()
        before = counts["hand-over"]
        taken = real_collect(self)
        ended = clock()
        if taken:
            cycles.append(
                (started - last_end[0], ended - started, taken, counts["hand-over"] - before)
            )
        last_end[0] = ended
        return taken

    Recorder.collect = collect  # type: ignore[method-assign]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=4000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--backend", choices=("down", "up"), default="down",
        help="up: a server answering 204 to every write, in another process",
    )  # fmt: skip
    args = parser.parse_args()
    instrument()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
    backend = None
    if args.backend == "up":
        backend = subprocess.Popen([sys.executable, "-c", ANSWER_204, str(port)])
        time.sleep(0.5)
    with tempfile.TemporaryDirectory() as spool_dir:
        chest = FlaskChestInfluxDB(
            name="window", url=url, token="t", org="o", bucket="b",
            spool_dir=spool_dir, retry_initial=5, retry_max=5,
        )  # fmt: skip
        numbers = itertools.count()
        client = sample_app([chest], request_id_generator=lambda: str(next(numbers))).test_client()
        client.get("/")
        total = int(args.rate * args.seconds)
        start = time.monotonic()
        late = 0.0
        for n in range(1, total):
            due = start + n / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            client.get("/")
        served = time.monotonic() - start
        time.sleep(0.3)
        skip = sum(1 for cycle in cycles if cycle[1] <= 0) + 2  # warm-up cycles
        steady = cycles[skip:]
        print(
            f"served {total} requests in {served:.2f} s ({(total - 1) / served:,.0f} req/s, "
            f"latest {late * 1000:.1f} ms behind schedule); collector interval "
            f"{RECORDER.interval * 1000:.0f} ms"
        )
        print(
            f"age of the oldest record at its write (ms): p50 {percentile(ages, 0.5) * 1000:.0f}"
            f"  p90 {percentile(ages, 0.9) * 1000:.0f}  p99 {percentile(ages, 0.99) * 1000:.0f}"
            f"  max {max(ages, default=0) * 1000:.0f}"
        )
        for label, column in (("wait before", 0), ("collect took", 1)):
            values = [cycle[column] for cycle in steady]
            print(
                f"{label:>13} (ms): p50 {percentile(values, 0.5) * 1000:.1f}  "
                f"p90 {percentile(values, 0.9) * 1000:.1f}  max {max(values, default=0) * 1000:.1f}"
            )
        print(
            f"per collection: records p50 {percentile([c[2] for c in steady], 0.5):.0f} "
            f"max {max((c[2] for c in steady), default=0)}; hand-overs p50 "
            f"{percentile([c[3] for c in steady], 0.5):.0f} "
            f"max {max((c[3] for c in steady), default=0)}; {len(steady)} collections"
        )
        busy = sum(cycle[1] for cycle in steady) or 1.0
        print(f"inside collections ({busy:.2f} s in all):")
        for name in sorted(spent, key=spent.__getitem__, reverse=True):
            print(
                f"  {name:32} {spent[name]:7.3f} s {100 * spent[name] / busy:5.1f}%"
                + (f"  worst {worst[name] * 1000:.1f} ms" if name in worst else "")
            )
        mean = spent["pause: sleep"] / max(1, counts["pause"])
        print(f"  pauses: {counts['pause']}, mean {mean * 1e3:.2f} ms each (sleep + GIL)")
        print(f"exported {chest.exporter.stats.exported}")
        chest.shutdown(timeout_millis=0)
    if backend is not None:
        backend.kill()
        backend.wait()


if __name__ == "__main__":
    main()
