"""The dataset's files, pinned by name, size and checksum in one table.

The built-in table is ILSVRC2012.  Another dataset in the same layout (a train
tar of per-class tars, a flat val tar, a devkit) is described by a JSON file:

    {"name": "my-set",
     "archives": {"train":  {"name": "x_train.tar", "size": 123, "md5": "..."},
                  "val":    {"name": "x_val.tar",   "size": 45,  "md5": "..."},
                  "devkit": {"name": "x_devkit.tar.gz", "md5": "..."}},
     "counts": {"train": 1000, "val": 50, "classes": 10}}

ImageNet as WebDataset shards on the Hugging Face hub (``timm/imagenet-1k-wds``)
is the other layout: each split is a list of shards pinned by SHA-256, as the
hub's file metadata gives them at one commit (``python -m scripts hub-table``
writes the table), and the classes are ILSVRC2012's, from the bundled table:

    {"name": "timm/imagenet-1k-wds", "layout": "webdataset", "revision": "<commit>",
     "shards": {"train": [{"name": "imagenet1k-train-0000.tar", "size": 1, "sha256": "..."}, ...],
                "val":   [...]},
     "counts": {"train": 1281167, "val": 50000, "classes": 1000}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ConfigError
from bootstrap.common.state import read_json_file

ROLES = ("train", "val", "devkit")
SHARD_SPLITS = ("train", "val")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_SCHEME = "hf://"


@dataclass(frozen=True)
class ArchiveSpec:
    role: str
    name: str
    md5: str | None
    size: int | None = None
    sha256: str | None = None

    @property
    def digest(self) -> tuple[str, str]:
        """``(algorithm, hex digest)`` the file must match: its SHA-256 where pinned, else its MD5."""
        if self.sha256:
            return "sha256", self.sha256
        assert self.md5, f"{self.name}: a table entry pins an md5 or a sha256"
        return "md5", self.md5


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    archives: dict[str, ArchiveSpec]
    train_images: int | None
    val_images: int | None
    classes: int | None
    shards: dict[str, tuple[ArchiveSpec, ...]] = field(default_factory=dict)
    """Per split, its WebDataset shards in order (the hub layout); empty for ILSVRC2012's layout."""
    revision: str | None = None
    """The hub commit the shards were pinned at."""

    def archive(self, role: str) -> ArchiveSpec:
        return self.archives[role]

    @property
    def sharded(self) -> bool:
        return bool(self.shards)

    def files(self) -> list[ArchiveSpec]:
        """Every file to download, in the order pack reads them: the devkit, then val, then train."""
        if self.sharded:
            return [*self.shards["val"], *self.shards["train"]]
        return sorted(self.archives.values(), key=lambda a: a.size or 0)  # smallest first: a bad source fails fast

    def split_files(self, split: str) -> list[ArchiveSpec]:
        """The files ``split``'s images come from."""
        return list(self.shards[split]) if self.sharded else [self.archives[split]]


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


def hub_repo(spec: str) -> str:
    """``owner/name`` from a hub source's spelling, ``hf://owner/name``."""
    repo = spec[len(HUB_SCHEME) :].strip("/") if spec.startswith(HUB_SCHEME) else ""
    if not _REPO.match(repo):
        raise ConfigError(f"source {spec!r}: a hub source is hf://owner/name, e.g. hf://timm/imagenet-1k-wds")
    return repo


def _file_from_json(role: str, raw: Any, at: str, digest: str) -> ArchiveSpec:
    """One file's entry at ``at``: a plain name, its ``digest`` (md5 or sha256) and its size (a shard's is required)."""
    pattern, digits = (_MD5, 32) if digest == "md5" else (_SHA256, 64)
    if not isinstance(raw, dict):
        size_kind = "optional size" if digest == "md5" else "size"
        raise ConfigError(f"{at} must be an object with name, {digest} and {size_kind}")
    name, value, size = raw.get("name"), str(raw.get(digest, "")).lower(), raw.get("size")
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ConfigError(f"{at}.name must be a plain file name, got {name!r}")
    if not pattern.match(value):
        raise ConfigError(f"{at}.{digest} must be {digits} hex digits, got {value!r}")
    if (size is not None or digest == "sha256") and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ConfigError(f"{at}.size must be a positive integer, got {size!r}")
    if digest == "md5":
        return ArchiveSpec(role, name, value, size)
    return ArchiveSpec(role, name, None, size, value)


