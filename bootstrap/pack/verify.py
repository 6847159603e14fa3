"""Re-read packed output and prove every reader will accept it.

For each part: every record's magic, length flags and image header; the .idx
line at the same position has the record's id as key and the exact offset
where the record starts (what dmlc's indexed splitter and DALI need); the
.lst line agrees on id and label; labels are in range; counts add up to what
was packed; a global index, when present, holds cumulative offsets.  A
sample of images is decoded.  One sequential pass, constant memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

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
    return VerifyError(f"{where}: {message}; pack this split again (delete its pack marker and output)")


def _check_record(where: str, header: ImageHeader, offset: int, idx_line: str, lst_line: str, *, classes: int) -> int:
    """The record's .idx and .lst lines agree with its header and offset, and its label is a class; returns its key."""
    if not idx_line or not lst_line:
        raise _fail(where, "has no matching .idx or .lst line")
    key, idx_offset = (int(v) for v in idx_line.split("\t"))
    lst_id, lst_label, _path = lst_line.rstrip("\n").split("\t")
    if idx_offset != offset or key != header.id:
        raise _fail(where, f"idx says key {key} at {idx_offset}, record is id {header.id} at {offset}")
    if int(lst_id) != header.id or float(lst_label) != header.label:
        raise _fail(where, f".lst line {lst_line.strip()!r} disagrees with the record header")
    if header.flag != 0 or not (0 <= header.label < classes) or header.label != int(header.label):
        raise _fail(where, f"bad label {header.label} (flag {header.flag}) for {classes} classes")
    return key


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
    names = part_names(split, parts)
    total_bytes = sum((directory / n.rec).stat().st_size for n in names if (directory / n.rec).exists())
    progress = Progress(f"verify {split}", total_bytes, "B", status=status)
    records = decoded = 0
    base = 0
    global_idx = open(directory / global_idx_name(split)) if parts > 1 else None  # noqa: SIM115
    for names_i in names:
        rec_path = directory / names_i.rec
        for path in (rec_path, directory / names_i.idx, directory / names_i.lst):
            if not path.exists():
                raise _fail(str(path), "missing")
        with (
            open(rec_path, "rb", buffering=8 << 20) as rec,
            open(directory / names_i.idx) as idx,
            open(directory / names_i.lst) as lst,
        ):
            last = 0
            try:
                for number, (offset, payload) in enumerate(iter_records(rec), 1):
                    where = f"{names_i.rec} record {number}"
                    header, image = unpack_image(payload)
                    key = _check_record(where, header, offset, idx.readline(), lst.readline(), classes=classes)
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
            if idx.readline() or lst.readline():
                raise _fail(names_i.rec, ".idx or .lst has more lines than the .rec has records")
            base += rec.tell()
    if records != expected:
        raise _fail(split, f"holds {records} records but {expected} were packed")
    if global_idx is not None:
        extra = global_idx.readline()
        global_idx.close()
        if extra:
            raise _fail(global_idx_name(split), "has more lines than the parts have records")
    progress.finish()
    log.info("verify %s: %d records OK, %d decoded", split, records, decoded)
    return VerifyReport(split, records, decoded, total_bytes)
