"""The GPU attach agent against moto's EC2/SSM, IMDSv2 stubs and real loop devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from bootstrap.cli import run as cli_run
from bootstrap.common.devices import DeviceRoots, mounted_device
from bootstrap.common.ebs import free_device_name
from bootstrap.common.imds import InstanceIdentity
from bootstrap.contract import tags
from bootstrap.contract.tags import OWNER as TAG_OWNER
from bootstrap.gpu import initialization, local_nvme
from bootstrap.gpu.attach import Attacher, AttachError, AttachOptions, volume_request
from bootstrap.instance.snapshot import TAG_PIPELINE
from tests.fixtures.aws_emulator import client
from tests.fixtures.deployment import Account
from tests.fixtures.ec2_world import gpu_instance, launch_instance
from tests.fixtures.imds import Identity, ImdsStub
from tests.fixtures.loopdev import blank_loop, loop_image, run
from tests.fixtures.strict_aws import available_volume, completed_snapshot

pytestmark = pytest.mark.usefixtures("aws_endpoint")


def published_snapshot(pipeline: str, parameter: str) -> str:
    """A completed, tagged dataset snapshot published the way the download instance does."""
    ec2 = client("ec2")
    source = available_volume(ec2, AvailabilityZone="us-east-1a", Size=8, VolumeType="sc1")
    snap = completed_snapshot(ec2, VolumeId=source, TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": [{"Key": TAG_PIPELINE, "Value": pipeline}]}])  # fmt: skip
    ec2.delete_volume(VolumeId=source)
    client("ssm").put_parameter(Name=parameter, Value=json.dumps({"snapshot_id": snap}), Type="String",
                                Overwrite=True)  # fmt: skip
    return str(snap)


def pipeline_volumes(pipeline: str) -> list[dict[str, Any]]:
    return list(client("ec2").describe_volumes(Filters=[{"Name": f"tag:{TAG_PIPELINE}", "Values": [pipeline]}])[
        "Volumes"])  # fmt: skip


def unmount(path: Path) -> None:
    if mounted_device(path) is not None:
        run("umount", str(path))


def test_pure_decisions() -> None:
    assert free_device_name([{"DeviceName": "/dev/xvda"}, {"DeviceName": "/dev/sdf"}]) == "/dev/sdg"
    assert free_device_name([{"DeviceName": "/dev/xvdf"}]) == "/dev/sdg"
    snapshot, identity = {"SnapshotId": "snap-1", "VolumeSize": 50}, InstanceIdentity("i-1", "us-west-2", "us-west-2c")
    request = volume_request(snapshot, identity, AttachOptions("p", iops=6000, throughput=500, initialization_rate=300))
    assert request["AvailabilityZone"] == "us-west-2c" and request["Encrypted"] and request["Iops"] == 6000
    assert {"Key": TAG_OWNER, "Value": "i-1"} in request["TagSpecifications"][0]["Tags"]
    assert request["VolumeInitializationRate"] == 300


def test_the_initialization_rate_is_chosen_from_the_snapshot_size() -> None:
    identity = InstanceIdentity("i-1", "us-west-2", "us-west-2c")
    rate = {size: volume_request({"SnapshotId": "s", "VolumeSize": size}, identity, AttachOptions("p")).get(
        "VolumeInitializationRate") for size in (2, 50, 70, 1000)}  # fmt: skip
    assert rate == {2: 100, 50: 220, 70: 300, 1000: 300}  # 50 GiB x 1024 / 240 s = 213.3 -> 220 MiB/s
    assert initialization.seconds_to_initialize(50, 220) < 240  # a right-sized ImageNet volume: under 4 minutes
    lazy = AttachOptions("p", initialize_within=None)
    assert "VolumeInitializationRate" not in volume_request({"SnapshotId": "s", "VolumeSize": 50}, identity, lazy)


@pytest.fixture
def dataset_image(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Loop devices holding an ext4 'dataset' with one known file; detached afterwards."""
    stack = ExitStack()

    def make(name: str) -> str:
        content = tmp_path / "content" / name
        content.mkdir(parents=True)
        (content / "train.idx").write_text(f"0\t0\n# {name}\n")
        return stack.enter_context(loop_image(tmp_path / "img" / f"{name}.img", 8, content))

    with stack:
        yield make


