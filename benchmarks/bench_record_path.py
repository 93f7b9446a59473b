"""CPU cost of the decorator's request path alone: ``start()`` (request ID)
and ``finish()`` (read ``g``, build the group, one queue append) for a route
recording 2 variables to one chest, inside one request context, without the
test client or the WSGI stack around it.

Timed with ``time.thread_time``: the CPU of the request's own thread only,
so the collector and sender threads (a spooling chest writes its file there)
are not counted, nor are other processes. Two chests, interleaved round by
round: a SQLite chest, and the same with ``spool_dir`` (whose file is
written by the collector thread, every 0.1 s while the rounds run).
Reported per chest: the minimum and the median over rounds of the
per-request microseconds.

    python benchmarks/bench_record_path.py [--rounds 15] [--requests 20000]

To compare two checkouts, run it once with each on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from flask import Flask, g, request

from flask_chest_otel import FlaskChestSQLite, flask_chest


def _timer(app: Flask, view: Any) -> timeit.Timer:
    recording = view._flask_chest_recording

    def one() -> None:
        started = recording.start()
        g.transaction = 1
        g.response_time = 0.25
        # finish(started, status) since 0.2; a checkout before it (compared
        # on PYTHONPATH) starts with None and finishes with no arguments.
        recording.finish(*(() if started is None else (started, 200)))

    return timeit.Timer(one, timer=time.thread_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-record-path-") as tmp:
        chests = {
            "sqlite": FlaskChestSQLite(db_uri=str(Path(tmp) / "a.sqlite3"), name="plain"),
            "sqlite_spooled": FlaskChestSQLite(
                db_uri=str(Path(tmp) / "b.sqlite3"), name="spooled", spool_dir=tmp
            ),
        }
        app = Flask(__name__)
        views = {}
        for name, chest in chests.items():
            view = flask_chest(
                chests=[chest], tracked_vars={"POST": ["transaction", "response_time"]}
            )(lambda: "ok")
            view.__name__ = name
            app.add_url_rule(f"/{name}", name, view, methods=["POST"])
            views[name] = view
        per_request: dict[str, list[float]] = {name: [] for name in chests}
        adapter = app.url_map.bind("localhost")
        for _ in range(args.rounds):
            for name, view in views.items():
                with app.test_request_context(f"/{name}", method="POST"):
                    request.url_rule = adapter.match(
                        f"/{name}", method="POST", return_rule=True
                    )[0]
                    seconds = _timer(app, view).timeit(number=args.requests)
                per_request[name].append(seconds / args.requests * 1e6)
        for chest in chests.values():
            chest.shutdown()
    print(json.dumps({
        name: {
            "request_path_cpu_us_min": round(min(values), 2),
            "request_path_cpu_us_median": round(statistics.median(values), 2),
        }
        for name, values in per_request.items()
    } | {"rounds": args.rounds, "requests_per_round": args.requests}))  # fmt: skip


if __name__ == "__main__":
    main()
