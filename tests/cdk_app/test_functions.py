"""The teardown and janitor Lambda handlers against moto's server, with hand-built EventBridge events."""

from __future__ import annotations

from typing import Any

import pytest

from bootstrap.common.aws import client
from bootstrap.contract import tags
from cdk_app.functions import janitor, teardown
from tests.fixtures.ec2_world import launch_instance
from tests.fixtures.strict_aws import attached, available_volume, completed_snapshot

pytestmark = pytest.mark.usefixtures("aws_endpoint")


def env(pipeline: str, keep: bool = False) -> dict[str, str]:
    return {"PIPELINE": pipeline, "TAG_PIPELINE": tags.PIPELINE, "TAG_INSTANCE": tags.INSTANCE,
            "TAG_SCHEDULED": tags.SCHEDULED, "TAG_OWNER": tags.OWNER, "KEEP_VOLUME": str(keep).lower(),
            "METRIC_NAMESPACE": "Test"}  # fmt: skip


def download_side(pipeline: str) -> tuple[str, str, str]:
    """A download instance with its data volume attached and a dataset snapshot of it: (instance, volume, snapshot)."""
    ec2 = client("ec2")
    instance = launch_instance(ec2, "us-east-1a")
    volume = available_volume(ec2, AvailabilityZone="us-east-1a", Size=1000, VolumeType="sc1", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": tags.PIPELINE, "Value": pipeline}]}])  # fmt: skip
    ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdf")
    attached(ec2, volume)
    snapshot_tags = [{"Key": tags.PIPELINE, "Value": pipeline}, {"Key": tags.INSTANCE, "Value": instance}]
    spec = [{"ResourceType": "snapshot", "Tags": snapshot_tags}]
    snapshot = completed_snapshot(ec2, VolumeId=volume, TagSpecifications=spec)
    return instance, volume, snapshot


def event(snapshot: str, result: str = "succeeded", arn_style: int = 0) -> dict[str, Any]:
    arn = (f"arn:aws:ec2::us-east-1:snapshot/{snapshot}" if arn_style == 0
           else f"arn:aws:ec2:us-east-1::snapshot/{snapshot}")  # fmt: skip
    return {"source": "aws.ec2", "detail-type": "EBS Snapshot Notification",
            "detail": {"event": "createSnapshot", "result": result, "snapshot_id": arn, "cause": "",
                       "source": "arn:aws:ec2::us-east-1:volume/vol-x"}}  # fmt: skip


def state(instance: str) -> str:
    return str(
        client("ec2").describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    )


def volume_exists(volume: str) -> bool:
    return bool(client("ec2").describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume]}])["Volumes"])


@pytest.mark.parametrize("arn_style", [0, 1])
def test_succeeded_terminates_the_instance_and_deletes_its_volume(arn_style: int) -> None:
    pipeline = f"td-ok-{arn_style}"
    instance, volume, snapshot = download_side(pipeline)
    result = teardown.handler(event(snapshot, arn_style=arn_style), ec2=client("ec2"), cloudwatch=client("cloudwatch"),
                              env=env(pipeline))  # fmt: skip
    assert result["action"] == "terminated" and state(instance) == "terminated"
    assert not volume_exists(volume)
    again = teardown.handler(event(snapshot), ec2=client("ec2"), cloudwatch=client("cloudwatch"), env=env(pipeline))
    assert again["action"] == "none"  # redelivery: no error, no second action


def test_success_deletes_the_policys_scheduled_snapshots_of_that_volume_only() -> None:
    pipeline = "td-sched"
    instance, volume, dataset = download_side(pipeline)
    ec2 = client("ec2")

    def scheduled(volume_id: str, value: str = pipeline) -> str:
        spec = [{"ResourceType": "snapshot", "Tags": [{"Key": tags.SCHEDULED, "Value": value}]}]
        return completed_snapshot(ec2, VolumeId=volume_id, TagSpecifications=spec)

    ours = [scheduled(volume), scheduled(volume)]
    other_volume = available_volume(ec2, AvailabilityZone="us-east-1a", Size=8)
    kept = [dataset, scheduled(volume, "another-pipeline"), scheduled(other_volume)]
    result = teardown.handler(event(dataset), ec2=ec2, cloudwatch=client("cloudwatch"), env=env(pipeline))
    assert sorted(result["scheduled_snapshots_deleted"]) == sorted(ours) and state(instance) == "terminated"
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert set(kept) <= left and not set(ours) & left


