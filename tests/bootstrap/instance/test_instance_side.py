"""Backup, snapshot, publish and live status against moto's server, an IMDSv2 stub and a loop-mounted volume."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from bootstrap.common.errors import BootstrapError
from bootstrap.common.imds import Imds, InstanceIdentity
from bootstrap.common.state import Markers, atomic_write_json
from bootstrap.contract import tags
from bootstrap.contract.names import heartbeat_alarm as heartbeat_alarm_name
from bootstrap.contract.names import heartbeat_metric
from bootstrap.engine import Engine
from bootstrap.instance.backup import Backup, BackupError, BackupOptions, part_size
from bootstrap.instance.heartbeat import Heartbeat
from bootstrap.instance.snapshot import (
    TAG_INSTANCE,
    TAG_PIPELINE,
    SnapshotError,
    SnapshotRequest,
    Volume,
    take_snapshot,
)
from bootstrap.instance.status_publisher import StatusPublisher
from bootstrap.layout import backed_up as wanted
from bootstrap.settings import PrepConfig
from scripts.synthetic_imagenet import Generated
from tests.fixtures.aws_emulator import client
from tests.fixtures.deployment import Account, Names, default_bucket
from tests.fixtures.ec2_world import World, instance_with_data_volume
from tests.fixtures.imds import Identity, ImdsStub, instance_env
from tests.fixtures.strict_aws import available_volume

pytestmark = pytest.mark.usefixtures("aws_endpoint")


def make_data(root: Path, big_mib: int = 40) -> None:
    (root / "archives").mkdir(parents=True)
    (root / "recordio").mkdir()
    (root / "archives" / "big.tar").write_bytes(os.urandom(big_mib << 20))  # multipart at 16 MiB parts
    for i in range(5):
        (root / "recordio" / f"part_{i}.rec").write_bytes(os.urandom(100_000 + i))
    (root / ".state").mkdir()
    (root / ".state" / "pack-train.done").write_text("{}")
    (root / ".state" / "pack-train").mkdir()
    (root / ".state" / "pack-train" / "checkpoint.json").write_text("{}")  # work files are not backed up
    (root / "status.json").write_text("{}")


def bucket(name: str) -> str:
    client("s3").create_bucket(Bucket=name)
    return name


def test_what_is_backed_up() -> None:
    assert wanted("archives/ILSVRC2012_img_train.tar") and wanted("recordio/train.idx")
    assert wanted(".state/pack-train.done") and wanted("imagenet/train/n01/x.JPEG")
    assert not wanted("status.json") and not wanted(".state/pack-train/checkpoint.json")
    assert not wanted("archives/.ILSVRC2012_img_train.tar.part") and not wanted("archives/.state/fetch-x.done")
    assert part_size(150 << 30) > 16 << 20 and part_size(1 << 20) == 16 << 20


def test_backup_twice_sends_nothing_the_second_time(tmp_path: Path) -> None:
    make_data(tmp_path)
    s3 = client("s3")
    opts = BackupOptions(bucket("bk-twice"), "imagenet/")
    first = Backup(tmp_path, s3, opts).run()
    assert first["sent"] == 7 and len(first["files"]) == 7
    keys = {o["Key"]: o for o in s3.list_objects_v2(Bucket=opts.bucket)["Contents"]}
    assert keys["imagenet/archives/big.tar"]["ETag"].strip('"').endswith("-3")  # multipart
    assert "imagenet/status.json" not in keys and "imagenet/.state/pack-train/checkpoint.json" not in keys
    manifest = json.loads(s3.get_object(Bucket=opts.bucket, Key="imagenet/manifest.json")["Body"].read())
    import hashlib

    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256((tmp_path / entry["relpath"]).read_bytes()).hexdigest()
    head = s3.head_object(Bucket=opts.bucket, Key="imagenet/archives/big.tar")
    assert head["ServerSideEncryption"] == "AES256" and head.get("StorageClass", "STANDARD") == "STANDARD"
    assert Backup(tmp_path, s3, opts).run()["sent"] == 0
    (tmp_path / "recordio" / "part_0.rec").write_bytes(b"changed")
    assert Backup(tmp_path, s3, opts).run()["sent"] == 1
    assert Backup(tmp_path, s3, opts).verify() == []


def test_large_files_get_the_large_storage_class(tmp_path: Path) -> None:
    make_data(tmp_path, big_mib=20)
    opts = BackupOptions(bucket("bk-class"), large_storage_class="STANDARD_IA", large_bytes=10 << 20)
    Backup(tmp_path, client("s3"), opts).run()
    assert client("s3").head_object(Bucket=opts.bucket, Key="archives/big.tar")["StorageClass"] == "STANDARD_IA"


def test_verify_catches_a_corrupted_object(tmp_path: Path) -> None:
    make_data(tmp_path, big_mib=1)
    s3 = client("s3")
    opts = BackupOptions(bucket("bk-corrupt"))
    Backup(tmp_path, s3, opts).run()
    s3.put_object(Bucket=opts.bucket, Key="recordio/part_2.rec", Body=os.urandom(100_002))  # same size, other bytes
    s3.delete_object(Bucket=opts.bucket, Key="recordio/part_3.rec")
    problems = Backup(tmp_path, s3, opts).verify()
    assert any("part_2.rec: S3 has 100002 bytes / ETag" in p for p in problems)
    assert any("part_3.rec: missing" in p for p in problems)


def test_missing_bucket_and_access_denied_say_what_is_wrong(tmp_path: Path) -> None:
    make_data(tmp_path, big_mib=1)
    with pytest.raises(BackupError, match="bucket no-such-bucket does not exist"):
        Backup(tmp_path, client("s3"), BackupOptions("no-such-bucket")).run()
    s3 = client("s3")
    with Stubber(s3) as stub:
        stub.add_client_error("list_objects_v2", "AccessDenied", http_status_code=403)
        with pytest.raises(BackupError, match=r"access denied .* s3:PutObject, s3:ListBucket"):
            Backup(tmp_path, s3, BackupOptions("locked")).run()


KILL_SCRIPT = """
import sys
from pathlib import Path
from tests.fixtures.aws_emulator import client
from bootstrap.instance.backup import Backup, BackupOptions
Backup(Path(sys.argv[1]), client("s3"), BackupOptions(sys.argv[2])).run()
"""


def test_kill_9_during_backup_then_resume(tmp_path: Path) -> None:
    (tmp_path / "recordio").mkdir(parents=True)
    for i in range(60):
        (tmp_path / "recordio" / f"f{i:02d}.rec").write_bytes(os.urandom(300_000))
    name = bucket("bk-kill")
    journal = tmp_path / ".state" / "backup.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), name], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    before = [json.loads(line)["relpath"] for line in journal.read_text().splitlines()]
    assert 5 <= len(before) < 60, "the kill should land mid-backup"
    result = Backup(tmp_path, client("s3"), BackupOptions(name)).run()
    after = [json.loads(line)["relpath"] for line in journal.read_text().splitlines()]
    assert result["sent"] == 60 - len(before)
    assert len(after) == len(set(after)) == 60  # every file went up exactly once after it was recorded
    assert Backup(tmp_path, client("s3"), BackupOptions(name)).verify() == []


def test_imds_v2_token_is_required() -> None:
    with ImdsStub(Identity("i-0abc", "eu-west-1c")) as stub:
        assert Imds(stub.endpoint).identity() == InstanceIdentity("i-0abc", "eu-west-1", "eu-west-1c")
        import urllib3

        assert urllib3.request("GET", stub.endpoint + "/latest/meta-data/instance-id").status == 401  # IMDSv1


VOLUME = Volume("vol-0123456789abcdef0", Path("/dev/null"), 1000, "us-east-1a")
IDENTITY = InstanceIdentity("i-0123", "us-east-1", "us-east-1a")
REQUEST = SnapshotRequest("pipe", "ILSVRC2012", "ab" * 32)


def _no_freeze(_mount: Path) -> Any:
    from contextlib import nullcontext

    return nullcontext()


def test_snapshot_in_error_state_is_a_clear_failure(tmp_path: Path) -> None:
    ec2 = client("ec2")
    with Stubber(ec2) as stub:
        stub.add_response("describe_snapshots", {"Snapshots": []})
        stub.add_response("create_snapshot", {"SnapshotId": "snap-1", "State": "pending"})
        stub.add_response("describe_snapshots", {"Snapshots": [{"SnapshotId": "snap-1", "State": "pending",
                                                                 "Progress": "40%"}]})  # fmt: skip
        stub.add_response("describe_snapshots", {"Snapshots": [{"SnapshotId": "snap-1", "State": "error",
                                                                 "StateMessage": "internal"}]})  # fmt: skip
        with pytest.raises(SnapshotError, match=r"snap-1 ended in state .error.*nothing was published"):
            take_snapshot(ec2, IDENTITY, VOLUME, REQUEST, mount_point=tmp_path, state_path=tmp_path / "s.json",
                          freeze=_no_freeze, sleep=lambda _s: None)  # fmt: skip
        stub.assert_no_pending_responses()


def _stubbed_snapshot(tmp_path: Path, answers: list[tuple[str, dict[str, Any] | str]]) -> dict[str, Any]:
    """take_snapshot against exactly these EC2 answers (a str is an error code); every one must be used."""
    ec2 = client("ec2")
    with Stubber(ec2) as stub:
        for operation, answer in answers:
            if isinstance(answer, str):
                stub.add_client_error(operation, answer)
            else:
                stub.add_response(operation, answer)
        snap = take_snapshot(ec2, IDENTITY, VOLUME, REQUEST, mount_point=tmp_path, state_path=tmp_path / "s.json",
                             freeze=_no_freeze, sleep=lambda _s: None)  # fmt: skip
        stub.assert_no_pending_responses()
    return snap


def _completed(snapshot_id: str) -> dict[str, Any]:
    return {"Snapshots": [{"SnapshotId": snapshot_id, "State": "completed", "Progress": "100%"}]}


def test_second_attempt_waits_for_the_pending_snapshot(tmp_path: Path) -> None:
    snap = _stubbed_snapshot(tmp_path, [
        ("describe_snapshots", {"Snapshots": []}), ("create_snapshot", "ConcurrentSnapshotLimitExceeded"),
        ("describe_snapshots", {"Snapshots": [{"SnapshotId": "snap-9", "State": "pending"}]}),
        ("describe_snapshots", _completed("snap-9"))])  # fmt: skip
    assert snap["SnapshotId"] == "snap-9"
    assert json.loads((tmp_path / "s.json").read_text())["snapshot_id"] == "snap-9"


def test_a_pending_lifecycle_snapshot_is_waited_for_then_ours_is_taken(tmp_path: Path) -> None:
    """sc1 takes one pending snapshot at a time; DLM's (not tagged as ours) may be running when the stage starts."""
    ec2 = client("ec2")
    volume_id = available_volume(ec2, AvailabilityZone="us-east-1a", Size=125, VolumeType="sc1")
    scheduled = [{"ResourceType": "snapshot", "Tags": [{"Key": tags.SCHEDULED, "Value": "pipe"}]}]
    dlm = ec2.create_snapshot(VolumeId=volume_id, TagSpecifications=scheduled)["SnapshotId"]
    volume = Volume(volume_id, Path("/dev/null"), 125, "us-east-1a")
    snap = take_snapshot(ec2, IDENTITY, volume, REQUEST, mount_point=tmp_path, state_path=tmp_path / "s.json",
                         freeze=_no_freeze, poll_seconds=0.1)  # fmt: skip
    assert snap["State"] == "completed" and snap["SnapshotId"] != dlm
    assert {t["Key"]: t["Value"] for t in snap["Tags"]}[TAG_PIPELINE] == "pipe"


