"""Generate a dataset repository in the layout of the hub's ``timm/imagenet-1k-wds``, small.

- ``imagenet1k-train-NNNN.tar`` and ``imagenet1k-validation-NNNN.tar``: WebDataset shards, samples shuffled across
  them, each sample ``KEY.jpg`` + ``KEY.cls`` (the label in sorted-WNID order, as text) + ``KEY.json``
  (``{"filename", "label", "class_name"}``); keys like ``n01440764_10026`` for train, ``ILSVRC2012_val_00000001``
  for val, as the TFDS files the shards were made from are named;
- ``_info.json``: timm's split metadata (``splits.{train,validation}.{num_samples,filenames,shard_lengths}``);
- ``README.md``: the dataset card, served by the hub itself (not an LFS file).

Labels are real ILSVRC2012 labels (the first ``classes`` of the bundled table), images photo-like
(``scripts.synthetic_imagenet.photo``); the first train sample is an undecodable JPEG, which pack must list.
Deterministic for a seed.  ``python -m scripts.synthetic_hub OUT --train-shards 4 --per-shard 20``.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bootstrap.dataset.devkit import bundled_classes
from scripts.synthetic_imagenet import add_member, jpeg_bytes, photo

PREFIX = "imagenet1k"


@dataclass(frozen=True)
class HubSpec:
    classes: int = 8
    train_shards: int = 3
    val_shards: int = 2
    per_shard: int = 12
    seed: int = 2024


@dataclass
class HubRepo:
    root: Path
    labels: dict[str, list[int]] = field(default_factory=dict)
    """Per split, the label of every sample in shard order."""
    undecodable: list[str] = field(default_factory=list)
    """The ``wnid/filename`` of each sample whose image cannot be decoded."""

    def shards(self, split: str) -> list[Path]:
        kind = "validation" if split == "val" else split
        return sorted(self.root.glob(f"{PREFIX}-{kind}-*.tar"))


def pinned_table(train_shards: int, val_shards: int, *, shard_bytes: int, counts: dict[str, int]) -> dict[str, Any]:
    """A shard table of the hub's shape, with made-up digests and sizes: for what reads only its shape and sizes
    (the CDK app, plan), not for a download."""

    def shard(kind: str, i: int) -> dict[str, Any]:
        return {"name": f"{PREFIX}-{kind}-{i:04d}.tar", "size": shard_bytes, "sha256": f"{i:064x}"}

    shards = {"train": [shard("train", i) for i in range(train_shards)],
              "val": [shard("validation", i) for i in range(val_shards)]}  # fmt: skip
    return {"name": "timm/imagenet-1k-wds", "layout": "webdataset", "revision": "a" * 40, "shards": shards,
            "counts": {**counts, "classes": 1000}}  # fmt: skip


def generate(root: Path, spec: HubSpec = HubSpec()) -> HubRepo:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    classes = bundled_classes()[: spec.classes]
    repo, splits = HubRepo(root), {}
    for split, kind, count in (("train", "train", spec.train_shards), ("val", "validation", spec.val_shards)):
        labels: list[int] = []
        lengths, names = [], []
        for shard in range(count):
            name = f"{PREFIX}-{kind}-{shard:04d}.tar"
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(spec.per_shard):
                    label = int(rng.integers(len(classes)))
                    number = len(labels) + 1
                    key = f"{classes[label].wnid}_{number}" if split == "train" else f"ILSVRC2012_val_{number:08d}"
                    width, height = int(rng.integers(120, 260)), int(rng.integers(100, 200))
                    image = jpeg_bytes(photo(rng, width, height, hue=label * 20))
                    if split == "train" and shard == 0 and i == 0:
                        image = image[: len(image) // 3]  # cut short: undecodable
                        repo.undecodable.append(f"{classes[label].wnid}/{key}.JPEG")
                    meta = {"filename": f"{key}.JPEG", "label": label, "class_name": classes[label].words}
                    add_member(tar, f"{key}.jpg", image)
                    add_member(tar, f"{key}.cls", str(label).encode())
                    add_member(tar, f"{key}.json", json.dumps(meta).encode())
                    labels.append(label)
            (root / name).write_bytes(out.getvalue())
            lengths.append(spec.per_shard)
            names.append(name)
        repo.labels[split] = labels
        splits[kind] = {"name": kind, "num_samples": len(labels), "filenames": names, "shard_lengths": lengths}
    (root / "_info.json").write_text(json.dumps({"name": "imagenet-1k", "splits": splits}, indent=1))
    (root / "README.md").write_text("# imagenet-1k-wds (synthetic)\nA small stand-in in the hub's layout.\n")
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a small ImageNet WebDataset repository in the hub's layout.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=HubSpec.classes)
    parser.add_argument("--train-shards", type=int, default=HubSpec.train_shards)
    parser.add_argument("--val-shards", type=int, default=HubSpec.val_shards)
    parser.add_argument("--per-shard", type=int, default=HubSpec.per_shard)
    args = parser.parse_args()
    repo = generate(args.out, HubSpec(args.classes, args.train_shards, args.val_shards, args.per_shard))
    print(f"{args.out}: {len(repo.labels['train'])} train and {len(repo.labels['val'])} val samples")


if __name__ == "__main__":
    main()
