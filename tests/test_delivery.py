"""The delivery machinery every exporter shares (BufferedExporter).

These tests drive the base class through ``ScriptedExporter``, a test double
whose ``_send`` answers from a script: it stands for a backend's verdicts
(delivered, retry, rejected, too large) so the buffer, backoff, split and
shutdown logic can be pinned exactly. The transports themselves (HTTP,
InfluxDB, SQLite) are tested against real servers in their own modules.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

from flask_chest_otel import register_self_metrics
from flask_chest_otel._delivery import (
    DELIVERED,
    BufferedExporter,
    Outcome,
    RateLimitedLog,
    Status,
    backoff_delay,
)

from .conftest import read_rows, sample_app


class ScriptedExporter(BufferedExporter[int]):
    """Test double: items are ints; ``verdict(batch)`` decides each send."""

    def __init__(self, verdict: Callable[[Sequence[int]], Outcome], **options: Any) -> None:
        options.setdefault("retry_initial", 0.01)
        options.setdefault("retry_max", 0.05)
        super().__init__(name="scripted", **options)
        self.verdict = verdict
        self.sent: list[list[int]] = []
        self.delivered: list[int] = []

    def _encode(self, metrics_data: MetricsData) -> Iterable[int]:
        return []

    def _send(self, batch: Sequence[int]) -> Outcome:
        self.sent.append(list(batch))
        outcome = self.verdict(batch)
        if outcome.status is Status.DELIVERED:
            self.delivered.extend(batch)
        return outcome

    def put(self, *items: int) -> None:
        self.enqueue([(item, 10) for item in items])


def test_items_are_delivered_oldest_first_in_batches() -> None:
    exporter = ScriptedExporter(lambda batch: DELIVERED, max_batch_items=3)
    exporter.put(*range(7))
    assert exporter.force_flush(5_000)
    assert exporter.delivered == list(range(7))
    assert all(len(batch) <= 3 for batch in exporter.sent)
    assert exporter.stats.exported == 7
    exporter.shutdown()


def test_retryable_failures_keep_the_items_until_the_backend_takes_them() -> None:
    failures = iter([True, True, True])

    def verdict(batch: Sequence[int]) -> Outcome:
        return Outcome(Status.RETRY, "503") if next(failures, False) else DELIVERED

    exporter = ScriptedExporter(verdict)
    exporter.put(1, 2, 3)
    assert exporter.force_flush(5_000)
    assert exporter.delivered == [1, 2, 3]
    assert exporter.stats.retried == 9
    assert exporter.stats.dropped == 0
    exporter.shutdown()


def test_a_full_buffer_drops_the_oldest_items_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()

    def verdict(batch: Sequence[int]) -> Outcome:
        return DELIVERED if gate.is_set() else Outcome(Status.RETRY, "down")

    exporter = ScriptedExporter(verdict, max_buffer_items=5)
    exporter.put(*range(12))
    assert exporter.stats.dropped_buffer_full == 7
    assert exporter.stats.buffered == 5
    assert "dropped the 7 oldest items" in caplog.text
    gate.set()
    assert exporter.force_flush(5_000)
    assert exporter.delivered == [7, 8, 9, 10, 11]
    exporter.shutdown()


def test_the_byte_bound_of_the_buffer_holds_too() -> None:
    exporter = ScriptedExporter(lambda batch: Outcome(Status.RETRY, "down"), max_buffer_bytes=35)
    exporter.put(*range(10))  # 10 bytes each
    assert (exporter.stats.buffered, exporter.stats.buffered_bytes) == (3, 30)
    exporter.shutdown(timeout_millis=10)


def test_too_large_batches_are_split_until_they_pass() -> None:
    exporter = ScriptedExporter(
        lambda batch: Outcome(Status.TOO_LARGE, "413") if len(batch) > 2 else DELIVERED
    )
    exporter.put(*range(8))
    assert exporter.force_flush(5_000)
    assert exporter.delivered == list(range(8))
    assert [len(batch) for batch in exporter.sent][:3] == [8, 4, 2]
    exporter.shutdown()


def test_a_single_item_too_large_is_dropped_as_rejected_and_fails_the_flush() -> None:
    exporter = ScriptedExporter(
        lambda batch: Outcome(Status.TOO_LARGE, "413") if 0 in batch else DELIVERED
    )
    exporter.put(0, 1)
    assert not exporter.force_flush(5_000)
    assert exporter.delivered == [1]
    assert exporter.stats.dropped_rejected == 1
    exporter.shutdown()


def test_rejected_batches_are_dropped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    exporter = ScriptedExporter(lambda batch: Outcome(Status.REJECTED, "HTTP 400: bad line 1"))
    exporter.put(1, 2)
    assert not exporter.force_flush(5_000), "a flush whose items were refused is not a success"
    assert exporter.stats.dropped_rejected == 2
    assert "HTTP 400: bad line 1" in caplog.text
    exporter.shutdown()


def test_a_partial_write_counts_what_was_delivered() -> None:
    exporter = ScriptedExporter(lambda batch: Outcome(Status.REJECTED, "422", delivered=2))
    exporter.put(1, 2, 3)
    exporter.force_flush(5_000)
    assert (exporter.stats.exported, exporter.stats.dropped_rejected) == (2, 1)
    exporter.shutdown()


def test_an_exception_in_send_drops_the_batch_but_not_the_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = iter([RuntimeError("bug")])

    def verdict(batch: Sequence[int]) -> Outcome:
        error = next(calls, None)
        if error is not None:
            raise error
        return DELIVERED

    exporter = ScriptedExporter(verdict)
    exporter.put(1)
    exporter.force_flush(5_000)
    exporter.put(2)
    assert exporter.force_flush(5_000)
    assert exporter.delivered == [2]
    assert "unexpected error while sending" in caplog.text
    exporter.shutdown()


def test_shutdown_interrupts_a_long_backoff_and_counts_what_is_left() -> None:
    exporter = ScriptedExporter(
        lambda batch: Outcome(Status.RETRY, "down", retry_after=60),
        retry_initial=1,
        retry_max=60,
    )
    exporter.put(1, 2)
    exporter._wake.set()
    time.sleep(0.2)  # the sender is now waiting out the Retry-After
    started = time.monotonic()
    exporter.shutdown(timeout_millis=500)
    assert time.monotonic() - started < 3
    assert exporter.stats.dropped_shutdown == 2


def test_shutdown_sends_what_a_reachable_backend_can_take() -> None:
    exporter = ScriptedExporter(lambda batch: DELIVERED, flush_interval=3600)
    exporter.put(*range(100))
    exporter.shutdown(timeout_millis=5_000)
    assert exporter.delivered == list(range(100))
    assert exporter.stats.dropped == 0


def test_export_after_shutdown_fails_counts_and_logs_without_raising(
    make_sqlite_chest: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A route still serving after its chest was shut down: its requests are
    answered, and the points the chest can no longer take are counted and logged."""
    chest = make_sqlite_chest(name="closed")
    client = sample_app([chest]).test_client()
    chest.shutdown()
    assert client.post("/").status_code == 200
    chest.force_flush()
    assert chest.exporter.stats.dropped_shutdown == 2
    assert "closed: received 2 points after shutdown(); they are dropped" in caplog.text


