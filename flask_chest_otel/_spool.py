"""The on-disk copy of an exporter's buffer, so that a killed process loses
at most what the collector had not yet handed over (see docs/reliability.md).

One append-only file per process and chest, ``<chest>.<pid>.<random>.spool``,
locked with ``fcntl.flock`` for as long as the process lives. A frame is
``kind (1 byte) | length (4) | crc32 (4) | payload``: an item frame holds one
serialized item, an ack frame the number of items, counted from the oldest,
that are gone (delivered or dropped). The buffer is first-in first-out, so
these two kinds describe it fully. A file whose lock can be taken belongs to
a process that is gone: exactly one live process takes it, resends what it
holds and deletes it.

Writes reach the operating system at once (``os.write``, no user-space
buffer), so SIGKILL loses nothing written; no ``fsync``, so a power cut can.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import struct
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<BII")
_ITEM = 1
_ACK = 2
_ACK_COUNT = struct.Struct("<Q")
#: Below this many bytes a file is never rewritten to drop acknowledged frames.
_COMPACT_MIN_BYTES = 1 << 20


def file_prefix(name: str) -> str:
    """The chest name as it appears in spool file names."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "chest"


def encode_frame(kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload), zlib.crc32(payload)) + payload


class CorruptSpool(Exception):
    """A frame whose length or checksum does not hold; ``items`` are the
    items read before it."""

    def __init__(self, message: str, items: list[bytes]) -> None:
        super().__init__(message)
        self.items = items


def read_items(data: bytes) -> tuple[list[bytes], bool]:
    """The serialized items a spool file still holds, oldest first, and
    whether its last frame was cut short (a write interrupted by the end of
    the process). Raises CorruptSpool for a damaged frame."""
    items: deque[bytes] = deque()
    offset = 0
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            return list(items), True
        kind, length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        if kind not in (_ITEM, _ACK):
            raise CorruptSpool(f"unknown frame kind {kind} at byte {offset}", list(items))
        if start + length > len(data):
            return list(items), True
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            raise CorruptSpool(f"checksum mismatch at byte {offset}", list(items))
        if kind == _ITEM:
            items.append(payload)
        else:
            (count,) = _ACK_COUNT.unpack(payload)
            for _ in range(min(count, len(items))):
                items.popleft()
        offset = start + length
    return list(items), False


