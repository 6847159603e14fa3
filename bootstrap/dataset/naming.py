"""Naming rules of ImageNet-style archives: which member is a class tar, which line of the ground truth a file is."""

from __future__ import annotations

import re

_VAL_NUMBER = re.compile(r"_(\d+)\.[A-Za-z]+$")


def wnid_of_class_tar(name: str) -> str | None:
    """``n01440764.tar`` -> ``n01440764``; ``None`` for anything else."""
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext == "tar" and re.fullmatch(r"n\d{8}", stem) else None


def val_position(name: str) -> int | None:
    """``ILSVRC2012_val_00000042.JPEG`` -> 41 (its line in the ground truth), else ``None``."""
    match = _VAL_NUMBER.search(name)
    return int(match.group(1)) - 1 if match else None
