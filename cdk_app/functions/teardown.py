"""Publish the dataset snapshot and tear the download side down once the snapshot has completed.

Two triggers, one outcome:

- EventBridge's ``EBS Snapshot Notification`` / ``createSnapshot`` event, sent
  when a snapshot completes.  It races the instance's own publish step (the
  instance learns of completion on its next poll), so the function publishes
  the snapshot itself, from the snapshot's tags, unless the parameter already
  names it, and only then terminates the instance.  Whoever writes first,
  the fleet never sees a completed dataset snapshot that is not published.
- A schedule (``{"source": "aws.events", "detail-type": "Scheduled Event"}``):
  EBS delivers events on a best-effort basis, so the same sweep runs for every
  completed dataset snapshot whose instance is still running.  A lost event
  costs at most one interval of instance time.

The event carries ARNs and no tags, so the snapshot is looked up and acted on
only when it is this pipeline's and names its download instance.
``succeeded``: publish, mark the data volume DeleteOnTermination (unless
KEEP_VOLUME), terminate the instance, delete the DLM policy's scheduled
snapshots of that volume.  ``failed``: keep the instance (its data is
intact) and emit the ``SnapshotFailed`` metric that the stack's alarm watches.

Environment: PIPELINE, SNAPSHOT_PARAMETER, TAG_PIPELINE, TAG_INSTANCE, TAG_SCHEDULED, TAG_DATASET, TAG_MANIFEST,
TAG_MANIFEST_URL, TAG_IMAGES, TAG_BYTES, TAG_WORK_VOLUME, KEEP_VOLUME ("true"/"false"), METRIC_NAMESPACE,
HEARTBEAT_ALARM; AWS_REGION (Lambda's own).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger()
log.setLevel(logging.INFO)
GONE = {"shutting-down", "terminated"}


def resource_id(arn: str) -> str:
    """``arn:aws:ec2::us-west-2:snapshot/snap-1`` and ``arn:aws:ec2:us-west-2::snapshot/snap-1`` -> ``snap-1``."""
    return arn.rsplit("/", 1)[-1]


def client(service: str) -> Any:
    """A client in the function's own region (Lambda's AWS_REGION; boto3 itself reads only AWS_DEFAULT_REGION)."""
    import boto3

    return boto3.client(service, region_name=os.environ["AWS_REGION"])


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point: a snapshot event, or the schedule's sweep."""
    return on_event(event, client("ec2"), client("ssm"), client("cloudwatch"), dict(os.environ))


