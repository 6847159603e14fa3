"""``python -m bootstrap <stage>``: the data-prep engine's command line.

``run(argv)`` parses, runs and returns an exit code, so tests call it
directly; ``main()`` only wires it to the process.  Results go to stdout,
logs to stderr; a ``BootstrapError`` becomes one clear line and its exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bootstrap import __version__, layout, read_check
from bootstrap.common import aws
from bootstrap.common.argparsing import Parser, add_common, command_name, parse
from bootstrap.common.devices import DeviceRoots
from bootstrap.common.errors import ConfigError
from bootstrap.common.failures import exit_code
from bootstrap.common.imds import Imds
from bootstrap.common.progress import BarSafeHandler
from bootstrap.contract import names
from bootstrap.gpu import initialization, read_bench
from bootstrap.gpu.attach import Attacher, AttachOptions
from bootstrap.settings import add_flags

log = logging.getLogger("bootstrap")

STAGES = {
    "run": "every stage in order: fetch, organise, pack, verify, inspect, then backup, snapshot, publish when set",
    "fetch": "download the archives (parallel ranges, resumable) and check size and MD5",
    "organise": "read the devkit: classes in sorted-WNID order, validation labels, synsets.txt",
    "pack": "one pass over each archive into .rec/.idx/.lst (+ WebDataset shards, class folders: --formats)",
    "verify": "re-read every record, check offsets, labels and counts, decode a sample",
    "inspect": "write a contact-sheet PNG of random records with their class names",
    "backup": "sync the data directory to S3 (incremental, checksummed); --verify compares S3 with the manifest",
    "snapshot": "copy the packed data to a volume of its own size and snapshot it with the dataset's tags "
    "(dataset_snapshot=work-volume: the whole data volume), wait until complete",
    "publish": "write the snapshot id and dataset facts to the snapshot SSM parameter",
    "status": "print the status file of the data directory",
    "mount-data": "on the download instance: find the data volume by id, format it if blank, mount it at data_dir",
    "attach": "on a GPU instance: create the dataset volume from the snapshot, attach it, mount it read-only",
    "watch-initialization": "on a GPU instance: wait until the dataset volume is fully initialized, and record it",
    "bench-read": "read a split's records from the mounted dataset, in file order and at random: records/s, MiB/s",
    "read-check": "read every record of the mounted dataset back and check it against its index, list and classes",
}


def _flag_args(parser: argparse.ArgumentParser, stage: str) -> None:
    """An engine command's flags: the settings it uses (``bootstrap.settings``), then its per-invocation ones."""
    parser.add_argument("--config", type=Path, help="JSON config file (keys as these flags, with underscores)")
    add_flags(parser, stage)
    add = parser.add_argument
    if stage == "backup":
        add("--verify", action="store_true", help="compare S3 with the manifest instead of uploading")
    if stage in ("run", *layout.STAGES):
        add(
            "--rebuild-from",
            choices=layout.STAGES,
            help="do this stage and every later one again (after a change of settings, which is refused otherwise)",
        )
        add("--force", action="store_true", help="rebuild from wherever the settings changed, instead of refusing")
    if stage == "verify":
        add("--read-only", action="store_true", help="write nothing, not even the verify marker (and take no "
            "lock): for a read-only /data, or while a run writes")  # fmt: skip


def _attach_args(parser: argparse.ArgumentParser) -> None:
    """The attach agent's flags; their defaults are ``AttachOptions``'s (the agent's one definition)."""
    default = {f.name: f.default for f in dataclasses.fields(AttachOptions)}
    roots = DeviceRoots()
    add = parser.add_argument
    add("--snapshot-parameter", help="SSM parameter with the published snapshot (default: newest tagged snapshot)")
    add("--pipeline", default=names.DEFAULT_PIPELINE, help="pipeline name in the snapshot and volume tags")
    add("--mount-point", type=Path, default=default["mount_point"])
    add("--volume-type", default=default["volume_type"])
    add("--iops", type=int, help="provisioned IOPS (gp3: 3000-80000)")
    add("--throughput", type=int, help="MiB/s (gp3: 125-2000)")
    add(
        "--initialization-rate",
        type=_rate,
        default="auto",
        metavar="auto|off|100-300",
        help="MiB/s at which EBS loads every block of the snapshot; auto (default): the lowest that initializes "
        "the volume within 4 minutes; off: lazy loading on first read",
    )
    add(
        "--no-watch-initialization",
        dest="watch_initialization",
        action="store_false",
        help="do not start the watcher that records when the volume is fully initialized",
    )
    add("--prewarm", action="store_true", help="read the whole volume once in the background")
    add(
        "--local-nvme",
        action="store_true",
        help="copy the dataset to the instance-store NVMe disks (RAID 0 when "
        "several) and serve it from there; the copy's time goes in the ready marker",
    )
    add("--shutdown-on-failure", action="store_true", help="shut the instance down when the volume fails")
    add("--timeout", type=float, default=default["timeout_seconds"], help="seconds to wait for each step")
    add("--sys-root", type=Path, default=roots.sys_root, help=argparse.SUPPRESS)
    add("--dev-root", type=Path, default=roots.dev_root, help=argparse.SUPPRESS)
    add("--fstab", type=Path, default=default["fstab"], help=argparse.SUPPRESS)
    add("--ready-marker", type=Path, default=default["ready_marker"])


def _rate(text: str) -> str | int:
    if text in ("auto", "off"):
        return text
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: auto, off or 100-300 (MiB/s)") from None
    if not 100 <= rate <= 300:
        raise argparse.ArgumentTypeError(f"{rate}: EBS initializes at 100-300 MiB/s")
    return rate


