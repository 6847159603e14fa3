"""MXNet RecordIO, written and read in pure Python.

Byte format (dmlc-core recordio.h, as pinned by mxnet 1.9.x):

    [u32 magic 0xCED7230A][u32 lrec = cflag << 29 | length][payload][zero pad to 4]

A payload that contains the magic word at a 4-byte-aligned offset is split
there: the magic is dropped and the pieces are written as start (cflag 1),
middle (2) and end (3) chunks; the reader puts the magic back.  Readers such
as DALI's and dmlc's indexed splitter rely on this, so it is not optional.

An image record's payload is the 24-byte ``IRHeader`` (``<IfQQ``: flag, label,
id, id2) followed by the encoded image.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_CHUNK = (1 << 29) - 1
_HEAD = struct.Struct("<II")
IRHEADER = struct.Struct("<IfQQ")

CFLAG_WHOLE, CFLAG_START, CFLAG_MIDDLE, CFLAG_END = 0, 1, 2, 3


class RecordIOError(ValueError):
    """The bytes are not valid RecordIO."""


@dataclass(frozen=True)
class ImageHeader:
    """The header MXNet stores in front of each image (``mx.recordio.IRHeader``)."""

    flag: int
    label: float
    id: int
    id2: int = 0


def pack_image(header: ImageHeader, image: bytes) -> bytes:
    """Payload of one image record with a scalar label (flag 0)."""
    return IRHEADER.pack(header.flag, header.label, header.id, header.id2) + image


def unpack_image(payload: bytes) -> tuple[ImageHeader, bytes]:
    """Split a payload into its header and the encoded image (labels arrays skipped)."""
    if len(payload) < IRHEADER.size:
        raise RecordIOError(f"record of {len(payload)} bytes is shorter than the image header")
    flag, label, id_, id2 = IRHEADER.unpack_from(payload)
    start = IRHEADER.size + 4 * flag
    return ImageHeader(flag, label, id_, id2), payload[start:]


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def encode_record(payload: bytes) -> bytes:
    """The on-disk bytes of one record, splitting at aligned magic words."""
    pieces: list[bytes] = []
    start = 0
    aligned_end = len(payload) - len(payload) % 4
    pos = payload.find(MAGIC_BYTES)
    while pos != -1 and pos < aligned_end:
        if pos % 4 == 0:
            chunk = payload[start:pos]
            cflag = CFLAG_START if start == 0 else CFLAG_MIDDLE
            pieces.append(_HEAD.pack(MAGIC, cflag << 29 | len(chunk)) + chunk)
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    tail = payload[start:]
    if len(tail) > MAX_CHUNK:
        raise RecordIOError(f"record of {len(payload)} bytes exceeds RecordIO's 2^29-byte limit")
    cflag = CFLAG_WHOLE if start == 0 else CFLAG_END
    pieces.append(_HEAD.pack(MAGIC, cflag << 29 | len(tail)) + tail + _pad(len(tail)))
    return b"".join(pieces)


def read_record(stream: BinaryIO) -> bytes | None:
    """Read one logical record from ``stream``; ``None`` at a clean end of file."""
    parts: list[bytes] = []
    while True:
        head = stream.read(8)
        if not head:
            if parts:
                raise RecordIOError("file ends inside a split record")
            return None
        if len(head) < 8:
            raise RecordIOError("file ends inside a record header")
        magic, lrec = _HEAD.unpack(head)
        if magic != MAGIC:
            raise RecordIOError(f"bad magic 0x{magic:08x} at offset {stream.tell() - 8}")
        cflag, length = lrec >> 29, lrec & MAX_CHUNK
        data = stream.read(length + (-length % 4))
        if len(data) < length:
            raise RecordIOError("file ends inside a record body")
        parts.append(data[:length])
        if cflag == CFLAG_WHOLE:
            if len(parts) > 1:
                raise RecordIOError("whole record found inside a split record")
            return parts[0]
        if cflag == CFLAG_END:
            if len(parts) == 1:
                raise RecordIOError("end chunk without a start chunk")
            return MAGIC_BYTES.join(parts)
        if (cflag == CFLAG_START) != (len(parts) == 1):
            raise RecordIOError(f"chunk flag {cflag} out of order")


def iter_records(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for every record of a .rec stream."""
    while True:
        offset = stream.tell()
        payload = read_record(stream)
        if payload is None:
            return
        yield offset, payload


def format_idx_line(key: int, offset: int) -> str:
    """One .idx line as ``MXIndexedRecordIO.write_idx`` writes it."""
    return f"{key}\t{offset}\n"


def format_lst_line(index: int, label: float, relpath: str) -> str:
    """One .lst line in im2rec 1.9's format (``idx\\tlabel%f\\tpath``)."""
    return f"{index}\t{label:f}\t{relpath}\n"
