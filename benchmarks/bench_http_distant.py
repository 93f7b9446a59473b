"""The per-request HTTP writer against a distant endpoint: what is delivered
while the load runs, and how long the rest takes.

An endpoint on loopback that answers each POST after ``--delay`` seconds (a
SaaS ingest across the internet: 50 ms; far away: 200 ms;
``tests/scripted_endpoint.py``), fed by ``exporter.export`` from a thread at
``--rate`` requests per second for ``--seconds`` (no Flask: the writer
alone). Prints the requests stored during the load, the seconds until the
last was stored, and whether any was stored twice.

    python benchmarks/bench_http_distant.py [--delay 0.05] [--rate 200] [--seconds 10]
        [--max-connections 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_chest_otel.http_payload import HTTPPayloadMetricExporter  # noqa: E402
from tests.scripted_endpoint import Behaviour, ScriptedEndpoint  # noqa: E402
from tests.test_http_endpoint import export, request_id_body  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=None)
    args = parser.parse_args()
    with ScriptedEndpoint(lambda stored: Behaviour(delay=args.delay)) as end:
        exporter = HTTPPayloadMetricExporter(
            url=end.url, payload_generator=request_id_body, max_connections=args.max_connections
        )
        made = 0
        tick = 0.01
        cpu = time.process_time()
        start = time.monotonic()
        for step in range(int(args.seconds / tick)):
            due = int(args.rate * (step + 1) * tick) - made
            if due:
                export(exporter, [f"r{made + n}" for n in range(due)])
                made += due
            pause = start + (step + 1) * tick - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        during = len(end.stored)
        ended = time.monotonic()
        while len(end.stored) < made and time.monotonic() - ended < 120:
            time.sleep(0.01)
        drained = time.monotonic() - ended
        cpu = time.process_time() - cpu
        counts = end.counts()
        exporter.shutdown(timeout_millis=1_000)
    print(
        f"delay {args.delay * 1000:.0f} ms, {args.rate} req/s for {args.seconds:g} s, "
        f"max_connections {exporter.max_connections}: delivered during the load "
        f"{during} of {made} ({during / made:.0%}); the rest in {drained:.2f} s; "
        f"stored twice: {sum(1 for count in counts.values() if count > 1)}; "
        f"connections opened: {end.connections}; "
        f"process CPU (writer and endpoint) {cpu / made * 1e6:.0f} us/request"
    )


if __name__ == "__main__":
    main()
