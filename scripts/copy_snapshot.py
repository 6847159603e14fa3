"""``copy-snapshot``: the dataset snapshot in another region (optionally shared), published there."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bootstrap.common.aws import client
from bootstrap.contract import tags
from bootstrap.instance.snapshot import wait_for_snapshot
from cdk_app.config import StagingConfig
from scripts.common import OperatorError, add_pipeline_args, clients, require_published

HELP = "copy the dataset snapshot to another region, optionally share it"


def add_arguments(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    add_pipeline_args(parser, deployed)
    parser.add_argument("--to-region", required=True)
    parser.add_argument(
        "--kms-key-id", help="a customer key in the target region (needed to share with other accounts)"
    )
    parser.add_argument("--share-with", default="", help="comma-separated account ids")


def command(args: argparse.Namespace) -> tuple[Any, str]:
    source_ec2, source_ssm = clients(args, "ec2", "ssm")
    published = require_published(source_ssm, args.snapshot_parameter)
    info = copy_snapshot(source_ec2, client("ec2", region=args.to_region), client("ssm", region=args.to_region),
                         published=published, source_region=published["region"], target_region=args.to_region,
                         snapshot_parameter=args.snapshot_parameter, kms_key_id=args.kms_key_id,
                         share_with=[a for a in args.share_with.split(",") if a])  # fmt: skip
    note = f"\nnote: {SHARING}" if args.share_with else ""
    return info, f"{info['snapshot_id']} in {args.to_region}, published in {args.snapshot_parameter} there{note}"


SHARING = (
    "the other account cannot see this account's tags on a shared snapshot, so a role there that allows "
    "ec2:CreateVolume on snapshots by tag (as this pipeline's GPU role does) never matches it: give that role "
    "ec2:CreateVolume on the snapshot's ARN, and kms:CreateGrant/Decrypt/GenerateDataKeyWithoutPlaintext/DescribeKey "
    "on the customer key (the key policy must allow that account too)"
)


def copy_snapshot(source_ec2: Any, target_ec2: Any, target_ssm: Any, *, published: dict[str, Any], source_region: str,
                  target_region: str, snapshot_parameter: str, kms_key_id: str | None = None,
                  share_with: list[str] | None = None, poll_seconds: float = 15.0) -> dict[str, Any]:  # fmt: skip
    """Copy the dataset snapshot to ``target_region``, publish it there, then share it if asked.

    A copy already made from the same snapshot (a run that was interrupted) is waited for instead of copied again.
    """
    if share_with and not kms_key_id:
        raise OperatorError("--share-with needs --kms-key-id: a snapshot encrypted with the default aws/ebs key "
                            "cannot be shared with another account; copy it with a customer key whose policy lets "
                            "that account use it")  # fmt: skip
    copy_id = _existing_copy(target_ec2, published["snapshot_id"]) or _start_copy(
        target_ec2, published, source_region, kms_key_id
    )
    wait_for_snapshot(target_ec2, copy_id, poll_seconds=poll_seconds, timeout_seconds=4 * 3600)
    info = {**published, "snapshot_id": copy_id, "region": target_region, "copied_from": published["snapshot_id"]}
    target_ssm.put_parameter(Name=snapshot_parameter, Value=json.dumps(info, sort_keys=True), Type="String",
                             Overwrite=True)  # fmt: skip
    if share_with:
        target_ec2.modify_snapshot_attribute(SnapshotId=copy_id, Attribute="createVolumePermission",
                                             OperationType="add", UserIds=share_with)  # fmt: skip
        info["shared_with"] = share_with
    return info


def _existing_copy(target_ec2: Any, source_snapshot_id: str) -> str | None:
    found = target_ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": f"tag:{tags.COPIED_FROM}", "Values": [source_snapshot_id]},
        {"Name": "status", "Values": ["pending", "completed"]}])["Snapshots"]  # fmt: skip
    return str(found[0]["SnapshotId"]) if found else None


def _start_copy(target_ec2: Any, published: dict[str, Any], source_region: str, kms_key_id: str | None) -> str:
    request: dict[str, Any] = {
        "SourceRegion": source_region, "SourceSnapshotId": published["snapshot_id"], "Encrypted": True,
        "Description": f"copy of {published['snapshot_id']} from {source_region}",
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": [
            {"Key": tags.PIPELINE, "Value": published.get("pipeline", "")},
            {"Key": tags.DATASET, "Value": published.get("dataset", "")},
            {"Key": tags.COPIED_FROM, "Value": published["snapshot_id"]}]}],
    }  # fmt: skip
    if kms_key_id:
        request["KmsKeyId"] = kms_key_id
    return str(target_ec2.copy_snapshot(**request)["SnapshotId"])