@pytest.mark.parametrize(
    "attempt, retry_after, low, high",
    [
        (1, None, 0.8, 1.2),
        (3, None, 3.2, 4.8),
        (10, None, 30, 30),  # capped at retry_max
        (1, 5.0, 5.0, 5.1),
        (1, 3600.0, 30, 30),  # Retry-After capped too
    ],
)
def test_backoff_is_exponential_with_jitter_and_honours_retry_after(
    attempt: int, retry_after: float | None, low: float, high: float
) -> None:
    for _ in range(50):
        assert low <= backoff_delay(attempt, 1.0, 30.0, retry_after) <= high


@pytest.mark.parametrize(
    "options",
    [
        {"max_batch_items": 0},
        {"max_buffer_bytes": 0},
        {"timeout": 0},
        {"retry_initial": 5, "retry_max": 1},
        {"flush_interval": -1},
    ],
)
def test_bad_delivery_options_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ScriptedExporter(lambda batch: DELIVERED, **options)


def test_delivery_counters_are_otel_metrics_of_the_library(
    make_sqlite_chest: Callable[..., Any],
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    register_self_metrics(provider)
    chest = make_sqlite_chest(name="self-observed")
    client = sample_app([chest]).test_client()
    for _ in range(3):
        client.post("/")
    assert chest.force_flush()
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        metric.name: {
            tuple(sorted((point.attributes or {}).items())): point.value
            for point in metric.data.data_points
        }
        for scope in data.resource_metrics[0].scope_metrics
        for metric in scope.metrics
    }
    assert points["flask_chest.exported"][(("exporter", "self-observed"),)] == 6
    assert points["flask_chest.buffer.items"][(("exporter", "self-observed"),)] == 0
    dropped = points["flask_chest.dropped"]
    assert dropped[(("exporter", "self-observed"), ("reason", "buffer_full"))] == 0
    provider.shutdown()


