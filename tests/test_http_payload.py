"""The custom HTTP payload writer against a real loopback HTTP server."""

from __future__ import annotations

import email.utils
import gc
import json
import logging
import pickle
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.export import Gauge as GaugeData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from flask_chest_otel import _pacing
from flask_chest_otel._names import ATTR_INDEX, ATTR_METHOD, ATTR_REQUEST_ID, ATTR_ROUTE
from flask_chest_otel._records import Record, flat_attributes
from flask_chest_otel.http_payload import (
    ContextTuple,
    FlaskChestCustomWriter,
    HTTPPayloadMetricExporter,
    json_payload,
    parse_retry_after,
)

from .conftest import wait_for
from .http_sink import HTTPSink, Reply

SCOPE = InstrumentationScope("flask_chest_otel", "0.1.0")
T0 = 1_700_000_000_123_456_789
Variables = list[tuple[str, Any]]


def cust_payload_generator(context_tuple_list: list[tuple[str, Any, str]]) -> dict[int, Any]:
    """The sample usage's generator, verbatim."""
    payload = {}
    for i, context_tuple in enumerate(context_tuple_list):
        payload[i] = context_tuple
    return payload


def recorded(
    *requests: tuple[str, Variables],
    method: str = "POST",
    route: str = "/",
    start: int = T0,
) -> MetricsData:
    """MetricsData as the recorder builds it: one gauge per variable name, in
    first-recorded order, points in record order, each at its request's time."""
    by_name: dict[str, list[NumberDataPoint]] = {}
    for index, (request_id, variables) in enumerate(requests):
        for name, value in variables:
            attributes: dict[str, Any] = {
                "request_id": request_id,
                "http.request.method": method,
                "http.route": route,
            }
            if isinstance(value, str):
                attributes["flask_chest.value"] = value
                value = 1.0
            point = NumberDataPoint(attributes, 0, start + index * 1_000, value)
            by_name.setdefault(name, []).append(point)
    metrics = [
        Metric(name=name, description="", unit="", data=GaugeData(data_points=points))
        for name, points in by_name.items()
    ]
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource({}),
                scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url="")],
                schema_url="",
            )
        ]
    )


@pytest.fixture
def make_exporter(
    http_exporters: Callable[..., HTTPPayloadMetricExporter],
) -> Callable[..., HTTPPayloadMetricExporter]:
    """Exporters with the sample usage's generator and name."""

    def make(**options: Any) -> HTTPPayloadMetricExporter:
        options.setdefault("payload_generator", cust_payload_generator)
        options.setdefault("name", "SignalFX")
        options.setdefault("retry_max", 2.0)
        return http_exporters(**options)

    return make


def deliver(exporter: HTTPPayloadMetricExporter, data: MetricsData, timeout: float = 10) -> bool:
    exporter.export(data)
    return exporter.force_flush(timeout_millis=timeout * 1000)


# -- what the generator receives ------------------------------------------------