def test_a_recorded_snapshot_that_ended_in_error_is_replaced(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "s.json", {"snapshot_id": "snap-old", "volume_id": VOLUME.volume_id})
    snap = _stubbed_snapshot(tmp_path, [
        ("describe_snapshots", {"Snapshots": [{"SnapshotId": "snap-old", "State": "error"}]}),
        ("describe_snapshots", {"Snapshots": []}),  # none of ours pending
        ("create_snapshot", {"SnapshotId": "snap-new", "State": "pending"}),
        ("describe_snapshots", _completed("snap-new"))])  # fmt: skip
    assert snap["SnapshotId"] == "snap-new"
    assert json.loads((tmp_path / "s.json").read_text())["snapshot_id"] == "snap-new"


def test_status_is_published_at_a_bounded_rate(tmp_path: Path) -> None:
    ssm = client("ssm")
    calls = []
    ssm.meta.events.register("before-call.ssm.PutParameter", lambda **kw: calls.append(time.monotonic()))
    status = tmp_path / "status.json"
    atomic_write_json(status, {"stage": "pack", "done": 0})
    with StatusPublisher(status, ssm, "/t/status", interval=0.2):
        for i in range(100):  # the engine rewrites the file far more often than we may publish
            atomic_write_json(status, {"stage": "pack", "done": i})
            time.sleep(0.01)
        atomic_write_json(status, {"stage": "pack", "done": 100, "state": "done"})
    # the rate itself, so a slow machine cannot fail it: ticks at least an interval apart, plus one final publish
    ticks = calls[:-1]
    assert len(calls) >= 2 and all(b - a >= 0.2 * 0.9 for a, b in itertools.pairwise(ticks))
    assert json.loads(ssm.get_parameter(Name="/t/status")["Parameter"]["Value"])["state"] == "done"


