"""The per-request writer with ``pipeline``: several POSTs written on the
kept-alive connection before their answers are read, against the test
suite's real threaded HTTP server (which answers pipelined requests in
order, as HTTP/1.1 requires; ``test_http_response.py`` has the raw scripted
one). What must hold: each
request's payload arrives once, whatever the server answers to its
neighbours in the pipeline."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from flask_chest_otel.http_payload import FlaskChestCustomWriter, HTTPPayloadMetricExporter

from .conftest import wait_for
from .http_sink import HTTPSink, Reply
from .test_gunicorn import REPO, free_port, wait_until_serving
from .test_http_payload import cust_payload_generator, deliver, recorded
from .test_http_response import sender


@pytest.fixture
def make_exporter(
    http_exporters: Callable[..., HTTPPayloadMetricExporter],
) -> Callable[..., HTTPPayloadMetricExporter]:
    """The sample generator's writer, 8 POSTs pipelined (options override)."""
    return functools.partial(
        http_exporters, payload_generator=cust_payload_generator, name="SignalFX", pipeline=8
    )


def requests_(count: int) -> Any:
    return recorded(*[(f"r{number}", [("transaction", number)]) for number in range(count)])


def posted_ids(sink: HTTPSink) -> list[str]:
    return [post.json()["0"][2] for post in sink.posts()]


