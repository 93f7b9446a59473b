"""FlaskChestExtension, the app-wide extension, through real Flask apps."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, abort, g
from flask.views import MethodView

from flask_chest_otel import FlaskChestSQLite, flask_chest
from flask_chest_otel._recorder import RECORDER
from flask_chest_otel.extension import FlaskChestExtension, flask_chest_exempt
from flask_chest_otel.testing import RecordingChest

from .conftest import SAMPLE_TRACKED, read_rows

SAMPLE_REQUEST_IDS = iter(f"req-{n}" for n in range(1_000_000))


def next_request_id() -> str:
    """An import-string target for FLASK_CHEST_REQUEST_ID_GENERATOR."""
    return next(SAMPLE_REQUEST_IDS)


@pytest.fixture
def make_chest() -> Iterator[Callable[[], RecordingChest]]:
    chests: list[RecordingChest] = []

    def make() -> RecordingChest:
        chest = RecordingChest()
        chests.append(chest)
        return chest

    yield make
    for chest in chests:
        chest.shutdown(timeout_millis=5_000)


@pytest.fixture
def chest(make_chest: Callable[[], RecordingChest]) -> RecordingChest:
    return make_chest()


def sample_views(app: Flask) -> None:
    """Two undecorated routes that set the sample's variables."""

    @app.route("/", methods=["GET", "POST"])
    def index() -> str:
        g.transaction = 1
        g.response_time = 0.5
        return "Hello, World!"

    @app.route("/items/<int:item_id>", methods=["GET", "POST"])
    def item(item_id: int) -> str:
        g.transaction = 1
        g.response_time = float(item_id)
        return "ok"


def names(chest: RecordingChest) -> list[tuple[str, str | None, str | None]]:
    return [(m.name, m.method, m.route) for m in chest.measurements]


def test_every_route_of_the_app_is_recorded_without_a_decorator(chest: RecordingChest) -> None:
    app = Flask(__name__)
    sample_views(app)
    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.post("/items/7").status_code == 200
    measurements = chest.measurements
    assert names(chest) == [
        ("transaction", "GET", "/"),
        ("transaction", "POST", "/items/<int:item_id>"),
        ("response_time", "POST", "/items/<int:item_id>"),
    ]
    assert measurements[2].value == 7.0
    assert measurements[1].request_id == measurements[2].request_id != measurements[0].request_id


def test_sqlite_chest_receives_the_extensions_measurements(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    """A real chest gets flask-chest's layout, as under the decorator."""
    sqlite_chest = make_sqlite_chest()
    app = Flask(__name__)
    sample_views(app)
    FlaskChestExtension(app, chests=[sqlite_chest], tracked_vars=SAMPLE_TRACKED)
    app.test_client().post("/")
    assert sqlite_chest.force_flush()
    rows = read_rows(sqlite_chest.db_uri)
    assert [(r["name"], r["field"], r["value"], r["method"], r["route"]) for r in rows] == [
        ("transaction", "value", 1.0, "POST", "/"),
        ("response_time", "value", 0.5, "POST", "/"),
    ]


def test_init_app_supports_the_application_factory_pattern(
    make_chest: Callable[[], RecordingChest],
) -> None:
    """One extension object, two apps, each configured by its own config."""
    flask_chest_ext = FlaskChestExtension(tracked_vars={"GET": ["transaction"]})
    first_chest, second_chest = make_chest(), make_chest()

    def create_app(chest: RecordingChest, tracked: dict[str, list[str]] | None) -> Flask:
        app = Flask(__name__)
        app.config["FLASK_CHEST_CHESTS"] = [chest]
        if tracked is not None:
            app.config["FLASK_CHEST_TRACKED_VARS"] = tracked
        sample_views(app)
        flask_chest_ext.init_app(app)
        return app

    first = create_app(first_chest, None)
    second = create_app(second_chest, {"GET": ["response_time"]})
    first.test_client().get("/")
    second.test_client().get("/")
    assert [m.name for m in first_chest.measurements] == ["transaction"]
    assert [m.name for m in second_chest.measurements] == ["response_time"]
    assert first.extensions["flask_chest_otel"] is flask_chest_ext
    assert second.extensions["flask_chest_otel"] is flask_chest_ext
    assert flask_chest_ext.chests_of(first) == (first_chest,)
    with second.app_context():
        assert flask_chest_ext.chests_of() == (second_chest,)


def test_init_app_sets_config_defaults_from_the_constructor(chest: RecordingChest) -> None:
    app = Flask(__name__)
    FlaskChestExtension(
        app, chests=[chest], tracked_vars=SAMPLE_TRACKED, excluded_routes=["/healthz"]
    )
    assert app.config["FLASK_CHEST_CHESTS"] == [chest]
    assert app.config["FLASK_CHEST_TRACKED_VARS"] == SAMPLE_TRACKED
    assert app.config["FLASK_CHEST_EXCLUDED_ROUTES"] == ("/healthz",)
    assert app.config["FLASK_CHEST_REQUEST_ID_GENERATOR"] is None
    assert app.config["FLASK_CHEST_RAISE_EXCEPTIONS"] is False


def test_config_values_win_over_constructor_arguments(chest: RecordingChest) -> None:
    app = Flask(__name__)
    app.config["FLASK_CHEST_TRACKED_VARS"] = {"POST": ["response_time"]}
    sample_views(app)
    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)
    app.test_client().post("/")
    assert [m.name for m in chest.measurements] == ["response_time"]


