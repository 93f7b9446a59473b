"""@flask_chest through real Flask apps and the test client, into SQLite."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask, Response, abort, g, jsonify, redirect, stream_with_context

from flask_chest_otel import FlaskChestSQLite, flask_chest
from flask_chest_otel.decorator import flask_chest as flask_chest_from_decorator_module

from .conftest import SAMPLE_TRACKED, read_rows, sample_app


def test_decorator_is_importable_from_flask_chests_path() -> None:
    """flask-chest's import path `flask_chest_otel.decorator` is kept."""
    assert flask_chest_from_decorator_module is flask_chest


def test_sample_usage_records_get_and_post_variables(sqlite_chest: FlaskChestSQLite) -> None:
    """GET records transaction; POST records transaction then response_time."""
    client = sample_app([sqlite_chest]).test_client()
    assert client.get("/").status_code == 200
    assert client.post("/").status_code == 200
    assert sqlite_chest.force_flush()
    rows = read_rows(sqlite_chest.db_uri)
    assert [(r["name"], r["method"], r["route"]) for r in rows] == [
        ("transaction", "GET", "/"),
        ("transaction", "POST", "/"),
        ("response_time", "POST", "/"),
    ]
    assert rows[0]["value"] == 1.0 and rows[0]["field"] == "value"
    assert rows[1]["request_id"] == rows[2]["request_id"] != rows[0]["request_id"]
    assert 0 <= rows[2]["value"] < 1.0
    # The default generator: UUID4 strings, as str(uuid.uuid4()) prints them.
    for row in rows:
        assert str(uuid.UUID(row["request_id"])) == row["request_id"]
        assert uuid.UUID(row["request_id"]).version == 4


def test_route_attribute_is_the_url_rule_not_the_raw_path(sqlite_chest: FlaskChestSQLite) -> None:
    app = Flask(__name__)

    @app.route("/items/<int:item_id>")
    @flask_chest(chests=[sqlite_chest], tracked_vars={"GET": ["hits"]})
    def item(item_id: int) -> str:
        g.hits = item_id
        return "ok"

    client = app.test_client()
    for item_id in (1, 2, 3):
        client.get(f"/items/{item_id}")
    sqlite_chest.force_flush()
    rows = read_rows(sqlite_chest.db_uri)
    assert {r["route"] for r in rows} == {"/items/<int:item_id>"}
    assert [r["value"] for r in rows] == [1.0, 2.0, 3.0]


def test_tracked_vars_none_records_every_public_attribute_of_g(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[sqlite_chest])
    def index() -> str:
        g.alpha = 1
        g.beta = 2.5
        g._private = 3
        return "ok"

    app.test_client().get("/")
    sqlite_chest.force_flush()
    assert sorted(r["name"] for r in read_rows(sqlite_chest.db_uri)) == ["alpha", "beta"]


def test_method_absent_from_tracked_vars_records_nothing(sqlite_chest: FlaskChestSQLite) -> None:
    app = sample_app([sqlite_chest], tracked_vars={"POST": ["transaction"]})
    app.test_client().get("/")
    sqlite_chest.force_flush()
    assert read_rows(sqlite_chest.db_uri) == []


def test_unset_and_none_variables_are_skipped(sqlite_chest: FlaskChestSQLite) -> None:
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[sqlite_chest], tracked_vars={"GET": ["missing", "nothing", "present"]})
    def index() -> str:
        g.nothing = None
        g.present = 7
        return "ok"

    app.test_client().get("/")
    sqlite_chest.force_flush()
    assert [r["name"] for r in read_rows(sqlite_chest.db_uri)] == ["present"]


