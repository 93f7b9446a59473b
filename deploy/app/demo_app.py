"""The demo app of ``docker-compose.yml``: flask-chest's sample usage, recorded
app-wide by ``FlaskChestExtension`` and exported three ways at once:

- ``FlaskChestInfluxDB`` to InfluxDB 2.7 (measurements ``transaction`` and
  ``response_time``, field ``value``, tags ``request_id``, ``method``,
  ``route``, ``app``), which the Grafana dashboard reads;
- ``FlaskChestCustomWriter`` with the sample's payload generator to the
  ``sink`` service (it logs each POST);
- ``FlaskChestOTel`` with OpenTelemetry's OTLP/HTTP exporter to the
  OpenTelemetry Collector, which writes to InfluxDB too (same measurements,
  field ``gauge``, each point at its request's time).

Every request is traced (``opentelemetry-instrumentation-flask``); the spans
go over OTLP to the Collector and on to Jaeger, and each recorded point names
its request's trace (InfluxDB field ``trace_id``, an OTLP exemplar): the
dashboard's table of slow POSTs links each one to its trace in Jaeger.

gunicorn serves ``demo_app:create_app()``; each worker builds its own chests.
Settings come from the environment (see ``docker-compose.yml``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from flask import Flask, g, request
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from flask_chest_otel import FlaskChestCustomWriter, FlaskChestOTel
from flask_chest_otel.extension import FlaskChestExtension, flask_chest_exempt
from flask_chest_otel.influxdb import FlaskChestInfluxDB

#: What each method records: the sample usage's SLIs.
TRACKED_VARS = {"GET": ["transaction"], "POST": ["transaction", "response_time"]}
#: The InfluxDB measurements the app writes (the dashboard's queries name them).
MEASUREMENTS = ("transaction", "response_time")

logger = logging.getLogger("demo_app")
flask_chest_ext = FlaskChestExtension(tracked_vars=TRACKED_VARS)


def custom_request_id_generator() -> str:
    """The sample usage's request IDs: the current time to the microsecond."""
    return datetime.now().strftime("%Y%m%d%H%M%S%f")


def cust_payload_generator(context_tuple_list: list[tuple[str, Any, str]]) -> dict[int, Any]:
    """The sample usage's payload generator: index -> context tuple."""
    payload = {}
    for i, context_tuple in enumerate(context_tuple_list):
        payload[i] = context_tuple
    return payload


def tracer_provider(environ: Mapping[str, str] = os.environ) -> TracerProvider:
    """Records a span per request; exports them over OTLP/HTTP
    (``OTEL_EXPORTER_OTLP_ENDPOINT``) when that is set."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "demo")})
    )
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def build_chests(environ: Mapping[str, str] = os.environ) -> list[Any]:
    """The demo's chests, configured from ``environ``."""
    chests: list[Any] = [
        FlaskChestInfluxDB(
            name="InfluxDB",
            url=environ["INFLUXDB_URL"],
            token=environ["INFLUXDB_TOKEN"],
            org=environ["INFLUXDB_ORG"],
            bucket=environ["INFLUXDB_BUCKET"],
            custom_tags={"app": environ.get("APP_NAME", "flask-chest-demo")},
            logger=logger,
        ),
        FlaskChestCustomWriter(
            name="Sink",
            url=environ["SINK_URL"],
            payload_generator=cust_payload_generator,
            success_status_codes=[200, 201],
            logger=logger,
        ),
    ]
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/metrics"
        chests.append(FlaskChestOTel(OTLPMetricExporter(endpoint=endpoint), logger=logger))
    return chests


def create_app(
    chests: Sequence[Any] | None = None, tracing: TracerProvider | None = None
) -> Flask:
    """The app; ``chests`` and ``tracing`` replace the environment's (tests)."""
    logging.basicConfig(level=logging.INFO)
    app = Flask(__name__)
    # Before the extension: its hook then runs once the request's span is
    # current, and each point names the span's trace.
    FlaskInstrumentor().instrument_app(
        app, tracer_provider=tracing if tracing is not None else tracer_provider()
    )
    app.config["FLASK_CHEST_CHESTS"] = list(chests) if chests is not None else build_chests()
    app.config["FLASK_CHEST_REQUEST_ID_GENERATOR"] = custom_request_id_generator

    @app.route("/", methods=["GET", "POST"])
    def index() -> str:
        g.start = time.time()
        if request.method == "POST":
            g.transaction = 1
            g.response_time = time.time() - g.start
            return "Hello, World!"
        g.transaction = 1
        g.response_time = time.time() - g.start
        return "Hello, World!"

    @app.route("/api/orders", methods=["GET", "POST"])
    def orders() -> tuple[dict[str, Any], int]:
        g.start = time.time()
        g.transaction = 1
        if request.method == "POST":
            time.sleep(random.uniform(0.005, 0.05))  # some work worth measuring
            g.response_time = time.time() - g.start
            return {"order": g.custom_request_id}, 201
        return {"orders": []}, 200

    @app.route("/healthz")
    @flask_chest_exempt
    def healthz() -> str:
        return "ok"

    flask_chest_ext.init_app(app)
    return app
