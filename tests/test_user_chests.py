"""Users' own chests (flask-chest's chest API): ``FlaskChest`` subclasses and
any object with ``write(context_tuple_list)``, through real Flask apps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
from flask import Flask, g

from flask_chest_otel import FlaskChest, flask_chest
from flask_chest_otel.extension import FlaskChestExtension
from flask_chest_otel.http_payload import ContextTuple
from flask_chest_otel.user_chests import writer_chest

from .conftest import SAMPLE_TRACKED, sample_app


class ListChest(FlaskChest):
    """A chest of the chest-API example's shape whose ``__init__`` never calls ours."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[list[ContextTuple]] = []
        self.threads: set[int] = set()
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def write(self, context_tuple_list: list[ContextTuple]) -> None:
        with self.lock:
            self.threads.add(threading.get_ident())
            if self.fail_first:
                self.fail_first -= 1
                raise ConnectionError("backend down")
            self.calls.append(context_tuple_list)


def test_subclass_write_gets_each_request_once_in_tracked_vars_order_off_the_request_thread() -> (
    None
):
    chest = ListChest()
    client = sample_app([chest]).test_client()
    for _ in range(3):
        assert client.post("/").status_code == 200
    assert client.get("/").status_code == 200
    assert chest.calls == []  # nothing is written on the request path
    assert chest.force_flush()
    assert [[item.name for item in call] for call in chest.calls] == [
        ["transaction", "response_time"]
    ] * 3 + [["transaction"]]
    for call in chest.calls:
        assert len({item.request_id for item in call}) == 1
        assert all(isinstance(item, ContextTuple) and len(item) == 3 for item in call)
        assert call[0][1] == 1 and isinstance(call[0][1], int)
    assert len({call[0].request_id for call in chest.calls}) == 4
    assert threading.get_ident() not in chest.threads


def test_write_that_raises_is_retried_until_every_request_is_written_once() -> None:
    chest = ListChest(fail_first=3)
    writer_chest(chest).exporter.retry_initial = 0.01
    writer_chest(chest).exporter.retry_max = 0.05
    client = sample_app([chest]).test_client()
    for _ in range(5):
        client.post("/")
    assert chest.force_flush()
    assert len(chest.calls) == 5
    assert len({call[0].request_id for call in chest.calls}) == 5
    assert writer_chest(chest).exporter.stats.retried == 3


def test_magicmock_is_a_chest_and_write_is_called_once_per_request() -> None:
    mock = MagicMock()
    app = Flask(__name__)

    @app.route("/test")
    @flask_chest(chests=[mock])
    def view() -> str:
        g.test_var = "Test Value"
        return "ok"

    client = app.test_client()
    client.get("/test")
    client.get("/test")
    assert writer_chest(mock).force_flush()
    assert mock.write.call_count == 2
    (tuples,) = mock.write.call_args.args
    assert [tuple(item)[:2] for item in tuples] == [("test_var", "Test Value")]


def test_one_user_chest_given_to_two_routes_and_the_extension_is_one_chest() -> None:
    chest = ListChest()
    app = Flask(__name__)
    FlaskChestExtension(app, chests=[chest], tracked_vars=SAMPLE_TRACKED)

    @app.route("/a")
    @flask_chest(chests=[chest], tracked_vars=SAMPLE_TRACKED)
    def a() -> str:
        g.transaction = 1
        return "a"

    @app.route("/b")
    def b() -> str:
        g.transaction = 2
        return "b"

    client = app.test_client()
    client.get("/a")
    client.get("/b")
    assert FlaskChestExtension.force_flush(app.extensions["flask_chest_otel"], app)
    assert chest.force_flush()
    assert sorted(call[0].value for call in chest.calls) == [1, 2]
    assert FlaskChestExtension.chests_of(app.extensions["flask_chest_otel"], app) == (
        writer_chest(chest),
    )


@pytest.mark.parametrize("not_a_chest", [object(), "chest", 3])
def test_an_object_without_write_is_refused_naming_the_chest_api(not_a_chest: Any) -> None:
    with pytest.raises(TypeError, match=r"write\(context_tuple_list\)"):
        flask_chest(chests=[not_a_chest])


def test_what_a_user_chest_has_not_written_is_written_at_exit(tmp_path: Path) -> None:
    """A process that exits right after its requests still calls write for each."""
    out = tmp_path / "written.txt"
    script = textwrap.dedent(
        f"""
        from flask import Flask, g
        from flask_chest_otel import FlaskChest, flask_chest

        class FileChest(FlaskChest):
            def write(self, context_tuple_list):
                with open({str(out)!r}, "a") as f:
                    for name, value, request_id in context_tuple_list:
                        f.write(f"{{name}} {{value}} {{request_id}}\\n")

        app = Flask(__name__)

        @app.route("/")
        @flask_chest(chests=[FileChest("file")], tracked_vars={{"GET": ["n"]}})
        def index():
            g.n = 7
            return "ok"

        client = app.test_client()
        for _ in range(200):
            client.get("/")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    lines = out.read_text().splitlines()
    assert len(lines) == 200
    assert len({line.split()[2] for line in lines}) == 200
    assert all(line.startswith("n 7 ") for line in lines)


def test_the_flask_chest_base_class_names_itself_as_flask_chest_did() -> None:
    chest = FlaskChest(name="mine")
    assert chest.id == "FlaskChest(name=mine)" == str(chest)
    with pytest.raises(NotImplementedError):
        chest.write([])
