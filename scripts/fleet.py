"""Launch GPU fleets from the template, tear things down, take the snapshot to other regions.

Every function takes its boto3 clients as arguments; the CLI makes them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from bootstrap.common.errors import BootstrapError
from bootstrap.contract import tags
from bootstrap.contract.parameters import read_published
from bootstrap.instance.backup import BackupOptions, verify_backup
from cdk_app.functions.janitor import handler as sweep_volumes
from cdk_app.functions.teardown import terminate_with_volume

CAPACITY_ERRORS = {"InsufficientInstanceCapacity", "InsufficientCapacity", "UnfulfillableCapacity"}


class OperatorError(BootstrapError):
    """An operator command could not do what was asked; the message says why."""


def require_published(ssm: Any, name: str) -> dict[str, Any]:
    published = read_published(ssm, name)
    if published is None:
        raise OperatorError(f"{name} holds no snapshot yet: the download instance has not published one "
                            "(python -m scripts status shows where it is)")  # fmt: skip
    return published


def launch_fleet(ec2: Any, *, template_id: str, count: int, instance_types: list[str], subnets: list[str],
                 pipeline: str, spot: bool = False, version: str = "$Latest") -> dict[str, Any]:  # fmt: skip
    """CreateFleet (instant) over every type x subnet; on capacity errors, try again without what failed."""
    overrides = [{"InstanceType": t, "SubnetId": s, "Priority": float(p)}
                 for p, (t, s) in enumerate((t, s) for t in instance_types for s in subnets)]  # fmt: skip
    launched: list[str] = []
    failed: list[dict[str, str]] = []
    while len(launched) < count and overrides:
        response = ec2.create_fleet(
            Type="instant",
            LaunchTemplateConfigs=[
                {
                    "LaunchTemplateSpecification": {"LaunchTemplateId": template_id, "Version": version},
                    "Overrides": overrides,
                }
            ],
            TargetCapacitySpecification={
                "TotalTargetCapacity": count - len(launched),
                "DefaultTargetCapacityType": "spot" if spot else "on-demand",
            },
            OnDemandOptions={"AllocationStrategy": "prioritized"},
            SpotOptions={"AllocationStrategy": "price-capacity-optimized"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": tags.PIPELINE, "Value": pipeline}]}],
        )
        launched += [i for group in response.get("Instances", []) for i in group.get("InstanceIds", [])]
        bad = set()
        for error in response.get("Errors", []):
            o = error.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
            failed.append({"type": o.get("InstanceType", "?"), "subnet": o.get("SubnetId", "?"),
                           "error": error.get("ErrorCode", "?")})  # fmt: skip
            if error.get("ErrorCode") in CAPACITY_ERRORS:
                bad.add((o.get("InstanceType"), o.get("SubnetId")))
        if not bad:
            break
        overrides = [o for o in overrides if (o["InstanceType"], o["SubnetId"]) not in bad]
    return {"requested": count, "instances": launched, "errors": failed}


def subnet_azs(ec2: Any, subnets: list[str]) -> list[str]:
    return sorted({s["AvailabilityZone"] for s in ec2.describe_subnets(SubnetIds=subnets)["Subnets"]})


def fast_restore_cost(azs: list[str], prices: dict[str, Any], hours: float = 1.0) -> float:
    """FSR bills per snapshot per AZ per hour, with a one-hour minimum."""
    return float(len(azs) * max(hours, 1.0) * prices["fsr_dsu_hour"])


def enable_fast_restore(ec2: Any, snapshot_id: str, azs: list[str]) -> dict[str, str]:
    """Turn FSR on for the snapshot in these AZs; returns AZ -> state (it reaches 'enabled' after ~1 h per TiB)."""
    response = ec2.enable_fast_snapshot_restores(AvailabilityZones=azs, SourceSnapshotIds=[snapshot_id])
    states = {item["AvailabilityZone"]: item["State"] for item in response.get("Successful", [])}
    for item in response.get("Unsuccessful", []):
        for error in item.get("FastSnapshotRestoreStateErrors", []):
            states[error["AvailabilityZone"]] = f"failed: {error['Error']['Message']}"
    return states


def wait_for_datasets(ec2: Any, instance_ids: list[str], timeout: float = 900, poll: float = 10,
                      sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:  # fmt: skip
    """Until every instance carries the ready tag its attach agent sets: instance -> volume."""
    deadline = time.monotonic() + timeout
    while True:
        ready = {}
        for r in ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]:
            for i in r["Instances"]:
                volume = {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get(tags.READY)
                if volume:
                    ready[i["InstanceId"]] = volume
        if len(ready) == len(instance_ids) or time.monotonic() > deadline:
            return ready
        sleep(poll)


def teardown_download(ec2: Any, ssm: Any, s3: Any, *, snapshot_parameter: str, pipeline: str,
                      force: bool = False, keep_volume: bool = False, cfn: Any = None) -> dict[str, Any]:  # fmt: skip
    """Terminate the download instance (and its data volume) once the snapshot and backup are safe.

    With ``cfn``, delete the ``<pipeline>-download`` stack instead, which takes the
    instance, its volume (unless the stack keeps it), role and log group.
    """
    published = read_published(ssm, snapshot_parameter)
    if published is None and not force:
        raise OperatorError(f"{snapshot_parameter} holds no snapshot: it is not published yet. "
                            "Wait for it, or pass --force to tear down anyway")  # fmt: skip
    published = published or {}
    snapshot_id = published.get("snapshot_id")
    problems = []
    if snapshot_id:
        state = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"]
        if state != "completed":
            problems.append(f"snapshot {snapshot_id} is {state}")
        bucket, _, prefix = published["manifest"].removeprefix("s3://").partition("/")
        differences = verify_backup(s3, BackupOptions(bucket, prefix.rsplit("/", 1)[0]))
        problems += [f"backup: {d}" for d in differences]
    if problems and not force:
        raise OperatorError("refusing to tear down: " + "; ".join(problems[:5]) + " (pass --force to override)")
    if cfn is not None:
        stack = f"{pipeline}-download"
        cfn.delete_stack(StackName=stack)
        cfn.get_waiter("stack_delete_complete").wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 90})
        return {"stack_deleted": stack}
    instance_id = published.get("source_instance_id")
    if not instance_id:
        return {"terminated": None, "note": "no download instance is recorded in the snapshot parameter"}
    gone = not terminate_with_volume(ec2, instance_id, published.get("volume_id", ""), keep_volume=keep_volume)
    return {"terminated": None if gone else instance_id, "volume_deleted": not keep_volume and not gone}


def teardown_fleet(ec2: Any, *, pipeline: str, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Terminate every instance of the pipeline's fleet and make sure no dataset volume is left."""
    alive = ["pending", "running", "stopping", "stopped"]
    found = ec2.describe_instances(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]},
                                            {"Name": "instance-state-name", "Values": alive}])  # fmt: skip
    ids = [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)
        ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    swept = sweep_volumes(
        {}, ec2=ec2, env={"PIPELINE": pipeline, "TAG_PIPELINE": tags.PIPELINE, "TAG_OWNER": tags.OWNER}
    )
    left = ec2.describe_volumes(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]},
                                         {"Name": "tag-key", "Values": [tags.OWNER]}])["Volumes"]  # fmt: skip
    return {"terminated": ids, "orphans_deleted": swept["deleted"], "volumes_left": [v["VolumeId"] for v in left]}