@pytest.mark.parametrize("second", ["same", "other"])
def test_registering_twice_on_one_app_is_refused(chest: RecordingChest, second: str) -> None:
    app = Flask("shop")
    extension = FlaskChestExtension(app, chests=[chest])
    again = extension if second == "same" else FlaskChestExtension(chests=[chest])
    with pytest.raises(RuntimeError, match="already registered on app 'shop'"):
        again.init_app(app)
    sample_views(app)
    app.test_client().get("/")
    assert len(chest.measurements) == 2  # the first registration only


def test_exempt_views_are_not_recorded(chest: RecordingChest) -> None:
    app = Flask(__name__)

    def logged(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        return wrapper

    @app.route("/healthz")
    @flask_chest_exempt
    def healthz() -> str:
        g.transaction = 1
        return "ok"

    @app.route("/metrics")
    @logged
    @FlaskChestExtension.exempt
    def metrics() -> str:
        g.transaction = 1
        return "ok"

    class Ping(MethodView):
        def get(self) -> str:
            g.transaction = 1
            return "pong"

    app.add_url_rule("/ping", view_func=flask_chest_exempt(Ping).as_view("ping"))

    @app.route("/counted")
    def counted() -> str:
        g.transaction = 1
        return "ok"

    FlaskChestExtension(app, chests=[chest])
    client = app.test_client()
    for path in ("/healthz", "/metrics", "/ping", "/counted"):
        assert client.get(path).status_code == 200
    assert names(chest) == [("transaction", "GET", "/counted")]


def test_excluded_routes_are_url_rules_with_blueprint_prefixes(chest: RecordingChest) -> None:
    app = Flask(__name__)
    sample_views(app)
    api = Blueprint("api", __name__, url_prefix="/api")

    @api.route("/status")
    def status() -> str:
        g.transaction = 1
        return "ok"

    app.register_blueprint(api)
    app.config["FLASK_CHEST_EXCLUDED_ROUTES"] = ["/items/<int:item_id>", "/api/status"]
    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)
    client = app.test_client()
    client.get("/items/1")
    client.get("/api/status")
    client.get("/")
    assert names(chest) == [("transaction", "GET", "/")]


def test_a_route_with_the_decorator_records_once_through_its_decorator(
    make_chest: Callable[[], RecordingChest],
) -> None:
    """The decorator wins: its chests, tracked_vars and request IDs; the
    extension's chests get nothing from that route."""
    app_chest, route_chest = make_chest(), make_chest()
    app = Flask(__name__)
    FlaskChestExtension(app, chests=[app_chest], tracked_vars=SAMPLE_TRACKED)

    @app.route("/special", methods=["POST"])
    @flask_chest(
        chests=[route_chest],
        tracked_vars={"POST": ["transaction"]},
        request_id_generator=lambda: "from-the-decorator",
    )
    def special() -> str:
        g.transaction = 1
        g.response_time = 0.1
        return "ok"

    app.test_client().post("/special")
    assert app_chest.measurements == []
    measurements = route_chest.measurements
    assert [(m.name, m.request_id) for m in measurements] == [
        ("transaction", "from-the-decorator")
    ]