def test_a_value_whose_conversion_raises_is_counted_in_the_library_metrics(
    make_sqlite_chest: Callable[..., Any],
) -> None:
    """A ``g`` value whose ``__float__`` raises is recorded as text and shows in
    ``flask_chest.conversion_errors``; the request's other variable is kept."""
    from flask import Flask, g

    from flask_chest_otel import flask_chest

    class Broken:
        def __float__(self) -> float:
            raise RuntimeError("no number here")

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    register_self_metrics(provider)

    def errors() -> int:
        data = reader.get_metrics_data()
        assert data is not None
        return sum(
            point.value
            for scope in data.resource_metrics[0].scope_metrics
            for metric in scope.metrics
            if metric.name == "flask_chest.conversion_errors"
            for point in metric.data.data_points
        )

    before = errors()
    chest = make_sqlite_chest(name="conversion")
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[chest], tracked_vars={"GET": ["broken", "fine"]})
    def index() -> str:
        g.broken = Broken()
        g.fine = 2
        return "ok"

    app.test_client().get("/")
    assert chest.force_flush()
    assert errors() == before + 1
    rows = read_rows(chest.db_uri)
    assert [row["name"] for row in rows] == ["broken", "fine"]
    assert "no number here" in str(rows[0]["value"])
    provider.shutdown()


