"""The teardown and janitor functions as Lambda runs them, under their synthesized roles, against the strict layer.

Each invocation is a fresh process with Lambda's environment (``lambda_runtime``):
the template's variables, the region and the execution role's credentials.
Every call is authorized against the role the template gives the function,
and the download instance, its data volume and the GPU instances carry the
tags their templates give them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bootstrap.contract import tags
from bootstrap.instance.snapshot import SnapshotRequest, snapshot_tags
from tests.fixtures.aws_emulator import client
from tests.fixtures.deployment import Deployment, Names
from tests.fixtures.ec2_world import launch_instance
from tests.fixtures.lambda_runtime import invoke
from tests.fixtures.strict_aws import StrictAws, attached, available_volume, completed_snapshot

pytestmark = pytest.mark.usefixtures("aws_endpoint")


class Functions:
    """The pipeline's two functions as deployed for ``pipeline``."""

    def __init__(self, strict: StrictAws, deployment: Deployment, pipeline: str, **variables: str) -> None:
        self.strict, self.deployment, self.names = strict, deployment, Names(pipeline)
        self.variables = variables

    def _invoke(self, which: str, event: dict[str, Any]) -> dict[str, Any]:
        role = self.deployment.role(which, self.names)
        variables = {**self.deployment.function_environment(which, self.names), **self.variables}
        with self.strict.enforcing(role):
            return invoke(which, event, variables, role)

    def teardown(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._invoke("teardown", event)

    def janitor(self) -> dict[str, Any]:
        return self._invoke("janitor", {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})


@pytest.fixture
def functions(strict_aws: StrictAws, deployment: Deployment) -> Any:
    return lambda pipeline, **variables: Functions(strict_aws, deployment, pipeline, **variables)


def download_side(deployment: Deployment, pipeline: str) -> tuple[str, str, str]:
    """A download instance with its data volume attached and a dataset snapshot of it: (instance, volume, snapshot).

    Instance and volume carry the tags the download stack gives them; the snapshot the stage's tags.
    """
    names, ec2 = Names(pipeline), client("ec2")
    instance = launch_instance(ec2, "us-east-1a", tags=deployment.download_instance_tags(names))
    volume = available_volume(ec2, AvailabilityZone="us-east-1a", Size=1000, VolumeType="sc1", TagSpecifications=[
        {"ResourceType": "volume", "Tags": deployment.data_volume_tags(names)}])  # fmt: skip
    ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdf")
    attached(ec2, volume)
    spec = [{"ResourceType": "snapshot", "Tags": _dataset_tags(pipeline, instance)}]
    snapshot = completed_snapshot(ec2, VolumeId=volume, TagSpecifications=spec)  # no listener: its event is lost
    return instance, volume, snapshot


def published_dataset(deployment: Deployment, pipeline: str) -> tuple[str, str, str]:
    """The download side after the default publish: the snapshot is of the right-sized dataset volume, and names
    the work volume in its tags: (instance, work volume, snapshot)."""
    instance, work, _ = download_side(deployment, pipeline)
    ec2 = client("ec2")
    dataset = available_volume(ec2, AvailabilityZone="us-east-1a", Size=2, VolumeType="gp3", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": tags.PIPELINE, "Value": pipeline},
                                            {"Key": tags.DATASET_VOLUME, "Value": pipeline}]}])  # fmt: skip
    spec = [{"ResourceType": "snapshot",
             "Tags": [*_dataset_tags(pipeline, instance), {"Key": tags.WORK_VOLUME, "Value": work}]}]  # fmt: skip
    return instance, work, completed_snapshot(ec2, VolumeId=dataset, TagSpecifications=spec)


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


def heartbeat_alarm(pipeline: str) -> str:
    """The download stack's heartbeat alarm (the teardown function disarms it by name)."""
    name = f"{pipeline}-download-heartbeat"
    client("cloudwatch").put_metric_alarm(AlarmName=name, MetricName="Heartbeat", Namespace="T", Statistic="Sum",
                                          Period=600, EvaluationPeriods=3, Threshold=1,
                                          ComparisonOperator="LessThanThreshold")  # fmt: skip
    return name


