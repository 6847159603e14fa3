"""Re-read packed output and prove every reader will accept it.

For each part: every record's magic, length flags and image header; its bytes
against the CRC-32 recorded when it was packed (the .crc file); the .idx line
at the same position has the record's id as key and the exact offset where the
record starts (what dmlc's indexed splitter and DALI need); the .lst line
agrees on id and label; labels are in range; counts add up to what was packed;
a global index, when present, holds cumulative offsets; the failures file
lists exactly the images that failed.  A sample of images is decoded.  One
sequential pass, constant memory.  A file that is not text where text is
expected is reported by name, not as a traceback.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from bootstrap.common.errors import VerifyError
from bootstrap.common.progress import Progress, StatusFile
from bootstrap.pack.plan import global_idx_name, part_names
from bootstrap.pack.recordio import ImageHeader, RecordIOError, iter_records, unpack_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    split: str
    records: int
    decoded: int
    bytes: int


def _fail(where: str, message: str) -> VerifyError:
    return VerifyError(f"{where}: {message}; pack it again: python -m bootstrap run --rebuild-from pack")


@dataclass(frozen=True)
class _Lines:
    """The text lines that go with one record."""

    idx: str
    lst: str
    crc: str


def _check_record(where: str, header: ImageHeader, offset: int, payload: bytes, lines: _Lines, *,
                  classes: int) -> int:  # fmt: skip
    """The record's lines agree with its header, offset and bytes, and its label is a class; returns its key."""
    if not lines.idx or not lines.lst or not lines.crc:
        raise _fail(where, "has no matching .idx, .lst or .crc line")
    try:
        key, idx_offset = (int(v) for v in lines.idx.split("\t"))
        lst_id, lst_label, _path = lines.lst.rstrip("\n").split("\t")
        crc_key, crc = lines.crc.split("\t")
        float(lst_label), int(lst_id), int(crc, 16), int(crc_key)
    except ValueError:
        raise _fail(where, "its .idx, .lst or .crc line is not in the format the packer writes") from None
    if int(crc_key) != header.id or int(crc, 16) != zlib.crc32(payload):
        raise _fail(where, f"its bytes do not match the CRC-32 recorded when it was packed ({crc.strip()})")
    if idx_offset != offset or key != header.id:
        raise _fail(where, f"idx says key {key} at {idx_offset}, record is id {header.id} at {offset}")
    if int(lst_id) != header.id or float(lst_label) != header.label:
        raise _fail(where, f".lst line {lines.lst.strip()!r} disagrees with the record header")
    if header.flag != 0 or not (0 <= header.label < classes) or header.label != int(header.label):
        raise _fail(where, f"bad label {header.label} (flag {header.flag}) for {classes} classes")
    return key


def _text(path: Path) -> IO[str]:
    return open(path, encoding="utf-8", errors="strict")


def check_failures(path: Path, failed: int) -> None:
    """The failures file lists exactly ``failed`` images, each as ``id <tab> path <tab> reason``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise _fail(str(path), "missing") from None
    except UnicodeDecodeError:
        raise _fail(str(path), "is not text") from None
    body = lines[1:]
    if not lines or lines[0] != "id\tpath\treason":
        raise _fail(str(path), "has no header line 'id, path, reason'")
    if len(body) != failed:
        raise _fail(str(path), f"lists {len(body)} images but the pack recorded {failed} failures")
    for number, line in enumerate(body, 2):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0].isdigit():
            raise _fail(f"{path} line {number}", "is not 'id <tab> path <tab> reason'")


def verify_split(
    directory: Path,
    split: str,
    *,
    parts: int,
    classes: int,
    expected: int,
    sample_every: int = 50,
    status: StatusFile | None = None,
) -> VerifyReport:
    try:
        return _verify_split(directory, split, parts=parts, classes=classes, expected=expected,
                             sample_every=sample_every, status=status)  # fmt: skip
    except UnicodeDecodeError as e:
        raise _fail(split, f"an .idx, .lst or .crc file holds bytes that are not text ({e.reason})") from None


def _verify_split(
    directory: Path,
    split: str,
    *,
    parts: int,
    classes: int,
    expected: int,
    sample_every: int,
    status: StatusFile | None,
) -> VerifyReport:
    names = part_names(split, parts)
    total_bytes = sum((directory / n.rec).stat().st_size for n in names if (directory / n.rec).exists())
    progress = Progress(f"verify {split}", total_bytes, "B", status=status)
    records = decoded = 0
    base = 0
    global_idx = _text(directory / global_idx_name(split)) if parts > 1 else None
    for names_i in names:
        rec_path = directory / names_i.rec
        for path in (directory / name for name in names_i.files):
            if not path.exists():
                raise _fail(str(path), "missing")
        with (
            open(rec_path, "rb", buffering=8 << 20) as rec,
            _text(directory / names_i.idx) as idx,
            _text(directory / names_i.lst) as lst,
            _text(directory / names_i.crc) as crc,
        ):
            last = 0
            try:
                for number, (offset, payload) in enumerate(iter_records(rec), 1):
                    where = f"{names_i.rec} record {number}"
                    header, image = unpack_image(payload)
                    lines = _Lines(idx.readline(), lst.readline(), crc.readline())
                    key = _check_record(where, header, offset, payload, lines, classes=classes)
                    if records % sample_every == 0:
                        if cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR) is None:
                            raise _fail(where, "image does not decode")
                        decoded += 1
                    if global_idx is not None and global_idx.readline() != f"{key}\t{base + offset}\n":
                        raise _fail(global_idx_name(split), f"line for record {key} is not at offset {base + offset}")
                    records += 1
                    progress.advance(rec.tell() - last)
                    last = rec.tell()
            except RecordIOError as e:
                raise _fail(names_i.rec, str(e)) from None
            if idx.readline() or lst.readline() or crc.readline():
                raise _fail(names_i.rec, ".idx, .lst or .crc has more lines than the .rec has records")
            base += rec.tell()
    if records != expected:
        raise _fail(split, f"holds {records} records but {expected} were packed")
    if global_idx is not None:
        extra = global_idx.readline()
        global_idx.close()
        if extra:
            raise _fail(global_idx_name(split), "has more lines than the parts have records")
    progress.finish()
    log.info("verify %s: %d records, each matching its CRC-32, index and list line (%d images decoded as a "
             "sample)", split, records, decoded)  # fmt: skip
    return VerifyReport(split, records, decoded, total_bytes)
