"""``python -m scripts``: plan, status (more commands: issue 6).

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
from typing import Any

from scripts.plan import PlanInputs, load_prices, measured_images_per_vcpu_s, plan
from scripts.status import gather, render


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts", description="Operate the ImageNet staging pipeline.")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _plan_args(sub.add_parser("plan", help="expected time and cost of a run, with every assumption"))
    status = sub.add_parser("status", help="published status, snapshot state, the fleet's volumes")
    status.add_argument("--pipeline", default="imagenet-staging")
    status.add_argument("--status-parameter", default="/imagenet-staging/status")
    status.add_argument("--snapshot-parameter", default="/imagenet-staging/snapshot")
    status.add_argument("--region")
    return parser


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
    args = build_parser().parse_args(argv)
    if args.command == "plan":
        data, text = _plan(args)
    else:
        from bootstrap.aws import client

        data = gather(client("ssm", region=args.region), client("ec2", region=args.region), pipeline=args.pipeline,
                      status_parameter=args.status_parameter, snapshot_parameter=args.snapshot_parameter)  # fmt: skip
        text = render(data)
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
