"""Pre-fork servers: the sample app under a real `gunicorn -w 2`, with and
without --preload, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import read_rows

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_each_worker_exports_its_own_requests_exactly_once(tmp_path: Path, preload: bool) -> None:
    """200 requests over two workers: 200 request IDs stored once each, none
    exported twice from the parent's state, nothing lost at SIGTERM."""
    db = tmp_path / "gunicorn.sqlite3"
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
        "--graceful-timeout", "20", "tests.apps.gunicorn_app:app",
    ]
    if preload:
        command.insert(3, "--preload")
    server = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "FLASK_CHEST_TEST_DB": str(db)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "health", timeout=5)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "gunicorn did not start"
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.1)
        served = 0
        for number in range(200):
            # A new connection per request lets both workers take some.
            response = requests.request("POST" if number % 2 else "GET", url, timeout=30)
            assert response.status_code == 200
            served += 1
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=60)
    assert server.returncode == 0, errors
    rows = read_rows(db, "WHERE name = 'transaction'")
    request_ids = [row["request_id"] for row in rows]
    assert len(request_ids) == served == 200
    assert len(set(request_ids)) == 200
    workers = {request_id.split("-")[0] for request_id in request_ids}
    assert 1 <= len(workers) <= 2
