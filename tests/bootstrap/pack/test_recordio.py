"""Our RecordIO writer against MXNet's own reader, including records that contain the magic word."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from bootstrap.pack.recordio import (
    MAGIC_BYTES,
    ImageHeader,
    RecordIOError,
    encode_record,
    format_idx_line,
    iter_records,
    pack_image,
    read_record,
    unpack_image,
)

PAYLOADS = [
    b"",
    b"abc",
    b"abcd" * 10,
    MAGIC_BYTES,  # magic at offset 0
    b"xxxx" + MAGIC_BYTES + b"yy",  # aligned, in the middle
    b"x" + MAGIC_BYTES + b"yyy",  # unaligned: must not split
    MAGIC_BYTES * 3 + b"z",  # several consecutive
    b"abcd" + MAGIC_BYTES,  # magic at the very end
]


def write_rec(path: Path, payloads: list[bytes]) -> list[int]:
    offsets = []
    with open(path, "wb") as f:
        for p in payloads:
            offsets.append(f.tell())
            f.write(encode_record(p))
    with open(path.with_suffix(".idx"), "w") as f:
        for i, off in enumerate(offsets):
            f.write(format_idx_line(i, off))
    return offsets


@pytest.mark.parametrize("payload", PAYLOADS)
def test_round_trip_own_reader(payload: bytes) -> None:
    data = encode_record(payload)
    assert len(data) % 4 == 0
    assert read_record(io.BytesIO(data)) == payload


def test_aligned_magic_is_split_and_unaligned_is_not() -> None:
    split = encode_record(b"xxxx" + MAGIC_BYTES + b"yy")
    heads = [struct.unpack_from("<II", split, 0), struct.unpack_from("<II", split, 12)]
    assert [(lrec >> 29, lrec & ((1 << 29) - 1)) for _, lrec in heads] == [(1, 4), (3, 2)]
    whole = encode_record(b"x" + MAGIC_BYTES + b"yyy")
    assert struct.unpack_from("<II", whole)[1] >> 29 == 0


def test_mxnet_reads_every_payload(tmp_path: Path) -> None:
    import mxnet as mx

    rec = tmp_path / "t.rec"
    write_rec(rec, PAYLOADS)
    reader = mx.recordio.MXRecordIO(str(rec), "r")
    assert [reader.read() for _ in PAYLOADS] == PAYLOADS
    assert reader.read() is None
    indexed = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
    for key in reversed(range(len(PAYLOADS))):
        assert indexed.read_idx(key) == PAYLOADS[key]


def test_image_header_matches_mxnet_pack() -> None:
    import mxnet as mx

    ours = pack_image(ImageHeader(0, 7.0, 42), b"jpegbytes")
    theirs = mx.recordio.pack(mx.recordio.IRHeader(0, 7.0, 42, 0), b"jpegbytes")
    assert ours == theirs
    header, image = unpack_image(ours)
    assert (header.label, header.id, image) == (7.0, 42, b"jpegbytes")


def test_iter_records_reports_offsets(tmp_path: Path) -> None:
    rec = tmp_path / "t.rec"
    offsets = write_rec(rec, PAYLOADS)
    with open(rec, "rb") as f:
        assert [(o, p) for o, p in iter_records(f)] == list(zip(offsets, PAYLOADS, strict=True))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 8, "bad magic"),
        (MAGIC_BYTES + b"\x01", "inside a record header"),
        (encode_record(b"abcdefgh")[:-4], "inside a record body"),
        (encode_record(b"xxxx" + MAGIC_BYTES + b"yy")[:12], "inside a split record"),
    ],
)
def test_damaged_files_are_errors(data: bytes, message: str) -> None:
    with pytest.raises(RecordIOError, match=message):
        list(iter_records(io.BytesIO(data)))
