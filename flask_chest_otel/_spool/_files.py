"""Spool files on disk: their names, the directory's permissions, creating a
file already locked, and opening another process's file only when it is
safe to read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ._frames import Identity

#: Suffixes of the files a spool sets aside: unknown format, or no longer read.
REJECTED = ".rejected"
#: A file being made, before it is renamed into place (see ``create_locked``).
CREATING = ".creating"


def file_prefix(name: str) -> str:
    """The chest name as it appears in spool file names (readable only: the
    identity is the hash after it, and the header inside)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "chest"


def identity_tag(identity: Identity) -> str:
    """A short hash of the chest's identity: two chests whose names look
    alike once sanitised (``orders/api``, ``orders:api``), or of two kinds,
    never share file names."""
    text = json.dumps(list(identity), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Names:
    """The file names of one chest's spool."""

    prefix: str
    tag: str

    def segment(self, writer: str, number: int) -> str:
        return f"{self.prefix}.{self.tag}.{writer}.{number:06d}.spool"

    def pattern(self) -> re.Pattern[str]:
        """Matches a segment name; groups: writer, number."""
        return re.compile(
            re.escape(f"{self.prefix}.{self.tag}.") + r"([0-9]+\.[0-9a-f]{8})\.([0-9]{6,})\.spool"
        )

    def legacy_pattern(self) -> re.Pattern[str]:
        """Files of the versions that pickled their items (never read)."""
        return re.compile(re.escape(self.prefix) + r"\.[0-9]+\.[0-9a-f]{8}\.spool")


def prepare_directory(directory: Path, logger: logging.Logger, name: str) -> None:
    """Creates the directory 0700 if missing; reports (ERROR) one that is
    not this user's or that others may write to."""
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        whose = f"uid {info.st_uid}'s" if info.st_uid != os.geteuid() else "this user's"
        logger.error(
            "%s: spool directory %s is %s, mode %s: other users can put files there; files "
            "in it that are not this user's are never read; make it this user's, mode 0700",
            name, directory, whose, oct(stat.S_IMODE(info.st_mode)),
        )  # fmt: skip


def create_locked(directory: Path, name: str, first_frame: bytes) -> tuple[int, Path, int]:
    """Creates ``directory/name`` holding ``first_frame``, locked before any
    other process can see it: made under a temporary name, locked, written,
    then renamed into place. Returns (descriptor, path, inode). Raises
    OSError (the temporary file is removed)."""
    path = directory / name
    temporary = directory / f".{name}{CREATING}"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(temporary, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        written = 0
        while written < len(first_frame):
            written += os.write(fd, first_frame[written:])
        os.rename(temporary, path)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return fd, path, os.fstat(fd).st_ino


class Unsafe(Exception):
    """A file this process must not read (another user's, writable by others,
    not a regular file)."""


def open_unlocked(path: Path) -> int | None:
    """A descriptor on ``path``, locked, if it is this user's regular file,
    writable by no one else, and its writer is gone (its lock can be taken);
    None if its writer lives or it went away. Raises Unsafe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise Unsafe(f"cannot be opened safely ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unsafe("is not a regular file")
        if info.st_uid != os.geteuid():
            raise Unsafe(f"belongs to uid {info.st_uid}, not to this process's user")
        if info.st_mode & 0o022:
            raise Unsafe(f"is writable by others (mode {oct(stat.S_IMODE(info.st_mode))})")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process lives, or another one adopts it
            os.close(fd)
            return None
        # Deleted or replaced between open and lock (adopted meanwhile).
        if os.stat(path, follow_symlinks=False).st_ino != info.st_ino:
            os.close(fd)
            return None
    except FileNotFoundError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, max(size - offset, 1 << 16), offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def set_aside(path: Path, suffix: str) -> Path:
    aside = path.with_name(path.name + suffix)
    os.replace(path, aside)
    return aside


def write_some(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Writes ``data``; returns the bytes written and the error that stopped
    the write short (a full disk, a failing one), if any."""
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
