"""The on-disk copy of an exporter's buffer, so that a killed process loses
at most what the collector had not yet handed over (see docs/reliability.md).

Each process writes its own files for each chest, in segments
``<chest>.<identity hash>.<pid>.<random>.<n>.spool``, each locked with
``fcntl.flock`` before it appears under that name and for as long as the
process lives. A file opens with a header naming its chest (kind of
exporter, name, destination); items are written in a fixed schema per kind
of exporter (``flask_chest_otel._spool_codecs``), never as code. A file
whose lock can be taken belongs to a process that is gone: exactly one live
process of the same chest takes it, resends what it holds and deletes it.

Writes reach the operating system at once (``os.write``, no user-space
buffer), so SIGKILL loses nothing written; a power cut can, unless the
chest asks for ``fsync`` (``spool_fsync``: never, interval, always).
A write the disk refuses (full, failing) is cut back to the last whole frame
and retried; a file or directory that goes away is made again.

- ``_frames``: the bytes of a file, and reading them back past damage.
- ``_files``: names, permissions, creating a file locked.
- ``_spool``: ``Spool``, this process's files.
- ``_adoption``: taking the files of processes that are gone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ._files import file_prefix
from ._frames import Scan, scan
from ._spool import CHECK_INTERVAL, FSYNC_INTERVAL, FSYNC_POLICIES, Spool

__all__ = [
    "CHECK_INTERVAL",
    "FSYNC_INTERVAL",
    "FSYNC_POLICIES",
    "Scan",
    "Spool",
    "file_prefix",
    "scan",
    "spooled_payloads",
]

_SEGMENT = re.compile(r".+\.[0-9a-f]{10}\.([0-9]+\.[0-9a-f]{8})\.[0-9]{6,}\.spool")


def spooled_payloads(directory: str | os.PathLike[str]) -> list[bytes]:
    """The encoded items the spool files in ``directory`` still hold, each
    writer's oldest first (for scripts and tests: no lock is taken)."""
    writers: dict[str, list[Scan]] = {}
    for path in sorted(Path(directory).glob("*.spool")):
        match = _SEGMENT.fullmatch(path.name)
        if match is not None:
            writers.setdefault(match.group(1), []).append(scan(path.read_bytes()))
    payloads: list[bytes] = []
    for scans in writers.values():
        acked = max(found.acked for found in scans)
        items = {seq: payload for found in scans for seq, payload in found.items.items()}
        payloads.extend(items[seq] for seq in sorted(items) if seq >= acked)
    return payloads
