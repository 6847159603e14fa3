"""Publishing the packed data on a right-sized volume: sizes, the verified copy, the snapshot, nothing left behind.

Against the strict layer (every call authorized against the download role), an
IMDSv2 stub and real loop devices: the work volume is a loop-mounted ext4, the
dataset volume a sparse image that appears when EC2 reports it attached.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bootstrap.common.commands import run_command
from bootstrap.common.devices import mounted_device
from bootstrap.common.imds import InstanceIdentity
from bootstrap.common.state import Markers
from bootstrap.contract import tags
from bootstrap.instance.backup import Backup, BackupOptions
from bootstrap.instance.dataset_volume import (
    GIB,
    DatasetVolumePublisher,
    PublishError,
    PublishOptions,
    mkfs_command,
    plan_publish,
)
from bootstrap.instance.snapshot import SnapshotRequest
from bootstrap.layout import DataLayout
from tests.fixtures.aws_emulator import client
from tests.fixtures.deployment import Account, Names, client_as, default_bucket
from tests.fixtures.ec2_world import World, instance_with_data_volume
from tests.fixtures.imds import instance_env
from tests.fixtures.loopdev import loop_attach, run

pytestmark = pytest.mark.usefixtures("aws_endpoint")


def test_the_plan_sizes_the_volume_from_what_is_published() -> None:
    files = [{"relpath": "recordio/train.rec", "size": 40 * GIB, "sha256": "a"},
             {"relpath": "recordio/train.idx", "size": 30 << 20, "sha256": "b"},
             {"relpath": "archives/ILSVRC2012_img_train.tar", "size": 138 * GIB, "sha256": "c"},
             {"relpath": "webdataset/train-000000.tar", "size": GIB, "sha256": "d"},
             {"relpath": "imagenet/train/n01/x.JPEG", "size": 100_000, "sha256": "e"}]  # fmt: skip
    plan = plan_publish({"files": files[:3]}, 5000)
    assert [f.relpath for f in plan.files] == ["recordio/train.rec", "recordio/train.idx"]  # never the archives
    data = 40 * GIB + (30 << 20) + 5000
    need = data + data // 50 + 4096 * 3 + GIB  # two files and their one folder, 2%, 1 GiB
    assert plan.size_gib == -(-need // GIB) == 42 and plan.inodes == 2 + 1 + 1024
    every_format = plan_publish({"files": files}, 5000)  # whatever pack wrote: records, shards, tree
    assert len(every_format.files) == 4 and every_format.inodes == 4 + 3 + 1024
    command = mkfs_command(Path("/dev/xvdg"), plan)
    assert command[-1] == "/dev/xvdg" and "-T" in command and "largefile" in command and "-m" in command


def _packed(world: World, bucket: str) -> SnapshotRequest:
    """A data directory as pack + backup leave it, with the backup's manifest."""
    recordio = world.mount / "recordio"
    recordio.mkdir()
    for name, size in (("train.rec", 3 << 20), ("train.idx", 40_000), ("val.rec", 700_000), ("synsets.txt", 900)):
        (recordio / name).write_bytes(os.urandom(size))
    for relpath, size in (("webdataset/train-000000.tar", 300_000), ("imagenet/train/n01/a.JPEG", 5000),
                          ("imagenet/meta.bin", 800)):  # the other formats, when pack made them  # fmt: skip
        (world.mount / relpath).parent.mkdir(parents=True, exist_ok=True)
        (world.mount / relpath).write_bytes(os.urandom(size))
    (world.mount / "archives").mkdir()
    (world.mount / "archives" / "train.tar").write_bytes(os.urandom(2 << 20))  # backed up, never published
    client("s3").create_bucket(Bucket=bucket)
    manifest = Backup(world.mount, client("s3"), BackupOptions(bucket, "imagenet/")).run()
    Markers(world.mount / ".state").mark("backup", {"manifest_sha256": manifest["sha256"]})
    return SnapshotRequest(world.names.pipeline, "ILSVRC2012", manifest["sha256"], f"s3://{bucket}/imagenet/",
                           {"train": 10, "val": 2}, manifest["total_bytes"],
                           extra_tags={tags.WORK_VOLUME: world.volume_id})  # fmt: skip


