"""kill -9 inside every stage of a whole run (fetch over HTTP, pack, verify, backup, the dataset volume, snapshot,
publish) and then at random moments, each followed by a resume, until a run finishes: the result is what an
uninterrupted run makes.

The download instance is simulated as everywhere else (strict AWS layer, its role enforced, a loop-mounted work
volume, a sparse image for the dataset volume).  Each kill takes the whole process group (workers included), as
systemd does.  The number of kills is printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootstrap.contract import tags
from bootstrap.layout import STAGES
from scripts.synthetic_imagenet import Spec, generate
from tests.fixtures.aws_emulator import client
from tests.fixtures.deployment import Account, Names, default_bucket
from tests.fixtures.ec2_world import World, instance_with_data_volume
from tests.fixtures.http_server import ArchiveServer, ServerOptions
from tests.fixtures.imds import instance_env

PIPELINES = 2
SETTINGS = {"resize": 64, "workers": 1, "checkpoint_seconds": 0, "max_failure_rate": 0.2, "status_interval": 0.2,
            "snapshot_poll_seconds": 0.2, "source_secret": None}  # fmt: skip


def digests(recordio: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(recordio.glob("*"))
            if p.suffix in (".rec", ".idx", ".lst", ".crc", ".tsv")}  # fmt: skip


def _config(world: World, account: Account, tmp: Path, url: str, table: Path) -> Path:
    config = {**account.deployment.download_config(world.names), **SETTINGS, "data_dir": str(world.mount),
              "source": url, "dataset_table": str(table), "sys_root": str(world.roots.sys_root),
              "dev_root": str(world.roots.dev_root), "publish_mount": str(tmp / "publish")}  # fmt: skip
    path = tmp / "config.json"
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return path


def _stage(status: Path) -> str:
    try:
        return str(json.loads(status.read_text()).get("stage", "?")).split()[0].rstrip(":")
    except (OSError, ValueError, IndexError):
        return "starting"


def _kill_and_resume(argv: list[str], env: dict[str, str], cwd: Path, rng: random.Random, status: Path) -> list[str]:
    """Run and kill, again and again, until a run finishes on its own; returns the stages the kills landed in.

    While some stage has not been hit, a run is killed a random moment (under 0.15 s: organise and verify are that
    short here) after such a stage shows in the status; then at random moments from the start.
    """
    kills: list[str] = []
    while True:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip
        deadline, aim = time.monotonic() + rng.uniform(0.3, 3.0), set(STAGES) - set(kills)
        while proc.poll() is None and time.monotonic() < deadline:
            if aim and _stage(status) in aim:
                deadline = time.monotonic() + rng.uniform(0.0, 0.15)
                aim = set()
            time.sleep(0.005)
        if proc.poll() is not None:
            _, err = proc.communicate()
            assert proc.returncode == 0, err
            return kills
        kills.append(_stage(status))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(kills) < 60, "a run should make progress between kills"


@pytest.mark.root
def test_random_kill_9s_resume_to_the_uninterrupted_result(account: Account, tmp_path: Path) -> None:
    archives = generate(tmp_path / "src", Spec(classes=6, train_per_class=40, val_per_class=3, seed=11))
    reference = tmp_path / "reference"
    local = [sys.executable, "-m", "bootstrap", "run", "--data-dir", str(reference), "--source", str(archives.root),
             "--dataset-table", str(archives.table), "--resize", "64", "--max-failure-rate", "0.2"]  # fmt: skip
    subprocess.run(local, check=True, capture_output=True)
    want, stages = digests(reference / "recordio"), []
    options = ServerOptions(bytes_per_second=1 << 20)  # slow enough that kills land in the download too
    with ArchiveServer(archives.root, options) as server:
        for pipeline in range(PIPELINES):
            names = Names(f"fuzz-{pipeline}")
            client("s3").create_bucket(Bucket=default_bucket(names.pipeline))
            tmp = tmp_path / f"p{pipeline}"
            with instance_with_data_volume(tmp, "nvme", account, names, size_mib=64) as world:
                config = _config(world, account, tmp, server.url, archives.table)
                argv = [sys.executable, "-m", "bootstrap", "run", "--config", str(config)]
                env = instance_env(world.imds_endpoint, tmp)
                stages += _kill_and_resume(argv, env, tmp, random.Random(pipeline), world.mount / "status.json")
                assert digests(world.mount / "recordio") == want
                published = json.loads(client("ssm").get_parameter(Name=f"/{names.pipeline}/snapshot")["Parameter"][
                    "Value"])  # fmt: skip
            snaps = client("ec2").describe_snapshots(Filters=[{"Name": f"tag:{tags.PIPELINE}",
                                                               "Values": [names.pipeline]}])["Snapshots"]  # fmt: skip
            assert [s["SnapshotId"] for s in snaps] == [published["snapshot_id"]]  # one dataset snapshot
            leftover = client("ec2").describe_volumes(Filters=[{"Name": f"tag:{tags.DATASET_VOLUME}",
                                                                "Values": [names.pipeline]}])["Volumes"]  # fmt: skip
            assert leftover == []
    hits = ", ".join(f"{stage} {stages.count(stage)}" for stage in dict.fromkeys(stages))
    print(f"\nkill -9 fuzz: {len(stages)} kills over {PIPELINES} whole runs ({hits}), each resumed to the same records")
    assert {"fetch", "pack", "backup", "snapshot"} <= set(stages)
