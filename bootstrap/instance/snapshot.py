"""Snapshot the data volume consistently, and say where the snapshot is.

1. Find the EBS volume behind the data mount: the instance's attached volumes
   (IMDSv2 instance id + DescribeVolumes), each resolved to its block device by
   volume id (``devices``), compared with the device mounted there.
2. ``sync`` + ``fsfreeze -f``, CreateSnapshot with tags, ``fsfreeze -u`` as soon
   as the call returns: the snapshot is point-in-time at the call, so the
   filesystem is frozen for about a second, not for the hours the copy takes.
3. Wait for ``completed`` with progress; ``error`` is a clear failure.

An sc1 volume allows one pending snapshot.  A pending one of ours (a run that
was killed while waiting, or a second attempt) is waited for, not duplicated.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.common.aws import aws_error, error_code
from bootstrap.common.commands import CommandError, Runner, run_command
from bootstrap.common.devices import DeviceRoots, find_device, mount_source, same_device
from bootstrap.common.errors import BootstrapError
from bootstrap.common.imds import InstanceIdentity
from bootstrap.common.progress import Progress, StatusFile
from bootstrap.common.state import atomic_write_json, read_state
from bootstrap.contract import tags

log = logging.getLogger(__name__)
TAG_PIPELINE, TAG_INSTANCE, TAG_DATASET = tags.PIPELINE, tags.INSTANCE, tags.DATASET
TAG_MANIFEST, TAG_PRODUCER = tags.MANIFEST, tags.PRODUCER


class SnapshotError(BootstrapError):
    """The snapshot failed or could not be started."""


@dataclass(frozen=True)
class Volume:
    volume_id: str
    device: Path
    size_gib: int
    availability_zone: str


@dataclass(frozen=True)
class SnapshotRequest:
    pipeline: str
    dataset: str
    manifest_sha256: str
    manifest: str = ""
    images: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    extra_tags: dict[str, str] = field(default_factory=dict)


def snapshot_tags(request: SnapshotRequest, instance_id: str) -> list[dict[str, str]]:
    values = {
        "Name": f"{request.pipeline} {request.dataset}",
        TAG_PIPELINE: request.pipeline,
        TAG_INSTANCE: instance_id,
        TAG_DATASET: request.dataset,
        TAG_MANIFEST: request.manifest_sha256,
        tags.MANIFEST_URL: request.manifest,
        tags.IMAGES: ",".join(f"{split}={count}" for split, count in sorted(request.images.items())),
        tags.BYTES: str(request.bytes),
        TAG_PRODUCER: "python -m bootstrap snapshot",
        **request.extra_tags,
    }
    return [{"Key": k, "Value": v} for k, v in sorted(values.items())]


def find_data_volume(ec2: Any, identity: InstanceIdentity, mount_point: Path, roots: DeviceRoots,
                     mountinfo: Path = Path("/proc/self/mountinfo")) -> Volume:  # fmt: skip
    mounted = mount_source(mount_point, mountinfo)
    response = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [identity.instance_id]}])
    for volume in response["Volumes"]:
        for attachment in volume["Attachments"]:
            if attachment["InstanceId"] != identity.instance_id:
                continue
            device = find_device(volume["VolumeId"], attachment.get("Device"), roots)
            if device is not None and same_device(device, mounted):
                return Volume(volume["VolumeId"], device, volume["Size"], volume["AvailabilityZone"])
    raise SnapshotError(
        f"no EBS volume attached to {identity.instance_id} backs {mount_point} (mounted from {mounted}); "
        "is the data volume attached and mounted there?"
    )


@contextmanager
def frozen(mount_point: Path, run: Runner = run_command) -> Iterator[None]:
    """Flush and freeze the filesystem for the duration of the block."""
    run(["sync", "-f", str(mount_point)])
    try:
        run(["fsfreeze", "--freeze", str(mount_point)])
    except (CommandError, FileNotFoundError) as e:
        raise SnapshotError(
            f"cannot freeze {mount_point} ({e}); the snapshot needs root and a mounted filesystem"
        ) from None
    try:
        yield
    finally:
        run(["fsfreeze", "--unfreeze", str(mount_point)])


def _pending_snapshot(ec2: Any, volume_id: str, pipeline: str, states: tuple[str, ...] = ("pending",)) -> str | None:
    """Ours (tagged with the pipeline) of this volume, in one of ``states``: a kill between CreateSnapshot and
    recording it must not make a second one."""
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "volume-id", "Values": [volume_id]}, {"Name": "status", "Values": list(states)},
        {"Name": f"tag:{TAG_PIPELINE}", "Values": [pipeline]}])["Snapshots"]  # fmt: skip
    return snapshots[0]["SnapshotId"] if snapshots else None


def _describe(ec2: Any, snapshot_id: str) -> dict[str, Any] | None:
    """The snapshot; ``None`` while EC2 does not know it yet (eventual consistency right after CreateSnapshot)."""
    try:
        return dict(ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0])
    except Exception as e:
        if error_code(e) == "InvalidSnapshot.NotFound":
            return None
        raise


def wait_for_snapshot(
    ec2: Any,
    snapshot_id: str,
    *,
    poll_seconds: float = 15.0,
    timeout_seconds: float = 86_400,
    status: StatusFile | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    progress = Progress(f"snapshot {snapshot_id}", 100, "%", status=status)
    deadline = time.monotonic() + timeout_seconds
    while True:
        snap = _describe(ec2, snapshot_id) or {"State": "pending", "Progress": "0%"}
        state = snap["State"]
        percent = int(str(snap.get("Progress", "0%")).rstrip("%") or 0)
        progress.advance(percent - progress.done)
        if state == "completed":
            progress.finish()
            return snap
        if state == "error":
            raise SnapshotError(
                f"snapshot {snapshot_id} ended in state 'error' ({snap.get('StateMessage', 'no reason given')}); "
                "nothing was published. Run the snapshot stage again to take a new one"
            )
        if time.monotonic() > deadline:
            raise SnapshotError(
                f"snapshot {snapshot_id} still {state} after {timeout_seconds:.0f}s; run again to keep waiting"
            )
        sleep(poll_seconds)


def _others_pending(ec2: Any, volume_id: str) -> list[str]:
    """Pending snapshots of the volume that are not ours (the DLM policy's): sc1/st1 allow one at a time."""
    filters = [{"Name": "volume-id", "Values": [volume_id]}, {"Name": "status", "Values": ["pending"]}]
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]
    return [s["SnapshotId"] for s in snapshots]


