"""What the request path logs: a typo in tracked_vars is reported once per
route and name; a request_id_generator failing on client input costs a
bounded number of log lines and no memory per request."""

from __future__ import annotations

import gc
import logging
import tracemalloc
from pathlib import Path

import pytest
from flask import Flask, g, request

from flask_chest_otel import FlaskChestSQLite, flask_chest
from flask_chest_otel.decorator import TYPO_CHECK_REQUESTS
from flask_chest_otel.extension import FlaskChestExtension

PACKAGE = str(Path(__file__).resolve().parent.parent / "flask_chest_otel")


def typo_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "a typo?" in r.getMessage()]


def test_a_tracked_name_no_request_sets_is_warned_once_per_route_and_name(
    sqlite_chest: FlaskChestSQLite, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    tracked = {"GET": ["transaction", "transacton", "rare"], "POST": ["transacton"]}

    @app.route("/a", methods=["GET", "POST"])
    @flask_chest(chests=[sqlite_chest], tracked_vars=tracked)
    def a() -> str:
        g.transaction = 1
        if request.args.get("rare"):
            g.rare = 1
        return "ok"

    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
        for n in range(TYPO_CHECK_REQUESTS - 1):
            client.get("/a", query_string={"rare": "1"} if n == 50 else {})
        assert typo_warnings(caplog) == []  # not before the route's 100th request
        for _ in range(3 * TYPO_CHECK_REQUESTS):
            client.get("/a")
        for _ in range(TYPO_CHECK_REQUESTS):
            client.post("/a")
    warnings = typo_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "'transacton' for GET on route /a" in warnings[0]
    assert "'transacton' for POST on route /a" in warnings[1]
    assert "g.transacton" in warnings[0]
    assert not any("'rare'" in w or "'transaction'" in w for w in warnings)


def test_the_extension_warns_per_route(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    chest = FlaskChestSQLite(db_uri=str(tmp_path / "x.sqlite3"))
    app = Flask(__name__)
    FlaskChestExtension(app, chests=[chest], tracked_vars={"GET": ["transacton"]})

    @app.route("/one")
    def one() -> str:
        g.transacton = 1
        return "ok"

    @app.route("/two")
    def two() -> str:
        g.transaction = 1
        return "ok"

    client = app.test_client()
    try:
        with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
            for _ in range(TYPO_CHECK_REQUESTS):
                client.get("/one")
                client.get("/two")
    finally:
        chest.shutdown()
    warnings = typo_warnings(caplog)
    assert len(warnings) == 1 and "on route /two" in warnings[0], warnings


def test_3000_failing_request_ids_log_at_most_20_lines_and_keep_no_memory(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Each request makes the generator fail with the client's own text; the
    log gets one line (rate-limited by kind, formatted only when emitted)
    and the package's memory does not grow with the requests."""
    chest = FlaskChestSQLite(db_uri=str(tmp_path / "x.sqlite3"))
    app = Flask(__name__)

    def from_header() -> str:
        raise ValueError(f"bad request id {request.headers.get('X-Id', '')!r}")

    @app.route("/")
    @flask_chest(chests=[chest], tracked_vars={"GET": ["nothing_set"]},
                 request_id_generator=from_header)  # fmt: skip
    def index() -> str:
        return "ok"

    client = app.test_client()

    def send(count: int, start: int) -> None:
        for n in range(start, start + count):
            assert client.get("/", headers={"X-Id": f"client-{n}-" + "x" * 200}).status_code == 200

    try:
        with caplog.at_level(logging.DEBUG, logger="flask_chest_otel"):
            send(200, 0)  # warm-up: caches, the first (emitted) line
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            send(3000, 200)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
    finally:
        chest.shutdown()
    ours = [tracemalloc.Filter(True, PACKAGE + "/*")]
    growth = sum(
        stat.size_diff
        for stat in after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    )
    assert growth < 20_000, growth  # 3,000 keys of 200+ characters would be > 600 KB
    lines = [r for r in caplog.records if "request_id_generator failed" in r.getMessage()]
    assert 1 <= len(lines) <= 20
    assert "client-0-" in lines[0].getMessage()  # the one line says what failed
