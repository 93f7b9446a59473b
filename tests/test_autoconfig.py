"""Configuration from the environment and OpenTelemetry's entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from flask_chest_otel import environment_variables
from flask_chest_otel.autoconfig import (
    HTTPPayloadEnvMetricExporter,
    InfluxDBEnvMetricExporter,
    http_payload_settings,
    influxdb_settings,
)
from flask_chest_otel.http_payload import json_payload

from .servers import VictoriaMetrics

REPO = Path(__file__).resolve().parent.parent


def test_influxdb_settings_read_the_otel_variables() -> None:
    settings = influxdb_settings(
        {
            "OTEL_EXPORTER_INFLUXDB_ENDPOINT": "http://db:8086",
            "OTEL_EXPORTER_INFLUXDB_TOKEN": "t0ken",
            "OTEL_EXPORTER_INFLUXDB_ORG": "acme",
            "OTEL_EXPORTER_INFLUXDB_BUCKET": "slis",
            "OTEL_EXPORTER_INFLUXDB_TIMEOUT": "2500",
            "OTEL_EXPORTER_INFLUXDB_HEADERS": "X-Scope=team%20a, X-Env=prod",
            "OTEL_EXPORTER_INFLUXDB_COMPRESSION": "none",
            "OTEL_EXPORTER_INFLUXDB_CUSTOM_TAGS": "app=shop",
        }
    )
    assert settings == {
        "url": "http://db:8086",
        "token": "t0ken",
        "org": "acme",
        "bucket": "slis",
        "timeout": 2.5,
        "headers": {"X-Scope": "team a", "X-Env": "prod"},
        "enable_gzip": False,
        "custom_tags": {"app": "shop"},
    }


def test_influxdb_env_exporter_falls_back_to_influxdb_client_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in dir(environment_variables):
        if name.startswith(("OTEL_", "INFLUXDB_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INFLUXDB_V2_URL", "http://fallback:8086")
    monkeypatch.setenv("INFLUXDB_V2_ORG", "org-b")
    monkeypatch.setenv("INFLUXDB_V2_BUCKET", "bucket-b")
    monkeypatch.setenv("OTEL_EXPORTER_INFLUXDB_BUCKET", "bucket-a")
    exporter = InfluxDBEnvMetricExporter()
    assert (exporter.url, exporter.org, exporter.bucket) == (
        "http://fallback:8086",
        "org-b",
        "bucket-a",
    )
    exporter.shutdown()


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("OTEL_EXPORTER_INFLUXDB_TIMEOUT", "soon", "expected milliseconds"),
        ("OTEL_EXPORTER_INFLUXDB_TIMEOUT", "0", "must be > 0"),
        ("OTEL_EXPORTER_INFLUXDB_HEADERS", "novalue", "expected key=value"),
        ("OTEL_EXPORTER_INFLUXDB_COMPRESSION", "brotli", "expected gzip or none"),
    ],
)
def test_a_malformed_variable_fails_at_start_naming_it(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=rf"\${variable}: {message}"):
        influxdb_settings({variable: value, **_REQUIRED})


_REQUIRED = {"OTEL_EXPORTER_INFLUXDB_ENDPOINT": "http://db:8086",
             "OTEL_EXPORTER_INFLUXDB_BUCKET": "slis"}


@pytest.mark.parametrize(
    "environ, variable, flag, fallback",
    [
        ({}, "OTEL_EXPORTER_INFLUXDB_ENDPOINT", "--exporter_influxdb_endpoint", "INFLUXDB_V2_URL"),
        ({"INFLUXDB_V2_URL": "http://db:8086"}, "OTEL_EXPORTER_INFLUXDB_BUCKET",
         "--exporter_influxdb_bucket", "INFLUXDB_V2_BUCKET"),
    ],
)  # fmt: skip
def test_a_missing_setting_names_the_otel_variable_its_flag_and_the_fallback(
    environ: dict[str, str], variable: str, flag: str, fallback: str
) -> None:
    with pytest.raises(ValueError) as raised:
        influxdb_settings(environ)
    message = str(raised.value)
    assert f"${variable}" in message
    assert f"flag {flag}" in message
    assert f"${fallback}" in message


def test_http_payload_settings_import_the_generator_and_need_an_endpoint() -> None:
    settings = http_payload_settings(
        {
            "OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT": "http://sink:3000/ingest",
            "OTEL_EXPORTER_HTTP_PAYLOAD_GENERATOR": "flask_chest_otel.signalfx:signalfx_payload",
            "OTEL_EXPORTER_HTTP_PAYLOAD_PER_REQUEST": "false",
            "OTEL_EXPORTER_HTTP_PAYLOAD_TIMEOUT": "1500",
        }
    )
    from flask_chest_otel.signalfx import signalfx_payload

    assert settings["payload_generator"] is signalfx_payload
    assert (settings["per_request"], settings["timeout"]) == (False, 1.5)
    assert http_payload_settings({"OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT": "http://x"})[
        "payload_generator"
    ] is json_payload
    with pytest.raises(
        ValueError,
        match=r"OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT \(opentelemetry-instrument flag "
        r"--exporter_http_payload_endpoint\) is not set",
    ):
        http_payload_settings({})
    with pytest.raises(ValueError, match="cannot import"):
        http_payload_settings(
            {
                "OTEL_EXPORTER_HTTP_PAYLOAD_ENDPOINT": "http://x",
                "OTEL_EXPORTER_HTTP_PAYLOAD_GENERATOR": "no_such_module:f",
            }
        )


def test_exporters_and_variables_are_registered_as_otel_entry_points() -> None:
    exporters = {ep.name: ep.load() for ep in entry_points(group="opentelemetry_metrics_exporter")}
    assert exporters["influxdb"] is InfluxDBEnvMetricExporter
    assert exporters["http_payload"] is HTTPPayloadEnvMetricExporter
    [variables] = [
        ep for ep in entry_points(group="opentelemetry_environment_variables")
        if ep.name == "flask_chest_otel"
    ]
    assert variables.load() is environment_variables


def test_opentelemetry_instrument_exports_flask_metrics_to_the_real_server(
    vm: VictoriaMetrics,
) -> None:
    """A Flask app under `opentelemetry-instrument --metrics_exporter influxdb`
    (a real subprocess, settings given as flags and variables) lands its
    http.server.request.duration histogram in VictoriaMetrics."""
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    env = {
        **os.environ,
        "OTEL_EXPORTER_INFLUXDB_ENDPOINT": vm.url,
        "OTEL_EXPORTER_INFLUXDB_ORG": "my-org",
        "OTEL_SERVICE_NAME": "autoconfig-test",
        # The stable HTTP semantic conventions: http.server.request.duration, http.route.
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
    }
    completed = subprocess.run(
        [
            str(instrument),
            "--metrics_exporter", "influxdb",
            "--traces_exporter", "none",
            "--logs_exporter", "none",
            "--exporter_influxdb_bucket", "my-bucket",
            sys.executable, "tests/apps/instrumented_app.py", "7",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    series = vm.export('{__name__="http.server.request.duration_count"}')
    assert series, completed.stderr
    assert sum(s["values"][-1] for s in series) == 7
    labels = series[0]["metric"]
    assert labels["service.name"] == "autoconfig-test"
    assert labels["http.route"] == "/hello"


def test_a_misconfigured_opentelemetry_instrument_run_says_what_to_set_and_serves_on() -> None:
    """The OTel distro catches a configurator error: the app serves on without
    metrics (documented in docs/otel_setup.md), and the log it prints names the
    variable and the flag to set."""
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "INFLUXDB_V2_"))
    }
    completed = subprocess.run(
        [
            str(instrument),
            "--metrics_exporter", "influxdb",
            "--traces_exporter", "none",
            "--logs_exporter", "none",
            sys.executable, "tests/apps/instrumented_app.py", "3",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "Configuration of configurator failed" in completed.stderr
    assert "$OTEL_EXPORTER_INFLUXDB_ENDPOINT" in completed.stderr
    assert "flag --exporter_influxdb_endpoint" in completed.stderr


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ("X-Scope=team%20a, X-Env=prod", {"X-Scope": "team a", "X-Env": "prod"}),
        ("App=my shop,region=eu-1", {"App": "my shop", "region": "eu-1"}),
        ("token=a=b", {"token": "a=b"}),
        (" , a=1,", {"a": "1"}),
    ],
)
def test_pairs_are_read_as_opentelemetry_reads_otlp_headers_keys_keeping_their_case(
    text: str, pairs: dict[str, str]
) -> None:
    from opentelemetry.util.re import parse_env_headers

    from flask_chest_otel.autoconfig import parse_pairs

    assert parse_pairs(text, "V") == pairs
    assert {key.lower(): value for key, value in pairs.items()} == parse_env_headers(
        text, liberal=True
    )


def test_the_bucket_variable_is_not_called_influxdb_clients() -> None:
    with pytest.raises(ValueError) as raised:
        influxdb_settings({"INFLUXDB_V2_URL": "http://db:8086"})
    assert "this library's $INFLUXDB_V2_BUCKET" in str(raised.value)
    assert "influxdb-client" not in str(raised.value)