def test_an_app_registered_later_blueprint_and_async_views_are_recorded(
    chest: RecordingChest,
) -> None:
    app = Flask(__name__)
    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)
    shop = Blueprint("shop", __name__, url_prefix="/shop")

    @shop.route("/orders", methods=["POST"])
    async def orders() -> tuple[str, int]:
        g.transaction = 1
        g.response_time = 0.2
        return "created", 201

    app.register_blueprint(shop)  # after init_app
    assert app.test_client().post("/shop/orders").status_code == 201
    assert names(chest) == [
        ("transaction", "POST", "/shop/orders"),
        ("response_time", "POST", "/shop/orders"),
    ]


def test_a_view_that_raises_has_its_variables_recorded_and_its_exception_unchanged(
    chest: RecordingChest,
) -> None:
    app = Flask(__name__)
    app.testing = True  # the exception propagates to the test client
    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)
    error = KeyError("missing")

    @app.route("/broken", methods=["POST"])
    def broken() -> str:
        g.transaction = 1
        raise error

    with pytest.raises(KeyError) as raised:
        app.test_client().post("/broken")
    assert raised.value is error
    assert names(chest) == [("transaction", "POST", "/broken")]


@pytest.mark.parametrize("path, status", [("/abort", 404), ("/crash", 500)])
def test_error_responses_record_once(chest: RecordingChest, path: str, status: int) -> None:
    """abort() and, outside testing, an unhandled error: recorded once."""
    app = Flask(__name__)
    FlaskChestExtension(app, chests=[chest], tracked_vars={"GET": ["transaction"]})

    @app.route("/abort")
    def aborting() -> str:
        g.transaction = 1
        abort(404)

    @app.route("/crash")
    def crashing() -> str:
        g.transaction = 1
        raise RuntimeError("boom")

    app.logger.disabled = True  # Flask logs the unhandled error
    try:
        assert app.test_client().get(path).status_code == status
    finally:
        app.logger.disabled = False
    assert names(chest) == [("transaction", "GET", path)]


def test_unmatched_urls_record_nothing(chest: RecordingChest) -> None:
    app = Flask(__name__)
    sample_views(app)
    FlaskChestExtension(app, chests=[chest])
    client = app.test_client()
    assert client.get("/nowhere").status_code == 404
    assert client.delete("/").status_code == 405
    assert chest.measurements == []


def test_request_id_is_on_g_for_the_apps_own_before_request_hooks(chest: RecordingChest) -> None:
    app = Flask(__name__)
    seen: list[str] = []

    @app.before_request
    def remember() -> None:
        seen.append(g.custom_request_id)

    @app.route("/")
    def index() -> str:
        g.transaction = 1
        return g.custom_request_id  # type: ignore[no-any-return]

    FlaskChestExtension(app, chests=[chest], request_id_generator=lambda: "abc")
    response = app.test_client().get("/")
    assert response.text == "abc" and seen == ["abc"]
    assert [m.request_id for m in chest.measurements] == ["abc"]


def test_request_id_generator_may_be_an_import_string(chest: RecordingChest) -> None:
    app = Flask(__name__)
    app.config["FLASK_CHEST_REQUEST_ID_GENERATOR"] = f"{__name__}:next_request_id"
    sample_views(app)
    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)
    app.test_client().get("/")
    assert chest.measurements[0].request_id.startswith("req-")  # type: ignore[union-attr]


def test_tracked_vars_none_records_public_g_attributes_only(chest: RecordingChest) -> None:
    app = Flask(__name__)
    sample_views(app)
    FlaskChestExtension(app, chests=[chest])
    app.test_client().get("/")
    assert sorted(m.name for m in chest.measurements) == ["response_time", "transaction"]