@pytest.mark.root
@pytest.mark.parametrize("style", ["nvme", "xen"])
def test_attach_mounts_the_dataset_read_only(
    account: Account, style: str, tmp_path: Path, dataset_image: Callable[[str], str]
) -> None:
    pipeline = f"gpu-{style}"
    published_snapshot(pipeline, f"/{pipeline}/snapshot")
    with gpu_instance(tmp_path, pipeline, "us-east-1c", style, [dataset_image("one")], account=account) as gpu:
        result = Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, gpu.opts).attach()
        try:
            assert (gpu.opts.mount_point / "train.idx").read_text().endswith("# one\n")
            with pytest.raises(OSError):
                (gpu.opts.mount_point / "x").write_text("read-only")
            assert "ro,noatime,nofail" in gpu.opts.fstab.read_text()
            assert json.loads(gpu.opts.ready_marker.read_text())["volume_id"] == result["volume_id"]
            # reboot: the agent runs again, finds its volume, creates nothing new
            unmount(gpu.opts.mount_point)
            again = Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, gpu.opts).attach()
            assert again["volume_id"] == result["volume_id"] and len(pipeline_volumes(pipeline)) == 1
            assert gpu.opts.fstab.read_text().count("UUID=") == 1
        finally:
            unmount(gpu.opts.mount_point)
    volume = client("ec2").describe_volumes(VolumeIds=[result["volume_id"]])["Volumes"][0]
    assert volume["AvailabilityZone"] == "us-east-1c" and volume["VolumeType"] == "gp3" and volume["Encrypted"]
    instance = client("ec2").describe_instances(InstanceIds=[gpu.instance_id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["imagenet-staging:dataset-ready"] == result["volume_id"]


@pytest.mark.root
def test_twenty_agents_at_once_leave_nothing_behind(
    account: Account, tmp_path: Path, dataset_image: Callable[[str], str]
) -> None:
    pipeline = "gpu-fleet"
    published_snapshot(pipeline, f"/{pipeline}/snapshot")
    azs = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
    devices = [dataset_image(f"d{i}") for i in range(20)]
    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    with ExitStack() as stack:
        # 40 pollers share one emulator process: poll less often than a real agent would need to
        gpus = [stack.enter_context(gpu_instance(tmp_path / f"gpu{i}", pipeline, azs[i % 4], "nvme", [devices[i]],
                                                 account=account, poll=0.3)) for i in range(20)]  # fmt: skip

        def agent(i: int) -> None:
            try:
                results[i] = Attacher(
                    gpus[i].client("ec2"), gpus[i].client("ssm"), gpus[i].identity, gpus[i].opts
                ).attach()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for gpu in gpus:
            unmount(gpu.opts.mount_point)
    assert not errors
    ec2 = client("ec2")
    assert len({r["volume_id"] for r in results.values()}) == 20
    for i, gpu in enumerate(gpus):
        volume = ec2.describe_volumes(VolumeIds=[results[i]["volume_id"]])["Volumes"][0]
        assert volume["AvailabilityZone"] == gpu.az and volume["Attachments"][0]["InstanceId"] == gpu.instance_id
        mappings = ec2.describe_instances(InstanceIds=[gpu.instance_id])["Reservations"][0]["Instances"][0][
            "BlockDeviceMappings"]  # fmt: skip
        assert [m["Ebs"]["DeleteOnTermination"] for m in mappings if m["Ebs"]["VolumeId"] == volume["VolumeId"]] == [
            True
        ]
    ec2.terminate_instances(InstanceIds=[g.instance_id for g in gpus])
    assert pipeline_volumes(pipeline) == []


def _fail_on(operation: str, nth: int = 1) -> Callable[..., None]:
    calls = {"n": 0}

    def hook(**_kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            raise RuntimeError(f"injected failure in {operation}")

    return hook


FAILURES = {
    "create volume": ("CreateVolume", 1),
    "wait for the volume to be available": ("DescribeVolumes", 2),
    "attach volume": ("AttachVolume", 1),
    "set DeleteOnTermination": ("ModifyInstanceAttribute", 1),
}


@pytest.mark.parametrize("step", FAILURES)
def test_a_failure_at_each_step_leaves_no_volume(account: Account, step: str, tmp_path: Path) -> None:
    pipeline = f"fail-{FAILURES[step][0].lower()}"
    published_snapshot(pipeline, f"/{pipeline}/snapshot")
    operation, nth = FAILURES[step]
    commands: list[list[str]] = []
    with gpu_instance(tmp_path, pipeline, "us-east-1b", "nvme", [], account=account, shutdown_on_failure=True) as gpu:
        ec2 = gpu.client("ec2")
        ec2.meta.events.register(f"before-call.ec2.{operation}", _fail_on(operation, nth))
        attacher = Attacher(
            ec2, gpu.client("ssm"), gpu.identity, gpu.opts, run=lambda argv: commands.append(argv) or ""
        )
        with pytest.raises(AttachError, match=f"attach failed at '{step}'.*injected failure"):
            attacher.attach()
    assert pipeline_volumes(pipeline) == []
    assert commands and commands[-1][0] == "shutdown"


def test_device_that_never_appears_is_cleaned_up(account: Account, tmp_path: Path) -> None:
    pipeline = "fail-device"
    published_snapshot(pipeline, f"/{pipeline}/snapshot")
    with gpu_instance(tmp_path, pipeline, "us-east-1a", "nvme", [], account=account, hotplug=False) as gpu:
        opts = AttachOptions(**{**gpu.opts.__dict__, "timeout_seconds": 3.0})  # attaches, but no device shows
        with pytest.raises(AttachError, match="at 'find the block device': timed out"):
            Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, opts).attach()
    assert pipeline_volumes(pipeline) == []


@pytest.mark.root
def test_mount_failure_is_cleaned_up(account: Account, tmp_path: Path, dataset_image: Callable[[str], str]) -> None:
    pipeline = "fail-mount"
    published_snapshot(pipeline, f"/{pipeline}/snapshot")

    def runner(argv: list[str]) -> str:
        if argv[0] == "mount":
            raise AttachError("mount: wrong fs type (injected)")
        return ""

    with (
        gpu_instance(tmp_path, pipeline, "us-east-1a", "xen", [dataset_image("m")], account=account) as gpu,
        pytest.raises(AttachError, match="at 'mount': mount: wrong fs type"),
    ):
        Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, gpu.opts, run=runner).attach()
    assert pipeline_volumes(pipeline) == []


def test_missing_or_incomplete_snapshot_is_a_clear_error(account: Account, tmp_path: Path) -> None:
    with gpu_instance(tmp_path, "no-snapshot", "us-east-1a", "nvme", [], account=account) as gpu:
        with pytest.raises(AttachError, match=r"cannot read /no-snapshot/snapshot.*published its snapshot"):
            Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, gpu.opts).attach()
        client("ssm").put_parameter(Name="/no-snapshot/snapshot", Value="not yet", Type="String")
        with pytest.raises(AttachError, match=r"holds no snapshot id yet \('not yet'\); has the download"):
            Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, gpu.opts).attach()
        by_tag = AttachOptions(**{**gpu.opts.__dict__, "snapshot_parameter": None})
        with pytest.raises(AttachError, match="no completed snapshot tagged"):
            Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, by_tag).attach()


