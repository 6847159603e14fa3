"""Every path and marker name on the data volume, in one place.

    /data/                          DataLayout.root
      archives/                     the downloaded archives, exactly as published
        .NAME.part, .NAME.part.json a download in progress and its finished ranges
        .state/fetch-NAME.done      an archive's verified size and MD5
      recordio/                     what training reads: .rec/.idx/.lst, synsets.txt, failures, contact sheets
      webdataset/                   the WebDataset shards (formats webdataset): SPLIT-NNNNNN.tar, SPLIT.shards.json
      imagenet/train|val/WNID/      the class tree (formats tree), with meta.bin and the devkit for torchvision
      .state/                       stage markers (NAME.done), classes.json, snapshot.json, backup journal,
                                    manifest.json, the dataset volume's record and copy journal
        pack-SPLIT/                 a split being packed: checkpoint, scatter buckets, outputs in the making
      status.json                   the live status the operator and SSM see
      timeline.png                  the run's stages over time (from .state/status-history.jsonl)

Nothing else on the volume is named anywhere else: stages ask this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("fetch", "organise", "pack", "verify", "inspect", "backup", "snapshot", "publish")
"""The stages of a run, in order; each marks itself done in ``.state/NAME.done``."""
MANIFEST = "manifest.json"
"""The backup's manifest, last object written under the backup prefix."""
TRAINING_DIRS = ("recordio", "webdataset", "imagenet")
"""What training reads, one folder per format; the dataset volume holds those that were packed."""
BACKED_UP_DIRS = ("archives", *TRAINING_DIRS)
BACKED_UP_STATE = ("classes.json",)
"""Besides the ``.done`` markers: the state a restore needs to skip finished stages."""


def fetch_marker(archive_name: str) -> str:
    return f"fetch-{archive_name}"


def pack_marker(split: str) -> str:
    return f"pack-{split}"


@dataclass(frozen=True)
class ArchiveDir:
    """The archives folder: finished files, downloads in progress, and their markers."""

    root: Path

    def final(self, name: str) -> Path:
        return self.root / name

    def partial(self, name: str) -> Path:
        return self.root / f".{name}.part"

    def partial_state(self, name: str) -> Path:
        return self.root / f".{name}.part.json"

    @property
    def markers(self) -> Path:
        return self.root / ".state"


@dataclass(frozen=True)
class PackWorkDir:
    """One split's work directory while it is being packed; removed once the split is done."""

    root: Path
    split: str

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.json"

    @property
    def buckets(self) -> Path:
        return self.root / "buckets"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def failures(self) -> Path:
        return self.root / failures_name(self.split)


def bucket_file(directory: Path, index: int) -> Path:
    """One scatter bucket of a shuffled split."""
    return directory / f"bucket-{index:05d}.bin"


def failures_name(split: str) -> str:
    """``failures_<split>.tsv``: the images of a split that could not be packed, with reasons."""
    return f"failures_{split}.tsv"


@dataclass(frozen=True)
class DataLayout:
    """Where everything lives on the data volume."""

    root: Path

    @property
    def archives(self) -> Path:
        return self.root / "archives"

    @property
    def archive_dir(self) -> ArchiveDir:
        return ArchiveDir(self.archives)

    @property
    def recordio(self) -> Path:
        return self.root / "recordio"

    @property
    def synsets(self) -> Path:
        return self.recordio / "synsets.txt"

    def contact_sheet(self, split: str) -> Path:
        return self.recordio / f"contact_sheet_{split}.png"

    @property
    def webdataset(self) -> Path:
        return self.root / "webdataset"

    @property
    def tree(self) -> Path:
        return self.root / "imagenet"

    @property
    def state(self) -> Path:
        return self.root / ".state"

    @property
    def classes(self) -> Path:
        return self.state / "classes.json"

    @property
    def snapshot_record(self) -> Path:
        return self.state / "snapshot.json"

    @property
    def backup_journal(self) -> Path:
        return self.state / "backup.jsonl"

    @property
    def local_manifest(self) -> Path:
        """The backup manifest as written to S3 (the published volume's files are checked against it)."""
        return self.state / MANIFEST

    @property
    def publish_record(self) -> Path:
        """The dataset volume being published: its client token, id, filesystem, snapshot."""
        return self.state / "publish-volume.json"

    @property
    def publish_journal(self) -> Path:
        """One line per file copied to the dataset volume and verified."""
        return self.state / "publish-copied.jsonl"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def status_history(self) -> Path:
        """Every status update that names a stage, a JSON line each: the timeline's data."""
        return self.state / "status-history.jsonl"

    @property
    def timeline(self) -> Path:
        """The run's stages over time, drawn at the end of ``run``."""
        return self.root / "timeline.png"

    @property
    def reserve(self) -> Path:
        """A little space kept aside, given up when the disk fills so the status can still say why."""
        return self.state / ".reserve"

    def work(self, split: str) -> Path:
        return self.state / pack_marker(split)

    def pack_work(self, split: str) -> PackWorkDir:
        return PackWorkDir(self.work(split), split)


def backed_up(relpath: str) -> bool:
    """What a restore needs: archives, RecordIO and its lists, the class tree, done-markers and the class table."""
    parts = relpath.split("/")
    if parts[0] == ".state":
        return len(parts) == 2 and (parts[1].endswith(".done") or parts[1] in BACKED_UP_STATE)
    if any(p.startswith(".") for p in parts):  # partial downloads, work files, fetch markers
        return False
    return parts[0] in BACKED_UP_DIRS
