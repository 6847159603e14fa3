"""What each stage's output depends on: the settings it was made with, and a fingerprint of each output file.

A done marker vouches for its outputs only while both still hold.  Each stage
is bound to its own settings and, through the stages before it, to theirs:
pack's records depend on the image options and the seed, and also on the
dataset (its pinned table); the backup on its bucket and on everything packed.
A resume or re-run with other settings is refused with the differences and
the command that rebuilds from the first affected stage.  An output that no
longer matches its fingerprint (deleted, truncated, replaced) makes its stage
run again.

The fingerprint is cheap on purpose: size plus a SHA-256 of the first and last
64 KiB, so checking a 140 GB archive reads 128 KiB.  Full checksums live where
they are computed anyway (the archives' MD5, the backup manifest's SHA-256,
the records' CRCs, which verify checks).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bootstrap.dataset.archives import DatasetSpec, dataset_to_dict
from bootstrap.layout import STAGES
from bootstrap.settings import PrepConfig

PACK_SETTINGS = ("resize", "center_crop", "quality", "encoding", "color", "pass_through", "upscale", "seed",
                 "shuffle_train", "shuffle_val", "parts", "formats", "keep_tree", "shard_mib")  # fmt: skip
OWN_SETTINGS: dict[str, tuple[str, ...]] = {
    "fetch": (),
    "organise": (),
    "pack": PACK_SETTINGS,
    "verify": (),
    "inspect": (),
    "backup": ("bucket", "prefix", "storage_class", "large_storage_class", "sse", "kms_key_id"),
    "snapshot": ("dataset_snapshot", "pipeline"),
    "publish": ("snapshot_parameter",),
}
"""The settings that shape each stage's own output (the rest tune speed or checks, not what is made)."""
EDGE = 64 << 10


def dataset_digest(dataset: DatasetSpec) -> str:
    """What the archives are (names, sizes, MD5s, counts), whatever path the table was read from."""
    return hashlib.sha256(json.dumps(dataset_to_dict(dataset), sort_keys=True).encode()).hexdigest()[:16]


def bound_settings(config: PrepConfig, dataset: DatasetSpec, stage: str) -> dict[str, Any]:
    """Every setting ``stage``'s output depends on: its own and those of the stages before it."""
    upto = STAGES[: STAGES.index(stage) + 1]
    values: dict[str, Any] = {"dataset": dataset_digest(dataset)}
    for name in upto:
        values.update({key: _plain(getattr(config, key)) for key in OWN_SETTINGS[name]})
    return values


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def first_affected(changed: Mapping[str, list[str]]) -> str:
    """The earliest stage whose settings changed: rebuilding from there rebuilds everything affected."""
    return min(changed, key=STAGES.index)


def fingerprint(path: Path) -> list[Any]:
    """``[size, sha256 of the first and last 64 KiB]``."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(EDGE))
        if size > EDGE:
            f.seek(max(EDGE, size - EDGE))
            digest.update(f.read(EDGE))
    return [size, digest.hexdigest()[:16]]


def fingerprints(root: Path, paths: Iterable[Path]) -> dict[str, list[Any]]:
    return {p.relative_to(root).as_posix(): fingerprint(p) for p in paths}


def changed_outputs(root: Path, recorded: Mapping[str, Any] | None) -> list[str]:
    """Each recorded output that is missing or no longer has its fingerprint, as ``relpath: what``."""
    found = []
    for relpath, want in (recorded or {}).items():
        path = root / relpath
        if not path.is_file():
            found.append(f"{relpath}: missing")
            continue
        try:
            have = fingerprint(path)
        except OSError as e:
            found.append(f"{relpath}: unreadable ({os.strerror(e.errno or 0)})")
            continue
        if have != list(want):
            found.append(f"{relpath}: {have[0]:,} bytes, content changed" if have[0] == want[0]
                         else f"{relpath}: {have[0]:,} bytes, {want[0]:,} when it was made")  # fmt: skip
    return found
