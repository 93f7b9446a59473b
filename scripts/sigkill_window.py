"""Measures what SIGKILL loses with a spool: a process with a spooling
InfluxDB chest whose backend is down serves requests and is killed with
SIGKILL; the requests in its spool files are counted.

Burst mode (default): a burst of ``--burst`` requests, then "served", then
SIGKILL ``delay`` seconds later; prints, for each delay, the requests lost
in the worst of ``--runs`` runs.

Rate mode (``--rates 100,1000,4000``): requests at a steady rate, SIGKILL
``--kill-after`` seconds into the traffic, while it goes on. The process
notes each answer's time in a shared memory-mapped file, so after the kill
the age of every lost answered request is known: prints, per rate, the
requests lost and the oldest of them (the loss window), worst of ``--runs``.

    .venv/bin/python scripts/sigkill_window.py [--burst 1000] [--runs 3]
    .venv/bin/python scripts/sigkill_window.py --rates 100,1000,4000 [--runs 3] [--fsync always]
"""

from __future__ import annotations

import argparse
import array
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from flask_chest_otel._spool import spooled_payloads

REPO = Path(__file__).resolve().parent.parent

SERVE = textwrap.dedent(
    """
    import sys, time
    from tests.conftest import sample_app
    from flask_chest_otel import FlaskChestInfluxDB

    chest = FlaskChestInfluxDB(name="window", url=sys.argv[1], token="t", org="o", bucket="b",
                               spool_dir=sys.argv[2], retry_initial=5, retry_max=5)
    client = sample_app([chest]).test_client()
    for _ in range(int(sys.argv[3])):
        client.get("/")
    print("served", flush=True)
    time.sleep(3600)
    """
)

# argv: URL, spool_dir, rate, seconds, answers file (8 bytes per request), spool_fsync.
SERVE_AT_RATE = textwrap.dedent(
    """
    import itertools, mmap, struct, sys, time
    from tests.conftest import sample_app
    from flask_chest_otel import FlaskChestInfluxDB

    chest = FlaskChestInfluxDB(name="window", url=sys.argv[1], token="t", org="o", bucket="b",
                               spool_dir=sys.argv[2], retry_initial=5, retry_max=5,
                               spool_fsync=sys.argv[6])
    rate, seconds = float(sys.argv[3]), float(sys.argv[4])
    total = int(rate * seconds)
    with open(sys.argv[5], "r+b") as file:
        answers = mmap.mmap(file.fileno(), 8 * total)
    numbers = itertools.count()
    client = sample_app([chest], request_id_generator=lambda: str(next(numbers))).test_client()
    client.get("/")  # warm up: request 0
    pack = struct.Struct("<d").pack_into
    print("start", flush=True)
    start = time.monotonic()
    for n in range(1, total):
        due = start + n / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        client.get("/")
        pack(answers, 8 * n, time.monotonic())
    time.sleep(3600)
    """
)


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def spooled_request_ids(spool_dir: str) -> set[str]:
    ids = set()
    for line in spooled_payloads(spool_dir):
        if line.startswith(b"transaction,"):
            for tag in line.split(b" ", 1)[0].split(b","):
                if tag.startswith(b"request_id="):
                    ids.add(tag[len(b"request_id=") :].decode())
    return ids


def lost_after(delay: float, burst: int) -> int:
    with tempfile.TemporaryDirectory() as spool_dir:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, dead_url(), spool_dir, str(burst)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert process.stdout.readline() == "served\n"
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        spooled = len(spooled_payloads(spool_dir))
    return burst - spooled


def window_at(
    rate: float, kill_after: float, fsync: str = "never"
) -> tuple[int, int, float, float]:
    """(answered, lost, age of the oldest lost answer in s, rate achieved)."""
    seconds = kill_after + 5
    total = int(rate * seconds)
    with tempfile.TemporaryDirectory() as scratch:
        spool_dir = os.path.join(scratch, "spool")
        answers_path = os.path.join(scratch, "answers")
        with open(answers_path, "wb") as file:
            file.truncate(8 * total)
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE_AT_RATE, dead_url(), spool_dir, str(rate),
             str(seconds), answers_path, fsync],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        assert process.stdout.readline() == "start\n"
        time.sleep(kill_after)
        killed_at = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        answered_at = array.array("d")
        with open(answers_path, "rb") as file:
            answered_at.frombytes(file.read())
        spooled = spooled_request_ids(spool_dir)
    answered = [(n, at) for n, at in enumerate(answered_at) if at and at < killed_at]
    lost = [at for n, at in answered if str(n) not in spooled]
    first, last = answered[0][1], answered[-1][1]
    achieved = (len(answered) - 1) / (last - first) if last > first else 0.0
    return len(answered), len(lost), (killed_at - min(lost)) if lost else 0.0, achieved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rates", help="comma-separated requests per second, e.g. 100,1000,4000")
    parser.add_argument("--kill-after", type=float, default=2.0, help="seconds into the traffic")
    parser.add_argument("--fsync", default="never", help="the chest's spool_fsync (rate mode)")
    args = parser.parse_args()
    if args.rates:
        for rate in (float(text) for text in args.rates.split(",")):
            runs = [window_at(rate, args.kill_after, args.fsync) for _ in range(args.runs)]
            worst = max(runs, key=lambda run: run[2])
            print(
                f"{rate:>6.0f} req/s (achieved {min(run[3] for run in runs):,.0f}-"
                f"{max(run[3] for run in runs):,.0f}): lost at most {max(r[1] for r in runs)} "
                f"of ~{worst[0]} answered; oldest lost answer {worst[2]:.3f} s before the kill "
                f"(runs: {', '.join(f'{run[2]:.3f}' for run in runs)})"
            )
        return
    for delay in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5):
        worst = max(lost_after(delay, args.burst) for _ in range(args.runs))
        print(f"SIGKILL {delay:.2f} s after the last answer: at most {worst} of {args.burst} lost")


if __name__ == "__main__":
    main()
