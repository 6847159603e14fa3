"""The dataset's archives, pinned by name, size and MD5 in one table.

The built-in table is ILSVRC2012.  Another dataset in the same layout (a train
tar of per-class tars, a flat val tar, a devkit) is described by a JSON file:

    {"name": "my-set",
     "archives": {"train":  {"name": "x_train.tar", "size": 123, "md5": "..."},
                  "val":    {"name": "x_val.tar",   "size": 45,  "md5": "..."},
                  "devkit": {"name": "x_devkit.tar.gz", "md5": "..."}},
     "counts": {"train": 1000, "val": 50, "classes": 10}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ConfigError
from bootstrap.common.state import read_json_file

ROLES = ("train", "val", "devkit")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ArchiveSpec:
    role: str
    name: str
    md5: str
    size: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    archives: dict[str, ArchiveSpec]
    train_images: int | None
    val_images: int | None
    classes: int | None

    def archive(self, role: str) -> ArchiveSpec:
        return self.archives[role]


ILSVRC2012 = DatasetSpec(
    name="ILSVRC2012",
    archives={
        "train": ArchiveSpec("train", "ILSVRC2012_img_train.tar", "1d675b47d978889d74fa0da5fadfb00e", 147_897_477_120),
        "val": ArchiveSpec("val", "ILSVRC2012_img_val.tar", "29b22e2961454d5413ddabcf34fc5622", 6_744_924_160),
        "devkit": ArchiveSpec("devkit", "ILSVRC2012_devkit_t12.tar.gz", "fa75699e90414af021442c21a62c3abf"),
    },
    train_images=1_281_167,
    val_images=50_000,
    classes=1000,
)


def _archive_from_json(role: str, raw: Any, where: str) -> ArchiveSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: archives.{role} must be an object with name, md5 and optional size")
    name, md5, size = raw.get("name"), str(raw.get("md5", "")).lower(), raw.get("size")
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ConfigError(f"{where}: archives.{role}.name must be a plain file name, got {name!r}")
    if not _MD5.match(md5):
        raise ConfigError(f"{where}: archives.{role}.md5 must be 32 hex digits, got {md5!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ConfigError(f"{where}: archives.{role}.size must be a positive integer, got {size!r}")
    return ArchiveSpec(role, name, md5, size)


def dataset_from_dict(raw: Any, where: str = "dataset table") -> DatasetSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("archives"), dict):
        raise ConfigError(f"{where}: expected an object with 'name', 'archives' and 'counts'")
    missing = [r for r in ROLES if r not in raw["archives"]]
    if missing:
        raise ConfigError(f"{where}: archives lacks {', '.join(missing)}; all of {', '.join(ROLES)} are needed")
    archives = {role: _archive_from_json(role, raw["archives"][role], where) for role in ROLES}
    counts = raw.get("counts", {})
    if not isinstance(counts, dict):
        raise ConfigError(f"{where}: counts must be an object like {{\"train\": 1281167, \"val\": 50000, "
                          f"\"classes\": 1000}}, got {counts!r}")  # fmt: skip

    def count(key: str) -> int | None:
        value = counts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{where}: counts.{key} must be a positive integer, got {value!r}")
        return value

    return DatasetSpec(str(raw.get("name", "custom")), archives, count("train"), count("val"), count("classes"))


def dataset_to_dict(spec: DatasetSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "archives": {
            r: {"name": a.name, "md5": a.md5, **({"size": a.size} if a.size else {})} for r, a in spec.archives.items()
        },
        "counts": {"train": spec.train_images, "val": spec.val_images, "classes": spec.classes},
    }


def load_dataset(table: Path | None) -> DatasetSpec:
    """The built-in ILSVRC2012 table, or the one in ``table``."""
    if table is None:
        return ILSVRC2012
    return dataset_from_dict(read_json_file(table, "dataset table"), str(table))
