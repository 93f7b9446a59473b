"""The HTTP writer against endpoints that are slow, far away or misbehave
(``scripted_endpoint``): each request stored once (or, where the endpoint
never answered, stored again with the same ``Idempotency-Key``), and the
throughput of several connections against an endpoint 50 and 200 ms away."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from flask_chest_otel._delivery import DEFAULT_EXIT_TIMEOUT
from flask_chest_otel.http_payload import HTTPPayloadMetricExporter

from .conftest import wait_for
from .scripted_endpoint import Behaviour, ScriptedEndpoint, Stored
from .test_gunicorn import free_port, wait_until_serving
from .test_http_payload import recorded

REPO = Path(__file__).resolve().parent.parent


def request_id_body(tuples: list[Any]) -> bytes:
    """The payload is the request ID: what the endpoint stores is countable."""
    return str(tuples[0][2]).encode()


@pytest.fixture
def exporters() -> Iterator[list[HTTPPayloadMetricExporter]]:
    made: list[HTTPPayloadMetricExporter] = []
    yield made
    for exporter in made:
        exporter.shutdown(timeout_millis=1_000)


@pytest.fixture
def writer(
    exporters: list[HTTPPayloadMetricExporter],
) -> Callable[..., HTTPPayloadMetricExporter]:
    def make(url: str, **options: Any) -> HTTPPayloadMetricExporter:
        options.setdefault("payload_generator", request_id_body)
        options.setdefault("retry_initial", 0.02)
        options.setdefault("retry_max", 0.1)
        exporter = HTTPPayloadMetricExporter(url=url, **options)
        exporters.append(exporter)
        return exporter

    return make


def ids(count: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{number}" for number in range(count)]


def export(exporter: HTTPPayloadMetricExporter, request_ids: list[str]) -> None:
    exporter.export(recorded(*[(request_id, [("v", 1)]) for request_id in request_ids]))


def every_third(kind: str, **behaviour: Any) -> Callable[[Stored], Behaviour]:
    return lambda stored: Behaviour(kind, **behaviour) if stored.number % 3 == 0 else Behaviour()


@pytest.mark.parametrize(
    "kind", ["ok", "slow", "body204", "chunked", "http10", "close_after", "early_hints"]
)
def test_an_answer_of_each_shape_stores_each_request_once(
    writer: Callable[..., HTTPPayloadMetricExporter], kind: str
) -> None:
    """Slow (a byte every 10 ms), a 204 followed by a body, chunked, HTTP/1.0
    without a length, ``Connection: close``, a 103 before the answer, on
    every third request: each request is stored once, and all count as
    delivered."""
    with ScriptedEndpoint(every_third(kind, status=204 if kind == "body204" else 200)) as end:
        exporter = writer(end.url, timeout=5)
        export(exporter, ids(30))
        assert exporter.force_flush(10_000)
        counts = end.counts()
        assert sorted(counts) == sorted(request_id.encode() for request_id in ids(30))
        assert set(counts.values()) == {1}, counts
        assert exporter.stats.exported == 30 and exporter.stats.retried == 0


def test_a_204_body_on_a_kept_connection_is_never_taken_for_the_next_answer(
    writer: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """One connection, every answer a 204 with stray bytes after it: each
    is closed, none confuses the next POST's answer."""
    with ScriptedEndpoint(lambda stored: Behaviour("body204", status=204)) as end:
        exporter = writer(end.url, max_connections=1)
        export(exporter, ids(10))
        assert exporter.force_flush(10_000)
        assert set(end.counts().values()) == {1} and len(end.counts()) == 10
        assert exporter.stats.retried == 0


