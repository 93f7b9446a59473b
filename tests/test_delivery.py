"""The delivery machinery every exporter shares (BufferedExporter).

These tests drive the base class through ``ScriptedExporter``, a test double
whose ``_send`` answers from a script: it stands for a backend's verdicts
(delivered, retry, rejected, too large) so the buffer, backoff, split and
shutdown logic can be pinned exactly. The transports themselves (HTTP,
InfluxDB, SQLite) are tested against real servers in their own modules.
"""

from __future__ import annotations

import threading
import time
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
    Status,
    backoff_delay,
)

from .conftest import sample_app


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


def test_a_single_item_too_large_is_dropped_as_rejected() -> None:
    exporter = ScriptedExporter(
        lambda batch: Outcome(Status.TOO_LARGE, "413") if 0 in batch else DELIVERED
    )
    exporter.put(0, 1)
    assert exporter.force_flush(5_000)
    assert exporter.delivered == [1]
    assert exporter.stats.dropped_rejected == 1
    exporter.shutdown()


def test_rejected_batches_are_dropped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    exporter = ScriptedExporter(lambda batch: Outcome(Status.REJECTED, "HTTP 400: bad line 1"))
    exporter.put(1, 2)
    assert exporter.force_flush(5_000)
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
