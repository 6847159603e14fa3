"""The class-folder tree output: ``<root>/<split>/<wnid>/<name>`` for every packed image, as stored in its record.

Next to the split folders go what ``torchvision.datasets.ImageNet(root, split)``
needs to load them without the original archives: the devkit archive and
``meta.bin``.  torchvision builds ``meta.bin`` from the devkit with scipy and
``torch.save`` the first time, which fails on a read-only volume; writing it
here means the published volume is ready as it is.  It is written in
``torch.save``'s legacy (pre-zip) format, which is a sequence of plain pickles,
so the download instance needs no PyTorch; ``torch.load`` (weights_only too)
reads it.
"""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

from bootstrap.common.errors import ArchiveError
from bootstrap.common.state import atomic_write_bytes
from bootstrap.dataset.devkit import Devkit
from bootstrap.dataset.safetar import SAFE_BASENAME
from bootstrap.dataset.streams import Item

META_FILE = "meta.bin"
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001


class TreeWriter:
    """Writes each image under its class folder; a name that could leave the folder is refused."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, item: Item) -> None:
        path = tree_path(self.root, item.relpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(item.data)


def tree_path(root: Path, relpath: str) -> Path:
    """``root/<wnid>/<name>`` for a record's ``wnid/name``, refusing anything that is not two plain names."""
    wnid, _, base = relpath.partition("/")
    if not SAFE_BASENAME.match(base) or not SAFE_BASENAME.match(wnid):
        raise ArchiveError(f"refusing to write {relpath!r} into the class tree")
    return root / wnid / base


def torch_legacy_bytes(obj: object) -> bytes:
    """``obj`` as ``torch.save(obj, f, _use_new_zipfile_serialization=False)`` writes it (no tensors in it)."""
    sys_info = {"protocol_version": _TORCH_PROTOCOL, "little_endian": sys.byteorder == "little",
                "type_sizes": {"short": 2, "int": 4, "long": 4}}  # fmt: skip
    storage_keys: list[str] = []  # no tensors, so no storages after the object
    parts: tuple[object, ...] = (_TORCH_MAGIC, _TORCH_PROTOCOL, sys_info, obj, storage_keys)
    return b"".join(pickle.dumps(p, protocol=2) for p in parts)


def imagenet_meta(devkit: Devkit) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """What torchvision's ``parse_devkit_archive`` saves: each WNID's class names, and the WNID of each val image."""
    return {c.wnid: tuple(c.words.split(", ")) for c in devkit.classes}, list(devkit.val_wnids)


def write_tree_meta(root: Path, devkit: Devkit, devkit_archive: Path | None) -> list[Path]:
    """``meta.bin`` and a copy of the devkit archive in ``root``; returns their paths.

    From the hub's shards there is no devkit archive, and ``meta.bin`` lists no validation WNIDs: torchvision's
    ``ImageNet`` reads only the class names from it once ``meta.bin`` and the split folders exist."""
    root.mkdir(parents=True, exist_ok=True)
    meta = root / META_FILE
    atomic_write_bytes(meta, torch_legacy_bytes(imagenet_meta(devkit)))
    if devkit_archive is None:
        return [meta]
    copy, partial = root / devkit_archive.name, root / f".{devkit_archive.name}.tmp"
    shutil.copyfile(devkit_archive, partial)  # 2.5 MB for ImageNet
    partial.replace(copy)
    return [meta, copy]
