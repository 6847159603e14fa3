"""Publish the packed data on a volume of its own size: what every GPU instance restores.

A volume created from a snapshot is at least the snapshot's source volume in
size, so a snapshot of the 1000 GiB work volume makes every GPU pay for 1000
GiB.  Instead the download instance:

1. creates a gp3 volume in its own AZ, sized to what is published (RecordIO,
   idx, lst, synsets, failures, contact sheets and the backup manifest;
   optionally the class tree) plus the filesystem's own needs, tagged as this
   pipeline's dataset volume and owned by this instance;
2. attaches it and sets DeleteOnTermination (``Ebs``: the GPU agent's order);
3. makes an ext4 for a few large files, mounts it, and copies every file with
   large sequential reads and writes, checking each against the SHA-256 the
   backup manifest holds, read back from the disk, not from the page cache;
4. freezes it and snapshots it with the dataset's tags (``take_snapshot``);
5. once the snapshot is ``completed``, unmounts, detaches and deletes it.

Every step resumes after ``kill -9``: CreateVolume carries a client token
recorded before the call (EC2 returns the same volume for the same token),
the copy journal records each verified file, and each step checks what is
already there.  A failure at any step unmounts and deletes the volume; one
left behind by a killed instance goes with it (DeleteOnTermination) or, if it
was never attached, to the janitor (owner tag).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.common.aws import error_code
from bootstrap.common.commands import Runner, run_command
from bootstrap.common.devices import DeviceRoots, find_device, mounted_device, same_device
from bootstrap.common.ebs import Ebs
from bootstrap.common.errors import BootstrapError
from bootstrap.common.imds import InstanceIdentity
from bootstrap.common.progress import Progress, StatusFile, human_bytes
from bootstrap.common.state import atomic_write_json, fsync_dir, read_state
from bootstrap.contract import tags
from bootstrap.instance.snapshot import SnapshotRequest, Volume, frozen, take_snapshot, wait_for_snapshot
from bootstrap.instance.volume import thaw
from bootstrap.layout import MANIFEST, TRAINING_DIRS, DataLayout

log = logging.getLogger(__name__)
GIB = 1 << 30
CHUNK = 16 << 20
"""Copy block: large sequential I/O (sc1 charges every I/O of up to 1 MiB as 1 MiB)."""
LABEL = "imagenet-dataset"


class PublishError(BootstrapError):
    """The dataset volume could not be made, filled, checked or snapshotted."""


# -- pure planning -------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedFile:
    relpath: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PublishPlan:
    files: tuple[PublishedFile, ...]
    manifest_bytes: int
    size_gib: int
    inodes: int

    @property
    def data_bytes(self) -> int:
        return sum(f.size for f in self.files) + self.manifest_bytes


def is_published(relpath: str) -> bool:
    """What training reads: every format that was packed (records, shards, class tree), not the archives."""
    return relpath.split("/", 1)[0] in TRAINING_DIRS


def plan_publish(manifest: dict[str, Any], manifest_bytes: int) -> PublishPlan:
    """The files to publish, from the backup manifest, and the volume that holds them (``volume_gib``)."""
    files = tuple(PublishedFile(e["relpath"], int(e["size"]), e["sha256"]) for e in manifest["files"]
                  if is_published(e["relpath"]))  # fmt: skip
    directories = len({str(Path(f.relpath).parent) for f in files})
    data = sum(f.size for f in files) + manifest_bytes
    return PublishPlan(files, manifest_bytes, volume_gib(data, len(files) + directories),
                       len(files) + directories + 1024)  # fmt: skip


def volume_gib(data_bytes: int, entries: int) -> int:
    """The dataset volume for ``data_bytes`` in ``entries`` files and folders: the data, plus 2% and a 4 KiB
    block per entry for ext4's metadata and the files' last blocks, plus 1 GiB for the journal, in whole GiB."""
    need = data_bytes + data_bytes // 50 + 4096 * entries + GIB
    return -(-need // GIB)


def mkfs_command(device: Path, plan: PublishPlan) -> list[str]:
    """ext4 for a few large files: no reserved blocks, an inode per MiB at most, tables written now."""
    return ["mkfs.ext4", "-F", "-q", "-m", "0", "-T", "largefile", "-N", str(plan.inodes), "-L", LABEL,
            "-E", "lazy_itable_init=0,lazy_journal_init=0", str(device)]  # fmt: skip


def volume_request(plan: PublishPlan, identity: InstanceIdentity, pipeline: str, token: str) -> dict[str, Any]:
    tag_list = [{"Key": "Name", "Value": f"{pipeline} dataset (being published)"},
                {"Key": tags.PIPELINE, "Value": pipeline}, {"Key": tags.DATASET_VOLUME, "Value": pipeline},
                {"Key": tags.OWNER, "Value": identity.instance_id}]  # fmt: skip
    return {"AvailabilityZone": identity.availability_zone, "Size": plan.size_gib, "VolumeType": "gp3",
            "Encrypted": True, "ClientToken": token,
            "TagSpecifications": [{"ResourceType": "volume", "Tags": tag_list}]}  # fmt: skip


# -- I/O ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishOptions:
    mount_point: Path
    roots: DeviceRoots = field(default_factory=DeviceRoots)
    poll_seconds: float = 2.0
    timeout_seconds: float = 600.0


def _chunks(f: Any) -> Iterator[bytes]:
    while block := f.read(CHUNK):
        yield block


def copy_verified(source: Path, dest: Path, sha256: str) -> int:
    """Copy ``source`` to ``dest`` (through a temporary name), then read ``dest`` back from the disk and check
    both against ``sha256``; returns the bytes copied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    read = hashlib.sha256()
    with open(source, "rb") as src, open(tmp, "wb") as out:
        os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        for block in _chunks(src):
            read.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if read.hexdigest() != sha256:
        tmp.unlink()
        raise PublishError(f"{source} no longer matches the backup manifest (SHA-256 {read.hexdigest()[:12]}…, "
                           f"manifest {sha256[:12]}…): run the backup stage again, then this one")  # fmt: skip
    written = hashlib.sha256()
    with open(tmp, "rb") as back:
        os.posix_fadvise(back.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # read the disk, not the page cache
        for block in _chunks(back):
            written.update(block)
    if written.hexdigest() != sha256:
        raise PublishError(f"{dest} reads back with SHA-256 {written.hexdigest()[:12]}…, not {sha256[:12]}…: "
                           "the dataset volume is not storing what was written")  # fmt: skip
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return os.path.getsize(dest)


class DatasetVolumePublisher:
    def __init__(self, ec2: Any, identity: InstanceIdentity, paths: DataLayout, request: SnapshotRequest,
                 opts: PublishOptions, *, run: Runner = run_command, status: StatusFile | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.ec2, self.identity, self.paths, self.request, self.opts = ec2, identity, paths, request, opts
        self.run, self.status, self.sleep = run, status, sleep
        self.step = "start"
        self.ebs = Ebs(ec2, identity.instance_id, opts.timeout_seconds, opts.poll_seconds, sleep, self._at)

    def _at(self, step: str) -> None:
        self.step = step

    # -- the record of what this run has done (survives kill -9) --------------------------

    def _state(self) -> dict[str, Any]:
        return dict(read_state(self.paths.publish_record) or {})

    def _save(self, **changes: Any) -> dict[str, Any]:
        state = {**self._state(), **changes}
        atomic_write_json(self.paths.publish_record, state)
        return state

    def _copied(self) -> dict[str, str]:
        journal = self.paths.publish_journal
        if not journal.exists():
            return {}
        entries = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
        return {e["relpath"]: e["sha256"] for e in entries}

    def _record_copied(self, f: PublishedFile) -> None:
        with open(self.paths.publish_journal, "a") as journal:
            journal.write(json.dumps({"relpath": f.relpath, "sha256": f.sha256}) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    # -- the steps ------------------------------------------------------------------------

    def plan(self) -> tuple[PublishPlan, bytes]:
        body = self.paths.local_manifest.read_bytes() if self.paths.local_manifest.exists() else b""
        if hashlib.sha256(body).hexdigest() != self.request.manifest_sha256:
            raise PublishError(f"{self.paths.local_manifest} is not the manifest the backup wrote "
                               f"({self.request.manifest_sha256[:12]}…): run the backup stage again")  # fmt: skip
        return plan_publish(json.loads(body), len(body)), body

    def _volume(self, plan: PublishPlan) -> str:
        state = self._state()
        if state.get("volume_id"):
            return str(state["volume_id"])
        token = state.get("client_token") or self._save(client_token=f"publish-{uuid.uuid4()}")["client_token"]
        self.step = "create volume"
        request = volume_request(plan, self.identity, self.request.pipeline, token)
        volume_id = str(self.ec2.create_volume(**request)["VolumeId"])
        self._save(volume_id=volume_id, size_gib=plan.size_gib)
        log.info("publish: created %s (%d GiB gp3) for %s of data", volume_id, plan.size_gib,
                 human_bytes(plan.data_bytes))  # fmt: skip
        return volume_id

    def _device(self, volume_id: str) -> Path:
        device_name = self.ebs.attached_device(volume_id)
        if device_name is None:
            self.ebs.wait_available(volume_id)
            device_name = self.ebs.attach(volume_id)
        else:
            self.ebs.protect(volume_id, device_name)  # attached before a kill: DeleteOnTermination may not be set
        self.step = "find the block device"
        found: Path = self.ebs.wait(f"the block device of {volume_id}",
                                    lambda: find_device(volume_id, device_name, self.opts.roots))  # fmt: skip
        return found

    def _mounted(self, device: Path, plan: PublishPlan) -> None:
        mount_point = self.opts.mount_point
        current = mounted_device(mount_point)
        if current is not None and same_device(current, device):
            thaw(mount_point, self.run)  # a kill between fsfreeze -f and -u leaves it frozen: every write would hang
            return
        if not self._state().get("formatted"):
            self.step = "make the filesystem"
            self.run(mkfs_command(device, plan))
            self._save(formatted=True)
        self.step = "mount"
        mount_point.mkdir(parents=True, exist_ok=True)
        self.run(["mount", "-o", "noatime", str(device), str(mount_point)])

    def _copy(self, plan: PublishPlan, manifest: bytes) -> None:
        self.step = "copy and verify"
        copied, root = self._copied(), self.opts.mount_point
        todo = [f for f in plan.files
                if copied.get(f.relpath) != f.sha256 or not (root / f.relpath).is_file()]  # fmt: skip
        progress = Progress("snapshot: copy to the dataset volume", sum(f.size for f in todo), "B", status=self.status)
        for f in todo:
            progress.advance(copy_verified(self.paths.root / f.relpath, root / f.relpath, f.sha256))
            self._record_copied(f)
        (root / MANIFEST).write_bytes(manifest)
        os.sync()
        progress.finish()
        log.info("publish: %d files on the dataset volume, each matching its SHA-256 in the manifest",
                 len(plan.files))  # fmt: skip

    def _retire(self, volume_id: str) -> None:
        """The snapshot is complete: the volume has done its work (and may be gone already, after a kill)."""
        self.step = "unmount"
        if mounted_device(self.opts.mount_point) is not None:
            self.run(["umount", str(self.opts.mount_point)])
        self.step = "delete the volume"
        try:
            self.ebs.remove(volume_id)
        except Exception as e:
            if error_code(e) != "InvalidVolume.NotFound":
                raise
        self._forget()
        log.info("publish: %s deleted; its snapshot is what GPU instances restore", volume_id)

    def _forget(self) -> None:
        for path in (self.paths.publish_record, self.paths.publish_journal):
            path.unlink(missing_ok=True)

    def _abandon(self) -> None:
        """After a failure: nothing left behind (unmounted, volume deleted, record gone)."""
        volume_id = self._state().get("volume_id")
        try:
            if mounted_device(self.opts.mount_point) is not None:
                self.run(["umount", str(self.opts.mount_point)])
        except BootstrapError as e:
            log.error("publish: could not unmount %s (%s)", self.opts.mount_point, e)
        if volume_id:
            self.ebs.remove_quietly(str(volume_id), f"the failure at '{self.step}'")
        self._forget()

    def publish(self, *, poll_seconds: float = 15.0) -> tuple[dict[str, Any], PublishPlan]:
        """Make, fill, check and snapshot the dataset volume; returns the completed snapshot and the plan."""
        plan, manifest = self.plan()
        state = self._state()
        if state.get("snapshot_id"):  # completed before a kill: only the volume is left to remove
            snap = wait_for_snapshot(self.ec2, state["snapshot_id"], poll_seconds=poll_seconds, sleep=self.sleep)
            self._retire(str(state["volume_id"]))
            return snap, plan
        try:
            volume_id = self._volume(plan)
            device = self._device(volume_id)
            self._mounted(device, plan)
            self._copy(plan, manifest)
            self.step = "snapshot"
            volume = Volume(volume_id, device, plan.size_gib, self.identity.availability_zone)
            snap = take_snapshot(self.ec2, self.identity, volume, self.request, mount_point=self.opts.mount_point,
                                 state_path=self.paths.snapshot_record, status=self.status, sleep=self.sleep,
                                 poll_seconds=poll_seconds, freeze=lambda mp: frozen(mp, self.run),
                                 reuse_completed=True)  # fmt: skip
        except Exception as e:
            self._abandon()
            message = str(e) if isinstance(e, BootstrapError) else f"{type(e).__name__}: {e}"
            raise PublishError(f"publishing the dataset volume failed at '{self.step}': {message}") from None
        self._save(snapshot_id=snap["SnapshotId"])
        self._retire(volume_id)
        return snap, plan
