"""A Flask app served by gunicorn under ``opentelemetry-instrument
--metrics_exporter http_payload`` in the SIGTERM test: each request records
one decorated variable into the global MeterProvider (the distro's, whose
reader holds the ``http_payload`` exporter), keyed by the request ID the
test gives as ``?id=``, so each request is one payload the endpoint counts."""

from __future__ import annotations

from flask import Flask, g, request

from flask_chest_otel import FlaskChestMeterProvider, flask_chest

app = Flask(__name__)


@app.route("/")
@flask_chest(
    chests=[FlaskChestMeterProvider()],
    tracked_vars={"GET": ["transaction"]},
    request_id_generator=lambda: request.args["id"],
)
def index() -> str:
    g.transaction = 1
    return "ok"


@app.route("/health")
def health() -> str:
    """Readiness probe: not decorated, so it records nothing."""
    return "ok"