def attach(args: argparse.Namespace) -> dict[str, Any]:
    identity = Imds().identity()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(AttachOptions) if hasattr(args, f.name)}
    rate = given.pop("initialization_rate")
    given["initialization_rate"] = rate if isinstance(rate, int) else None
    if rate == "off":
        given["initialize_within"] = None
    opts = AttachOptions(**given, timeout_seconds=args.timeout, roots=DeviceRoots(args.sys_root, args.dev_root))
    ec2, ssm = aws.client("ec2", region=identity.region), aws.client("ssm", region=identity.region)
    return Attacher(ec2, ssm, identity, opts).attach()


def _watch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--volume-id", required=True)
    parser.add_argument("--ready-marker", type=Path, default=Path(names.READY_MARKER))
    parser.add_argument("--poll", type=float, default=30.0, help="seconds between checks (default 30)")


def _bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recordio", type=Path, default=Path(names.DATA_DIR) / "recordio",
                        help="the RecordIO folder of the mounted dataset (default /data/recordio)")  # fmt: skip
    parser.add_argument("--split", default="train")
    parser.add_argument("--seconds", type=float, default=10.0, help="at most this long per order (default 10)")


def _read_check_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recordio", type=Path, default=Path(names.DATA_DIR) / "recordio",
                        help="the RecordIO folder of the mounted dataset (default /data/recordio)")  # fmt: skip


def watch_initialization(args: argparse.Namespace) -> dict[str, Any]:
    identity = Imds().identity()
    ec2 = aws.client("ec2", region=identity.region)
    return initialization.watch(ec2, args.volume_id, identity.instance_id, args.ready_marker, poll_seconds=args.poll)


def bench_read(args: argparse.Namespace) -> dict[str, Any]:
    return read_bench.bench_read(args.recordio, args.split, args.seconds)


def check_reads(args: argparse.Namespace) -> dict[str, Any]:
    return read_check.read_check(args.recordio)


GPU_COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "attach": attach,
    "watch-initialization": watch_initialization,
    "bench-read": bench_read,
    "read-check": check_reads,
}
"""The GPU instance's commands: boto3 and the standard library only."""


PROG = "python -m bootstrap"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog,
        description="Stage ImageNet-style archives as MXNet RecordIO: fetch, organise, pack, verify, inspect, "
        "then back up, snapshot and publish.",
        epilog="exit codes: 0 done; 1 failed (run again to resume); 2 bad command line or configuration; "
        "3 storage (full, read-only or not ours); 4 another run holds the data directory; 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common(parser, top=True)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    gpu_args = {"attach": _attach_args, "watch-initialization": _watch_args, "bench-read": _bench_args,
                "read-check": _read_check_args}  # fmt: skip
    for name, help_text in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        if name in gpu_args:
            gpu_args[name](stage)
        else:
            _flag_args(stage, name)
        add_common(stage)
    return parser


_NOT_CONFIG = {"stage", "config", "json", "verbose", "verify", "rebuild_from", "force", "read_only"}
CREATES_DATA_DIR = ("run", "fetch", "mount-data")
"""The commands that may start a data directory; the others refuse a missing one rather than create it."""


def configure_logging(verbose: bool) -> None:
    """Logs to stderr; on a terminal above the progress bar (when tqdm is installed: not on a GPU instance)."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None:
        handler = BarSafeHandler(sys.stderr)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    for noisy in ("botocore", "urllib3", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(argv: Sequence[str], prog: str = PROG) -> int:
    args = parse(build_parser(prog), argv)
    configure_logging(args.verbose)
    try:
        if args.stage in GPU_COMMANDS:
            print(json.dumps(GPU_COMMANDS[args.stage](args), indent=2))
        else:
            _engine_stage(args)
        return 0
    except SystemExit:
        raise
    except BaseException as e:  # every error ends as one line and its exit code (bootstrap.common.failures)
        return exit_code(e, log.error, verbose=args.verbose)


def _engine_stage(args: argparse.Namespace) -> None:
    # imported here so that `attach` runs on a GPU instance with nothing but boto3 installed
    from bootstrap.common.lock import DataDirLock
    from bootstrap.common.state import read_state
    from bootstrap.engine import Engine, describe
    from bootstrap.engine.context import made_with
    from bootstrap.settings import load_config

    given = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    config = load_config(args.config, given)
    root = config.paths.root
    if args.stage not in CREATES_DATA_DIR and not root.is_dir():
        raise ConfigError(f"{root} does not exist: point --data-dir (or data_dir in the config) at the data "
                          "directory, or start one with run or fetch")  # fmt: skip
    if args.stage not in ("run", "status", "mount-data"):  # one stage: what is not given, as the directory was made
        config = load_config(args.config, given, made_with(config.paths))
    if args.stage == "status":
        status = read_state(config.paths.status)
        print(
            json.dumps(status, indent=2) if isinstance(status, dict) else f"no readable status at {config.paths.status}"
        )
        return
    if args.stage == "verify" and (args.read_only or not os.access(root, os.W_OK)):
        Engine(config, read_only=True).verify()
        return
    with DataDirLock(root):
        engine = Engine(config, force=getattr(args, "force", False), rebuild_from=getattr(args, "rebuild_from", None))
        if getattr(args, "verify", False):
            result: Any = engine.backup(verify_only=True)
        else:
            result = getattr(engine, args.stage.replace("-", "_"))()
    if args.stage == "run":
        print(describe(result))
    elif (args.json or args.stage == "mount-data") and result is not None:
        print(json.dumps(result, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o), indent=2))


def main() -> None:
    sys.exit(run(sys.argv[1:], command_name(PROG)))
