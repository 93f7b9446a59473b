"""Pre-fork servers: the sample app under a real `gunicorn -w 2`, with and
without --preload, stopped with SIGTERM."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import read_rows, wait_for
from .test_faults import RestartableVM

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
        wait_until_serving(server, url)
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


def wait_until_serving(server: subprocess.Popen[str], url: str) -> None:
    """Polls ``url``/health until gunicorn answers (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url + "health", timeout=5)
            return
        except requests.RequestException:
            assert time.monotonic() < deadline, "gunicorn did not start"
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.1)


def spooling_influx_app() -> Any:
    """The sample app with a spooling FlaskChestInfluxDB chest (gunicorn app
    factory); URL, spool directory and suite tag from the environment."""
    from flask_chest_otel import FlaskChestInfluxDB

    from .conftest import sample_app

    chest = FlaskChestInfluxDB(
        name="gunicorn-spool", url=os.environ["SPOOL_VM_URL"], token="t", org="o", bucket="b",
        custom_tags={"suite": "gunicorn-spool"}, export_interval=0.5,
        spool_dir=os.environ["SPOOL_DIR"], retry_initial=0.05, retry_max=0.2,
    )  # fmt: skip
    counter = itertools.count()
    return sample_app([chest], request_id_generator=lambda: f"{os.getpid()}-{next(counter)}")


def run_gunicorn(env: dict[str, str], requests_to_serve: int, wait: Any = None) -> str:
    """Starts `gunicorn -w 2` on the spooling app, serves the requests, waits
    for ``wait()`` if given, stops it with SIGTERM; returns its stderr."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
         "--graceful-timeout", "20", "tests.test_gunicorn:spooling_influx_app()"],
        cwd=REPO,
        env={**os.environ, "FLASK_CHEST_EXIT_TIMEOUT": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(server, url)
        for _ in range(requests_to_serve):
            assert requests.get(url, timeout=30).status_code == 200
        if wait is not None:
            assert wait_for(wait, timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=60)
    assert server.returncode == 0, errors
    return errors


def test_a_deploy_during_an_outage_loses_nothing_with_a_spool(tmp_path: Path) -> None:
    """gunicorn -w 2 with a spool, backend down, 100 requests, SIGTERM: the
    workers keep what they could not send on disk. The next deployment, on
    the same spool_dir with the backend up, delivers all 100 once each."""
    vm = RestartableVM(tmp_path / "vm")
    spool_dir = tmp_path / "spool"
    env = {"SPOOL_VM_URL": vm.url, "SPOOL_DIR": str(spool_dir)}
    try:
        errors = run_gunicorn(env, 100)
        assert "kept in the spool" in errors
        assert list(spool_dir.glob("*.spool"))
        vm.start()
        run_gunicorn(env, 0, wait=lambda: sum(vm.request_ids("gunicorn-spool").values()) >= 100)
        got = vm.request_ids("gunicorn-spool")
    finally:
        vm.stop()
    assert len(got) == 100 and set(got.values()) == {1}
    assert list(spool_dir.glob("*.spool")) == []
