"""Append-only outputs of the packer, each able to checkpoint and roll back.

Every sink tracks the byte length of its files.  ``sync()`` flushes, fsyncs
and returns those lengths; ``restore()`` truncates back to them.  A run that
is killed between checkpoints therefore resumes from a state where every
file ends exactly at the last checkpoint, and appending the same records
again reproduces the uninterrupted output byte for byte.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bootstrap.common.errors import PackError
from bootstrap.dataset.streams import Item
from bootstrap.layout import bucket_file
from bootstrap.pack.plan import bucket_of, global_idx_name, part_names, part_of
from bootstrap.pack.recordio import ImageHeader, encode_record, format_idx_line, format_lst_line, pack_image
from bootstrap.pack.shards import ShardSink

WRITE_BUFFER = 4 << 20


class _AppendFile:
    """A buffered append-only file that knows its length."""

    def __init__(self, path: Path, length: int = 0, buffering: int = WRITE_BUFFER) -> None:
        self.path = path
        with open(path, "ab") as f:
            size = f.seek(0, os.SEEK_END)
            if size < length:  # truncate() would pad with zeros: refuse rather than corrupt
                raise PackError(
                    f"{path} is {size} bytes but its checkpoint says {length}; the work directory was changed "
                    f"by hand. Delete {path.parent.parent} to pack this split again"
                )
            f.truncate(length)
        self._f: IO[bytes] = open(path, "ab", buffering=buffering)  # noqa: SIM115 - closed in close()
        self.length = length

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # an unbuffered (raw) file may take fewer bytes than offered
            written = self._f.write(view)
            view = view[written:]
        self.length += len(data)

    def sync(self) -> int:
        self._f.flush()
        os.fsync(self._f.fileno())
        return self.length

    def close(self) -> None:
        self._f.close()


class RecordSink:
    """The .rec, .idx, .lst and .crc of one split, as one file set or N round-robin parts."""

    def __init__(self, directory: Path, split: str, parts: int, state: dict[str, Any] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.split = directory, split
        self.names = part_names(split, parts)
        lengths = state["lengths"] if state else [[0, 0, 0, 0] for _ in self.names]
        if any(len(lens) != 4 for lens in lengths) or len(lengths) != len(self.names):
            raise PackError(f"{split}: the checkpoint was written by an older version or for another number of "
                            "parts; run again with --rebuild-from pack")  # fmt: skip
        self.position = state["position"] if state else 0
        self._files = [
            tuple(_AppendFile(directory / n, length) for n, length in zip(p.files, lens, strict=True))
            for p, lens in zip(self.names, lengths, strict=True)
        ]

    def add(self, item: Item) -> None:
        """Append a record holding ``item.data`` (the transcoded image)."""
        rec, idx, lst, crc = self._files[part_of(self.position, len(self._files))]
        offset = rec.length
        payload = pack_image(ImageHeader(0, float(item.label), item.id), item.data)
        rec.write(encode_record(payload))
        idx.write(format_idx_line(item.id, offset).encode())
        lst.write(format_lst_line(item.id, item.label, item.relpath).encode())
        crc.write(f"{item.id}\t{zlib.crc32(payload):08x}\n".encode())
        self.position += 1

    def sync(self) -> dict[str, Any]:
        return {"position": self.position, "lengths": [[f.sync() for f in files] for files in self._files]}

    def close(self) -> list[str]:
        """Flush, close, and write the global index when there are parts; returns the output file names."""
        self.sync()
        for files in self._files:
            for f in files:
                f.close()
        names = [n for p in self.names for n in p.files]
        if len(self.names) > 1:
            base = 0
            with open(self.directory / global_idx_name(self.split), "w") as out:
                for p in self.names:
                    with open(self.directory / p.idx) as idx:
                        for line in idx:
                            key, offset = line.split("\t")
                            out.write(format_idx_line(int(key), base + int(offset)))
                    base += (self.directory / p.rec).stat().st_size
            names.append(global_idx_name(self.split))
        return names


class OutputSink:
    """A split's outputs in their final order: the records, and the WebDataset shards when asked for.

    Both take the same images in the same order, so sample ``k`` of the shards
    is record ``k`` of the .rec, byte for byte, and they checkpoint together.
    """

    def __init__(self, directory: Path, split: str, parts: int, shard_bytes: int,
                 state: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.records = RecordSink(directory, split, parts, state)
        self.shards = ShardSink(directory, split, shard_bytes, (state or {}).get("shards")) if shard_bytes else None

    def add(self, item: Item) -> None:
        self.records.add(item)
        if self.shards is not None:
            self.shards.add(item)

    def sync(self) -> dict[str, Any]:
        state = self.records.sync()
        return {**state, "shards": self.shards.sync()} if self.shards is not None else state

    def close(self) -> dict[str, list[str]]:
        """The finished files' names: ``recordio`` (into the records folder) and ``webdataset`` (the shards')."""
        return {"recordio": self.records.close(), "webdataset": self.shards.close() if self.shards else []}


def move_into(source: Path, dest: Path, names: list[str]) -> None:
    """Move finished files into place; safe to repeat after a crash part-way (moved ones are skipped)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = source / name
        if src.exists():
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            os.replace(src, dest / name)
        elif not (dest / name).exists():
            raise PackError(f"{name} is neither in {source} nor in {dest}; delete {source.parent} to pack again")


_ENTRY = struct.Struct("<QfIH")


class BucketWriter:
    """Scatter records to K bucket files by a seeded hash of their id (pass one of the external shuffle)."""

    def __init__(self, directory: Path, buckets: int, seed: int, lengths: list[int] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.seed = directory, seed
        lengths = lengths or [0] * buckets
        # Unbuffered: one write() per record into the page cache, whose writeback still sends
        # large sequential writes to the disk; user-space memory then does not grow with K.
        self._files = [_AppendFile(self.path(b), lengths[b], buffering=0) for b in range(buckets)]

    def path(self, bucket: int) -> Path:
        return bucket_file(self.directory, bucket)

    def add(self, item: Item) -> None:
        raw = item.relpath.encode()
        f = self._files[bucket_of(item.id, self.seed, len(self._files))]
        f.write(_ENTRY.pack(item.id, float(item.label), len(item.data), len(raw)) + raw + item.data)

    def sync(self) -> dict[str, Any]:
        return {"lengths": [f.sync() for f in self._files]}

    def close(self) -> None:
        for f in self._files:
            f.close()


def read_bucket(path: Path) -> Iterator[Item]:
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        record_id, label, image_len, path_len = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        relpath = data[pos : pos + path_len].decode()
        pos += path_len
        yield Item(record_id, int(label), relpath, data[pos : pos + image_len])
        pos += image_len


class FailureLog:
    """``failures_<split>.tsv``: one line per image that could not be packed, with the reason."""

    HEADER = b"id\tpath\treason\n"

    def __init__(self, path: Path, length: int | None = None) -> None:
        self._f = _AppendFile(path, length or 0, buffering=1 << 16)
        if length is None:
            self._f.write(self.HEADER)
        self.path = path

    def add(self, record_id: int, relpath: str, reason: str) -> None:
        clean = reason.replace("\t", " ").replace("\n", " ")
        self._f.write(f"{record_id}\t{relpath}\t{clean}\n".encode())

    def sync(self) -> int:
        return self._f.sync()

    def close(self) -> None:
        self._f.close()
