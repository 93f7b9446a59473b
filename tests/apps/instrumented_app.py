"""A Flask app run under `opentelemetry-instrument` by the autoconfig test:
it serves a few requests through the test client and exits, leaving the SDK
to flush its metrics at exit."""

from __future__ import annotations

import sys

from flask import Flask

app = Flask(__name__)


@app.route("/hello")
def hello() -> str:
    return "hello"


if __name__ == "__main__":
    client = app.test_client()
    for _ in range(int(sys.argv[1])):
        assert client.get("/hello").status_code == 200
