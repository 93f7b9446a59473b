"""Bad input, end to end: what each kind of hostile or broken input becomes,
through the real app path (Flask test client -> @flask_chest -> chest ->
real VictoriaMetrics / InfluxDB 1.6 / a loopback HTTP(S) server).

Outcomes are documented in docs/faults.md. Cases already pinned elsewhere
are not repeated here: values keeping their type and the 4096-character
cut (test_flask_chest_data.test_values_keep_their_type_numeric_text_stays_text), None and
unset variables, request IDs over 255 characters cut on ``g``, generators that
raise, return None, "" or a non-string, bad ``tracked_vars``
(test_decorator), malformed URLs of the bare exporters (test_influxdb,
test_http_payload), TLS verification of the custom writer (test_http_payload).
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g

from flask_chest_otel import FlaskChestCustomWriter, FlaskChestInfluxDB, flask_chest
from flask_chest_otel._chest import Chest

from .conftest import app_recording
from .http_sink import HTTPSink
from .servers import InfluxDB1, VictoriaMetrics, free_port

SECRET = "s3cr3t-T0KEN"

#: Names, request IDs and tag values that line protocol must escape, or that
#: are not ASCII; each round-trips exactly (docs/faults.md).
NASTY = [
    "a b",
    "a,b",
    "a=b",
    'quo"te',
    "x, y=z w",
    "température",
    "日本語",
    "emoji 🚀",
    "#hash",
    "back\\slash",
    "time",
]
#: What InfluxDB and VictoriaMetrics store for text that line protocol
#: cannot carry raw: control characters become their two-character escape.
CONTROL = {"new\nline": "new\\nline", "tab\there": "tab\\there", "cr\rx": "cr\\rx"}


def nasty_requests() -> tuple[list[tuple[str, dict[str, Any]]], dict[str, tuple[str, float]]]:
    """One request per nasty string, used as variable name and request ID;
    and the expected {stored variable name: (stored request id, value)}."""
    requests, expected = [], {}
    for i, (text, stored) in enumerate(
        itertools.chain(((s, s) for s in NASTY), CONTROL.items())
    ):
        requests.append((f"id {text}", {f"bi{i} {text}": i + 0.5}))
        expected[f"bi{i} {stored}"] = (f"id {stored}", i + 0.5)
    return requests, expected


NASTY_TAGS = {f"k{i} {text}": f"v {text}" for i, text in enumerate(NASTY)}


def test_special_characters_and_unicode_round_trip_through_victoria_metrics(
    vm: VictoriaMetrics, chests: list[Chest]
) -> None:
    """Variable names, request IDs, tag keys and tag values with line-protocol
    separators, quotes, '#', unicode and emoji come back from VictoriaMetrics
    as written; control characters come back as their escape (\\n)."""
    chest = FlaskChestInfluxDB(
        name="vm", url=vm.url, token=SECRET, org="o", bucket="b",
        custom_tags={"suite": "bad-input", **NASTY_TAGS}, retry_initial=0.05,
    )  # fmt: skip
    chests.append(chest)
    requests, expected = nasty_requests()
    app_recording(chest, requests)
    assert chest.force_flush(10_000)
    assert chest.exporter.stats.dropped == 0
    got = {}
    for series in vm.export('{suite="bad-input"}'):
        labels = series["metric"]
        assert {k: labels[k] for k in NASTY_TAGS} == NASTY_TAGS
        got[labels["__name__"].removesuffix("_value")] = (labels["request_id"], *series["values"])
    assert got == expected


def test_special_characters_text_values_and_huge_strings_round_trip_through_influxd(
    influxd: InfluxDB1, chests: list[Chest]
) -> None:
    """The same through InfluxDB 1.6's own parser, plus text values (string
    field value) and NaN and infinities (string field value_str, the text
    "nan"/"inf"), a
    10,000-character value is cut to 4096, a 1000-character request ID to 255,
    a 5000-character variable name is kept whole, None records nothing."""
    influxd.create_database("bad")
    chest = FlaskChestInfluxDB(
        name="influxd", url=influxd.url, database="bad",
        custom_tags=NASTY_TAGS, retry_initial=0.05,
    )  # fmt: skip
    chests.append(chest)
    requests, expected = nasty_requests()
    long_name = "n" * 5000
    requests += [
        ("id text", {"text": 'héllo, wörld = "q" \\ 🚀\n'}),
        ("id nan", {"text": float("nan")}),
        ("id inf", {"text": float("-inf")}),
        ("id huge", {"text": "x" * 10_000}),
        ("L" * 1000, {long_name: 1}),
        ("id none", {"nothing": None}),
    ]
    app_recording(chest, requests)
    assert chest.force_flush(10_000)
    assert chest.exporter.stats.dropped == 0
    got: dict[str, list[tuple[str, Any]]] = {}
    for series in influxd.series("bad"):
        tags = series["tags"]
        assert {k: tags[k] for k in NASTY_TAGS} == NASTY_TAGS
        columns = series["columns"]
        for row in series["values"]:
            fields = dict(zip(columns, row, strict=True))
            value = fields["value"] if fields.get("value") is not None else fields["value_str"]
            got.setdefault(series["name"], []).append((tags["request_id"], value))
    for name, (request_id, value) in expected.items():
        assert got.pop(name) == [(request_id, value)]
    assert sorted(got.pop("text")) == [
        ("id huge", "x" * 4096),
        ("id inf", "-inf"),
        ("id nan", "nan"),
        ("id text", 'héllo, wörld = "q" \\ 🚀\\n'),
    ]
    assert got.pop(long_name) == [("L" * 255, 1.0)]
    assert got == {}  # "nothing" (None) was not recorded


def test_text_values_reach_victoria_metrics_as_its_numeric_reading_of_the_string(
    vm: VictoriaMetrics, chests: list[Chest]
) -> None:
    """VictoriaMetrics (1.79) does not drop string fields: a text value (field
    ``value``, as flask-chest wrote it) is stored as series ``<name>_value``
    holding its own numeric reading of the text (0 for words); a NaN or
    infinite float (string field ``value_str``, "nan"/"inf") as
    ``<name>_value_str`` (+Inf for "inf"; "nan" gives a NaN sample, which it
    does not keep). Accepted, never an error."""
    chest = FlaskChestInfluxDB(
        name="vm-text", url=vm.url, token=SECRET, org="o", bucket="b",
        custom_tags={"suite": "vm-text"}, retry_initial=0.05,
    )  # fmt: skip
    chests.append(chest)
    app_recording(
        chest,
        [("r1", {"t": "ok", "n": 1}), ("r2", {"t": float("nan"), "n": 2}), ("r3", {"t": 1e400})],
    )
    assert chest.force_flush(10_000)
    assert chest.exporter.stats.exported == 5 and chest.exporter.stats.dropped == 0
    got = {
        (s["metric"]["__name__"], s["metric"]["request_id"]): s["values"]
        for s in vm.export('{suite="vm-text"}')
    }
    # "nan" would be a NaN sample, which VictoriaMetrics does not keep.
    assert got == {
        ("t_value", "r1"): [0],
        ("t_value_str", "r3"): [math.inf],
        ("n_value", "r1"): [1],
        ("n_value", "r2"): [2],
    }


# -- configuration that cannot work -------------------------------------------------


BAD_URLS = ["localhost:8086", "http://", "ftp://host/x", "http://host:99999", "http://[::1", ""]


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("kind", ["influxdb", "custom"])
def test_a_malformed_url_fails_when_the_chest_is_built_naming_the_url(kind: str, url: str) -> None:
    """Every chest refuses a malformed URL at construction, with ValueError
    naming the chest or the URL; nothing is started."""
    with pytest.raises(ValueError, match="url") as error:
        if kind == "influxdb":
            FlaskChestInfluxDB(name="bad", url=url, token=SECRET, org="o", bucket="b")
        else:
            FlaskChestCustomWriter(name="bad", url=url, payload_generator=list)
    assert SECRET not in str(error.value)


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged, tracebacks included, as a handler would print it."""
    formatter = logging.Formatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