def _publisher(world: World, request: SnapshotRequest, run: Callable[[list[str]], str] = run_command,
               ec2: Any = None) -> DatasetVolumePublisher:  # fmt: skip
    identity = InstanceIdentity(world.instance_id, "us-east-1", world.az)
    opts = PublishOptions(world.mount.parent / "publish", roots=world.roots, poll_seconds=0.05, timeout_seconds=30)
    return DatasetVolumePublisher(ec2 or client_as(world.role, "ec2"), identity, DataLayout(world.mount), request,
                                  opts, run=run)  # fmt: skip


def _dataset_volumes(pipeline: str) -> list[dict[str, Any]]:
    found = client("ec2").describe_volumes(Filters=[{"Name": f"tag:{tags.DATASET_VOLUME}", "Values": [pipeline]}])
    return list(found["Volumes"])


@pytest.mark.root
def test_the_packed_data_is_published_on_its_own_small_snapshot(tmp_path: Path, account: Account) -> None:
    names = Names("pub-ok")
    with instance_with_data_volume(tmp_path, "nvme", account, names) as world:
        request = _packed(world, default_bucket(names.pipeline))
        snap, plan = _publisher(world, request).publish(poll_seconds=0.1)
        assert not (world.mount / ".state" / "publish-volume.json").exists()  # retired: nothing to resume
        published, same, manifest = _published_contents(world, tmp_path / "check")
    assert snap["State"] == "completed" and snap["VolumeSize"] == plan.size_gib == 2  # not the 1000 GiB work volume
    snap_tags = {t["Key"]: t["Value"] for t in snap["Tags"]}
    assert snap_tags[tags.PIPELINE] == "pub-ok" and snap_tags[tags.WORK_VOLUME] == world.volume_id
    assert snap_tags[tags.MANIFEST] == request.manifest_sha256
    assert _dataset_volumes("pub-ok") == []  # the temporary volume is gone
    assert published == ["imagenet/meta.bin", "imagenet/train/n01/a.JPEG", "manifest.json", "recordio/synsets.txt",
                         "recordio/train.idx", "recordio/train.rec", "recordio/val.rec",
                         "webdataset/train-000000.tar"] and same  # fmt: skip
    assert {e["relpath"] for e in manifest["files"]} >= {"archives/train.tar", "recordio/train.rec"}


def _published_contents(world: World, mount: Path) -> tuple[list[str], bool, dict[str, Any]]:
    """What the dataset volume (hence its snapshot) holds: its files, whether they equal the work volume's, the
    manifest on it."""
    with loop_attach(world.dataset_image) as device:
        mount.mkdir()
        run("mount", "-o", "ro", device, str(mount))
        try:
            published = sorted(p.relative_to(mount).as_posix() for p in mount.rglob("*") if p.is_file())
            same = all((mount / rel).read_bytes() == (world.mount / rel).read_bytes()
                       for rel in published if rel != "manifest.json")  # fmt: skip
            return published, same, json.loads((mount / "manifest.json").read_text())
        finally:
            run("umount", str(mount))


def _failing_call(ec2: Any, operation: str) -> None:
    def fail(**_kwargs: Any) -> None:
        raise RuntimeError(f"injected failure in {operation}")

    ec2.meta.events.register(f"before-call.ec2.{operation}", fail)


FAILURES = {  # step -> how to make it fail
    "create volume": ("CreateVolume", None),
    "attach volume": ("AttachVolume", None),
    "set DeleteOnTermination": ("ModifyInstanceAttribute", None),
    "make the filesystem": (None, "mkfs.ext4"),
    "mount": (None, "mount"),
    "copy and verify": (None, "changed-source"),
    "snapshot": ("CreateSnapshot", None),
}


