"""What every point of a request carries besides its value (issue 26, items
1-3): the response's status code, the request's duration
(``record_duration=True``) and its tags (``tag_vars``), through the
decorator and the extension, into real SQLite files, VictoriaMetrics,
InfluxDB 1.6, an HTTP endpoint and SignalFx's payload."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, abort, g, jsonify, redirect, request

from flask_chest_otel import FlaskChestCustomWriter, FlaskChestOTel, FlaskChestSQLite, flask_chest
from flask_chest_otel._chest import Chest
from flask_chest_otel.extension import FlaskChestExtension
from flask_chest_otel.influxdb import FlaskChestInfluxDB
from flask_chest_otel.signalfx import FlaskChestSignalFx
from flask_chest_otel.testing import RecordingChest, capture_measurements

from .conftest import read_rows, wait_for
from .http_sink import HTTPSink
from .servers import InfluxDB1, VictoriaMetrics
from .test_otel_chest import KeepingExporter


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resource from the environment is test_otel_environment.py's."""
    for variable in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def recording() -> Iterator[RecordingChest]:
    chest = RecordingChest()
    yield chest
    chest.shutdown(timeout_millis=1_000)


class ViewError(Exception):
    pass


# -- 1. the status code ---------------------------------------------------------

RESPONSES: list[tuple[str, Callable[[], Any], int]] = [
    ("text", lambda: "ok", 200),
    ("tuple", lambda: ("created", 201), 201),
    ("http-status", lambda: ("accepted", HTTPStatus.ACCEPTED), 202),
    ("status-text", lambda: ("gone", "410 GONE"), 410),
    ("headers", lambda: ("ok", {"X-A": "b"}), 200),
    ("status-and-headers", lambda: ("teapot", 418, {"X-A": "b"}), 418),
    ("response", lambda: Response("no", status=403), 403),
    ("jsonify-tuple", lambda: (jsonify(error="x"), 422), 422),
    ("response-in-tuple", lambda: (Response("x", status=409), {"X-A": "b"}), 409),
    ("redirect", lambda: redirect("/elsewhere"), 302),
    ("dict", lambda: {"a": 1}, 200),
    ("abort", lambda: abort(404), 404),
    ("abort-with-response", lambda: abort(Response("late", status=503)), 503),
]


@pytest.mark.parametrize(
    ("make", "status"), [(make, status) for _, make, status in RESPONSES],
    ids=[label for label, _, _ in RESPONSES],
)  # fmt: skip
def test_every_point_carries_the_status_the_client_gets(
    recording: RecordingChest, make: Callable[[], Any], status: int
) -> None:
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[recording], tracked_vars={"GET": ["a", "b"]})
    def index() -> Any:
        g.a, g.b = 1, 2.5
        return make()

    assert app.test_client().get("/").status_code == status
    measurements = recording.measurements
    assert [(m.name, m.status_code) for m in measurements] == [("a", status), ("b", status)]
    assert all(m.attributes == {} for m in measurements)


def test_a_view_that_raises_records_500_and_its_exception_propagates(
    recording: RecordingChest,
) -> None:
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.route("/")
    @flask_chest(chests=[recording], tracked_vars={"GET": ["a"]})
    def index() -> str:
        g.a = 1
        raise ViewError("boom")

    assert app.test_client().get("/").status_code == 500
    assert [(m.name, m.status_code) for m in recording.measurements] == [("a", 500)]


