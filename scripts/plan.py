"""What a run will cost and how long it will take: pure arithmetic over stated assumptions.

Every number comes from the inputs, the dated price file, or the project's own
benchmark (images/s per vCPU); nothing is fetched.  Each row says what it
assumed, so a reader can redo the sum.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import textwrap
from dataclasses import dataclass
from typing import Any

from bootstrap.common.argparsing import number
from bootstrap.gpu.initialization import rate_for, seconds_to_initialize
from bootstrap.instance.dataset_volume import volume_gib
from bootstrap.settings import FORMATS, flag_type, output_formats
from cdk_app.config import StagingConfig
from scripts.instance_types import InstanceTable, InstanceType
from scripts.plan_data import dataset_inputs, load_gpu_rates, load_prices, measured

GB = 1e9
MIB = 1 << 20


@dataclass(frozen=True)
class PlanInputs:
    archive_bytes: int = 147_897_477_120 + 6_744_924_160
    images: int = 1_281_167 + 50_000
    dataset: str = "ILSVRC2012's archives"
    """What is downloaded (``--dataset-table`` gives another table's files, such as a hub dataset's shards)."""
    packed_bytes: int = 40 * 10**9
    """RecordIO at resize 256 / quality 90 is about a quarter of the archives."""
    bandwidth_mb_s: float = 60.0
    """The download source's speed to the instance."""
    upload_mb_s: float = 60.0
    """The instance's speed to S3 (t2's network is "low to moderate": about 0.5 Gbit/s), whatever the source's."""
    instance_type: str = "t2.large"
    cpu_credits: str = "unlimited"
    data_volume_type: str = "sc1"
    data_volume_gib: int = 1000
    images_per_vcpu_s: float = 100.0
    follow_download: bool = True
    """Pack reads each archive while it downloads (the default); False: the download finishes first."""
    backup_while_packing: bool = True
    """The archives go to S3 once verified, while pack runs (the default); False: everything after pack."""
    backup_storage_class: str = "STANDARD_IA"
    packed_files: int = 12
    """The published files: rec/idx/lst per split, synsets, failures, contact sheets, the manifest."""
    formats: tuple[str, ...] = ("recordio",)
    format_ratios: tuple[tuple[str, float], ...] = (("recordio", 1.0), ("webdataset", 1.08), ("tree", 1.05))
    """Bytes each format takes on disk over the RecordIO's (``make bench``'s formats row replaces these)."""
    dataset_snapshot: str = "packed"
    gpu_instance_type: str = "g5.xlarge"
    images_per_gpu_s: float | None = None
    """None: from scripts/gpu_rates.json, when it has a measured figure for the instance's GPU."""
    gpu_instances: int = 1
    gpu_hours: float = 24.0
    restored_volume_type: str = "gp3"
    restored_iops: int = 3000
    restored_throughput: int = 125
    initialization_rate: str = "auto"
    fsr_azs: int = 0
    fsr_hours: float = 1.0


@dataclass(frozen=True)
class Row:
    item: str
    hours: float | None
    usd: float
    assumption: str
    kind: str = "info"
    """What the cost adds to: ``one-off`` (the download side), ``monthly`` (what is kept), ``fleet``, or nothing."""


def sc1_burst_mib_s(gib: int) -> float:
    """sc1: 80 MiB/s burst per TiB, capped at 250 MiB/s (baseline 12 MiB/s per TiB)."""
    return min(250.0, 80.0 * gib / 1024)


def published_bytes(i: PlanInputs) -> int:
    """Every packed format: the RecordIO and, as ``formats`` asks, the shards and the class tree."""
    ratios = dict(i.format_ratios)
    return round(i.packed_bytes * sum(ratios[f] for f in i.formats))


