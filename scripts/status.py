"""Where the pipeline is, from a laptop: the published status, the snapshot, the fleet's volumes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from bootstrap.contract import tags
from bootstrap.contract.parameters import NOT_STARTED, read_published
from cdk_app.config import StagingConfig
from scripts.common import add_pipeline_args, clients


def _parameter(ssm: Any, name: str) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(ssm.get_parameter(Name=name)["Parameter"]["Value"])
        return value
    except ssm.exceptions.ParameterNotFound:
        return None
    except json.JSONDecodeError:
        return {"raw": ssm.get_parameter(Name=name)["Parameter"]["Value"]}


def gather(ssm: Any, ec2: Any, *, pipeline: str, status_parameter: str, snapshot_parameter: str) -> dict[str, Any]:
    status = _parameter(ssm, status_parameter)
    published = read_published(ssm, snapshot_parameter)
    snapshot = None
    if published:
        found = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [published["snapshot_id"]]}])
        if found["Snapshots"]:
            s = found["Snapshots"][0]
            snapshot = {"id": s["SnapshotId"], "state": s["State"], "progress": s.get("Progress", "")}
    volumes = ec2.describe_volumes(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]}])["Volumes"]
    fleet = [
        {"volume": v["VolumeId"], "state": v["State"], "az": v["AvailabilityZone"],
         "owner": {t["Key"]: t["Value"] for t in v.get("Tags", [])}.get(tags.OWNER),
         "attached_to": [a["InstanceId"] for a in v["Attachments"]]}
        for v in volumes
    ]  # fmt: skip
    found = ec2.describe_instances(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [pipeline]}])["Reservations"]
    instances = [
        {"instance": i["InstanceId"], "type": i["InstanceType"], "state": i["State"]["Name"],
         "az": i["Placement"]["AvailabilityZone"],
         "dataset": {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get(tags.READY)}
        for r in found for i in r["Instances"]
    ]  # fmt: skip
    return {"status": status, "published": published, "snapshot": snapshot, "instances": instances, "volumes": fleet}


def render(report: dict[str, Any]) -> str:
    lines = []
    status = report["status"]
    if status is None or status == NOT_STARTED:
        lines.append("status: nothing published yet (has the download instance started?)")
    elif status.get("stage") == "run" and status.get("state") == "done":
        lines.append("status: finished; every stage is done")
    else:
        total = f"/{status['total']:,}" if status.get("total") else ""
        eta = f", ETA {status['eta_seconds']}s" if status.get("eta_seconds") else ""
        lines.append(f"status: {status.get('stage')} {status.get('state', '')} - {status.get('done', 0):,}{total} "
                     f"{status.get('unit', '')} at {status.get('rate', 0)}/s{eta}")  # fmt: skip
        if status.get("last_error"):
            lines.append(f"last error: {status['last_error']}")
    snap = report["snapshot"]
    lines.append(
        f"snapshot: {snap['id']} {snap['state']} {snap['progress']}" if snap else "snapshot: not published yet"
    )
    for i in report["instances"]:
        mounted = f"dataset {i['dataset']} mounted" if i["dataset"] else "dataset not mounted yet"
        lines.append(f"instance {i['instance']} {i['type']} {i['state']} in {i['az']}, {mounted}")
    for v in report["volumes"]:
        lines.append(
            f"volume {v['volume']} {v['state']} in {v['az']} owner {v['owner']} attached to {v['attached_to']}"
        )
    return "\n".join(lines)


def finished(report: dict[str, Any]) -> bool | None:
    """True when the run is done, False when its last stage failed, None while it is still going."""
    status = report["status"] or {}
    if status.get("state") == "failed":
        return False
    if status.get("stage") == "run" and status.get("state") == "done":
        return True
    return None


def bar(status: dict[str, Any] | None, width: int = 30) -> str:
    if not status or not status.get("total"):
        return ""
    fraction = min(status.get("done", 0) / status["total"], 1.0)
    return f"[{'#' * int(fraction * width)}{'.' * (width - int(fraction * width))}] {fraction:5.1%} "


def watch(fetch: Callable[[], dict[str, Any]], *, interval: float = 30.0, out: TextIO = sys.stdout,
          sleep: Callable[[float], None] = time.sleep, max_polls: int | None = None) -> bool:  # fmt: skip
    """Show progress until the run is done (True) or has failed (False)."""
    polls = 0
    while True:
        report = fetch()
        line = bar(report["status"]) + render(report).splitlines()[0]
        out.write(("\r" + line + "\033[K") if out.isatty() else line + "\n")
        out.flush()
        state = finished(report)
        polls += 1
        if state is not None or (max_polls is not None and polls >= max_polls):
            if out.isatty():
                out.write("\n")
            if state is False:
                out.write(render(report) + "\n")
            return bool(state)
        sleep(interval)


HELP = "published status, snapshot state, the fleet's volumes"


def add_arguments(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    add_pipeline_args(parser, deployed)
    parser.add_argument("--status-parameter", default=deployed.status_parameter)
    parser.add_argument("--watch", action="store_true", help="show a progress bar until the run is done or fails")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between polls with --watch")


def command(args: argparse.Namespace) -> tuple[Any, str] | int:
    ssm, ec2 = clients(args, "ssm", "ec2")

    def fetch() -> dict[str, Any]:
        return gather(ssm, ec2, pipeline=args.pipeline, status_parameter=args.status_parameter,
                      snapshot_parameter=args.snapshot_parameter)  # fmt: skip

    if args.watch:
        return 0 if watch(fetch, interval=args.interval) else 1
    data = fetch()
    return data, render(data)