def test_each_request_gets_one_generator_call_and_one_post(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter()
    data = recorded(
        ("r1", [("transaction", 1), ("response_time", 0.25)]),
        ("r2", [("transaction", 1)]),
        ("r3", [("transaction", 1), ("response_time", 0.5)]),
    )
    assert deliver(exporter, data)
    # Sent at once over several connections: they may arrive in any order.
    bodies = sorted((post.json() for post in sink.posts("/ingest")), key=lambda b: b["0"][2])
    assert bodies == [
        {"0": ["transaction", 1, "r1"], "1": ["response_time", 0.25, "r1"]},
        {"0": ["transaction", 1, "r2"]},
        {"0": ["transaction", 1, "r3"], "1": ["response_time", 0.5, "r3"]},
    ]
    assert exporter.stats.exported == 3


def test_tuples_of_a_request_follow_the_order_variables_were_recorded(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    exporter = make_exporter()
    data = recorded(("r1", [("zeta", 1), ("alpha", 2), ("mid", 3)]), ("r2", [("alpha", 4)]))
    lists = exporter.context_tuple_lists(data)
    assert lists == [
        [("zeta", 1, "r1"), ("alpha", 2, "r1"), ("mid", 3, "r1")],
        [("alpha", 4, "r2")],
    ]


def test_a_text_value_reaches_the_generator_as_the_string_it_was(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    exporter = make_exporter()
    [[status, user]] = exporter.context_tuple_lists(
        recorded(("r1", [("status", "ok"), ("user", "ada lovelace")]))
    )
    assert "flask_chest.value" not in user.attributes
    assert status == ("status", "ok", "r1")
    assert user == ("user", "ada lovelace", "r1")


def test_context_tuples_carry_method_route_and_the_request_time(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    exporter = make_exporter()
    [[item]] = exporter.context_tuple_lists(
        recorded(("r1", [("transaction", 1)]), method="GET", route="/api")
    )
    assert item.attributes == {"method": "GET", "route": "/api"}
    assert item.time_unix_nano == T0
    assert item.kind == "gauge"
    assert (item.name, item.value, item.request_id) == ("transaction", 1, "r1")


def test_a_time_attribute_from_an_sdk_provider_sets_the_time_and_is_stripped(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    exporter = make_exporter()
    point = NumberDataPoint(
        {"request_id": "r1", "http.request.method": "GET", "flask_chest.time_unix_nano": 42},
        0,
        T0,
        1.0,
    )
    data = MetricsData(
        [
            ResourceMetrics(
                Resource({}),
                [ScopeMetrics(SCOPE, [Metric("transaction", "", "", GaugeData([point]))], "")],
                "",
            )
        ]
    )
    [[item]] = exporter.context_tuple_lists(data)
    assert item.time_unix_nano == 42
    assert item.attributes == {"method": "GET"}


def test_two_requests_sharing_an_id_stay_two_payloads(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    exporter = make_exporter()
    data = recorded(("same", [("transaction", 1)]), ("same", [("transaction", 1)]))
    assert len(exporter.context_tuple_lists(data)) == 2


def test_per_request_false_sends_one_post_per_export_with_every_request(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter(per_request=False, payload_generator=json_payload)
    data = recorded(
        ("r1", [("transaction", 1), ("response_time", 0.25)]),
        ("r2", [("transaction", 1)]),
    )
    assert deliver(exporter, data)
    [post] = sink.posts()
    assert [(o["name"], o["value"], o["request_id"]) for o in post.json()] == [
        ("transaction", 1, "r1"),
        ("response_time", 0.25, "r1"),
        ("transaction", 1, "r2"),
    ]


def test_batched_mode_buffers_nothing_the_garbage_collector_must_track(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """What waits for the next batch holds only atomic values and flat tuples,
    so the cyclic GC stops tracking it (a full GC pass over the requests of an
    export interval paused requests under load); the generator still gets
    whole ContextTuples."""
    seen: list[ContextTuple] = []

    def generator(tuples: list[ContextTuple]) -> Any:
        seen.extend(tuples)
        return json_payload(tuples)

    exporter = make_exporter(per_request=False, payload_generator=generator, flush_interval=3600)
    exporter.export(recorded(("r1", [("transaction", 1), ("response_time", "slow")])))
    # Its first two collections, as in a worker: young, then middle generation.
    gc.collect()
    gc.collect()
    buffered = exporter._buffer.items()
    assert len(buffered) == 1
    assert not [item for item in buffered if gc.is_tracked(item)]
    assert exporter.force_flush(timeout_millis=5_000)
    assert [(item, item.attributes, item.time_unix_nano, item.kind) for item in seen] == [
        (("transaction", 1, "r1"), {"method": "POST", "route": "/"}, T0, "gauge"),
        (("response_time", "slow", "r1"), {"method": "POST", "route": "/"}, T0, "gauge"),
    ]
    assert all(type(item) is ContextTuple for item in seen)


def test_while_requests_are_served_batched_posts_hold_at_most_500_requests(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """Making a POST's JSON holds the GIL throughout (``json.dumps``, about
    6 ms for 2,500 requests): while the app serves requests, the sender's
    batches are small; idle, one POST takes every request."""
    records: list[Record] = [
        (0, "transaction", 1, flat_attributes({ATTR_REQUEST_ID: f"r{number}",
         ATTR_METHOD: "GET", ATTR_ROUTE: "/", ATTR_INDEX: 0}), T0 + number, None, ())
        for number in range(1_200)
    ]  # fmt: skip
    exporter = make_exporter(
        per_request=False, payload_generator=json_payload, flush_interval=0.05
    )
    _pacing.requests_seen(60.0)
    try:
        exporter.export_records(records)
        assert wait_for(lambda: exporter.stats.exported == 1_200)
    finally:
        _pacing._busy_until = 0.0
    assert [len(post.json()) for post in sink.posts()] == [500, 500, 200]
    exporter.export_records(records)
    assert wait_for(lambda: exporter.stats.exported == 2_400)
    assert [len(post.json()) for post in sink.posts()][3:] == [1_200]


def test_other_otel_metrics_become_one_tuple_per_point_without_request_id(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=Resource({}))
    meter = provider.get_meter("app")
    meter.create_counter("orders").add(3, {"shop": "eu"})
    meter.create_up_down_counter("queue").add(-2)
    meter.create_gauge("temperature").set(21.5)
    meter.create_histogram("latency", explicit_bucket_boundaries_advisory=[0.1, 1.0]).record(0.5)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    exporter = make_exporter()
    [items] = exporter.context_tuple_lists(data)
    by_name = {(item.name, item.attributes.get("le")): item for item in items}
    assert all(item.request_id is None for item in items)
    assert by_name[("orders", None)] == ("orders", 3, None)
    assert by_name[("orders", None)].kind == "cumulative_counter"
    assert by_name[("orders", None)].attributes == {"shop": "eu"}
    assert by_name[("queue", None)].kind == "gauge"
    assert by_name[("temperature", None)] == ("temperature", 21.5, None)
    assert [
        (name, item.value, item.kind)
        for (name, le), item in by_name.items()
        if name.startswith("latency")
    ] == [
        ("latency_count", 1, "cumulative_counter"),
        ("latency_sum", 0.5, "cumulative_counter"),
        ("latency_min", 0.5, "gauge"),
        ("latency_max", 0.5, "gauge"),
        ("latency_bucket", 0, "cumulative_counter"),
        ("latency_bucket", 1, "cumulative_counter"),
        ("latency_bucket", 1, "cumulative_counter"),
    ]
    assert [le for (name, le) in by_name if name == "latency_bucket"] == ["0.1", "1.0", "+Inf"]


def test_a_delta_counter_is_a_counter(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    from opentelemetry.sdk.metrics import Counter

    reader = InMemoryMetricReader(preferred_temporality={Counter: AggregationTemporality.DELTA})
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("app").create_counter("orders").add(1)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    [[item]] = make_exporter().context_tuple_lists(data)
    assert item.kind == "counter"


def test_other_metrics_through_the_chest_reader_reach_the_server_in_one_post(
    sink: HTTPSink,
) -> None:
    chest = FlaskChestCustomWriter(
        name="HTTP", url=sink.url + "/other", payload_generator=json_payload, retry_initial=0.05
    )
    provider = MeterProvider(metric_readers=[chest.metric_reader()], resource=Resource({}))
    try:
        meter = provider.get_meter("app")
        meter.create_counter("orders").add(2)
        meter.create_gauge("temperature").set(20)
        assert provider.force_flush(5_000)
        assert chest.force_flush(5_000)
        [post] = sink.posts("/other")
        assert sorted((o["name"], o["value"], o["request_id"]) for o in post.json()) == [
            ("orders", 2, None),
            ("temperature", 20, None),
        ]
    finally:
        provider.shutdown()
        chest.shutdown(2_000)


# -- how payloads are sent -------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "body", "content_type"),
    [
        ({"a": 1}, b'{"a":1}', "application/json"),
        ([1, "x"], b'[1,"x"]', "application/json"),
        ((1, 2), b"[1,2]", "application/json"),
        (3.5, b"3.5", "application/json"),
        (True, b"true", "application/json"),
        (None, b"null", "application/json"),
        ("transaction=1", b"transaction=1", None),
        ("é", "é".encode(), None),
        (b"\x00\x01raw", b"\x00\x01raw", None),
    ],
)
def test_json_values_are_sent_as_json_and_str_or_bytes_as_is(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    result: Any,
    body: bytes,
    content_type: str | None,
) -> None:
    exporter = make_exporter(payload_generator=lambda tuples: result)
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    [post] = sink.posts()
    assert post.body == body
    assert post.header("Content-Type") == content_type


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=3) | st.integers() | st.booleans(), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=_json_values.filter(lambda value: not isinstance(value, str)))
def test_a_json_body_is_what_json_dumps_writes(value: Any) -> None:
    """Any JSON value but a text (sent as it is) is written as
    ``json.dumps`` with our options writes it, by the encoder called
    straight: a NaN or an infinity as its string, a lone surrogate as
    U+FFFD."""
    from flask_chest_otel.http_payload._json_payload import _finite, serialise

    text = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    expected = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode()
    assert serialise(value) == (expected, True)


def test_a_circular_payload_is_refused_with_an_error() -> None:
    from flask_chest_otel.http_payload._json_payload import serialise

    circular: list[Any] = [1]
    circular.append(circular)
    with pytest.raises((ValueError, RecursionError)):
        serialise({"tuples": circular})


def test_a_content_type_given_in_headers_wins(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter(headers={"content-type": "application/vnd.custom+json"})
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    [post] = sink.posts()
    assert post.header("Content-Type") == "application/vnd.custom+json"
    assert post.json() == {"0": ["transaction", 1, "r1"]}


def test_headers_and_params_are_sent_as_requests_sends_them(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter(headers={"X-Team": "sre"}, params={"source": "flask", "v": "2"})
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    [post] = sink.posts()
    assert post.header("X-Team") == "sre"
    assert post.query == {"source": ["flask"], "v": ["2"]}
    assert post.path == "/ingest"


def test_proxies_route_the_post_through_the_proxy(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter(url="http://collector.invalid:3000/ingest", proxies={"http": sink.url})
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    [post] = sink.posts()
    assert post.target == "http://collector.invalid:3000/ingest"


def test_proxy_variables_of_the_environment_are_honoured(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment is read once, at construction, as requests would on
    every call: HTTP_PROXY routes the POST, NO_PROXY exempts a host."""
    for variable in ("NO_PROXY", "no_proxy", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HTTP_PROXY", sink.url)
    monkeypatch.setenv("NO_PROXY", "exempt.invalid")
    proxied = make_exporter(url="http://collector.invalid:3000/ingest")
    exempt = make_exporter(url="http://exempt.invalid:3000/ingest", retry_max=0.1)
    assert deliver(proxied, recorded(("r1", [("transaction", 1)])))
    [post] = sink.posts()
    assert post.target == "http://collector.invalid:3000/ingest"
    assert exempt.proxies is None


def test_at_most_max_connections_kept_alive_connections_carry_every_post(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter(max_connections=3)
    data = recorded(*[(f"r{i}", [("transaction", 1)]) for i in range(30)])
    assert deliver(exporter, data)
    posts = sink.posts()
    assert len(posts) == 30
    assert 1 <= len({post.client for post in posts}) <= 3


# -- status codes, retries, failures ---------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_default_success_statuses_count_as_delivered(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter], status: int
) -> None:
    sink.default = Reply(status, b"" if status == 204 else b"ok")
    exporter = make_exporter()
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    assert len(sink.posts()) == 1
    assert exporter.stats.exported == 1
    assert exporter.stats.dropped == 0


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (202, {}),  # not in the chest's success_status_codes
        (301, {"Location": "/elsewhere"}),
        (302, {"Location": "/elsewhere"}),
        (307, {"Location": "/elsewhere"}),
        (308, {"Location": "/elsewhere"}),
        (400, {}),
        (401, {}),
        (403, {}),
        (404, {}),
        (413, {}),
        (422, {}),
    ],
)
def test_other_statuses_are_logged_with_status_body_and_chest_name_then_dropped(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    caplog: pytest.LogCaptureFixture,
    status: int,
    headers: dict[str, str],
) -> None:
    sink.default = Reply(status, b"bad token " + b"x" * 1000, headers)
    exporter = make_exporter(success_status_codes=[200, 201])
    # A refused item makes the flush report failure (issue 12 item 3).
    assert not deliver(exporter, recorded(("req-7", [("transaction", 1)])))
    assert [post.path for post in sink.requests] == ["/ingest"]  # no redirect followed
    assert exporter.stats.exported == 0
    assert exporter.stats.dropped_rejected == 1
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message.startswith("SignalFX: ")
    assert f"HTTP {status}" in message
    assert "req-7" in message
    assert "bad token " + "x" * 190 in message
    assert "x" * 191 not in message


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_429_and_5xx_are_retried_until_delivered(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter], status: int
) -> None:
    sink.script(Reply(status, b"busy"), Reply(status, b"busy"))
    exporter = make_exporter()
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    posts = sink.posts()
    assert len(posts) == 3
    assert all(post.json() == {"0": ["transaction", 1, "r1"]} for post in posts)
    assert exporter.stats.exported == 1
    assert exporter.stats.retried == 2
    assert exporter.stats.dropped == 0


def test_a_retry_in_the_middle_of_a_batch_resends_only_what_was_not_delivered(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """Per request, a batch is many POSTs sent at once: a 503 on the third
    to arrive must not send the others again (each request arrives once,
    the 503'd one twice, with the same Idempotency-Key)."""
    sink.script(Reply(200), Reply(200), Reply(503, b"busy", {"Retry-After": "0"}))
    exporter = make_exporter(retry_initial=0.05)
    requests_ = [(f"r{number}", [("transaction", number)]) for number in range(5)]
    assert deliver(exporter, recorded(*requests_))
    posts = sink.posts()
    ids = sorted(post.json()["0"][2] for post in posts)
    retried = posts[2].json()["0"][2]
    assert ids == sorted([f"r{number}" for number in range(5)] + [retried]), ids
    keys = [post.header("Idempotency-Key") for post in posts if post.json()["0"][2] == retried]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert exporter.stats.exported == 5 and exporter.stats.dropped == 0


def _gap(sink: HTTPSink) -> float:
    first, second = sink.posts()[:2]
    return second.received - first.received


def test_retry_after_in_seconds_is_honoured(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    sink.script(Reply(503, b"", {"Retry-After": "1"}))
    exporter = make_exporter()
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    assert 0.95 <= _gap(sink) < 2.0


def test_retry_after_as_an_http_date_is_honoured(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    sink.script(Reply(429, b"", {"Retry-After": when}))
    exporter = make_exporter()
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    assert 0.9 <= _gap(sink) < 2.5


def test_an_unreadable_retry_after_falls_back_to_backoff(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    sink.script(Reply(503, b"", {"Retry-After": "soon"}))
    exporter = make_exporter()
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    assert _gap(sink) < 0.5


def test_retry_after_is_capped_at_retry_max(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    sink.script(Reply(503, b"", {"Retry-After": "3600"}))
    exporter = make_exporter(retry_max=0.3)
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])), timeout=5)
    assert _gap(sink) < 1.0


def test_a_dropped_connection_is_retried(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    sink.script(Reply(drop=True))
    exporter = make_exporter()
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    assert len(sink.posts()) == 2
    assert exporter.stats.exported == 1


def test_a_timeout_is_retried(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    sink.script(Reply(delay=1.0))
    exporter = make_exporter(timeout=0.3)
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    assert len(sink.posts()) == 2
    assert exporter.stats.exported == 1


def test_payloads_wait_for_a_server_that_is_not_up_yet(
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = make_exporter(url=f"http://127.0.0.1:{port}/late", retry_max=0.2)
    exporter.export(recorded(("r1", [("transaction", 1)]), ("r2", [("transaction", 1)])))
    assert not exporter.force_flush(timeout_millis=500)
    assert exporter.stats.retried >= 1
    with HTTPSink(port=port) as late:
        assert exporter.force_flush(timeout_millis=5_000)
        assert sorted(post.json()["0"][2] for post in late.posts("/late")) == ["r1", "r2"]
        exporter.shutdown(timeout_millis=2_000)


def test_a_generator_that_raises_is_logged_with_the_request_id_and_skipped(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def generator(tuples: list[Any]) -> Any:
        if tuples[0].request_id == "bad-request":
            raise KeyError("response_time")
        return cust_payload_generator(tuples)

    exporter = make_exporter(payload_generator=generator)
    data = recorded(
        ("r1", [("transaction", 1)]), ("bad-request", [("transaction", 1)]), ("r3", [("x", 2)])
    )
    assert deliver(exporter, data)
    assert sorted(post.json()["0"][2] for post in sink.posts()) == ["r1", "r3"]
    assert exporter.stats.dropped_encoding == 1
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "SignalFX" in message and "bad-request" in message and "KeyError" in message
    # The exporter goes on.
    assert deliver(exporter, recorded(("r4", [("transaction", 1)]), start=T0 + 10**9))
    assert len(sink.posts()) == 3


def generator_failing_on(request_id: str) -> Callable[[list[Any]], Any]:
    """The sample generator, raising for any list that holds ``request_id``."""

    def generator(tuples: list[Any]) -> Any:
        if any(item.request_id == request_id for item in tuples):
            raise KeyError("response_time")
        return cust_payload_generator(tuples)

    return generator


def test_batched_a_request_the_generator_fails_on_is_counted_once_across_a_retry(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """Batched: the generator fails on one request, the others' POST gets a
    503 and then goes through. The failing request is dropped once, not once
    per attempt, the others are exported, and only they count as retried."""
    sink.script(Reply(503, headers={"Retry-After": "0"}))
    exporter = make_exporter(per_request=False, payload_generator=generator_failing_on("bad"))
    data = recorded(("r1", [("transaction", 1)]), ("bad", [("transaction", 1)]), ("r3", [("x", 2)]))
    assert not deliver(exporter, data)  # a request dropped while sending fails the flush
    assert [[item[2] for item in post.json().values()] for post in sink.posts()] == [
        ["r1", "r3"], ["r1", "r3"]
    ]  # fmt: skip
    stats = exporter.stats
    assert (stats.exported, stats.dropped_encoding, stats.dropped, stats.retried) == (2, 1, 1, 2)


def test_batched_a_request_the_generator_fails_on_in_a_batch_the_server_refuses(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """Batched: the generator fails on one request and the server refuses the
    others' POST for good (401): one dropped for encoding, two as refused,
    none exported (not minus one)."""
    sink.script(Reply(401, b"no token"))
    exporter = make_exporter(per_request=False, payload_generator=generator_failing_on("bad"))
    data = recorded(("r1", [("transaction", 1)]), ("bad", [("transaction", 1)]), ("r3", [("x", 2)]))
    assert not deliver(exporter, data)
    stats = exporter.stats
    assert (stats.exported, stats.dropped_encoding, stats.dropped_rejected) == (0, 1, 2)


def one_request_per_payload(tuples: list[Any]) -> Any:
    """A generator that takes one request per payload (as an endpoint taking
    one event per POST would make one), raising for more."""
    if len({item.request_id for item in tuples}) > 1:
        raise ValueError("one request per payload")
    return cust_payload_generator(tuples)


def four_requests() -> MetricsData:
    return recorded(*[(f"r{number}", [("transaction", number)]) for number in range(1, 5)])


def test_batched_a_generator_of_one_request_per_payload_gets_each_once_across_a_503(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """Batched, with a generator that fails on the batch but not on each
    request: the requests go one by one; a 503 on the second is retried
    alone, the first is not sent again."""
    sink.script(Reply(200), Reply(503, headers={"Retry-After": "0"}))
    exporter = make_exporter(per_request=False, payload_generator=one_request_per_payload)
    assert deliver(exporter, four_requests())
    assert [post.json()["0"][2] for post in sink.posts()] == ["r1", "r2", "r2", "r3", "r4"]
    stats = exporter.stats
    assert (stats.exported, stats.dropped, stats.retried) == (4, 0, 3)


def test_batched_a_generator_of_one_request_per_payload_loses_only_a_refused_one(
    sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    """The same, the endpoint refusing the second request for good (400):
    only that one is dropped, and no request is sent twice."""
    sink.script(Reply(200), Reply(400, b"bad r2"))
    exporter = make_exporter(per_request=False, payload_generator=one_request_per_payload)
    assert not deliver(exporter, four_requests())  # a refused request fails the flush
    assert [post.json()["0"][2] for post in sink.posts()] == ["r1", "r2", "r3", "r4"]
    stats = exporter.stats
    assert (stats.exported, stats.dropped_rejected, stats.dropped) == (3, 1, 1)


@pytest.mark.parametrize(
    "result",
    [{1, 2}, object(), {("a", "b"): 1}, {"when": datetime(2024, 1, 1)}],
    ids=["set", "object", "tuple-key", "datetime"],
)
def test_a_result_that_is_not_serialisable_is_logged_and_skipped(
    sink: HTTPSink,
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
    caplog: pytest.LogCaptureFixture,
    result: Any,
) -> None:
    exporter = make_exporter(payload_generator=lambda tuples: result)
    assert deliver(exporter, recorded(("r9", [("transaction", 1)])))
    assert sink.posts() == []
    assert exporter.stats.dropped_encoding == 1
    assert any("r9" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


# -- construction ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["", "localhost:3000", "ftp://x.org/", "http://", "http://host:99999/", "//host/x", None],
)
def test_a_malformed_url_is_refused_at_construction(url: Any) -> None:
    with pytest.raises(ValueError, match="url"):
        FlaskChestCustomWriter(name="HTTP", url=url, payload_generator=cust_payload_generator)


@pytest.mark.parametrize("codes", [[200, "201"], [99], [600], [True]])
def test_success_status_codes_must_be_http_statuses(codes: list[Any]) -> None:
    with pytest.raises(ValueError, match="success_status_codes"):
        HTTPPayloadMetricExporter(
            url="http://127.0.0.1:1/", payload_generator=json_payload, success_status_codes=codes
        )


def test_a_payload_generator_is_required_and_callable() -> None:
    with pytest.raises(TypeError, match="payload_generator"):
        FlaskChestCustomWriter(name="HTTP", url="http://127.0.0.1:1/")
    with pytest.raises(TypeError, match="payload_generator"):
        HTTPPayloadMetricExporter(
            url="http://127.0.0.1:1/",
            payload_generator="not callable",  # type: ignore[arg-type]
        )


def test_verify_defaults_to_true_and_name_to_the_url() -> None:
    chest = FlaskChestCustomWriter(url="http://127.0.0.1:1/x", payload_generator=json_payload)
    try:
        assert chest.exporter.verify is True
        assert chest.name == "http://127.0.0.1:1/x"
    finally:
        chest.shutdown(100)


def test_flask_chest_positional_order_is_kept() -> None:
    chest = FlaskChestCustomWriter(
        "HTTP", "http://127.0.0.1:1/x", {"X-A": "1"}, {"p": "1"}, None, json_payload
    )
    try:
        assert chest.payload_generator is json_payload
        assert chest.exporter.params == {"p": "1"}
    finally:
        chest.shutdown(100)


# -- TLS -----------------------------------------------------------------------------


@pytest.fixture
def tls_sink(certificate: tuple[str, str]) -> Iterator[HTTPSink]:
    with HTTPSink(tls=certificate) as server:
        yield server


def test_verify_true_refuses_an_unknown_certificate_and_keeps_the_payload(
    tls_sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter(url=tls_sink.url + "/ingest", retry_max=0.2)
    exporter.export(recorded(("r1", [("transaction", 1)])))
    assert not exporter.force_flush(timeout_millis=600)
    assert exporter.stats.retried >= 1
    assert tls_sink.posts() == []
    exporter.shutdown(timeout_millis=100)


def test_verify_with_a_ca_bundle_delivers_over_tls(
    tls_sink: HTTPSink,
    certificate: tuple[str, str],
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    exporter = make_exporter(url=tls_sink.url + "/ingest", verify=certificate[0])
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    assert len(tls_sink.posts()) == 1


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_delivers_to_a_self_signed_server(
    tls_sink: HTTPSink, make_exporter: Callable[..., HTTPPayloadMetricExporter]
) -> None:
    exporter = make_exporter(url=tls_sink.url + "/ingest", verify=False)
    assert deliver(exporter, recorded(("r1", [("transaction", 1)])))
    assert len(tls_sink.posts()) == 1


@pytest.mark.usefixtures("high_descriptors")
def test_over_tls_with_socket_numbers_above_1024_every_post_is_delivered(
    tls_sink: HTTPSink,
    certificate: tuple[str, str],
    make_exporter: Callable[..., HTTPPayloadMetricExporter],
) -> None:
    """The TLS handshake and every wait use ``poll``: with ``select`` a
    socket numbered above 1024 raised ValueError, and nothing went out."""
    exporter = make_exporter(url=tls_sink.url + "/ingest", verify=certificate[0])
    assert deliver(exporter, recorded(*[(f"r{n}", [("transaction", n)]) for n in range(20)]))
    assert len(tls_sink.posts()) == 20


# -- small parts -----------------------------------------------------------------------

NOW = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),
        ("Wed Oct 21 07:28:10 2015", 10.0),
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),
        ("Wed, 99 Foo 2015 07:28:30 GMT", None),
    ],
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_a_context_tuple_is_a_plain_3_tuple_to_generators() -> None:
    item = ContextTuple("transaction", 1.0, "r1", {"method": "GET"}, T0, "gauge")
    name, value, request_id = item
    assert (name, value, request_id) == ("transaction", 1.0, "r1")
    assert item == ("transaction", 1.0, "r1")
    assert len(item) == 3
    assert json.dumps({0: item}) == '{"0": ["transaction", 1.0, "r1"]}'
    copy = pickle.loads(pickle.dumps(item))
    assert copy == item and copy.attributes == {"method": "GET"} and copy.time_unix_nano == T0


def test_json_payload_lists_name_value_request_id_and_time() -> None:
    items = [
        ContextTuple("transaction", 1.0, "r1", {}, 1_700_000_000_123_456_789),
        ("plain", "text", None),
    ]
    assert json_payload(items) == [
        {
            "name": "transaction",
            "value": 1.0,
            "request_id": "r1",
            "time": "2023-11-14T22:13:20.123456Z",
        },
        {"name": "plain", "value": "text", "request_id": None, "time": None},
    ]


# -- the sample usage, end to end ---------------------------------------------------------


def test_sample_app_posts_exactly_once_per_request_with_the_sample_payload(
    sink: HTTPSink, tmp_path: Path
) -> None:
    from .conftest import sample_app

    logger = logging.getLogger("sample")
    chest_signalfx = FlaskChestCustomWriter(
        name="SignalFX",
        url=sink.url,
        payload_generator=cust_payload_generator,
        verify=False,
        success_status_codes=[200, 201],
        logger=logger,
    )
    issued: list[str] = []

    def custom_request_id_generator() -> str:
        request_id = datetime.now().strftime("%Y%m%d%H%M%S%f") + f"-{len(issued)}"
        issued.append(request_id)
        return request_id

    app = sample_app([chest_signalfx], request_id_generator=custom_request_id_generator)
    try:
        client = app.test_client()
        methods = ["GET", "POST", "POST", "GET", "POST"] * 8
        for method in methods:
            assert client.open("/", method=method).status_code == 200
        assert chest_signalfx.force_flush(10_000)
        posts = sink.posts("/")
        assert len(posts) == len(methods)
        by_id = {post.json()["0"][2]: post.json() for post in posts}
        assert sorted(by_id) == sorted(issued)
        for request_id, method in zip(issued, methods, strict=True):
            payload = by_id[request_id]
            assert payload["0"] == ["transaction", 1, request_id]
            if method == "GET":
                assert list(payload) == ["0"]
            else:
                assert list(payload) == ["0", "1"]
                assert payload["1"][0] == "response_time"
                assert payload["1"][2] == request_id
                assert 0 <= payload["1"][1] < 1
            assert all(post.header("Content-Type") == "application/json" for post in posts)
    finally:
        chest_signalfx.shutdown(2_000)


def test_tuples_follow_tracked_vars_order_when_methods_order_them_differently(
    sink: HTTPSink,
) -> None:
    """GET tracks [b, a], POST [a, b]; both in one collection keep their own order."""
    from flask import Flask, g

    from flask_chest_otel import flask_chest

    chest = FlaskChestCustomWriter(
        name="order", url=sink.url, payload_generator=cust_payload_generator, export_interval=60
    )
    app = Flask(__name__)

    @app.route("/", methods=["GET", "POST"])
    @flask_chest(chests=[chest], tracked_vars={"GET": ["b", "a"], "POST": ["a", "b"]})
    def index() -> str:
        g.a, g.b = 1, 2
        return "ok"

    try:
        client = app.test_client()
        for method in ("GET", "POST", "GET", "POST"):
            client.open("/", method=method)
        assert chest.force_flush(10_000)
        orders = sorted([item[0] for item in post.json().values()] for post in sink.posts("/"))
        assert orders == [["a", "b"], ["a", "b"], ["b", "a"], ["b", "a"]]
    finally:
        chest.shutdown(2_000)


@pytest.mark.parametrize("per_request", [True, False])
def test_force_flush_says_false_for_a_request_the_generator_fails_on_in_both_modes(
    sink: HTTPSink, per_request: bool
) -> None:
    """The same generator failure answers the same in both modes: per request
    it shows while collecting, batched while sending; either way the chest's
    force_flush() is False, and True again once a flush loses nothing."""
    from flask import Flask, g

    from flask_chest_otel import FlaskChestCustomWriter, flask_chest

    chest = FlaskChestCustomWriter(
        name="writer",
        url=sink.url + "/ingest",
        payload_generator=generator_failing_on("bad"),
        per_request=per_request,
        export_interval=3600,
        retry_initial=0.01,
        retry_max=0.05,
    )
    ids = iter(["r1", "bad", "r3", "r4"])
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(
        chests=[chest], tracked_vars={"GET": ["transaction"]}, request_id_generator=ids.__next__
    )
    def index() -> str:
        g.transaction = 1
        return "ok"

    client = app.test_client()
    try:
        for _ in range(3):
            client.get("/")
        assert chest.force_flush(5_000) is False
        assert chest.exporter.stats.dropped_encoding == 1
        client.get("/")
        assert chest.force_flush(5_000) is True
        posted = [item[2] for post in sink.posts() for item in post.json().values()]
        assert sorted(posted) == ["r1", "r3", "r4"]
    finally:
        chest.shutdown(1_000)
