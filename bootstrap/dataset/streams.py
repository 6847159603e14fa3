"""Read the image archives as one sequential stream of labelled images.

The train tar is a tar of per-class tars; we walk it and each class tar in
place, in file order, with an 8 MiB read buffer, so the disk sees large
sequential reads and nothing is extracted first.  Between images the stream
yields ``Cursor``s: points where everything before is accounted for and the
archive can be reopened (the offset of the next member header).  The packer
checkpoints at cursors, which is what makes a killed run resume mid-archive.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bootstrap.common.errors import ArchiveError
from bootstrap.dataset.devkit import SynsetClass
from bootstrap.dataset.naming import val_position, wnid_of_class_tar
from bootstrap.dataset.safetar import READ_BUFFER, iter_members, open_tar, read_member

END = -1


@dataclass(frozen=True)
class Item:
    id: int
    label: int
    relpath: str
    data: bytes


@dataclass(frozen=True)
class Cursor:
    offset: int
    """Archive offset of the next member header to read, or ``END``."""
    next_id: int


Stream = Iterator["Item | Cursor"]
StreamFactory = Callable[["Cursor | None"], Stream]


Opener = Callable[[], IO[bytes]]
"""Opens the archive for reading (by default the finished file; ``following`` passes one that waits for a download)."""


def train_stream(
    path: Path, classes: Mapping[str, SynsetClass], max_image_bytes: int, start: Cursor | None = None, *,
    opener: Opener | None = None,
) -> Stream:  # fmt: skip
    """Images of a train tar of class tars, labelled by their class tar's WNID."""
    name = path.name
    next_id = start.next_id if start else 0
    with opener() if opener else open(path, "rb", buffering=READ_BUFFER) as f:
        outer = open_tar(f, name, start.offset if start else 0)
        for member, base in iter_members(outer, name, max_bytes=1 << 40):
            yield Cursor(member.offset, next_id)
            wnid = wnid_of_class_tar(base)
            if wnid is None:
                raise ArchiveError(f"{name}: member {member.name!r} is not a class tar (nXXXXXXXX.tar)")
            if wnid not in classes:
                raise ArchiveError(f"{name}: class tar {base} is for {wnid}, which the devkit does not list")
            label = classes[wnid].label
            reader = outer.extractfile(member)
            assert reader is not None
            inner_name = f"{name}:{base}"
            try:
                inner = tarfile.open(fileobj=reader, mode="r:")  # noqa: SIM115 - a view into `outer`, closed with it
            except tarfile.TarError as e:
                raise ArchiveError(f"{inner_name}: not a readable tar ({e}); fetch the archive again") from None
            for image, image_base in iter_members(inner, inner_name, max_image_bytes):
                yield Item(next_id, label, f"{wnid}/{image_base}", read_member(inner, image, inner_name))
                next_id += 1
    yield Cursor(END, next_id)


def val_stream(
    path: Path,
    classes: Mapping[str, SynsetClass],
    val_wnids: list[str],
    max_image_bytes: int,
    start: Cursor | None = None,
    *,
    opener: Opener | None = None,
) -> Stream:
    """Images of a flat val tar, labelled from the devkit's ground truth."""
    name = path.name
    next_id = start.next_id if start else 0
    with opener() if opener else open(path, "rb", buffering=READ_BUFFER) as f:
        tar = open_tar(f, name, start.offset if start else 0)
        for member, base in iter_members(tar, name, max_image_bytes):
            yield Cursor(member.offset, next_id)
            position = val_position(base)
            if position is None or not 0 <= position < len(val_wnids):
                raise ArchiveError(
                    f"{name}: {member.name!r} has no ground-truth line (the devkit lists {len(val_wnids)} images)"
                )
            wnid = val_wnids[position]
            yield Item(next_id, classes[wnid].label, f"{wnid}/{base}", read_member(tar, member, name))
            next_id += 1
    yield Cursor(END, next_id)