def _shards_from_json(raw: dict[str, Any], where: str) -> tuple[dict[str, tuple[ArchiveSpec, ...]], str]:
    shards, revision = raw.get("shards"), raw.get("revision")
    if not isinstance(revision, str) or not _COMMIT.match(revision):
        raise ConfigError(f"{where}: revision must be the 40-hex commit the shards were listed at, got {revision!r}; "
                          "python -m scripts hub-table writes it")  # fmt: skip
    if not isinstance(shards, dict) or any(not isinstance(shards.get(s), list) or not shards[s] for s in SHARD_SPLITS):
        raise ConfigError(f"{where}: shards must hold a non-empty list for each of {', '.join(SHARD_SPLITS)}")
    out = {split: tuple(_file_from_json(split, entry, f"{where}: shards.{split}[{i}]", "sha256")
                        for i, entry in enumerate(shards[split])) for split in SHARD_SPLITS}  # fmt: skip
    names = [spec.name for specs in out.values() for spec in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a shard is listed twice")
    return out, revision


def dataset_from_dict(raw: Any, where: str = "dataset table") -> DatasetSpec:
    if isinstance(raw, dict) and raw.get("layout") == "webdataset":
        shards, revision = _shards_from_json(raw, where)
        name = str(raw.get("name", ""))
        if not _REPO.match(name):
            raise ConfigError(f"{where}: name must be the hub repository (owner/name), got {name!r}")
        archives: dict[str, ArchiveSpec] = {}
    elif not isinstance(raw, dict) or not isinstance(raw.get("archives"), dict):
        raise ConfigError(f"{where}: expected an object with 'name', 'archives' and 'counts' "
                          "(or a hub table: 'layout': 'webdataset' with 'shards')")  # fmt: skip
    else:
        missing = [r for r in ROLES if r not in raw["archives"]]
        if missing:
            raise ConfigError(f"{where}: archives lacks {', '.join(missing)}; all of {', '.join(ROLES)} are needed")
        archives = {role: _file_from_json(role, raw["archives"][role], f"{where}: archives.{role}", "md5")
                    for role in ROLES}  # fmt: skip
        shards, revision, name = {}, None, str(raw.get("name", "custom"))
    counts = raw.get("counts", {})
    if not isinstance(counts, dict):
        raise ConfigError(f"{where}: counts must be an object like {{\"train\": 1281167, \"val\": 50000, "
                          f"\"classes\": 1000}}, got {counts!r}")  # fmt: skip

    def count(key: str) -> int | None:
        value = counts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{where}: counts.{key} must be a positive integer, got {value!r}")
        return value

    return DatasetSpec(name, archives, count("train"), count("val"), count("classes"), shards, revision)


def dataset_to_dict(spec: DatasetSpec) -> dict[str, Any]:
    counts = {"train": spec.train_images, "val": spec.val_images, "classes": spec.classes}
    if spec.sharded:
        shards = {s: [{"name": a.name, "size": a.size, "sha256": a.sha256} for a in files]
                  for s, files in spec.shards.items()}  # fmt: skip
        return {"name": spec.name, "layout": "webdataset", "revision": spec.revision, "shards": shards,
                "counts": counts}  # fmt: skip
    return {
        "name": spec.name,
        "archives": {
            r: {"name": a.name, "md5": a.md5, **({"size": a.size} if a.size else {})} for r, a in spec.archives.items()
        },
        "counts": counts,
    }


def load_dataset(table: Path | None) -> DatasetSpec:
    """The built-in ILSVRC2012 table, or the one in ``table``."""
    if table is None:
        return ILSVRC2012
    return dataset_from_dict(read_json_file(table, "dataset table"), str(table))
