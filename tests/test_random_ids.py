"""Request IDs and idempotency keys: drawn from the OS generator in pools
(``flask_chest_otel._random``), never the same twice across threads or a fork."""

from __future__ import annotations

import os
import threading
import uuid

from flask_chest_otel import _random
from flask_chest_otel.decorator import default_request_id


def test_a_default_request_id_is_a_uuid4_string() -> None:
    text = default_request_id()
    parsed = uuid.UUID(text)
    assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_threads_drawing_at_once_never_get_the_same_value() -> None:
    per_thread = 5 * _random.POOL + 7  # every thread refills the pool several times
    drawn: list[list[bytes]] = []
    start = threading.Barrier(8)

    def draw() -> None:
        start.wait()
        drawn.append([_random.random16() for _ in range(per_thread)])

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = [value for values in drawn for value in values]
    assert len(values) == 8 * per_thread and len(set(values)) == len(values)
    assert all(len(value) == 16 for value in values)


def test_a_forked_child_does_not_repeat_its_parents_values() -> None:
    _random.random16()  # the pool is filled, and the fork inherits it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        os.write(write_end, b"".join(_random.random16() for _ in range(10)))
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read()
    parent = b"".join(_random.random16() for _ in range(10))
    assert len(child) == 160
    assert {child[i : i + 16] for i in range(0, 160, 16)}.isdisjoint(
        parent[i : i + 16] for i in range(0, 160, 16)
    )