def on_event(event: dict[str, Any], ec2: Any, ssm: Any, cloudwatch: Any, env: dict[str, str]) -> dict[str, Any]:
    if event.get("detail-type") == "Scheduled Event":
        return {"action": "swept", "finished": sweep(ec2, ssm, cloudwatch, env)}
    detail = event.get("detail", {})
    if detail.get("event") != "createSnapshot":
        return {"action": "ignored", "reason": f"event {detail.get('event')!r}"}
    snapshot_id = resource_id(detail.get("snapshot_id", ""))
    snapshots = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}])["Snapshots"]
    if not snapshots:
        return {"action": "ignored", "reason": f"{snapshot_id} not found"}
    snapshot = snapshots[0]
    snapshot_tags = _tags(snapshot)
    instance_id = snapshot_tags.get(env["TAG_INSTANCE"])
    if snapshot_tags.get(env["TAG_PIPELINE"]) != env["PIPELINE"] or not instance_id:
        return {"action": "ignored", "reason": f"{snapshot_id} is not a snapshot of this pipeline's instance"}
    if detail.get("result") != "succeeded":
        log.error("snapshot %s of %s failed (%s); keeping %s", snapshot_id, snapshot["VolumeId"],
                  detail.get("cause", "no cause given"), instance_id)  # fmt: skip
        cloudwatch.put_metric_data(Namespace=env["METRIC_NAMESPACE"], MetricData=[
            {"MetricName": "SnapshotFailed", "Value": 1, "Unit": "Count",
             "Dimensions": [{"Name": "Pipeline", "Value": env["PIPELINE"]}]}])  # fmt: skip
        return {"action": "alarm", "snapshot_id": snapshot_id, "instance_id": instance_id}
    return finish(ec2, ssm, cloudwatch, snapshot, env)


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def finish(ec2: Any, ssm: Any, cloudwatch: Any, snapshot: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """A completed dataset snapshot: published first, then its instance terminated (with its volume)."""
    snapshot_id, instance_id = snapshot["SnapshotId"], _tags(snapshot)[env["TAG_INSTANCE"]]
    work_volume = work_volume_of(snapshot, env)
    published_now = ensure_published(ssm, snapshot, env)
    keep = env.get("KEEP_VOLUME", "false").lower() == "true"
    if not terminate_with_volume(ec2, instance_id, work_volume, keep_volume=keep):
        return {"action": "none", "reason": f"{instance_id} is already gone", "snapshot_id": snapshot_id,
                "published_by_function": published_now}  # fmt: skip
    scheduled = [] if keep else delete_scheduled_snapshots(ec2, work_volume, env)
    if env.get("HEARTBEAT_ALARM"):  # the silence of a finished run is no alert; the next run re-arms it
        cloudwatch.disable_alarm_actions(AlarmNames=[env["HEARTBEAT_ALARM"]])
    log.info("snapshot %s completed: terminated %s, data volume %s %s, %d scheduled snapshots of it deleted",
             snapshot_id, instance_id, work_volume, "kept" if keep else "deleted with it",
             len(scheduled))  # fmt: skip
    return {"action": "terminated", "instance_id": instance_id, "volume_deleted": not keep, "snapshot_id": snapshot_id,
            "scheduled_snapshots_deleted": scheduled, "published_by_function": published_now}  # fmt: skip


def work_volume_of(snapshot: dict[str, Any], env: dict[str, str]) -> str:
    """The download instance's data volume: named in the snapshot's tags (the snapshot itself may be of the
    right-sized dataset volume the instance published on); else the snapshot's own source."""
    return _tags(snapshot).get(env["TAG_WORK_VOLUME"]) or str(snapshot["VolumeId"])


def published_record(snapshot: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """What the instance publishes, rebuilt from the snapshot's own tags (the instance wrote them at CreateSnapshot)."""
    tag = _tags(snapshot)
    images = dict(item.split("=", 1) for item in tag.get(env["TAG_IMAGES"], "").split(",") if "=" in item)
    return {
        "snapshot_id": snapshot["SnapshotId"],
        "volume_id": snapshot["VolumeId"],
        "volume_size_gib": snapshot.get("VolumeSize"),
        "region": env["AWS_REGION"],
        "source_instance_id": tag[env["TAG_INSTANCE"]],
        "started": str(snapshot.get("StartTime", "")),
        "pipeline": env["PIPELINE"],
        "dataset": tag.get(env["TAG_DATASET"], ""),
        "images": {split: int(count) for split, count in images.items()},
        "manifest": tag.get(env["TAG_MANIFEST_URL"], ""),
        "manifest_sha256": tag.get(env["TAG_MANIFEST"], ""),
        "bytes": int(tag.get(env["TAG_BYTES"], "0") or 0),
        "published": datetime.now(UTC).isoformat(timespec="seconds"),
        "published_by": "teardown function",
    }


def ensure_published(ssm: Any, snapshot: dict[str, Any], env: dict[str, str]) -> bool:
    """Publish ``snapshot`` unless the parameter already names it; True when this call wrote it."""
    name = env["SNAPSHOT_PARAMETER"]
    try:
        current = json.loads(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except (ssm.exceptions.ParameterNotFound, ValueError):
        current = None
    if isinstance(current, dict) and current.get("snapshot_id") == snapshot["SnapshotId"]:
        return False
    record = published_record(snapshot, env)
    ssm.put_parameter(Name=name, Value=json.dumps(record, sort_keys=True), Type="String", Overwrite=True)
    log.info("published %s in %s (before the instance did)", snapshot["SnapshotId"], name)
    return True


def sweep(ec2: Any, ssm: Any, cloudwatch: Any, env: dict[str, str]) -> list[dict[str, Any]]:
    """Finish every completed dataset snapshot whose instance still runs: the backstop for a lost event."""
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": f"tag:{env['TAG_PIPELINE']}", "Values": [env["PIPELINE"]]},
        {"Name": "tag-key", "Values": [env["TAG_INSTANCE"]]},
        {"Name": "status", "Values": ["completed"]}])["Snapshots"]  # fmt: skip
    return [finish(ec2, ssm, cloudwatch, s, env) for s in sorted(snapshots, key=lambda s: str(s.get("StartTime", "")))
            if _running(ec2, _tags(s)[env["TAG_INSTANCE"]])]  # fmt: skip


def _running(ec2: Any, instance_id: str) -> bool:
    reservations = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [instance_id]}])["Reservations"]
    return any(i["State"]["Name"] not in GONE for r in reservations for i in r["Instances"])


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
