"""flask-chest 0.0.10 as released, with only the import changed: its
``FlaskChestInfluxDB(app, https=, host=, port=, ...)``, its custom writer's
attributes and ``to_dict()``, its ``flask_chest.chests`` import paths and
its ``FlaskChestExporterInfluxDB``, which copies the SQLite chest into
InfluxDB every interval, here each row once."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, request

from flask_chest_otel import FlaskChestCustomWriter, FlaskChestInfluxDB, FlaskChestSQLite
from flask_chest_otel.decorator import flask_chest
from flask_chest_otel.exporter import STATE_TABLE, FlaskChestExporterInfluxDB

from .conftest import read_rows, wait_for
from .http_sink import HTTPSink
from .servers import InfluxDB2WriteDouble, Scripted, VictoriaMetrics, victoria_metrics

TOKEN = "t0ken"


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with victoria_metrics(tmp_path_factory.mktemp("vm")) as server:
        yield server


@pytest.fixture
def double() -> Iterator[InfluxDB2WriteDouble]:
    with InfluxDB2WriteDouble(token=TOKEN, org="my-org", bucket="my-bucket") as server:
        yield server


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Chests and copiers a test makes; each is stopped after it."""
    made: list[Any] = []
    yield made
    for thing in reversed(made):
        if isinstance(thing, FlaskChestExporterInfluxDB):
            thing.stop(timeout=2)
        else:
            thing.shutdown(timeout_millis=2_000)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def flask_chest_0010_app(
    db: Path, influx_port: int, sink_url: str, interval_minutes: float
) -> tuple[Flask, list[Any]]:
    """flask-chest 0.0.10's example app (example_usage/app.py of its
    repository), as its users wrote it: only the import lines changed (and
    the addresses, the log file and the sleep, for a test)."""
    app = Flask(__name__)

    logger = logging.getLogger("flask_chest_0010_app")
    logger.setLevel(logging.DEBUG)

    chest_sqlite = FlaskChestSQLite(app, name="flask_chest", db_uri=str(db))

    chest_influxdb = FlaskChestInfluxDB(
        app=app,
        https=False,
        host="127.0.0.1",
        port=influx_port,
        token=os.getenv("INFLUXDB_TOKEN"),
        org="my-org",
        bucket="my-bucket",
        custom_tags={"app": "tokentrust"},
        logger=logger,
    )

    def cust_payload_generator(context_tuple_list):  # type: ignore[no-untyped-def]
        payload = {}
        for i, context_tuple in enumerate(context_tuple_list):
            payload[i] = context_tuple
        return payload

    chest_signalfx = FlaskChestCustomWriter(
        url=sink_url,
        headers=None,
        params=None,
        payload_generator=cust_payload_generator,
        verify=False,
        success_status_codes=[200],
        logger=logger,
    )

    exporter = FlaskChestExporterInfluxDB(
        chest_sqlite,
        https=False,
        host="127.0.0.1",
        port=influx_port,
        token="",
        org="my-org",
        bucket="my-bucket",
        interval_minutes=interval_minutes,
    )

    route_tracked_vars = {
        "GET": ["user_id", "session_id", "total_time"],
        "POST": ["user_id", "data"],
    }

    @app.route("/", methods=["GET", "POST"])
    @flask_chest(
        chests=[chest_sqlite, chest_influxdb, chest_signalfx],
        tracked_vars=route_tracked_vars,
        raise_exceptions=True,
    )
    def index():  # type: ignore[no-untyped-def]
        if request.method == "GET":
            g.start = time.time()
            g.user_id = "123"
            g.session_id = "abc"
            time.sleep(0.001)  # Simulate a delay
            g.total_time = time.time() - g.start
        else:
            g.user_id = "123"
            g.data = 42

        return "Hello, World!"

    return app, [chest_sqlite, chest_influxdb, chest_signalfx, exporter]


def _samples_per_request(vm: VictoriaMetrics, selector: str) -> dict[str, int]:
    return {series["metric"]["request_id"]: len(series["values"]) for series in vm.export(selector)}