def test_keep_volume_keeps_it() -> None:
    instance, volume, snapshot = download_side("td-keep")
    teardown.handler(event(snapshot), ec2=client("ec2"), cloudwatch=client("cloudwatch"), env=env("td-keep", keep=True))
    assert state(instance) == "terminated" and volume_exists(volume)


def test_other_pipelines_snapshot_is_ignored() -> None:
    instance, _volume, snapshot = download_side("td-theirs")
    result = teardown.handler(event(snapshot), ec2=client("ec2"), cloudwatch=client("cloudwatch"), env=env("td-ours"))
    assert result["action"] == "ignored" and state(instance) == "running"


def test_failed_snapshot_keeps_the_instance_and_raises_the_alarm_metric() -> None:
    instance, volume, snapshot = download_side("td-fail")
    cloudwatch = client("cloudwatch")
    result = teardown.handler(event(snapshot, "failed"), ec2=client("ec2"), cloudwatch=cloudwatch, env=env("td-fail"))
    assert result["action"] == "alarm" and state(instance) == "running" and volume_exists(volume)
    metrics = cloudwatch.list_metrics(Namespace="Test", MetricName="SnapshotFailed")["Metrics"]
    assert {"Name": "Pipeline", "Value": "td-fail"} in metrics[0]["Dimensions"]


def test_janitor_deletes_only_orphans_of_this_pipeline() -> None:
    ec2 = client("ec2")
    gone = launch_instance(ec2, "us-east-1b", "g5.xlarge")
    alive = launch_instance(ec2, "us-east-1b", "g5.xlarge")
    ec2.terminate_instances(InstanceIds=[gone])

    def volume(owner: str | None, pipeline: str = "jan") -> str:
        tag_list = [{"Key": tags.PIPELINE, "Value": pipeline}] + (
            [{"Key": tags.OWNER, "Value": owner}] if owner else []
        )
        return (available_volume(ec2, AvailabilityZone="us-east-1b", Size=8, TagSpecifications=[
            {"ResourceType": "volume", "Tags": tag_list}]))  # fmt: skip

    orphan, never_existed = volume(gone), volume("i-0123456789abcdef0")
    owned, untagged_owner, foreign = volume(alive), volume(None), volume(gone, pipeline="someone-else")
    attached = volume(gone)
    ec2.attach_volume(VolumeId=attached, InstanceId=alive, Device="/dev/sdg")
    result = janitor.handler({}, ec2=ec2, env=env("jan"))
    assert sorted(result["deleted"]) == sorted([orphan, never_existed])
    for kept in (owned, untagged_owner, foreign, attached):
        assert volume_exists(kept)


@pytest.mark.parametrize("kind", ["scheduled", "other-volume"])
def test_snapshots_that_are_not_the_dataset_are_ignored(kind: str) -> None:
    """DLM's scheduled snapshots of the data volume, and snapshots of any other volume, never tear anything down."""
    pipeline = f"td-{kind}"
    instance, volume, _dataset = download_side(pipeline)
    ec2 = client("ec2")
    if kind == "scheduled":  # what the DLM policy makes: its own tag, not the pipeline's dataset tags
        spec = [{"ResourceType": "snapshot", "Tags": [{"Key": tags.SCHEDULED, "Value": pipeline}]}]
        snapshot = completed_snapshot(ec2, VolumeId=volume, TagSpecifications=spec)
    else:
        other = available_volume(ec2, AvailabilityZone="us-east-1a", Size=8)
        snapshot = completed_snapshot(ec2, VolumeId=other)
    result = teardown.handler(event(snapshot), ec2=ec2, cloudwatch=client("cloudwatch"), env=env(pipeline))
    assert result["action"] == "ignored" and state(instance) == "running" and volume_exists(volume)
