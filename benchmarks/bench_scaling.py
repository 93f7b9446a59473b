"""How the decorator's per-request cost grows with tracked variables (1, 5,
20; 2 chests) and with chests (1, 2, 4; 2 variables), next to the SDK floor
recording the same variables as SDK gauges (one reader per chest).

What is timed is the request path: the decorated view called ``batch`` times
inside one ``app.test_request_context`` (a POST), minus the same undecorated
view; each variant's export (chest flush, reader collection) runs after its
batch, untimed (export cost is measured in the export rows of the table). A
few microseconds are invisible under the test client's noise, hence this
harness. Chests here are InfluxDB chests on VictoriaMetrics: recording does
not depend on the kind of chest, and they drain fast. Their export interval
is an hour so that no collection falls inside a timed batch.

    python benchmarks/bench_scaling.py [--influx-url URL] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from _common import Variant, build_variant, paired_overhead

VARS = (1, 5, 20)
CHESTS = (1, 2, 4)
KINDS = ("flask_chest", "sdk_floor")


def _variant(kind: str, influx_url: str, n_vars: int, n_chests: int) -> Variant:
    return build_variant(kind, influx_url, n_vars=n_vars, n_chests=n_chests, influx_only=True,
                         export_interval=3600)  # fmt: skip


def _timed(variant: Variant, batch: int) -> Callable[[], float]:
    view = variant.view

    def run() -> float:
        with variant.app.test_request_context("/", method="POST"):
            started = time.perf_counter()
            for _ in range(batch):
                view()
            elapsed = time.perf_counter() - started
        variant.drain()
        return elapsed / batch

    return run


def run(influx_url: str, rounds: int, batch: int) -> dict[str, Any]:
    cases: dict[str, tuple[str, Variant]] = {}  # name -> (its baseline, variant)
    for n in sorted({*VARS, 2}):
        cases[f"plain/v{n}"] = ("", build_variant("plain", n_vars=n))
    for kind in KINDS:
        for n in VARS:
            cases[f"{kind}/v{n}/c2"] = (f"plain/v{n}", _variant(kind, influx_url, n, 2))
        for c in CHESTS:
            if f"{kind}/v2/c{c}" not in cases:
                cases[f"{kind}/v2/c{c}"] = ("plain/v2", _variant(kind, influx_url, 2, c))
    runs = {name: _timed(variant, batch) for name, (_, variant) in cases.items()}
    for run_one in runs.values():
        run_one()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    rng = random.Random(3)
    names = list(runs)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            times[name].append(runs[name]())

    def overhead(name: str) -> float:
        return paired_overhead(times[name], times[cases[name][0]]) * 1e6

    result: dict[str, Any] = {"rounds": rounds, "batch": batch, "vars": {}, "chests": {}}
    for n in VARS:
        result["vars"][n] = {kind: overhead(f"{kind}/v{n}/c2") for kind in KINDS}
    for c in CHESTS:
        result["chests"][c] = {kind: overhead(f"{kind}/v2/c{c}") for kind in KINDS}
    result["plain_us"] = {name: statistics.median(t) * 1e6 for name, t in times.items()
                          if name.startswith("plain")}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--influx-url", default="")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, batch = (4, 200) if args.quick else (15, 300)
    if args.influx_url:
        print(json.dumps(run(args.influx_url, rounds, batch)))
        return
    from _common import victoria_metrics

    with victoria_metrics() as url:
        print(json.dumps(run(url, rounds, batch)))


if __name__ == "__main__":
    main()
