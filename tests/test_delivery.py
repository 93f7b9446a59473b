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
    Fate,
    Settlement,
    backoff_delay,
    refused,
    retry,
    suspect,
    too_large,
)
from flask_chest_otel._logging import RateLimitedLog

from .conftest import read_rows, sample_app, wait_for


class ScriptedExporter(BufferedExporter[int]):
    """Test double: items are ints; ``verdict(batch)`` decides each send."""

    def __init__(self, verdict: Callable[[Sequence[int]], Settlement], **options: Any) -> None:
        options.setdefault("retry_initial", 0.01)
        options.setdefault("retry_max", 0.05)
        super().__init__(name="scripted", **options)
        self.verdict = verdict
        self.sent: list[list[int]] = []
        self.delivered: list[int] = []

    def _encode(self, metrics_data: MetricsData) -> Iterable[int]:
        return []

    def _send(self, batch: Sequence[int]) -> Settlement:
        self.sent.append(list(batch))
        settlement = self.verdict(batch)
        self.delivered.extend(
            item for index, item in enumerate(batch) if settlement.fate(index) is Fate.DELIVERED
        )
        return settlement

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

    def verdict(batch: Sequence[int]) -> Settlement:
        return retry("503") if next(failures, False) else DELIVERED

    exporter = ScriptedExporter(verdict)
    exporter.put(1, 2, 3)
    assert exporter.force_flush(5_000)
    # The fourth round probes items alone (is one of them poison?): the
    # backend is back, so all pass, in the probes' order.
    assert sorted(exporter.delivered) == [1, 2, 3]
    assert exporter.stats.retried == 9
    assert exporter.stats.dropped == 0
    exporter.shutdown()


def test_a_full_buffer_drops_the_oldest_items_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()

    def verdict(batch: Sequence[int]) -> Settlement:
        return DELIVERED if gate.is_set() else retry("down")

    exporter = ScriptedExporter(verdict, max_buffer_items=5)
    exporter.put(*range(12))
    assert exporter.stats.dropped_buffer_full == 7
    assert exporter.stats.buffered == 5
    assert "dropped the 7 oldest items" in caplog.text
    gate.set()
    assert exporter.force_flush(5_000)
    assert exporter.delivered == [7, 8, 9, 10, 11]
    exporter.shutdown()


def test_stats_read_while_the_buffer_overflows_always_add_up() -> None:
    """The backend is down and a thread adds 2,000 items at a time to a
    buffer of 500, 200 times: ``stats_snapshot()`` taken meanwhile from
    another thread always counts every added item once, buffered or dropped
    for room. (Read field by field off the live ``stats``, most readings
    here miss some: an overflow takes items off ``buffered`` before it
    adds them to ``dropped_buffer_full``; in ``test_spool_faults`` such a
    reading once missed 410 of 20,000.)"""
    exporter = ScriptedExporter(lambda batch: retry("down"), max_buffer_items=500,
                                flush_interval=3600, retry_initial=60, retry_max=60)  # fmt: skip
    done = threading.Event()

    def add() -> None:
        for _ in range(200):
            exporter.put(*range(2_000))
        done.set()

    adder = threading.Thread(target=add)
    adder.start()
    totals = []
    while not done.is_set():
        stats = exporter.stats_snapshot()
        totals.append(stats.buffered + stats.dropped_buffer_full)
    adder.join()
    torn = [total for total in totals if total % 2_000]
    assert len(totals) > 100 and not torn, f"{len(torn)} of {len(totals)} readings: {torn[:5]}"
    assert totals == sorted(totals)
    exporter.shutdown(0)


def test_the_byte_bound_of_the_buffer_holds_too() -> None:
    exporter = ScriptedExporter(lambda batch: retry("down"), max_buffer_bytes=35)
    exporter.put(*range(10))  # 10 bytes each
    assert (exporter.stats.buffered, exporter.stats.buffered_bytes) == (3, 30)
    exporter.shutdown(timeout_millis=10)


def test_too_large_batches_are_split_until_they_pass() -> None:
    exporter = ScriptedExporter(
        lambda batch: too_large("413") if len(batch) > 2 else DELIVERED
    )
    exporter.put(*range(8))
    assert exporter.force_flush(5_000)
    assert exporter.delivered == list(range(8))
    assert [len(batch) for batch in exporter.sent][:3] == [8, 4, 2]
    exporter.shutdown()


