"""The engine's stages, each resumable and skipped once its marker says done.

    fetch     archives from the source, size + MD5 verified
    organise  devkit -> classes in sorted-WNID order, val labels, synsets.txt,
              counts checked against the dataset table
    pack      one pass over each image archive -> .rec/.idx/.lst (+ the class
              tree with keep_tree), failures listed with reasons
    verify    every record re-read, offsets and labels checked, a sample decoded
    inspect   a contact-sheet PNG per split

The organising of images into classes happens inside pack's single archive
pass: reading the 140 GB train archive twice (once to sort, once to pack)
would double the slowest part of the job on an sc1 disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bootstrap.common import aws
from bootstrap.common.errors import ArchiveError, BootstrapError, ConfigError
from bootstrap.common.imds import Imds
from bootstrap.common.progress import StatusFile
from bootstrap.common.state import Markers, atomic_write_bytes, atomic_write_json, read_json
from bootstrap.dataset.archives import DatasetSpec, load_dataset
from bootstrap.dataset.devkit import Devkit, SynsetClass, read_devkit
from bootstrap.dataset.safetar import SAFE_BASENAME
from bootstrap.dataset.streams import Item, StreamFactory, train_stream, val_stream
from bootstrap.fetch.download import fetch_all
from bootstrap.fetch.sources import open_source, resolve_credentials
from bootstrap.instance.backup import Backup, BackupError
from bootstrap.instance.snapshot import SnapshotRequest, find_data_volume, publish, take_snapshot
from bootstrap.instance.status_publisher import StatusPublisher
from bootstrap.instance.volume import mount_data_volume
from bootstrap.layout import MANIFEST, pack_marker
from bootstrap.pack.contact_sheet import contact_sheet
from bootstrap.pack.packer import PackReport, pack_split
from bootstrap.pack.plan import part_names
from bootstrap.pack.verify import verify_split
from bootstrap.settings import PrepConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
SPLITS = ("val", "train")


class Engine:
    """Runs stages against one data directory and configuration."""

    def __init__(self, config: PrepConfig) -> None:
        self.config = config
        self.paths = config.paths
        self.dataset: DatasetSpec = load_dataset(config.dataset_table)
        self.markers = Markers(self.paths.state)
        self.status = StatusFile(self.paths.status)

    def archive(self, role: str) -> Path:
        return self.paths.archives / self.dataset.archive(role).name

    def _stage(self, name: str, body: Callable[[], T]) -> T:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.status.update(stage=name, state="running", last_error=None)
        try:
            result = body()
        except BootstrapError as e:
            self.status.update(stage=name, state="failed", last_error=str(e))
            raise
        self.status.update(stage=name, state="done")
        return result

    # -- the data volume -------------------------------------------------------------

    def mount_data(self) -> dict[str, Any]:
        """Format (only if blank) and mount the data volume at data_dir; idempotent, run at every boot."""
        volume_id = self.config.data_volume_id
        if not volume_id:
            raise ConfigError("no data_volume_id configured: set it to the EBS volume to mount at data_dir")
        device = mount_data_volume(volume_id, self.config.data_device, self.paths.root,
                                   roots=self.config.device_roots(), fstab=self.config.fstab)  # fmt: skip
        return {"volume_id": volume_id, "device": str(device), "mount_point": str(self.paths.root)}

    # -- fetch ----------------------------------------------------------------------

    def fetch(self) -> None:
        def body() -> None:
            if not self.config.source:
                raise ConfigError("no source configured: set 'source' (https:// URL, s3:// prefix or directory)")
            credentials = resolve_credentials(self.config.source_secret)
            source = open_source(self.config.source, credentials)
            fetch_all(source, self.dataset, self.paths.archives, self.config.fetch_options(), status=self.status)
            self.markers.mark("fetch", {a.role: a.md5 for a in self.dataset.archives.values()})

        self._stage("fetch", body)

    # -- organise -------------------------------------------------------------------

    def organise(self) -> Devkit:
        def body() -> Devkit:
            saved = read_json(self.paths.classes)
            if self.markers.is_done("organise") and saved:
                return Devkit([SynsetClass(**c) for c in saved["classes"]], saved["val_wnids"])
            self._require_archive("devkit")
            devkit = read_devkit(self.archive("devkit"))
            expected_classes, expected_val = self.dataset.classes, self.dataset.val_images
            if expected_classes is not None and len(devkit.classes) != expected_classes:
                raise ArchiveError(
                    f"the devkit lists {len(devkit.classes)} leaf classes but the dataset table promises "
                    f"{expected_classes}; the devkit or the table is wrong"
                )
            if expected_val is not None and len(devkit.val_wnids) != expected_val:
                raise ArchiveError(
                    f"the devkit's ground truth has {len(devkit.val_wnids)} lines but the dataset table "
                    f"promises {expected_val} validation images"
                )
            synsets = "".join(f"{c.wnid}\t{c.label}\t{c.words}\n" for c in devkit.classes)
            atomic_write_bytes(self.paths.synsets, synsets.encode())
            atomic_write_json(
                self.paths.classes,
                {"classes": [dataclasses.asdict(c) for c in devkit.classes], "val_wnids": devkit.val_wnids},
            )
            self.markers.mark("organise", {"classes": len(devkit.classes), "val": len(devkit.val_wnids)})
            log.info("organise: %d classes, %d validation labels", len(devkit.classes), len(devkit.val_wnids))
            return devkit

        return self._stage("organise", body)

    def _require_archive(self, role: str) -> None:
        if not self.archive(role).exists():
            raise ArchiveError(f"{self.archive(role)} is missing: run the fetch stage first")

    # -- pack -----------------------------------------------------------------------

    def _tree_writer(self, split: str) -> Callable[[Item], None]:
        root = self.paths.tree / split

        def write(item: Item) -> None:
            wnid, _, base = item.relpath.partition("/")
            if not SAFE_BASENAME.match(base) or not SAFE_BASENAME.match(wnid):
                raise ArchiveError(f"refusing to write {item.relpath!r} into the class tree")
            folder = root / wnid
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / base, "wb") as f:
                f.write(item.data)

        return write

    def pack(self) -> dict[str, PackReport]:
        def body() -> dict[str, PackReport]:
            devkit = self.organise()
            classes = devkit.by_wnid()
            max_image = self.config.max_image_mib << 20
            reports = {}
            for split in SPLITS:
                self._require_archive(split)
                path = self.archive(split)
                if split == "train":
                    stream: StreamFactory = partial(train_stream, path, classes, max_image)
                    expected = self.dataset.train_images
                else:
                    stream = partial(val_stream, path, classes, devkit.val_wnids, max_image)
                    expected = self.dataset.val_images
                reports[split] = pack_split(
                    split,
                    stream,
                    estimated_bytes=os.path.getsize(path),
                    expected=expected,
                    out_dir=self.paths.recordio,
                    work=self.paths.pack_work(split),
                    opts=self.config.pack_options(split),
                    markers=self.markers,
                    status=self.status,
                    on_image=self._tree_writer(split) if self.config.keep_tree else None,
                )
            return reports

        return self._stage("pack", body)

    # -- verify and inspect ----------------------------------------------------------

    def _report(self, split: str) -> PackReport:
        info = self.markers.info(pack_marker(split))
        if info is None:
            raise BootstrapError(f"{split} is not packed yet: run the pack stage first")
        return PackReport(**info)

    def verify(self) -> None:
        def body() -> None:
            classes = len(self.organise().classes)
            for split in SPLITS:
                report = self._report(split)
                verify_split(
                    self.paths.recordio,
                    split,
                    parts=self.config.parts,
                    classes=classes,
                    expected=report.packed,
                    sample_every=self.config.sample_every,
                    status=self.status,
                )
            self.markers.mark("verify")

        self._stage("verify", body)

    def inspect(self) -> list[Path]:
        def body() -> list[Path]:
            names = [c.words.split(",")[0] for c in self.organise().classes]
            sheets = []
            for split in SPLITS:
                self._report(split)
                first = part_names(split, self.config.parts)[0]
                out = self.paths.contact_sheet(split)
                shown = contact_sheet(self.paths.recordio / first.rec, self.paths.recordio / first.idx, names, out)
                log.info("inspect: %s shows %d random %s records with their class names", out, shown, split)
                sheets.append(out)
            return sheets

        return self._stage("inspect", body)

    # -- on the instance: backup, snapshot, publish ------------------------------------

    def _region(self) -> str | None:
        return self.config.region

    def backup(self, verify_only: bool = False) -> dict[str, Any]:
        """Sync the data directory to S3 (incremental), or with ``verify_only`` compare S3 with the manifest."""

        def body() -> dict[str, Any]:
            opts = self.config.backup_options()
            job = Backup(self.paths.root, aws.client("s3", region=self._region()), opts, self.status)
            if verify_only:
                problems = job.verify()
                if problems:
                    shown = "\n  ".join(problems[:20])
                    raise BackupError(f"the backup does not match its manifest ({len(problems)} differences):\n  "
                                      f"{shown}\nrun the backup stage again to repair it")  # fmt: skip
                log.info("backup verified: every file in the manifest is in S3 as uploaded")
                return {"verified": True}
            manifest = job.run()
            info = {
                "manifest": f"s3://{opts.bucket}/{opts.key(MANIFEST)}",
                "manifest_sha256": manifest["sha256"],
                "files": len(manifest["files"]),
                "bytes": manifest["total_bytes"],
            }
            self.markers.mark("backup", info)
            return info

        return self._stage("backup", body)

    def snapshot(self) -> dict[str, Any]:
        def body() -> dict[str, Any]:
            done = self.markers.info("snapshot")
            if done:
                log.info("snapshot: %s already completed", done["snapshot_id"])
                return dict(done)
            backup = self.markers.info("backup")
            if backup is None:
                raise BootstrapError("the data is not backed up yet: run the backup stage first")
            identity = Imds().identity()
            ec2 = aws.client("ec2", region=self._region() or identity.region)
            volume = find_data_volume(ec2, identity, self.paths.root, self.config.device_roots())
            request = SnapshotRequest(self.config.pipeline, self.dataset.name, backup["manifest_sha256"])
            snap = take_snapshot(ec2, identity, volume, request, mount_point=self.paths.root,
                                 state_path=self.paths.snapshot_record, status=self.status)  # fmt: skip
            info = {
                "snapshot_id": snap["SnapshotId"],
                "volume_id": volume.volume_id,
                "volume_size_gib": volume.size_gib,
                "region": identity.region,
                "source_instance_id": identity.instance_id,
                "started": str(snap.get("StartTime", "")),
            }
            self.markers.mark("snapshot", info)
            return info

        return self._stage("snapshot", body)

    def publish(self) -> dict[str, Any]:
        def body() -> dict[str, Any]:
            parameter = self.config.snapshot_parameter
            if not parameter:
                raise ConfigError("no snapshot_parameter configured: set it to publish the snapshot id")
            snap, backup = self.markers.info("snapshot"), self.markers.info("backup")
            if snap is None or backup is None:
                raise BootstrapError("nothing to publish yet: run the backup and snapshot stages first")
            info = {
                **snap,
                "pipeline": self.config.pipeline,
                "dataset": self.dataset.name,
                "images": {split: v["packed"] for split, v in self.summary()["splits"].items()},
                "manifest": backup["manifest"],
                "bytes": backup["bytes"],
                "published": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            publish(aws.client("ssm", region=snap["region"]), parameter, info)
            self.markers.mark("publish", info)
            log.info("publish: %s -> %s", info["snapshot_id"], parameter)
            return info

        return self._stage("publish", body)

    # -- everything ------------------------------------------------------------------

    def _status_publisher(self) -> AbstractContextManager[Any]:
        if not self.config.status_parameter:
            return nullcontext()
        ssm = aws.client("ssm", region=self._region())
        return StatusPublisher(self.paths.status, ssm, self.config.status_parameter, self.config.status_interval)

    def run(self) -> dict[str, Any]:
        """Every stage this configuration asks for, each skipped when already done."""
        if self.markers.is_done("run"):
            log.info("everything is already done (%s); nothing to do", self.markers.root / "run.done")
            return self.summary()
        with self._status_publisher():
            self.fetch()
            self.organise()
            self.pack()
            self.verify()
            self.inspect()
            if self.config.bucket:
                self.backup()
            if self.config.snapshot_parameter:
                self.snapshot()
                self.publish()
            summary = self.summary()
            self.markers.mark("run", summary)
            self.status.update(stage="run", state="done")
        return summary

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"data_dir": str(self.paths.root), "recordio": str(self.paths.recordio), "splits": {}}
        for stage in ("backup", "publish"):
            info = self.markers.info(stage)
            if info:
                out[stage] = info
        for split in SPLITS:
            info = self.markers.info(pack_marker(split))
            if info:
                out["splits"][split] = {
                    "packed": info["packed"],
                    "failed": info["failed"],
                    "files": info["outputs"],
                    "failures": str(self.paths.recordio / info["failures_file"]),
                }
        return out


def describe(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
