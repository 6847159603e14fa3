"""``python -m bootstrap attach``: give a GPU instance the dataset volume at boot, and never leak it.

1. IMDSv2 identity (instance id, region, AZ).
2. Reboot: a volume of ours already attached to this instance is only mounted.
3. The snapshot: from the published SSM parameter, or the newest completed
   snapshot tagged with the pipeline; a missing or incomplete one is an error.
4. CreateVolume from it in the instance's own AZ (gp3 by default), encrypted,
   tagged with the pipeline and the owner instance at creation.
5. Wait until available (NotFound right after CreateVolume means "not yet"),
   attach at a free device name, wait until the attachment is ``attached`` and
   shows in the instance's block-device mappings (ModifyInstanceAttribute
   changes only mapped devices), then set DeleteOnTermination before anything
   else: an instance that dies later still takes its volume with it.
6. Find the block device by volume id (NVMe serial or Xen
   name, ``devices``); mount read-only with noatime; add a ``nofail`` fstab
   entry so a reboot never hangs; optionally pre-read it in the background.
7. Signal readiness: a marker file and an instance tag.

Any failure after the volume was created deletes it (detaching first), exits
non-zero naming the step, and, if configured, shuts the instance down.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.common.commands import Runner, run_command
from bootstrap.common.devices import DeviceRoots, add_fstab_entry, find_device, mounted_device
from bootstrap.common.ebs import Ebs
from bootstrap.common.errors import BootstrapError
from bootstrap.common.imds import InstanceIdentity
from bootstrap.contract.names import DATA_DIR, READY_MARKER
from bootstrap.contract.parameters import published_snapshot
from bootstrap.contract.tags import OWNER as TAG_OWNER
from bootstrap.contract.tags import PIPELINE as TAG_PIPELINE
from bootstrap.contract.tags import READY as TAG_READY
from bootstrap.gpu import initialization, local_nvme

log = logging.getLogger(__name__)


class AttachError(BootstrapError):
    """The dataset volume could not be created, attached or mounted."""


@dataclass(frozen=True)
class AttachOptions:
    pipeline: str
    snapshot_parameter: str | None = None
    mount_point: Path = Path(DATA_DIR)
    volume_type: str = "gp3"
    iops: int | None = None
    throughput: int | None = None
    initialization_rate: int | None = None
    """MiB/s (100-300) at which EBS fetches the snapshot's blocks; None: chosen from the snapshot's size."""
    initialize_within: float | None = initialization.TARGET_SECONDS
    """With no rate given, the lowest rate that initializes the volume this fast; None leaves lazy loading."""
    watch_initialization: bool = True
    """Record when the volume is fully initialized (a background watcher updates the marker and a tag)."""
    prewarm: bool = False
    local_nvme: bool = False
    """Copy the dataset to the instance-store NVMe disks (RAID 0 when several) and serve it from there."""
    shutdown_on_failure: bool = False
    timeout_seconds: float = 300.0
    poll_seconds: float = 2.0
    roots: DeviceRoots = field(default_factory=DeviceRoots)
    fstab: Path = Path("/etc/fstab")
    ready_marker: Path = Path(READY_MARKER)


# -- pure decisions ---------------------------------------------------------------


def initialization_rate(snapshot: dict[str, Any], opts: AttachOptions) -> int | None:
    """The rate asked for, else the one that loads this snapshot's volume in time, else none (lazy loading)."""
    if opts.initialization_rate:
        return opts.initialization_rate
    if opts.initialize_within:
        return initialization.rate_for(int(snapshot["VolumeSize"]), opts.initialize_within)
    return None


def volume_request(snapshot: dict[str, Any], identity: InstanceIdentity, opts: AttachOptions) -> dict[str, Any]:
    tags = [
        {"Key": "Name", "Value": f"{opts.pipeline} dataset for {identity.instance_id}"},
        {"Key": TAG_PIPELINE, "Value": opts.pipeline},
        {"Key": TAG_OWNER, "Value": identity.instance_id},
    ]
    request: dict[str, Any] = {
        "SnapshotId": snapshot["SnapshotId"],
        "AvailabilityZone": identity.availability_zone,
        "VolumeType": opts.volume_type,
        "Encrypted": True,
        "TagSpecifications": [{"ResourceType": "volume", "Tags": tags}],
    }
    if opts.iops:
        request["Iops"] = opts.iops
    if opts.throughput:
        request["Throughput"] = opts.throughput
    rate = initialization_rate(snapshot, opts)
    if rate:
        request["VolumeInitializationRate"] = rate
    return request


