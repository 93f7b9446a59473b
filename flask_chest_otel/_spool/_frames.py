"""The bytes of a spool file: frames, and reading them back past damage.

A frame is ``magic (4) | kind (1) | length (4) | seq (8) | crc32 (4) |
payload``; the checksum covers kind, length, seq and payload. The magic
(``0xFC`` never occurs in UTF-8 text) lets a reader that meets a damaged
frame find the next whole one, so damage costs only the frames it touches.

- The **header** frame opens every file: its payload names the chest (see
  ``header_payload``), its ``seq`` is the writer's acknowledgement at the
  time the file was made.
- An **item** frame holds one encoded item, numbered by ``seq`` (0, 1, 2...
  within one writer's files).
- An **ack** frame says that every item numbered below its ``seq`` is gone
  (delivered or dropped). Items leave the buffer oldest first, so this one
  number describes what is left, whatever file or order the frames are in.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"\xfcCS\xfd"
HEADER = 1
ITEM = 2
ACK = 3
_KINDS = (HEADER, ITEM, ACK)
#: kind, length, seq: what the checksum covers with the payload.
_BODY = struct.Struct("<BIQ")
_CRC = struct.Struct("<I")
FRAME_OVERHEAD = len(MAGIC) + _BODY.size + _CRC.size
#: A longer frame is damage, not data: no item comes near it.
MAX_PAYLOAD = 64 << 20
#: The version of this layout and of the header's fields.
FORMAT = 1

Identity = tuple[str, str, str]


def encode_frame(kind: int, seq: int, payload: bytes) -> bytes:
    body = _BODY.pack(kind, len(payload), seq)
    crc = _CRC.pack(zlib.crc32(payload, zlib.crc32(body)))
    return b"".join((MAGIC, body, crc, payload))


def header_payload(identity: Identity) -> bytes:
    """The header's payload: the format and the chest's identity (kind of
    exporter, chest name, destination), as JSON."""
    kind, chest, destination = identity
    fields = {"format": FORMAT, "kind": kind, "chest": chest, "destination": destination}
    return json.dumps(fields, sort_keys=True).encode()


def header_identity(payload: bytes) -> Identity | None:
    """The identity a header names, or None for a header of another format."""
    try:
        fields: Any = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(fields, dict) or fields.get("format") != FORMAT:
        return None
    identity = (fields.get("kind"), fields.get("chest"), fields.get("destination"))
    if not all(isinstance(part, str) for part in identity):
        return None
    return identity  # type: ignore[return-value]


@dataclass
class Scan:
    """What one spool file holds."""

    #: The header's payload, if the file starts with a whole header frame.
    header: bytes | None = None
    #: seq -> payload of every whole item frame.
    items: dict[int, bytes] = field(default_factory=dict)
    #: Every item numbered below this is gone.
    acked: int = 0
    #: (start, end) byte ranges that are not whole frames, skipped.
    damaged: list[tuple[int, int]] = field(default_factory=list)
    #: The file ends in a frame cut short (a write the disk refused midway).
    torn: bool = False

    def live(self) -> list[tuple[int, bytes]]:
        """(seq, payload) of the items not yet gone, oldest first."""
        return sorted((seq, payload) for seq, payload in self.items.items() if seq >= self.acked)


def scan(data: bytes, base: int = 0) -> Scan:
    """Reads every whole frame of ``data``; a damaged stretch (bad checksum,
    impossible length, no magic) is recorded and skipped up to the next
    magic. ``base`` offsets the byte positions recorded."""
    result = Scan()
    view = memoryview(data)
    offset, end = 0, len(data)
    while offset < end:
        frame_end = _whole_frame(data, offset)
        if frame_end > 0:
            _, kind, length, seq, _ = _unpack(data, offset)
            payload = bytes(view[frame_end - length : frame_end])
            if kind == ITEM:
                result.items[seq] = payload
            else:
                result.acked = max(result.acked, seq)
                if kind == HEADER and offset == 0:
                    result.header = payload
            offset = frame_end
            continue
        following = data.find(MAGIC, offset + 1)
        if following < 0:
            if frame_end == -1:
                result.torn = True
            else:
                result.damaged.append((base + offset, base + end))
            break
        result.damaged.append((base + offset, base + following))
        offset = following
    return result


def _unpack(data: bytes, offset: int) -> tuple[bytes, int, int, int, int]:
    magic = data[offset : offset + len(MAGIC)]
    kind, length, seq = _BODY.unpack_from(data, offset + len(MAGIC))
    (crc,) = _CRC.unpack_from(data, offset + len(MAGIC) + _BODY.size)
    return magic, kind, length, seq, crc


def _whole_frame(data: bytes, offset: int) -> int:
    """The end of the whole frame at ``offset``; -1 if what is there is the
    start of a frame the data ends in, 0 if it is damage."""
    left = len(data) - offset
    if left < FRAME_OVERHEAD:
        return -1 if MAGIC.startswith(data[offset : offset + min(left, len(MAGIC))]) else 0
    magic, kind, length, _, crc = _unpack(data, offset)
    if magic != MAGIC or kind not in _KINDS or length > MAX_PAYLOAD:
        return 0
    start = offset + FRAME_OVERHEAD
    if start + length > len(data):
        return -1
    body_start = offset + len(MAGIC)
    body = data[body_start : body_start + _BODY.size]
    if zlib.crc32(data[start : start + length], zlib.crc32(body)) != crc:
        return 0
    return start + length