def _recorded(ec2: Any, state_path: Path, volume: Volume) -> str | None:
    """The snapshot an earlier run started, unless it ended in ``error`` (then a new one is taken)."""
    recorded = read_state(state_path)
    snapshot_id = recorded.get("snapshot_id") if recorded and recorded.get("volume_id") == volume.volume_id else None
    if snapshot_id and (_describe(ec2, snapshot_id) or {}).get("State") == "error":
        log.warning("snapshot: %s ended in state 'error'; taking a new one", snapshot_id)
        state_path.unlink()
        return None
    return snapshot_id


def take_snapshot(
    ec2: Any,
    identity: InstanceIdentity,
    volume: Volume,
    request: SnapshotRequest,
    *,
    mount_point: Path,
    state_path: Path,
    freeze: Callable[[Path], Any] = frozen,
    status: StatusFile | None = None,
    sleep: Callable[[float], None] = time.sleep,
    poll_seconds: float = 15.0,
    reuse_completed: bool = False,
) -> dict[str, Any]:
    """Create (or find) this pipeline's snapshot of ``volume`` and wait until it is complete.

    ``reuse_completed``: a completed one of ours also counts (a volume made only to be snapshotted once).
    """
    states = ("pending", "completed") if reuse_completed else ("pending",)
    snapshot_id = _recorded(ec2, state_path, volume) or _pending_snapshot(ec2, volume.volume_id, request.pipeline,
                                                                          states)  # fmt: skip
    if snapshot_id:
        log.info("snapshot: waiting for %s, started earlier", snapshot_id)
    else:
        snapshot_id = _create(ec2, identity, volume, request, mount_point=mount_point, freeze=freeze,
                              poll_seconds=poll_seconds, sleep=sleep)  # fmt: skip
        atomic_write_json(state_path, {"snapshot_id": snapshot_id, "volume_id": volume.volume_id})
    return wait_for_snapshot(ec2, snapshot_id, poll_seconds=poll_seconds, status=status, sleep=sleep)


def _create(ec2: Any, identity: InstanceIdentity, volume: Volume, request: SnapshotRequest, *, mount_point: Path,
            freeze: Callable[[Path], Any], poll_seconds: float, sleep: Callable[[float], None]) -> str:  # fmt: skip
    """CreateSnapshot with the filesystem frozen; while another snapshot of the volume is pending, wait for it."""
    from botocore.exceptions import ClientError

    tags = snapshot_tags(request, identity.instance_id)
    while True:
        try:
            with freeze(mount_point):
                created = ec2.create_snapshot(
                    VolumeId=volume.volume_id,
                    Description=f"{request.pipeline}: {request.dataset} data volume",
                    TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
                )
        except ClientError as e:
            code = error_code(e)
            if code == "ConcurrentSnapshotLimitExceeded":
                ours = _pending_snapshot(ec2, volume.volume_id, request.pipeline)
                if ours:
                    return ours
                others = _others_pending(ec2, volume.volume_id)
                log.info("snapshot: %s has a pending snapshot that is not ours (%s: the lifecycle policy's); "
                         "waiting for it, then taking ours", volume.volume_id, ", ".join(others))  # fmt: skip
                for other in others:
                    wait_for_snapshot(ec2, other, poll_seconds=poll_seconds, sleep=sleep)
                sleep(poll_seconds)
                continue
            if code in ("UnauthorizedOperation", "AccessDenied"):
                raise SnapshotError("not allowed to snapshot the data volume: the instance role needs "
                                    "ec2:CreateSnapshot and ec2:CreateTags on it") from None  # fmt: skip
            raise SnapshotError(str(aws_error("CreateSnapshot", e))) from None
        log.info("snapshot: %s of %s started; filesystem thawed", created["SnapshotId"], volume.volume_id)
        return str(created["SnapshotId"])


def publish(ssm: Any, parameter: str, info: dict[str, Any]) -> None:
    """Write where the dataset snapshot is, for GPU instances and the operator."""
    try:
        ssm.put_parameter(Name=parameter, Value=json.dumps(info, sort_keys=True), Type="String", Overwrite=True)
    except Exception as e:
        raise BootstrapError(
            f"cannot write SSM parameter {parameter} ({e}); the role needs ssm:PutParameter on it"
        ) from None