def test_an_unreachable_host_keeps_the_data_and_never_touches_the_request(
    chests: list[Chest], caplog: pytest.LogCaptureFixture
) -> None:
    """A port nobody listens on: requests answer 200, points stay buffered
    and retried, the log names the URL and the error, never the token."""
    url = f"http://127.0.0.1:{free_port()}"
    chest = FlaskChestInfluxDB(
        name="nowhere", url=url, token=SECRET, org="o", bucket="b",
        retry_initial=0.05, retry_max=0.2, timeout=1.0,
    )  # fmt: skip
    chests.append(chest)
    with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
        app_recording(chest, [(f"r{i}", {"x": i}) for i in range(20)])
        assert chest.force_flush(600) is False
    assert chest.exporter.stats.buffered == 20 and chest.exporter.stats.retried >= 20
    text = _log_text(caplog)
    assert "nowhere" in text and url in text and "Connection" in text
    assert SECRET not in text


# urllib3 (under influxdb-client) drops the SSLSocket of a failed handshake
# without closing it; the garbage collector then warns. That socket is not
# ours to close: the test collects it here so that no later test sees it.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_verification_failure_to_influxdb_is_retried_and_logged_without_the_token(
    certificate: tuple[str, str], chests: list[Chest], caplog: pytest.LogCaptureFixture
) -> None:
    """An HTTPS InfluxDB URL whose certificate is unknown: nothing is sent,
    the points stay buffered (retried: a CA bundle fixed at runtime, or a
    renewed certificate, lets them through), the log says CERTIFICATE_VERIFY;
    with ``ssl_ca_cert`` the same server takes them."""
    with HTTPSink(tls=certificate) as sink:
        refused = FlaskChestInfluxDB(
            name="tls", url=sink.url, token=SECRET, org="o", bucket="b",
            retry_initial=0.05, retry_max=0.2,
        )  # fmt: skip
        trusted = FlaskChestInfluxDB(
            name="tls-ca", url=sink.url, token=SECRET, org="o", bucket="b",
            ssl_ca_cert=certificate[0], retry_initial=0.05,
        )  # fmt: skip
        chests += [refused, trusted]
        with caplog.at_level(logging.WARNING, logger="flask_chest_otel"):
            app_recording(refused, [("r1", {"x": 1})])
            assert refused.force_flush(800) is False
        assert refused.exporter.stats.buffered == 1
        assert sink.posts() == []
        text = _log_text(caplog)
        assert "CERTIFICATE_VERIFY_FAILED" in text and SECRET not in text
        app_recording(trusted, [("r2", {"x": 2})])
        assert trusted.force_flush(5_000)
        [post] = sink.posts()
        assert post.path == "/api/v2/write" and post.header("Authorization") == f"Token {SECRET}"
        refused.shutdown(1_000)
        gc.collect()