def test_a_flask_chest_0010_app_runs_and_its_exporter_copies_each_row_once(
    vm: VictoriaMetrics, tmp_path: Path, closing: list[Any]
) -> None:
    """The 0.0.10 example app serves; its InfluxDB chest, custom writer and
    SQLite chest receive every request; its exporter copies the SQLite rows
    to VictoriaMetrics on its thread, each row once across two rounds."""
    db = tmp_path / "db.sqlite3"
    with HTTPSink() as sink:
        app, made = flask_chest_0010_app(db, _port(vm.url), sink.url + "/", 0.01)
        closing.extend(made)
        chest_sqlite, chest_influxdb, chest_signalfx, exporter = made
        client = app.test_client()
        first = [client.get("/") for _ in range(5)] + [client.post("/") for _ in range(3)]
        assert all(response.status_code == 200 for response in first)
        assert chest_sqlite.force_flush()
        copied = '{__name__="user_id_value", app=""}'  # the exporter's points: no custom tag
        assert wait_for(lambda: len(_samples_per_request(vm, copied)) == 8, timeout=30)

        second = [client.get("/") for _ in range(4)]
        assert all(response.status_code == 200 for response in second)
        assert chest_sqlite.force_flush()
        assert wait_for(lambda: len(_samples_per_request(vm, copied)) == 12, timeout=30)
        assert chest_influxdb.force_flush() and chest_signalfx.force_flush()
        # More rounds pass: nothing is copied again.
        time.sleep(exporter.interval_seconds * 3)
        assert exporter.copy_now() == 0

        assert len(sink.requests) == 12
    rows = read_rows(db)
    ids = {row["request_id"] for row in rows}
    assert len(ids) == 12
    assert _samples_per_request(vm, copied) == dict.fromkeys(ids, 1)
    assert set(_samples_per_request(vm, '{__name__="total_time_value", app=""}').values()) == {1}
    assert len(_samples_per_request(vm, '{__name__="data_value", app=""}')) == 3
    # The chest's own points (tag app=tokentrust) arrived once too.
    direct = '{__name__="user_id_value", app="tokentrust"}'
    assert _samples_per_request(vm, direct) == dict.fromkeys(ids, 1)
    with sqlite3.connect(db) as connection:
        [(copied_rowid,)] = connection.execute(f"SELECT copied_rowid FROM {STATE_TABLE}")
    assert copied_rowid == max(row["id"] for row in rows)


def _app(chests: list[Any], values: dict[str, Any]) -> Flask:
    app = Flask(__name__)

    @app.route("/items/<int:item>", methods=["GET", "POST"])
    @flask_chest(chests=chests, tracked_vars={"POST": list(values)})
    def items(item: int) -> str:
        for name, value in values.items():
            setattr(g, name, value)
        return "ok"

    return app


def test_a_copied_row_is_the_point_the_influxdb_chest_writes_for_it(
    double: InfluxDB2WriteDouble,
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
    closing: list[Any],
) -> None:
    """Each type (int, float, bool, text, NaN) keeps its field type, tags and
    the request's time: the copy's lines are the chest's, line for line."""
    values = {"count": 3, "ratio": 0.25, "ok": True, "code": "00321", "bad": float("nan")}
    sqlite_chest = make_sqlite_chest()
    influx_chest = FlaskChestInfluxDB(
        name="InfluxDB", url=double.url, token=TOKEN, org="my-org", bucket="my-bucket"
    )
    closing.append(influx_chest)
    client = _app([sqlite_chest, influx_chest], values).test_client()
    for _ in range(3):
        assert client.post("/items/7").status_code == 200
    assert sqlite_chest.force_flush() and influx_chest.force_flush()
    direct = sorted(double.lines())
    assert len(direct) == 15
    double.requests.clear()

    copier = FlaskChestExporterInfluxDB(
        sqlite_chest, host="127.0.0.1", port=_port(double.url), token=TOKEN, start=False
    )
    closing.append(copier)
    assert copier.copy_now() == 15
    assert sorted(double.lines()) == direct
    assert copier.copy_now() == 0
    assert len(double.lines()) == 15