def test_raise_exceptions_fails_the_request_on_a_recording_error_unless_it_failed_already(
    chest: RecordingChest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_record_many(records: object) -> None:
        raise RuntimeError("recorder down")

    monkeypatch.setattr(RECORDER, "record_many", broken_record_many)
    app = Flask(__name__)
    app.config["FLASK_CHEST_RAISE_EXCEPTIONS"] = True
    sample_views(app)

    @app.route("/gone")
    def gone() -> str:
        g.transaction = 1
        abort(410)

    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)
    app.logger.disabled = True
    try:
        client = app.test_client()
        assert client.get("/").status_code == 500
        assert client.get("/gone").status_code == 410
    finally:
        app.logger.disabled = False


def test_a_recording_error_is_logged_and_the_request_goes_on_by_default(
    chest: RecordingChest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_record_many(records: object) -> None:
        raise RuntimeError("recorder down")

    monkeypatch.setattr(RECORDER, "record_many", broken_record_many)
    app = Flask(__name__)
    sample_views(app)
    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)
    with caplog.at_level(logging.ERROR, logger="flask_chest_otel"):
        assert app.test_client().get("/items/99").status_code == 200
    assert "recording failed on route /items/<int:item_id>" in caplog.text


def test_a_failing_request_id_generator_fails_the_request_with_raise_exceptions(
    chest: RecordingChest,
) -> None:
    def failing() -> str:
        raise OSError("no entropy")

    app = Flask(__name__)
    sample_views(app)
    FlaskChestExtension(app, chests=[chest], request_id_generator=failing, raise_exceptions=True)
    app.logger.disabled = True
    try:
        assert app.test_client().get("/").status_code == 500
    finally:
        app.logger.disabled = False
    assert chest.measurements == []


@pytest.mark.parametrize(
    "config, error, message",
    [
        ({}, ValueError, "FLASK_CHEST_CHESTS"),
        ({"FLASK_CHEST_CHESTS": []}, ValueError, "FLASK_CHEST_CHESTS"),
        ({"FLASK_CHEST_CHESTS": ["InfluxDB"]}, TypeError, "'InfluxDB' is not a chest"),
        ({"FLASK_CHEST_TRACKED_VARS": {"FETCH": ["x"]}}, ValueError, "FLASK_CHEST_TRACKED_VARS"),
        ({"FLASK_CHEST_TRACKED_VARS": {"GET": "x"}}, TypeError, "FLASK_CHEST_TRACKED_VARS"),
        ({"FLASK_CHEST_EXCLUDED_ROUTES": ["healthz"]}, TypeError, "FLASK_CHEST_EXCLUDED_ROUTES"),
        ({"FLASK_CHEST_EXCLUDED_ROUTES": 3}, TypeError, "FLASK_CHEST_EXCLUDED_ROUTES"),
        (
            {"FLASK_CHEST_REQUEST_ID_GENERATOR": "no_such_module:make"},
            ValueError,
            "cannot be imported",
        ),
        ({"FLASK_CHEST_REQUEST_ID_GENERATOR": 42}, TypeError, "must be callable"),
    ],
)
def test_bad_configuration_is_refused_with_the_key_named(
    chest: RecordingChest, config: dict[str, Any], error: type[Exception], message: str
) -> None:
    app = Flask(__name__)
    app.config.update(config)
    # The chests come from the constructor, except in the cases about chests.
    chests = [chest] if config and "FLASK_CHEST_CHESTS" not in config else None
    extension = FlaskChestExtension(chests=chests)
    with pytest.raises(error, match=message):
        extension.init_app(app)
    assert "flask_chest_otel" not in app.extensions


def test_force_flush_flushes_the_apps_chests(
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
) -> None:
    sqlite_chest = make_sqlite_chest(export_interval=60)
    app = Flask(__name__)
    sample_views(app)
    extension = FlaskChestExtension(app, chests=[sqlite_chest], tracked_vars=SAMPLE_TRACKED)
    app.test_client().get("/")
    assert extension.force_flush(app)
    assert [r["name"] for r in read_rows(sqlite_chest.db_uri)] == ["transaction"]


def test_chests_of_an_app_it_is_not_registered_on_is_an_error(chest: RecordingChest) -> None:
    with pytest.raises(RuntimeError, match="not registered on app 'other'"):
        FlaskChestExtension(chests=[chest]).chests_of(Flask("other"))