def copy_snapshot(source_ec2: Any, target_ec2: Any, target_ssm: Any, *, published: dict[str, Any], source_region: str,
                  target_region: str, snapshot_parameter: str, kms_key_id: str | None = None,
                  share_with: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Copy the dataset snapshot to ``target_region``, optionally share it, and publish it there."""
    request: dict[str, Any] = {
        "SourceRegion": source_region, "SourceSnapshotId": published["snapshot_id"], "Encrypted": True,
        "Description": f"copy of {published['snapshot_id']} from {source_region}",
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": [
            {"Key": tags.PIPELINE, "Value": published.get("pipeline", "")},
            {"Key": tags.DATASET, "Value": published.get("dataset", "")}]}],
    }  # fmt: skip
    if kms_key_id:
        request["KmsKeyId"] = kms_key_id
    copy_id = target_ec2.copy_snapshot(**request)["SnapshotId"]
    target_ec2.get_waiter("snapshot_completed").wait(
        SnapshotIds=[copy_id], WaiterConfig={"Delay": 15, "MaxAttempts": 960}
    )
    if share_with:
        target_ec2.modify_snapshot_attribute(SnapshotId=copy_id, Attribute="createVolumePermission",
                                             OperationType="add", UserIds=share_with)  # fmt: skip
    info = {**published, "snapshot_id": copy_id, "region": target_region, "copied_from": published["snapshot_id"]}
    target_ssm.put_parameter(Name=snapshot_parameter, Value=json.dumps(info, sort_keys=True), Type="String",
                             Overwrite=True)  # fmt: skip
    return info


def purge(ec2: Any, ssm: Any, s3: Any, *, pipeline: str, snapshot_parameter: str,
          status_parameter: str) -> dict[str, Any]:  # fmt: skip
    """Delete what teardown keeps: the pipeline's snapshots, the backup bucket, the published parameters."""
    published = read_published(ssm, snapshot_parameter) or {}
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]}])["Snapshots"]  # fmt: skip
    ids = {s["SnapshotId"] for s in snapshots} | ({published["snapshot_id"]} if "snapshot_id" in published else set())
    for snapshot_id in sorted(ids):
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    bucket = published.get("manifest", "").removeprefix("s3://").partition("/")[0]
    if bucket:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                      for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]  # fmt: skip
            if doomed:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed})
        s3.delete_bucket(Bucket=bucket)
    for name in (snapshot_parameter, status_parameter):
        with contextlib.suppress(ssm.exceptions.ParameterNotFound):
            ssm.delete_parameter(Name=name)
    return {"snapshots_deleted": sorted(ids), "bucket_deleted": bucket or None}
