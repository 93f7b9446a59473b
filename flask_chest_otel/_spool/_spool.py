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
from ._files import (
    Names,
    create_locked,
    file_prefix,
    identity_tag,
    prepare_directory,
    read_all,
    write_some,
)
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
#: Seconds between the ``fsync`` of the files written, under ``fsync="interval"``.
FSYNC_INTERVAL = 1.0
#: When the files are flushed to the disk (``fsync``): never (the operating
#: system writes them back in its own time, within about 30 s on Linux),
#: every ``FSYNC_INTERVAL``, or after every write of items.
FSYNC_POLICIES = ("never", "interval", "always")
#: Where an item is when it is in no file: a lost file that could not be read back.
_NOWHERE = -1


@dataclass(eq=False)
class _Segment:
    """One file of this process's spool."""

    number: int
    path: Path
    fd: int
    inode: int
    size: int
    header_size: int
    #: Items in this file not yet acknowledged.
    live: int = 0


class Spool:
    """This process's spool for one chest, and the adoption of the files of
    processes that are gone.

    Its files are segments of about ``max_bytes / 8``: a file whose items
    are all acknowledged is deleted whole, so the spool's bytes on disk stay
    within ``max_bytes`` as the buffer drops the oldest items (see
    ``live_bytes``), without rewriting anything. Not thread-safe.

    The items still in the buffer, numbered ``seq`` from 0, oldest first:
    the written ones (``_homes``, the number of the segment holding each),
    then those waiting to be written (``_pending``, (seq, frame)). Plain
    ints, bytes and tuples of them: nothing here keeps the garbage collector
    busy while the buffer is full.

    Args:
        identity: (kind, chest name, destination), or a function returning
            it (asked once, at the first write or adoption).
        max_bytes: the bound the buffer holds ``live_bytes`` to.
        fsync: one of ``FSYNC_POLICIES``. Every write reaches the operating
            system at once, which a SIGKILL cannot undo; ``fsync`` is about
            a power cut or a kernel crash. "always" syncs the file after each
            write of items (on the collector's thread: what a hand-over
            costs), "interval" every ``FSYNC_INTERVAL`` from the upkeep
            (``maintain``); a new file's directory entry is synced with it.
        sync: what syncs a descriptor (``os.fsync``; a test passes a wrapper
            that counts).
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
        fsync: str = "never",
        sync: Callable[[int], None] = os.fsync,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(
                f"{name}: spool_fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}"
            )
        self.fsync = fsync
        self._sync = sync
        self.directory = Path(directory)
        self.name = name
        self.logger = logger
        self.dumps = dumps
        self.loads = loads
        self._identity_of = identity
        self._names: Names | None = None
        self._identity: Identity = ("", name, "")
        self._header = b""
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
        self._by_number: dict[int, _Segment] = {}
        self._last_path: Path | None = None
        self._next_number = 1
        #: The number of the oldest item still buffered, and of the next one.
        self._acked = 0
        self._next_seq = 0
        self._homes: deque[int] = deque()
        self._pending: deque[tuple[int, bytes | None]] = deque()
        self._pending_bytes = 0
        self._ack_unwritten = False
        #: Files a rewrite (``_write_again``) replaces, deleted once it is written.
        self._replaced: list[_Segment] = []
        self._failure: str | None = None
        self._retry_at = 0.0
        self._check_at = 0.0
        #: Segments written since the last ``fsync``, and whether a file was
        #: made (its directory entry) meanwhile.
        self._unsynced: set[int] = set()
        self._directory_unsynced = False
        self._sync_at = time.monotonic() + FSYNC_INTERVAL
        self._sync_failed = False
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
        if not self._homes and not self._pending:
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
        pending = self._pending
        for item in items:
            try:
                payload = self.dumps(item)
            except Exception as exc:
                sizes.append(0)
                self._log_unencodable(item, exc)
                continue
            frame = encode_frame(ITEM, self._next_seq, payload)
            pending.append((self._next_seq, frame))
            self._next_seq += 1
            self._pending_bytes += len(frame)
            sizes.append(len(frame))
        now = time.monotonic()
        if self._failure is None or now >= self._retry_at:
            self._write_pending()
        if now >= self._check_at:
            self.maintain(writing=True)
        return sizes

    def ack(self, count: int, write: bool = True) -> None:
        """The ``count`` oldest items are gone. With ``write=False`` the ack
        frame waits for the next ``ack`` (one frame for many drops)."""
        homes, pending = self._homes, self._pending
        count = min(count, len(homes) + len(pending))
        for _ in range(count):
            if homes:
                home = homes.popleft()
                if home != _NOWHERE:
                    self._by_number[home].live -= 1
            else:
                frame = pending.popleft()[1]
                if frame is not None:
                    self._pending_bytes -= len(frame)
        if count:
            self._acked += count
            self._ack_unwritten = True
        if write and self._ack_unwritten:
            self._write_ack()

    def _write_pending(self) -> None:
        """Writes what waits, oldest first, as far as ``max_bytes`` allows
        (the rest waits for the buffer to drop the oldest, see ``live_bytes``)."""
        pending = self._pending
        try:
            while pending:
                if pending[0][1] is None:  # lost and not read back: in memory only
                    pending.popleft()
                    self._homes.append(_NOWHERE)
                    continue
                budget = self.max_bytes - self.file_bytes - FRAME_OVERHEAD
                if self._replaced:  # a rewrite: the files it replaces go once it is done
                    budget += sum(segment.size for segment in self._replaced)
                if self._needs_segment():
                    self._ensure_names()
                    budget -= FRAME_OVERHEAD + len(self._header)
                first = len(pending[0][1])
                if first > budget:
                    break
                segment = self._current_segment()
                room = max(min(self.segment_bytes - segment.size, budget), first)
                batch: list[bytes] = []
                size = 0
                while pending:
                    frame = pending[0][1]
                    if frame is None or size + len(frame) > room:
                        break
                    pending.popleft()
                    batch.append(frame)
                    size += len(frame)
                self._write_frames(segment, batch)
        except OSError as exc:
            self._failed(exc)
            return
        if self._replaced and not pending:
            for segment in self._replaced:
                self._drop(segment)
            self._replaced = []
        if self._failure is not None:
            self._failure = None
            self.logger.warning("%s: the spool in %s is written again", self.name, self.directory)

    def _write_frames(self, segment: _Segment, batch: list[bytes]) -> None:
        written, error = write_some(segment.fd, b"".join(batch))
        if written and self.fsync != "never":
            self._unsynced.add(segment.number)
        done = 0
        for frame in batch:
            if len(frame) > written:
                break
            written -= len(frame)
            self._homes.append(segment.number)
            segment.live += 1
            segment.size += len(frame)
            self._pending_bytes -= len(frame)
            done += 1
        if error is None:
            if self.fsync == "always":
                self._sync_unsynced()
            return
        first_seq = self._acked + len(self._homes)
        self._pending.extendleft(
            reversed([(first_seq + n, frame) for n, frame in enumerate(batch[done:])])
        )
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
                if not segment.live and segment not in self._replaced:
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
        written, error = write_some(current.fd, encode_frame(ACK, self._acked, b""))
        if error is None:
            current.size += written
            self._ack_unwritten = False
        else:
            self._cut_back(current)
            self._failed(error)

    def prepare(self) -> None:
        """Makes the first file before any item comes: made on the first
        write instead, it held a burst at start back by 0.1-0.15 s (five
        system calls, each waiting for the GIL), all of it lost to a SIGKILL
        then. An empty file is deleted at close, and adopts as nothing."""
        if self._segments:
            return
        try:
            self._current_segment()
        except OSError as exc:
            self._failed(exc)

    def _needs_segment(self) -> bool:
        segments = self._segments
        return (
            not segments
            or segments[-1].size >= self.segment_bytes
            or segments[-1] in self._replaced
        )

    def _current_segment(self) -> _Segment:
        if not self._needs_segment():
            return self._segments[-1]
        names = self._ensure_names()
        header = encode_frame(HEADER, self._acked, self._header)
        for _ in range(2):
            name = names.segment(self._writer, self._next_number)
            try:
                fd, path, inode = create_locked(self.directory, name, header)
                break
            except FileNotFoundError:  # the directory is gone: make it again
                prepare_directory(self.directory, self.logger, self.name)
            except FileExistsError:  # put there by someone else: take the next name
                self._next_number += 1
        else:
            name = names.segment(self._writer, self._next_number)
            fd, path, inode = create_locked(self.directory, name, header)
        segment = _Segment(self._next_number, path, fd, inode, len(header), len(header))
        self._directory_unsynced = True
        self._next_number += 1
        self._segments.append(segment)
        self._by_number[segment.number] = segment
        return segment

    def _flush_to_disk(self) -> None:
        """``fsync`` of the files written since the last, and of the
        directory if a file was made meanwhile. Raises OSError."""
        for segment in self._segments:
            if segment.number in self._unsynced:
                self._sync(segment.fd)
        self._unsynced.clear()
        if self._directory_unsynced:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._sync(fd)
            finally:
                os.close(fd)
            self._directory_unsynced = False
        self._sync_at = time.monotonic() + FSYNC_INTERVAL

    def _drop(self, segment: _Segment) -> None:
        try:
            if os.stat(segment.path, follow_symlinks=False).st_ino == segment.inode:
                os.unlink(segment.path)
        except OSError:
            pass
        os.close(segment.fd)
        self._segments.remove(segment)
        del self._by_number[segment.number]

    def _failed(self, exc: OSError) -> None:
        self._retry_at = time.monotonic() + RETRY_INTERVAL
        if self._failure is None:
            self.logger.error(
                "%s: cannot write the spool in %s (%s): the items that could not be written "
                "(%d now) stay in memory, bounded by the buffer, and are written when the disk "
                "takes them (tried every %g s); what the files hold is intact",
                self.name, self.directory, exc.strerror or exc, len(self._pending),
                RETRY_INTERVAL,
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

    def maintain(self, writing: bool = False) -> None:
        """Notices a file or directory that went away (then writes what the
        buffer holds again, to a new file), retries writes the disk refused,
        and releases adopted files once their items are written. Cheap: a
        ``stat`` per file. The exporter's thread calls it at least every
        ``CHECK_INTERVAL``; ``append`` too when it is due (``writing``: then
        an ``fsync="interval"`` is done only if a whole interval overdue, as
        the exporter's thread is busy sending, so that the writing thread,
        the collector, is rarely the one that waits for the disk)."""
        if self._pid != os.getpid():
            return
        now = time.monotonic()
        self._check_at = now + CHECK_INTERVAL
        if self._segments:
            self._check_files()
        if (self._pending or self._ack_unwritten) and time.monotonic() >= self._retry_at:
            self._write_pending()
            if self._ack_unwritten:
                self._write_ack()
        if self.fsync == "interval" and now >= self._sync_at + (FSYNC_INTERVAL if writing else 0):
            self._sync_unsynced()
        self._release_held()

    def _sync_unsynced(self) -> None:
        if not (self._unsynced or self._directory_unsynced):
            return
        try:
            self._flush_to_disk()
        except OSError as exc:
            self._sync_at = time.monotonic() + FSYNC_INTERVAL
            if not self._sync_failed:
                self._sync_failed = True
                self.logger.error(
                    "%s: could not flush the spool in %s to disk (fsync: %s); what it holds "
                    "survives a SIGKILL, not a power cut; tried again at the next write",
                    self.name, self.directory, exc.strerror or exc,
                )  # fmt: skip
        else:
            self._sync_failed = False

    def _check_files(self) -> None:
        lost = []
        for segment in self._segments:
            try:
                inode = os.stat(segment.path, follow_symlinks=False).st_ino
            except OSError:
                inode = -1
            if inode != segment.inode:
                lost.append(segment)
        if lost:
            self._write_again(lost)

    def _write_again(self, lost: list[_Segment]) -> None:
        """Reads what the files hold through their descriptors (a deleted
        file lives on while open) and writes every buffered item again, to
        new files; the old ones go once that is done."""
        found: dict[int, bytes] = {}
        for segment in self._segments:
            try:
                found.update(scan(read_all(segment.fd)).items)
            except OSError:
                pass
            segment.live = 0
        again: list[tuple[int, bytes | None]] = []
        for seq, home in enumerate(self._homes, start=self._acked):
            payload = found.get(seq) if home != _NOWHERE else None
            frame = None if payload is None else encode_frame(ITEM, seq, payload)
            again.append((seq, frame))
            self._pending_bytes += len(frame or b"")
        unreadable = sum(1 for _, frame in again if frame is None)
        self._homes.clear()
        self._pending.extendleft(reversed(again))
        for segment in lost:
            os.close(segment.fd)
            self._segments.remove(segment)
            del self._by_number[segment.number]
        self._replaced = list(self._segments)
        self.logger.error(
            "%s: spool file(s) %s went away (deleted, or the directory %s); the %d items "
            "buffered are written again to a new file%s",
            self.name, ", ".join(segment.path.name for segment in lost), self.directory,
            len(again) - unreadable,
            f"; {unreadable} could not be read back and are in memory only" if unreadable else "",
        )  # fmt: skip
        self._retry_at = 0.0
        self._write_pending()

    # -- closing and forks ----------------------------------------------------

    def close(self) -> int:
        """Closes the files, keeping those that still hold items (the next
        process on this directory adopts them), deleting the others. Returns
        how many items it could not write (a full disk, a file gone): they
        are lost with this process, and logged so."""
        if self._pid != os.getpid():
            return 0
        live = bool(self._homes or self._pending)
        unwritten = 0
        if live:
            self._retry_at = 0.0
            self._write_pending()
            if self._ack_unwritten:
                self._write_ack()
            unwritten = len(self._pending) + self._homes.count(_NOWHERE)
            if unwritten:
                self.logger.error(
                    "%s: %d items could not be written to the spool in %s (%s) and are lost "
                    "with this process",
                    self.name, unwritten, self.directory, self._failure or "file gone",
                )  # fmt: skip
        if live and self.fsync != "never":
            self._sync_unsynced()
        self._last_path = self.path if live else None
        for segment in list(self._segments):
            if live:
                os.close(segment.fd)
                self._segments.remove(segment)
            else:
                self._drop(segment)
        for _, fd in self._adopted + self._held:
            os.close(fd)  # not deleted: the next process takes them again
        self._adopted, self._held = [], []
        return unwritten

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
        if not self._held or (self._pending and self._pending[0][0] < self._held_below):
            return
        for path, fd in self._held:
            try:
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
            except OSError:
                pass
            os.close(fd)
        self._held = []
