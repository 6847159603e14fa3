"""What a run will cost and how long it will take: pure arithmetic over stated assumptions.

Every number comes from the inputs, the dated price file, or the project's own
benchmark (images/s per vCPU); nothing is fetched.  Each row says what it
assumed, so a reader can redo the sum.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.gpu.initialization import rate_for, seconds_to_initialize
from bootstrap.instance.dataset_volume import volume_gib
from cdk_app.config import StagingConfig

ROOT = Path(__file__).resolve().parent.parent
GB = 1e9
MIB = 1 << 20


@dataclass(frozen=True)
class PlanInputs:
    archive_bytes: int = 147_897_477_120 + 6_744_924_160
    images: int = 1_281_167 + 50_000
    packed_bytes: int = 40 * 10**9
    """RecordIO at resize 256 / quality 90 is about a quarter of the archives."""
    bandwidth_mb_s: float = 60.0
    instance_type: str = "t2.large"
    cpu_credits: str = "standard"
    data_volume_type: str = "sc1"
    data_volume_gib: int = 1000
    images_per_vcpu_s: float = 100.0
    backup_storage_class: str = "STANDARD_IA"
    packed_files: int = 12
    """The published files: rec/idx/lst per split, synsets, failures, contact sheets, the manifest."""
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


def load_prices(path: Path = ROOT / "scripts" / "prices.json") -> dict[str, Any]:
    prices: dict[str, Any] = json.loads(path.read_text())
    return prices


def measured_images_per_vcpu_s(results: Path = ROOT / "bench" / "results.json") -> float | None:
    """Pack throughput per vCPU from the project's own last benchmark, if there is one."""
    try:
        pack = json.loads(results.read_text())["pack"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None
    return float(pack["ours_images_per_s"]) / float(pack["processes"])


def sc1_burst_mib_s(gib: int) -> float:
    """sc1: 80 MiB/s burst per TiB, capped at 250 MiB/s (baseline 12 MiB/s per TiB)."""
    return min(250.0, 80.0 * gib / 1024)


def load_gpu_rates(path: Path = ROOT / "scripts" / "gpu_rates.json") -> dict[str, Any]:
    rates: dict[str, Any] = json.loads(path.read_text())
    return rates


def restored_gib(i: PlanInputs) -> int:
    """What each GPU instance restores: the right-sized dataset volume, or (work-volume) the whole data volume."""
    if i.dataset_snapshot == "work-volume":
        return i.data_volume_gib  # a volume from a snapshot is at least the source volume's size
    return volume_gib(i.packed_bytes, i.packed_files + 2)


def gp3_month(gib: int, iops: int, throughput: int, p: dict[str, Any]) -> float:
    return float(gib * p["ebs_gb_month"]["gp3"] + max(iops - 3000, 0) * p["gp3_iops_month_above_3000"]
            + max(throughput - 125, 0) * p["gp3_mibps_month_above_125"])  # fmt: skip


def feed_rate(i: PlanInputs, rates: dict[str, Any]) -> Row:
    """What the GPUs read (images/s x bytes per record, and one I/O per record at random) against the volume."""
    known = rates["instances"].get(i.gpu_instance_type)
    per_gpu = i.images_per_gpu_s or (rates["gpus"][known["gpu"]]["images_per_gpu_s"] if known else None)
    if per_gpu is None:
        return Row(f"feed rate ({i.gpu_instance_type})", None, 0.0, f"unknown: {rates['unmeasured']}")
    gpus = known["gpus"] if known else 1
    images_s = per_gpu * gpus
    record = i.packed_bytes / i.images
    mib_s, iops = images_s * record / MIB, images_s
    source = "--images-per-gpu-s" if i.images_per_gpu_s else f"{known['gpu']} ({rates['source'].split(',')[0]})"
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


def fleet_rows(i: PlanInputs, p: dict[str, Any], rates: dict[str, Any] | None = None) -> list[Row]:
    """The restored volume each GPU instance pays for, how soon it is fully loaded, the feed rate, the compute."""
    month, size = p["hours_per_month"], restored_gib(i)
    volume_month = gp3_month(size, i.restored_iops, i.restored_throughput, p)
    per_gpu = volume_month * i.gpu_hours / month
    why = ("a volume from a snapshot is at least the source volume's size" if i.dataset_snapshot == "work-volume"
           else f"the published data, {i.packed_bytes / GB:.0f} GB, and filesystem headroom")  # fmt: skip
    rows = [Row("restored volume per GPU instance", i.gpu_hours, per_gpu * i.gpu_instances,
                f"{i.gpu_instances} x {size} GiB {i.restored_volume_type} for {i.gpu_hours:.0f} h, "
                f"${volume_month * 24 / month:.2f} per GPU-day ({why})")]  # fmt: skip
    rate = rate_for(size) if i.initialization_rate == "auto" else None
    rate = int(i.initialization_rate) if i.initialization_rate.isdigit() else rate
    if rate:
        rows.append(Row("restored volume fully initialized", seconds_to_initialize(size, rate) / 3600, 0.0,
                        f"{size} GiB x 1024 / {rate} MiB/s provisioned initialization rate (EBS bills it per GiB; "
                        "see aws.amazon.com/ebs/pricing)"))  # fmt: skip
    rows.append(feed_rate(i, rates or load_gpu_rates()))
    hourly = p["instance_hourly"].get(i.gpu_instance_type)
    if hourly is not None:
        rows.append(Row(f"{i.gpu_instance_type} compute", i.gpu_hours, i.gpu_instances * i.gpu_hours * hourly,
                        f"{i.gpu_instances} x ${hourly}/h on demand"))  # fmt: skip
    return rows


def plan(inputs: PlanInputs, prices: dict[str, Any]) -> list[Row]:
    p, i = prices, inputs
    month = p["hours_per_month"]
    rows: list[Row] = []

    disk_mib_s = sc1_burst_mib_s(i.data_volume_gib) if i.data_volume_type == "sc1" else 125.0
    download_rate = min(i.bandwidth_mb_s * 1e6, disk_mib_s * MIB)
    download_h = i.archive_bytes / download_rate / 3600
    rows.append(Row("download", download_h, 0.0,
                    f"{i.archive_bytes / GB:.0f} GB at min({i.bandwidth_mb_s:.0f} MB/s link, "
                    f"{disk_mib_s:.0f} MiB/s {i.data_volume_type} burst)"))  # fmt: skip

    vcpus = p["t2_vcpus"].get(i.instance_type, 2)
    baseline = p["t2_baseline_per_vcpu"].get(i.instance_type)
    effective = vcpus if (baseline is None or i.cpu_credits == "unlimited") else vcpus * baseline
    cpu_h = i.images / (i.images_per_vcpu_s * effective) / 3600
    io_h = (i.archive_bytes + 3 * i.packed_bytes) / (disk_mib_s * MIB) / 3600  # read once; scatter, gather, write
    pack_h = max(cpu_h, io_h)
    surplus = 0.0
    if baseline is not None and i.cpu_credits == "unlimited":
        surplus = vcpus * (1 - baseline) * pack_h * p["t2_unlimited_surplus_per_vcpu_hour"]
    rows.append(Row("pack", pack_h, surplus,
                    f"{i.images:,} images at {i.images_per_vcpu_s:.0f} img/s per vCPU x {effective:.1f} vCPU "
                    f"({i.cpu_credits} credits), or the disk, whichever is slower"))  # fmt: skip

    backup_h = (i.archive_bytes + i.packed_bytes) / download_rate / 3600
    rows.append(
        Row("backup + snapshot", backup_h, 0.0, "upload at the same link rate; the snapshot copies in the background")
    )

    hours = download_h + pack_h + backup_h
    hourly = p["instance_hourly"][i.instance_type]
    rows.append(Row(f"{i.instance_type} instance", hours, hours * hourly, f"${hourly}/h for the whole run"))
    disk = i.data_volume_gib * p["ebs_gb_month"][i.data_volume_type] * hours / month
    rows.append(Row(f"{i.data_volume_type} {i.data_volume_gib} GiB volume", hours, disk,
                    f"${p['ebs_gb_month'][i.data_volume_type]}/GB-month while the download side exists"))  # fmt: skip

    stored = (i.archive_bytes + i.packed_bytes) / GB
    s3 = stored * p["s3_gb_month"][i.backup_storage_class]
    rows.append(Row("S3 backup, per month", None, s3, f"{stored:.0f} GB in {i.backup_storage_class}"))
    snapped = stored if i.dataset_snapshot == "work-volume" else i.packed_bytes / GB
    rows.append(Row("EBS snapshot, per month", None, snapped * p["snapshot_gb_month"],
                    f"{snapped:.0f} GB of written blocks ({i.dataset_snapshot})"))  # fmt: skip

    rows.extend(fleet_rows(i, p))
    if i.fsr_azs:
        fsr = i.fsr_azs * max(i.fsr_hours, 1.0) * p["fsr_dsu_hour"]
        rows.append(
            Row("fast snapshot restore", i.fsr_hours, fsr, f"{i.fsr_azs} AZ x ${p['fsr_dsu_hour']}/h, 1 h minimum")
        )
    return rows


HELP = "expected time and cost of a run, with every assumption"


def add_arguments(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    defaults = PlanInputs()
    add = parser.add_argument
    add("--bandwidth-mb-s", type=float, default=defaults.bandwidth_mb_s, help="download link in MB/s")
    add("--instance-type", default=defaults.instance_type)
    add("--cpu-credits", choices=("standard", "unlimited"), default=defaults.cpu_credits)
    add("--data-volume-gib", type=int, default=defaults.data_volume_gib)
    add("--gpu-instance-type", default=deployed.gpu_instance_types[0], help="default: the fleet's in ./cdk.json")
    add("--images-per-gpu-s", type=float, help="training images/s per GPU (default: scripts/gpu_rates.json)")
    add("--gpu-instances", type=int, default=defaults.gpu_instances)
    add("--gpu-hours", type=float, default=defaults.gpu_hours)
    add("--restored-iops", type=int, default=defaults.restored_iops)
    add("--restored-throughput", type=int, default=defaults.restored_throughput)
    add("--fsr-azs", type=int, default=0, help="fast snapshot restore in this many AZs (off by default)")


def command(args: argparse.Namespace) -> tuple[Any, str]:
    measured = measured_images_per_vcpu_s()
    inputs = PlanInputs(
        bandwidth_mb_s=args.bandwidth_mb_s, instance_type=args.instance_type, cpu_credits=args.cpu_credits,
        data_volume_gib=args.data_volume_gib, gpu_instances=args.gpu_instances, gpu_hours=args.gpu_hours,
        restored_iops=args.restored_iops, restored_throughput=args.restored_throughput, fsr_azs=args.fsr_azs,
        gpu_instance_type=args.gpu_instance_type, images_per_gpu_s=args.images_per_gpu_s,
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
