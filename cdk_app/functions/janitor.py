"""Delete this pipeline's volumes that nobody can use any more; runs on a schedule.

A volume is deleted only when all of these hold: it is ``available`` (attached
volumes are never touched), it carries the pipeline tag, it names an owner
instance, and that instance no longer exists or is terminated.  Volumes without
the tags, or whose owner still runs, are left alone.  This catches what the
DeleteOnTermination race can still leak, e.g. an agent killed between
CreateVolume and AttachVolume.

Environment: PIPELINE, TAG_PIPELINE, TAG_OWNER.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger()
log.setLevel(logging.INFO)


def handler(event: dict[str, Any] | None = None, context: Any = None) -> dict[str, Any]:
    """Lambda entry point: the pipeline and tag keys come from the function's environment."""
    import boto3

    env = os.environ
    ec2 = boto3.client("ec2", region_name=env["AWS_REGION"])  # Lambda's; boto3 reads only AWS_DEFAULT_REGION
    return sweep_volumes(ec2, pipeline=env["PIPELINE"], tag_pipeline=env["TAG_PIPELINE"], tag_owner=env["TAG_OWNER"])


def sweep_volumes(ec2: Any, *, pipeline: str, tag_pipeline: str, tag_owner: str) -> dict[str, list[str]]:
    """Delete the pipeline's available volumes whose owner instance is gone; ``teardown fleet`` calls it too."""
    candidates = []
    for page in ec2.get_paginator("describe_volumes").paginate(Filters=[
        {"Name": "status", "Values": ["available"]},
        {"Name": f"tag:{tag_pipeline}", "Values": [pipeline]}]):  # fmt: skip
        candidates.extend(page["Volumes"])
    deleted, kept = [], []
    for volume in candidates:
        owner = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}.get(tag_owner)
        if not owner:
            kept.append(volume["VolumeId"])
            continue
        reservations = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [owner]}])["Reservations"]
        states = [i["State"]["Name"] for r in reservations for i in r["Instances"]]
        if states and states[0] != "terminated":
            kept.append(volume["VolumeId"])
            continue
        ec2.delete_volume(VolumeId=volume["VolumeId"])
        log.info("deleted %s: its owner %s is gone", volume["VolumeId"], owner)
        deleted.append(volume["VolumeId"])
    return {"deleted": deleted, "kept": kept}
