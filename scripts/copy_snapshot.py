"""``copy-snapshot``: the dataset snapshot in another region (optionally shared), published there."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bootstrap.common.aws import client
from bootstrap.contract import tags
from cdk_app.config import StagingConfig
from scripts.common import add_pipeline_args, clients, require_published

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
    note = ("" if not args.share_with or args.kms_key_id else
            "\nnote: a snapshot encrypted with the default aws/ebs key cannot be used by another account; copy it "
            "with --kms-key-id of a customer key whose policy lets that account use it")  # fmt: skip
    return info, f"{info['snapshot_id']} in {args.to_region}, published in {args.snapshot_parameter} there{note}"


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