@pytest.mark.root
@pytest.mark.parametrize("step", FAILURES)
def test_a_failure_at_each_step_leaves_nothing_behind(step: str, tmp_path: Path, account: Account) -> None:
    names = Names(f"pub-fail-{FAILURES[step][0] or FAILURES[step][1]}".lower()[:30])
    operation, command = FAILURES[step]

    def runner(argv: list[str]) -> str:
        if argv[0] == command:
            raise PublishError(f"{command}: injected failure")
        return run_command(argv)

    with instance_with_data_volume(tmp_path, "xen", account, names) as world:
        request = _packed(world, default_bucket(names.pipeline))
        ec2 = client_as(world.role, "ec2")
        if operation:
            _failing_call(ec2, operation)
        if command == "changed-source":
            (world.mount / "recordio" / "val.rec").write_bytes(os.urandom(700_000))  # after the backup
        with pytest.raises(PublishError, match=f"failed at '{step}'"):
            _publisher(world, request, runner, ec2).publish(poll_seconds=0.1)
        assert mounted_device(world.mount.parent / "publish") is None
        assert not (world.mount / ".state" / "publish-volume.json").exists()
    deadline = time.monotonic() + 10  # the strict layer's detach takes a moment
    while _dataset_volumes(names.pipeline) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _dataset_volumes(names.pipeline) == []


KILL_AT = {  # where the kill lands: a file that exists only once that step has begun
    "after CreateVolume": lambda state: (
        (state / "publish-volume.json").exists() and "volume_id" in (state / "publish-volume.json").read_text()
    ),
    "during the copy": lambda state: (state / "publish-copied.jsonl").exists(),
    "while the snapshot is pending": lambda state: (state / "snapshot.json").exists(),
}


@pytest.mark.root
@pytest.mark.parametrize("where", KILL_AT)
def test_kill_9_at_any_step_resumes_to_one_published_snapshot(where: str, tmp_path: Path, account: Account) -> None:
    names, before = Names(f"pub-kill-{list(KILL_AT).index(where)}"), len(account.strict.calls)
    with instance_with_data_volume(tmp_path, "nvme", account, names) as world:
        request = _packed(world, default_bucket(names.pipeline))
        config = tmp_path / "config.json"
        settings = {"data_dir": str(world.mount), "sys_root": str(world.roots.sys_root),
                    "dev_root": str(world.roots.dev_root), "publish_mount": str(tmp_path / "publish"),
                    "snapshot_poll_seconds": 0.2}  # fmt: skip
        config.write_text(json.dumps({**account.deployment.download_config(world.names), **settings}))
        backed_up = {"manifest_sha256": request.manifest_sha256, "manifest": "s3://m", "bytes": 1}
        Markers(world.mount / ".state").mark("backup", backed_up)
        argv = [sys.executable, "-m", "bootstrap", "snapshot", "--config", str(config)]
        env = instance_env(world.imds_endpoint, tmp_path)
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not KILL_AT[where](world.mount / ".state"):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        info = Markers(world.mount / ".state").info("snapshot")
    creates = [
        c
        for c in account.strict.calls[before:]
        if c.operation == "CreateVolume" and c.access_key == world.role.access_key
    ]
    assert len(creates) >= 1 and len({c.params["ClientToken"] for c in creates}) == 1  # one volume, however asked
    assert _dataset_volumes(names.pipeline) == []
    snaps = client("ec2").describe_snapshots(Filters=[{"Name": f"tag:{tags.PIPELINE}", "Values": [names.pipeline]}])
    assert [s["SnapshotId"] for s in snaps["Snapshots"]] == [info["snapshot_id"]]
    assert info["contents"] == "packed" and info["volume_size_gib"] == 2