def test_request_id_comes_from_the_generator_cut_to_255_and_left_on_g(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    seen: list[str] = []
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(
        chests=[sqlite_chest], tracked_vars={"GET": ["x"]}, request_id_generator=lambda: "r" * 300
    )
    def index() -> str:
        g.x = 1
        seen.append(g.custom_request_id)
        return "ok"

    app.test_client().get("/")
    sqlite_chest.force_flush()
    assert seen == ["r" * 255]
    assert read_rows(sqlite_chest.db_uri)[0]["request_id"] == "r" * 255


def test_sample_generator_of_formatted_datetimes_is_used(sqlite_chest: FlaskChestSQLite) -> None:
    from datetime import datetime

    app = sample_app(
        [sqlite_chest], request_id_generator=lambda: datetime.now().strftime("%Y%m%d%H%M%S%f")
    )
    app.test_client().post("/")
    sqlite_chest.force_flush()
    request_id = read_rows(sqlite_chest.db_uri)[0]["request_id"]
    assert len(request_id) == 20 and request_id.isdigit()


def test_non_string_request_id_is_converted_with_str(sqlite_chest: FlaskChestSQLite) -> None:
    app = sample_app([sqlite_chest], request_id_generator=lambda: 12345)
    app.test_client().get("/")
    sqlite_chest.force_flush()
    assert read_rows(sqlite_chest.db_uri)[0]["request_id"] == "12345"


@pytest.mark.parametrize("result", [None, ""])
def test_generator_returning_none_or_empty_falls_back_to_uuid(
    sqlite_chest: FlaskChestSQLite, result: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = sample_app([sqlite_chest], request_id_generator=lambda: result)
    with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
        assert app.test_client().get("/").status_code == 200
    sqlite_chest.force_flush()
    uuid.UUID(read_rows(sqlite_chest.db_uri)[0]["request_id"])


def failing_generator() -> str:
    raise RuntimeError("id service down")


def test_failing_generator_is_logged_and_replaced_by_default(
    sqlite_chest: FlaskChestSQLite, caplog: pytest.LogCaptureFixture
) -> None:
    """raise_exceptions=False (default): the request goes on with a UUID4."""
    app = sample_app([sqlite_chest], request_id_generator=failing_generator)
    with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
        assert app.test_client().post("/").status_code == 200
    assert "id service down" in caplog.text
    sqlite_chest.force_flush()
    rows = read_rows(sqlite_chest.db_uri)
    assert len(rows) == 2
    uuid.UUID(rows[0]["request_id"])


def test_failing_generator_propagates_with_raise_exceptions(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    app = sample_app([sqlite_chest], request_id_generator=failing_generator, raise_exceptions=True)
    app.testing = True
    with pytest.raises(RuntimeError, match="id service down"):
        app.test_client().get("/")


def _return_str() -> Any:
    return "text"


def _return_tuple() -> Any:
    return "created", 201, {"X-Test": "1"}


def _return_dict() -> Any:
    return {"ok": True}


def _return_list() -> Any:
    return [1, 2]


def _return_jsonify() -> Any:
    return jsonify(ok=True)


def _return_response() -> Any:
    return Response("raw", status=202, mimetype="text/plain")


def _return_redirect() -> Any:
    return redirect("/elsewhere")


def _return_stream() -> Any:
    def chunks() -> Any:
        yield "a"
        yield "b"

    return Response(stream_with_context(chunks()))


@pytest.mark.parametrize(
    "make_response, status",
    [
        (_return_str, 200),
        (_return_tuple, 201),
        (_return_dict, 200),
        (_return_list, 200),
        (_return_jsonify, 200),
        (_return_response, 202),
        (_return_redirect, 302),
        (_return_stream, 200),
    ],
)
def test_any_flask_response_type_is_returned_unchanged_and_recorded(
    sqlite_chest: FlaskChestSQLite, make_response: Callable[[], Any], status: int
) -> None:
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[sqlite_chest], tracked_vars={"GET": ["transaction"]})
    def index() -> Any:
        g.transaction = 1
        return make_response()

    plain_app = Flask(__name__)
    plain_app.add_url_rule("/", "index", make_response)
    decorated = app.test_client().get("/")
    decorated_result = (decorated.status_code, decorated.get_data())
    plain = plain_app.test_client().get("/")
    assert decorated_result == (plain.status_code, plain.get_data())
    assert decorated_result[0] == status
    sqlite_chest.force_flush()
    assert len(read_rows(sqlite_chest.db_uri)) == 1


def test_async_views_are_recorded(sqlite_chest: FlaskChestSQLite) -> None:
    app = Flask(__name__)

    @app.route("/", methods=["POST"])
    @flask_chest(chests=[sqlite_chest], tracked_vars={"POST": ["transaction", "response_time"]})
    async def index() -> str:
        g.transaction = 1
        g.response_time = 0.25
        return "async"

    response = app.test_client().post("/")
    assert response.data == b"async"
    sqlite_chest.force_flush()
    assert [(r["name"], r["value"]) for r in read_rows(sqlite_chest.db_uri)] == [
        ("transaction", 1.0),
        ("response_time", 0.25),
    ]


class ViewError(Exception):
    pass


def test_view_exception_propagates_unchanged_and_set_variables_are_recorded(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    error = ViewError("boom")
    app = Flask(__name__)
    app.testing = True

    @app.route("/")
    @flask_chest(chests=[sqlite_chest], tracked_vars={"GET": ["transaction", "later"]})
    def index() -> str:
        g.transaction = 1
        raise error

    with pytest.raises(ViewError) as raised:
        app.test_client().get("/")
    assert raised.value is error
    sqlite_chest.force_flush()
    assert [r["name"] for r in read_rows(sqlite_chest.db_uri)] == ["transaction"]


def test_abort_gives_its_error_response_and_records(sqlite_chest: FlaskChestSQLite) -> None:
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[sqlite_chest], tracked_vars={"GET": ["transaction"]})
    def index() -> str:
        g.transaction = 1
        abort(404)

    assert app.test_client().get("/").status_code == 404
    sqlite_chest.force_flush()
    assert len(read_rows(sqlite_chest.db_uri)) == 1


def test_recording_error_with_raise_exceptions_does_not_mask_the_view_error(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    class Unconvertible:
        def __float__(self) -> float:
            raise ArithmeticError("no float")

        def __str__(self) -> str:
            return "unconvertible"

    error = ViewError("view failed")
    app = Flask(__name__)
    app.testing = True

    @app.route("/")
    @flask_chest(chests=[sqlite_chest], tracked_vars={"GET": ["odd"]}, raise_exceptions=True)
    def index() -> str:
        g.odd = Unconvertible()
        raise error

    with pytest.raises(ViewError) as raised:
        app.test_client().get("/")
    assert raised.value is error


def test_blueprint_routes_record_their_full_rule(sqlite_chest: FlaskChestSQLite) -> None:
    blueprint = Blueprint("api", __name__, url_prefix="/api")

    @blueprint.route("/orders/<order_id>", methods=["POST"])
    @flask_chest(chests=[sqlite_chest], tracked_vars={"POST": ["transaction"]})
    def order(order_id: str) -> str:
        g.transaction = 1
        return order_id

    app = Flask(__name__)
    app.register_blueprint(blueprint)
    assert app.test_client().post("/api/orders/42").data == b"42"
    sqlite_chest.force_flush()
    assert read_rows(sqlite_chest.db_uri)[0]["route"] == "/api/orders/<order_id>"


def test_many_routes_share_one_chest_without_instrument_conflicts(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    app = Flask(__name__)
    for number in range(20):

        @flask_chest(chests=[sqlite_chest], tracked_vars={"GET": ["transaction"]})
        def view() -> str:
            g.transaction = 1
            return "ok"

        app.add_url_rule(f"/r{number}", f"r{number}", view)
    client = app.test_client()
    for number in range(20):
        client.get(f"/r{number}")
    sqlite_chest.force_flush()
    rows = read_rows(sqlite_chest.db_uri)
    assert sorted(r["route"] for r in rows) == sorted(f"/r{n}" for n in range(20))


def test_decorator_on_two_apps_in_one_process(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    chest = make_sqlite_chest()
    first, second = sample_app([chest]), sample_app([chest])
    first.test_client().get("/")
    second.test_client().post("/")
    chest.force_flush()
    assert [r["method"] for r in read_rows(chest.db_uri)] == ["GET", "POST", "POST"]


def test_a_route_sends_only_to_the_chests_it_names(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    chest_a, chest_b = make_sqlite_chest("A"), make_sqlite_chest("B")
    app = Flask(__name__)

    @app.route("/a")
    @flask_chest(chests=[chest_a], tracked_vars={"GET": ["only_a"]})
    def route_a() -> str:
        g.only_a = 1
        return "a"

    @app.route("/ab")
    @flask_chest(chests=[chest_a, chest_b], tracked_vars={"GET": ["both"]})
    def route_ab() -> str:
        g.both = 2
        return "ab"

    client = app.test_client()
    client.get("/a")
    client.get("/ab")
    chest_a.force_flush()
    chest_b.force_flush()
    assert [r["name"] for r in read_rows(chest_a.db_uri)] == ["only_a", "both"]
    assert [r["name"] for r in read_rows(chest_b.db_uri)] == ["both"]


def test_unicode_and_special_variable_names_are_recorded(sqlite_chest: FlaskChestSQLite) -> None:
    app = Flask(__name__)

    @app.route("/")
    @flask_chest(chests=[sqlite_chest], tracked_vars={"GET": ["température", "a b,c=d"]})
    def index() -> str:
        g.température = 21.5
        setattr(g, "a b,c=d", 1)
        return "ok"

    app.test_client().get("/")
    sqlite_chest.force_flush()
    assert [r["name"] for r in read_rows(sqlite_chest.db_uri)] == ["température", "a b,c=d"]


def test_each_point_carries_its_requests_time_in_nanoseconds(
    sqlite_chest: FlaskChestSQLite,
) -> None:
    client = sample_app([sqlite_chest]).test_client()
    windows = []
    for _ in range(5):
        before = time.time_ns()
        client.post("/")
        windows.append((before, time.time_ns()))
        time.sleep(0.01)
    sqlite_chest.force_flush()
    rows = read_rows(sqlite_chest.db_uri, "WHERE name = 'transaction'")
    assert len(rows) == 5
    for row, (before, after) in zip(rows, windows, strict=True):
        assert before <= row["time_unix_nano"] <= after
        assert row["time"].startswith(time.strftime("%Y-", time.gmtime(before / 1e9)))
    # Both variables of one request share its time.
    pairs = read_rows(sqlite_chest.db_uri, "WHERE request_id = ?", (rows[0]["request_id"],))
    assert len({r["time_unix_nano"] for r in pairs}) == 1


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"tracked_vars": {"FETCH": ["x"]}}, ValueError, "'FETCH' is not an HTTP method"),
        ({"tracked_vars": {"GET": "transaction"}}, TypeError, "must be a list"),
        ({"tracked_vars": ["transaction"]}, TypeError, "must map HTTP methods"),
        ({"tracked_vars": {"GET": [1]}}, TypeError, "is not a variable name"),
        ({"request_id_generator": "abc"}, TypeError, "must be callable"),
    ],
)
def test_bad_decorator_arguments_fail_at_decoration_with_a_clear_error(
    sqlite_chest: FlaskChestSQLite, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        flask_chest(chests=[sqlite_chest], **options)


@pytest.mark.parametrize("chests", [[], None, ["not a chest"]])
def test_chests_must_be_a_list_of_chests(chests: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        flask_chest(chests=chests, tracked_vars=SAMPLE_TRACKED)


def test_lower_case_methods_in_tracked_vars_are_accepted(sqlite_chest: FlaskChestSQLite) -> None:
    app = sample_app([sqlite_chest], tracked_vars={"get": ["transaction"]})
    app.test_client().get("/")
    sqlite_chest.force_flush()
    assert len(read_rows(sqlite_chest.db_uri)) == 1


def test_export_errors_never_reach_the_request(tmp_path: Any) -> None:
    """A chest whose database cannot be opened still serves every request."""
    chest = FlaskChestSQLite(db_uri=str(tmp_path / "missing-dir" / "db.sqlite3"), retry_max=1.0)
    try:
        client = sample_app([chest]).test_client()
        assert all(client.post("/").status_code == 200 for _ in range(20))
        assert chest.force_flush(timeout_millis=300) is False
        assert chest.exporter.stats.buffered == 40
    finally:
        chest.shutdown(timeout_millis=100)
    assert chest.exporter.stats.dropped_shutdown == 40


def test_default_request_ids_are_distinct_rfc_4122_version_4_uuids() -> None:
    from flask_chest_otel.decorator import default_request_id

    ids = [default_request_id() for _ in range(2_000)]
    assert len(set(ids)) == 2_000
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert (str(parsed), parsed.version, parsed.variant) == (
            request_id,
            4,
            uuid.RFC_4122,
        )
