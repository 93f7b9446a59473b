"""Adoption: reading back the spool files that processes now gone left.

A writer's files (its segments) are taken together or not at all: the first
one is locked first, so two processes looking at once never split them (an
acknowledgement in one file concerns items in another).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._files import (
    CREATING,
    REJECTED,
    Names,
    Unsafe,
    open_unlocked,
    read_all,
    set_aside,
)
from ._frames import Identity, Scan, header_identity, scan

#: A file still being made (``.creating``) this many seconds after it was
#: started was left by a process killed in the middle: removed.
STALE_CREATING = 60.0


def take_files(
    directory: Path,
    names: Names,
    identity: Identity,
    own_writer: str,
    chest: str,
    logger: logging.Logger,
    loads: Callable[[bytes], Any],
    reported: set[str],
) -> tuple[list[Any], list[tuple[Path, int]]]:
    """The items of the files of ``identity`` whose writer is gone, oldest
    writer first, and those files (path, locked descriptor). Files of another
    chest are left alone; another user's, or writable by others, are never
    read (one ERROR each); one of an unknown format is set aside
    (``.rejected``, one ERROR)."""
    pattern = names.pattern()
    legacy = names.legacy_pattern()
    creating = f".{names.prefix}.{names.tag}."
    writers: dict[str, list[tuple[int, Path]]] = {}
    try:
        listing = os.listdir(directory)
    except FileNotFoundError:
        return [], []
    for file_name in listing:
        path = directory / file_name
        match = pattern.fullmatch(file_name)
        if match is not None:
            if match.group(1) != own_writer:
                writers.setdefault(match.group(1), []).append((int(match.group(2)), path))
        elif legacy.fullmatch(file_name):
            _reject_legacy(path, chest, logger, reported)
        elif file_name.startswith(creating) and file_name.endswith(CREATING):
            _remove_stale(path)
    items: list[Any] = []
    taken: list[tuple[Path, int]] = []
    for segments in sorted(writers.values(), key=_first_mtime):
        context = _Context(identity, chest, logger, loads, reported)
        items.extend(context.take(sorted(segments)))
        taken.extend(context.taken)
    return items, taken


def _first_mtime(segments: list[tuple[int, Path]]) -> float:
    try:
        return min(segments)[1].stat().st_mtime
    except OSError:
        return 0.0


class _Context:
    """Taking one gone writer's files."""

    def __init__(
        self,
        identity: Identity,
        chest: str,
        logger: logging.Logger,
        loads: Callable[[bytes], Any],
        reported: set[str],
    ) -> None:
        self.identity = identity
        self.chest = chest
        self.logger = logger
        self.loads = loads
        self.reported = reported
        self.taken: list[tuple[Path, int]] = []

    def take(self, segments: list[tuple[int, Path]]) -> list[Any]:
        scans: list[tuple[Path, Scan]] = []
        for _, path in segments:
            try:
                fd = open_unlocked(path)
            except Unsafe as exc:
                _refuse(path, str(exc), self.chest, self.logger, self.reported)
                continue
            if fd is None:
                if not self.taken:  # the writer lives, or another process takes these
                    return []
                continue
            found = self._read(path, fd)
            if found is None:
                os.close(fd)
                continue
            self.taken.append((path, fd))
            scans.append((path, found))
        return self._items(scans)

    def _read(self, path: Path, fd: int) -> Scan | None:
        """The file's frames if it is this chest's; None (the file left
        alone, or set aside) if not."""
        try:
            found = scan(read_all(fd))
        except OSError as exc:
            self.logger.error(
                "%s: spool file %s cannot be read (%s); left for a later try",
                self.chest, path, exc.strerror or exc,
            )  # fmt: skip
            return None
        identity = header_identity(found.header) if found.header is not None else None
        if identity is None:
            try:
                aside = set_aside(path, REJECTED)
            except OSError:
                return None
            self.logger.error(
                "%s: %s is not a spool file of a format this version reads (no valid header); "
                "set aside as %s, not read",
                self.chest, path, aside.name,
            )  # fmt: skip
            return None
        if identity != self.identity:  # another chest's, whose name hashes alike
            return None
        return found

    def _items(self, scans: list[tuple[Path, Scan]]) -> list[Any]:
        if not scans:
            return []
        acked = max(found.acked for _, found in scans)
        payloads: dict[int, bytes] = {}
        for path, found in scans:
            payloads.update(found.items)
            if found.damaged:
                ranges = ", ".join(f"{start}-{end}" for start, end in found.damaged[:5])
                self.logger.error(
                    "%s: spool file %s is damaged at bytes %s; those bytes are skipped, the "
                    "whole items before and after them are resent",
                    self.chest, path, ranges,
                )  # fmt: skip
            if found.torn:
                self.logger.warning(
                    "%s: spool file %s ends in a cut-off write; its whole items are resent",
                    self.chest, path,
                )  # fmt: skip
        items = []
        unreadable = 0
        first_error: Exception | None = None
        for seq in sorted(payloads):
            if seq < acked:
                continue
            try:
                items.append(self.loads(payloads[seq]))
            except Exception as exc:
                unreadable += 1
                first_error = first_error or exc
        names = ", ".join(path.name for path, _ in scans)
        if unreadable:
            self.logger.error(
                "%s: %d items of spool file(s) %s cannot be read (%r); skipped",
                self.chest, unreadable, names, first_error,
            )  # fmt: skip
        if items:
            self.logger.info(
                "%s: resending %d items left in %s by a process that is gone",
                self.chest, len(items), names,
            )  # fmt: skip
        return items


def _refuse(path: Path, why: str, chest: str, logger: logging.Logger, reported: set[str]) -> None:
    if str(path) in reported:
        return
    reported.add(str(path))
    logger.error(
        "%s: spool file %s %s: it is never read (remove it, or give it to this user, mode 0600)",
        chest, path, why,
    )  # fmt: skip


def _reject_legacy(path: Path, chest: str, logger: logging.Logger, reported: set[str]) -> None:
    try:
        fd = open_unlocked(path)
    except Unsafe as exc:
        _refuse(path, str(exc), chest, logger, reported)
        return
    if fd is None:
        return
    try:
        aside = set_aside(path, REJECTED)
    except OSError:
        return
    finally:
        os.close(fd)
    logger.error(
        "%s: spool file %s was written by an earlier version of flask_chest_otel, whose format "
        "(pickle) is never read; set aside as %s",
        chest, path, aside.name,
    )  # fmt: skip


def _remove_stale(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime < STALE_CREATING:
            return
        fd = open_unlocked(path)
    except (OSError, Unsafe):
        return
    if fd is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