@pytest.mark.parametrize("arn_style", [0, 1])
def test_succeeded_terminates_the_instance_and_deletes_its_volume(
    arn_style: int, deployment: Deployment, functions: Any
) -> None:
    pipeline = f"td-ok-{arn_style}"
    instance, volume, snapshot = download_side(deployment, pipeline)
    heartbeat_alarm(pipeline)
    result = functions(pipeline).teardown(event(snapshot, arn_style=arn_style))
    assert result["action"] == "terminated" and state(instance) == "terminated"
    assert not volume_exists(volume)
    again = functions(pipeline).teardown(event(snapshot))
    assert again["action"] == "none"  # redelivery: no error, no second action


def test_a_snapshot_of_the_dataset_volume_takes_the_work_volume_with_the_instance(
    deployment: Deployment, functions: Any
) -> None:
    pipeline = "td-packed"
    instance, work, snapshot = published_dataset(deployment, pipeline)
    heartbeat_alarm(pipeline)
    result = functions(pipeline).teardown(event(snapshot))
    assert result["action"] == "terminated" and state(instance) == "terminated" and not volume_exists(work)
    published = json.loads(client("ssm").get_parameter(Name=f"/{pipeline}/snapshot")["Parameter"]["Value"])
    assert published["snapshot_id"] == snapshot and published["volume_size_gib"] == 2


def test_success_deletes_the_policys_scheduled_snapshots_of_that_volume_only(
    deployment: Deployment, functions: Any
) -> None:
    pipeline = "td-sched"
    instance, volume, dataset = download_side(deployment, pipeline)
    heartbeat_alarm(pipeline)
    ec2 = client("ec2")

    def scheduled(volume_id: str, value: str = pipeline) -> str:
        spec = [{"ResourceType": "snapshot", "Tags": [{"Key": tags.SCHEDULED, "Value": value}]}]
        return completed_snapshot(ec2, VolumeId=volume_id, TagSpecifications=spec)

    ours = [scheduled(volume), scheduled(volume)]
    other_volume = available_volume(ec2, AvailabilityZone="us-east-1a", Size=8)
    kept = [dataset, scheduled(volume, "another-pipeline"), scheduled(other_volume)]
    result = functions(pipeline).teardown(event(dataset))
    assert sorted(result["scheduled_snapshots_deleted"]) == sorted(ours) and state(instance) == "terminated"
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert set(kept) <= left and not set(ours) & left


def test_keep_volume_keeps_it(deployment: Deployment, functions: Any) -> None:
    instance, volume, snapshot = download_side(deployment, "td-keep")
    heartbeat_alarm("td-keep")
    functions("td-keep", KEEP_VOLUME="true").teardown(event(snapshot))  # what keep_data_volume=true deploys
    assert state(instance) == "terminated" and volume_exists(volume)


def test_other_pipelines_snapshot_is_ignored(deployment: Deployment, functions: Any) -> None:
    instance, _volume, snapshot = download_side(deployment, "td-theirs")
    result = functions("td-ours").teardown(event(snapshot))
    assert result["action"] == "ignored" and state(instance) == "running"


def test_failed_snapshot_keeps_the_instance_and_raises_the_alarm_metric(deployment: Deployment, functions: Any) -> None:
    instance, volume, snapshot = download_side(deployment, "td-fail")
    result = functions("td-fail").teardown(event(snapshot, "failed"))
    assert result["action"] == "alarm" and state(instance) == "running" and volume_exists(volume)
    namespace = deployment.function_environment("teardown", Names("td-fail"))["METRIC_NAMESPACE"]
    metrics = client("cloudwatch").list_metrics(Namespace=namespace, MetricName="SnapshotFailed")["Metrics"]
    assert any({"Name": "Pipeline", "Value": "td-fail"} in m["Dimensions"] for m in metrics)


def test_janitor_deletes_only_orphans_of_this_pipeline(functions: Any) -> None:
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
    result = functions("jan").janitor()
    assert sorted(result["deleted"]) == sorted([orphan, never_existed])
    for kept in (owned, untagged_owner, foreign, attached):
        assert volume_exists(kept)


