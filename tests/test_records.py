"""The exporters' encoding straight from the recorder's records gives, for
any record, the items the encoding of the MetricsData the records make gives;
and the decorator's records take that path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from flask_chest_otel import flask_chest
from flask_chest_otel._names import (
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STATUS_CODE,
    ATTR_STRING_VALUE,
    ATTR_TIME,
    RESERVED_TAG_NAMES,
)
from flask_chest_otel._recorder import RECORDER
from flask_chest_otel._records import (
    SPAN_IDS,
    Record,
    common_layout,
    flat_attributes,
    records_metrics_data,
)
from flask_chest_otel.http_payload._context_tuple import record_groups
from flask_chest_otel.http_payload._exporter import HTTPPayloadMetricExporter
from flask_chest_otel.influxdb import InfluxDBMetricExporter
from flask_chest_otel.sqlite import SQLiteMetricExporter
from flask_chest_otel.testing import RecordingChest

_text = st.text(max_size=6)  # lone surrogates included
_numbers = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
)
_span_ids = st.none() | st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1))
#: A request's tags as the decorator makes them: text keys no attribute of
#: its own uses, text values.
_tags = st.dictionaries(
    (st.sampled_from(["tenant", "service.name", "a b,c=d", ""]) | _text).filter(
        lambda key: key not in RESERVED_TAG_NAMES
    ),
    _text,
    max_size=3,
).map(flat_attributes)


@st.composite
def _records(draw: st.DrawFn) -> list[Record]:
    """Records as the decorator makes them: mostly the common layout, else
    a text value, attributes of the view's own, no route, no or a non-int
    status code, an empty or non-text request ID, a provider's time
    attribute; with or without the request's tags."""
    records: list[Record] = []
    for _ in range(draw(st.integers(1, 4))):  # requests
        request_id = draw(st.sampled_from(["r1", "r2", ""]) | _text | st.integers(0, 3))
        method = draw(st.sampled_from(["GET", "POST"]) | _text)
        route = draw(st.sampled_from(["/", "/api"]) | _text | st.none())
        time_unix_nano = draw(st.sampled_from([10**18, 2 * 10**18]) | st.integers(0, 2**63))
        span_ids = draw(_span_ids)
        status_code = draw(st.sampled_from([200, 201, 404, 500]) | st.none() | _text)
        tags = draw(_tags)
        names = draw(st.lists(st.sampled_from(["transaction", "rt", "", "a b,c=d"]), max_size=3))
        for index, name in enumerate(names):
            attributes: dict[str, Any] = {ATTR_REQUEST_ID: request_id, ATTR_METHOD: method}
            if route is not None:
                attributes[ATTR_ROUTE] = route
            if status_code is not None:
                attributes[ATTR_STATUS_CODE] = status_code
            if draw(st.booleans()):
                attributes.update(draw(st.dictionaries(_text, _text | _numbers, max_size=2)))
            attributes[ATTR_INDEX] = index
            value = draw(_numbers)
            if draw(st.integers(0, 5)) == 0:
                attributes[ATTR_STRING_VALUE], value = draw(_text), 1
            if draw(st.integers(0, 9)) == 0:
                attributes[ATTR_TIME] = draw(st.integers(0, 2**63))
            flat = flat_attributes(attributes)
            records.append((0, name, value, flat, time_unix_nano, span_ids, tags))
    return records


@pytest.fixture(scope="module")
def influx_exporters() -> Any:
    exporters = [
        InfluxDBMetricExporter(url="http://127.0.0.1:9", bucket="b", custom_tags=tags, **options)
        for tags in ({}, {"app": "x y", "route": "shadowed"})
        for options in ({}, {"request_id_field": True})
    ]
    yield exporters
    for exporter in exporters:
        exporter.shutdown(timeout_millis=10)


def _payload(tuples: list[Any]) -> Any:
    return [[*item, item.attributes, item.time_unix_nano, item.kind] for item in tuples]


