"""Read the image archives as one sequential stream of labelled images.

The train tar is a tar of per-class tars; we walk it and each class tar in
place, in file order, with an 8 MiB read buffer, so the disk sees large
sequential reads and nothing is extracted first.  Between images the stream
yields ``Cursor``s: points where everything before is accounted for and the
archive can be reopened (the offset of the next member header).  The packer
checkpoints at cursors, which is what makes a killed run resume mid-archive.

The hub's layout is a split as WebDataset shards: ``shard_stream`` reads them
in order as one stream, each sample one image with its label.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from bootstrap.common.errors import ArchiveError
from bootstrap.dataset.devkit import SynsetClass
from bootstrap.dataset.naming import val_position, wnid_of_class_tar
from bootstrap.dataset.safetar import READ_BUFFER, SAFE_BASENAME, iter_members, open_tar, read_member

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


SAMPLE_IMAGE = ("jpg", "jpeg", "png")
SAMPLE_META_BYTES = 1 << 20
ShardOpener = Callable[[int], IO[bytes]]
"""Opens shard ``i`` of the split (``following`` passes one that waits until that shard has verified)."""


def shard_stream(
    paths: Sequence[Path], sizes: Sequence[int], classes: Sequence[SynsetClass], max_image_bytes: int,
    start: Cursor | None = None, *, opener: ShardOpener | None = None,
) -> Stream:  # fmt: skip
    """Images of WebDataset shards read one after another, as the hub's ``timm/imagenet-1k-wds`` holds them.

    A sample is the members sharing a key (the path up to the first dot of its base name): ``KEY.jpg`` (or
    ``.jpeg``, ``.png``) is the image, ``KEY.cls`` its label in sorted-WNID order, and ``KEY.json``, if there,
    may repeat the label (a number there must agree; anything else is not read as one) and name the original
    file.  A cursor's offset counts from the first
    shard's first byte, so a checkpoint names both the shard and the header to reopen at.
    """
    next_id = start.next_id if start else 0
    begin, base = (start.offset if start else 0), 0
    for index, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        if begin >= base + size:
            base += size
            continue
        with opener(index) if opener else open(path, "rb", buffering=READ_BUFFER) as f:
            tar = open_tar(f, path.name, max(begin - base, 0))
            sample: dict[str, bytes] = {}
            key = ""
            limit = max(max_image_bytes, SAMPLE_META_BYTES)
            for member, _ in iter_members(tar, path.name, limit):
                member_key, ext = _split_key(member.name)
                if member_key != key:
                    if sample:
                        yield _sample_item(path.name, key, sample, classes, next_id)
                        next_id += 1
                    yield Cursor(base + member.offset, next_id)
                    key, sample = member_key, {}
                if ext.lower() not in (*SAMPLE_IMAGE, "cls", "json"):
                    continue  # other fields a copy may carry: not ours to judge
                if ext.lower() not in SAMPLE_IMAGE and member.size > SAMPLE_META_BYTES:
                    raise ArchiveError(f"{path.name}: {member.name!r} is {member.size:,} bytes, too big for a label")
                sample[ext.lower()] = read_member(tar, member, path.name)
            if sample:
                yield _sample_item(path.name, key, sample, classes, next_id)
                next_id += 1
        base += size
    yield Cursor(END, next_id)


def _split_key(name: str) -> tuple[str, str]:
    """``dir/KEY.ext.more`` -> (``dir/KEY``, ``ext.more``): as webdataset, the key ends at the base name's first dot."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _sample_item(shard: str, key: str, sample: dict[str, bytes], classes: Sequence[SynsetClass], id_: int) -> Item:
    where = f"{shard}: sample {key!r}"
    image_ext = next((ext for ext in SAMPLE_IMAGE if ext in sample), None)
    if image_ext is None or "cls" not in sample:
        missing = "image (.jpg)" if image_ext is None else "label (.cls)"
        raise ArchiveError(f"{where} lacks its {missing}; the shard is damaged or not an ImageNet WebDataset copy. "
                           "Fetch it again or check the table")  # fmt: skip
    try:
        label = int(sample["cls"].strip())
    except ValueError:
        raise ArchiveError(f"{where}: .cls holds {sample['cls'][:20]!r}, not a class number") from None
    if not 0 <= label < len(classes):
        raise ArchiveError(f"{where}: label {label} is outside the {len(classes)} classes of the bundled table")
    name = f"{PurePosixPath(key).name}.{image_ext}"
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArchiveError(f"{where}: .json is not JSON") from None
        given = meta.get("label") if isinstance(meta, dict) else None
        if isinstance(given, int) and not isinstance(given, bool) and given != label:  # a number must agree
            raise ArchiveError(f"{where}: .json says label {given} but .cls says {label}")
        filename = meta.get("filename") if isinstance(meta, dict) else None
        if isinstance(filename, str) and SAFE_BASENAME.match(PurePosixPath(filename).name):
            name = PurePosixPath(filename).name
    wnid = classes[label].wnid
    return Item(id_, label, f"{wnid}/{name}", sample[image_ext])