def test_cli_exit_code_and_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    ec2 = client("ec2")
    instance_id = launch_instance(ec2, "us-east-1a", "g5.xlarge")
    with ImdsStub(Identity(instance_id, "us-east-1a")) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint)
        code = cli_run(["attach", "--snapshot-parameter", "/nothing/here", "--mount-point", str(tmp_path / "d"),
                        "--fstab", str(tmp_path / "fstab"), "--ready-marker", str(tmp_path / "r")])  # fmt: skip
    assert code == 1 and "attach failed at 'find snapshot'" in caplog.text


def test_attach_needs_only_boto3() -> None:
    """A GPU instance installs bootstrap/requirements-attach.txt only, so attach must not import the packer."""
    code = (
        "import sys; from bootstrap.cli import build_parser; build_parser(); "
        "print(sorted({'numpy', 'cv2', 'scipy', 'bootstrap.engine'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.root
def test_the_ready_marker_and_a_tag_record_when_the_volume_is_fully_initialized(
    account: Account, tmp_path: Path, dataset_image: Callable[[str], str]
) -> None:
    pipeline = "gpu-hydrate"
    published_snapshot(pipeline, f"/{pipeline}/snapshot")
    with gpu_instance(tmp_path, pipeline, "us-east-1c", "nvme", [dataset_image("h")], account=account) as gpu:
        spawned: list[list[str]] = []
        opts = AttachOptions(**{**gpu.opts.__dict__, "watch_initialization": True})
        result = Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, opts, spawn=spawned.append).attach()
        try:
            marker = json.loads(opts.ready_marker.read_text())
            assert marker["initialization_rate"] == 100  # an 8 GiB snapshot: the lowest rate loads it in 82 s
            (watcher,) = spawned
            assert watcher[-5:] == ["watch-initialization", "--volume-id", result["volume_id"], "--ready-marker",
                                    str(opts.ready_marker)]  # fmt: skip
            initialization.watch(gpu.client("ec2"), result["volume_id"], gpu.instance_id, opts.ready_marker,
                                 poll_seconds=0.1)  # fmt: skip
        finally:
            unmount(gpu.opts.mount_point)
    marker = json.loads(opts.ready_marker.read_text())
    assert marker["initialization_type"] == "provisioned-rate" and marker["initialized"].startswith("20")
    instance = client("ec2").describe_instances(InstanceIds=[gpu.instance_id])["Reservations"][0]["Instances"][0]
    assert {t["Key"]: t["Value"] for t in instance["Tags"]}[tags.INITIALIZED] == marker["initialized"]


