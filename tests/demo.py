"""``make demo``: the whole job, end to end, on the embedded default.

First the CDK app is synthesized with the real CLI, offline, with cdk-nag on,
and what ``cdk deploy`` would create is summarized.  Then the instance side:
synthetic ILSVRC2012-format archives (with the awkward real cases) are served
by a local HTTP server that demands credentials and limits each connection's
bandwidth; the credentials sit in a Secrets Manager secret on an AWS emulator
(moto) on 127.0.0.1.  The engine then runs exactly as on the download
instance: fetch (parallel, MD5-checked) -> organise -> pack -> verify ->
inspect -> backup -> snapshot -> publish.  As root, the data directory is a
loop-mounted ext4 standing in for the sc1 volume of a simulated t2 instance
(moto + an IMDSv2 stub), so the snapshot step finds and freezes a real block
device.  Finally MXNet's own readers open the output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bootstrap.cli import configure_logging
from bootstrap.contract.names import DEFAULT_PIPELINE, snapshot_parameter, status_parameter
from bootstrap.contract.tags import OWNER as TAG_OWNER
from bootstrap.engine import Engine, timeline
from bootstrap.settings import load_config
from cdk_app.summary import render as describe_assembly
from scripts.synthetic_imagenet import Spec, generate
from tests.demo_readers import one_batch_each
from tests.fixtures.aws_emulator import REGION, client, emulated_aws
from tests.fixtures.cdk_synth import cli_synth
from tests.fixtures.deployment import Account, Deployment, Names, default_bucket
from tests.fixtures.ec2_world import World, gpu_instance, instance_with_data_volume
from tests.fixtures.http_server import ArchiveServer, ServerOptions
from tests.fixtures.imds import instance_env
from tests.fixtures.lambda_runtime import TeardownFunction
from tests.fixtures.loopdev import loop_attach, run
from tests.fixtures.simulated_cloud import attach_command, heartbeat_alarm
from tests.fixtures.simulated_cloud import engine_config as simulated_engine_config

OUT = Path("demo-output")
PIPELINE = DEFAULT_PIPELINE
NAMES = Names(PIPELINE, bucket=default_bucket(PIPELINE))
SNAPSHOT_PARAMETER, STATUS_PARAMETER = snapshot_parameter(PIPELINE), status_parameter(PIPELINE)
USER, ACCESS_KEY = "demo-user", "demo-access-key-not-a-secret"
INSTANCE_ONLY = ("snapshot_parameter", "status_parameter", "data_volume_id", "heartbeat_alarm")
"""Settings of the deployed config that need the simulated instance (root): without it the run stops at backup."""


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def check_with_mxnet(recordio: Path) -> dict[str, int]:
    import mxnet as mx

    counts = {}
    for split in ("train", "val"):
        rec = recordio / f"{split}.rec"
        reader = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
        labels = {mx.recordio.unpack(reader.read_idx(k))[0].label for k in reader.keys}
        it = mx.io.ImageRecordIter(path_imgrec=str(rec), path_imgidx=str(rec.with_suffix(".idx")),
                                   data_shape=(3, 64, 64), resize=72, batch_size=16)  # fmt: skip
        iterated = sum(batch.data[0].shape[0] - batch.pad for batch in it)
        print(f"  {split}: MXIndexedRecordIO read {len(reader.keys)} records in {len(labels)} classes; "
              f"ImageRecordIter decoded {iterated}")  # fmt: skip
        counts[split] = len(reader.keys)
    return counts


def bucket_summary(name: str, prefix: str) -> str:
    sizes: dict[str, list[int]] = {}
    for page in client("s3").get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
        for obj in page.get("Contents", []):
            top = obj["Key"][len(prefix) :].split("/")[0]
            sizes.setdefault(top, []).append(obj["Size"])
    return ", ".join(f"{top}: {len(v)} objects, {sum(v):,} bytes" for top, v in sorted(sizes.items()))


def report_teardown(teardown: TeardownFunction) -> None:
    for r in teardown.terminated():
        who = "the function (first)" if r["published_by_function"] else "the instance (first)"
        print(f"  snapshot {r['snapshot_id']} completed -> published by {who} -> teardown function terminated "
              f"{r['instance_id']} and its data volume")  # fmt: skip


@contextmanager
def download_instance(out: Path, account: Account) -> Iterator[World | None]:
    """As root: a simulated t2 with its loop-mounted sc1 volume, under the download role. Otherwise nothing."""
    if os.geteuid() != 0:
        print("  not root: the data directory is a plain folder, and the snapshot step is skipped "
              "(it needs a loop-mounted volume)")  # fmt: skip
        yield None
        return
    with instance_with_data_volume(out / "instance", "xen", account, NAMES, size_mib=128) as world:
        print(f"  simulated t2.large {world.instance_id} in {world.az} (IMDSv2 stub at {world.imds_endpoint}) "
              f"with sc1 volume {world.volume_id} attached as /dev/sdf -> /dev/xvdf -> {world.device}, "
              f"ext4 mounted at {world.mount}; the download role's policy is enforced on its calls")  # fmt: skip
        yield world


def engine_config(deployment: Deployment, world: World | None, out: Path, **local: Any) -> dict[str, Any]:
    """The config.json the download stack's user data writes, with this machine's paths and source."""
    if world is not None:
        return simulated_engine_config(deployment, NAMES, world, out, **local)
    config = {k: v for k, v in deployment.download_config(NAMES).items() if k not in INSTANCE_ONLY}
    return {**config, "data_dir": str(out / "data"), **local}


def main() -> int:
    configure_logging(verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    out = OUT.resolve()
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()

    banner("1/8 the operator plans the real run first: python -m scripts plan")
    subprocess.run([sys.executable, "-m", "scripts", "plan"], check=True)

    banner("2/8 what `cdk deploy` would create: cdk synth from cdk.json, offline, checked by cdk-nag")
    synthesized = cli_synth(out / "cdk.out")
    if synthesized.returncode != 0:
        print(synthesized.stderr, file=sys.stderr)
        return 1
    print(textwrap.indent(describe_assembly(out / "cdk.out"), "  "))
    deployment = Deployment.from_assembly(out / "cdk.out", PIPELINE)
    print(
        f"  templates in {out / 'cdk.out'}; cdk-nag AwsSolutions: no unacknowledged findings; "
        "deploy for real: see README, Deploy to AWS"
    )

    banner("3/8 generate synthetic ILSVRC2012 archives (exact layout, awkward cases included)")
    gen = generate(out / "source", Spec(classes=16, train_per_class=25, val_per_class=4))
    for path in sorted((out / "source").iterdir()):
        print(f"  {path}  {path.stat().st_size:,} bytes")

    with (
        emulated_aws() as strict,
        ArchiveServer(
            out / "source", ServerOptions(username=USER, password=ACCESS_KEY, bytes_per_second=4 << 20)
        ) as server,
    ):
        banner("4/8 AWS emulator, HTTP server and the download instance, all on 127.0.0.1")
        account = Account(strict, deployment)
        with download_instance(out, account) as world:
            config = engine_config(deployment, world, out, source=server.url, dataset_table=str(gen.table),
                                   resize=128, max_failure_rate=0.01, formats="webdataset,tree")  # fmt: skip
            secret, bucket = config["source_secret"], config["bucket"]
            client("secretsmanager").create_secret(
                Name=secret, SecretString=json.dumps({"username": USER, "access_key": ACCESS_KEY})
            )
            client("s3").create_bucket(Bucket=bucket)
            heartbeat_alarm(config)
            print(f"  AWS emulator (moto behind the strict layer) at {strict.endpoint}; "
                  f"source credentials in the stack's secret {secret}; the stack's bucket {bucket}")  # fmt: skip
            print(f"  archives at {server.url} (basic auth, 4 MiB/s per connection)")
            banner("5/8 python -m bootstrap run: fetch, organise, pack, verify, inspect, backup, snapshot, publish")
            config_path = out / "bootstrap-config.json"
            config_path.write_text(json.dumps(config, indent=2))
            print(f"  config: what the download stack's user data writes (cdk.out), with this machine's paths: "
                  f"{config_path}")  # fmt: skip
            command = [sys.executable, "-m", "bootstrap", "run", "--config", str(config_path)]
            # as the systemd unit runs it: no region and no keys; the instance role's credentials from IMDSv2
            env = instance_env(world.imds_endpoint, out) if world else None
            print("  $ " + " ".join(["python", *command[1:]]) + ("   # no AWS_REGION, no keys" if env else ""))
            teardown = TeardownFunction(account, NAMES) if world else None
            result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env=env)
            if teardown is not None:
                report_teardown(teardown)
            if result.returncode != 0:
                logging.error("the engine failed (exit %d); see its log above", result.returncode)
                return result.returncode
            summary = json.loads(result.stdout)
            print(f"  {server.requests} HTTP requests, {server.body_bytes:,} body bytes served")

            banner("6/8 check the output with MXNet's own readers")
            engine = Engine(load_config(config_path, {}))
            counts = check_with_mxnet(engine.paths.recordio)
            expected = {s: v["packed"] for s, v in summary["splits"].items()}
            if counts != expected:
                logging.error("mxnet read %s but the engine packed %s", counts, expected)
                return 1
            for name in ("contact_sheet_train.png", "contact_sheet_val.png"):
                shutil.copy(engine.paths.recordio / name, out / name)  # kept after the volume is unmounted
            shutil.copy(engine.paths.timeline, out / "timeline.png")

            banner(f"7/8 done in {time.monotonic() - started:.0f}s; where everything is")
            describe_outputs(engine, summary, config_path)
            print(f"  backup in s3://{bucket}/{config['prefix']}: {bucket_summary(bucket, config['prefix'])}")
            if world:
                ssm = client("ssm")
                published = json.loads(ssm.get_parameter(Name=SNAPSHOT_PARAMETER)["Parameter"]["Value"])
                status = json.loads(ssm.get_parameter(Name=STATUS_PARAMETER)["Parameter"]["Value"])
                print(f"  snapshot {published['snapshot_id']} of {published['volume_id']} published in "
                      f"{SNAPSHOT_PARAMETER}: {json.dumps(published['images'])} images")  # fmt: skip
                print(f"  backup manifest:            {published['manifest']}")
                print(f"  live status in {STATUS_PARAMETER}: stage {status['stage']}, state {status['state']}")
                print("  $ python -m scripts status   # what the operator sees from a laptop")
                subprocess.run([sys.executable, "-m", "scripts", "status", "--pipeline", PIPELINE, "--region", REGION,
                                "--status-parameter", STATUS_PARAMETER, "--snapshot-parameter", SNAPSHOT_PARAMETER],
                               check=True)  # fmt: skip
            print(f"  contact sheets copied to:   {out}/contact_sheet_{{train,val}}.png")
            drawn = timeline.summary(timeline.spans(timeline.read_history(engine.paths.status_history)))
            print(f"  timeline of the run:        {out}/timeline.png ({timeline.describe(drawn)}: organise "
                  "and pack ran while the archives downloaded)")  # fmt: skip
            if world:
                print(f"  (the data directory lives in {out}/instance/volume.img, unmounted when the demo ends; "
                      "`mount -o loop` it to look inside)")  # fmt: skip
        return gpu_boots(out, account, have_volume=world is not None)
    return 0


def gpu_boots(out: Path, account: Account, *, have_volume: bool) -> int:
    """A GPU instance launched from the template runs the attach agent, as its user data does."""
    banner("8/8 a GPU instance boots: volume from the snapshot in its own AZ, attached, mounted read-only")
    if not have_volume:
        print("  skipped: simulating the GPU's block device needs root (a loop device)")
        return 0
    with (
        loop_attach(out / "instance" / "dataset-volume.img") as snapshot_device,  # what the published snapshot holds
        gpu_instance(out / "gpu", PIPELINE, "us-east-1d", "nvme", [snapshot_device], account=account) as gpu,
    ):
        print(f"  simulated g5.xlarge {gpu.instance_id} in {gpu.az}, tagged as the launch template tags it (Nitro: "
              "EBS volumes appear as NVMe devices); the GPU role's policy is enforced on its calls")  # fmt: skip
        command = attach_command(gpu, SNAPSHOT_PARAMETER, PIPELINE)  # the demo watches initialization below
        print("  $ python -m bootstrap attach --snapshot-parameter " + SNAPSHOT_PARAMETER + " ...", flush=True)
        started = time.monotonic()
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False,
                                env=instance_env(gpu.imds_endpoint, out))  # fmt: skip
        if result.returncode != 0:
            logging.error("the attach agent failed (exit %d)", result.returncode)
            return result.returncode
        attached = json.loads(result.stdout)
        print(f"  {attached['volume_id']} mounted read-only at {attached['mount_point']} from {attached['device']} "
              f"in {time.monotonic() - started:.1f}s")  # fmt: skip
        restored = client("ec2").describe_volumes(VolumeIds=[attached["volume_id"]])["Volumes"][0]
        rate = json.loads(gpu.opts.ready_marker.read_text())["initialization_rate"]
        print(f"  restored volume: {restored['Size']} GiB gp3 (the work volume is 1000 GiB), initialized at "
              f"{rate} MiB/s")  # fmt: skip
        try:
            on_gpu = ["--ready-marker", str(gpu.opts.ready_marker)]
            watch = [sys.executable, "-m", "bootstrap", "watch-initialization", "--volume-id", attached["volume_id"],
                     "--poll", "0.2", *on_gpu]  # fmt: skip
            started = time.monotonic()
            subprocess.run(watch, stdout=subprocess.DEVNULL, check=True, env=instance_env(gpu.imds_endpoint, out))
            print(f"  $ python -m bootstrap watch-initialization ...: fully initialized after "
                  f"{time.monotonic() - started:.1f}s (the emulator's; on AWS size x 1024 / rate seconds), recorded "
                  "in the ready marker and the instance's tag")  # fmt: skip
            read_a_few_records(gpu.opts.mount_point / "recordio")
            one_batch_each(gpu.opts.mount_point)
            bench = [sys.executable, "-m", "bootstrap", "bench-read", "--recordio",
                     str(gpu.opts.mount_point / "recordio"), "--seconds", "2"]  # fmt: skip
            rates = json.loads(subprocess.run(bench, stdout=subprocess.PIPE, text=True, check=True).stdout)
            measured = "; ".join(
                f"{order} {rates[order]['records_per_s']:,.0f} records/s, {rates[order]['mib_per_s']:,.1f} MiB/s"
                for order in ("sequential", "random")
            )
            print(f"  $ python -m bootstrap bench-read: {measured} (a loop device here; run it on the GPU instance)")
        finally:
            run("umount", str(gpu.opts.mount_point))
        ec2 = client("ec2")
        ec2.terminate_instances(InstanceIds=[gpu.instance_id])
        left = ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_OWNER}", "Values": [gpu.instance_id]}])["Volumes"]
        print(f"  instance terminated; volumes it leaves behind: {len(left)} (DeleteOnTermination was set at attach)")
        return 1 if left else 0


def read_a_few_records(recordio: Path) -> None:
    import mxnet as mx

    rec = recordio / "train.rec"
    reader = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
    names = [line.split("\t")[0] for line in (recordio / "synsets.txt").read_text().splitlines()]
    for key in reader.keys[:3]:
        header, image = mx.recordio.unpack_img(reader.read_idx(key))
        print(f"  read record {key} from the mount: label {int(header.label)} ({names[int(header.label)]}), "
              f"image {image.shape[1]}x{image.shape[0]}")  # fmt: skip


def describe_outputs(engine: Engine, summary: dict[str, Any], config_path: Path) -> None:
    data = engine.paths
    print(f"  archives (MD5-verified):    {data.archives}")
    for split, info in summary["splits"].items():
        files = ",".join(info["files"])
        print(f"  {split:5} RecordIO:             {data.recordio}/{{{files}}}  ({info['packed']} images)")
        if info["shards"]:
            print(f"  {split:5} WebDataset:           {data.webdataset}/{{{','.join(info['shards'])}}}")
        if "tree" in summary["formats"]:
            print(f"  {split:5} class tree:           {data.tree / split}/<wnid>/  (+ meta.bin, devkit)")
        listed = Path(info["failures"]).read_text().splitlines()[1:]
        print(f"  {split:5} failures ({len(listed)} listed): {info['failures']}")
        for line in listed:
            print(f"      {line}")
    print(f"  classes:                    {data.recordio / 'synsets.txt'}")
    print(f"  status file:                {data.status}")
    print(f"  config used:                {config_path}")


if __name__ == "__main__":
    sys.exit(main())