def test_status_publisher_outlives_an_unreadable_status_file(tmp_path: Path) -> None:
    ssm = client("ssm")
    status = tmp_path / "status.json"
    status.write_text('{"stage": "pa')  # torn, e.g. written by hand without a rename
    publisher = StatusPublisher(status, ssm, "/t/torn", interval=0.05)
    with publisher:
        time.sleep(0.2)
        assert publisher._thread.is_alive()
        atomic_write_json(status, {"stage": "pack", "state": "done"})
    assert json.loads(ssm.get_parameter(Name="/t/torn")["Parameter"]["Value"]) == {"stage": "pack", "state": "done"}


def _instance_config(world: World, account: Account, tmp: Path, **settings: Any) -> Path:
    """The download instance's config.json as its user data writes it, with the simulated instance's paths."""
    config = {**account.deployment.download_config(world.names), "data_dir": str(world.mount),
              "sys_root": str(world.roots.sys_root), "dev_root": str(world.roots.dev_root),
              "snapshot_poll_seconds": 0.2, **settings}  # fmt: skip
    path = tmp / "config.json"
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return path


def _on_instance(stage: str, world: World, config: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bootstrap STAGE`` as the unit runs it: no region or keys, the download role from IMDSv2."""
    return subprocess.run([sys.executable, "-m", "bootstrap", stage, "--config", str(config)], capture_output=True,
                          text=True, env=instance_env(world.imds_endpoint, tmp), cwd=tmp, timeout=300,
                          check=False)  # fmt: skip


@pytest.mark.root
@pytest.mark.parametrize("style", ["nvme", "xen"])
def test_snapshot_of_the_loop_backed_volume(style: str, tmp_path: Path, account: Account) -> None:
    """dataset_snapshot=work-volume: the whole data volume is the snapshot (test_dataset_volume: the default)."""
    with instance_with_data_volume(tmp_path, style, account, Names(f"pipe-{style}")) as world:
        Markers(world.mount / ".state").mark("backup", {"manifest_sha256": "cd" * 32})
        config = _instance_config(world, account, tmp_path, dataset_snapshot="work-volume")
        done = _on_instance("snapshot", world, config, tmp_path)
        assert done.returncode == 0, done.stderr
        (world.mount / "still-writable").write_text("thawed")  # would hang if left frozen
    snaps = client("ec2").describe_snapshots(Filters=[{"Name": "volume-id", "Values": [world.volume_id]}])["Snapshots"]
    (snap,) = [s for s in snaps if any(t["Key"] == TAG_PIPELINE for t in s.get("Tags", []))]
    tags = {t["Key"]: t["Value"] for t in snap["Tags"]}
    assert snap["VolumeSize"] == 1000
    assert tags[TAG_PIPELINE] == f"pipe-{style}" and tags[TAG_INSTANCE] == world.instance_id


@pytest.mark.root
def test_snapshot_refuses_when_no_attached_volume_backs_the_mount(tmp_path: Path, account: Account) -> None:
    with instance_with_data_volume(tmp_path, "nvme", account, Names("pipe-nobacking")) as world:
        shutil.rmtree(world.roots.sys_root)  # the device can no longer be matched to the volume
        Markers(world.mount / ".state").mark("backup", {"manifest_sha256": "cd" * 32})
        config = _instance_config(world, account, tmp_path, dev_root=str(tmp_path / "nodev"))
        done = _on_instance("snapshot", world, config, tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert re.search(r"no EBS volume attached to i-.* backs", done.stderr), done.stderr


@pytest.mark.root
def test_whole_run_from_archives_to_published_snapshot(archives: Generated, tmp_path: Path, account: Account) -> None:
    """The unit's ``run`` with the config the user data writes, every call authorized against the download role."""
    names = Names("whole-run")
    name = bucket(default_bucket(names.pipeline))  # the storage stack's bucket for this pipeline
    ssm = client("ssm")
    with instance_with_data_volume(tmp_path, "xen", account, names, size_mib=64) as world:
        heartbeat_alarm = _heartbeat_alarm(names.pipeline)
        config = _instance_config(world, account, tmp_path, source=str(archives.root),
                                  dataset_table=str(archives.table), max_failure_rate=0.2, source_secret=None,
                                  status_interval=0.2)  # fmt: skip
        first = _on_instance("run", world, config, tmp_path)
        assert first.returncode == 0, first.stderr
        published = json.loads(ssm.get_parameter(Name="/whole-run/snapshot")["Parameter"]["Value"])
        status = json.loads(ssm.get_parameter(Name="/whole-run/status")["Parameter"]["Value"])
        again = _on_instance("run", world, config, tmp_path)
    assert published["snapshot_id"].startswith("snap-") and published["source_instance_id"] == world.instance_id
    assert published["images"] == {"val": 24, "train": 46} and published["manifest"].startswith(f"s3://{name}/")
    assert status["state"] == "done"
    assert json.loads(again.stdout) == json.loads(first.stdout)
    alarm = client("cloudwatch").describe_alarms(AlarmNames=[heartbeat_alarm])["MetricAlarms"][0]
    assert alarm["ActionsEnabled"] is True  # the run re-armed it


def _heartbeat_alarm(pipeline: str) -> str:
    """The download stack's heartbeat alarm, disarmed as a finished run leaves it."""
    name, (namespace, metric, _) = heartbeat_alarm_name(pipeline), heartbeat_metric(pipeline)
    client("cloudwatch").put_metric_alarm(AlarmName=name, MetricName=metric, Namespace=namespace, Statistic="Sum",
                                          Period=600, EvaluationPeriods=3, Threshold=1,
                                          ComparisonOperator="LessThanThreshold", ActionsEnabled=False)  # fmt: skip
    return name


def test_a_failed_snapshot_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise SnapshotError("snapshot snap-x ended in state 'error'")

    monkeypatch.setattr("bootstrap.engine.instance_stages.take_snapshot", failing)
    monkeypatch.setattr("bootstrap.engine.instance_stages.find_data_volume", lambda *a, **k: VOLUME)
    with ImdsStub(Identity("i-0fail", "us-east-1a")) as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint)
        engine = Engine(PrepConfig(data_dir=tmp_path, snapshot_parameter="/fail/snapshot",
                                   dataset_snapshot="work-volume"))  # fmt: skip
        engine.markers.mark("backup", {"manifest_sha256": "ef" * 32, "manifest": "s3://b/m", "bytes": 1})
        with pytest.raises(SnapshotError):
            engine.snapshot()
        status = json.loads((tmp_path / "status.json").read_text())
        assert (status["stage"], status["state"]) == ("snapshot", "failed")
        assert status["last_error"].startswith("snapshot snap-x")
        with pytest.raises(BootstrapError, match="run the backup and snapshot stages first"):
            engine.publish()
    with pytest.raises(ClientError, match="ParameterNotFound"):
        client("ssm").get_parameter(Name="/fail/snapshot")


def test_the_heartbeat_rearms_its_alarm_and_beats_while_the_run_lasts() -> None:
    cloudwatch = client("cloudwatch")
    namespace, name, dimensions = heartbeat_metric("hb")
    cloudwatch.put_metric_alarm(AlarmName="hb-download-heartbeat", MetricName=name, Namespace=namespace,
                                Statistic="Sum", Period=600, EvaluationPeriods=3, Threshold=1,
                                ComparisonOperator="LessThanThreshold", ActionsEnabled=False)  # fmt: skip
    with Heartbeat(cloudwatch, "hb", "hb-download-heartbeat", interval=0.05):
        time.sleep(0.3)
    alarm = cloudwatch.describe_alarms(AlarmNames=["hb-download-heartbeat"])["MetricAlarms"][0]
    assert alarm["ActionsEnabled"] is True  # a new run re-arms what the last teardown disarmed
    metrics = cloudwatch.list_metrics(Namespace=namespace, MetricName=name)["Metrics"]
    assert metrics and metrics[0]["Dimensions"] == dimensions