# -- the agent ----------------------------------------------------------------------


def detached(argv: list[str]) -> None:
    """Start ``argv`` in its own session, so it outlives the agent (user data goes on to training)."""
    subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


class Attacher:
    def __init__(self, ec2: Any, ssm: Any, identity: InstanceIdentity, opts: AttachOptions, *,
                 run: Runner = run_command, sleep: Callable[[float], None] = time.sleep,
                 spawn: Callable[[list[str]], Any] = detached) -> None:  # fmt: skip
        self.ec2, self.ssm, self.identity, self.opts = ec2, ssm, identity, opts
        self.run, self.sleep, self.spawn = run, sleep, spawn
        self.step = "start"
        self.initialization_rate: int | None = None
        self.local: dict[str, Any] | None = None
        self.ebs = Ebs(ec2, identity.instance_id, opts.timeout_seconds, opts.poll_seconds, sleep, self._at)

    def _at(self, step: str) -> None:
        self.step = step

    def own_attached_volume(self) -> dict[str, Any] | None:
        volumes = self.ec2.describe_volumes(Filters=[
            {"Name": "attachment.instance-id", "Values": [self.identity.instance_id]},
            {"Name": f"tag:{TAG_OWNER}", "Values": [self.identity.instance_id]},
            {"Name": f"tag:{TAG_PIPELINE}", "Values": [self.opts.pipeline]}])["Volumes"]  # fmt: skip
        return dict(volumes[0]) if volumes else None

    def snapshot(self) -> dict[str, Any]:
        """The published (or newest tagged) snapshot, which must be ``completed``."""
        if self.opts.snapshot_parameter:
            try:
                raw = self.ssm.get_parameter(Name=self.opts.snapshot_parameter)["Parameter"]["Value"]
            except Exception as e:
                raise AttachError(f"cannot read {self.opts.snapshot_parameter} ({e}); has the download instance "
                                  "published its snapshot yet?") from None  # fmt: skip
            published = published_snapshot(raw)
            if published is None:
                raise AttachError(f"{self.opts.snapshot_parameter} holds no snapshot id yet ({raw[:80]!r}); has the "
                                  "download instance published its snapshot?")  # fmt: skip
            snapshot_id = str(published["snapshot_id"])
        else:
            snaps = self.ec2.describe_snapshots(OwnerIds=["self"], Filters=[
                {"Name": f"tag:{TAG_PIPELINE}", "Values": [self.opts.pipeline]},
                {"Name": "status", "Values": ["completed"]}])["Snapshots"]  # fmt: skip
            if not snaps:
                raise AttachError(f"no completed snapshot tagged {TAG_PIPELINE}={self.opts.pipeline}; "
                                  "has the download instance finished?")  # fmt: skip
            snapshot_id = str(max(snaps, key=lambda s: s["StartTime"])["SnapshotId"])
        snapshot = dict(self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0])
        if snapshot["State"] != "completed":
            raise AttachError(f"snapshot {snapshot_id} is {snapshot['State']}, not completed; wait for it and boot "
                              "again")  # fmt: skip
        return snapshot

    def attach_new(self) -> tuple[str, str]:
        """Create, attach and protect a volume; returns (volume id, attachment device name)."""
        self.step = "find snapshot"
        snapshot = self.snapshot()
        self.step = "create volume"
        request = volume_request(snapshot, self.identity, self.opts)
        volume_id = str(self.ec2.create_volume(**request)["VolumeId"])
        self.initialization_rate = request.get("VolumeInitializationRate")
        log.info("attach: created %s (%d GiB) from %s in %s%s", volume_id, snapshot["VolumeSize"],
                 snapshot["SnapshotId"], self.identity.availability_zone,
                 f", initialized at {self.initialization_rate} MiB/s" if self.initialization_rate else "")  # fmt: skip
        try:
            self.ebs.wait_available(volume_id)
            return volume_id, self.ebs.attach(volume_id)
        except Exception:
            self.ebs.remove_quietly(volume_id, "the failure")
            raise

    def mount(self, volume_id: str, device_name: str) -> Path:
        self.step = "wait for the volume to be in use"
        self.ebs.wait(f"{volume_id} to be attached", lambda: self.ebs.attachment_state(volume_id) == "attached")
        self.step = "find the block device"
        device = self.ebs.wait(
            f"the block device of {volume_id}", lambda: find_device(volume_id, device_name, self.opts.roots)
        )
        self.step = "mount"
        mp = self.opts.mount_point
        mp.mkdir(parents=True, exist_ok=True)
        if self.opts.local_nvme and mounted_device(mp) is None:
            disks = local_nvme.instance_store_devices(self.opts.roots)
            if disks:
                self.step = "copy to the local NVMe disks"
                self.local = local_nvme.serve_locally(Path(device), mp, disks, self.run)
                return Path(device)  # no fstab entry: instance store is empty after a stop; the agent copies again
            log.warning("attach: --local-nvme, but this instance has no instance-store disks; serving from EBS")
        if mounted_device(mp) is None:
            self.run(["mount", "-o", "ro,noatime", str(device), str(mp)])
        uuid = self.run(["blkid", "-s", "UUID", "-o", "value", str(device)]).strip()
        fstype = self.run(["blkid", "-s", "TYPE", "-o", "value", str(device)]).strip()
        if uuid:
            # nofail: a missing volume must never hold up the boot; the agent attaches it again.
            add_fstab_entry(self.opts.fstab, uuid, mp, fstype or "ext4",
                            options="ro,noatime,nofail,x-systemd.device-timeout=30s", passno=0)  # fmt: skip
        if self.opts.prewarm:
            self.spawn(["dd", f"if={device}", "of=/dev/null", "bs=1M"])
        return Path(device)

    def signal_ready(self, volume_id: str) -> None:
        self.step = "signal readiness"
        self.opts.ready_marker.parent.mkdir(parents=True, exist_ok=True)
        marker = {"volume_id": volume_id, "mount_point": str(self.opts.mount_point),
                  "initialization_rate": self.initialization_rate, "local_nvme": self.local}  # fmt: skip
        self.opts.ready_marker.write_text(json.dumps(marker))
        self.ec2.create_tags(Resources=[self.identity.instance_id], Tags=[{"Key": TAG_READY, "Value": volume_id}])
        if self.opts.watch_initialization:
            self.spawn([sys.executable, "-m", "bootstrap", "watch-initialization", "--volume-id", volume_id,
                        "--ready-marker", str(self.opts.ready_marker)])  # fmt: skip

    def attach(self) -> dict[str, Any]:
        created: str | None = None
        try:
            existing = self.own_attached_volume()
            if existing:
                volume_id = existing["VolumeId"]
                device_name = next(a["Device"] for a in existing["Attachments"]
                                   if a["InstanceId"] == self.identity.instance_id)  # fmt: skip
                log.info("attach: %s is already attached as %s (reboot); mounting it", volume_id, device_name)
            else:
                volume_id, device_name = self.attach_new()
                created = volume_id
            device = self.mount(volume_id, device_name)
            self.signal_ready(volume_id)
        except Exception as e:
            if created:
                self.ebs.remove_quietly(created, "the failure")
            message = str(e) if isinstance(e, BootstrapError) else f"{type(e).__name__}: {e}"
            if self.opts.shutdown_on_failure:
                log.error("attach failed at '%s'; shutting the instance down", self.step)
                self.run(["shutdown", "-h", "+1", f"dataset volume failed at {self.step}"])
            raise AttachError(f"attach failed at '{self.step}': {message}") from None
        log.info("attach: %s mounted read-only at %s from %s", volume_id, self.opts.mount_point, device)
        return {"volume_id": volume_id, "device": str(device), "mount_point": str(self.opts.mount_point)}