def published_files(i: PlanInputs) -> int:
    """The tree has a file per image; shards are about 1 GiB each."""
    shards = -(-published_bytes(i) // (1 << 30)) if "webdataset" in i.formats else 0
    return i.packed_files + shards + (i.images if "tree" in i.formats else 0)


def restored_gib(i: PlanInputs) -> int:
    """What each GPU instance restores: the right-sized dataset volume, or (work-volume) the whole data volume."""
    if i.dataset_snapshot == "work-volume":
        return i.data_volume_gib  # a volume from a snapshot is at least the source volume's size
    return volume_gib(published_bytes(i), published_files(i) + 2)


def gp3_month(gib: int, iops: int, throughput: int, p: dict[str, Any]) -> float:
    return float(gib * p["ebs_gb_month"]["gp3"] + max(iops - 3000, 0) * p["gp3_iops_month_above_3000"]
            + max(throughput - 125, 0) * p["gp3_mibps_month_above_125"])  # fmt: skip


def feed_rate(i: PlanInputs, gpu: InstanceType, rates: dict[str, Any]) -> Row:
    """What the GPUs read (images/s x bytes per record, and one I/O per record at random) against the volume."""
    known = rates["gpus"].get(gpu.gpu or "")
    per_gpu = i.images_per_gpu_s or (known["images_per_gpu_s"] if known else None)
    if per_gpu is None:
        return Row(f"feed rate ({i.gpu_instance_type})", None, 0.0, f"unknown: {rates['unmeasured']}")
    gpus = max(gpu.gpus, 1)
    images_s = per_gpu * gpus
    record = i.packed_bytes / i.images
    mib_s, iops = images_s * record / MIB, images_s
    source = "--images-per-gpu-s" if i.images_per_gpu_s else f"{gpu.gpu} ({rates['source'].split(',')[0]})"
    need = f"{gpus} GPU x {per_gpu:.0f} img/s ({source}) x {record / 1e3:.0f} kB/record = {mib_s:.0f} MiB/s, " \
           f"{iops:,.0f} IOPS read at random"  # fmt: skip
    if mib_s <= i.restored_throughput and iops <= i.restored_iops:
        return Row(f"feed rate ({i.gpu_instance_type})", None, 0.0,
                   f"{need}: the {i.restored_throughput} MiB/s, {i.restored_iops} IOPS volume keeps up")  # fmt: skip
    throughput = max(125, -(-mib_s * 1.2 // 25) * 25)
    want_iops = max(3000, -(-max(iops * 1.2, throughput * 4) // 1000) * 1000)
    return Row(f"feed rate ({i.gpu_instance_type})", None, 0.0,
               f"{need}: the volume would starve the GPUs; set restored_throughput={throughput:.0f} "
               f"restored_iops={want_iops:.0f}")  # fmt: skip


def fleet_rows(i: PlanInputs, p: dict[str, Any], table: InstanceTable, rates: dict[str, Any] | None = None
               ) -> list[Row]:  # fmt: skip
    """The restored volume each GPU instance pays for, how soon it is fully loaded, the feed rate, the compute."""
    month, size, gpu = p["hours_per_month"], restored_gib(i), table[i.gpu_instance_type]
    volume_month = gp3_month(size, i.restored_iops, i.restored_throughput, p)
    per_gpu = volume_month * i.gpu_hours / month
    why = ("a volume from a snapshot is at least the source volume's size" if i.dataset_snapshot == "work-volume"
           else f"the published data ({', '.join(i.formats)}), {published_bytes(i) / GB:.0f} GB, and filesystem "
                "headroom")  # fmt: skip
    rows = [Row("restored volume per GPU instance", i.gpu_hours, per_gpu * i.gpu_instances,
                f"{i.gpu_instances} x {size} GiB {i.restored_volume_type} for {i.gpu_hours:g} h, "
                f"${volume_month * 24 / month:.2f} per GPU-day ({why})", "fleet")]  # fmt: skip
    rate = rate_for(size) if i.initialization_rate == "auto" else None
    rate = int(i.initialization_rate) if i.initialization_rate.isdigit() else rate
    if rate:
        rows.append(Row("restored volume fully initialized", seconds_to_initialize(size, rate) / 3600, 0.0,
                        f"{size} GiB x 1024 / {rate} MiB/s provisioned initialization rate (EBS bills it per GiB; "
                        "see aws.amazon.com/ebs/pricing)"))  # fmt: skip
    rows.append(feed_rate(i, gpu, rates or load_gpu_rates()))
    gpus = f", {gpu.gpus} x {gpu.gpu}" if gpu.gpu else ", no GPU"
    rows.append(Row(f"{gpu.name} compute", i.gpu_hours, i.gpu_instances * i.gpu_hours * gpu.usd_hour,
                    f"{i.gpu_instances} x ${gpu.usd_hour}/h on demand ({gpu.vcpus} vCPU{gpus})", "fleet"))  # fmt: skip
    if i.fsr_azs:
        fsr = i.fsr_azs * max(i.fsr_hours, 1.0) * p["fsr_dsu_hour"]
        rows.append(Row("fast snapshot restore", i.fsr_hours, fsr,
                        f"{i.fsr_azs} AZ x ${p['fsr_dsu_hour']}/h, 1 h minimum", "fleet"))  # fmt: skip
    return rows


def packed_hours(i: PlanInputs, download_h: float, pack_h: float, disk_mib_s: float, rows: list[Row]) -> float:
    """When the packed data is complete (its row appended to ``rows``).

    Following the download: the slower of pack and the download plus what pack still has to do after the last
    byte (the train split's second pass: the records gathered and written, the other formats written, at the
    disk's rate).  Otherwise: the download, then pack.
    """
    if not i.follow_download:
        rows.append(Row("to packed data", download_h + pack_h, 0.0, "download, then pack (follow_download off)"))
        return download_h + pack_h
    tail_h = (i.packed_bytes + published_bytes(i)) / (disk_mib_s * MIB) / 3600
    hours = max(pack_h, download_h + tail_h)
    rows.append(Row("to packed data", hours, 0.0,
                    f"pack follows the download: the slower of pack ({pack_h:.1f} h) and the download plus "
                    f"{tail_h * 60:.0f} min of pack after its last byte (the train records' second pass)"))  # fmt: skip
    return hours


def backup_hours(i: PlanInputs, download_h: float, packed_h: float, upload_b_s: float, rows: list[Row]) -> float:
    """How long after the packed data the backup (and so the snapshot's start) ends (its row appended to ``rows``).

    With ``backup_while_packing`` the archives go up as they download (multipart parts right behind the download;
    a hub dataset's shards each once verified), so they are up when both the download and their upload are done,
    and only the packed data is left after pack; otherwise everything goes up after pack.
    """
    archives_h, packed_up_h = i.archive_bytes / upload_b_s / 3600, published_bytes(i) / upload_b_s / 3600
    rate = f"at min({i.upload_mb_s:g} MB/s upload, the disk); the snapshot copies in the background"
    unshared = " (the disk's throughput is not shared out here)"
    if not i.backup_while_packing:
        rows.append(Row("backup + snapshot", archives_h + packed_up_h, 0.0, f"once the data is packed, "
                        f"{(i.archive_bytes + published_bytes(i)) / GB:.0f} GB to S3 {rate}"))  # fmt: skip
        return archives_h + packed_up_h
    waiting_h = max(0.0, max(download_h, archives_h) - packed_h)
    rows.append(Row("backup + snapshot", waiting_h + packed_up_h, 0.0,
                    f"the archives ({i.archive_bytes / GB:.0f} GB, {archives_h:.1f} h) go up as they download, "
                    f"while pack runs ({waiting_h:.1f} h of it left once packed); then the packed data, "
                    f"{published_bytes(i) / GB:.0f} GB, {rate}{unshared}"))  # fmt: skip
    return waiting_h + packed_up_h


def plan(inputs: PlanInputs, prices: dict[str, Any], table: InstanceTable | None = None) -> list[Row]:
    p, i, table = prices, inputs, table or InstanceTable()
    month, itype = p["hours_per_month"], table[i.instance_type]
    rows: list[Row] = []

    disk_mib_s = sc1_burst_mib_s(i.data_volume_gib) if i.data_volume_type == "sc1" else 125.0
    download_rate = min(i.bandwidth_mb_s * 1e6, disk_mib_s * MIB)
    download_h = i.archive_bytes / download_rate / 3600
    rows.append(Row("download", download_h, 0.0,
                    f"{i.dataset}, {i.archive_bytes / GB:.0f} GB at min({i.bandwidth_mb_s:g} MB/s link, "
                    f"{disk_mib_s:.0f} MiB/s {i.data_volume_type} burst)"))  # fmt: skip

    # Following the download, pack starts with it and never banks the download's idle credits.
    idle_h = 0.0 if i.follow_download else download_h
    cpu = table.cpu_time(itype, i.images / i.images_per_vcpu_s / 3600, i.cpu_credits, idle_hours=idle_h)
    # read the archives once; the records scattered, gathered, written; the other formats written once
    io_h = (i.archive_bytes + 2 * i.packed_bytes + published_bytes(i)) / (disk_mib_s * MIB) / 3600
    pack_h = max(cpu.hours, io_h)
    rows.append(Row("pack", pack_h, table.surplus_usd(itype, cpu.surplus_vcpu_hours),
                    f"{i.images:,} images at {i.images_per_vcpu_s:.0f} img/s per vCPU on {cpu.how}, or the disk, "
                    "whichever is slower", "one-off"))  # fmt: skip
    packed_h = packed_hours(i, download_h, pack_h, disk_mib_s, rows)

    backup_h = backup_hours(i, download_h, packed_h, min(i.upload_mb_s * 1e6, disk_mib_s * MIB), rows)

    hours = packed_h + backup_h
    rows.append(Row(f"{itype.name} instance", hours, hours * itype.usd_hour, f"${itype.usd_hour}/h for the whole run",
                    "one-off"))  # fmt: skip
    disk = i.data_volume_gib * p["ebs_gb_month"][i.data_volume_type] * hours / month
    rows.append(Row(f"{i.data_volume_type} {i.data_volume_gib} GiB volume", hours, disk,
                    f"${p['ebs_gb_month'][i.data_volume_type]}/GB-month while the download side exists",
                    "one-off"))  # fmt: skip

    stored = (i.archive_bytes + published_bytes(i)) / GB
    s3 = stored * p["s3_gb_month"][i.backup_storage_class]
    rows.append(Row("S3 backup, per month", None, s3, f"{stored:.0f} GB in {i.backup_storage_class}", "monthly"))
    snapped = stored if i.dataset_snapshot == "work-volume" else published_bytes(i) / GB
    rows.append(Row("EBS snapshot, per month", None, snapped * p["snapshot_gb_month"],
                    f"{snapped:.0f} GB of written blocks ({i.dataset_snapshot})", "monthly"))  # fmt: skip
    rows.extend(fleet_rows(i, p, table))
    return rows


def totals(inputs: PlanInputs, rows: list[Row], prices: dict[str, Any], table: InstanceTable | None = None
           ) -> dict[str, float]:  # fmt: skip
    """One-off (the download side), per month (what is kept), the fleet as planned, and one GPU instance-day."""
    gpu = (table or InstanceTable())[inputs.gpu_instance_type]
    volume = gp3_month(restored_gib(inputs), inputs.restored_iops, inputs.restored_throughput, prices)
    out = {kind: sum(r.usd for r in rows if r.kind == kind) for kind in ("one-off", "monthly", "fleet")}
    out["per GPU-instance day"] = 24 * (gpu.usd_hour + volume / prices["hours_per_month"])
    out["hours to dataset"] = sum(r.hours or 0.0 for r in rows if r.item in ("to packed data", "backup + snapshot"))
    return out


COMPARED = ("t2.large", "t2.xlarge", "t2.2xlarge")
"""The download instances ``plan`` compares: pack is CPU-bound, so more vCPUs (and credits) shorten the run."""


def compare(inputs: PlanInputs, prices: dict[str, Any], table: InstanceTable | None = None) -> list[dict[str, Any]]:
    """Hours to the published dataset and the one-off cost, for each compared type in each credit mode."""
    table = table or InstanceTable()
    out = []
    for name in COMPARED:
        for credits in ("standard", "unlimited"):
            case = dataclasses.replace(inputs, instance_type=name, cpu_credits=credits)
            sums = totals(case, plan(case, prices, table), prices, table)
            out.append({"instance_type": name, "cpu_credits": credits, "hours": round(sums["hours to dataset"], 2),
                        "one_off_usd": round(sums["one-off"], 2)})  # fmt: skip
    return out


HELP = "expected time and cost of a run, with every assumption"


def add_arguments(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    """Defaults: what ./cdk.json deploys, else the plan's own; every number checked for its range."""
    d = PlanInputs()
    add = parser.add_argument
    add("--bandwidth-mb-s", type=number(float, above=0), default=d.bandwidth_mb_s,
        help=f"download link in MB/s (default {d.bandwidth_mb_s:g}; more than 0)")  # fmt: skip
    add("--upload-mb-s", type=number(float, above=0), default=d.upload_mb_s,
        help=f"the instance's upload to S3 in MB/s (default {d.upload_mb_s:g}; more than 0)")  # fmt: skip
    add("--instance-type", default=deployed.download_instance_type,
        help=f"download instance (default {deployed.download_instance_type}, from ./cdk.json)")  # fmt: skip
    add("--cpu-credits", choices=("standard", "unlimited"), default=deployed.cpu_credits,
        help=f"burstable types' credit mode (default {deployed.cpu_credits}, from ./cdk.json)")  # fmt: skip
    add("--data-volume-type", choices=("sc1", "st1", "gp3"), default=deployed.data_volume_type,
        help=f"(default {deployed.data_volume_type}, from ./cdk.json)")  # fmt: skip
    add("--data-volume-gib", type=number(int, low=1), default=deployed.data_volume_gib,
        help=f"(default {deployed.data_volume_gib}, from ./cdk.json)")  # fmt: skip
    add("--gpu-instance-type", default=deployed.gpu_instance_types[0],
        help=f"(default {deployed.gpu_instance_types[0]}, the fleet's first in ./cdk.json)")  # fmt: skip
    add("--images-per-vcpu-s", type=number(float, above=0),
        help="pack rate per vCPU (default: make bench's last measurement, else 100)")  # fmt: skip
    add("--images-per-gpu-s", type=number(float, above=0),
        help="training images/s per GPU (default: scripts/gpu_rates.json)")  # fmt: skip
    add("--gpu-instances", type=number(int, low=0), default=d.gpu_instances,
        help=f"(default {d.gpu_instances}; at least 0)")  # fmt: skip
    add("--gpu-hours", type=number(float, low=0), default=d.gpu_hours, help=f"(default {d.gpu_hours:g}; at least 0)")
    add("--restored-iops", type=number(int, low=3000, high=80000), default=deployed.restored_iops,
        help=f"(default {deployed.restored_iops}, from ./cdk.json; 3000-80000)")  # fmt: skip
    add("--restored-throughput", type=number(int, low=125, high=2000), default=deployed.restored_throughput,
        help=f"MiB/s (default {deployed.restored_throughput}, from ./cdk.json; 125-2000)")  # fmt: skip
    add("--no-follow-download", dest="follow_download", action="store_false",
        help="model a run that downloads everything before it packs (follow_download off)")  # fmt: skip
    add("--no-backup-while-packing", dest="backup_while_packing", action="store_false",
        help="model a run that backs everything up after pack (backup_while_packing off)")  # fmt: skip
    add("--fsr-azs", type=number(int, low=0), default=0, help="fast snapshot restore in this many AZs (default 0)")
    add("--dataset-table", type=pathlib.Path, help="the files and counts of another table, e.g. the one hub-table "
        "wrote (default: ./cdk.json's dataset_table, else ILSVRC2012's archives)")  # fmt: skip
    formats = ",".join(output_formats(deployed.formats, deployed.keep_tree))
    add("--formats", type=flag_type("formats"), default=formats,
        help=f"what pack writes: {', '.join(FORMATS)} (default {formats}, from ./cdk.json)")  # fmt: skip
    parser.set_defaults(deployed_table=deployed.dataset_table, dataset_snapshot=deployed.dataset_snapshot,
                        initialization_rate=deployed.restored_initialization_rate)  # fmt: skip


def command(args: argparse.Namespace) -> tuple[Any, str]:
    bench = measured()
    rate = args.images_per_vcpu_s or bench.images_per_vcpu_s
    inputs = PlanInputs(
        bandwidth_mb_s=args.bandwidth_mb_s, upload_mb_s=args.upload_mb_s, instance_type=args.instance_type,
        cpu_credits=args.cpu_credits, follow_download=args.follow_download,
        backup_while_packing=args.backup_while_packing,
        data_volume_type=args.data_volume_type, data_volume_gib=args.data_volume_gib,
        gpu_instances=args.gpu_instances, gpu_hours=args.gpu_hours, restored_iops=args.restored_iops,
        restored_throughput=args.restored_throughput, fsr_azs=args.fsr_azs, gpu_instance_type=args.gpu_instance_type,
        images_per_gpu_s=args.images_per_gpu_s, images_per_vcpu_s=rate or PlanInputs.images_per_vcpu_s,
        dataset_snapshot=args.dataset_snapshot, initialization_rate=args.initialization_rate,
        formats=output_formats(args.formats, False),
        format_ratios=bench.format_ratios or PlanInputs.format_ratios,
        **dataset_inputs(args.dataset_table, args.deployed_table),
    )  # fmt: skip
    prices, table = load_prices(), InstanceTable()
    rows = plan(inputs, prices, table)
    sums, compared = totals(inputs, rows, prices, table), compare(inputs, prices, table)
    source = (
        "--images-per-vcpu-s"
        if args.images_per_vcpu_s
        else "measured by make bench"
        if bench.images_per_vcpu_s
        else "default"
    )
    data = {"headline": headline(inputs, rows, sums), "inputs": dataclasses.asdict(inputs),
            "rows": [dataclasses.asdict(r) for r in rows], "totals": sums, "compare": compared,
            "prices": {"region": prices["region"], "date": prices["date"], "instances_date": table.date}}  # fmt: skip
    return data, render(inputs, rows, sums, compared, f"prices: {prices['region']} list prices of {prices['date']} "
                        f"(scripts/prices.json), instances of {table.date} (scripts/instance_types.json); pack rate "
                        f"{inputs.images_per_vcpu_s:.0f} img/s per vCPU ({source})")  # fmt: skip


def headline(inputs: PlanInputs, rows: list[Row], sums: dict[str, float]) -> str:
    """When the dataset is published, what that took, and what it costs: the one line to read first."""
    hours = {r.item: r.hours or 0.0 for r in rows}
    pack = f"{hours['pack']:.1f} h pack on a {inputs.instance_type} with {inputs.cpu_credits} credits"
    download = f"{hours['download']:.1f} h download at {inputs.bandwidth_mb_s:g} MB/s"
    how = "packed as it arrives:" if inputs.follow_download else "then"
    packed = f"packed after {hours['to packed data']:.1f} h ({download}, {how} {pack})"
    return (
        f"The dataset is published about {sums['hours to dataset']:.1f} h after the download instance starts: "
        f"{packed}, then {hours['backup + snapshot']:.1f} h backup and snapshot. "
        f"${sums['one-off']:.2f} once, then ${sums['monthly']:.2f} a month."
    )


def render(inputs: PlanInputs, rows: list[Row], sums: dict[str, float], compared: list[dict[str, Any]],
           footer: str) -> str:  # fmt: skip
    lines = [textwrap.fill(headline(inputs, rows, sums), 110), "", f"{'item':36} {'hours':>7} {'USD':>9}  assumption"]
    for r in rows:
        hours = f"{r.hours:7.1f}" if r.hours is not None else " " * 7
        lines.append(f"{r.item:36} {hours} {r.usd:9.2f}  {r.assumption}")
    fleet = f"{inputs.gpu_instances} x {inputs.gpu_instance_type} for {inputs.gpu_hours:g} h"
    lines += [
        "",
        f"{'total, one-off':36} {sums['hours to dataset']:7.1f} {sums['one-off']:9.2f}  the download side, until "
        "the dataset is published",
        f"{'total, per month':36} {'':7} {sums['monthly']:9.2f}  the S3 backup and the dataset snapshot",
        f"{'total, fleet':36} {inputs.gpu_hours:7.1f} {sums['fleet']:9.2f}  {fleet}: compute and restored volumes",
        f"{'per GPU-instance day':36} {24:7.1f} {sums['per GPU-instance day']:9.2f}  one {inputs.gpu_instance_type} "
        "and its restored volume",
        "",
        f"{'download instance, credits':36} {'hours':>7} {'USD':>9}  to the published dataset, one-off",
        *(f"{c['instance_type'] + ', ' + c['cpu_credits']:36} {c['hours']:7.1f} {c['one_off_usd']:9.2f}"
          for c in compared),
        "",
        footer,
    ]  # fmt: skip
    return "\n".join(lines)