def test_a_single_item_too_large_is_dropped_as_rejected_and_fails_the_flush() -> None:
    exporter = ScriptedExporter(
        lambda batch: too_large("413") if 0 in batch else DELIVERED
    )
    exporter.put(0, 1)
    assert not exporter.force_flush(5_000)
    assert exporter.delivered == [1]
    assert exporter.stats.dropped_rejected == 1
    exporter.shutdown()


def test_rejected_batches_are_dropped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    exporter = ScriptedExporter(lambda batch: refused("HTTP 400: bad line 1"))
    exporter.put(1, 2)
    assert not exporter.force_flush(5_000), "a flush whose items were refused is not a success"
    assert exporter.stats.dropped_rejected == 2
    assert "HTTP 400: bad line 1" in caplog.text
    exporter.shutdown()


def test_a_partial_write_counts_what_was_delivered() -> None:
    partial = Settlement(Fate.REFUSED, {0: Fate.DELIVERED, 1: Fate.DELIVERED}, message="422")
    exporter = ScriptedExporter(lambda batch: partial)
    exporter.put(1, 2, 3)
    exporter.force_flush(5_000)
    assert (exporter.stats.exported, exporter.stats.dropped_rejected) == (2, 1)
    exporter.shutdown()


def test_an_exception_in_send_keeps_the_batch_and_the_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = iter([RuntimeError("bug")])

    def verdict(batch: Sequence[int]) -> Settlement:
        error = next(calls, None)
        if error is not None:
            raise error
        return DELIVERED

    exporter = ScriptedExporter(verdict)
    exporter.put(1)
    exporter.force_flush(5_000)
    exporter.put(2)
    assert exporter.force_flush(5_000)
    assert exporter.delivered == [1, 2]
    assert "unexpected error while sending" in caplog.text
    exporter.shutdown()


