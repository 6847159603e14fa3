"""``python -m bootstrap read-check``: read every record of the mounted dataset back, as training would.

This is what the smoke test runs on a fleet instance (through SSM Run
Command) to prove that the restored volume holds what the download instance
packed: for each split, every record is read in file order with
``bootstrap.readers`` (the project's reader, no mxnet), its label checked
against ``synsets.txt``, and the count checked against the ``.idx`` and the
``.lst``.  Needs nothing but the standard library, like the other commands of
a GPU instance.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bootstrap.common.errors import BootstrapError, ConfigError
from bootstrap.readers import RecordIOStream, split_files

SPLITS = ("train", "val")


class DatasetMismatchError(BootstrapError):
    """The records on the volume disagree with their own index, list or classes."""


def _lines(paths: list[Path]) -> int:
    return sum(1 for path in paths for line in path.read_text().splitlines() if line.strip())


def check_split(recordio: Path, split: str, classes: int) -> dict[str, Any]:
    found = split_files(recordio, split)
    if found is None:
        raise ConfigError(f"{recordio} has no {split}.rec (nor parts): is the dataset mounted (python -m bootstrap "
                          "attach)?")  # fmt: skip
    recs, idx, lsts = found
    stream = RecordIOStream(recs, idx)
    labels: Counter[int] = Counter()
    size = 0
    for image, label in stream:
        labels[label] += 1
        size += len(image)
    records = sum(labels.values())
    problems = []
    if records != len(stream):
        problems.append(f"{records} records read, but {idx.name} lists {len(stream)}")
    if records != _lines(lsts):
        problems.append(f"{records} records read, but the .lst lists {_lines(lsts)}")
    outside = sorted(label for label in labels if not 0 <= label < classes)
    if outside:
        problems.append(f"labels {outside[:5]} are outside 0-{classes - 1} (synsets.txt has {classes} classes)")
    if problems:
        raise DatasetMismatchError(f"{split}: " + "; ".join(problems))
    return {"records": records, "classes": len(labels), "bytes": size}


def read_check(recordio: Path) -> dict[str, Any]:
    """Every split's records read back: ``{"splits": {split: {records, classes, bytes}}, "classes": N}``."""
    synsets = recordio / "synsets.txt"
    if not synsets.exists():
        raise ConfigError(f"{synsets} is missing: is the dataset mounted (python -m bootstrap attach)?")
    classes = sum(1 for line in synsets.read_text().splitlines() if line.strip())
    splits = {split: check_split(recordio, split, classes) for split in SPLITS if split_files(recordio, split)}
    if not splits:
        raise ConfigError(f"{recordio} holds no RecordIO: is the dataset mounted (python -m bootstrap attach)?")
    return {"recordio": str(recordio), "classes": classes, "splits": splits}
