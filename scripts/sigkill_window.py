"""Measures what SIGKILL loses with a spool: a process serves a burst of
requests with a spooling InfluxDB chest whose backend is down, prints
"served", and is killed with SIGKILL ``delay`` seconds later; the items in
its spool file are counted. Prints, for each delay, the requests lost in the
worst of ``--runs`` runs.

    .venv/bin/python scripts/sigkill_window.py [--burst 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from flask_chest_otel._spool import read_items

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


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


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
        process.wait()
        spooled = sum(
            len(read_items(path.read_bytes())[0]) for path in Path(spool_dir).glob("*.spool")
        )
    return burst - spooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for delay in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5):
        worst = max(lost_after(delay, args.burst) for _ in range(args.runs))
        print(f"SIGKILL {delay:.2f} s after the last answer: at most {worst} of {args.burst} lost")


if __name__ == "__main__":
    main()