def test_shutdown_interrupts_a_long_backoff_and_counts_what_is_left() -> None:
    exporter = ScriptedExporter(
        lambda batch: retry("down", retry_after=60),
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
    """SUSPECT (a bare 400 for one malformed line): the batch is narrowed
    until each refused item is alone; only the refused items are dropped and
    counted, and one log line quotes an example through the exporter's
    masking hook."""

    class Masking(ScriptedExporter):
        def _mask_example(self, item: int) -> str:
            return f"<item {item} token=***>"

    bad = {13, 57, 58}
    exporter = Masking(
        lambda batch: suspect("HTTP 400: unable to parse")
        if bad & set(batch)
        else DELIVERED
    )
    exporter.put(*range(100))
    assert not exporter.force_flush(5_000)
    assert sorted(exporter.delivered) == sorted(set(range(100)) - bad)
    assert exporter.stats.dropped_rejected == 3
    assert exporter.stats.exported == 97
    lines = [r for r in caplog.records if "items for good" in r.getMessage()]
    assert len(lines) == 1
    assert "refused 3 items for good" in lines[0].getMessage()
    assert "<item 13 token=***>" in lines[0].getMessage()
    assert "HTTP 400: unable to parse" in lines[0].getMessage()
    exporter.shutdown()


def test_three_thousand_refused_sends_log_at_most_twenty_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Log keys are kinds of problem, not messages: 3,000 rejections with
    3,000 different server messages make at most 20 log lines."""
    messages = iter(f"HTTP 400: bad line {n}" for n in range(10_000))
    exporter = ScriptedExporter(lambda batch: refused(next(messages)))
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
    verdicts = iter([refused("HTTP 400")])
    exporter = ScriptedExporter(lambda batch: next(verdicts, DELIVERED))
    exporter.put(1)
    assert not exporter.force_flush(5_000)
    exporter.put(2)
    assert exporter.force_flush(5_000)
    exporter.shutdown()


def test_shutdown_says_what_was_refused_and_what_was_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def verdict(batch: Sequence[int]) -> Settlement:
        if batch[0] == 1:
            return refused("HTTP 400")
        return retry("connection refused", retry_after=60)

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
        "exporter buffer": exporter._buffer.lock,
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
    from flask_chest_otel._delivery import _exit

    monkeypatch.setattr(_exit, "_exit_timeout", None)
    monkeypatch.setenv("FLASK_CHEST_EXIT_TIMEOUT", "1.5")
    assert _delivery.exit_timeout() == 1.5
    _delivery.set_exit_timeout(0.25)
    assert _delivery.exit_timeout() == 0.25
    with pytest.raises(ValueError):
        _delivery.set_exit_timeout(-1)


# -- the settlement protocol: narrowing, poison, backoff ----------------------


def _spread_bad(size: int, count: int, seed: int = 7) -> set[int]:
    import random

    return set(random.Random(seed).sample(range(size), count))


def test_a_refusal_naming_its_bad_items_costs_about_one_write_per_bad_item() -> None:
    """The server names the first bad item and writes nothing (InfluxDB 2.x's
    "unable to parse '<line>'"): each bad item costs one write, the rest is
    sent again; every good item delivered once."""
    bad = _spread_bad(2_000, 40)

    def verdict(batch: Sequence[int]) -> Settlement:
        named = [index for index, item in enumerate(batch) if item in bad][:1]
        if not named:
            return DELIVERED
        return Settlement(Fate.RESEND, {named[0]: Fate.REFUSED}, message="unable to parse")

    exporter = ScriptedExporter(verdict, max_batch_items=2_000)
    exporter.put(*range(2_000))
    assert not exporter.force_flush(10_000)
    assert sorted(exporter.delivered) == sorted(set(range(2_000)) - bad)
    assert (exporter.stats.exported, exporter.stats.dropped_rejected) == (1_960, 40)
    assert len(exporter.sent) <= 40 + 2  # + the first write and one probe
    exporter.shutdown()


@pytest.mark.parametrize(
    "size, count", [(2_000, 40), (10_000, 1), (1_000, 100), (2_000, 10), (2_000, 400)]
)
def test_a_bare_refusal_is_bisected_in_about_k_log2_n_over_k_plus_k_writes(
    size: int, count: int
) -> None:
    """A bare 400 names nothing: probes, then generalized binary splitting;
    k bad among n cost at most log2(C(n, k)) + k writes (Hwang's bound, about
    k*log2(n/k) + 1.44k), plus the first write and the five probes."""
    import math

    bad = _spread_bad(size, count)
    exporter = ScriptedExporter(
        lambda batch: suspect("HTTP 400") if bad & set(batch) else DELIVERED,
        max_batch_items=size,
    )
    exporter.put(*range(size))
    assert not exporter.force_flush(30_000)
    assert sorted(exporter.delivered) == sorted(set(range(size)) - bad)
    assert len(exporter.delivered) == size - count  # each once
    assert exporter.stats.dropped_rejected == count
    bound = math.log2(math.comb(size, count)) + count
    assert len(exporter.sent) <= bound + 1 + 5, (len(exporter.sent), bound)
    exporter.shutdown()


def test_a_refusal_of_the_request_itself_drops_the_batch_after_a_few_writes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every write refused, whatever it holds (a bad precision): the probes
    are refused alone as the batch was, so the batch is dropped after six
    writes, with one ERROR line that says why."""
    exporter = ScriptedExporter(lambda batch: suspect("HTTP 400: bad precision"))
    exporter.put(*range(2_000))
    assert not exporter.force_flush(10_000)
    assert exporter.stats.dropped_rejected == 2_000
    assert len(exporter.sent) == 1 + 5
    lines = [r for r in caplog.records if "about the request" in r.getMessage()]
    assert len(lines) == 1 and "bad precision" in lines[0].getMessage()
    exporter.shutdown()


def test_one_item_that_always_fails_is_dropped_alone_and_the_rest_flows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backend that fails any batch holding one poison item (a user chest
    raising for it, a collector refusing that point) while it takes every
    other: after three failed rounds it is bisected out and dropped alone."""
    exporter = ScriptedExporter(
        lambda batch: retry("write() raised KeyError") if 57 in batch else DELIVERED,
        max_batch_items=50,
    )
    exporter.put(*range(200))
    assert not exporter.force_flush(10_000)
    assert sorted(exporter.delivered) == [item for item in range(200) if item != 57]
    assert (exporter.stats.exported, exporter.stats.dropped_rejected) == (199, 1)
    lines = [r for r in caplog.records if "alone while others passed" in r.getMessage()]
    assert len(lines) == 1 and "KeyError" in lines[0].getMessage()
    exporter.put(200)
    assert exporter.force_flush(5_000)
    exporter.shutdown()


def test_a_backend_that_is_down_loses_nothing_to_the_poison_probes() -> None:
    """Everything fails for a while: the probes fail too, so nothing is
    dropped, and all arrive once the backend is back."""
    rounds = iter(range(30))
    exporter = ScriptedExporter(
        lambda batch: retry("connection refused") if next(rounds, 99) < 25 else DELIVERED,
        max_batch_items=10,
    )
    exporter.put(*range(30))
    assert exporter.force_flush(10_000)
    assert sorted(exporter.delivered) == list(range(30))
    assert exporter.stats.dropped == 0
    exporter.shutdown()


def test_backoff_starts_again_while_a_batch_makes_progress() -> None:
    """A backend that takes one item per send and asks to retry the rest: each
    round delivers, so every wait is a first retry's, never a doubled one."""
    from flask_chest_otel._delivery import RetryPolicy

    attempts: list[int] = []

    class Recording(RetryPolicy):
        def delay(self, attempt: int, retry_after: float | None = None) -> float:
            attempts.append(attempt)
            return 0.001

    exporter = ScriptedExporter(
        lambda batch: Settlement(Fate.RETRY, {0: Fate.DELIVERED}, message="503 for the rest")
        if len(batch) > 1
        else DELIVERED
    )
    exporter._drain.policy = Recording(0.01, 5.0)
    exporter.put(*range(12))
    assert exporter.force_flush(5_000)
    assert sorted(exporter.delivered) == list(range(12))
    assert attempts and set(attempts) == {1}
    exporter.shutdown()


def test_items_settled_out_of_order_leave_once_and_the_spool_in_order(
    tmp_path: Any,
) -> None:
    """The server takes the 2nd to 5th item and asks to retry the 1st: they
    are counted once, and the spool, told of gone items oldest first, ends
    empty once the 1st is taken."""
    answers = iter([Settlement(Fate.DELIVERED, {0: Fate.RETRY}, message="503")])
    exporter = ScriptedExporter(lambda batch: next(answers, DELIVERED), spool_dir=tmp_path)
    exporter.put(*range(5))
    assert exporter.force_flush(5_000)
    assert sorted(exporter.delivered) == list(range(5))
    assert exporter.stats.exported == 5 and exporter.stats.buffered == 0
    spool = exporter._buffer.spool
    assert spool is not None and spool.live_bytes == 0
    exporter.shutdown()
    assert not list(tmp_path.glob("*.spool"))


@pytest.mark.parametrize("where", ["middle", "first", "last", "every probe"])
def test_a_probe_that_hits_the_bad_item_leaves_no_good_one_taken_for_bad(where: str) -> None:
    """A bare 400 for one bad item that a probe sends alone: once it is
    refused, the rest is no longer known to hold a bad item, so nothing good
    is dropped for it."""
    size = 1_000
    bad = {
        "middle": {size // 2},
        "first": {0},
        "last": {size - 1},
        "every probe": {size // 2, size // 4, (3 * size) // 4, 0},
    }[where]
    exporter = ScriptedExporter(
        lambda batch: suspect("HTTP 400") if bad & set(batch) else DELIVERED,
        max_batch_items=size,
    )
    exporter.put(*range(size))
    assert not exporter.force_flush(10_000)
    assert sorted(exporter.delivered) == sorted(set(range(size)) - bad)
    assert exporter.stats.dropped_rejected == len(bad)
    exporter.shutdown()


def test_a_probe_whose_item_is_dropped_for_room_meanwhile_is_not_taken_for_passed() -> None:
    """Backend down, buffer full: the poison probe of the oldest batch's
    middle item fails, and while it was under way the buffer dropped that
    item for room (the collector added newer ones). A failed send is no
    sign that the backend takes anything: nothing is dropped as poison,
    and every item is still buffered or counted as dropped for room."""
    added = 20
    hooked = threading.Event()

    class DroppedWhileProbed(ScriptedExporter):
        def _send(self, batch: Sequence[int]) -> Settlement:
            settlement = super()._send(batch)
            if len(batch) == 1 and not hooked.is_set():
                hooked.set()
                # 11 newer items: the 11 oldest go, the probed 10th among them.
                self.put(*range(100, 111))
            return settlement

    exporter = DroppedWhileProbed(
        lambda batch: retry("503"), max_buffer_items=20, max_batch_items=20
    )
    exporter.put(*range(added))
    assert wait_for(lambda: hooked.is_set(), timeout=5)
    sent_then = len(exporter.sent)
    # The next round's whole batch (more than one item): the probing round is over.
    assert wait_for(lambda: any(len(b) > 1 for b in exporter.sent[sent_then:]), timeout=5)
    stats = exporter.stats_snapshot()
    assert stats.dropped_rejected == 0, stats
    assert stats.buffered + stats.dropped_buffer_full == added + 11, stats
    exporter.shutdown(timeout_millis=10)