def test_sqlite_rows_have_the_status_code_column(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    chest = make_sqlite_chest()
    app = Flask(__name__)

    @app.route("/orders/<int:number>", methods=["POST"])
    @flask_chest(chests=[chest], tracked_vars={"POST": ["transaction"]})
    def orders(number: int) -> Any:
        g.transaction = 1
        if number == 3:
            raise ViewError("boom")
        return ("created", 201) if number == 1 else ("refused", 409)

    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    assert [client.post(f"/orders/{n}").status_code for n in (1, 2, 3)] == [201, 409, 500]
    assert chest.force_flush(10_000)
    rows = read_rows(chest.db_uri)
    assert [row["status_code"] for row in rows] == [201, 409, 500]
    connection = sqlite3.connect(chest.db_uri)
    try:
        assert connection.execute(
            "SELECT typeof(status_code) FROM flask_chest GROUP BY 1"
        ).fetchall() == [("integer",)]
    finally:
        connection.close()


#: The table as this library made it before the status code (0.1.0).
_TABLE_BEFORE_STATUS = """
CREATE TABLE flask_chest (
    id INTEGER PRIMARY KEY, time TEXT NOT NULL, time_unix_nano INTEGER NOT NULL,
    name TEXT NOT NULL, field TEXT NOT NULL, value, value_text TEXT, value_type TEXT,
    request_id TEXT, method TEXT, route TEXT, tags TEXT, trace_id TEXT, span_id TEXT
);
INSERT INTO flask_chest (time, time_unix_nano, name, field, value, value_type, request_id)
VALUES ('2024-01-01T00:00:00.000000000Z', 1704067200000000000, 'transaction', 'value', 1,
        'int', 'old');
"""


def test_an_existing_table_gets_the_status_code_column_in_place(
    tmp_path: Path, make_sqlite_chest: Callable[..., FlaskChestSQLite]
) -> None:
    """The column is added with ALTER TABLE; the old rows stay, with NULL."""
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(_TABLE_BEFORE_STATUS)
    connection.close()
    chest = make_sqlite_chest(db_uri=str(path))
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[chest], tracked_vars={"GET": ["transaction"]})
    def index() -> str:
        g.transaction = 1
        return "ok"

    app.test_client().get("/")
    assert chest.force_flush(10_000)
    rows = read_rows(path)
    assert [(row["request_id"] == "old", row["status_code"]) for row in rows] == [
        (True, None),
        (False, 200),
    ]


def test_the_extension_records_the_status_of_the_response_and_500_for_an_error(
    recording: RecordingChest,
) -> None:
    app = Flask(__name__)

    @app.route("/<int:number>")
    def index(number: int) -> Any:
        g.a = number
        if number == 3:
            raise ViewError("boom")
        return ("ok", 200) if number == 1 else ("nope", 404)

    FlaskChestExtension(app, chests=[recording], tracked_vars={"GET": ["a"]})
    client = app.test_client()
    assert [client.get(f"/{n}").status_code for n in (1, 2)] == [200, 404]
    with pytest.raises(ViewError):  # TESTING: propagated, teardown records
        app.testing = True
        client.get("/3")
    app.testing = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert client.get("/3").status_code == 500
    assert [(m.value, m.status_code) for m in recording.measurements] == [
        (1, 200), (2, 404), (3, 500), (3, 500),
    ]  # fmt: skip


# -- 2. record_duration ----------------------------------------------------------