def test_a_batch_influxdb_does_not_take_is_sent_again_by_the_exporter_not_read_again(
    double: InfluxDB2WriteDouble,
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
    closing: list[Any],
) -> None:
    """A 503 leaves the batch with the exporter's retries: rounds meanwhile
    read nothing new, and once InfluxDB takes it the rows are marked copied."""
    chest = make_sqlite_chest()
    client = _app([chest], {"n": 1}).test_client()
    for _ in range(4):
        client.post("/items/1")
    assert chest.force_flush()
    copier = FlaskChestExporterInfluxDB(
        chest, host="127.0.0.1", port=_port(double.url), token=TOKEN, start=False,
        retry_initial=0.5, retry_max=0.5,
    )  # fmt: skip
    closing.append(copier)
    double.script.extend([Scripted(503, {"code": "unavailable", "message": "busy"})] * 3)
    assert copier.copy_now(timeout=0.1) == 0  # not taken yet
    for _ in range(2):
        client.post("/items/1")
    assert chest.force_flush()
    assert copier.copy_now(timeout=10) == 2  # the first batch settled, then the new rows
    points = [line for line in double.lines() if line.startswith("n,")]
    assert len(points) == 3 * 4 + 4 + 2  # three refused sends of 4, then 4, then 2
    accepted = [point for point in double.points if point[0] == "n"]
    assert len(accepted) == 6
    assert len({point[1]["request_id"] for point in accepted}) == 6


def test_a_new_process_and_a_second_copier_copy_nothing_twice(
    double: InfluxDB2WriteDouble,
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
    closing: list[Any],
) -> None:
    """What was copied is kept in the SQLite file: a copier started later
    (a restart) or beside another (a second worker) copies only new rows."""
    chest = make_sqlite_chest()
    client = _app([chest], {"n": 1}).test_client()
    for _ in range(3):
        client.post("/items/1")
    assert chest.force_flush()

    def copier() -> FlaskChestExporterInfluxDB:
        made = FlaskChestExporterInfluxDB(
            chest, host="127.0.0.1", port=_port(double.url), token=TOKEN, start=False
        )
        closing.append(made)
        return made

    first, second = copier(), copier()
    assert first.copy_now() == 3
    assert second.copy_now() == 0
    client.post("/items/1")
    assert chest.force_flush()
    assert second.copy_now() == 1
    assert first.copy_now() == 0
    assert copier().copy_now() == 0
    assert len([point for point in double.points if point[0] == "n"]) == 4


def test_another_copiers_live_claim_is_respected_and_a_lapsed_one_taken_over(
    double: InfluxDB2WriteDouble,
    make_sqlite_chest: Callable[..., FlaskChestSQLite],
    closing: list[Any],
) -> None:
    chest = make_sqlite_chest()
    client = _app([chest], {"n": 1}).test_client()
    client.post("/items/1")
    assert chest.force_flush()
    copier = FlaskChestExporterInfluxDB(
        chest, host="127.0.0.1", port=_port(double.url), token=TOKEN, start=False
    )
    closing.append(copier)
    with sqlite3.connect(chest.db_uri) as connection:
        connection.execute(
            f"INSERT INTO {STATE_TABLE} VALUES (?, 0, 1, 'elsewhere:1:1', ?)",
            (copier._destination, time.time() + 60),
        )
    assert copier.copy_now() == 0
    with sqlite3.connect(chest.db_uri) as connection:
        connection.execute(f"UPDATE {STATE_TABLE} SET claimed_until = ?", (time.time() - 1,))
    assert copier.copy_now() == 1


def test_the_exporter_thread_stops_and_flask_chest_names_work(
    double: InfluxDB2WriteDouble, make_sqlite_chest: Callable[..., FlaskChestSQLite]
) -> None:
    chest = make_sqlite_chest()
    copier = FlaskChestExporterInfluxDB(
        chest, False, "127.0.0.1", _port(double.url), TOKEN, "my-org", "my-bucket", 0.005
    )
    assert copier._thread is not None and copier._thread.is_alive()
    client = _app([chest], {"n": 1}).test_client()
    client.post("/items/1")
    assert chest.force_flush()
    assert wait_for(lambda: len(double.points) == 1, timeout=10)
    copier.stop(timeout=5)
    assert not copier._thread.is_alive()
    client.post("/items/1")
    assert chest.force_flush()
    time.sleep(copier.interval_seconds * 3)
    assert len(double.points) == 1
    copier.export_data()  # flask-chest's name; the copier is stopped: nothing happens
    assert len(double.points) == 1


