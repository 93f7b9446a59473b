"""Measures the two spool formats considered for ``spool_dir``: the
append-only file of flask_chest_otel._spool, and SQLite in WAL mode (one
transaction per hand-over, ``synchronous=NORMAL``). Each writes batches of
encoded items (as the collector hands them every ~100 ms), then removes them
as a backend would acknowledge them. Prints items per second for both.

``--fsync never,interval,always``: the append-only file under each
``spool_fsync`` policy instead (writes only; "interval" runs the upkeep after
each batch, as the exporter's thread would), with the time each ``fsync``
took and the CPU per item.

    .venv/bin/python scripts/spool_throughput.py [--items 200000] [--batch 1000]
    .venv/bin/python scripts/spool_throughput.py --fsync never,interval,always --batch 100
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from flask_chest_otel._spool import Spool
from flask_chest_otel._spool_codecs import dumps_line, loads_line

# One InfluxDB line of the sample app, about 200 bytes.
LINE = (
    b"transaction,http.request.method=GET,http.route=/,request_id=8f0c2a3e-4f1b-4d2b-9a7e-"
    b"1c5b2d9e0f11,service.name=app value=1i,trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\" "
    b"1700000000123456789"
)


def append_file(directory: Path, items: int, batch: int) -> tuple[float, float]:
    spool = Spool(
        directory, "bench", logging.getLogger("bench"), dumps_line, loads_line,
        identity=("influxdb", "bench", "http://localhost:8086 bucket 'b'"),
        max_bytes=1 << 30,
    )  # fmt: skip
    payload = [LINE] * batch
    started = time.perf_counter()
    for _ in range(items // batch):
        spool.append(payload)
    written = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(items // batch):
        spool.ack(batch)
    acked = time.perf_counter() - started
    spool.close()
    return items / written, items / acked


def append_file_fsync(
    directory: Path, items: int, batch: int, policy: str
) -> tuple[float, float, list[float]]:
    """(items/s written, CPU microseconds per item, seconds of each fsync)."""
    syncs: list[float] = []

    def sync(fd: int) -> None:
        started = time.perf_counter()
        os.fsync(fd)
        syncs.append(time.perf_counter() - started)

    spool = Spool(
        directory, "bench", logging.getLogger("bench"), dumps_line, loads_line,
        identity=("influxdb", "bench", "http://localhost:8086 bucket 'b'"),
        max_bytes=1 << 30, fsync=policy, sync=sync,
    )  # fmt: skip
    payload = [LINE] * batch
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(items // batch):
        spool.append(payload)
        if policy == "interval":
            spool.maintain()
    written, cpu = time.perf_counter() - started, time.process_time() - cpu
    spool.close()
    return items / written, cpu / items * 1e6, syncs


def sqlite_wal(directory: Path, items: int, batch: int) -> tuple[float, float]:
    connection = sqlite3.connect(directory / "bench.sqlite3", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY, item BLOB)")
    rows = [(LINE,)] * batch
    started = time.perf_counter()
    for _ in range(items // batch):
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO spool (item) VALUES (?)", rows)
        connection.execute("COMMIT")
    written = time.perf_counter() - started
    started = time.perf_counter()
    first = 1
    for _ in range(items // batch):
        connection.execute("DELETE FROM spool WHERE id < ?", (first + batch,))
        first += batch
    acked = time.perf_counter() - started
    connection.close()
    return items / written, items / acked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--fsync", help="comma-separated spool_fsync policies to compare")
    args = parser.parse_args()
    if args.fsync:
        for policy in args.fsync.split(","):
            with tempfile.TemporaryDirectory() as scratch:
                rate, cpu, syncs = append_file_fsync(Path(scratch), args.items, args.batch, policy)
            timing = ""
            if syncs:
                ordered = sorted(syncs)
                timing = (
                    f", {len(syncs)} fsync: median {ordered[len(ordered) // 2] * 1e3:.2f} ms, "
                    f"max {ordered[-1] * 1e3:.2f} ms"
                )
            print(
                f"fsync={policy:8} batch {args.batch:>5}: write {rate:>10,.0f} items/s, "
                f"CPU {cpu:5.1f} us/item{timing}"
            )
        return
    for name, measure in (("append-only file", append_file), ("SQLite WAL", sqlite_wal)):
        with tempfile.TemporaryDirectory() as directory:
            write, ack = measure(Path(directory), args.items, args.batch)
        print(
            f"{name:17} batch {args.batch:>5}: write {write:>12,.0f} items/s, "
            f"remove {ack:>12,.0f} items/s"
        )


if __name__ == "__main__":
    main()