@pytest.fixture(scope="module")
def other_exporters(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("records") / "chest.sqlite3"
    exporters = [
        SQLiteMetricExporter(db_uri=str(path)),
        HTTPPayloadMetricExporter(url="http://127.0.0.1:9/", payload_generator=_payload),
        HTTPPayloadMetricExporter(
            url="http://127.0.0.1:9/", payload_generator=_payload, per_request=False
        ),
    ]
    yield exporters
    for exporter in exporters:
        exporter.shutdown(timeout_millis=10)


def _same(left: list[Any], right: list[Any]) -> bool:
    # By repr: True == 1 and NaN != NaN, but their reprs tell them apart.
    return repr(left) == repr(right)


@settings(max_examples=300, deadline=None)
@given(records=_records())
def test_records_encode_as_their_metrics_data(
    records: list[Record], influx_exporters: Any, other_exporters: Any
) -> None:
    """Every exporter with its own record encoding gives exactly the items
    (same order) of ``_encode`` on the MetricsData the records make."""
    for exporter in [*influx_exporters, *other_exporters]:
        fast = list(exporter._encode_records(records))
        generic = list(exporter._encode(records_metrics_data(records)))
        assert _same(fast, generic), exporter


@st.composite
def _queued_requests(draw: st.DrawFn) -> list[Record]:
    """Common-layout records of a few requests, mostly as a worker thread
    queues them (each request's records together, indices rising, times
    rising), else with the times tied or falling, a request's records split
    or out of index order, or one record of another layout."""
    records: list[Record] = []
    for number in range(draw(st.integers(1, 4))):
        request_id = draw(st.sampled_from(["r1", "r2", "r3"]))
        time_unix_nano = 10**18 + draw(st.sampled_from([number, number, number, 0]))
        route = draw(st.sampled_from(["/", "/api"]))
        indices = sorted(draw(st.sets(st.integers(0, 3), min_size=1, max_size=3)))
        if draw(st.integers(0, 4)) == 0:
            indices = draw(st.permutations(indices + indices[:1]))
        for index in indices:
            attributes = {ATTR_REQUEST_ID: request_id, ATTR_METHOD: "GET", ATTR_ROUTE: route,
                          ATTR_STATUS_CODE: 200, ATTR_INDEX: index}  # fmt: skip
            name = f"v{index}"
            records.append((0, name, draw(_numbers), flat_attributes(attributes),
                            time_unix_nano, None, ()))  # fmt: skip
    if draw(st.integers(0, 3)) == 0:
        records = draw(st.permutations(records))
    if draw(st.integers(0, 5)) == 0:
        odd = dict(zip(records[0][3][::2], records[0][3][1::2], strict=True))
        odd[ATTR_STATUS_CODE] = "200"
        records.insert(draw(st.integers(0, len(records))),
                       (0, "odd", 1, flat_attributes(odd), 10**18, None, ()))  # fmt: skip
    return records


@settings(max_examples=300, deadline=None)
@given(records=_queued_requests())
def test_requests_read_in_one_pass_group_as_any_records(
    records: list[Record], other_exporters: Any
) -> None:
    """The HTTP writer reads a worker's queue in one pass when each request's
    records come together, in index order, the requests in time order; it
    groups them, in either mode, exactly as it groups any records (the
    general path, and the MetricsData they make)."""
    general = _requests_grouped_generally(records)
    assert _same(record_groups(records), general)
    for exporter in other_exporters[1:]:
        fast = list(exporter._encode_records(records))
        generic = list(exporter._encode(records_metrics_data(records)))
        assert _same(fast, generic), exporter


def _requests_grouped_generally(records: list[Record]) -> list[list[Any]]:
    import flask_chest_otel.http_payload._context_tuple as context_tuple

    one_pass = context_tuple._consecutive_groups
    try:
        context_tuple._consecutive_groups = lambda records, common: None  # type: ignore[assignment]
        return record_groups(records)
    finally:
        context_tuple._consecutive_groups = one_pass


def test_a_worker_queue_is_read_in_one_pass() -> None:
    """The one pass is taken for a queue as a sync worker fills it, and left
    for the general path when a request's records are split or its times
    do not rise."""
    from flask_chest_otel.http_payload._context_tuple import _consecutive_groups

    def record(request_id: str, index: int, time_unix_nano: int) -> Record:
        attributes = {ATTR_REQUEST_ID: request_id, ATTR_METHOD: "GET", ATTR_ROUTE: "/",
                      ATTR_STATUS_CODE: 200, ATTR_INDEX: index}  # fmt: skip
        return (0, f"v{index}", 1, flat_attributes(attributes), time_unix_nano, None, ())

    queued = [record("a", 0, 1), record("a", 1, 1), record("b", 0, 2), record("b", 1, 2)]
    groups = _consecutive_groups(queued, lambda name, record, layout: (name, layout[0]))
    assert groups == [[("v0", "a"), ("v1", "a")], [("v0", "b"), ("v1", "b")]]
    for not_in_order in (
        [queued[0], queued[2], queued[1], queued[3]],  # a request's records split
        [queued[2], queued[3], queued[0], queued[1]],  # times falling
        [record("a", 0, 1), record("b", 0, 1)],  # times tied
        [queued[1], queued[0]],  # indices falling
    ):
        assert _consecutive_groups(not_in_order, lambda *_: None) is None


def test_the_decorator_records_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The records a decorated route makes (numbers, traced or not) have the
    common layout the exporters encode without points; a text value does not."""
    seen: list[Record] = []
    monkeypatch.setattr(RECORDER, "record_many", seen.extend)
    chest = RecordingChest()
    app = Flask(__name__)

    @app.route("/items/<int:number>", methods=["GET", "POST"])
    @flask_chest(chests=[chest], tracked_vars={"GET": ["a", "b"], "POST": ["text"]})
    def items(number: int) -> str:
        g.a, g.b, g.text = number, 0.5, "not a number"
        return "ok"

    tracer = TracerProvider().get_tracer(__name__)
    client = app.test_client()
    client.get("/items/1")
    with tracer.start_as_current_span("traced"):
        client.get("/items/2")
    client.post("/items/3")
    layouts = [common_layout(record) for record in seen]
    assert [layout is not None for layout in layouts] == [True] * 4 + [False]
    assert layouts[0] is not None and layouts[0][1:4] == ("GET", "/items/<int:number>", 200)
    assert seen[0][SPAN_IDS] is None and seen[2][SPAN_IDS] is not None
    chest.shutdown(timeout_millis=1000)


def test_sqlite_rows_from_records_land_as_before(tmp_path: Path) -> None:
    """Rows made from records are written and read back like any other."""
    exporter = SQLiteMetricExporter(db_uri=str(tmp_path / "c.sqlite3"))
    common = {ATTR_REQUEST_ID: "r", ATTR_METHOD: "GET", ATTR_ROUTE: "/", ATTR_STATUS_CODE: 201}
    records: list[Record] = [
        (0, "transaction", 1, flat_attributes({**common, ATTR_INDEX: 0}), 10**18, (1, 2), ()),
        (0, "ok", True, flat_attributes({**common, ATTR_INDEX: 1}), 10**18, None, ("t", "x")),
    ]
    exporter.export_records(records)
    assert exporter.force_flush(10_000)
    import sqlite3

    connection = sqlite3.connect(tmp_path / "c.sqlite3")
    got = connection.execute(
        "SELECT name, value, value_type, request_id, trace_id, span_id, time, status_code, tags"
        " FROM flask_chest"
    ).fetchall()
    connection.close()
    exporter.shutdown()
    time = "2001-09-09T01:46:40.000000000Z"
    assert got == [
        ("transaction", 1, "int", "r", f"{1:032x}", f"{2:016x}", time, 201, None),
        ("ok", 1, "bool", "r", None, None, time, 201, '{"t": "x"}'),
    ]
    assert json.dumps(got)


def test_the_collector_untracks_a_plain_tuple_never_a_named_tuple() -> None:
    """Why ``Record`` is a plain tuple read through index constants: the same
    fields in a ``NamedTuple`` stay tracked by the garbage collector."""
    import gc
    from typing import NamedTuple

    class Named(NamedTuple):
        key: int
        attributes: tuple[str, ...]

    attributes = tuple(["a", "b"])
    plain, named = tuple([0, attributes]), Named(0, attributes)
    assert gc.is_tracked(plain) and gc.is_tracked(named)  # when made
    gc.collect()
    assert (gc.is_tracked(plain), gc.is_tracked(named)) == (False, True)


def test_a_record_made_tuple_reads_pickles_and_copies_as_one_made_whole() -> None:
    """A tuple made from a record makes its ``attributes`` on first read:
    read from many threads at once, pickled and copied (which read them),
    it equals the ContextTuple made with them from the start."""
    import copy
    import pickle
    import threading

    from flask_chest_otel.http_payload._context_tuple import ContextTuple

    common = {ATTR_REQUEST_ID: "r", ATTR_METHOD: "GET", ATTR_ROUTE: "/", ATTR_STATUS_CODE: 201}
    record: Record = (
        0, "transaction", 1, flat_attributes({**common, ATTR_INDEX: 0}), 10**18, (1, 2),
        ("service.name", "shop"),
    )  # fmt: skip
    whole = ContextTuple(
        "transaction", 1, "r",
        {"method": "GET", "route": "/", "status_code": 201, "service.name": "shop",
         "trace_id": f"{1:032x}", "span_id": f"{2:016x}"},
        10**18, "gauge",
    )  # fmt: skip

    def fields(item: ContextTuple) -> list[Any]:
        return [*item, item.attributes, item.time_unix_nano, item.kind]

    [[threaded]] = record_groups([record])
    seen: list[Any] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        seen.append(threaded.attributes)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [whole.attributes] * 8
    assert fields(threaded) == fields(whole)
    for twin_of in (lambda item: pickle.loads(pickle.dumps(item)), copy.copy, copy.deepcopy):
        [[fresh]] = record_groups([record])  # attributes not read yet
        twin = twin_of(fresh)
        assert type(twin) is ContextTuple and fields(twin) == fields(whole)