def test_pipelined_posts_arrive_once_each_in_order_on_one_connection(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter()
    assert deliver(exporter, requests_(30))
    assert posted_ids(sink) == [f"r{number}" for number in range(30)]
    assert len({post.client for post in sink.posts()}) == 1
    assert sink.probes == 2 and exporter._pipelining is True
    assert exporter.stats.exported == 30 and exporter.stats.dropped == 0


def test_a_503_inside_a_pipeline_resends_only_that_request(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """The POSTs behind the refused one were taken by the server: the retry
    must not send them again."""
    sink.script(Reply(200), Reply(200), Reply(503, b"busy", {"Retry-After": "0"}))
    exporter = make_exporter()
    assert deliver(exporter, requests_(8))
    assert posted_ids(sink) == [f"r{number}" for number in range(8)] + ["r2"]
    assert exporter.stats.exported == 8 and exporter.stats.dropped == 0


def test_a_429_inside_a_pipeline_waits_its_retry_after_and_sends_each_once(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """The POSTs behind a throttled one were taken: they arrive ahead of its
    retry, which waits the server's Retry-After (1 s, not the 0.01 s backoff)."""
    sink.script(Reply(429, b"slow down", {"Retry-After": "1"}))
    exporter = make_exporter(retry_initial=0.01, retry_max=3.0)
    assert deliver(exporter, requests_(6))
    posts = sink.posts()
    assert posted_ids(sink) == ["r0", "r1", "r2", "r3", "r4", "r5", "r0"]
    assert posts[-1].received - posts[0].received >= 0.95
    assert exporter.stats.exported == 6 and exporter.stats.dropped == 0


def test_a_503_then_a_200_behind_it_twice_still_sends_each_once(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """Two failures in a row, each with POSTs taken behind it."""
    sink.script(Reply(503), Reply(200), Reply(503), Reply(200))
    exporter = make_exporter(pipeline=4)
    assert deliver(exporter, requests_(4))
    # r0 and r2 are refused, r1 and r3 taken; the retry sends r0 and r2 only.
    assert posted_ids(sink) == ["r0", "r1", "r2", "r3", "r0", "r2"]
    assert exporter.stats.exported == 4


def test_a_refused_request_inside_a_pipeline_is_dropped_alone(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink.script(Reply(200), Reply(200), Reply(200), Reply(400, b"bad r3"))
    exporter = make_exporter()
    with caplog.at_level(logging.ERROR):
        assert not deliver(exporter, requests_(8))  # a refused item fails the flush
    assert posted_ids(sink) == [f"r{number}" for number in range(8)]
    assert exporter.stats.exported == 7 and exporter.stats.dropped_rejected == 1
    [message] = [record.getMessage() for record in caplog.records]
    assert "HTTP 400" in message and "request r3" in message and "bad r3" in message, message


def test_a_request_refused_behind_a_503_is_dropped_once_and_not_sent_again(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 400 behind a 503 in one pipeline: it is logged and done with, like
    the 200s behind it; the retry sends the 503's request alone, and each
    request is counted once, only the refused one as dropped."""
    sink.script(Reply(503, headers={"Retry-After": "0"}), Reply(400, b"bad r1"))
    exporter = make_exporter()
    with caplog.at_level(logging.ERROR):
        assert not deliver(exporter, requests_(4))  # a refused item fails the flush
    assert posted_ids(sink) == ["r0", "r1", "r2", "r3", "r0"]
    stats = exporter.stats
    assert (stats.exported, stats.dropped_rejected, stats.dropped, stats.retried) == (3, 1, 1, 1)
    [message] = [record.getMessage() for record in caplog.records]
    assert "HTTP 400" in message and "request r1" in message, message


def test_a_refused_request_the_buffer_drops_before_the_retry_is_counted_once(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """r0 is refused, r1 gets a 503, r2 and r3 are taken; while r1's retry
    waits, 4 newer requests overflow the 4-item buffer, which drops r1, the
    only one left unsettled. Each request is counted once, as what became of
    it: r0 refused, r1 dropped from the buffer, r2, r3 and the 4 newer
    exported."""
    sink.script(Reply(400, b"bad r0"), Reply(503, headers={"Retry-After": "2"}))
    exporter = make_exporter(max_buffer_items=4, retry_max=3.0)
    exporter.export(requests_(4))
    wait_for(lambda: len(sink.posts()) == 4, timeout=5)
    newer = recorded(*[(f"n{number}", [("transaction", number)]) for number in range(4)])
    exporter.export(newer)
    assert exporter.force_flush(timeout_millis=5_000)
    assert posted_ids(sink)[4:] == ["n0", "n1", "n2", "n3"]
    stats = exporter.stats
    assert (stats.exported, stats.dropped_buffer_full, stats.dropped_rejected) == (6, 1, 1)
    assert stats.exported + stats.dropped == 8 and stats.buffered == 0


def test_a_server_closing_after_an_answer_gets_the_rest_on_a_new_connection(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """``Connection: close`` on the second answer: the server reads no
    further, so the POSTs written behind it are sent again, once."""
    sink.script(Reply(200), Reply(200, headers={"Connection": "close"}))
    exporter = make_exporter()
    assert deliver(exporter, requests_(6))
    assert posted_ids(sink) == [f"r{number}" for number in range(6)]
    assert len({post.client for post in sink.posts()}) == 2
    assert exporter.stats.retried == 0


def test_through_a_users_session_pipeline_sends_one_after_the_other(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """requests cannot pipeline: with a session the POSTs go one by one, in
    order, a refused one retried before the next; no probe is sent."""
    session = requests.Session()
    sink.script(Reply(200), Reply(503, headers={"Retry-After": "0"}))
    exporter = make_exporter(session=session)
    assert deliver(exporter, requests_(5))
    assert posted_ids(sink) == ["r0", "r1", "r1", "r2", "r3", "r4"]
    assert sink.probes == 0
    session.close()


@pytest.mark.parametrize("pipeline", [0, 65, True, 2.0, "4"])
def test_pipeline_must_be_an_int_from_1_to_64(pipeline: Any) -> None:
    with pytest.raises(ValueError, match="pipeline must be an int from 1 to 64"):
        FlaskChestCustomWriter(
            "writer", "http://127.0.0.1:9/x", payload_generator=cust_payload_generator,
            pipeline=pipeline,
        )  # fmt: skip


def ingest_app() -> Any:
    """A gunicorn app factory: an endpoint writing each POSTed body as a
    line to the file $INGEST_LOG."""
    from flask import Flask, request

    app = Flask("ingest")

    @app.post("/ingest")
    def ingest() -> tuple[str, int]:
        with open(os.environ["INGEST_LOG"], "ab") as log:
            log.write(request.get_data() + b"\n")
        return "", 204

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


@pytest.mark.parametrize(
    ("worker_class", "pipelined"), [("sync", False), ("gthread", True)], ids=["sync", "gthread"]
)
def test_against_gunicorn_the_probe_tells_which_workers_take_pipelined_posts(
    tmp_path: Path, worker_class: str, pipelined: bool
) -> None:
    """A real gunicorn endpoint: sync workers close the connection after
    each answer, so the probe says no and the POSTs go one at a time; gthread
    workers answer pipelined requests in order, so they get them pipelined.
    Either way each request's payload arrives once."""
    log = tmp_path / "ingest.log"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "1", "-k", worker_class, "-b",
         f"127.0.0.1:{port}", "tests.test_http_pipeline:ingest_app()"],
        cwd=REPO, env={**os.environ, "INGEST_LOG": str(log)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    exporter = HTTPPayloadMetricExporter(
        url=f"http://127.0.0.1:{port}/ingest", payload_generator=cust_payload_generator,
        name="SignalFX",
    )  # fmt: skip
    try:
        wait_until_serving(server, f"http://127.0.0.1:{port}/")
        assert deliver(exporter, requests_(40))
        assert exporter._pipelining is pipelined
        ids = [json.loads(line)["0"][2] for line in log.read_bytes().splitlines()]
        assert sorted(ids) == sorted(f"r{number}" for number in range(40))
    finally:
        exporter.shutdown(1_000)
        server.terminate()
        server.communicate(timeout=30)


def test_go_servers_answer_the_probe(vm: Any, influxd: Any) -> None:
    """VictoriaMetrics and influxd (Go's net/http) answer pipelined requests."""
    for url in (f"{vm.url}/api/v2/write?bucket=b", f"{influxd.url}/write?db=probe"):
        with sender(url) as post:
            assert post.probe_pipelining() is True, url
