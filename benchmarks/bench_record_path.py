"""CPU cost of the decorator's request path alone: ``start()`` (request ID)
and ``finish()`` (read ``g``, build the group, one queue append) for a route
recording 2 variables to one chest, inside one request context, without the
test client or the WSGI stack around it. CPU time (``time.process_time``),
so other processes on the machine weigh less; reported: the minimum and the
median over rounds of the per-request microseconds.

    python benchmarks/bench_record_path.py [--rounds 15] [--requests 20000]

To compare two checkouts, run it once with each on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import timeit

from flask import Flask, g, request

from flask_chest_otel import flask_chest
from flask_chest_otel._recorder import RECORDER
from flask_chest_otel.testing import RecordingChest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    chest = RecordingChest()
    app = Flask(__name__)

    @app.route("/", methods=["POST"])
    @flask_chest(chests=[chest], tracked_vars={"POST": ["transaction", "response_time"]})
    def index() -> str:
        return "ok"

    recording = index._flask_chest_recording  # type: ignore[attr-defined]
    per_request: list[float] = []
    with app.test_request_context("/", method="POST"):
        request.url_rule = app.url_map.bind("localhost").match(
            "/", method="POST", return_rule=True
        )[0]

        def one() -> None:
            recording.start()
            g.transaction = 1
            g.response_time = 0.25
            recording.finish()

        timer = timeit.Timer(one, timer=time.process_time)
        for _ in range(args.rounds):
            per_request.append(timer.timeit(number=args.requests) / args.requests * 1e6)
            RECORDER._pending.clear()  # what the collector would have taken
    chest.shutdown()
    print(json.dumps({
        "request_path_cpu_us_min": round(min(per_request), 2),
        "request_path_cpu_us_median": round(statistics.median(per_request), 2),
        "rounds": args.rounds,
        "requests_per_round": args.requests,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