def test_the_exporter_refuses_a_chest_without_a_file() -> None:
    class Memory:
        db_uri = ":memory:"

    with pytest.raises(ValueError, match="SQLite file"):
        FlaskChestExporterInfluxDB(Memory(), start=False)
    with pytest.raises(ValueError, match="interval_minutes"):
        FlaskChestExporterInfluxDB(type("C", (), {"db_uri": "x.db"})(), interval_minutes=0)


# -- FlaskChestInfluxDB(app, https=, host=, port=, ...) -------------------------


@pytest.mark.parametrize(
    ("call", "url", "org", "bucket"),
    [
        (lambda app: FlaskChestInfluxDB(app), "http://localhost:8086", "my-org", "my-bucket"),
        (
            lambda app: FlaskChestInfluxDB(app=app, https=True, host="db.example", port=9999),
            "https://db.example:9999",
            "my-org",
            "my-bucket",
        ),
        (
            lambda app: FlaskChestInfluxDB(app, host="::1", org="o", bucket="b"),
            "http://[::1]:8086",
            "o",
            "b",
        ),
        (lambda app: FlaskChestInfluxDB(host="h", port=1), "http://h:1", "my-org", "my-bucket"),
        (
            lambda app: FlaskChestInfluxDB(app, url="http://other:1", org="o", bucket="b"),
            "http://other:1",
            "o",
            "b",
        ),
    ],
)
def test_flask_chest_0010_influxdb_calls_become_todays(
    call: Callable[[Flask], FlaskChestInfluxDB], url: str, org: str, bucket: str
) -> None:
    """A Flask app first (or ``app=``), or ``https=``/``host=``/``port=``,
    is flask-chest 0.0.10's call: its URL and defaults, the name InfluxDB."""
    chest = call(Flask(__name__))
    try:
        assert chest.name == "InfluxDB"
        assert chest.exporter.url == url
        assert (chest.exporter.org, chest.exporter.bucket) == (org, bucket)
    finally:
        chest.shutdown(timeout_millis=100)


def test_todays_influxdb_call_is_unchanged() -> None:
    chest = FlaskChestInfluxDB("Mine", "http://127.0.0.1:1", None, "o", "b")
    try:
        assert (chest.name, chest.exporter.url, chest.exporter.bucket) == (
            "Mine",
            "http://127.0.0.1:1",
            "b",
        )
    finally:
        chest.shutdown(timeout_millis=100)


def test_flask_chest_0010_calls_that_cannot_be_read_say_why() -> None:
    app = Flask(__name__)
    with pytest.raises(TypeError, match="by keyword"):
        FlaskChestInfluxDB(app, False, "localhost")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        FlaskChestInfluxDB(app, url="http://h:1", host="h")
    with pytest.raises(TypeError, match="twice"):
        FlaskChestInfluxDB(app, app=app)


def test_the_0010_chest_writes_to_influxdb_with_its_token_and_custom_tags(
    double: InfluxDB2WriteDouble, closing: list[Any]
) -> None:
    chest = FlaskChestInfluxDB(
        Flask(__name__), host="127.0.0.1", port=_port(double.url), token=TOKEN,
        custom_tags={"app": "tokentrust"},
    )  # fmt: skip
    closing.append(chest)
    assert _app([chest], {"n": 2}).test_client().post("/items/3").status_code == 200
    assert chest.force_flush()
    [(measurement, tags, fields, _)] = double.points
    assert (measurement, tags["app"], fields) == ("n", "tokentrust", {"value": "2i"})


# -- FlaskChestCustomWriter's attributes, to_dict(); flask_chest.chests -------------


