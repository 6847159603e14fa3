"""launch-fleet, teardown and copy-snapshot against moto (Stubber where moto cannot fail capacity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from bootstrap.common.errors import BootstrapError
from bootstrap.contract import tags
from bootstrap.contract.parameters import NOT_PUBLISHED, NOT_STARTED
from bootstrap.instance.backup import Backup, BackupOptions
from scripts.cli import run as scripts_run
from scripts.copy_snapshot import copy_snapshot
from scripts.launch import launch_fleet
from scripts.teardown import teardown_download, teardown_fleet
from tests.fixtures.aws_emulator import client
from tests.fixtures.ec2_world import AL2023
from tests.fixtures.strict_aws import attached, available_volume, completed_snapshot

pytestmark = pytest.mark.usefixtures("aws_endpoint")


def template(name: str) -> str:
    image = client("ssm").get_parameter(Name=AL2023)["Parameter"]["Value"]
    role = [{"ResourceType": "instance", "Tags": [{"Key": tags.ROLE, "Value": tags.GPU}]}]  # as the CDK template
    data = {"ImageId": image, "MetadataOptions": {"HttpTokens": "required"}, "TagSpecifications": role}
    created = client("ec2").create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)
    return str(created["LaunchTemplate"]["LaunchTemplateId"])


def subnets() -> list[str]:
    return [s["SubnetId"] for s in client("ec2").describe_subnets()["Subnets"]][:2]


def test_capacity_errors_fall_back_to_the_other_types_and_azs() -> None:
    ec2 = client("ec2")
    capacity_error = {
        "LaunchTemplateAndOverrides": {"Overrides": {"InstanceType": "g5.xlarge", "SubnetId": "s-a"}},
        "ErrorCode": "InsufficientInstanceCapacity",
        "ErrorMessage": "none left",
        "Lifecycle": "on-demand",
    }
    launched = {"InstanceIds": ["i-1", "i-2"], "InstanceType": "g6.xlarge", "Lifecycle": "on-demand"}
    second_call = {
        "Type": "instant",
        "LaunchTemplateConfigs": [{
            "LaunchTemplateSpecification": {"LaunchTemplateId": "lt-1", "Version": "$Latest"},
            "Overrides": [{"InstanceType": "g6.xlarge", "SubnetId": "s-a", "Priority": 1.0}],  # g5 is dropped
        }],
        "TargetCapacitySpecification": {"TotalTargetCapacity": 2, "DefaultTargetCapacityType": "on-demand"},
        "OnDemandOptions": ANY,
        "SpotOptions": ANY,
        "TagSpecifications": ANY,
    }  # fmt: skip
    with Stubber(ec2) as stub:
        stub.add_response("create_fleet", {"FleetId": "f-1", "Errors": [capacity_error], "Instances": []})
        stub.add_response("create_fleet", {"FleetId": "f-2", "Errors": [], "Instances": [launched]}, second_call)
        result = launch_fleet(ec2, template_id="lt-1", count=2, instance_types=["g5.xlarge", "g6.xlarge"],
                              subnets=["s-a"], pipeline="p")  # fmt: skip
        stub.assert_no_pending_responses()
    assert result["instances"] == ["i-1", "i-2"] and result["errors"][0]["error"] == "InsufficientInstanceCapacity"


def test_launch_fleet_against_the_emulator_tags_the_instances() -> None:
    result = launch_fleet(client("ec2"), template_id=template("lf"), count=2, instance_types=["g5.xlarge"],
                          subnets=subnets(), pipeline="lf", spot=True)  # fmt: skip
    assert len(result["instances"]) >= 1
    found = client("ec2").describe_instances(InstanceIds=result["instances"])["Reservations"]
    assert all({"Key": tags.PIPELINE, "Value": "lf"} in i["Tags"] for r in found for i in r["Instances"])


def _download_side(pipeline: str, tmp: Path, with_backup: bool) -> dict[str, Any]:
    ec2 = client("ec2")
    image = client("ssm").get_parameter(Name=AL2023)["Parameter"]["Value"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.large")["Instances"][0]
    volume = available_volume(ec2, AvailabilityZone=instance["Placement"]["AvailabilityZone"], Size=1000,
                               VolumeType="sc1")  # fmt: skip
    ec2.attach_volume(VolumeId=volume, InstanceId=instance["InstanceId"], Device="/dev/sdf")
    attached(ec2, volume)
    snapshot = completed_snapshot(ec2, VolumeId=volume)
    bucket = f"bk-{pipeline}"
    client("s3").create_bucket(Bucket=bucket)
    if with_backup:
        (tmp / "recordio").mkdir(parents=True)
        (tmp / "recordio" / "train.rec").write_bytes(b"rec" * 1000)
        Backup(tmp, client("s3"), BackupOptions(bucket, "imagenet")).run()
    published = {"snapshot_id": snapshot, "volume_id": volume, "source_instance_id": instance["InstanceId"],
                 "region": "us-east-1", "pipeline": pipeline,
                 "manifest": f"s3://{bucket}/imagenet/manifest.json"}  # fmt: skip
    client("ssm").put_parameter(Name=f"/{pipeline}/snapshot", Value=json.dumps(published), Type="String")
    return published


def test_teardown_download_refuses_until_backup_is_verified_then_removes_instance_and_volume(tmp_path: Path) -> None:
    ec2, ssm, s3 = client("ec2"), client("ssm"), client("s3")
    with pytest.raises(BootstrapError, match="holds no snapshot: it is not published yet"):
        teardown_download(ec2, ssm, s3, snapshot_parameter="/nope/snapshot", pipeline="nope")
    unsafe = _download_side("td-unsafe", tmp_path / "a", with_backup=False)
    with pytest.raises(BootstrapError, match="manifest"):
        teardown_download(ec2, ssm, s3, snapshot_parameter="/td-unsafe/snapshot", pipeline="td-unsafe")
    assert ec2.describe_instances(InstanceIds=[unsafe["source_instance_id"]])["Reservations"][0]["Instances"][0][
        "State"]["Name"] == "running"  # fmt: skip
    safe = _download_side("td-safe", tmp_path / "b", with_backup=True)
    result = teardown_download(ec2, ssm, s3, snapshot_parameter="/td-safe/snapshot", pipeline="td-safe")
    assert result == {"terminated": safe["source_instance_id"], "volume_deleted": True}
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [safe["volume_id"]]}])["Volumes"]


def test_teardown_fleet_leaves_no_pipeline_volume_and_the_download_instance_alone() -> None:
    ec2 = client("ec2")
    image = client("ssm").get_parameter(Name=AL2023)["Parameter"]["Value"]
    download_tags = [{"Key": tags.PIPELINE, "Value": "tf"}, {"Key": tags.ROLE, "Value": tags.DOWNLOAD}]
    download = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": download_tags}])["Instances"][0]  # fmt: skip
    result = launch_fleet(ec2, template_id=template("tf"), count=2, instance_types=["g5.xlarge"],
                          subnets=subnets(), pipeline="tf")  # fmt: skip
    owned = []
    for instance in result["instances"]:
        az = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["Placement"][
            "AvailabilityZone"]  # fmt: skip
        volume_tags = [{"Key": tags.PIPELINE, "Value": "tf"}, {"Key": tags.OWNER, "Value": instance}]
        volume = available_volume(ec2, AvailabilityZone=az, Size=8,
                                  TagSpecifications=[{"ResourceType": "volume", "Tags": volume_tags}])  # fmt: skip
        owned.append(volume)
    ec2.attach_volume(VolumeId=owned[0], InstanceId=result["instances"][0], Device="/dev/sdf")  # leaked on purpose
    report = teardown_fleet(ec2, pipeline="tf")
    assert sorted(report["terminated"]) == sorted(result["instances"]) and report["volumes_left"] == []
    described = ec2.describe_instances(InstanceIds=[download["InstanceId"]])["Reservations"][0]["Instances"][0]
    assert described["State"]["Name"] == "running"


def test_copy_snapshot_publishes_it_in_the_target_region(tmp_path: Path) -> None:
    published = _download_side("cp", tmp_path, with_backup=False)
    key = client("kms", region="us-west-2").create_key(Description="shared dataset")["KeyMetadata"]["KeyId"]
    info = copy_snapshot(client("ec2"), client("ec2", region="us-west-2"), client("ssm", region="us-west-2"),
                         published=published, source_region="us-east-1", target_region="us-west-2",
                         snapshot_parameter="/cp/snapshot", share_with=["111122223333"], kms_key_id=key,
                         poll_seconds=0.1)  # fmt: skip
    there = json.loads(client("ssm", region="us-west-2").get_parameter(Name="/cp/snapshot")["Parameter"]["Value"])
    assert there["snapshot_id"] == info["snapshot_id"] != published["snapshot_id"] and there["region"] == "us-west-2"
    attribute = client("ec2", region="us-west-2").describe_snapshot_attribute(
        SnapshotId=info["snapshot_id"], Attribute="createVolumePermission")  # fmt: skip
    assert attribute["CreateVolumePermissions"] == [{"UserId": "111122223333"}]
    again = copy_snapshot(client("ec2"), client("ec2", region="us-west-2"), client("ssm", region="us-west-2"),
                          published=published, source_region="us-east-1", target_region="us-west-2",
                          snapshot_parameter="/cp/snapshot", poll_seconds=0.1)  # fmt: skip
    assert again["snapshot_id"] == info["snapshot_id"]  # a re-run waits for the copy it made, never copies twice


def test_sharing_without_a_customer_key_is_refused_before_anything_is_copied(tmp_path: Path) -> None:
    published = _download_side("cp-nokey", tmp_path, with_backup=False)
    target = client("ec2", region="eu-west-1")
    with pytest.raises(BootstrapError, match="--share-with needs --kms-key-id"):
        copy_snapshot(client("ec2"), target, client("ssm", region="eu-west-1"), published=published,
                      source_region="us-east-1", target_region="eu-west-1", snapshot_parameter="/cp-nokey/snapshot",
                      share_with=["111122223333"])  # fmt: skip
    copied = target.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": f"tag:{tags.COPIED_FROM}", "Values": [published["snapshot_id"]]}])["Snapshots"]  # fmt: skip
    assert copied == []


def test_the_copy_is_published_even_when_sharing_fails(tmp_path: Path) -> None:
    published = _download_side("cp-share", tmp_path, with_backup=False)
    target = client("ec2", region="ap-south-1")

    def refuse(**_kwargs: Any) -> None:
        raise RuntimeError("sharing refused (injected)")

    target.meta.events.register("before-call.ec2.ModifySnapshotAttribute", refuse)
    key = client("kms", region="ap-south-1").create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(RuntimeError, match="injected"):
        copy_snapshot(client("ec2"), target, client("ssm", region="ap-south-1"), published=published,
                      source_region="us-east-1", target_region="ap-south-1", snapshot_parameter="/cp-share/snapshot",
                      share_with=["111122223333"], kms_key_id=key, poll_seconds=0.1)  # fmt: skip
    parameter = client("ssm", region="ap-south-1").get_parameter(Name="/cp-share/snapshot")["Parameter"]["Value"]
    assert json.loads(parameter)["copied_from"] == published["snapshot_id"]


def test_cli_errors_are_one_line_and_exit_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    assert scripts_run(["teardown", "download", "--snapshot-parameter", "/missing/snapshot"]) == 1
    assert "error: /missing/snapshot holds no snapshot: it is not published yet" in capsys.readouterr().err


def test_the_stacks_placeholders_read_as_nothing_published(capsys: pytest.CaptureFixture[str]) -> None:
    """Before the instance writes them, the parameters hold what the storage stack created them with."""
    for name, value in (("/placeholder/snapshot", NOT_PUBLISHED), ("/placeholder/status", NOT_STARTED)):
        client("ssm").put_parameter(Name=name, Value=json.dumps(value), Type="String", Overwrite=True)
    common = ["--pipeline", "placeholder", "--snapshot-parameter", "/placeholder/snapshot"]
    assert scripts_run(["status", *common, "--status-parameter", "/placeholder/status"]) == 0
    out = capsys.readouterr().out
    assert "status: nothing published yet" in out and "snapshot: not published yet" in out
    assert scripts_run(["teardown", "download", *common]) == 1
    assert "holds no snapshot: it is not published yet" in capsys.readouterr().err
    assert scripts_run(["copy-snapshot", *common, "--to-region", "us-west-2"]) == 1
    assert "error: /placeholder/snapshot holds no snapshot yet" in capsys.readouterr().err


def _seed_status(name: str, value: dict[str, Any]) -> None:
    client("ssm").put_parameter(Name=name, Value=json.dumps(value), Type="String", Overwrite=True)


def test_status_watch_ends_when_done_or_failed() -> None:
    import io

    from scripts.status import gather, watch

    def fetch() -> dict[str, Any]:
        return gather(client("ssm"), client("ec2"), pipeline="w", status_parameter="/w/status",
                      snapshot_parameter="/w/snapshot")  # fmt: skip

    progress = iter([{"stage": "pack train", "state": "running", "done": 10, "total": 100, "unit": "images"},
                     {"stage": "run", "state": "done"}])  # fmt: skip
    _seed_status("/w/status", next(progress))
    out = io.StringIO()
    assert watch(fetch, interval=0, out=out, sleep=lambda _s: _seed_status("/w/status", next(progress)))
    assert "[###" in out.getvalue() and "finished" in out.getvalue()
    _seed_status("/w/status", {"stage": "snapshot", "state": "failed", "last_error": "snapshot snap-1 ended in error"})
    out = io.StringIO()
    assert not watch(fetch, interval=0, out=out, sleep=lambda _s: None)
    assert "last error: snapshot snap-1 ended in error" in out.getvalue()
    _seed_status("/w/status", {"stage": "pack train", "state": "running", "done": 1, "total": 2})
    assert not watch(fetch, interval=0, out=io.StringIO(), sleep=lambda _s: None, max_polls=3)


def test_teardown_all_purge_asks_then_deletes_what_teardown_keeps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published = _download_side("pg", tmp_path, with_backup=True)
    args = ["teardown", "all", "--purge", "--pipeline", "pg", "--snapshot-parameter", "/pg/snapshot",
            "--status-parameter", "/pg/status"]  # fmt: skip
    assert scripts_run(args) == 1  # not a terminal: no confirmation, nothing deleted
    assert "not confirmed; nothing was deleted" in capsys.readouterr().err
    assert client("ec2").describe_snapshots(SnapshotIds=[published["snapshot_id"]])["Snapshots"]
    assert scripts_run([*args, "--yes"]) == 0
    assert not client("ec2").describe_snapshots(Filters=[
        {"Name": "snapshot-id", "Values": [published["snapshot_id"]]}])["Snapshots"]  # fmt: skip
    assert "bk-pg" not in [b["Name"] for b in client("s3").list_buckets()["Buckets"]]
    with pytest.raises(ClientError, match="ParameterNotFound"):
        client("ssm").get_parameter(Name="/pg/snapshot")


def _fsr(az: str, state: str) -> dict[str, Any]:
    return {"SnapshotId": "snap-1", "AvailabilityZone": az, "State": state}


def test_fast_restore_shows_its_cost_and_waits_until_enabled_per_az() -> None:
    from scripts.launch import enable_fast_restore, fast_restore_cost, fast_restore_credits
    from scripts.plan_data import load_prices

    assert fast_restore_cost(["us-east-1a", "us-east-1b"], load_prices(), hours=0.25) == pytest.approx(1.5)
    assert (fast_restore_credits(1000), fast_restore_credits(64), fast_restore_credits(100)) == (1, 10, 10)
    ec2 = client("ec2")  # moto has no FSR API: check the exact calls and the reply handling
    with Stubber(ec2) as stub:
        stub.add_response("enable_fast_snapshot_restores", {
            "Successful": [_fsr("us-east-1a", "enabling")],
            "Unsuccessful": [{"SnapshotId": "snap-1", "FastSnapshotRestoreStateErrors": [
                {"AvailabilityZone": "us-east-1b", "Error": {"Code": "x", "Message": "limit reached"}}]}]},
            {"AvailabilityZones": ["us-east-1a", "us-east-1b"], "SourceSnapshotIds": ["snap-1"]})  # fmt: skip
        for state in ("optimizing", "enabled"):  # a volume made before 'enabled' gets no benefit: wait
            stub.add_response("describe_fast_snapshot_restores", {"FastSnapshotRestores": [_fsr("us-east-1a", state)]})
        states = enable_fast_restore(ec2, "snap-1", ["us-east-1a", "us-east-1b"], sleep=lambda _s: None)
        stub.assert_no_pending_responses()
    assert states == {"us-east-1a": "enabled", "us-east-1b": "failed: limit reached"}


def test_teardown_fleet_disables_the_fast_restore_it_turned_on() -> None:
    from scripts.teardown import disable_fast_restore

    ec2 = client("ec2")
    with Stubber(ec2) as stub:
        stub.add_response("describe_fast_snapshot_restores", {"FastSnapshotRestores": [
            _fsr("us-east-1b", "enabled"), _fsr("us-east-1a", "optimizing")]})  # fmt: skip
        expected = {"AvailabilityZones": ["us-east-1a", "us-east-1b"], "SourceSnapshotIds": ["snap-1"]}
        stub.add_response("disable_fast_snapshot_restores", {}, expected)
        assert disable_fast_restore(ec2, "snap-1") == ["us-east-1a", "us-east-1b"]
        stub.assert_no_pending_responses()


def test_aws_errors_are_one_line_naming_the_call(capsys: pytest.CaptureFixture[str]) -> None:
    gone = json.dumps({"snapshot_id": "snap-0123456789abcdef0", "region": "us-east-1"})
    client("ssm").put_parameter(Name="/gone/snapshot", Type="String", Overwrite=True, Value=gone)
    code = scripts_run(["copy-snapshot", "--snapshot-parameter", "/gone/snapshot", "--to-region", "us-west-2"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: CopySnapshot: InvalidSnapshot.NotFound") and "Traceback" not in err


def test_subnets_that_assign_no_public_address_are_named() -> None:
    from scripts.launch import subnets_without_public_ips

    ec2 = client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    public, private = (ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2))
    ec2.modify_subnet_attribute(SubnetId=public, MapPublicIpOnLaunch={"Value": True})
    assert subnets_without_public_ips(ec2, [public, private]) == [private]