def test_an_endpoint_closing_without_an_answer_gets_that_post_again_with_its_key(
    writer: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """The endpoint stores the 3rd request, then closes without answering:
    the writer cannot know it was stored, sends it again with the same
    ``Idempotency-Key``; every other request is stored once."""
    with ScriptedEndpoint(lambda stored: Behaviour("close" if stored.number == 3 else "ok")) as end:
        exporter = writer(end.url)
        export(exporter, ids(12))
        assert exporter.force_flush(10_000)
        counts = end.counts()
        [repeated] = [body for body, count in counts.items() if count > 1]
        assert counts[repeated] == 2 and len(counts) == 12
        keys = end.keys_of(repeated)
        assert keys[0] and keys[0] == keys[1]


@pytest.mark.usefixtures("high_descriptors")
def test_with_socket_numbers_above_1024_one_connection_is_kept_for_every_post(
    writer: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """The check that an idle connection is still open (``poll``) works
    above descriptor 1024: with ``select`` it raised there, and every POST
    opened a new connection."""
    with ScriptedEndpoint(lambda stored: Behaviour()) as end:
        exporter = writer(end.url, max_connections=1)
        for batch in range(5):
            export(exporter, ids(10, prefix=f"b{batch}-"))
            assert exporter.force_flush(10_000)
        assert len(end.counts()) == 50 and set(end.counts().values()) == {1}
        assert end.connections == 1


def test_a_known_head_with_its_body_cut_short_is_sent_again_with_its_key(
    writer: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """Every third answer has the very head of the others (which the writer
    no longer parses anew, ``_direct._KnownHeads``), then half its body and
    a close: that POST got no whole answer, so it goes again with the same
    ``Idempotency-Key``, once; the others are stored once."""
    with ScriptedEndpoint(every_third("cut")) as end:
        exporter = writer(end.url, max_connections=1)
        export(exporter, ids(12))
        assert exporter.force_flush(10_000)
        counts = end.counts()
        assert sorted(counts) == sorted(request_id.encode() for request_id in ids(12))
        repeated = [body for body, count in counts.items() if count > 1]
        assert repeated and all(counts[body] <= 3 for body in repeated), counts
        for body in repeated:
            keys = end.keys_of(body)
            assert keys[0] and len(set(keys)) == 1
        assert exporter.stats.exported == 12 and exporter.stats.dropped == 0


def test_every_post_carries_its_own_idempotency_key(
    writer: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    with ScriptedEndpoint() as end:
        exporter = writer(end.url)
        export(exporter, ids(20))
        assert exporter.force_flush(10_000)
        keys = [stored.key for stored in end.stored]
        assert all(key and len(key) == 32 for key in keys) and len(set(keys)) == 20


def test_an_answer_with_120_headers_is_retried_with_the_same_key(
    writer: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """``http.client`` refuses an answer of over 100 header lines: that POST
    fails and is retried (with its key), once; the others are stored once."""
    with ScriptedEndpoint(
        lambda stored: Behaviour("headers120" if stored.number == 2 else "ok")
    ) as end:
        exporter = writer(end.url)
        export(exporter, ids(10))
        assert exporter.force_flush(10_000)
        counts = end.counts()
        [repeated] = [body for body, count in counts.items() if count > 1]
        assert counts[repeated] == 2 and len(counts) == 10
        assert len(set(end.keys_of(repeated))) == 1


def test_an_answer_that_never_parses_is_dropped_after_the_retry_policy_not_sent_forever(
    writer: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """One request always answered with 120 headers while others pass: the
    drain's poison rule drops it after a few tries; it is never resent
    without end (it was, 14-15 times and on, before). Alone in the buffer
    it could not be told from an endpoint that is down: requests go on
    arriving here, as they do in an app."""
    with ScriptedEndpoint(
        lambda stored: Behaviour("headers120" if stored.body == b"r4" else "ok")
    ) as end:
        exporter = writer(end.url, retry_max=0.05)
        export(exporter, ids(10))
        for number in range(100):
            if exporter.stats.dropped:
                break
            export(exporter, [f"later{number}"])
            time.sleep(0.05)
        assert exporter.force_flush(10_000)
        counts = end.counts()
        assert exporter.stats.dropped == 1 and 2 <= counts[b"r4"] <= 10, counts
        assert all(count == 1 for body, count in counts.items() if body != b"r4")
        time.sleep(0.3)
        assert end.counts()[b"r4"] == counts[b"r4"]


def test_a_413_sent_before_the_body_is_read_is_a_413(
    writer: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """A proxy's body limit: 413 after the head, then a close, while the
    writer still writes the body (its write fails): the payload is refused
    for good, not retried as a reset; the others are stored once."""

    def generator(tuples: list[Any]) -> bytes:
        request_id = str(tuples[0][2])
        return b"x" * 4_000_000 if request_id == "big" else request_id.encode()

    with ScriptedEndpoint(refuse_larger_than=100_000) as end:
        exporter = writer(end.url, payload_generator=generator)
        export(exporter, [*ids(5), "big", *ids(5, "s")])
        assert not exporter.force_flush(10_000)  # "big" was refused
        assert exporter.stats.dropped_rejected == 1 and exporter.stats.retried == 0
        assert exporter.stats.exported == 10 and set(end.counts().values()) == {1}


# -- throughput -------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "rate"), [(0.05, 200), (0.2, 50)], ids=["50ms", "200ms"])
def test_several_connections_keep_up_with_a_distant_endpoint(
    writer: Callable[..., HTTPPayloadMetricExporter], delay: float, rate: int
) -> None:
    """An endpoint answering after 50 ms at 200 requests/s, or 200 ms at
    50/s, for 10 s (the exporter fed from a thread at that rate): at least
    90 % are stored while the load runs, the rest within 3 s, each once,
    and never a POST written on a connection before the answer to the one
    before it."""
    seconds = 10.0
    with ScriptedEndpoint(lambda stored: Behaviour(delay=delay)) as end:
        exporter = writer(end.url)
        made: list[str] = []

        def load() -> None:
            start = time.monotonic()
            tick = 0.01
            for step in range(int(seconds / tick)):
                due = int(rate * (step + 1) * tick) - len(made)
                batch = [f"r{len(made) + n}" for n in range(due)]
                made.extend(batch)
                if batch:
                    export(exporter, batch)
                pause = start + (step + 1) * tick - time.monotonic()
                if pause > 0:
                    time.sleep(pause)

        thread = threading.Thread(target=load)
        thread.start()
        thread.join()
        during = len(end.stored)
        assert len(made) == int(rate * seconds)
        assert during >= 0.9 * len(made), (during, len(made))
        wait_for(lambda: len(end.stored) >= len(made), timeout=3.0)
        counts = end.counts()
        assert len(counts) == len(made) and set(counts.values()) == {1}
        assert end.pipelined == 0  # one POST in flight per connection


EXIT_SCRIPT = """
import sys, time
from flask_chest_otel.http_payload import HTTPPayloadMetricExporter
from tests.test_http_endpoint import export, ids, request_id_body

exporter = HTTPPayloadMetricExporter(url=sys.argv[1], payload_generator=request_id_body)
for start in range(0, 1000, 100):
    export(exporter, ids(1000)[start:start + 100])
print(f"queued {time.monotonic()}", flush=True)
"""


def test_a_thousand_payloads_queued_at_exit_are_all_delivered_within_the_exit_budget() -> None:
    """1,000 payloads queued, then a normal exit, to an endpoint 45 ms away:
    all are stored, once, before the default exit budget (5 s) runs out."""
    with ScriptedEndpoint(lambda stored: Behaviour(delay=0.045)) as end:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("FLASK_CHEST_EXIT_TIMEOUT", None)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, end.url],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        counts = end.counts()
        assert len(counts) == 1000 and set(counts.values()) == {1}, (len(counts), done.stderr)
        assert "ERROR" not in done.stderr
        assert took < DEFAULT_EXIT_TIMEOUT + 3.0  # interpreter start-up and import on top


SIGTERM_SCRIPT = """
import signal, sys, time
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from flask_chest_otel.autoconfig import HTTPPayloadEnvMetricExporter
from tests.test_http_endpoint import export, ids

exporter = HTTPPayloadEnvMetricExporter()
provider = MeterProvider(
    metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=600_000)]
)
signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))  # as a gunicorn worker ends
for start in range(0, 1000, 100):
    export(exporter, ids(1000)[start:start + 100])
print("queued", flush=True)
time.sleep(60)
"""


def test_sigterm_to_an_sdk_path_exporter_sends_the_backlog_within_the_exit_budget() -> None:
    """The entry-point exporter (``opentelemetry-instrument --metrics_exporter
    http_payload``) in a reader of the SDK, 1,000 payloads queued to an
    endpoint 45 ms away, then SIGTERM: the SDK's exit hook shuts the reader
    down with 30 s, longer than a process manager waits; the exporter takes
    the exit budget (5 s) at most and delivers all, once, over its
    connections."""
    with ScriptedEndpoint(lambda stored: Behaviour(delay=0.045)) as end:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT": end.url,
            "OTEL_EXPORTER_HTTP_PAYLOAD_GENERATOR": "tests.test_http_endpoint:request_id_body",
        }
        env.pop("FLASK_CHEST_EXIT_TIMEOUT", None)
        process = subprocess.Popen(
            [sys.executable, "-c", SIGTERM_SCRIPT], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert process.stdout is not None and process.stdout.readline() == "queued\n"
            started = time.monotonic()
            process.send_signal(15)
            _, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
        took = time.monotonic() - started
        counts = end.counts()
        assert len(counts) == 1000 and set(counts.values()) == {1}, (len(counts), stderr)
        assert took < DEFAULT_EXIT_TIMEOUT + 1.0, took


#: gunicorn's own default: the master kills a worker still running this long
#: after passing SIGTERM on.
GUNICORN_GRACEFUL_TIMEOUT = 30.0
#: Seconds a gunicorn master takes past its worker's exit budget to exit:
#: the worker's last steps, the master's reaping it (measured 0.7-1.3 s) and
#: the master's own exit hooks.
EXIT_SLACK = 4.0


@dataclass
class TimedEndpoint:
    """An endpoint answering after 45 ms, with the time each POST reached it."""

    endpoint: ScriptedEndpoint
    posted_at: list[float]


@pytest.fixture
def endpoint_45_ms() -> Iterator[TimedEndpoint]:
    posted_at: list[float] = []

    def answer_after_45_ms(stored: Stored) -> Behaviour:
        posted_at.append(time.monotonic())
        return Behaviour(delay=0.045)

    with ScriptedEndpoint(answer_after_45_ms) as endpoint:
        yield TimedEndpoint(endpoint, posted_at)


@dataclass
class GunicornRun:
    """What a SIGTERM to gunicorn under ``opentelemetry-instrument`` left."""

    #: POSTs stored at the endpoint when SIGTERM was sent.
    stored_at_sigterm: int
    #: Seconds from SIGTERM until the master exited, and until the last POST
    #: reached the endpoint.
    exit_took: float
    last_post_after: float
    #: Request ID -> times stored (in this run and those before on the
    #: endpoint); bodies of payloads without a request ID.
    request_ids: Counter[bytes]
    others: list[bytes]
    returncode: int
    stderr: str


def sigterm_gunicorn_under_opentelemetry_instrument(
    end: TimedEndpoint,
    requests_to_serve: int,
    wait: Callable[[], bool] | None = None,
    **environ: str,
) -> GunicornRun:
    """Serves ``requests_to_serve`` requests (IDs ``r0``...) on
    ``tests/apps/instrumented_gunicorn_app.py`` under ``opentelemetry-instrument
    --metrics_exporter http_payload gunicorn -w 1`` (sync worker, graceful
    timeout left at its default) posting to ``end``, waits for ``wait()``
    if given, sends SIGTERM to the master right after, and waits for the
    master to exit. The SDK's export interval is its default (60 s): at
    SIGTERM every request's point still waits in the worker, and what the
    endpoint receives was sent by the worker's exit path."""
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    env = {
        **{
            key: value
            for key, value in os.environ.items()
            if key not in ("FLASK_CHEST_EXIT_TIMEOUT", "OTEL_METRIC_EXPORT_INTERVAL")
        },
        "PYTHONPATH": str(REPO),
        "OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT": end.endpoint.url,
        "OTEL_EXPORTER_HTTP_PAYLOAD_GENERATOR": "tests.test_http_endpoint:request_id_body",
        **environ,
    }
    port = free_port()
    server = subprocess.Popen(
        [str(instrument), "--metrics_exporter", "http_payload",
         "--traces_exporter", "none", "--logs_exporter", "none",
         sys.executable, "-m", "gunicorn", "-w", "1", "-k", "sync",
         "-b", f"127.0.0.1:{port}", "tests.apps.instrumented_gunicorn_app:app"],
        cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(server, url)
        with requests.Session() as session:
            for number in range(requests_to_serve):
                answer = session.get(url, params={"id": f"r{number}"}, timeout=30)
                assert answer.status_code == 200
        if wait is not None:
            assert wait_for(wait, timeout=30)
        stored_at_sigterm = len(end.endpoint.stored)
        sigterm_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=GUNICORN_GRACEFUL_TIMEOUT + 30)
        exit_took = time.monotonic() - sigterm_at
    finally:
        server.kill()
    bodies = end.endpoint.bodies()
    return GunicornRun(
        stored_at_sigterm=stored_at_sigterm,
        exit_took=exit_took,
        last_post_after=max(end.posted_at, default=sigterm_at) - sigterm_at,
        request_ids=Counter(body for body in bodies if body != b"None"),
        others=[body for body in bodies if body == b"None"],
        returncode=server.returncode,
        stderr=stderr,
    )


def test_sigterm_to_gunicorn_under_opentelemetry_instrument_delivers_1000_queued_once(
    endpoint_45_ms: TimedEndpoint,
) -> None:
    """Issue 25's case for real: ``opentelemetry-instrument --metrics_exporter
    http_payload``, gunicorn with one sync worker, 1,000 requests waiting
    for an endpoint 45 ms away, SIGTERM to the master: the worker's exit
    (the SDK's exit hook, its last collection, the exporter's shutdown
    capped at the exit budget) delivers all 1,000 once each, well before
    gunicorn's graceful timeout, and says nothing on stderr but gunicorn's
    own lines. (Before, the worker was killed at the graceful timeout with
    682 delivered and no log line.)"""
    run = sigterm_gunicorn_under_opentelemetry_instrument(endpoint_45_ms, 1000)
    assert run.returncode == 0, run.stderr
    assert run.stored_at_sigterm == 0  # all 1,000 were waiting
    assert len(run.request_ids) == 1000, (len(run.request_ids), run.stderr)
    assert set(run.request_ids.values()) == {1}
    assert set(run.request_ids) == {f"r{number}".encode() for number in range(1000)}
    # The Flask instrumentation's own metrics: one payload per export, no request ID.
    assert len(run.others) <= 1
    # Nothing but gunicorn's own lines ("[date] [pid] [INFO] ..."): no traceback, no loss.
    assert all(line.startswith("[") for line in run.stderr.splitlines()), run.stderr
    assert "Traceback" not in run.stderr and "[ERROR]" not in run.stderr, run.stderr
    assert run.last_post_after < DEFAULT_EXIT_TIMEOUT, run.last_post_after
    assert run.exit_took < EXIT_SLACK + DEFAULT_EXIT_TIMEOUT < GUNICORN_GRACEFUL_TIMEOUT, (
        run.exit_took
    )


def test_sigterm_to_gunicorn_with_a_backlog_past_the_exit_budget_counts_it_in_one_error(
    endpoint_45_ms: TimedEndpoint,
) -> None:
    """The same with one connection (22 POSTs a second: 1,000 take 45 s):
    the worker sends for the exit budget (5 s), then one ERROR line counts
    what is lost; every request was either stored once or counted lost
    (the one POST in flight at the deadline may be both), and the worker
    exits long before gunicorn's graceful timeout."""
    run = sigterm_gunicorn_under_opentelemetry_instrument(
        endpoint_45_ms,
        1000,
        FLASK_CHEST_HTTP_MAX_CONNECTIONS="1",
        # Every item a request's, for the count below.
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="flask",
    )
    assert run.returncode == 0, run.stderr
    assert run.stored_at_sigterm == 0
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if "not delivered in time, lost" in line]
    assert len(errors) == 1, run.stderr
    assert "retrying in" not in run.stderr, run.stderr  # no retry comes after the deadline
    lost = int(errors[0].split(" shut down with ")[1].split()[0])
    delivered = len(run.request_ids)
    assert set(run.request_ids.values()) == {1} and not run.others
    assert 1000 <= delivered + lost <= 1001, (delivered, lost)
    assert delivered >= 50, delivered  # it did send for the budget
    assert run.last_post_after < DEFAULT_EXIT_TIMEOUT + 0.5, run.last_post_after
    assert run.exit_took < EXIT_SLACK + DEFAULT_EXIT_TIMEOUT < GUNICORN_GRACEFUL_TIMEOUT, (
        run.exit_took
    )


def test_sigterm_to_gunicorn_with_a_backlog_past_the_exit_budget_spools_it_for_the_next_start(
    endpoint_45_ms: TimedEndpoint, tmp_path: Path
) -> None:
    """The same backlog with ``FLASK_CHEST_SPOOL_DIR``: what the exit budget
    did not send stays in the spool (one line says so, none says lost); the
    next start on that directory sends it. Every request is stored, the one
    POST in flight at the deadline at most twice, with one Idempotency-Key."""
    backlog = {
        "FLASK_CHEST_HTTP_MAX_CONNECTIONS": "1",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "flask",
        "FLASK_CHEST_SPOOL_DIR": str(tmp_path),
    }
    run = sigterm_gunicorn_under_opentelemetry_instrument(endpoint_45_ms, 1000, **backlog)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "in time, lost" not in run.stderr, run.stderr
    kept = [line for line in run.stderr.splitlines() if "kept in the spool" in line]
    assert len(kept) == 1, run.stderr
    spooled = int(kept[0].split(" shut down with ")[1].split()[0])
    assert 1000 <= len(run.request_ids) + spooled <= 1001, (len(run.request_ids), spooled)
    assert run.exit_took < EXIT_SLACK + DEFAULT_EXIT_TIMEOUT, run.exit_took

    end = endpoint_45_ms.endpoint
    run = sigterm_gunicorn_under_opentelemetry_instrument(
        endpoint_45_ms,
        0,
        wait=lambda: len(set(end.bodies())) >= 1000,
        **{**backlog, "FLASK_CHEST_HTTP_MAX_CONNECTIONS": "16"},
    )
    assert run.returncode == 0, run.stderr
    assert set(run.request_ids) == {f"r{number}".encode() for number in range(1000)}
    twice = [body for body, count in run.request_ids.items() if count > 1]
    assert len(twice) <= 1 and set(run.request_ids.values()) <= {1, 2}, twice
    assert all(len(set(end.keys_of(body))) == 1 for body in twice)
    assert list(tmp_path.glob("*.spool")) == []


def test_the_sdks_shutdown_timeout_is_capped_at_the_exit_budget_with_one_error_line(
    writer: Callable[..., HTTPPayloadMetricExporter], caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's reader gives ``shutdown(timeout=30000)``; against an endpoint
    that does not answer, the exporter stops at the exit budget (1 s here)
    and says in one ERROR line how many payloads were lost."""
    from flask_chest_otel._delivery import _exit

    with ScriptedEndpoint(lambda stored: Behaviour(delay=20)) as end:
        exporter = writer(end.url, timeout=30)
        export(exporter, ids(40))
        wait_for(lambda: len(end.stored) >= 16, timeout=5)
        before = _exit._exit_timeout
        _exit.set_exit_timeout(1.0)
        try:
            started = time.monotonic()
            exporter.shutdown(timeout=30_000)
            took = time.monotonic() - started
        finally:
            _exit._exit_timeout = before
        assert took < 2.5, took
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "40 items not delivered" in errors[0], errors


# -- options and the spool ----------------------------------------------------------


def test_max_connections_comes_from_the_environment_and_pipeline_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``FLASK_CHEST_HTTP_MAX_CONNECTIONS`` gives the default; a bad value
    names the variable; ``pipeline=`` is no longer an option (0.x)."""
    url = "http://127.0.0.1:9/ingest"
    monkeypatch.setenv("FLASK_CHEST_HTTP_MAX_CONNECTIONS", "3")
    exporter = HTTPPayloadMetricExporter(url=url, payload_generator=request_id_body)
    assert exporter.max_connections == 3 and exporter.max_batch_items == 12
    exporter.shutdown(timeout_millis=100)
    monkeypatch.setenv("FLASK_CHEST_HTTP_MAX_CONNECTIONS", "many")
    with pytest.raises(ValueError, match=r"\$FLASK_CHEST_HTTP_MAX_CONNECTIONS"):
        HTTPPayloadMetricExporter(url=url, payload_generator=request_id_body)
    monkeypatch.delenv("FLASK_CHEST_HTTP_MAX_CONNECTIONS")
    with pytest.raises(ValueError, match="max_connections must be an int from 1 to 256"):
        HTTPPayloadMetricExporter(url=url, payload_generator=request_id_body, max_connections=0)
    with pytest.raises(TypeError):
        HTTPPayloadMetricExporter(url=url, payload_generator=request_id_body, pipeline=16)


def test_a_payloads_idempotency_key_survives_the_spool() -> None:
    """The key is written with the payload, so a later process resends it
    with the same key; a payload spooled before keys gets a new one."""
    import struct

    from flask_chest_otel._spool_codecs import dumps_http_item, loads_http_item
    from flask_chest_otel.http_payload import Payload

    payload = Payload(b'{"a": 1}', True, "request r1", 1)
    loaded = loads_http_item(dumps_http_item(payload), Payload)
    assert isinstance(loaded, Payload) and loaded.key == payload.key and loaded == payload
    old = b"P" + struct.pack("<?II", True, 1, 10) + b"request r1" + b'{"a": 1}'
    legacy = loads_http_item(old, Payload)
    assert isinstance(legacy, Payload) and legacy == payload and len(legacy.key) == 32
