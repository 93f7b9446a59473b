"""flask_chest_otel.testing: RecordingChest and capture_measurements."""

from __future__ import annotations

import doctest
import time
from collections.abc import Iterator
from datetime import timezone

import pytest
from flask import Flask, g

import flask_chest_otel.testing
from flask_chest_otel import Chest, FlaskChestSQLite, flask_chest
from flask_chest_otel._recorder import RECORDER, Recorder
from flask_chest_otel.extension import FlaskChestExtension
from flask_chest_otel.testing import CapturedMeasurement, RecordingChest, capture_measurements

from .conftest import SAMPLE_TRACKED, read_rows, sample_app


@pytest.fixture
def chest() -> Iterator[RecordingChest]:
    chest = RecordingChest()
    yield chest
    chest.shutdown(timeout_millis=5_000)


def test_docstring_examples_run_as_shown() -> None:
    results = doctest.testmod(flask_chest_otel.testing, optionflags=doctest.ELLIPSIS)
    assert results.attempted >= 10
    assert results.failed == 0


def test_recording_chest_is_a_real_chest(chest: RecordingChest) -> None:
    assert isinstance(chest, Chest)
    assert repr(chest) == "RecordingChest(name='Recording')"


def test_sample_usage_measurements_come_in_request_order(chest: RecordingChest) -> None:
    client = sample_app([chest]).test_client()
    for method in ("GET", "POST", "GET", "POST"):
        client.open("/", method=method)
    measurements = chest.measurements
    assert [(m.name, m.method, m.route) for m in measurements] == [
        ("transaction", "GET", "/"),
        ("transaction", "POST", "/"),
        ("response_time", "POST", "/"),
        ("transaction", "GET", "/"),
        ("transaction", "POST", "/"),
        ("response_time", "POST", "/"),
    ]
    request_ids = [m.request_id for m in measurements]
    assert request_ids[1] == request_ids[2] and len(set(request_ids)) == 4
    times = [m.time_unix_nano for m in measurements]
    assert times == sorted(times)


def test_measurement_time_is_the_requests_time_in_utc(chest: RecordingChest) -> None:
    before = time.time_ns()
    sample_app([chest]).test_client().get("/")
    after = time.time_ns()
    (measurement,) = chest.measurements
    assert before <= measurement.time_unix_nano <= after
    assert measurement.time.tzinfo is timezone.utc
    assert abs(measurement.time.timestamp() * 1e9 - measurement.time_unix_nano) < 2_000


def test_text_values_are_captured_as_text(chest: RecordingChest) -> None:
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[chest], tracked_vars={"GET": ["user", "hits"]})
    def index() -> str:
        g.user = "alice"
        g.hits = "42"
        return "ok"

    app.test_client().get("/")
    assert [(m.name, m.value) for m in chest.measurements] == [("user", "alice"), ("hits", "42")]
    assert all(m.attributes == {} for m in chest.measurements)


def test_clear_forgets_what_was_received(chest: RecordingChest) -> None:
    client = sample_app([chest]).test_client()
    client.get("/")
    chest.clear()
    assert chest.measurements == []
    client.post("/")
    assert [m.name for m in chest.measurements] == ["transaction", "response_time"]


def test_recording_chest_only_gets_routes_decorated_with_it(
    chest: RecordingChest, sqlite_chest: FlaskChestSQLite
) -> None:
    sample_app([sqlite_chest]).test_client().get("/")
    assert chest.measurements == []


def test_recording_chest_stands_in_for_real_chests_in_the_extensions_config(
    chest: RecordingChest,
) -> None:
    """The usual test setup: FLASK_CHEST_CHESTS replaced by a RecordingChest."""
    app = Flask(__name__)
    app.config["FLASK_CHEST_CHESTS"] = [chest]

    @app.route("/checkout", methods=["POST"])
    def checkout() -> str:
        g.transaction = 1
        return "ok"

    FlaskChestExtension(app, tracked_vars=SAMPLE_TRACKED)
    app.test_client().post("/checkout")
    assert [(m.name, m.value, m.route) for m in chest.measurements] == [
        ("transaction", 1.0, "/checkout")
    ]


def test_capture_measurements_sees_every_route_whatever_its_chests(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    client = sample_app([sqlite_chest]).test_client()
    with capture_measurements() as measurements:
        client.post("/")
        # Synchronous: there as soon as the request returned, no flush needed.
        assert [m.name for m in measurements] == ["transaction", "response_time"]
    client.get("/")  # after the block: not captured
    assert len(measurements) == 2
    assert measurements[0].method == "POST" and measurements[0].route == "/"
    # The chest still receives everything.
    sqlite_chest.force_flush()
    assert len(read_rows(sqlite_chest.db_uri)) == 3


def test_nested_captures_each_see_their_own_block(chest: RecordingChest) -> None:
    client = sample_app([chest]).test_client()
    with capture_measurements() as outer:
        client.get("/")
        with capture_measurements() as inner:
            client.post("/")
        client.get("/")
    assert [m.method for m in inner] == ["POST", "POST"]
    assert [m.method for m in outer] == ["GET", "POST", "POST", "GET"]


def test_capture_restores_the_recorder_even_on_error(chest: RecordingChest) -> None:
    with pytest.raises(ZeroDivisionError), capture_measurements():
        1 / 0  # noqa: B018
    assert "record_many" not in vars(RECORDER)
    assert RECORDER.record_many.__func__ is Recorder.record_many  # type: ignore[attr-defined]


def test_captured_measurement_compares_by_value() -> None:
    first = CapturedMeasurement("x", 1.0, "id", "GET", "/", 5)
    assert first == CapturedMeasurement("x", 1.0, "id", "GET", "/", 5)
    assert first != CapturedMeasurement("x", 2.0, "id", "GET", "/", 5)
