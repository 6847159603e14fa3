"""Verify the WebDataset shards and the class tree against the records they were written with.

The records are the reference (``verify`` has checked each against its
CRC-32 by then).  From each part's .lst and .crc comes a table, by record id,
of the record's position in the split, its label and its payload's CRC-32.
Every shard member is then read: sample ``k`` of the split must be the record
at position ``k``, its ``.cls`` and ``.json`` must carry the record's label,
WNID and name, and its image bytes, put behind the record's header, must give
the record's CRC-32, so the image is the record's byte for byte.  Every tree
file is read the same way, and the tree holds no other file (a failed image
is in no format).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bootstrap.common.errors import VerifyError
from bootstrap.common.progress import Progress, StatusFile
from bootstrap.pack.plan import part_names
from bootstrap.pack.recordio import IRHEADER
from bootstrap.pack.shards import image_extension, sample_key, shard_index_name
from bootstrap.pack.tree import tree_path

log = logging.getLogger(__name__)


def _fail(where: str, message: str) -> VerifyError:
    return VerifyError(f"{where}: {message}; pack it again: python -m bootstrap run --rebuild-from pack")


@dataclass(frozen=True)
class RecordTable:
    """Each record's position in its split, label and payload CRC-32, indexed by record id (position -1: none)."""

    position: np.ndarray[Any, np.dtype[np.int64]]
    label: np.ndarray[Any, np.dtype[np.int32]]
    crc: np.ndarray[Any, np.dtype[np.uint32]]

    def lookup(self, record_id: int) -> tuple[int, int, int]:
        if not 0 <= record_id < len(self.position) or self.position[record_id] < 0:
            return -1, -1, -1
        return int(self.position[record_id]), int(self.label[record_id]), int(self.crc[record_id])


def _lines(directory: Path, split: str, parts: int) -> Iterator[tuple[int, int, int, str, int]]:
    """(position, id, label, relpath, crc) of every record, part by part."""
    for part, names in enumerate(part_names(split, parts)):
        with open(directory / names.lst, encoding="utf-8") as lst, open(directory / names.crc) as crc:
            for line, (lst_line, crc_line) in enumerate(zip(lst, crc, strict=True)):
                record_id, label, relpath = lst_line.rstrip("\n").split("\t")
                yield line * parts + part, int(record_id), int(float(label)), relpath, int(crc_line.split("\t")[1], 16)


def record_table(directory: Path, split: str, parts: int) -> RecordTable:
    rows = [(record_id, position, label, crc) for position, record_id, label, _, crc in _lines(directory, split, parts)]
    size = max((r[0] for r in rows), default=-1) + 1
    position, label, crc = np.full(size, -1, np.int64), np.zeros(size, np.int32), np.zeros(size, np.uint32)
    if rows:
        ids = np.array([r[0] for r in rows])
        position[ids], label[ids], crc[ids] = [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    return RecordTable(position, label, crc)


def payload_crc(record_id: int, label: int, image: bytes) -> int:
    """The CRC-32 of the record payload this image and label make (mxnet's header, then the image)."""
    return zlib.crc32(image, zlib.crc32(IRHEADER.pack(0, float(label), record_id, 0)))


def _samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample in a shard, in order; members of one key must be adjacent."""
    key, files = "", dict[str, bytes]()
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                stem, _, ext = member.name.partition(".")
                if not member.isfile() or "/" in member.name or not ext:
                    raise _fail(f"{path.name} member {member.name!r}", "is not a plain sample file")
                if stem != key and files:
                    yield key, files
                    files = {}
                key = stem
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[ext] = extracted.read()
    except tarfile.TarError as e:
        raise _fail(path.name, f"is not a whole tar archive ({e})") from None
    if files:
        yield key, files


def _check_sample(where: str, key: str, files: Mapping[str, bytes], table: RecordTable, position: int) -> None:
    record_id = int(key) if key.isdigit() else -1
    at, label, crc = table.lookup(record_id)
    if at < 0 or key != sample_key(record_id):
        raise _fail(where, f"sample {key!r} is no packed record")
    if at != position:
        raise _fail(where, f"sample {key} is record {at} of the split but sits at {position}")
    image = files.get("jpg", files.get("png", b""))
    if set(files) != {image_extension(image), "cls", "json"}:
        raise _fail(where, f"sample {key} has {sorted(files)}, not an image, .cls and .json")
    try:
        meta = json.loads(files["json"])
        cls = int(files["cls"])
    except ValueError:
        raise _fail(where, f"sample {key}'s .cls or .json does not parse") from None
    if cls != label or meta.get("label") != label or meta.get("id") != record_id:
        raise _fail(where, f"sample {key} is labelled {cls} ({meta.get('label')}); its record says {label}")
    if payload_crc(record_id, label, image) != crc:
        raise _fail(where, f"sample {key}'s image is not the image in its record")


def verify_shards(directory: Path, records: Path, split: str, *, parts: int, expected: int,
                  status: StatusFile | None = None) -> int:  # fmt: skip
    """Every sample of every shard of ``split`` against its record; returns the number of samples."""
    table = record_table(records, split, parts)
    try:
        index = json.loads((directory / shard_index_name(split)).read_text())
        listed = [(s["name"], s["samples"]) for s in index["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _fail(str(directory / shard_index_name(split)), f"is not a shard index ({e})") from None
    on_disk = sorted(p.name for p in directory.glob(f"{split}-*.tar"))
    if on_disk != [name for name, _ in listed]:
        raise _fail(str(directory), f"holds shards {on_disk[:3]}... but the index lists {len(listed)} others")
    progress = Progress(f"verify {split} shards", sum((directory / n).stat().st_size for n, _ in listed), "B",
                        status=status)  # fmt: skip
    position = 0
    for name, count in listed:
        start = position
        for key, files in _samples(directory / name):
            _check_sample(f"{name}", key, files, table, position)
            position += 1
        if position - start != count:
            raise _fail(name, f"holds {position - start} samples but the index says {count}")
        progress.advance((directory / name).stat().st_size)
    if position != expected:
        raise _fail(split, f"the shards hold {position} samples but {expected} images were packed")
    progress.finish()
    log.info("verify %s: %d samples in %d shards, each the image and label of its record", split, position,
             len(listed))  # fmt: skip
    return position


def verify_tree(root: Path, records: Path, split: str, *, parts: int, expected: int, labels: Mapping[str, int],
                status: StatusFile | None = None) -> int:  # fmt: skip
    """Every record's tree file, byte for byte, in the folder of its label's class, and no other file."""
    progress = Progress(f"verify {split} tree", expected, "images", status=status)
    for _, record_id, label, relpath, crc in _lines(records, split, parts):
        path = tree_path(root, relpath)
        if labels.get(path.parent.name) != label:
            raise _fail(str(path), f"is in the folder of class {labels.get(path.parent.name)}, its record says {label}")
        try:
            image = path.read_bytes()
        except FileNotFoundError:
            raise _fail(str(path), "missing") from None
        if payload_crc(record_id, label, image) != crc:
            raise _fail(str(path), "is not the image in its record")
        progress.advance()
    files = sum(len(names) for _, _, names in os.walk(root))
    if files != expected:
        raise _fail(str(root), f"holds {files} files but {expected} images were packed (a failed or stray file?)")
    progress.finish()
    log.info("verify %s: %d tree files, each the image of its record, in its class's folder", split, files)
    return files