def test_the_custom_writer_keeps_flask_chests_attributes_and_to_dict(closing: list[Any]) -> None:
    def generator(context_tuple_list: list[Any]) -> Any:
        return list(context_tuple_list)

    writer = FlaskChestCustomWriter(
        name="SignalFX",
        url="http://127.0.0.1:9/ingest",
        headers={"X-SF-Token": "secret"},
        params={"a": "1"},
        proxies={"http": "http://user:pw@proxy:3128"},
        payload_generator=generator,
        verify=False,
        success_status_codes=[201, 200],
    )
    closing.append(writer)
    assert writer.id == "FlaskChestCustomWriter(name=SignalFX)"
    assert writer.headers == {"X-SF-Token": "secret"}
    assert (writer.params, writer.verify) == ({"a": "1"}, False)
    assert writer.proxies == {"http": "http://user:pw@proxy:3128"}
    assert writer.success_status_codes == [200, 201]
    assert writer.payload_generator is generator
    assert writer.to_dict() == {
        "type": "custom_writer",
        "id": "FlaskChestCustomWriter(name=SignalFX)",
        "name": "SignalFX",
        "url": "http://127.0.0.1:9/ingest",
        "headers": {"X-SF-Token": "secret"},
        "params": {"a": "1"},
        "proxies": {"http": "http://user:pw@proxy:3128"},
        "verify": False,
        "success_status_codes": [200, 201],
    }
    shown = str(writer)
    assert json.loads(shown)["headers"] == {"X-SF-Token": "***"}
    assert "secret" not in shown and "pw" not in shown


def test_the_custom_writer_named_by_its_url_as_in_flask_chest(closing: list[Any]) -> None:
    writer = FlaskChestCustomWriter(url="http://127.0.0.1:9/x", payload_generator=list)
    closing.append(writer)
    assert writer.name == "http://127.0.0.1:9/x"
    assert writer.to_dict()["headers"] is None
    assert writer.success_status_codes == [200, 201, 202, 204]


def test_flask_chest_chests_import_paths_give_this_librarys_classes() -> None:
    import flask_chest_otel
    from flask_chest_otel.chests import (
        FlaskChest,
        FlaskChestCustomWriter,
        FlaskChestInfluxDB,
        FlaskChestSQLite,
    )
    from flask_chest_otel.chests.base import FlaskChest as BaseFlaskChest
    from flask_chest_otel.chests.custom import FlaskChestCustomWriter as Custom
    from flask_chest_otel.chests.influxDB import FlaskChestInfluxDB as Influx
    from flask_chest_otel.chests.sqlite import FlaskChestSQLite as SQLite

    assert FlaskChest is BaseFlaskChest is flask_chest_otel.FlaskChest
    assert FlaskChestCustomWriter is Custom is flask_chest_otel.FlaskChestCustomWriter
    assert FlaskChestInfluxDB is Influx is flask_chest_otel.FlaskChestInfluxDB
    assert FlaskChestSQLite is SQLite is flask_chest_otel.FlaskChestSQLite


def test_rows_flask_chest_wrote_are_copied_with_their_stored_type(
    double: InfluxDB2WriteDouble, tmp_path: Path, closing: list[Any]
) -> None:
    """A file flask-chest 0.0.10 wrote (``unique_id, request_id, name,
    value TEXT``): its rows are copied as they are stored, once."""
    db = tmp_path / "db.sqlite3"
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TABLE flask_chest (unique_id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "request_id TEXT, name TEXT, value TEXT)"
        )
        request_id = str(uuid.uuid4())
        connection.executemany(
            "INSERT INTO flask_chest (request_id, name, value) VALUES (?, ?, ?)",
            [(request_id, "transaction", 1), (request_id, "user", "ada")],
        )
    chest = FlaskChestSQLite(Flask(__name__), name="flask_chest", db_uri=str(db))
    closing.append(chest)
    copier = FlaskChestExporterInfluxDB(
        chest, host="127.0.0.1", port=_port(double.url), token=TOKEN, start=False
    )
    closing.append(copier)
    assert copier.copy_now() == 2
    assert sorted((p[0], p[1]["request_id"], p[2]["value"]) for p in double.points) == [
        ("transaction", request_id, '"1"'),
        ("user", request_id, '"ada"'),
    ]
