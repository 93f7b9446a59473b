"""``Spool``: this process's spool files for one chest.

The buffer calls it under its own lock: ``append`` what it takes in, ``ack``
what left it (oldest first), ``maintain`` from the exporter's thread.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._adoption import take_files
from ._files import Names, create_locked, file_prefix, identity_tag, prepare_directory, read_all
from ._frames import (
    ACK,
    FRAME_OVERHEAD,
    HEADER,
    ITEM,
    Identity,
    encode_frame,
    header_payload,
    scan,
)

#: Seconds between the checks that the files are still there (``maintain``).
CHECK_INTERVAL = 0.5
#: Seconds between attempts to write what a full or failing disk refused.
RETRY_INTERVAL = 1.0
#: Segment size bounds: ``max_bytes / 8`` within them.
MIN_SEGMENT_BYTES = 1 << 10
MAX_SEGMENT_BYTES = 8 << 20


@dataclass(eq=False)
class _Segment:
    """One file of this process's spool."""

    path: Path
    fd: int
    inode: int
    size: int
    header_size: int
    #: Items in this file not yet acknowledged.
    live: int = 0


class _Entry:
    """One item of the buffer, as the spool knows it: written to ``segment``,
    or waiting to be written (``frame``), or neither (a lost file that could
    not be read back)."""

    __slots__ = ("seq", "size", "segment", "frame", "gone")

    def __init__(self, seq: int, frame: bytes) -> None:
        self.seq = seq
        self.size = len(frame)
        self.segment: _Segment | None = None
        self.frame: bytes | None = frame
        self.gone = False