class Spool:
    """This process's spool file for one chest, and the adoption of files
    left by processes that are gone.

    Not thread-safe: the exporter calls it under its own lock.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        logger: logging.Logger,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
    ) -> None:
        self.directory = Path(directory)
        self.name = name
        self.prefix = file_prefix(name)
        self.logger = logger
        self.dumps = dumps
        self.loads = loads
        self.directory.mkdir(parents=True, exist_ok=True)
        self._reset_state()

    def _reset_state(self) -> None:
        self.path: Path | None = None
        self._fd: int | None = None
        self._pid = os.getpid()
        self._sizes: deque[int] = deque()
        self._unwritten_acks = 0
        self.live_bytes = 0
        self.file_bytes = 0

    # -- this process's file --------------------------------------------------

    def _open(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        self.after_fork_in_child()
        path = self.directory / f"{self.prefix}.{os.getpid()}.{secrets.token_hex(4)}.spool"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path, self._fd = path, fd
        return fd

    def append(self, items: list[Any]) -> list[int]:
        """Writes the items; returns the bytes each takes in the file."""
        frames = [encode_frame(_ITEM, self.dumps(item)) for item in items]
        if not frames:
            return []
        data = b"".join(frames)
        fd = self._open()
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        sizes = [len(frame) for frame in frames]
        self._sizes.extend(sizes)
        self.live_bytes += len(data)
        self.file_bytes += len(data)
        return sizes

    def ack(self, count: int, write: bool = True) -> None:
        """The ``count`` oldest items are gone. With ``write=False`` the ack
        frame waits for the next ``ack`` (one frame for many drops)."""
        count = min(count, len(self._sizes))
        for _ in range(count):
            self.live_bytes -= self._sizes.popleft()
        self._unwritten_acks += count
        if not write or not self._unwritten_acks or self._fd is None:
            return
        count, self._unwritten_acks = self._unwritten_acks, 0
        if not self._sizes:
            # Everything is gone: start the file again rather than grow it.
            os.ftruncate(self._fd, 0)
            self.file_bytes = 0
            return
        frame = encode_frame(_ACK, _ACK_COUNT.pack(count))
        os.write(self._fd, frame)
        self.file_bytes += len(frame)

    def needs_compaction(self) -> bool:
        return self.file_bytes > max(_COMPACT_MIN_BYTES, 2 * self.live_bytes)

    def compact(self, items: list[Any]) -> None:
        """Rewrites the file with only ``items`` (what is still buffered), into
        a new locked file renamed over the old one, so that a crash leaves
        either file whole."""
        if self._fd is None or self.path is None:
            return
        temporary = self.path.with_suffix(".compacting")
        fd = os.open(
            temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            frames = [encode_frame(_ITEM, self.dumps(item)) for item in items]
            data = b"".join(frames)
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.replace(temporary, self.path)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd
        self._unwritten_acks = 0
        self._sizes = deque(len(frame) for frame in frames)
        self.live_bytes = self.file_bytes = len(data)

    def close(self) -> None:
        """Closes the file, keeping it when it still holds items (the next
        process on this directory adopts it), deleting it when empty."""
        if self._fd is None or self._pid != os.getpid():
            return
        if not self._sizes and self.path is not None:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def after_fork_in_child(self) -> None:
        """The parent keeps its file and lock; the child starts its own file.
        Closing the inherited descriptor leaves the parent's lock held."""
        if self._pid == os.getpid():
            return
        if self._fd is not None:
            os.close(self._fd)
        self._reset_state()

    # -- files of processes that are gone -------------------------------------

    def adopt(self) -> list[Any]:
        """Takes every unlocked spool file of this chest in the directory:
        returns their items, oldest file first. The caller appends them to
        this process's file, then calls ``release_adopted``."""
        self._adopted: list[tuple[Path, int]] = []
        found: list[tuple[float, Path]] = []
        mine = re.compile(re.escape(self.prefix) + r"\.[0-9]+\.[0-9a-f]{8}\.spool")
        for path in self.directory.glob(f"{self.prefix}.*.spool"):
            if path == self.path or not mine.fullmatch(path.name):
                continue
            try:
                found.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
        items: list[Any] = []
        for _, path in sorted(found):
            taken = self._take(path)
            if taken is None:
                continue
            fd, data = taken
            self._adopted.append((path, fd))
            try:
                payloads, truncated = read_items(data)
            except CorruptSpool as exc:
                payloads = exc.items
                aside = path.with_suffix(".corrupt")
                os.replace(path, aside)
                self.logger.error(
                    "%s: spool file %s is damaged (%s); %d items before the damage are "
                    "resent, the file is kept as %s",
                    self.name, path, exc, len(payloads), aside.name,
                )  # fmt: skip
                self._adopted[-1] = (Path(), fd)  # never delete what was set aside
            else:
                if truncated:
                    self.logger.warning(
                        "%s: spool file %s ends in a cut-off write; its %d whole items are resent",
                        self.name, path, len(payloads),
                    )  # fmt: skip
            for payload in payloads:
                try:
                    items.append(self.loads(payload))
                except Exception as exc:
                    self.logger.error(
                        "%s: an item of spool file %s cannot be read (%r); skipped",
                        self.name, path.name, exc,
                    )  # fmt: skip
            if payloads:
                self.logger.info(
                    "%s: resending %d items left in %s by a process that is gone",
                    self.name, len(payloads), path.name,
                )  # fmt: skip
        return items

    def _take(self, path: Path) -> tuple[int, bytes] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process lives, or another one adopts it
            os.close(fd)
            return None
        try:
            # The file may have been renamed over (compaction) or deleted
            # (adopted) between open and lock: only the file still at the path.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                os.close(fd)
                return None
            with os.fdopen(os.dup(fd), "rb") as stream:
                return fd, stream.read()
        except FileNotFoundError:
            os.close(fd)
            return None

    def release_adopted(self) -> None:
        """Deletes the adopted files (their items are now in ours)."""
        for path, fd in getattr(self, "_adopted", []):
            if path != Path():
                path.unlink(missing_ok=True)
            os.close(fd)
        self._adopted = []
