"""The sample app with a SQLite chest, served by gunicorn in the fork tests.

The database path comes from FLASK_CHEST_TEST_DB; each request ID names the
worker process that served it.
"""

from __future__ import annotations

import itertools
import os

from flask_chest_otel import FlaskChestSQLite
from tests.conftest import sample_app

_counter = itertools.count()


def request_id() -> str:
    return f"{os.getpid()}-{next(_counter)}"


chest = FlaskChestSQLite(db_uri=os.environ["FLASK_CHEST_TEST_DB"], export_interval=0.5)
app = sample_app([chest], request_id_generator=request_id)


@app.route("/health")
def health() -> str:
    """Readiness probe: not decorated, so it records nothing."""
    return "ok"
