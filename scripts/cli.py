"""``python -m scripts``: plan, status, launch-fleet, teardown, copy-snapshot.

``run(argv)`` returns an exit code and is what tests call; results go to
stdout (human text, or JSON with ``--json``), logs to stderr.  Exit codes:
0 ok, 1 failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bootstrap.common.aws import aws_error
from bootstrap.common.errors import BootstrapError, ConfigError
from cdk_app.config import StagingConfig, from_context
from scripts.plan import PlanInputs, load_prices, measured_images_per_vcpu_s, plan
from scripts.status import gather, render, watch


def deployed_config(path: Path = Path("cdk.json")) -> StagingConfig:
    """The CDK context `cdk deploy` used (./cdk.json), so the defaults name what was deployed; flags override."""
    try:
        context = json.loads(path.read_text()).get("context", {})
    except FileNotFoundError:
        return StagingConfig()
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    try:
        return from_context(context)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None


def _plan_args(parser: argparse.ArgumentParser) -> None:
    defaults = PlanInputs()
    add = parser.add_argument
    add("--bandwidth-mb-s", type=float, default=defaults.bandwidth_mb_s, help="download link in MB/s")
    add("--instance-type", default=defaults.instance_type)
    add("--cpu-credits", choices=("standard", "unlimited"), default=defaults.cpu_credits)
    add("--data-volume-gib", type=int, default=defaults.data_volume_gib)
    add("--gpu-instances", type=int, default=defaults.gpu_instances)
    add("--gpu-hours", type=float, default=defaults.gpu_hours)
    add("--restored-iops", type=int, default=defaults.restored_iops)
    add("--restored-throughput", type=int, default=defaults.restored_throughput)
    add("--fsr-azs", type=int, default=0, help="fast snapshot restore in this many AZs (off by default)")


def build_parser(deployed: StagingConfig | None = None) -> argparse.ArgumentParser:
    deployed = deployed or StagingConfig()
    parser = argparse.ArgumentParser(prog="python -m scripts", description="Operate the ImageNet staging pipeline.")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _plan_args(sub.add_parser("plan", help="expected time and cost of a run, with every assumption"))
    status = sub.add_parser("status", help="published status, snapshot state, the fleet's volumes")
    _common(status, deployed)
    status.add_argument("--status-parameter", default=deployed.status_parameter)
    status.add_argument("--watch", action="store_true", help="show a progress bar until the run is done or fails")
    status.add_argument("--interval", type=float, default=30.0, help="seconds between polls with --watch")

    fleet = sub.add_parser("launch-fleet", help="N GPU instances from the launch template (CreateFleet, instant)")
    _common(fleet, deployed)
    fleet.add_argument("--launch-template-id", required=True)
    fleet.add_argument("--count", type=int, default=1)
    fleet.add_argument("--instance-types", default="g5.xlarge", help="comma-separated, in order of preference")
    fleet.add_argument("--subnets", required=True, help="comma-separated subnet ids (their AZs are where to look)")
    fleet.add_argument("--spot", action="store_true")
    fleet.add_argument("--wait", action="store_true", help="wait until every instance reports its dataset mounted")
    fleet.add_argument(
        "--fast-restore",
        action="store_true",
        help="enable fast snapshot restore in the subnets' AZs first (billed per AZ-hour; cost shown)",
    )

    down = sub.add_parser("teardown", help="download: after the snapshot; fleet: every GPU instance; all")
    _common(down, deployed)
    down.add_argument("what", choices=("download", "fleet", "all"))
    down.add_argument("--force", action="store_true", help="download: even before snapshot and backup are verified")
    down.add_argument("--keep-volume", action="store_true", help="download: keep the data volume")
    down.add_argument(
        "--destroy-stack", action="store_true", help="download: delete the CDK download stack (all of its resources)"
    )
    down.add_argument(
        "--purge", action="store_true", help="all: also delete the snapshots, backup bucket and parameters"
    )
    down.add_argument("--yes", action="store_true", help="with --purge: do not ask for confirmation")
    down.add_argument("--status-parameter", default=deployed.status_parameter)

    copy = sub.add_parser("copy-snapshot", help="copy the dataset snapshot to another region, optionally share it")
    _common(copy, deployed)
    copy.add_argument("--to-region", required=True)
    copy.add_argument("--kms-key-id", help="a customer key in the target region (needed to share with other accounts)")
    copy.add_argument("--share-with", default="", help="comma-separated account ids")
    return parser


def _common(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    parser.add_argument("--pipeline", default=deployed.name, help="default: 'name' in ./cdk.json")
    parser.add_argument("--snapshot-parameter", default=deployed.snapshot_parameter)
    parser.add_argument("--region")


def _aws(args: argparse.Namespace, *services: str) -> list[Any]:
    from bootstrap.common.aws import client

    return [client(name, region=args.region) for name in services]


def _confirm(pipeline: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"Delete every snapshot, the backup bucket and the parameters of {pipeline}? Type the name: ")
    return answer.strip() == pipeline


def _fleet_command(args: argparse.Namespace) -> tuple[Any, str]:
    from scripts import fleet

    if args.command == "launch-fleet":
        ec2, ssm = _aws(args, "ec2", "ssm")
        subnets = args.subnets.split(",")
        fast_restore = {}
        if args.fast_restore:
            published = fleet.require_published(ssm, args.snapshot_parameter)
            azs = fleet.subnet_azs(ec2, subnets)
            cost = fleet.fast_restore_cost(azs, load_prices())
            print(f"fast snapshot restore in {', '.join(azs)}: ${cost:.2f} per hour while enabled "
                  "(one-hour minimum); disable it when the fleet is up", file=sys.stderr)  # fmt: skip
            fast_restore = fleet.enable_fast_restore(ec2, published["snapshot_id"], azs)
        result = fleet.launch_fleet(ec2, template_id=args.launch_template_id, count=args.count,
                                    instance_types=args.instance_types.split(","), subnets=subnets,
                                    pipeline=args.pipeline, spot=args.spot)  # fmt: skip
        if fast_restore:
            result["fast_restore"] = fast_restore
        if args.wait and result["instances"]:
            result["ready"] = fleet.wait_for_datasets(ec2, result["instances"])
        errors = "".join(f"\n  {e['type']} in {e['subnet']}: {e['error']}" for e in result["errors"])
        text = f"launched {len(result['instances'])} of {args.count}: {' '.join(result['instances'])}{errors}"
        return result, text
    if args.command == "teardown":
        ec2, ssm, s3 = _aws(args, "ec2", "ssm", "s3")
        result = {}
        if args.purge and args.what != "all":
            raise fleet.OperatorError("--purge goes with 'teardown all'")
        if args.purge and not args.yes and not _confirm(args.pipeline):
            raise fleet.OperatorError("not confirmed; nothing was deleted (pass --yes to skip the question)")
        if args.what in ("fleet", "all"):  # first: a fleet comes down whatever the download side's state
            result["fleet"] = fleet.teardown_fleet(ec2, pipeline=args.pipeline)
        if args.what in ("download", "all"):
            cfn = _aws(args, "cloudformation")[0] if args.destroy_stack else None
            result["download"] = fleet.teardown_download(ec2, ssm, s3, snapshot_parameter=args.snapshot_parameter,
                                                          pipeline=args.pipeline, force=args.force or args.purge,
                                                          keep_volume=args.keep_volume, cfn=cfn)  # fmt: skip
        if args.purge:
            result["purge"] = fleet.purge(ec2, ssm, s3, pipeline=args.pipeline,
                                          snapshot_parameter=args.snapshot_parameter,
                                          status_parameter=args.status_parameter)  # fmt: skip
        return result, json.dumps(result, indent=2)
    source_ec2, source_ssm = _aws(args, "ec2", "ssm")
    from bootstrap.common.aws import client

    published = fleet.require_published(source_ssm, args.snapshot_parameter)
    info = fleet.copy_snapshot(source_ec2, client("ec2", region=args.to_region), client("ssm", region=args.to_region),
                               published=published, source_region=published["region"], target_region=args.to_region,
                               snapshot_parameter=args.snapshot_parameter, kms_key_id=args.kms_key_id,
                               share_with=[a for a in args.share_with.split(",") if a])  # fmt: skip
    note = ("" if not args.share_with or args.kms_key_id else
            "\nnote: a snapshot encrypted with the default aws/ebs key cannot be used by another account; copy it "
            "with --kms-key-id of a customer key whose policy lets that account use it")  # fmt: skip
    return info, f"{info['snapshot_id']} in {args.to_region}, published in {args.snapshot_parameter} there{note}"


def _plan(args: argparse.Namespace) -> tuple[Any, str]:
    measured = measured_images_per_vcpu_s()
    inputs = PlanInputs(
        bandwidth_mb_s=args.bandwidth_mb_s, instance_type=args.instance_type, cpu_credits=args.cpu_credits,
        data_volume_gib=args.data_volume_gib, gpu_instances=args.gpu_instances, gpu_hours=args.gpu_hours,
        restored_iops=args.restored_iops, restored_throughput=args.restored_throughput, fsr_azs=args.fsr_azs,
        images_per_vcpu_s=measured or PlanInputs.images_per_vcpu_s,
    )  # fmt: skip
    prices = load_prices()
    rows = plan(inputs, prices)
    lines = [f"{'item':36} {'hours':>7} {'USD':>9}  assumption"]
    for r in rows:
        hours = f"{r.hours:7.1f}" if r.hours is not None else " " * 7
        lines.append(f"{r.item:36} {hours} {r.usd:9.2f}  {r.assumption}")
    lines.append(f"prices: {prices['region']} list prices of {prices['date']} (scripts/prices.json); "
                 f"pack rate {inputs.images_per_vcpu_s:.0f} img/s per vCPU "
                 f"({'measured by make bench' if measured else 'default'})")  # fmt: skip
    data = {"inputs": dataclasses.asdict(inputs), "rows": [dataclasses.asdict(r) for r in rows],
            "prices": {"region": prices["region"], "date": prices["date"]}}  # fmt: skip
    return data, "\n".join(lines)


def run(argv: Sequence[str]) -> int:
    try:
        deployed = deployed_config()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    args = build_parser(deployed).parse_args(argv)
    try:
        if args.command == "plan":
            data, text = _plan(args)
        elif args.command == "status":
            ssm, ec2 = _aws(args, "ssm", "ec2")

            def fetch() -> dict[str, Any]:
                return gather(ssm, ec2, pipeline=args.pipeline, status_parameter=args.status_parameter,
                              snapshot_parameter=args.snapshot_parameter)  # fmt: skip

            if args.watch:
                return 0 if watch(fetch, interval=args.interval) else 1
            data = fetch()
            text = render(data)
        else:
            data, text = _fleet_command(args)
    except BootstrapError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (ClientError, BotoCoreError) as e:  # a missing template, snapshot or permission: on one line
        print(f"error: {aws_error(getattr(e, 'operation_name', 'AWS'), e)}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
