"""``launch-fleet``: N GPU instances from the launch template, optionally with fast snapshot restore first."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from bootstrap.contract import tags
from cdk_app.config import StagingConfig
from scripts.common import OperatorError, add_pipeline_args, clients, require_published
from scripts.plan_data import load_prices

CAPACITY_ERRORS = {"InsufficientInstanceCapacity", "InsufficientCapacity", "UnfulfillableCapacity"}
HELP = "N GPU instances from the launch template (CreateFleet, instant)"


def add_arguments(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    add_pipeline_args(parser, deployed)
    parser.add_argument("--launch-template-id", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--instance-types", default="g5.xlarge", help="comma-separated, in order of preference")
    parser.add_argument("--subnets", required=True, help="comma-separated subnet ids (their AZs are where to look)")
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--wait", action="store_true", help="wait until every instance reports its dataset mounted")
    parser.add_argument(
        "--fast-restore",
        action="store_true",
        help="enable fast snapshot restore in the subnets' AZs first (billed per AZ-hour; cost shown)",
    )


def command(args: argparse.Namespace) -> tuple[Any, str]:
    ec2, ssm = clients(args, "ec2", "ssm")
    subnets = args.subnets.split(",")
    private = subnets_without_public_ips(ec2, subnets)
    if private:
        print(f"warning: {', '.join(private)} assign no public addresses: instances there need a NAT gateway or "
              "VPC endpoints (S3, SSM, EC2) to install and attach the dataset; without them their user data fails "
              "and they shut down", file=sys.stderr)  # fmt: skip
    fast_restore = {}
    if args.fast_restore:
        published = require_published(ssm, args.snapshot_parameter)
        azs = subnet_azs(ec2, subnets)
        cost = fast_restore_cost(azs, load_prices())
        credits = fast_restore_credits(int(published.get("volume_size_gib") or 1000))
        print(f"fast snapshot restore in {', '.join(azs)}: ${cost:.2f} per hour while enabled (one-hour "
              f"minimum); each AZ creates {credits} volume(s) at once at full performance, then one more as "
              "each credit refills; waiting until every AZ is enabled; `teardown fleet` disables it",
              file=sys.stderr)  # fmt: skip
        fast_restore = enable_fast_restore(ec2, published["snapshot_id"], azs)
        not_ready = {az: state for az, state in fast_restore.items() if state != "enabled"}
        if not_ready:
            raise OperatorError(f"fast snapshot restore is not enabled in {not_ready}; launch without "
                                "--fast-restore, or again once it is (it keeps billing until disabled)")  # fmt: skip
    result = launch_fleet(ec2, template_id=args.launch_template_id, count=args.count,
                          instance_types=args.instance_types.split(","), subnets=subnets,
                          pipeline=args.pipeline, spot=args.spot)  # fmt: skip
    if fast_restore:
        result["fast_restore"] = fast_restore
    if args.wait and result["instances"]:
        result["ready"] = wait_for_datasets(ec2, result["instances"])
    errors = "".join(f"\n  {e['type']} in {e['subnet']}: {e['error']}" for e in result["errors"])
    return result, f"launched {len(result['instances'])} of {args.count}: {' '.join(result['instances'])}{errors}"


def launch_fleet(ec2: Any, *, template_id: str, count: int, instance_types: list[str], subnets: list[str],
                 pipeline: str, spot: bool = False, version: str = "$Latest") -> dict[str, Any]:  # fmt: skip
    """CreateFleet (instant) over every type x subnet; on capacity errors, try again without what failed."""
    overrides = [{"InstanceType": t, "SubnetId": s, "Priority": float(p)}
                 for p, (t, s) in enumerate((t, s) for t in instance_types for s in subnets)]  # fmt: skip
    instance_tags = [{"Key": tags.PIPELINE, "Value": pipeline}, {"Key": tags.ROLE, "Value": tags.GPU}]
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
            TagSpecifications=[{"ResourceType": "instance", "Tags": instance_tags}],
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


def subnets_without_public_ips(ec2: Any, subnets: list[str]) -> list[str]:
    """Subnets that give launched instances no public address (then only a NAT or endpoints reach AWS)."""
    found = ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
    return [s["SubnetId"] for s in found if not s.get("MapPublicIpOnLaunch")]


def fast_restore_cost(azs: list[str], prices: dict[str, Any], hours: float = 1.0) -> float:
    """FSR bills per snapshot per AZ per hour, with a one-hour minimum."""
    return float(len(azs) * max(hours, 1.0) * prices["fsr_dsu_hour"])


def fast_restore_credits(snapshot_gib: int) -> int:
    """Volumes an AZ can create at full performance at once (the credit bucket): max(1, min(10, 1024 / GiB))."""
    return max(1, min(10, 1024 // max(1, snapshot_gib)))


def enable_fast_restore(ec2: Any, snapshot_id: str, azs: list[str], *, timeout: float = 4 * 3600, poll: float = 30,
                        sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:  # fmt: skip
    """Turn FSR on for the snapshot in these AZs and wait until each is ``enabled``; returns AZ -> state.

    A volume created while FSR is still ``enabling`` or ``optimizing`` gets no benefit, and FSR bills from the
    start, so the fleet launches only once every AZ is ready (about an hour per TiB), or says which are not.
    """
    response = ec2.enable_fast_snapshot_restores(AvailabilityZones=azs, SourceSnapshotIds=[snapshot_id])
    states = {item["AvailabilityZone"]: item["State"] for item in response.get("Successful", [])}
    for item in response.get("Unsuccessful", []):
        for error in item.get("FastSnapshotRestoreStateErrors", []):
            states[error["AvailabilityZone"]] = f"failed: {error['Error']['Message']}"
    deadline = time.monotonic() + timeout
    while any(state in ("enabling", "optimizing") for state in states.values()) and time.monotonic() < deadline:
        sleep(poll)
        states.update(
            fast_restore_states(ec2, snapshot_id, [az for az, s in states.items() if not s.startswith("failed")])
        )
    return states


def fast_restore_states(ec2: Any, snapshot_id: str, azs: list[str]) -> dict[str, str]:
    """AZ -> FSR state of the snapshot (``enabling``, ``optimizing``, ``enabled``, ``disabling``)."""
    found = ec2.describe_fast_snapshot_restores(Filters=[
        {"Name": "snapshot-id", "Values": [snapshot_id]}, {"Name": "availability-zone", "Values": azs}])  # fmt: skip
    return {item["AvailabilityZone"]: item["State"] for item in found.get("FastSnapshotRestores", [])}


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
