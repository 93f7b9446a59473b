"""Issue 23's poison rows: one item that a backend refuses for good, every time,
is dropped alone and counted; everything else arrives, in this process and
in the next one on the same spool directory.

The backends: a user's chest (``FlaskChest`` subclass) whose ``write()``
raises for one request ID, a real OTLP receiver (``tests/otlp_receiver.py``)
that refuses any export holding a point of that request, and real processes
killed with SIGKILL (as in ``tests/test_spool.py``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GRPCMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HTTPMetricExporter,
)
from opentelemetry.sdk.metrics.export import MetricExporter

from flask_chest_otel import FlaskChest, FlaskChestOTel
from flask_chest_otel.http_payload import ContextTuple
from flask_chest_otel.user_chests import WriterChest

from .conftest import app_recording, wait_for
from .otlp_receiver import OTLPReceiver, otlp_http_receiver, otlp_receiver

REPO = Path(__file__).resolve().parent.parent
#: Fast retries: the poison must be found without waiting on backoff.
FAST = {"retry_initial": 0.01, "retry_max": 0.05}
POISON = "req-100"
REQUESTS = [(f"req-{n}", {"transaction": 1}) for n in range(201)]
OTHERS = [request_id for request_id, _ in REQUESTS if request_id != POISON]


class PoisonedBackend(FlaskChest):
    """A user's chest whose backend refuses one request, always."""

    def __init__(self, poison: str) -> None:
        super().__init__(name="poisoned")
        self.poison = poison
        self.written: list[str] = []
        self.lock = threading.Lock()

    def write(self, context_tuple_list: list[ContextTuple]) -> None:
        request_id = context_tuple_list[0].request_id
        if request_id == self.poison:
            raise ValueError(f"the backend refuses {request_id}")
        with self.lock:
            self.written.append(request_id)


def test_a_request_a_user_chest_always_refuses_is_dropped_alone_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """write() raises for req-100 every time: it is dropped and counted
    (dropped_rejected 1) with one ERROR line naming it; the 200 other
    requests, before and after it, are written once each."""
    backend = PoisonedBackend(POISON)
    chest = WriterChest(backend, export_interval=3600, **FAST)
    try:
        with caplog.at_level(logging.WARNING):
            app_recording(chest, REQUESTS)
            chest.force_flush(20_000)
            wait_for(lambda: len(backend.written) >= 200, timeout=5)
        with backend.lock:
            written = list(backend.written)
        assert sorted(written) == sorted(OTHERS), f"{len(written)} of 200 written"
        assert chest.exporter.stats.dropped_rejected == 1
        assert chest.exporter.stats.exported == 200
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and POISON in errors[0], errors
    finally:
        chest.shutdown(timeout_millis=2_000)


def grpc_exporter(receiver: OTLPReceiver) -> MetricExporter:
    return GRPCMetricExporter(endpoint=receiver.endpoint, insecure=True)


def http_exporter(receiver: OTLPReceiver) -> MetricExporter:
    return HTTPMetricExporter(endpoint=receiver.endpoint)


@pytest.mark.parametrize(
    ("receiver_of", "exporter_of"),
    [(otlp_receiver, grpc_exporter), (otlp_http_receiver, http_exporter)],
    ids=["grpc-invalid-argument", "http-400"],
)
def test_a_point_an_otlp_receiver_refuses_is_dropped_alone(
    receiver_of: Callable[..., AbstractContextManager[OTLPReceiver]],
    exporter_of: Callable[[OTLPReceiver], MetricExporter],
) -> None:
    """The receiver refuses any export holding req-100's point (gRPC
    INVALID_ARGUMENT, HTTP 400; the OTLP exporter returns FAILURE): that
    point is dropped and counted, the 200 others arrive once each."""
    with receiver_of(refuse_point=lambda attributes: attributes.get("request_id") == POISON) as (
        receiver
    ):
        chest = FlaskChestOTel(exporter_of(receiver), export_interval=3600, **FAST)
        try:
            app_recording(chest, REQUESTS)
            chest.force_flush(20_000)
            arrived = sorted(
                point.attributes["request_id"]
                for point in receiver.points()
                if point.metric == "transaction"
            )
            stats = chest.exporter.stats
        finally:
            chest.shutdown(timeout_millis=2_000)
    assert arrived == sorted(OTHERS), f"{len(arrived)} of 200 arrived"
    assert receiver.refused >= 1
    assert (stats.exported, stats.dropped_rejected) == (200, 1)


# -- a poison item in the spool of a killed process -------------------------------------

# argv: role ("outage" or "heir"), spool_dir, the file the backend appends to.
SPOOLED_PROCESS = textwrap.dedent(
    """
    import json, sys, time
    from flask_chest_otel import FlaskChest
    from flask_chest_otel.user_chests import WriterChest
    from tests.conftest import app_recording

    role, spool_dir, written = sys.argv[1:4]

    class Backend(FlaskChest):
        def write(self, context_tuple_list):
            request_id = context_tuple_list[0].request_id
            if role == "outage":
                raise ConnectionError("backend down")
            if request_id == "spool-20":
                raise ValueError("the backend refuses spool-20")
            with open(written, "a") as out:
                out.write(request_id + "\\n")

    chest = WriterChest(
        Backend(name="spooled-backend"), spool_dir=spool_dir, export_interval=0.2,
        retry_initial=0.01, retry_max=0.05,
    )
    if role == "outage":
        app_recording(chest, [(f"spool-{n}", {"transaction": 1}) for n in range(50)])
        chest.force_flush(300)
        print("served", flush=True)
        time.sleep(3600)
    else:
        stats = chest.exporter.stats
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            stats.buffered == 0 and stats.exported + stats.dropped_rejected >= 50
        ):
            time.sleep(0.05)
        print(json.dumps({"exported": stats.exported, "dropped_rejected": stats.dropped_rejected,
                          "buffered": stats.buffered}), flush=True)
        chest.shutdown(timeout_millis=1_000)
    """
)


def spooled_process(role: str, spool_dir: Path, written: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SPOOLED_PROCESS, role, str(spool_dir), str(written)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_poison_item_in_a_killed_processs_spool_is_dropped_once_by_the_next_process(
    tmp_path: Path,
) -> None:
    """A process buffers 50 requests during an outage, spool-20 among them, and
    is killed (SIGKILL). A new process on the same spool_dir, backend up but
    refusing spool-20 for good: the 49 others are written once each,
    spool-20 dropped once (dropped_rejected 1), and nothing is left in the
    spool for a third process."""
    spool_dir, written = tmp_path / "spool", tmp_path / "written.txt"
    killed = spooled_process("outage", spool_dir, written)
    assert killed.stdout is not None
    line = killed.stdout.readline()
    assert line == "served\n", killed.communicate(timeout=30)[1]
    assert wait_for(lambda: any(p.stat().st_size > 0 for p in spool_dir.glob("*.spool")))
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert not written.exists(), "the outage wrote nothing"

    heir = spooled_process("heir", spool_dir, written)
    out, errors = heir.communicate(timeout=60)
    assert heir.returncode == 0, errors[-3000:]
    stats: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    got = written.read_text().split() if written.exists() else []
    others = [f"spool-{n}" for n in range(50) if n != 20]
    assert sorted(got) == sorted(others), f"{len(got)} of 49 written; {stats}"
    assert stats == {"exported": 49, "dropped_rejected": 1, "buffered": 0}
    assert sorted(spool_dir.glob("*.spool")) == [], "nothing is left for a third process"
