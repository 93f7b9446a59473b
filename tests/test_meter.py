"""chest_meter(): OpenTelemetry API instruments whose measurements join the
current request's group, through real Flask apps."""

from __future__ import annotations

import logging
import threading

import pytest
from flask import Flask, g
from opentelemetry import metrics

from flask_chest_otel import FlaskChest, chest_meter, flask_chest
from flask_chest_otel.extension import FlaskChestExtension
from flask_chest_otel.http_payload import ContextTuple
from flask_chest_otel.testing import RecordingChest


class Writes(FlaskChest):
    def __init__(self) -> None:
        self.calls: list[list[ContextTuple]] = []
        self.lock = threading.Lock()

    def write(self, context_tuple_list: list[ContextTuple]) -> None:
        with self.lock:
            self.calls.append(context_tuple_list)


def helper_deep_in_the_view(rows: int) -> None:
    chest_meter().create_counter("rows_read").add(rows, {"table": "orders"})


def test_measurements_from_the_view_join_the_requests_group_after_its_tracked_variables() -> None:
    chest = RecordingChest()
    writes = Writes()
    app = Flask(__name__)

    @app.route("/orders", methods=["POST"])
    @flask_chest(chests=[chest, writes], tracked_vars={"POST": ["transaction", "response_time"]})
    def orders() -> str:
        chest_meter().create_histogram("db_time", unit="s").record(0.012, {"table": "orders"})
        helper_deep_in_the_view(3)
        g.transaction = 1
        g.response_time = 0.25
        return "ok"

    client = app.test_client()
    try:
        for _ in range(3):
            assert client.post("/orders").status_code == 200
        measured = chest.measurements
        assert writes.force_flush()
    finally:
        chest.shutdown()
    assert [(m.name, m.value) for m in measured] == [
        ("transaction", 1), ("response_time", 0.25), ("db_time", 0.012), ("rows_read", 3),
    ] * 3  # fmt: skip
    for request_measurements in (measured[0:4], measured[4:8], measured[8:12]):
        assert len({(m.request_id, m.time_unix_nano, m.route) for m in request_measurements}) == 1
    assert measured[2].attributes == {"table": "orders"}
    assert len({m.request_id for m in measured}) == 3
    # One group per request: the user's chest gets all four in one write.
    assert [[item.name for item in call] for call in writes.calls] == [
        ["transaction", "response_time", "db_time", "rows_read"]
    ] * 3


def test_a_route_tracking_nothing_for_a_method_still_sends_what_the_view_measured() -> None:
    chest = RecordingChest()
    app = Flask(__name__)

    @app.route("/", methods=["GET"])
    @flask_chest(chests=[chest], tracked_vars={"POST": ["transaction"]})
    def index() -> str:
        chest_meter().create_gauge("queue_depth").set(4)
        return "ok"

    try:
        app.test_client().get("/")
        assert [(m.name, m.value, m.method) for m in chest.measurements] == [
            ("queue_depth", 4, "GET")
        ]
    finally:
        chest.shutdown()


def test_the_extension_routes_measure_too() -> None:
    chest = RecordingChest()
    app = Flask(__name__)
    FlaskChestExtension(app, chests=[chest], tracked_vars={"GET": ["transaction"]})

    @app.route("/")
    def index() -> str:
        chest_meter().create_up_down_counter("in_flight").add(-1)
        g.transaction = 1
        return "ok"

    try:
        app.test_client().get("/")
        assert [(m.name, m.value) for m in chest.measurements] == [
            ("transaction", 1), ("in_flight", -1)
        ]
    finally:
        chest.shutdown()


def test_a_measurement_outside_a_recorded_request_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chest = RecordingChest()
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[chest], tracked_vars={"GET": ["transaction"]})
    def index() -> str:
        g.transaction = 1
        return "ok"

    try:
        with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
            app.test_client().get("/")
            chest_meter().create_gauge("stray").set(1)  # after the request: no group
        assert [m.name for m in chest.measurements] == ["transaction"]
    finally:
        chest.shutdown()
    # Rate-limited process-wide: an earlier test may have taken this window's line.
    assert all("stray" in r.getMessage() for r in caplog.records if "outside" in r.getMessage())


def test_chest_meter_is_an_opentelemetry_api_meter() -> None:
    meter = chest_meter()
    assert isinstance(meter, metrics.Meter)
    assert isinstance(meter.create_counter("c"), metrics.Counter)
    assert isinstance(meter.create_histogram("h"), metrics.Histogram)
    assert isinstance(meter.create_up_down_counter("u"), metrics.UpDownCounter)
    assert meter.create_gauge("x") is meter.create_gauge("x")
