"""Read the ILSVRC2012 devkit: the 1000 leaf synsets and the validation labels.

Labels are the index in sorted WNID order (0 = n01440764), the same as
``im2rec --recursive`` and torchvision's ImageFolder; the devkit's own
ILSVRC2012_ID order is used only to read the validation ground truth.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bootstrap.common.errors import ArchiveError

WNID = re.compile(r"^n\d{8}$")
META_SUFFIX = "data/meta.mat"
GROUND_TRUTH_SUFFIX = "data/ILSVRC2012_validation_ground_truth.txt"


@dataclass(frozen=True)
class SynsetClass:
    label: int
    wnid: str
    words: str
    ilsvrc_id: int | None = None
    """The devkit's own ILSVRC2012_ID; None for the bundled table (the hub's shards carry their labels)."""


@dataclass(frozen=True)
class Devkit:
    classes: list[SynsetClass]
    val_wnids: list[str]
    """``val_wnids[i]`` is the class of ``ILSVRC2012_val_{i + 1:08d}.JPEG``."""

    def by_wnid(self) -> dict[str, SynsetClass]:
        return {c.wnid: c for c in self.classes}


def _read_members(path: Path) -> dict[str, bytes]:
    wanted: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                for suffix in (META_SUFFIX, GROUND_TRUTH_SUFFIX):
                    if member.name.endswith(suffix) and member.isreg() and member.size < (64 << 20):
                        reader = tar.extractfile(member)
                        assert reader is not None
                        wanted[suffix] = reader.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(f"{path.name}: cannot read the devkit archive ({e}); fetch it again") from None
    for suffix in (META_SUFFIX, GROUND_TRUTH_SUFFIX):
        if suffix not in wanted:
            raise ArchiveError(f"{path.name}: no {suffix} inside; is this the ILSVRC2012 devkit (t12)?")
    return wanted


def parse_meta(meta_mat: bytes, source: str = "meta.mat") -> list[SynsetClass]:
    """The leaf synsets (``num_children == 0``) in sorted WNID order."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
    except Exception as e:  # scipy raises several types for a bad .mat
        raise ArchiveError(f"{source}: not a readable MATLAB file with 'synsets' ({e})") from None
    leaves = []
    for row in synsets:
        if int(row["num_children"]) != 0:
            continue
        wnid = str(row["WNID"])
        if not WNID.match(wnid):
            raise ArchiveError(f"{source}: leaf synset has malformed WNID {wnid!r}")
        leaves.append((wnid, str(row["words"]), int(row["ILSVRC2012_ID"])))
    if len({w for w, _, _ in leaves}) != len(leaves):
        raise ArchiveError(f"{source}: the same WNID appears twice among the leaf synsets")
    leaves.sort()
    return [SynsetClass(label, wnid, words, id_) for label, (wnid, words, id_) in enumerate(leaves)]


def parse_ground_truth(text: bytes, classes: list[SynsetClass], source: str = "ground truth") -> list[str]:
    by_id = {c.ilsvrc_id: c.wnid for c in classes}
    wnids = []
    for number, line in enumerate(text.decode("ascii", "replace").split(), 1):
        if not line.isdigit() or int(line) not in by_id:
            raise ArchiveError(f"{source}: line {number} holds {line!r}, which is not a leaf ILSVRC2012_ID")
        wnids.append(by_id[int(line)])
    return wnids


BUNDLED_CLASSES = Path(__file__).with_name("ilsvrc2012_classes.tsv")
"""ILSVRC2012's 1000 classes in sorted-WNID order with the devkit's words: the labels of the hub's shards.
Taken from timm's ``imagenet_synsets.txt`` + ``imagenet_synset_to_lemma.txt``, and checked equal, line by line, to
a copy of ``LOC_synset_mapping.txt``, the class list of ImageNet's object localisation challenge."""


def bundled_classes(path: Path = BUNDLED_CLASSES) -> list[SynsetClass]:
    classes = []
    for label, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        wnid, _, words = line.partition("\t")
        if not WNID.match(wnid) or not words:
            raise ArchiveError(f"{path}:{label + 1}: expected 'nXXXXXXXX<TAB>words', got {line!r}")
        classes.append(SynsetClass(label, wnid, words))
    if [c.wnid for c in classes] != sorted(c.wnid for c in classes):
        raise ArchiveError(f"{path}: the WNIDs are not in sorted order, so the labels would be wrong")
    return classes


def read_devkit(path: Path) -> Devkit:
    members = _read_members(path)
    classes = parse_meta(members[META_SUFFIX], f"{path.name}:{META_SUFFIX}")
    val = parse_ground_truth(members[GROUND_TRUTH_SUFFIX], classes, f"{path.name}:{GROUND_TRUTH_SUFFIX}")
    return Devkit(classes, val)