def test_a_batch_refused_for_some_items_drops_only_those_with_one_masked_example(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """INVALID (a 400 for one malformed line): the batch is split until each
    refused item is alone; only the refused items are dropped and counted, and
    one log line quotes an example through the exporter's masking hook."""

    class Masking(ScriptedExporter):
        def _mask_example(self, item: int) -> str:
            return f"<item {item} token=***>"

    bad = {13, 57, 58}
    exporter = Masking(
        lambda batch: Outcome(Status.INVALID, "HTTP 400: unable to parse")
        if bad & set(batch)
        else DELIVERED
    )
    exporter.put(*range(100))
    assert not exporter.force_flush(5_000)
    assert sorted(exporter.delivered) == sorted(set(range(100)) - bad)
    assert exporter.stats.dropped_rejected == 3
    assert exporter.stats.exported == 97
    refused = [r for r in caplog.records if "refused an item" in r.getMessage()]
    assert len(refused) == 1
    assert "<item 13 token=***>" in refused[0].getMessage()
    assert "HTTP 400: unable to parse" in refused[0].getMessage()
    exporter.shutdown()


def test_three_thousand_refused_sends_log_at_most_twenty_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Log keys are kinds of problem, not messages: 3,000 rejections with
    3,000 different server messages make at most 20 log lines."""
    messages = iter(f"HTTP 400: bad line {n}" for n in range(10_000))
    exporter = ScriptedExporter(lambda batch: Outcome(Status.REJECTED, next(messages)))
    for number in range(3_000):
        exporter.put(number)
        assert not exporter.force_flush(5_000)
    assert exporter.stats.dropped_rejected == 3_000
    lines = [r for r in caplog.records if r.name == "flask_chest_otel"]
    assert 1 <= len(lines) <= 20
    assert len(exporter._log._last) <= 256
    exporter.shutdown()


def test_the_rate_limited_log_table_is_bounded() -> None:
    """Even a caller that puts an occurrence in the key cannot grow the table."""
    log = RateLimitedLog(logging.getLogger("flask_chest_otel.test_bound"), max_keys=256)
    for number in range(5_000):
        log.log(logging.DEBUG, f"request:{number}", "message %d", number)
    assert len(log._last) == 256
    assert "request:4999" in log._last and "request:0" not in log._last


def test_force_flush_is_false_when_the_backend_refuses_and_true_after() -> None:
    verdicts = iter([Outcome(Status.REJECTED, "HTTP 400")])
    exporter = ScriptedExporter(lambda batch: next(verdicts, DELIVERED))
    exporter.put(1)
    assert not exporter.force_flush(5_000)
    exporter.put(2)
    assert exporter.force_flush(5_000)
    exporter.shutdown()


def test_shutdown_says_what_was_refused_and_what_was_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def verdict(batch: Sequence[int]) -> Outcome:
        if batch[0] == 1:
            return Outcome(Status.REJECTED, "HTTP 400")
        return Outcome(Status.RETRY, "connection refused", retry_after=60)

    exporter = ScriptedExporter(verdict, flush_interval=3600, retry_max=60, max_batch_items=1)
    exporter.put(1, 2, 3)
    exporter.shutdown(timeout_millis=300)
    assert (exporter.stats.dropped_rejected, exporter.stats.dropped_shutdown) == (1, 2)
    assert (
        "scripted: shut down with 2 items not delivered in time, lost; "
        "1 refused by the backend meanwhile, dropped"
    ) in caplog.text


def _child_exit_code(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None (after killing it) if it hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.parametrize("held", ["rate-limited log", "exporter buffer", "collector"])
def test_a_child_forked_while_another_thread_holds_a_lock_does_not_hang(held: str) -> None:
    """Every lock the library owns is renewed in a forked child: a real
    os.fork() while another thread holds it, and the child's first use of it
    returns (bounded wait)."""
    from flask_chest_otel._recorder import RECORDER

    exporter = ScriptedExporter(lambda batch: DELIVERED, flush_interval=3600)
    lock = {
        "rate-limited log": exporter._log._lock,
        "exporter buffer": exporter._lock,
        "collector": RECORDER._collect_lock,
    }[held]
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:
            try:
                exporter._log.log(logging.WARNING, "child", "logged in the child")
                exporter.put(1)
                RECORDER.collect()
            finally:
                os._exit(0)
        assert _child_exit_code(pid, timeout=10) == 0
    finally:
        release.set()
        holder.join()
        exporter.shutdown()


def test_the_exit_budget_is_read_from_the_environment_or_set_in_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flask_chest_otel import _delivery

    monkeypatch.setattr(_delivery, "_exit_timeout", None)
    monkeypatch.setenv("FLASK_CHEST_EXIT_TIMEOUT", "1.5")
    assert _delivery.exit_timeout() == 1.5
    _delivery.set_exit_timeout(0.25)
    assert _delivery.exit_timeout() == 0.25
    with pytest.raises(ValueError):
        _delivery.set_exit_timeout(-1)
