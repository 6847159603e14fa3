"""Tear a smoke run down completely, then prove it: list whatever still carries the run's name or tag.

The teardown goes on past a failure (each part is tried, each problem
recorded) and works from the run id alone, whatever state the run reached:
the fleet, then the stacks in reverse order (waiting out any create or update
still under way), then what CloudFormation keeps (the retained buckets), the
source bucket, the snapshots, the parameters and any volume left over.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bootstrap.contract import tags
from scripts.smoke.plan import ROLES, SmokePlan
from scripts.teardown import delete_bucket, delete_snapshots, teardown_fleet

ALIVE = ["pending", "running", "shutting-down", "stopping", "stopped"]


@dataclass
class Clients:
    """The operator's AWS clients in the run's region."""

    ec2: Any
    ssm: Any
    s3: Any
    cfn: Any
    logs: Any
    tagging: Any
    sts: Any


@dataclass(frozen=True)
class Waits:
    poll: float = 10.0
    stack_seconds: float = 1800.0
    sleep: Callable[[float], None] = time.sleep


def _stack(cfn: Any, name: str) -> dict[str, Any] | None:
    """The stack, or None once it is gone (CloudFormation answers ValidationError for a deleted stack's name)."""
    try:
        (found,) = cfn.describe_stacks(StackName=name)["Stacks"]
    except cfn.exceptions.ClientError as e:
        if "does not exist" in str(e):
            return None
        raise
    return None if found["StackStatus"] == "DELETE_COMPLETE" else dict(found)


def _settled(cfn: Any, name: str, waits: Waits) -> dict[str, Any] | None:
    """Wait until no operation is under way on the stack (a stack being created cannot be deleted cleanly)."""
    deadline = time.monotonic() + waits.stack_seconds
    while (stack := _stack(cfn, name)) is not None and stack["StackStatus"].endswith("_IN_PROGRESS"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {name} is still {stack['StackStatus']} after {waits.stack_seconds:.0f}s")
        waits.sleep(waits.poll)
    return stack


def delete_stack(cfn: Any, name: str, waits: Waits) -> list[str]:
    """Delete the stack and wait until it is gone; returns the buckets it had (CloudFormation keeps retained ones)."""
    if _settled(cfn, name, waits) is None:
        return []
    pages = cfn.get_paginator("list_stack_resources").paginate(StackName=name)
    buckets = [r["PhysicalResourceId"] for page in pages for r in page["StackResourceSummaries"]
               if r.get("ResourceType") == "AWS::S3::Bucket" and r.get("PhysicalResourceId")]  # fmt: skip
    cfn.delete_stack(StackName=name)
    stack = _settled(cfn, name, waits)
    if stack is not None:
        raise RuntimeError(f"stack {name} is {stack['StackStatus']}: {stack.get('StackStatusReason', '')}")
    return buckets


def teardown(aws: Clients, plan: SmokePlan, waits: Waits, say: Callable[[str], None]) -> list[str]:
    """Delete everything the run made; returns what went wrong (an empty list: all of it went)."""
    problems: list[str] = []

    def attempt(what: str, action: Callable[..., Any], *args: Any) -> Any:
        try:
            return action(*args)
        except Exception as e:  # one part failing must not keep the others from going
            problems.append(f"{what}: {e}")
            return None

    fleet = attempt("fleet", lambda: teardown_fleet(aws.ec2, pipeline=plan.pipeline, sleep=waits.sleep))
    if fleet and fleet["terminated"]:
        say(f"terminated the fleet: {', '.join(fleet['terminated'])}")
    buckets: list[str] = []
    for role in reversed(ROLES):
        name = plan.stacks[role]
        found = attempt(f"stack {name}", delete_stack, aws.cfn, name, waits)
        if found is not None:
            buckets += found
    for bucket in [*buckets, plan.source_bucket]:
        if attempt(f"bucket {bucket}", delete_bucket, aws.s3, bucket):
            say(f"deleted bucket {bucket}")
    snapshots = attempt("snapshots", delete_snapshots, aws.ec2, plan.pipeline)
    if snapshots:
        say(f"deleted snapshots {', '.join(snapshots)}")
    attempt("parameters", _delete_parameters, aws.ssm, plan)
    attempt("volumes", _delete_volumes, aws.ec2, plan)
    return problems


def _delete_parameters(ssm: Any, plan: SmokePlan) -> None:
    for name in _parameters(ssm, plan):
        with contextlib.suppress(ssm.exceptions.ParameterNotFound):
            ssm.delete_parameter(Name=name)


def _parameters(ssm: Any, plan: SmokePlan) -> list[str]:
    pages = ssm.get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [f"/{plan.pipeline}/"]}]
    )
    return [p["Name"] for page in pages for p in page["Parameters"]]