class Spool:
    """This process's spool for one chest, and the adoption of the files of
    processes that are gone.

    Its files are segments of about ``max_bytes / 8``: a file whose items
    are all acknowledged is deleted whole, so the spool's bytes on disk
    (``live_bytes``) stay within ``max_bytes`` as the buffer drops the
    oldest items, without rewriting anything. Not thread-safe.

    Args:
        identity: (kind, chest name, destination), or a function returning
            it (asked once, at the first write or adoption).
        max_bytes: the bound the buffer holds ``live_bytes`` to.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        logger: logging.Logger,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
        *,
        identity: Identity | Callable[[], Identity] | None = None,
        max_bytes: int = 100_000_000,
    ) -> None:
        self.directory = Path(directory)
        self.name = name
        self.logger = logger
        self.dumps = dumps
        self.loads = loads
        self._identity_of = identity
        self._names: Names | None = None
        self._header = b""
        self._identity: Identity = ("", name, "")
        self.max_bytes = max_bytes
        self.segment_bytes = min(max(max_bytes // 8, MIN_SEGMENT_BYTES), MAX_SEGMENT_BYTES)
        #: Files refused as unsafe, reported once each.
        self._reported: set[str] = set()
        self._unencodable_logged = float("-inf")
        prepare_directory(self.directory, logger, name)
        self._reset_state()

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._writer = f"{self._pid}.{secrets.token_hex(4)}"
        self._segments: list[_Segment] = []
        self._last_path: Path | None = None
        self._next_number = 1
        self._entries: deque[_Entry] = deque()
        self._pending: deque[_Entry] = deque()
        self._pending_bytes = 0
        self._next_seq = 0
        self._acked = 0
        self._ack_unwritten = False
        self._failure: str | None = None
        self._retry_at = 0.0
        self._check_at = 0.0
        #: Files taken by ``adopt``; then held (locked) until what they held is written.
        self._adopted: list[tuple[Path, int]] = []
        self._held: list[tuple[Path, int]] = []
        self._held_below = 0

    @property
    def identity(self) -> Identity:
        self._ensure_names()
        return self._identity

    def _ensure_names(self) -> Names:
        if self._names is None:
            source = self._identity_of
            if callable(source):
                source = source()
            if source is not None:
                self._identity = (str(source[0]), str(source[1]), str(source[2]))
            self._names = Names(file_prefix(self.name), identity_tag(self._identity))
            self._header = header_payload(self._identity)
        return self._names

    @property
    def path(self) -> Path | None:
        """The file being written, or last written (after ``close``)."""
        return self._segments[-1].path if self._segments else self._last_path

    @property
    def live_bytes(self) -> int:
        """The bytes the spool takes once the acknowledgements made are
        written: its files that still hold an item, what waits to be written,
        and room for the ack frames and file headers writing it takes. The
        buffer drops its oldest items while this exceeds ``max_bytes``, and
        files are written only as far as it allows (``_write_pending``), so
        within it whatever waits gets written."""
        on_disk = sum(segment.size for segment in self._segments if segment.live)
        if not self._entries:
            return on_disk
        pending = self._pending_bytes
        headers = 0
        if pending:
            self._ensure_names()
            headers = (1 + pending // self.segment_bytes) * (FRAME_OVERHEAD + len(self._header))
        return on_disk + pending + 2 * FRAME_OVERHEAD + headers

    @property
    def file_bytes(self) -> int:
        """The bytes of this process's files now."""
        return sum(segment.size for segment in self._segments)

    # -- writing --------------------------------------------------------------

    def append(self, items: list[Any]) -> list[int]:
        """Writes the items; returns the bytes each takes (0 for one that
        cannot be encoded, which stays in memory only). What the disk refuses
        waits in memory and is written by a later call (``maintain``)."""
        sizes = []
        for item in items:
            try:
                payload = self.dumps(item)
            except Exception as exc:
                sizes.append(0)
                self._log_unencodable(item, exc)
                continue
            entry = _Entry(self._next_seq, encode_frame(ITEM, self._next_seq, payload))
            self._next_seq += 1
            self._entries.append(entry)
            self._pending.append(entry)
            self._pending_bytes += entry.size
            sizes.append(entry.size)
        now = time.monotonic()
        if self._failure is None or now >= self._retry_at:
            self._write_pending()
        if now >= self._check_at:
            self.maintain()
        return sizes

    def ack(self, count: int, write: bool = True) -> None:
        """The ``count`` oldest items are gone. With ``write=False`` the ack
        frame waits for the next ``ack`` (one frame for many drops)."""
        entries = self._entries
        count = min(count, len(entries))
        for _ in range(count):
            entry = entries.popleft()
            if entry.segment is not None:
                entry.segment.live -= 1
            elif entry.frame is not None:
                entry.frame = None
                self._pending_bytes -= entry.size
            entry.gone = True
        if count:
            self._acked = entries[0].seq if entries else self._next_seq
            self._ack_unwritten = True
        if write and self._ack_unwritten:
            self._write_ack()

    def needs_compaction(self) -> bool:
        """Never: whole files are deleted once their items are gone."""
        return False

    def compact(self, items: list[Any]) -> None:
        """Nothing to do (see ``needs_compaction``); kept for the buffer."""

    def _write_pending(self) -> None:
        """Writes what waits, oldest first, as far as ``max_bytes`` allows
        (the rest waits for the buffer to drop the oldest, see ``live_bytes``)."""
        pending = self._pending
        try:
            while pending:
                if pending[0].gone:
                    pending.popleft()
                    continue
                segments = self._segments
                budget = self.max_bytes - self.file_bytes - FRAME_OVERHEAD
                if not segments or segments[-1].size >= self.segment_bytes:
                    self._ensure_names()
                    budget -= FRAME_OVERHEAD + len(self._header)
                if pending[0].size > budget:
                    break
                segment = self._current_segment()
                room = min(self.segment_bytes - segment.size, budget)
                batch: list[_Entry] = []
                size = 0
                while pending and (not batch or size + pending[0].size <= room):
                    entry = pending.popleft()
                    if not entry.gone:
                        batch.append(entry)
                        size += entry.size
                if batch:
                    self._write_entries(segment, batch)
        except OSError as exc:
            self._failed(exc)
            return
        if self._failure is not None:
            self._failure = None
            self.logger.warning("%s: the spool in %s is written again", self.name, self.directory)

    def _write_entries(self, segment: _Segment, batch: list[_Entry]) -> None:
        data = b"".join(entry.frame for entry in batch)  # type: ignore[misc]
        written, error = _write(segment.fd, data)
        whole = 0
        for entry in batch:
            if entry.size > written:
                break
            written -= entry.size
            entry.segment, entry.frame = segment, None
            segment.live += 1
            segment.size += entry.size
            self._pending_bytes -= entry.size
            whole += 1
        if error is None:
            return
        self._pending.extendleft(reversed(batch[whole:]))
        self._cut_back(segment)
        raise error

    def _cut_back(self, segment: _Segment) -> None:
        """Cuts a write the disk refused midway back to the last whole frame."""
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError:  # the torn frame stays; readers skip it
            try:
                segment.size = os.fstat(segment.fd).st_size
            except OSError:
                pass

    def _write_ack(self) -> None:
        """Records the acknowledgement, deletes the files it empties, then
        writes what waited for the room they took."""
        segments = self._segments
        if segments:
            self._ack_to(segments[-1])
            for segment in segments[:-1]:
                if not segment.live:
                    self._drop(segment)
        else:
            self._ack_unwritten = False
        if self._pending and self._failure is None:
            self._write_pending()

    def _ack_to(self, current: _Segment) -> None:
        if not any(segment.live for segment in self._segments):
            # Nothing on disk is live: the current file starts again.
            try:
                os.ftruncate(current.fd, current.header_size)
            except OSError as exc:
                self._failed(exc)
                return
            current.size = current.header_size
            self._ack_unwritten = False
            return
        frame = encode_frame(ACK, self._acked, b"")
        written, error = _write(current.fd, frame)
        if error is None:
            current.size += written
            self._ack_unwritten = False
        else:
            self._cut_back(current)
            self._failed(error)

    def _current_segment(self) -> _Segment:
        if self._segments and self._segments[-1].size < self.segment_bytes:
            return self._segments[-1]
        names = self._ensure_names()
        header = encode_frame(HEADER, self._acked, self._header)
        name = names.segment(self._writer, self._next_number)
        try:
            fd, path, inode = create_locked(self.directory, name, header)
        except FileNotFoundError:  # the directory is gone: make it again
            prepare_directory(self.directory, self.logger, self.name)
            fd, path, inode = create_locked(self.directory, name, header)
        self._next_number += 1
        segment = _Segment(path, fd, inode, len(header), len(header))
        self._segments.append(segment)
        return segment

    def _drop(self, segment: _Segment) -> None:
        try:
            if os.stat(segment.path, follow_symlinks=False).st_ino == segment.inode:
                os.unlink(segment.path)
        except OSError:
            pass
        os.close(segment.fd)
        self._segments.remove(segment)

    def _failed(self, exc: OSError) -> None:
        self._retry_at = time.monotonic() + RETRY_INTERVAL
        if self._failure is None:
            self.logger.error(
                "%s: cannot write the spool in %s (%s): the items that could not be written "
                "(%d now) stay in memory, bounded by the buffer, and are written when the disk "
                "takes them (tried every %g s); what the files hold is intact",
                self.name, self.directory, exc.strerror or exc,
                sum(1 for entry in self._pending if not entry.gone), RETRY_INTERVAL,
            )  # fmt: skip
        self._failure = exc.strerror or repr(exc)

    def _log_unencodable(self, item: Any, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._unencodable_logged >= 60:
            self._unencodable_logged = now
            self.logger.error(
                "%s: an item of type %s cannot be written to the spool (%r); it is kept in "
                "memory only (give the exporter _spool_dumps and _spool_loads)",
                self.name, type(item).__name__, exc,
            )  # fmt: skip

    # -- upkeep ---------------------------------------------------------------

    def maintain(self) -> None:
        """Notices a file or directory that went away (then writes what the
        buffer holds again, to a new file), retries writes the disk refused,
        and releases adopted files once their items are written. Cheap: a
        ``stat`` per file. The exporter's thread calls it at least every
        ``CHECK_INTERVAL``; ``append`` too when it is due."""
        if self._pid != os.getpid():
            return
        now = time.monotonic()
        self._check_at = now + CHECK_INTERVAL
        if self._segments:
            self._check_files()
        if (self._pending or self._ack_unwritten) and now >= self._retry_at:
            self._write_pending()
            if self._ack_unwritten:
                self._write_ack()
        self._release_held()

    def _check_files(self) -> None:
        lost = []
        for segment in self._segments:
            try:
                inode = os.stat(segment.path, follow_symlinks=False).st_ino
            except OSError:
                inode = -1
            if inode != segment.inode:
                lost.append(segment)
        if not lost:
            return
        found: dict[int, bytes] = {}
        for segment in lost:
            try:
                found.update(scan(read_all(segment.fd)).items)
            except OSError:
                pass
            os.close(segment.fd)
            self._segments.remove(segment)
        again: list[_Entry] = []
        unreadable = 0
        for entry in self._entries:
            if entry.segment is None or entry.segment not in lost:
                continue
            entry.segment = None
            payload = found.get(entry.seq)
            if payload is None:
                unreadable += 1
                continue
            entry.frame = encode_frame(ITEM, entry.seq, payload)
            self._pending_bytes += entry.size
            again.append(entry)
        self._pending.extendleft(reversed(again))
        self._ack_unwritten = True
        self.logger.error(
            "%s: spool file(s) %s went away (deleted, or the directory %s); the %d items "
            "they still held are written again to a new file%s",
            self.name, ", ".join(segment.path.name for segment in lost), self.directory,
            len(again),
            f"; {unreadable} could not be read back and are in memory only" if unreadable else "",
        )  # fmt: skip
        self._retry_at = 0.0

    # -- closing and forks ----------------------------------------------------

    def close(self) -> None:
        """Closes the files, keeping those that still hold items (the next
        process on this directory adopts them), deleting the others."""
        if self._pid != os.getpid():
            return
        if self._entries:
            self._retry_at = 0.0
            self._write_pending()
            if self._ack_unwritten:
                self._write_ack()
            unwritten = sum(1 for entry in self._entries if entry.segment is None)
            if unwritten:
                self.logger.error(
                    "%s: %d items could not be written to the spool in %s (%s) and are lost "
                    "with this process",
                    self.name, unwritten, self.directory, self._failure or "file gone",
                )  # fmt: skip
        self._last_path = self.path if self._entries else None
        for segment in list(self._segments):
            if self._entries:
                os.close(segment.fd)
                self._segments.remove(segment)
            else:
                self._drop(segment)
        for _, fd in self._adopted + self._held:
            os.close(fd)  # not deleted: the next process takes them again
        self._adopted, self._held = [], []

    def after_fork_in_child(self) -> None:
        """The parent keeps its files and locks; the child starts its own.
        Closing the inherited descriptors leaves the parent's locks held."""
        if self._pid == os.getpid():
            return
        for segment in self._segments:
            os.close(segment.fd)
        for _, fd in self._adopted + self._held:
            os.close(fd)
        self._reset_state()

    # -- files of processes that are gone -------------------------------------

    def adopt(self) -> list[Any]:
        """Takes every file of this chest (by its header) in the directory
        whose writer is gone: returns their items, oldest writer first. The
        caller appends them to this process's spool, then calls
        ``release_adopted``."""
        names = self._ensure_names()
        items, self._adopted = take_files(
            self.directory,
            names,
            self._identity,
            self._writer,
            self.name,
            self.logger,
            self.loads,
            self._reported,
        )
        return items

    def release_adopted(self) -> None:
        """Deletes the adopted files once their items are written to this
        process's files; until then they stay locked (held), so that a
        SIGKILL meanwhile leaves them to the next process."""
        self._held.extend(self._adopted)
        self._adopted = []
        self._held_below = self._next_seq
        self._release_held()

    def _release_held(self) -> None:
        if not self._held:
            return
        if any(not entry.gone and entry.seq < self._held_below for entry in self._pending):
            return
        for path, fd in self._held:
            try:
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
            except OSError:
                pass
            os.close(fd)
        self._held = []


def _write(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Writes ``data``; returns the bytes written and the error that stopped
    the write short, if any."""
    view = memoryview(data)
    written = 0
    while written < len(data):
        try:
            count = os.write(fd, view[written:])
        except OSError as exc:
            return written, exc
        if count <= 0:
            return written, OSError(5, "short write")
        written += count
    return written, None