def _instance_store(roots: DeviceRoots, name: str, target: str) -> None:
    node = roots.sys_root / "block" / name / "device"
    node.mkdir(parents=True)
    (node / "model").write_text(local_nvme.INSTANCE_STORE_MODEL + "\n")
    roots.dev_root.mkdir(parents=True, exist_ok=True)
    (roots.dev_root / name).symlink_to(target)


def test_instance_store_disks_are_found_by_model_and_striped_when_several(tmp_path: Path) -> None:
    roots = DeviceRoots(tmp_path / "sys", tmp_path / "dev")
    ebs = roots.sys_root / "block" / "nvme0n1" / "device"
    ebs.mkdir(parents=True)
    (ebs / "model").write_text("Amazon Elastic Block Store\n")
    for name in ("nvme1n1", "nvme2n1"):
        _instance_store(roots, name, "/dev/null")
    disks = local_nvme.instance_store_devices(roots)
    assert disks == [roots.dev_root / "nvme1n1", roots.dev_root / "nvme2n1"]
    striped, target = local_nvme.prepare_commands(disks)
    assert striped[0][:2] == ["mdadm", "--create"] and "--level=0" in striped[0] and "--raid-devices=2" in striped[0]
    assert striped[1][0] == "mkfs.ext4" and striped[1][-1] == target == local_nvme.MD_DEVICE
    single, target = local_nvme.prepare_commands(disks[:1])
    assert [c[0] for c in single] == ["mkfs.ext4"] and target == str(disks[0])


@pytest.mark.root
def test_local_nvme_serves_a_copy_from_the_instance_store(
    account: Account, tmp_path: Path, dataset_image: Callable[[str], str]
) -> None:
    pipeline = "gpu-local"
    published_snapshot(pipeline, f"/{pipeline}/snapshot")
    with (
        blank_loop(tmp_path / "instance-store.img", 1) as store,
        gpu_instance(
            tmp_path, pipeline, "us-east-1c", "nvme", [dataset_image("local")], account=account, local_nvme=True
        ) as gpu,  # fmt: skip
    ):
        _instance_store(gpu.opts.roots, "nvme9n1", store)
        result = Attacher(gpu.client("ec2"), gpu.client("ssm"), gpu.identity, gpu.opts).attach()
        try:
            mounted = mounted_device(gpu.opts.mount_point)
            assert mounted is not None and os.path.realpath(mounted) == os.path.realpath(store)  # not the EBS one
            assert (gpu.opts.mount_point / "train.idx").read_text().endswith("# local\n")
            with pytest.raises(OSError):
                (gpu.opts.mount_point / "x").write_text("read-only")
            marker = json.loads(gpu.opts.ready_marker.read_text())
            assert marker["local_nvme"]["devices"] == [str(gpu.opts.roots.dev_root / "nvme9n1")]
            assert marker["local_nvme"]["seconds"] >= 0 and marker["volume_id"] == result["volume_id"]
        finally:
            unmount(gpu.opts.mount_point)
