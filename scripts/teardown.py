"""``teardown``: the download side once its snapshot is safe, the fleet, or everything (with ``--purge``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bootstrap.contract import tags
from bootstrap.contract.parameters import read_published
from bootstrap.instance.backup import BackupOptions, verify_backup
from cdk_app.config import StagingConfig
from cdk_app.functions.janitor import sweep_volumes
from cdk_app.functions.teardown import terminate_with_volume
from scripts.common import OperatorError, add_pipeline_args, clients

HELP = "download: after the snapshot; fleet: every GPU instance; all"


def add_arguments(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    add_pipeline_args(parser, deployed)
    add = parser.add_argument
    add("what", choices=("download", "fleet", "all"))
    add("--force", action="store_true", help="download: even before snapshot and backup are verified")
    add("--keep-volume", action="store_true", help="download: keep the data volume")
    add("--destroy-stack", action="store_true", help="download: delete the CDK download stack (all of its resources)")
    add("--purge", action="store_true", help="all: also delete the snapshots, backup bucket and parameters")
    add("--yes", action="store_true", help="with --purge: do not ask for confirmation")
    add("--status-parameter", default=deployed.status_parameter)


def _confirm(pipeline: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"Delete every snapshot, the backup bucket and the parameters of {pipeline}? Type the name: ")
    return answer.strip() == pipeline


def command(args: argparse.Namespace) -> tuple[Any, str]:
    ec2, ssm, s3 = clients(args, "ec2", "ssm", "s3")
    result = {}
    if args.purge and args.what != "all":
        raise OperatorError("--purge goes with 'teardown all'")
    if args.purge and not args.yes and not _confirm(args.pipeline):
        raise OperatorError("not confirmed; nothing was deleted (pass --yes to skip the question)")
    if args.what in ("fleet", "all"):  # first: a fleet comes down whatever the download side's state
        result["fleet"] = teardown_fleet(ec2, pipeline=args.pipeline)
        published = read_published(ssm, args.snapshot_parameter)
        if published:
            result["fleet"]["fast_restore_disabled"] = disable_fast_restore(ec2, published["snapshot_id"])
    if args.what in ("download", "all"):
        cfn = clients(args, "cloudformation")[0] if args.destroy_stack else None
        result["download"] = teardown_download(ec2, ssm, s3, snapshot_parameter=args.snapshot_parameter,
                                               pipeline=args.pipeline, force=args.force or args.purge,
                                               keep_volume=args.keep_volume, cfn=cfn)  # fmt: skip
    if args.purge:
        result["purge"] = purge(ec2, ssm, s3, pipeline=args.pipeline, snapshot_parameter=args.snapshot_parameter,
                                status_parameter=args.status_parameter)  # fmt: skip
    return result, json.dumps(result, indent=2)


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


def disable_fast_restore(ec2: Any, snapshot_id: str) -> list[str]:
    """Turn off fast snapshot restore wherever it is on for the dataset snapshot (it bills per AZ-hour)."""
    found = ec2.describe_fast_snapshot_restores(Filters=[
        {"Name": "snapshot-id", "Values": [snapshot_id]},
        {"Name": "state", "Values": ["enabling", "optimizing", "enabled"]}])["FastSnapshotRestores"]  # fmt: skip
    azs = sorted({item["AvailabilityZone"] for item in found})
    if azs:
        ec2.disable_fast_snapshot_restores(AvailabilityZones=azs, SourceSnapshotIds=[snapshot_id])
    return azs


def teardown_fleet(ec2: Any, *, pipeline: str, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Terminate every instance of the pipeline's fleet and make sure no dataset volume is left.

    Only GPU instances: the launch template alone tags them with the GPU role; the download instance carries
    the pipeline tag too and is left alone.
    """
    alive = ["pending", "running", "stopping", "stopped"]
    found = ec2.describe_instances(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]},
                                            {"Name": f"tag:{tags.ROLE}", "Values": [tags.GPU]},
                                            {"Name": "instance-state-name", "Values": alive}])  # fmt: skip
    ids = [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)
        ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    swept = sweep_volumes(ec2, pipeline=pipeline, tag_pipeline=tags.PIPELINE, tag_owner=tags.OWNER)
    left = ec2.describe_volumes(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]},
                                         {"Name": "tag-key", "Values": [tags.OWNER]}])["Volumes"]  # fmt: skip
    return {"terminated": ids, "orphans_deleted": swept["deleted"], "volumes_left": [v["VolumeId"] for v in left]}


def purge(ec2: Any, ssm: Any, s3: Any, *, pipeline: str, snapshot_parameter: str,
          status_parameter: str) -> dict[str, Any]:  # fmt: skip
    """Delete what teardown keeps: the pipeline's snapshots, the backup bucket, the published parameters."""
    published = read_published(ssm, snapshot_parameter) or {}
    deleted = delete_snapshots(ec2, pipeline, also=[published["snapshot_id"]] if "snapshot_id" in published else [])
    bucket = published.get("manifest", "").removeprefix("s3://").partition("/")[0]
    if bucket:
        delete_bucket(s3, bucket)
    for name in (snapshot_parameter, status_parameter):
        with contextlib.suppress(ssm.exceptions.ParameterNotFound):
            ssm.delete_parameter(Name=name)
    return {"snapshots_deleted": deleted, "bucket_deleted": bucket or None}


def delete_snapshots(ec2: Any, pipeline: str, also: Sequence[str] = ()) -> list[str]:
    """Delete every snapshot of ours tagged with the pipeline, and ``also`` these; returns their ids."""
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]}])["Snapshots"]  # fmt: skip
    ids = sorted({s["SnapshotId"] for s in snapshots} | set(also))
    for snapshot_id in ids:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    return ids


def delete_bucket(s3: Any, bucket: str, attempts: int = 5) -> bool:
    """Delete every version and delete marker in ``bucket``, then the bucket; False if it did not exist.

    Tries again when S3 says it is not empty: server access logs are delivered late, into a bucket being emptied.
    """
    for attempt in range(attempts):
        try:
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                          for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]  # fmt: skip
                if doomed:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed})
            s3.delete_bucket(Bucket=bucket)
            return True
        except s3.exceptions.ClientError as e:
            code = e.response["Error"]["Code"]
            if code == "NoSuchBucket":
                return False
            if code != "BucketNotEmpty" or attempt == attempts - 1:
                raise
    return True