@pytest.mark.parametrize("kind", ["scheduled", "other-volume"])
def test_snapshots_that_are_not_the_dataset_are_ignored(kind: str, deployment: Deployment, functions: Any) -> None:
    """DLM's scheduled snapshots of the data volume, and snapshots of any other volume, never tear anything down."""
    pipeline = f"td-{kind}"
    instance, volume, _dataset = download_side(deployment, pipeline)
    ec2 = client("ec2")
    if kind == "scheduled":  # what the DLM policy makes: its own tag, not the pipeline's dataset tags
        spec = [{"ResourceType": "snapshot", "Tags": [{"Key": tags.SCHEDULED, "Value": pipeline}]}]
        snapshot = completed_snapshot(ec2, VolumeId=volume, TagSpecifications=spec)
    else:
        other = available_volume(ec2, AvailabilityZone="us-east-1a", Size=8)
        snapshot = completed_snapshot(ec2, VolumeId=other)
    result = functions(pipeline).teardown(event(snapshot))
    assert result["action"] == "ignored" and state(instance) == "running" and volume_exists(volume)


def _dataset_tags(pipeline: str, instance: str) -> list[dict[str, str]]:
    """What the instance's snapshot stage tags a dataset snapshot with (``snapshot_tags``)."""
    request = SnapshotRequest(pipeline, "ILSVRC2012", "ab" * 32, f"s3://bk-{pipeline}/imagenet/manifest.json",
                              {"train": 46, "val": 24}, 12345)  # fmt: skip
    return snapshot_tags(request, instance)


def test_the_event_racing_the_instance_publishes_before_it_terminates(
    strict_aws: StrictAws, deployment: Deployment, functions: Any
) -> None:
    """The event arrives when the snapshot completes, before the instance's next poll: the function publishes."""
    pipeline = "td-race"
    instance, volume, _ = download_side(deployment, pipeline)
    heartbeat_alarm(pipeline)
    ec2, ssm = client("ec2"), client("ssm")
    seen: list[tuple[dict[str, Any], str]] = []

    def lambda_invoked(event: dict[str, Any]) -> None:
        result = functions(pipeline).teardown(event)
        if result["action"] == "terminated":  # what a GPU instance booting now would read
            seen.append((result, ssm.get_parameter(Name=f"/{pipeline}/snapshot")["Parameter"]["Value"]))

    strict_aws.listeners.append(lambda_invoked)
    try:
        snapshot = ec2.create_snapshot(VolumeId=volume, TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": _dataset_tags(pipeline, instance)}])["SnapshotId"]  # fmt: skip
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        strict_aws.listeners.remove(lambda_invoked)
    assert seen, "the snapshot-completed event never reached the function"
    result, parameter = seen[0]
    published = json.loads(parameter)
    assert result["published_by_function"] and published["snapshot_id"] == snapshot
    assert published["images"] == {"train": 46, "val": 24} and published["source_instance_id"] == instance
    assert published["manifest"] == f"s3://bk-{pipeline}/imagenet/manifest.json" and published["region"] == "us-east-1"
    assert state(instance) in ("shutting-down", "terminated")


def test_a_lost_event_is_made_good_by_the_scheduled_sweep(deployment: Deployment, functions: Any) -> None:
    pipeline = "td-lost"
    instance, _, snapshot = download_side(deployment, pipeline)  # completed, and nobody heard of it
    assert state(instance) == "running"
    alarm_name = heartbeat_alarm(pipeline)
    scheduled = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    result = functions(pipeline).teardown(scheduled)
    assert [r["snapshot_id"] for r in result["finished"]] == [snapshot] and state(instance) == "terminated"
    alarm = client("cloudwatch").describe_alarms(AlarmNames=[alarm_name])["MetricAlarms"][0]
    assert alarm["ActionsEnabled"] is False  # the silence of a finished run is no alert
    ssm = client("ssm")
    assert json.loads(ssm.get_parameter(Name=f"/{pipeline}/snapshot")["Parameter"]["Value"])["snapshot_id"] == snapshot
    assert functions(pipeline).teardown(scheduled)["finished"] == []


def test_the_function_never_overwrites_what_the_instance_published(deployment: Deployment, functions: Any) -> None:
    pipeline = "td-instance-first"
    _, _, snapshot = download_side(deployment, pipeline)
    heartbeat_alarm(pipeline)
    ssm = client("ssm")
    ssm.put_parameter(Name=f"/{pipeline}/snapshot", Type="String", Overwrite=True,
                      Value=json.dumps({"snapshot_id": snapshot, "published_by": "instance"}))  # fmt: skip
    result = functions(pipeline).teardown(event(snapshot))
    assert result["action"] == "terminated" and not result["published_by_function"]
    assert (
        json.loads(ssm.get_parameter(Name=f"/{pipeline}/snapshot")["Parameter"]["Value"])["published_by"] == "instance"
    )
