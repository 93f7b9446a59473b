"""docker-compose.yml and deploy/, checked statically (no Docker engine here):
services, pinned images, ports, one set of InfluxDB credentials everywhere,
every referenced file present, and a dashboard that queries what the demo
app writes. The demo app itself is imported and run on a RecordingChest."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flask_chest_otel import FlaskChestCustomWriter, FlaskChestOTel
from flask_chest_otel.influxdb import FlaskChestInfluxDB
from flask_chest_otel.testing import RecordingChest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "flask_chest_slis.json"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "flask_chest.yaml"
COLLECTOR_CONFIG = DEPLOY / "otel-collector" / "config.yaml"
DEMO_APP = DEPLOY / "app" / "demo_app.py"

#: Tags the InfluxDB chest writes for a decorated variable (docs/influxdb.md),
#: plus the demo's custom tag.
CHEST_TAGS = {"request_id", "method", "route", "app"}
#: Tags the Collector writes for the same variable (its attributes).
COLLECTOR_TAGS = {"request_id", "http.request.method", "http.route"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = load_yaml(COMPOSE)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def demo_app() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("flask_chest_demo_app", DEMO_APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    return {key: str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path or volume name, container path) of each volume."""
    result = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        result.append((source, target))
    return result


def host_path(container_path: str, service: dict[str, Any]) -> Path | None:
    """The repository file a container path of ``service`` is bound to."""
    for source, target in sorted(mounts(service), key=lambda m: -len(m[1])):
        if source.startswith("./") and (
            container_path == target or container_path.startswith(target.rstrip("/") + "/")
        ):
            return ROOT / source / container_path[len(target) :].lstrip("/")
    return None


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["query"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_stack_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {
        "influxdb", "otel-collector", "app", "sink", "loadgen", "grafana", "jaeger"
    }  # fmt: skip


def test_every_image_has_a_pinned_tag(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), (
            f"{name}: image {image!r} is not pinned to a version"
        )


def test_images_are_the_ones_the_stack_is_built_for(services: dict[str, Any]) -> None:
    assert services["influxdb"]["image"].startswith("influxdb:2.7.")
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_published_ports(services: dict[str, Any]) -> None:
    def published(name: str) -> set[str]:
        return {str(port).split(":")[-1] for port in services[name].get("ports", [])}

    assert "8086" in published("influxdb")
    assert {"4317", "4318"} <= published("otel-collector")
    assert "8000" in published("app")
    assert "3000" in published("grafana")
    assert "16686" in published("jaeger")


def test_influxdb_is_initialised_with_org_bucket_and_token(services: dict[str, Any]) -> None:
    env = environment(services["influxdb"])
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("USERNAME", "PASSWORD", "ORG", "BUCKET", "ADMIN_TOKEN"):
        assert env[f"DOCKER_INFLUXDB_INIT_{key}"], key


@pytest.mark.parametrize("client", ["app", "otel-collector", "grafana"])
def test_influxdb_clients_use_the_initialised_org_bucket_and_token(
    services: dict[str, Any], client: str
) -> None:
    init = environment(services["influxdb"])
    env = environment(services[client])
    assert env["INFLUXDB_ORG"] == init["DOCKER_INFLUXDB_INIT_ORG"]
    assert env["INFLUXDB_BUCKET"] == init["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert env["INFLUXDB_TOKEN"] == init["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert env["INFLUXDB_URL"] == "http://influxdb:8086"


def test_app_sends_to_the_collector_and_the_sink(services: dict[str, Any]) -> None:
    env = environment(services["app"])
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert env["SINK_URL"].startswith(f"http://sink:{environment(services['sink'])['PORT']}/")
    assert environment(services["loadgen"])["TARGET_URL"] == "http://app:8000"


def test_collector_receives_otlp_and_writes_to_influxdb(services: dict[str, Any]) -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    exporter = config["exporters"]["influxdb"]
    assert exporter["metrics_schema"] == "telegraf-prometheus-v1"
    env = environment(services["otel-collector"])
    for key in ("endpoint", "org", "bucket", "token"):
        variables = re.findall(r"\$\{env:(\w+)\}", exporter[key])
        assert variables, f"collector influxdb.{key} should come from the environment"
        assert all(variable in env for variable in variables), (key, variables)
    pipeline = config["service"]["pipelines"]["metrics"]
    assert "otlp" in pipeline["receivers"] and "influxdb" in pipeline["exporters"]
    command = " ".join(services["otel-collector"]["command"])
    config_path = re.search(r"--config=(\S+)", command)
    assert config_path is not None
    assert host_path(config_path.group(1), services["otel-collector"]) == COLLECTOR_CONFIG


def test_every_bind_mount_exists(services: dict[str, Any], compose: dict[str, Any]) -> None:
    for name, service in services.items():
        for source, _target in mounts(service):
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_service_scripts_exist(services: dict[str, Any]) -> None:
    for name in ("sink", "loadgen"):
        service = services[name]
        script = service["command"][-1]
        path = host_path(script, service)
        assert path is not None and path.is_file(), f"{name}: {script} is not mounted"
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_app_image_builds_from_files_that_exist(services: dict[str, Any]) -> None:
    build = services["app"]["build"]
    context = ROOT / build["context"]
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file()
    text = dockerfile.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim$", text, re.MULTILINE)
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert (context / source).exists(), f"Dockerfile: COPY {source} is missing"
    command = json.loads(re.search(r"^CMD (.+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert command[0] == "gunicorn" and command[-1] == "demo_app:create_app()"
    ignore = (dockerfile.parent / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert "!deploy/app/demo_app.py" in ignore and "!flask_chest_otel/" in ignore


def test_grafana_datasource_is_the_initialised_influxdb(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert host_path("/etc/grafana/provisioning/datasources/influxdb.yaml", grafana) == DATASOURCE
    (datasource,) = load_yaml(DATASOURCE)["datasources"]
    assert datasource["type"] == "influxdb"
    assert datasource["jsonData"]["version"] == "Flux"
    env = environment(grafana)
    values = {
        "url": datasource["url"],
        "organization": datasource["jsonData"]["organization"],
        "defaultBucket": datasource["jsonData"]["defaultBucket"],
        "token": datasource["secureJsonData"]["token"],
    }
    expected = {
        "url": "INFLUXDB_URL",
        "organization": "INFLUXDB_ORG",
        "defaultBucket": "INFLUXDB_BUCKET",
        "token": "INFLUXDB_TOKEN",
    }
    for key, variable in expected.items():
        assert values[key] == "${" + variable + "}" and variable in env, key


def test_grafana_loads_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    provider = load_yaml(DASHBOARD_PROVIDER)["providers"][0]
    dashboards_dir = host_path(provider["options"]["path"], grafana)
    assert dashboards_dir == DASHBOARD.parent
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(home, grafana) == DASHBOARD


def test_dashboard_is_valid_and_uses_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (datasource,) = load_yaml(DATASOURCE)["datasources"]
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "influxdb", "uid": datasource["uid"]}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            assert target["query"].startswith("from(bucket: v.defaultBucket)")
            assert "range(start: v.timeRangeStart, stop: v.timeRangeStop)" in target["query"]


def test_dashboard_shows_the_sample_usage_slis() -> None:
    titles = [panel["title"].lower() for panel in json.loads(DASHBOARD.read_text())["panels"]]
    assert "total transactions" in titles
    assert any("average post response time per route" in title for title in titles)
    assert any("request rate" in title for title in titles)


def test_dashboard_queries_name_the_measurements_fields_and_tags_the_app_writes(
    demo_app: ModuleType,
) -> None:
    queries = dashboard_queries()
    measurements = set(demo_app.MEASUREMENTS)
    queried = {m for query in queries for m in re.findall(r'r\._measurement == "(\w+)"', query)}
    assert queried == measurements
    for query in queries:
        fields = set(re.findall(r'r\._field == "(\w+)"', query))
        assert fields in ({"value"}, {"value", "trace_id"}, {"gauge"}), query
        tags = set(re.findall(r'r\.(\w+) ==', query)) - {"_measurement", "_field"}
        tags |= set(re.findall(r'r\["([\w.]+)"\] ==', query))
        tags |= {
            column
            for group in re.findall(r"group\(columns: \[([^\]]*)\]\)", query)
            for column in re.findall(r'"([\w.]+)"', group)
        }
        known = COLLECTOR_TAGS if fields == {"gauge"} else CHEST_TAGS
        assert tags <= known, (query, tags - known)


def test_demo_app_records_the_measurements_the_dashboard_queries(demo_app: ModuleType) -> None:
    chest = RecordingChest()
    try:
        client = demo_app.create_app(chests=[chest]).test_client()
        assert client.get("/").status_code == 200
        assert client.post("/").status_code == 200
        assert client.post("/api/orders").status_code == 201
        assert client.get("/api/orders").status_code == 200
        assert client.get("/healthz").status_code == 200
        recorded = [(m.name, m.method, m.route) for m in chest.measurements]
        assert recorded == [
            ("transaction", "GET", "/"),
            ("transaction", "POST", "/"),
            ("response_time", "POST", "/"),
            ("transaction", "POST", "/api/orders"),
            ("response_time", "POST", "/api/orders"),
            ("transaction", "GET", "/api/orders"),
        ]
        assert {name for name, _, _ in recorded} == set(demo_app.MEASUREMENTS)
        assert all(re.fullmatch(r"\d{20}", m.request_id or "") for m in chest.measurements)
    finally:
        chest.shutdown(timeout_millis=5_000)


def test_demo_app_builds_its_three_chests_and_its_tracing_from_the_environment(
    demo_app: ModuleType, services: dict[str, Any]
) -> None:
    env = environment(services["app"])
    # Closed loopback ports instead of the compose hosts; nothing is sent.
    env.update(
        INFLUXDB_URL="http://127.0.0.1:9",
        SINK_URL="http://127.0.0.1:9/v2/datapoint",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
    )
    chests = demo_app.build_chests(env)
    try:
        assert [type(chest) for chest in chests] == [
            FlaskChestInfluxDB,
            FlaskChestCustomWriter,
            FlaskChestOTel,
        ]
        assert chests[0].exporter.custom_tags == {"app": env["APP_NAME"]}
        wrapped = chests[2].exporter.wrapped
        assert wrapped._endpoint == "http://127.0.0.1:9/v1/metrics"
        tracing = demo_app.tracer_provider(env)
        (processor,) = tracing._active_span_processor._span_processors
        assert processor.span_exporter._endpoint == "http://127.0.0.1:9/v1/traces"
        tracing.shutdown()
    finally:
        for chest in chests:
            chest.shutdown(timeout_millis=1_000)


def test_collector_sends_the_apps_traces_to_jaeger(services: dict[str, Any]) -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["otlp/jaeger"]
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert environment(services["jaeger"])["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    assert "jaeger" in services["otel-collector"]["depends_on"]


def test_the_slow_post_panel_links_each_request_to_its_trace_in_jaeger(
    services: dict[str, Any],
) -> None:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    (panel,) = [p for p in panels if "slow posts" in p["title"].lower()]
    (target,) = panel["targets"]
    query = target["query"]
    assert 'r._measurement == "response_time"' in query and 'r.method == "POST"' in query
    assert 'r._field == "trace_id"' in query and "r.value > 0.04" in query
    links = [
        link
        for override in panel["fieldConfig"]["overrides"]
        if override["matcher"] == {"id": "byName", "options": "trace_id"}
        for prop in override["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    (link,) = links
    jaeger_ui = {str(port).split(":")[0] for port in services["jaeger"]["ports"]}
    assert link["url"] == "http://localhost:16686/trace/${__value.raw}"
    assert "16686" in jaeger_ui


def test_demo_app_points_name_their_requests_traces(demo_app: ModuleType) -> None:
    """Each recorded point carries the trace and span of its request's
    server span (what the InfluxDB chest writes as trace_id)."""
    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    chest = RecordingChest()
    try:
        client = demo_app.create_app(chests=[chest], tracing=tracing).test_client()
        for _ in range(3):
            assert client.post("/api/orders").status_code == 201
        measured = chest.measurements
    finally:
        chest.shutdown(timeout_millis=5_000)
        tracing.shutdown()
    server = {
        format(s.context.trace_id, "032x"): format(s.context.span_id, "016x")
        for s in spans.get_finished_spans()
    }
    assert len(server) == 3 and len(measured) == 6
    assert {m.trace_id for m in measured} == set(server)
    assert all(server[m.trace_id or ""] == m.span_id for m in measured)


def test_the_app_image_installs_what_the_demo_imports() -> None:
    dockerfile = (DEPLOY / "app" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"opentelemetry-instrumentation-flask==\d", dockerfile)