def _token_chest(kind: str, url: str) -> Chest:
    bad = SECRET + "\nX-Injected: yes"
    if kind == "influxdb":
        return FlaskChestInfluxDB(
            name="bad-token", url=url, token=bad, org="o", bucket="b", retry_initial=0.05
        )
    return FlaskChestCustomWriter(
        name="bad-token", url=url, payload_generator=list,
        headers={"X-SF-Token": bad}, retry_initial=0.05,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["influxdb", "custom"])
def test_a_newline_in_the_token_is_rejected_without_printing_it_and_the_thread_lives_on(
    kind: str, chests: list[Chest], caplog: pytest.LogCaptureFixture
) -> None:
    """A token (or header) holding a newline cannot be sent: the batch is
    dropped as rejected, nothing is injected on the wire, the exporter
    thread keeps running, and no log line, traceback included, shows the
    token."""
    with HTTPSink() as sink:
        chest = _token_chest(kind, sink.url)
        chests.append(chest)
        with caplog.at_level(logging.DEBUG, logger="flask_chest_otel"):
            app_recording(chest, [("r1", {"x": 1})])
            assert chest.force_flush(3_000) is False  # the request was refused
        stats = chest.exporter.stats
        assert (stats.dropped_rejected, stats.exported, stats.buffered) == (1, 0, 0)
        assert sink.posts() == []
        thread = chest.exporter._thread
        assert thread is not None and thread.is_alive()
        text = _log_text(caplog)
        assert "bad-token" in text and "header" in text.lower()
        assert SECRET not in text


Factory = Callable[[], Any]


@pytest.mark.parametrize(
    "generator, stored",
    [
        (lambda: "r" * 300, "r" * 255),
        (lambda: 12345, "12345"),
        (lambda: "id, with=specials and 🚀", "id, with=specials and 🚀"),
    ],
    ids=["over-255", "non-string", "specials"],
)
def test_request_ids_reach_victoria_metrics_as_g_holds_them(
    vm: VictoriaMetrics, chests: list[Chest], generator: Factory, stored: str, tmp_path: Path
) -> None:
    """A request ID over 255 characters is stored cut to 255, a non-string as
    its str(), specials as given: the same value as g.custom_request_id."""
    suite = f"rid-{len(chests)}-{tmp_path.name}"
    chest = FlaskChestInfluxDB(
        name="rid", url=vm.url, token=SECRET, org="o", bucket="b",
        custom_tags={"suite": suite}, retry_initial=0.05,
    )  # fmt: skip
    chests.append(chest)
    app = Flask(__name__)
    seen: list[str] = []

    @app.route("/")
    @flask_chest(chests=[chest], tracked_vars={"GET": ["x"]}, request_id_generator=generator)
    def index() -> str:
        seen.append(g.custom_request_id)
        g.x = 1
        return "ok"

    assert app.test_client().get("/").status_code == 200
    assert chest.force_flush(10_000)
    [series] = vm.export(f'{{suite="{suite}"}}')
    assert series["metric"]["request_id"] == stored == seen[0]
