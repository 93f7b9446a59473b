"""A process with spooling chests, driven line by line on stdin by the
spool fault tests (``tests/test_spool_faults.py``).

    python -m tests.spool_app '<JSON config>'

The config names the chests: ``{"tag": ..., "chests": [{"kind": "http" |
"influx", "name": ..., "url": ..., "spool_dir": ..., "options": {...}}]}``.
Commands, each answered by one line on stdout: ``serve N`` (N requests of
the sample app, request IDs ``<tag>-<pid>-<n>``; answers ``served``),
``stats`` (the chests' delivery counters as JSON), ``state`` (where
measurements not yet in an exporter's buffer may be: the recorder's queue,
what it dropped, every thread's stack; as JSON), ``quit``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import threading
import traceback
from typing import Any

from flask_chest_otel import FlaskChestCustomWriter, FlaskChestInfluxDB
from flask_chest_otel._recorder import RECORDER

from .conftest import sample_app


def payload(tuples: Any) -> list[dict[str, Any]]:
    """One JSON object per variable: the sink's reader counts request IDs."""
    return [{"name": item[0], "value": item[1], "id": item[2]} for item in tuples]


def make_chest(config: dict[str, Any]) -> Any:
    options = {
        "export_interval": 0.5,
        "retry_initial": 0.05,
        "retry_max": 0.2,
        "spool_dir": config["spool_dir"],
        **config.get("options", {}),
    }
    if config["kind"] == "influx":
        return FlaskChestInfluxDB(
            name=config["name"], url=config["url"], token="t", org="o", bucket="b",
            enable_gzip=False, **options,
        )  # fmt: skip
    return FlaskChestCustomWriter(
        name=config["name"], url=config["url"], payload_generator=payload, **options
    )


def state() -> dict[str, Any]:
    """The recorder's queue and every thread's stack, for a failure's message."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return {
        "recorder_pending": len(RECORDER._pending),
        "recorder_dropped": RECORDER.dropped,
        "threads": {
            names.get(ident, str(ident)): "".join(traceback.format_stack(frame)[-6:])
            for ident, frame in sys._current_frames().items()
        },
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    chests = [make_chest(chest) for chest in config["chests"]]
    counter = itertools.count()
    tag = config["tag"]
    client = sample_app(
        chests, request_id_generator=lambda: f"{tag}-{os.getpid()}-{next(counter)}"
    ).test_client()
    for line in sys.stdin:
        command = line.split()
        if command[0] == "serve":
            for _ in range(int(command[1])):
                assert client.get("/").status_code == 200
            print("served", flush=True)
        elif command[0] == "stats":
            stats = [dataclasses.asdict(chest.exporter.stats_snapshot()) for chest in chests]
            print(json.dumps(stats), flush=True)
        elif command[0] == "state":
            print(json.dumps(state()), flush=True)
        elif command[0] == "quit":
            break
    for chest in chests:
        chest.shutdown(timeout_millis=2_000)


if __name__ == "__main__":
    main()