def test_record_duration_records_the_views_seconds_as_the_float_duration(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    """Measured around the view: at least what the view slept, at most what
    the whole request took; for every method, tracked or not."""
    chest = make_sqlite_chest()
    app = Flask(__name__)

    @app.route("/", methods=["GET", "POST"])
    @flask_chest(chests=[chest], tracked_vars={"POST": ["transaction"]}, record_duration=True)
    def index() -> str:
        g.transaction = 1
        time.sleep(0.02)
        return "ok"

    client = app.test_client()
    outer = []
    for method in ("GET", "POST"):
        started = time.perf_counter()
        client.open("/", method=method)
        outer.append(time.perf_counter() - started)
    assert chest.force_flush(10_000)
    rows = sorted(read_rows(chest.db_uri), key=lambda row: (row["time_unix_nano"], row["name"]))
    assert [(row["method"], row["name"], row["value_type"]) for row in rows] == [
        ("GET", "duration", "float"),
        ("POST", "duration", "float"),
        ("POST", "transaction", "int"),
    ]
    durations = [row["value"] for row in rows if row["name"] == "duration"]
    for duration, whole in zip(durations, outer, strict=True):
        assert 0.02 <= duration <= whole


def test_the_extension_records_the_duration_when_configured(recording: RecordingChest) -> None:
    app = Flask(__name__)
    app.config["FLASK_CHEST_RECORD_DURATION"] = True

    @app.route("/")
    def index() -> str:
        g.duration = "mine"  # tracked_vars=None: the measured duration wins
        g.a = 1
        return "ok"

    FlaskChestExtension(app, chests=[recording])
    app.test_client().get("/")
    measurements = recording.measurements
    assert [m.name for m in measurements] == ["a", "duration"]
    assert isinstance(measurements[1].value, float) and measurements[1].value > 0


def test_tracking_duration_and_recording_it_is_refused(recording: RecordingChest) -> None:
    with pytest.raises(ValueError, match="record_duration"):
        flask_chest(chests=[recording], tracked_vars={"GET": ["duration"]}, record_duration=True)


# -- 3. tag_vars --------------------------------------------------------------------


def test_tag_vars_become_tags_of_every_point_of_the_request_not_values(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    """str() of the value, cut at 256 characters; an unset, None or empty
    variable is no tag; a tag variable is no value under tracked_vars=None."""
    chest = make_sqlite_chest()
    app = Flask(__name__)
    sets: list[dict[str, Any]] = [
        {"tenant": "acme", "plan": 3, "a": 1},
        {"tenant": "x" * 300, "a": 2},
        {"tenant": None, "plan": "", "a": 3},
    ]

    @app.route("/<int:number>")
    @flask_chest(chests=[chest], tag_vars=["tenant", "plan"], record_duration=True)
    def index(number: int) -> str:
        for name, value in sets[number].items():
            setattr(g, name, value)
        return "ok"

    client = app.test_client()
    for number in range(3):
        client.get(f"/{number}")
    assert chest.force_flush(10_000)
    rows = sorted(read_rows(chest.db_uri), key=lambda row: (row["time_unix_nano"], row["name"]))
    assert [row["name"] for row in rows] == ["a", "duration"] * 3
    tags = [json.loads(row["tags"]) if row["tags"] else None for row in rows]
    assert tags == [
        {"tenant": "acme", "plan": "3"}, {"tenant": "acme", "plan": "3"},
        {"tenant": "x" * 256}, {"tenant": "x" * 256},
        None, None,
    ]  # fmt: skip


def test_tag_vars_per_method_as_tracked_vars(recording: RecordingChest) -> None:
    app = Flask(__name__)

    @app.route("/", methods=["GET", "POST"])
    @flask_chest(
        chests=[recording],
        tracked_vars={"GET": ["a"], "POST": ["a"]},
        tag_vars={"POST": ["user"]},
    )
    def index() -> str:
        g.a, g.user = 1, "u-7"
        return "ok"

    client = app.test_client()
    client.get("/")
    client.post("/")
    assert [(m.method, m.attributes) for m in recording.measurements] == [
        ("GET", {}),
        ("POST", {"user": "u-7"}),
    ]


def test_tags_reach_the_view_measurements_and_capture(recording: RecordingChest) -> None:
    """chest_meter() measurements carry the tags too; their own attributes win."""
    from flask_chest_otel import chest_meter

    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[recording], tracked_vars={"GET": ["a"]}, tag_vars=["tenant", "shard"])
    def index() -> str:
        g.a, g.tenant, g.shard = 1, "acme", "s1"
        chest_meter().create_histogram("db_time").record(0.25, {"shard": "s9"})
        return "ok"

    with capture_measurements() as captured:
        app.test_client().get("/")
    expected = [
        ("a", {"tenant": "acme", "shard": "s1"}),
        ("db_time", {"shard": "s9", "tenant": "acme"}),
    ]
    assert [(m.name, m.attributes) for m in captured] == expected
    assert [(m.name, m.attributes) for m in recording.measurements] == expected


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"tag_vars": "tenant"}, TypeError, "tag_vars must be a list"),
        ({"tag_vars": [""]}, TypeError, "is not a variable name"),
        ({"tag_vars": {"FETCH": ["x"]}}, ValueError, "tag_vars: 'FETCH' is not an HTTP method"),
        ({"tag_vars": ["route"]}, ValueError, "'route' is a name the recorded points use"),
        ({"tag_vars": ["request_id"]}, ValueError, "rename g.request_id"),
        (
            {"tracked_vars": {"GET": ["tenant", "a"]}, "tag_vars": ["tenant"]},
            ValueError,
            "as a value or as a tag",
        ),
    ],
)
def test_bad_tag_vars_fail_at_decoration_with_a_clear_error(
    recording: RecordingChest, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        flask_chest(chests=[recording], **options)


def test_the_extension_reads_tag_vars_from_the_config_and_names_the_key(
    recording: RecordingChest,
) -> None:
    app = Flask(__name__)
    app.config["FLASK_CHEST_TAG_VARS"] = ["tenant"]

    @app.route("/")
    def index() -> str:
        g.tenant, g.a = "acme", 1
        return "ok"

    FlaskChestExtension(app, chests=[recording])
    app.test_client().get("/")
    assert [(m.name, m.attributes) for m in recording.measurements] == [("a", {"tenant": "acme"})]

    other = Flask(__name__)
    other.config["FLASK_CHEST_TAG_VARS"] = ["method"]
    with pytest.raises(ValueError, match="FlaskChestExtension: FLASK_CHEST_TAG_VARS: 'method'"):
        FlaskChestExtension(other, chests=[recording])


# -- every backend --------------------------------------------------------------


def _shop_app(chests: list[Any]) -> Flask:
    """POST /orders records transaction and duration, tagged with the tenant."""
    app = Flask(__name__)
    ids = iter(f"req-{n}" for n in range(100))

    @app.route("/orders", methods=["POST"])
    @flask_chest(
        chests=chests,
        tracked_vars={"POST": ["transaction"]},
        tag_vars=["tenant"],
        record_duration=True,
        request_id_generator=lambda: next(ids),
    )
    def orders() -> Any:
        g.transaction = 1
        g.tenant = request.args.get("tenant")
        return ("created", 201) if g.tenant else ("who?", 400)

    return app


def test_victoriametrics_series_carry_status_code_and_tags(
    vm: VictoriaMetrics, chests: list[Chest]
) -> None:
    chest = FlaskChestInfluxDB(
        name="InfluxDB", url=vm.url, token="t", org="o", bucket="status-tags",
        custom_tags={"app": "status-tags"},
    )  # fmt: skip
    chests.append(chest)
    client = _shop_app([chest]).test_client()
    assert client.post("/orders?tenant=acme corp, inc.").status_code == 201
    assert client.post("/orders").status_code == 400
    assert chest.force_flush(10_000)

    def labels() -> list[dict[str, str]]:
        found = vm.export('{__name__=~"(transaction|duration)_value", app="status-tags"}')
        return sorted((s["metric"] for s in found), key=lambda m: (m["request_id"], m["__name__"]))

    assert wait_for(lambda: len(labels()) == 4)
    assert labels() == [
        {"__name__": name, "app": "status-tags", "method": "POST", "route": "/orders",
         "request_id": request_id, "status_code": status, **tenant}
        for request_id, status, tenant in (
            ("req-0", "201", {"tenant": "acme corp, inc."}), ("req-1", "400", {})
        )
        for name in ("duration_value", "transaction_value")
    ]  # fmt: skip


def test_influxdb_1_6_stores_status_code_and_tags_as_tags(
    influxd: InfluxDB1, chests: list[Chest]
) -> None:
    """The real parser reads the tags back as written, escapes included."""
    influxd.create_database("tags")
    chest = FlaskChestInfluxDB(name="InfluxDB", url=influxd.url, database="tags")
    chests.append(chest)
    client = _shop_app([chest]).test_client()
    client.post("/orders?tenant=a=b, c\\d")
    assert chest.force_flush(10_000)
    result = influxd.query('SHOW TAG VALUES FROM "transaction" WITH KEY IN (status_code, tenant)',
                           "tags")  # fmt: skip
    values = result["results"][0]["series"][0]["values"]
    assert sorted(values) == [["status_code", "201"], ["tenant", "a=b, c\\d"]]


def test_the_http_writer_context_tuples_carry_status_code_and_tags(
    sink: HTTPSink, chests: list[Chest]
) -> None:
    def payload(tuples: list[Any]) -> Any:
        return [[*item, item.attributes] for item in tuples]

    chest = FlaskChestCustomWriter(name="HTTP", url=sink.url + "/in", payload_generator=payload)
    chests.append(chest)
    _shop_app([chest]).test_client().post("/orders?tenant=acme")
    assert chest.force_flush(10_000)
    [post] = sink.posts()
    body = post.json()
    assert [item[0] for item in body] == ["transaction", "duration"]
    assert body[0] == [
        "transaction", 1, "req-0",
        {"method": "POST", "route": "/orders", "status_code": 201, "tenant": "acme"},
    ]  # fmt: skip


def test_signalfx_datapoints_have_status_code_and_tag_dimensions(
    sink: HTTPSink, chests: list[Chest]
) -> None:
    chest = FlaskChestSignalFx(token="t", url=sink.url + "/v2/datapoint")
    chests.append(chest)
    _shop_app([chest]).test_client().post("/orders?tenant=acme")
    assert chest.force_flush(10_000)
    [post] = sink.posts()
    gauges = post.json()["gauge"]
    assert [point["metric"] for point in gauges] == ["transaction", "duration"]
    assert gauges[0]["dimensions"] == {
        "method": "POST", "route": "/orders", "status_code": "201", "tenant": "acme",
    }  # fmt: skip


def test_otel_points_carry_http_response_status_code_and_tags(chests: list[Chest]) -> None:
    exporter = KeepingExporter()
    chest = FlaskChestOTel(exporter)
    chests.append(chest)
    _shop_app([chest]).test_client().post("/orders?tenant=acme")
    assert chest.force_flush(10_000)
    points = {
        metric.name: point
        for data in exporter.exported
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        for point in metric.data.data_points
    }
    assert set(points) == {"transaction", "duration"}
    assert dict(points["transaction"].attributes or {}) == {
        "request_id": "req-0",
        "http.request.method": "POST",
        "http.route": "/orders",
        "http.response.status_code": 201,
        "tenant": "acme",
    }
    assert isinstance(points["duration"].value, float)