def _delete_volumes(ec2: Any, plan: SmokePlan) -> None:
    """Volumes the stacks do not own (the dataset volume of an interrupted publish) once nothing holds them."""
    for volume in _volumes(ec2, plan):
        if volume["State"] == "available":
            ec2.delete_volume(VolumeId=volume["VolumeId"])


def _volumes(ec2: Any, plan: SmokePlan) -> list[dict[str, Any]]:
    found = ec2.describe_volumes(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [plan.pipeline]}])["Volumes"]
    return list(found)


def leftovers(aws: Clients, plan: SmokePlan) -> list[str]:
    """Everything in the region that still carries the run's name or tag, one line each (empty: nothing is left).

    Each service is asked directly; the Resource Groups Tagging API then catches any other type that carries the
    tag (it may list a resource for a while after its deletion, so a line from it names its source).
    """
    pipeline, found = plan.pipeline, []
    for name in plan.stacks.values():
        stack = _stack(aws.cfn, name)
        if stack is not None:
            found.append(f"stack {name} ({stack['StackStatus']})")
    reservations = aws.ec2.describe_instances(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]},
                                                       {"Name": "instance-state-name", "Values": ALIVE}])  # fmt: skip
    instances = {i["InstanceId"]: i["State"]["Name"] for r in reservations["Reservations"] for i in r["Instances"]}
    found += [f"instance {i} ({state})" for i, state in instances.items()]
    found += [f"volume {v['VolumeId']} ({v['State']})" for v in _volumes(aws.ec2, plan)]
    snapshots = aws.ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]}])["Snapshots"]  # fmt: skip
    found += [f"snapshot {s['SnapshotId']} ({s['State']})" for s in snapshots]
    found += [f"bucket {b['Name']}" for b in aws.s3.list_buckets().get("Buckets", []) if b["Name"].startswith(pipeline)]
    found += [f"parameter {name}" for name in _parameters(aws.ssm, plan)]
    groups = aws.logs.describe_log_groups(logGroupNamePrefix=pipeline).get("logGroups", [])
    found += [f"log group {g['logGroupName']}" for g in groups]
    known = " ".join(found)
    for page in aws.tagging.get_paginator("get_resources").paginate(
        TagFilters=[{"Key": tags.PIPELINE, "Values": [pipeline]}]
    ):
        for resource in page["ResourceTagMappingList"]:
            arn = resource["ResourceARN"]
            resource_id = arn.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
            if resource_id in known or _gone_instance(aws.ec2, arn, resource_id):
                continue
            found.append(f"{arn} (tagged {tags.PIPELINE}={pipeline}; from the Resource Groups Tagging API)")
    return found


def _gone_instance(ec2: Any, arn: str, instance_id: str) -> bool:
    """Terminated instances stay visible (and listed by the tagging API) for a while; they are gone."""
    if ":instance/" not in arn:
        return False
    found = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [instance_id]}])["Reservations"]
    return all(i["State"]["Name"] == "terminated" for r in found for i in r["Instances"])
