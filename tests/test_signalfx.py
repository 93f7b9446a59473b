"""The SignalFx generator against the ingest documentation, and the SignalFx
chest against a real loopback server.

The limits come from Splunk Observability Cloud's "Naming conventions for
metrics and dimensions" and "Send data points" (``POST /v2/datapoint``):
metric names up to 256 characters; dimension names up to 128 characters,
starting with a letter, then letters, digits, ``_`` or ``-``, not starting
with the reserved ``sf_`` (case matters: ``Sf_x`` is a valid custom name);
integers within 64 bits; dimension values up to
256 characters; at most 36 dimensions; timestamps in milliseconds since the
epoch; categories ``gauge``, ``counter``, ``cumulative_counter``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from flask_chest_otel.http_payload import ContextTuple
from flask_chest_otel.signalfx import (
    FlaskChestSignalFx,
    make_signalfx_payload,
    sanitize_dimension_name,
    sanitize_dimension_value,
    sanitize_metric_name,
    signalfx_headers,
    signalfx_payload,
    signalfx_url,
)

from .http_sink import HTTPSink, Reply
from .test_http_payload import recorded

T = 1_700_000_000_123_456_789
T_MS = 1_700_000_000_123


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("transaction", "transaction"),
        ("web.http.error.count", "web.http.error.count"),
        ("m" * 256, "m" * 256),
        ("m" * 300, "m" * 256),
        ("é" * 300, "é" * 256),  # characters, not bytes
        ("", None),
    ],
)
def test_metric_names(name: str, expected: str | None) -> None:
    assert sanitize_metric_name(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("host", "host"),
        ("host_location", "host_location"),
        ("error-type", "error-type"),
        ("Region2", "Region2"),
        ("http.route", "http_route"),  # periods are not allowed
        ("a:b/c=d+e@f g", "a_b_c_d_e_f_g"),
        ("_private", "d__private"),  # must not start with _
        ("2xx", "d_2xx"),  # must start with a letter
        ("-x", "d_-x"),
        ("sf_metric", "d_sf_metric"),  # the reserved prefix
        ("Sf_metric", "Sf_metric"),  # valid: the prefix is sf_ exactly
        ("SF_thing", "SF_thing"),
        ("aws_region", "aws_region"),
        ("sf_hires", "sf_hires"),  # defined by Observability Cloud, accepted
        ("awsome", "awsome"),
        ("héllo", "h_llo"),
        ("d" * 128, "d" * 128),
        ("d" * 200, "d" * 128),
        ("_" + "d" * 200, "d__" + "d" * 125),
        ("", None),
    ],
)
def test_dimension_names(name: str, expected: str | None) -> None:
    assert sanitize_dimension_name(name) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("server1", "server1"),
        ("v" * 256, "v" * 256),
        ("v" * 257, "v" * 256),
        ("ü" * 300, "ü" * 256),
        (200, "200"),  # numbers are sent as numeric strings
        (True, "true"),
        (["a", "b"], '["a", "b"]'),
        ("", None),
        (None, None),
    ],
)
def test_dimension_values(value: Any, expected: str | None) -> None:
    assert sanitize_dimension_value(value) == expected


def _point(body: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    [points] = body.values()
    [point] = points
    return point


def test_a_decorated_variable_is_a_gauge_with_method_and_route_dimensions() -> None:
    item = ContextTuple("response_time", 0.25, "r1", {"method": "POST", "route": "/"}, T)
    assert signalfx_payload([item]) == {
        "gauge": [
            {
                "metric": "response_time",
                "value": 0.25,
                "dimensions": {"method": "POST", "route": "/"},
                "timestamp": T_MS,
            }
        ]
    }


@pytest.mark.parametrize(
    ("kind", "category"),
    [
        ("gauge", "gauge"),
        ("counter", "counter"),
        ("cumulative_counter", "cumulative_counter"),
        ("histogram", "gauge"),
    ],
)
def test_the_tuple_kind_picks_the_category(kind: str, category: str) -> None:
    body = signalfx_payload([ContextTuple("orders", 3, None, {}, T, kind)])
    assert list(body) == [category]


def test_a_plain_tuple_is_a_gauge_without_timestamp_or_dimensions() -> None:
    assert signalfx_payload([("transaction", 1, "r1")]) == {
        "gauge": [{"metric": "transaction", "value": 1, "dimensions": {}}]
    }


@pytest.mark.parametrize(
    ("value", "sent"),
    [(1, 1), (0.5, 0.5), (True, 1), (False, 0), (Decimal("2.5"), 2.5), (10**12, 10**12)],
)
def test_numeric_values_are_sent_as_json_numbers(value: Any, sent: Any) -> None:
    point = _point(signalfx_payload([("x", value, None)]))
    assert point["value"] == sent and type(point["value"]) is type(sent)


@pytest.mark.parametrize("value", ["ok", float("nan"), float("inf"), None, [1]])
def test_values_signalfx_cannot_carry_are_left_out(value: Any) -> None:
    assert signalfx_payload([("x", value, None), ("y", 1, None)]) == {
        "gauge": [{"metric": "y", "value": 1, "dimensions": {}}]
    }


def test_at_most_36_dimensions_are_kept_static_ones_first() -> None:
    generator = make_signalfx_payload(dimensions={"app": "shop", "env": "prod"})
    attributes = {f"attr{i:02d}": str(i) for i in range(50)}
    point = _point(generator([ContextTuple("x", 1, None, attributes, T)]))
    assert len(point["dimensions"]) == 36
    assert list(point["dimensions"])[:3] == ["app", "env", "attr00"]


def test_static_dimensions_win_a_clash_after_sanitising() -> None:
    generator = make_signalfx_payload(dimensions={"http_route": "static"})
    point = _point(generator([ContextTuple("x", 1, None, {"http.route": "/api"}, T)]))
    assert point["dimensions"] == {"http_route": "static"}


def test_request_id_is_a_dimension_only_when_asked() -> None:
    item = ContextTuple("transaction", 1.0, "r1", {"method": "GET"}, T)
    assert "request_id" not in _point(signalfx_payload([item]))["dimensions"]
    generator = make_signalfx_payload(request_id_dimension="request.id", metric_prefix="app.")
    point = _point(generator([item]))
    assert point["dimensions"] == {"request_id": "r1", "method": "GET"}
    assert point["metric"] == "app.transaction"


def test_long_names_and_values_are_cut_to_the_limits() -> None:
    item = ContextTuple("m" * 400, 1, None, {"k" * 300: "v" * 300}, T)
    point = _point(signalfx_payload([item]))
    assert point["metric"] == "m" * 256
    assert point["dimensions"] == {"k" * 128: "v" * 256}


def test_several_tuples_fill_several_categories() -> None:
    items = [
        ContextTuple("a", 1, None, {}, T, "gauge"),
        ContextTuple("b", 2, None, {}, T, "counter"),
        ContextTuple("c", 3, None, {}, T, "cumulative_counter"),
        ContextTuple("d", 4, None, {}, T, "gauge"),
    ]
    body = signalfx_payload(items)
    assert {kind: [p["metric"] for p in points] for kind, points in body.items()} == {
        "gauge": ["a", "d"],
        "counter": ["b"],
        "cumulative_counter": ["c"],
    }


def test_headers_and_realm_url() -> None:
    assert signalfx_headers("secret")["X-SF-Token"] == "secret"
    assert signalfx_url("us1") == "https://ingest.us1.signalfx.com/v2/datapoint"
    with pytest.raises(ValueError):
        signalfx_url("us1/../evil")
    with pytest.raises(ValueError):
        signalfx_headers("")


# -- the chest against a real server ------------------------------------------------


@pytest.fixture
def sink() -> Iterator[HTTPSink]:
    with HTTPSink() as server:
        yield server


def test_the_signalfx_chest_posts_datapoints_with_the_token(sink: HTTPSink) -> None:
    chest = FlaskChestSignalFx(
        token="s3cr3t-token", url=sink.url + "/v2/datapoint", dimensions={"app": "shop"}
    )
    try:
        chest.exporter.export(
            recorded(
                ("r1", [("transaction", 1), ("response_time", 0.5)]),
                ("r2", [("transaction", 1)]),
                method="GET",
                route="/api",
            )
        )
        assert chest.exporter.force_flush(5_000)
        [post] = sink.posts("/v2/datapoint")  # one POST per export by default
        assert post.header("X-SF-Token") == "s3cr3t-token"
        assert post.header("Content-Type") == "application/json"
        dimensions = {"app": "shop", "method": "GET", "route": "/api"}
        assert post.json() == {
            "gauge": [
                {"metric": "transaction", "value": 1.0, "dimensions": dimensions,
                 "timestamp": 1_700_000_000_123},
                {"metric": "response_time", "value": 0.5, "dimensions": dimensions,
                 "timestamp": 1_700_000_000_123},
                {"metric": "transaction", "value": 1.0, "dimensions": dimensions,
                 "timestamp": 1_700_000_000_123},
            ]
        }  # fmt: skip
    finally:
        chest.shutdown(2_000)


def test_the_token_is_never_logged(sink: HTTPSink, caplog: pytest.LogCaptureFixture) -> None:
    sink.default = Reply(401, b'{"error": "bad token"}')
    chest = FlaskChestSignalFx(name="SFX", token="s3cr3t-token", url=sink.url + "/v2/datapoint")
    try:
        chest.exporter.export(recorded(("r1", [("transaction", 1)])))
        assert chest.exporter.force_flush(5_000) is False  # the point was refused
        assert chest.exporter.stats.dropped_rejected == 1
        messages = [record.getMessage() for record in caplog.records]
        assert any("HTTP 401" in message and "SFX" in message for message in messages)
        assert not any("s3cr3t" in message for message in messages)
        assert "s3cr3t" not in repr(chest) + repr(chest.exporter)
    finally:
        chest.shutdown(2_000)


def test_the_signalfx_chest_needs_exactly_one_of_realm_and_url() -> None:
    with pytest.raises(ValueError, match="realm"):
        FlaskChestSignalFx(token="t")
    with pytest.raises(ValueError, match="realm"):
        FlaskChestSignalFx(token="t", realm="us0", url="http://127.0.0.1:1/")
    chest = FlaskChestSignalFx(token="t", realm="eu0", logger=logging.getLogger("x"))
    try:
        assert chest.url == "https://ingest.eu0.signalfx.com/v2/datapoint"
        assert chest.exporter.verify is True
    finally:
        chest.shutdown(100)


# -- issue 13 item 9: what SignalFx refuses or merges ----------------------------------


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
        (2**63, float(2**63)),  # beyond int64: a double, not a JSON integer
        (-(2**63) - 1, float(-(2**63) - 1)),
        (10**30, 1e30),
    ],
)
def test_integers_beyond_64_bits_are_sent_as_doubles(value: int, sent: Any) -> None:
    point = _point(signalfx_payload([("x", value, None)]))
    assert point["value"] == sent and type(point["value"]) is type(sent)


def test_an_integer_too_large_for_a_double_is_left_out() -> None:
    assert signalfx_payload([("x", 10**400, None), ("y", 1, None)]) == {
        "gauge": [{"metric": "y", "value": 1, "dimensions": {}}]
    }


def test_two_names_that_sanitise_alike_are_reported_not_merged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    item = ContextTuple("x", 1, None, {"a.b": "dotted", "a_b": "underscored"}, T)
    with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
        first = _point(signalfx_payload([item]))
        again = _point(signalfx_payload([item]))
    assert first["dimensions"] == again["dimensions"] == {"a_b": "dotted"}
    [warning] = [r.getMessage() for r in caplog.records if "both become" in r.getMessage()]
    assert "'a.b'" in warning and "'a_b'" in warning and "left out" in warning


def test_an_up_down_counter_delta_is_sent_as_a_counter_its_level_as_a_gauge(
    sink: HTTPSink,
) -> None:
    """A delta UpDownCounter is a change (SignalFx sums counters); a
    cumulative one is the level (a gauge)."""
    from opentelemetry.sdk.metrics import MeterProvider, UpDownCounter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

    from flask_chest_otel.http_payload import HTTPPayloadMetricExporter

    bodies = []
    for temporality, category in (
        (AggregationTemporality.DELTA, "counter"),
        (AggregationTemporality.CUMULATIVE, "gauge"),
    ):
        reader = InMemoryMetricReader(preferred_temporality={UpDownCounter: temporality})
        provider = MeterProvider(metric_readers=[reader])
        provider.get_meter("app").create_up_down_counter("queue").add(-2)
        data = reader.get_metrics_data()
        provider.shutdown()
        assert data is not None
        exporter = HTTPPayloadMetricExporter(
            url=sink.url + "/v2/datapoint", payload_generator=signalfx_payload
        )
        [[item]] = exporter.context_tuple_lists(data)
        exporter.shutdown(100)
        body = signalfx_payload([item])
        assert list(body) == [category] and _point(body)["value"] == -2
        bodies.append(body)
    assert len(bodies) == 2


def test_the_signalfx_chest_passes_other_options_to_its_exporter(sink: HTTPSink) -> None:
    chest = FlaskChestSignalFx(token="t", url=sink.url + "/v2/datapoint", max_buffer_items=7)
    try:
        assert chest.exporter.max_buffer_items == 7
    finally:
        chest.shutdown(100)
