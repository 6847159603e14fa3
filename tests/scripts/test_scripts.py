"""The operator CLI: plan against a hand-computed case, status against a seeded emulator, golden help."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from bootstrap.contract import tags
from scripts.cli import COMMANDS, build_parser
from scripts.cli import run as scripts_run
from scripts.common import deployed_config
from scripts.plan import PlanInputs, compare, headline, plan, totals
from scripts.plan_data import load_prices
from scripts.status import gather, render
from scripts.synthetic_hub import pinned_table
from tests.fixtures.aws_emulator import client
from tests.fixtures.paths import GOLDEN
from tests.fixtures.strict_aws import available_volume, completed_snapshot


def test_plan_matches_a_hand_computed_case() -> None:
    inputs = PlanInputs(archive_bytes=100 * 10**9, images=1_000_000, packed_bytes=25 * 10**9, bandwidth_mb_s=50,
                        upload_mb_s=50, images_per_vcpu_s=100, cpu_credits="standard", follow_download=False,
                        backup_while_packing=False, gpu_instances=2, gpu_hours=10, restored_iops=4000,
                        restored_throughput=250, fsr_azs=1, fsr_hours=0.5)  # fmt: skip
    rows = {r.item: r for r in plan(inputs, load_prices())}
    # download: 100 GB at min(50 MB/s, 78.125 MiB/s) = 2000 s
    assert rows["download"].hours == pytest.approx(2000 / 3600)
    # pack: 1e6 images / 100 img/s = 10,000 vCPU-s of work on a t2.large (2 vCPU, baseline 30% each, standard
    # credits). Banked when pack starts: 60 launch credits (3,600 vCPU-s) + 0.6 vCPU x 2,000 s of download
    # = 4,800 vCPU-s. Full speed would take 5,000 s and earn 3,000 more: 7,800 < 10,000, so the credits run
    # out and it finishes at the baseline: (10,000 - 4,800) / 0.6 = 8,667 s. The disk would need only 2,136 s.
    assert rows["pack"].hours == pytest.approx(8666.67 / 3600, rel=1e-5)
    hours = (2000 + 8666.67 + 125e9 / 50e6) / 3600
    assert rows["t2.large instance"].usd == pytest.approx(hours * 0.0928, rel=1e-5)
    assert rows["sc1 1000 GiB volume"].usd == pytest.approx(1000 * 0.015 * hours / 730, rel=1e-5)
    assert rows["S3 backup, per month"].usd == pytest.approx(125 * 0.0125)
    # the published volume: 25e9 B + 2% + 4 KiB x 14 entries + 1 GiB = 24.75 GiB -> 25 GiB of gp3:
    # $2 + 1000 extra IOPS x $0.005 + 125 extra MiB/s x $0.04 = $12/month, 10 h, 2 instances
    assert rows["restored volume per GPU instance"].usd == pytest.approx(2 * 12 * 10 / 730)
    assert rows["EBS snapshot, per month"].usd == pytest.approx(25 * 0.05)  # only the packed data is snapshotted
    assert rows["fast snapshot restore"].usd == pytest.approx(0.75)  # one-hour minimum
    # the work volume instead: gp3 1000 GiB: $80 + $5 + $5 = $90/month
    work = {r.item: r for r in plan(dataclasses.replace(inputs, dataset_snapshot="work-volume"), load_prices())}
    assert work["restored volume per GPU instance"].usd == pytest.approx(2 * 90 * 10 / 730)
    assert work["EBS snapshot, per month"].usd == pytest.approx(125 * 0.05)  # archives and packed data


def test_plan_for_imagenet_on_the_defaults_restores_a_right_sized_volume() -> None:
    rows = {r.item: r for r in plan(PlanInputs(), load_prices())}
    # 40e9 B + 2% + 4 KiB x 14 + 1 GiB = 38.99 GiB -> 39 GiB; gp3 $0.08/GB-month x 39 = $3.12/month
    restored = rows["restored volume per GPU instance"]
    assert "39 GiB gp3" in restored.assumption and restored.usd == pytest.approx(3.12 * 24 / 730)
    assert "$0.10 per GPU-day" in restored.assumption  # was $2.63 for the 1000 GiB work volume
    # auto rate: 39 x 1024 / 240 s = 166.4 -> 170 MiB/s; 39 x 1024 / 170 = 235 s to every block
    assert rows["restored volume fully initialized"].hours == pytest.approx(39 * 1024 / 170 / 3600)
    assert rows["restored volume fully initialized"].hours * 3600 < 300


def test_the_plan_headline_says_when_the_dataset_is_published_and_what_it_costs() -> None:
    inputs = PlanInputs(archive_bytes=100 * 10**9, images=1_000_000, packed_bytes=25 * 10**9, bandwidth_mb_s=50,
                        upload_mb_s=50, images_per_vcpu_s=100, cpu_credits="standard",
                        follow_download=False, backup_while_packing=False)  # fmt: skip
    prices = load_prices()
    rows = plan(inputs, prices)
    sums = totals(inputs, rows, prices)
    # the hand-computed case above: 2,000 s download, 8,667 s pack, 2,500 s backup = 3.66 h
    assert headline(inputs, rows, sums) == (
        "The dataset is published about 3.7 h after the download instance starts: packed after 3.0 h (0.6 h download "
        "at 50 MB/s, then 2.4 h pack on a t2.large with standard credits), then 0.7 h backup and snapshot. "
        f"${sums['one-off']:.2f} once, then ${sums['monthly']:.2f} a month.")  # fmt: skip
    assert sums["hours to dataset"] == pytest.approx((2000 + 8666.67 + 2500) / 3600, rel=1e-5)


def test_following_the_download_the_plan_takes_the_slower_of_pack_and_the_download_plus_its_tail() -> None:
    base = PlanInputs(archive_bytes=100 * 10**9, images=1_000_000, packed_bytes=25 * 10**9, upload_mb_s=50,
                      images_per_vcpu_s=100, cpu_credits="unlimited")  # fmt: skip
    prices = load_prices()
    # a fast link: pack (1e6 / 100 / 2 vCPU = 5,000 s) is the slower; the download (2,000 s) hides under it
    fast = {r.item: r for r in plan(base, prices)}
    assert fast["pack"].hours == pytest.approx(5000 / 3600)
    assert fast["to packed data"].hours == pytest.approx(5000 / 3600)
    # a slow link, 10 MB/s: 10,000 s of download, then the train records' second pass after the last byte:
    # 25e9 B gathered and written = 50e9 B at sc1's 80 MiB/s burst on 1000 GiB = 596 s
    slow = dataclasses.replace(base, bandwidth_mb_s=10)
    rows = plan(slow, prices)
    by_item, sums = {r.item: r for r in rows}, totals(slow, rows, prices)
    tail = 50e9 / (78.125 * 2**20)
    assert by_item["to packed data"].hours == pytest.approx((10_000 + tail) / 3600)
    assert "10 min of pack after its last byte" in by_item["to packed data"].assumption
    # the backup goes at the instance's upload rate, not the slow source's: the archives (100 GB at 50 MB/s,
    # 2,000 s) as they download, so they are up with their last byte; then the packed data (25 GB, 500 s)
    assert by_item["backup + snapshot"].hours == pytest.approx(500 / 3600)
    assert sums["hours to dataset"] == pytest.approx((10_000 + tail + 500) / 3600)
    # a slow upload, 10 MB/s: the archives' upload (10,000 s, begun with the download) outlasts the download
    # (1,000 s at 100 MB/s) and pack (5,000 s) by 5,000 s; then the packed data, 2,500 s
    quick = {r.item: r for r in plan(dataclasses.replace(base, bandwidth_mb_s=100, upload_mb_s=10), prices)}
    assert quick["backup + snapshot"].hours == pytest.approx((10_000 - 5000 + 2500) / 3600)
    assert headline(slow, rows, sums).startswith(
        "The dataset is published about 3.1 h after the download instance starts: packed after 2.9 h (2.8 h "
        "download at 10 MB/s, packed as it arrives: 1.4 h pack on a t2.large with unlimited credits)")  # fmt: skip
    after = {r.item: r for r in plan(dataclasses.replace(slow, backup_while_packing=False), prices)}
    assert after["backup + snapshot"].hours == pytest.approx(2500 / 3600)  # 125 GB at 50 MB/s, all after pack
    sequential = {r.item: r for r in plan(dataclasses.replace(slow, follow_download=False), prices)}
    assert sequential["to packed data"].hours == pytest.approx((10_000 + 5000) / 3600)


def test_plan_counts_every_format_in_the_published_volume_backup_and_snapshot() -> None:
    base = PlanInputs(archive_bytes=100 * 10**9, packed_bytes=25 * 10**9, images=1_000_000,
                      format_ratios=(("recordio", 1.0), ("webdataset", 1.1), ("tree", 1.2)))  # fmt: skip
    every = dataclasses.replace(base, formats=("recordio", "webdataset", "tree"))
    one, three = ({r.item: r for r in plan(i, load_prices())} for i in (base, every))
    # 25e9 x (1 + 1.1 + 1.2) = 82.5e9 B; + 2%; + 4 KiB x (12 files + 77 shards + 1e6 tree files + 2) + 1 GiB
    need = 82.5e9 * 1.02 + 4096 * (12 + 77 + 1_000_000 + 2) + 2**30
    assert f"{-(-need // 2**30):.0f} GiB gp3" in three["restored volume per GPU instance"].assumption
    assert "(recordio, webdataset, tree), 82 GB" in three["restored volume per GPU instance"].assumption
    assert three["S3 backup, per month"].usd == pytest.approx((100 + 82.5) * 0.0125)
    assert three["EBS snapshot, per month"].usd == pytest.approx(82.5 * 0.05)
    assert one["EBS snapshot, per month"].usd == pytest.approx(25 * 0.05)


def test_the_feed_rate_says_what_to_set_when_the_volume_would_starve_the_gpus() -> None:
    starving = {r.item: r for r in plan(PlanInputs(gpu_instance_type="p4d.24xlarge"), load_prices())}
    # 8 x 2470 img/s x 30,050 B/record = 566 MiB/s and 19,760 IOPS, over 125 MiB/s / 3000 IOPS
    feed = starving["feed rate (p4d.24xlarge)"].assumption
    assert "566 MiB/s" in feed and "19,760 IOPS" in feed
    assert "restored_throughput=700 restored_iops=24000" in feed  # 566 x 1.2 -> 700; 19,760 x 1.2 -> 24,000
    enough = {r.item: r for r in plan(PlanInputs(gpu_instance_type="p4d.24xlarge", restored_throughput=700,
                                                 restored_iops=24000), load_prices())}  # fmt: skip
    assert "keeps up" in enough["feed rate (p4d.24xlarge)"].assumption
    unknown = {r.item: r for r in plan(PlanInputs(), load_prices())}["feed rate (g5.xlarge)"].assumption
    assert "pass --images-per-gpu-s" in unknown


def test_unlimited_credits_cost_surplus_but_pack_faster() -> None:
    prices = load_prices()
    standard = {r.item: r for r in plan(PlanInputs(images_per_vcpu_s=100, cpu_credits="standard"), prices)}
    unlimited = {r.item: r for r in plan(PlanInputs(images_per_vcpu_s=100, cpu_credits="unlimited"), prices)}
    assert unlimited["pack"].hours < standard["pack"].hours and unlimited["pack"].usd > 0 == standard["pack"].usd


def test_a_t3_in_unlimited_mode_pays_for_the_credits_it_borrows() -> None:
    inputs = PlanInputs(archive_bytes=36 * 10**9, images=720_000, packed_bytes=9 * 10**9, bandwidth_mb_s=50,
                        upload_mb_s=50, images_per_vcpu_s=100, instance_type="t3.large", cpu_credits="unlimited",
                        follow_download=False, backup_while_packing=False)  # fmt: skip
    rows = {r.item: r for r in plan(inputs, load_prices())}
    # download 36e9 B / 50e6 B/s = 720 s, then pack; t3 has no launch credits, so 0.6 vCPU x 720 s = 432 vCPU-s banked.
    # work 720,000 / 100 = 7,200 vCPU-s at full speed on 2 vCPU = 3,600 s, earning 0.6 x 3,600 = 2,160 vCPU-s;
    # surplus 7,200 - 432 - 2,160 = 4,608 vCPU-s = 1.28 vCPU-h x $0.05
    assert rows["pack"].hours == pytest.approx(1.0)
    assert rows["pack"].usd == pytest.approx(1.28 * 0.05)
    assert rows["t3.large instance"].usd == pytest.approx((720 + 3600 + 45e9 / 50e6) / 3600 * 0.0832)
    # following the download, pack starts with it and banks nothing: 7,200 - 2,160 = 5,040 vCPU-s borrowed
    following = {r.item: r for r in plan(dataclasses.replace(inputs, follow_download=True), load_prices())}
    assert following["pack"].usd == pytest.approx(1.4 * 0.05)


def test_the_comparison_prices_each_download_instance_in_each_credit_mode() -> None:
    inputs, prices = PlanInputs(images_per_vcpu_s=100), load_prices()
    rows = {(c["instance_type"], c["cpu_credits"]): c for c in compare(inputs, prices)}
    assert set(rows) == {(t, m) for t in ("t2.large", "t2.xlarge", "t2.2xlarge") for m in ("standard", "unlimited")}
    case = dataclasses.replace(inputs, instance_type="t2.xlarge", cpu_credits="standard")
    sums = totals(case, plan(case, prices), prices)
    assert rows["t2.xlarge", "standard"] == {"instance_type": "t2.xlarge", "cpu_credits": "standard",
                                             "hours": round(sums["hours to dataset"], 2),
                                             "one_off_usd": round(sums["one-off"], 2)}  # fmt: skip
    # CPU-bound at 100 img/s per vCPU: borrowing credits beats the baseline in time and, here, in money
    assert rows["t2.large", "unlimited"]["hours"] < rows["t2.large", "standard"]["hours"]
    assert rows["t2.large", "unlimited"]["one_off_usd"] < rows["t2.large", "standard"]["one_off_usd"]
    assert PlanInputs().cpu_credits == "unlimited"


def test_totals_add_up_the_rows_and_the_fleet_includes_its_compute() -> None:
    inputs = PlanInputs(gpu_instance_type="g6.xlarge", gpu_instances=3, gpu_hours=10, fsr_azs=1)
    prices = load_prices()
    rows = {r.item: r for r in plan(inputs, prices)}
    sums = totals(inputs, list(rows.values()), prices)
    assert rows["g6.xlarge compute"].usd == pytest.approx(3 * 10 * 0.8048)
    assert sums["one-off"] == pytest.approx(rows["pack"].usd + rows["t2.large instance"].usd
                                            + rows["sc1 1000 GiB volume"].usd)  # fmt: skip
    assert sums["monthly"] == pytest.approx(rows["S3 backup, per month"].usd + rows["EBS snapshot, per month"].usd)
    assert sums["fleet"] == pytest.approx(rows["g6.xlarge compute"].usd + rows["restored volume per GPU instance"].usd
                                          + rows["fast snapshot restore"].usd)  # fmt: skip
    # one GPU instance-day: 24 h x $0.8048 + 39 GiB gp3 at $0.08/GB-month for 24 of 730 hours
    assert sums["per GPU-instance day"] == pytest.approx(24 * 0.8048 + 39 * 0.08 * 24 / 730)


def test_status_against_the_emulator(aws_endpoint: str) -> None:
    ssm, ec2 = client("ssm"), client("ec2")
    assert "nothing published yet" in render(gather(ssm, ec2, pipeline="st", status_parameter="/st/status",
                                                    snapshot_parameter="/st/snapshot"))  # fmt: skip
    volume = available_volume(ec2, AvailabilityZone="us-east-1a", Size=8, TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": tags.PIPELINE, "Value": "st"}]}])  # fmt: skip
    snapshot = completed_snapshot(ec2, VolumeId=volume)
    ssm.put_parameter(Name="/st/status", Type="String", Value=json.dumps(
        {"stage": "pack train", "state": "running", "done": 500, "total": 1000, "unit": "images", "rate": 50.0,
         "eta_seconds": 10, "last_error": None}))  # fmt: skip
    ssm.put_parameter(Name="/st/snapshot", Type="String", Value=json.dumps({"snapshot_id": snapshot}))
    text = render(gather(ssm, ec2, pipeline="st", status_parameter="/st/status", snapshot_parameter="/st/snapshot"))
    assert "pack train running - 500/1,000 images at 50.0/s, ETA 10s" in text
    assert f"snapshot: {snapshot} completed" in text and f"volume {volume} available" in text
    image = ssm.get_parameter(Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
    instance_tags = [{"Key": tags.PIPELINE, "Value": "st"}, {"Key": tags.READY, "Value": volume}]
    gpu = ec2.run_instances(ImageId=image["Parameter"]["Value"], MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
                            TagSpecifications=[{"ResourceType": "instance", "Tags": instance_tags}])  # fmt: skip
    text = render(gather(ssm, ec2, pipeline="st", status_parameter="/st/status", snapshot_parameter="/st/snapshot"))
    assert f"instance {gpu['Instances'][0]['InstanceId']} g5.xlarge running" in text
    assert f"dataset {volume} mounted" in text
    ssm.put_parameter(Name="/st/status", Type="String", Overwrite=True, Value=json.dumps(
        {"stage": "run", "state": "done", "done": 100, "total": 100, "unit": "%"}))  # fmt: skip
    done = render(gather(ssm, ec2, pipeline="st", status_parameter="/st/status", snapshot_parameter="/st/snapshot"))
    assert "status: finished; every stage is done" in done


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_matches_golden(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    chosen = parser._subparsers._group_actions[0].choices[command] if command else parser  # type: ignore[union-attr]
    text = chosen.format_help()
    golden = GOLDEN / f"scripts-help{'-' + command if command else ''}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"help changed; rerun with UPDATE_GOLDEN=1 if intended ({golden})"


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert scripts_run(["--json", "plan", "--gpu-instances", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"]["gpu_instances"] == 4 and data["prices"]["region"] == "us-east-1"


def test_plan_downloads_the_files_of_the_dataset_table_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hub table's shards (as hub-table writes it): their bytes and the counts, not ILSVRC2012's archives."""
    table = pinned_table(150, 7, shard_bytes=10**9, counts={"train": 1_000_000, "val": 40_000})
    (tmp_path / "hub.json").write_text(json.dumps(table))
    assert scripts_run(["--json", "plan", "--dataset-table", str(tmp_path / "hub.json")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"]["archive_bytes"] == 157 * 10**9 and data["inputs"]["images"] == 1_040_000
    download = next(r for r in data["rows"] if r["item"] == "download")
    assert download["assumption"].startswith("timm/imagenet-1k-wds's shards, 157 GB at")
    default = PlanInputs()
    assert (default.archive_bytes, default.images) == (154_642_401_280, 1_331_167)  # ILSVRC2012's, without a table


def test_defaults_follow_the_deployed_cdk_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Run from the repository, the CLI targets what `cdk deploy` created from ./cdk.json; flags still override."""
    monkeypatch.chdir(tmp_path)
    assert build_parser(deployed_config()).parse_args(["status"]).pipeline == "imagenet-staging"  # no cdk.json
    (tmp_path / "cdk.json").write_text(json.dumps({"context": {"name": "my-run", "@aws-cdk/flag": True}}))
    args = build_parser(deployed_config()).parse_args(["status"])
    assert (args.pipeline, args.status_parameter, args.snapshot_parameter) == ("my-run", "/my-run/status",
                                                                               "/my-run/snapshot")  # fmt: skip
    assert build_parser(deployed_config()).parse_args(["status", "--pipeline", "other"]).pipeline == "other"
    (tmp_path / "cdk.json").write_text(json.dumps({"context": {"data_volume_gib": 5}}))
    assert scripts_run(["status"]) == 2
    assert "cdk.json: context key 'data_volume_gib'" in capsys.readouterr().err


def test_no_region_is_one_line_that_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], aws_endpoint: str
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # a laptop with credentials but no `aws configure` region
    assert scripts_run(["status"]) == 1
    err = capsys.readouterr().err
    assert "no AWS region: give --region" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
