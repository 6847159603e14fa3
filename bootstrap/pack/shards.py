"""WebDataset shards: tar files of samples ``{key}.jpg``, ``{key}.cls``, ``{key}.json``, in record order.

A shard is a plain ustar archive written by hand so that every byte is a
function of the samples alone (mtime 0, owner 0, mode 0644): appending the
same samples after a rollback to a checkpoint rewrites the same bytes.  A
shard is closed (its two zero end blocks written) when the next sample would
take it past the shard size, so a shard holds at least one sample and only
the last one of a split is smaller.  Names are ``{split}-{NNNNNN}.tar``, so
``train-{000000..000123}.tar`` (brace expansion, as ``webdataset`` takes it)
lists a split.  ``{split}.shards.json`` lists each shard with its sample
count, and the split's brace pattern and total (what ``with_epoch`` and a
``DataLoader``'s length need).
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.common.errors import PackError
from bootstrap.dataset.streams import Item

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def shard_pattern(split: str, shards: int) -> str:
    """``train-{000000..000123}.tar``: every shard of a split, as webdataset's brace expansion takes it."""
    return f"{split}-{{{0:06d}..{shards - 1:06d}}}.tar" if shards > 1 else shard_name(split, 0)


def shard_index_name(split: str) -> str:
    return f"{split}.shards.json"


def sample_key(record_id: int) -> str:
    """Unique in a split and sortable as text (no dot: webdataset splits the key from the extension at the first)."""
    return f"{record_id:08d}"


def image_extension(data: bytes) -> str:
    """``png`` for PNG bytes (``--encoding .png``), else ``jpg``: what webdataset's decoders choose by."""
    return "png" if data.startswith(b"\x89PNG") else "jpg"


def sample_members(item: Item) -> list[tuple[str, bytes]]:
    """The files of one sample: the image as stored in its record, its label, and where it came from."""
    wnid, _, name = item.relpath.partition("/")
    key = sample_key(item.id)
    meta = json.dumps({"id": item.id, "label": item.label, "wnid": wnid, "name": name}, sort_keys=True)
    return [(f"{key}.{image_extension(item.data)}", item.data), (f"{key}.cls", str(item.label).encode()),
            (f"{key}.json", meta.encode())]  # fmt: skip


def member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def encode_sample(item: Item) -> bytes:
    """One sample as tar members: header, data, zero padding to the next 512-byte block, for each file."""
    out = bytearray()
    for name, data in sample_members(item):
        out += member_header(name, len(data))
        out += data
        out += bytes(-len(data) % BLOCK)
    return bytes(out)


@dataclass
class _Shard:
    index: int
    samples: int
    length: int


class ShardSink:
    """Appends samples to the split's current shard and rolls over to the next when it is full.

    ``sync()`` returns the current shard, its length and sample count, and the
    sample counts of the closed shards; ``ShardSink(..., state)`` truncates the
    current shard back to that length and deletes any later shard.
    """

    def __init__(self, directory: Path, split: str, shard_bytes: int, state: dict[str, Any] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.split, self.shard_bytes = directory, split, shard_bytes
        state = state or {"closed": [], "shard": 0, "samples": 0, "length": 0}
        self.closed: list[int] = list(state["closed"])
        self.current = _Shard(state["shard"], state["samples"], state["length"])
        for later in directory.glob(f"{split}-*.tar"):
            if int(later.stem.rsplit("-", 1)[1]) > self.current.index:
                later.unlink()
        self._f = self._open(self.current)

    def _open(self, shard: _Shard) -> Any:
        path = self.directory / shard_name(self.split, shard.index)
        with open(path, "ab") as f:
            if f.seek(0, os.SEEK_END) < shard.length:
                raise PackError(f"{path} is shorter than its checkpoint says; the work directory was changed by hand. "
                                f"Delete {self.directory.parent} to pack this split again")  # fmt: skip
            f.truncate(shard.length)
        return open(path, "ab", buffering=4 << 20)

    def _finish_shard(self) -> None:
        self._f.write(END_OF_ARCHIVE)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self.closed.append(self.current.samples)

    def add(self, item: Item) -> None:
        sample = encode_sample(item)
        shard = self.current
        if shard.samples and shard.length + len(sample) + len(END_OF_ARCHIVE) > self.shard_bytes:
            self._finish_shard()
            self.current = shard = _Shard(shard.index + 1, 0, 0)
            self._f = self._open(shard)
        self._f.write(sample)
        shard.length += len(sample)
        shard.samples += 1

    def sync(self) -> dict[str, Any]:
        self._f.flush()
        os.fsync(self._f.fileno())
        shard = self.current
        return {"closed": list(self.closed), "shard": shard.index, "samples": shard.samples, "length": shard.length}

    def close(self) -> list[str]:
        """End the last shard and write the shard index; returns the shard file names and the index's."""
        if self.current.samples:
            self._finish_shard()
        else:  # a split with no samples, or a shard just opened: nothing to end
            self._f.close()
            (self.directory / shard_name(self.split, self.current.index)).unlink()
        names = [shard_name(self.split, i) for i in range(len(self.closed))]
        index = {"split": self.split, "pattern": shard_pattern(self.split, len(names)), "samples": sum(self.closed),
                 "shards": [{"name": n, "samples": c} for n, c in zip(names, self.closed, strict=True)]}  # fmt: skip
        (self.directory / shard_index_name(self.split)).write_text(json.dumps(index, indent=1) + "\n")
        return [*names, shard_index_name(self.split)]
