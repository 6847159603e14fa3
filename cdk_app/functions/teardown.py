"""Tear the download side down once its dataset snapshot has completed.

Invoked by EventBridge for ``EBS Snapshot Notification`` / ``createSnapshot``.
The event carries ARNs and no tags, so the snapshot is looked up and acted on
only when it is this pipeline's and names its download instance.

- ``succeeded``: mark the data volume DeleteOnTermination (unless KEEP_VOLUME)
  and terminate the instance; terminating takes the volume with it, so the
  function never waits.  The DLM policy's scheduled snapshots of that volume
  go too.  Redelivery finds the instance already going and does nothing.
- ``failed``: keep the instance (its data is intact) and emit the
  ``SnapshotFailed`` metric that the stack's alarm watches.

Environment: PIPELINE, TAG_PIPELINE, TAG_INSTANCE, TAG_SCHEDULED, KEEP_VOLUME ("true"/"false"),
METRIC_NAMESPACE.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger()
log.setLevel(logging.INFO)
GONE = {"shutting-down", "terminated"}


def resource_id(arn: str) -> str:
    """``arn:aws:ec2::us-west-2:snapshot/snap-1`` and ``arn:aws:ec2:us-west-2::snapshot/snap-1`` -> ``snap-1``."""
    return arn.rsplit("/", 1)[-1]


def _clients() -> tuple[Any, Any]:
    import boto3

    return boto3.client("ec2"), boto3.client("cloudwatch")


def handler(event: dict[str, Any], context: Any = None, *, ec2: Any = None, cloudwatch: Any = None,
            env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    env = dict(os.environ) if env is None else env
    if ec2 is None or cloudwatch is None:
        ec2, cloudwatch = _clients()
    detail = event.get("detail", {})
    if detail.get("event") != "createSnapshot":
        return {"action": "ignored", "reason": f"event {detail.get('event')!r}"}
    snapshot_id = resource_id(detail.get("snapshot_id", ""))
    snapshots = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}])["Snapshots"]
    if not snapshots:
        return {"action": "ignored", "reason": f"{snapshot_id} not found"}
    snapshot = snapshots[0]
    tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
    instance_id = tags.get(env["TAG_INSTANCE"])
    if tags.get(env["TAG_PIPELINE"]) != env["PIPELINE"] or not instance_id:
        return {"action": "ignored", "reason": f"{snapshot_id} is not a snapshot of this pipeline's instance"}

    if detail.get("result") != "succeeded":
        log.error("snapshot %s of %s failed (%s); keeping %s", snapshot_id, snapshot["VolumeId"],
                  detail.get("cause", "no cause given"), instance_id)  # fmt: skip
        cloudwatch.put_metric_data(Namespace=env["METRIC_NAMESPACE"], MetricData=[
            {"MetricName": "SnapshotFailed", "Value": 1, "Unit": "Count",
             "Dimensions": [{"Name": "Pipeline", "Value": env["PIPELINE"]}]}])  # fmt: skip
        return {"action": "alarm", "snapshot_id": snapshot_id, "instance_id": instance_id}

    keep = env.get("KEEP_VOLUME", "false").lower() == "true"
    if not terminate_with_volume(ec2, instance_id, snapshot["VolumeId"], keep_volume=keep):
        return {"action": "none", "reason": f"{instance_id} is already gone", "snapshot_id": snapshot_id}
    scheduled = [] if keep else delete_scheduled_snapshots(ec2, snapshot["VolumeId"], env)
    log.info("snapshot %s completed: terminated %s, data volume %s %s, %d scheduled snapshots of it deleted",
             snapshot_id, instance_id, snapshot["VolumeId"], "kept" if keep else "deleted with it",
             len(scheduled))  # fmt: skip
    return {"action": "terminated", "instance_id": instance_id, "volume_deleted": not keep, "snapshot_id": snapshot_id,
            "scheduled_snapshots_deleted": scheduled}  # fmt: skip


def delete_scheduled_snapshots(ec2: Any, volume_id: str, env: dict[str, str]) -> list[str]:
    """The DLM policy's snapshots of the finished volume: insurance for a run that is over, so not worth paying for.

    DLM prunes by count only when it takes a new snapshot, which it never will
    again once the volume is gone; without this they would be kept forever.
    """
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "volume-id", "Values": [volume_id]},
        {"Name": f"tag:{env['TAG_SCHEDULED']}", "Values": [env["PIPELINE"]]}])["Snapshots"]  # fmt: skip
    for snapshot in snapshots:
        ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])
    return [s["SnapshotId"] for s in snapshots]


def terminate_with_volume(ec2: Any, instance_id: str, volume_id: str, *, keep_volume: bool) -> bool:
    """Terminate the instance, taking ``volume_id`` with it unless kept; False when it is already gone.

    Marking the volume DeleteOnTermination first means nobody has to wait for
    the instance to stop before the volume can be deleted.
    """
    reservations = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [instance_id]}])["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    if not instances or instances[0]["State"]["Name"] in GONE:
        return False
    if not keep_volume:
        for mapping in instances[0].get("BlockDeviceMappings", []):
            if mapping["Ebs"]["VolumeId"] == volume_id:
                ec2.modify_instance_attribute(InstanceId=instance_id, BlockDeviceMappings=[
                    {"DeviceName": mapping["DeviceName"], "Ebs": {"DeleteOnTermination": True}}])  # fmt: skip
    ec2.terminate_instances(InstanceIds=[instance_id])
    return True
