"""What narrowing a refused batch costs: the writes the InfluxDB exporter makes
to deliver one batch of n lines of which k are refused, against each way a
server refuses them (the scripted servers of ``tests/refusing_influx.py``,
imported from the test suite as ``_common`` imports ``tests.servers``), with
what the server stored and what the exporter counted.

Cases: 1 refused line in 10,000 and 40 in 2,000 for each mode; all refused
(every line of 2,000 refused, and a refusal about the request itself). The
column ``k*log2(n/k)+k`` is issue 23's bound; a bare 400 names nothing, so no
method needs fewer than log2(C(n, k)) writes (279 for 40 in 2,000): the
column ``log2C(n,k)+k`` is Hwang's bound for generalized binary splitting,
which the drain uses (``flask_chest_otel/_delivery/_drain.py``), before the
first write and the probes (up to 6 more).

Run alone: ``python benchmarks/bench_narrowing.py`` (a minute or two; no
external server). Counts only, no timing: the numbers do not depend on the
host.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask_chest_otel.influxdb import InfluxDBMetricExporter  # noqa: E402
from tests.refusing_influx import (  # noqa: E402
    LINE_MODES,
    Mode,
    RefusingInflux,
    probe_data,
    spread,
)

#: (mode, n, k): k refused lines among n in one batch.
CASES: list[tuple[Mode, int, int]] = [
    *((mode, 10_000, 1) for mode in LINE_MODES),
    *((mode, 2_000, 40) for mode in (*LINE_MODES, "v2_conflict")),
    ("bare400", 2_000, 10),
    ("bare400", 1_000, 100),
    ("bare400", 2_000, 2_000),
    ("v2_unable", 2_000, 2_000),
    ("request_level", 2_000, 2_000),
]
COLUMNS = (
    "mode", "n", "k", "writes", "k*log2(n/k)+k", "log2C(n,k)+k", "stored", "exported", "dropped"
)
#: Seconds one case may take: today's code may need thousands of writes.
CASE_TIMEOUT = 300


def bound(n: int, k: int) -> float:
    return k * math.log2(n / k) + k


def hwang(n: int, k: int) -> float:
    return math.log2(math.comb(n, k)) + k


def run_case(mode: Mode, n: int, k: int) -> tuple[object, ...]:
    """One batch through a fresh exporter and server; the table's row."""
    quiet = logging.getLogger("bench_narrowing.exporter")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    bad = spread(n, k) if mode != "request_level" else []
    if mode == "v2_conflict":  # a float with a fraction where integers are stored
        data = probe_data(n, bad, good_value=7, bad_value=0.5)
    else:
        data = probe_data(n, bad)
    with RefusingInflux(mode) as server:
        exporter = InfluxDBMetricExporter(
            url=server.url, token="bench", org="o", bucket="b", logger=quiet,
            retry_initial=0.01, retry_max=0.05, max_batch_items=10_000,
        )  # fmt: skip
        try:
            exporter.export(data)
            exporter.force_flush(CASE_TIMEOUT * 1000)
            stats = exporter.stats
            row = (
                mode, n, k, server.writes, f"{bound(n, k):.0f}", f"{hwang(n, k):.0f}",
                len(server.points), stats.exported, stats.dropped,
            )  # fmt: skip
        finally:
            exporter.shutdown(timeout_millis=1_000)
    return row


def main() -> None:
    rows = [COLUMNS]
    for mode, n, k in CASES:
        rows.append(tuple(str(cell) for cell in run_case(mode, n, k)))
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
    for index, row in enumerate(rows):
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


if __name__ == "__main__":
    main()
