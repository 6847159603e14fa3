"""``python -m bootstrap <stage>``: the data-prep engine's command line.

``run(argv)`` parses, runs and returns an exit code, so tests call it
directly; ``main()`` only wires it to the process.  Results go to stdout,
logs to stderr; a ``BootstrapError`` becomes one clear line and its exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bootstrap.common import aws
from bootstrap.common.aws import aws_error
from bootstrap.common.devices import DeviceRoots
from bootstrap.common.errors import BootstrapError
from bootstrap.common.imds import Imds
from bootstrap.contract import names
from bootstrap.gpu.attach import Attacher, AttachOptions
from bootstrap.settings import add_flags

log = logging.getLogger("bootstrap")

STAGES = {
    "run": "every stage in order: fetch, organise, pack, verify, inspect",
    "fetch": "download the archives (parallel ranges, resumable) and check size and MD5",
    "organise": "read the devkit: classes in sorted-WNID order, validation labels, synsets.txt",
    "pack": "one pass over each archive into .rec/.idx/.lst (+ class folders with --keep-tree)",
    "verify": "re-read every record, check offsets, labels and counts, decode a sample",
    "inspect": "write a contact-sheet PNG of random records with their class names",
    "backup": "sync the data directory to S3 (incremental, checksummed); --verify compares S3 with the manifest",
    "snapshot": "freeze the data filesystem, snapshot its EBS volume with tags, wait until complete",
    "publish": "write the snapshot id and dataset facts to the snapshot SSM parameter",
    "status": "print the status file of the data directory",
    "mount-data": "on the download instance: find the data volume by id, format it if blank, mount it at data_dir",
    "attach": "on a GPU instance: create the dataset volume from the snapshot, attach it, mount it read-only",
}


def _flag_args(parser: argparse.ArgumentParser) -> None:
    """The engine's flags: one per setting (``bootstrap.settings``), then the per-invocation ones."""
    parser.add_argument("--config", type=Path, help="JSON config file (keys as these flags, with underscores)")
    add_flags(parser)
    add = parser.add_argument
    add("--verify", action="store_true", help="backup: compare S3 with the manifest instead of uploading")
    add("--json", action="store_true", help="print the result as JSON")
    add("-v", "--verbose", action="store_true", help="debug logging")


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
    add("--initialization-rate", type=int, help="MiB/s (100-300) at which EBS fetches the snapshot's blocks")
    add("--prewarm", action="store_true", help="read the whole volume once in the background")
    add("--shutdown-on-failure", action="store_true", help="shut the instance down when the volume fails")
    add("--timeout", type=float, default=default["timeout_seconds"], help="seconds to wait for each step")
    add("--sys-root", type=Path, default=roots.sys_root, help=argparse.SUPPRESS)
    add("--dev-root", type=Path, default=roots.dev_root, help=argparse.SUPPRESS)
    add("--fstab", type=Path, default=default["fstab"], help=argparse.SUPPRESS)
    add("--ready-marker", type=Path, default=default["ready_marker"])
    add("-v", "--verbose", action="store_true", help="debug logging")


def attach(args: argparse.Namespace) -> dict[str, Any]:
    identity = Imds().identity()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(AttachOptions) if hasattr(args, f.name)}
    opts = AttachOptions(**given, timeout_seconds=args.timeout, roots=DeviceRoots(args.sys_root, args.dev_root))
    ec2, ssm = aws.client("ec2", region=identity.region), aws.client("ssm", region=identity.region)
    return Attacher(ec2, ssm, identity, opts).attach()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bootstrap",
        description="Stage ImageNet-style archives as MXNet RecordIO: fetch, organise, pack, verify, inspect.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_text in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        (_attach_args if name == "attach" else _flag_args)(stage)
    return parser


_NOT_CONFIG = {"stage", "config", "json", "verbose", "verify"}


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "urllib3", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if args.stage == "attach":
            print(json.dumps(attach(args), indent=2))
        else:
            _engine_stage(args)
        return 0
    except BootstrapError as e:
        log.error("%s", e)
        return e.exit_code
    except (ClientError, BotoCoreError) as e:  # one line that says what to fix, never a traceback
        log.error("%s", aws_error(getattr(e, "operation_name", "AWS"), e))
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to resume")
        return 130


def _engine_stage(args: argparse.Namespace) -> None:
    # imported here so that `attach` runs on a GPU instance with nothing but boto3 installed
    from bootstrap.common.state import read_json
    from bootstrap.engine import Engine, describe
    from bootstrap.settings import load_config

    config = load_config(args.config, {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG})
    if args.stage == "status":
        status = read_json(config.paths.status)
        print(json.dumps(status, indent=2) if status else f"no status yet at {config.paths.status}")
        return
    engine = Engine(config)
    if args.stage == "backup" and args.verify:
        result: Any = engine.backup(verify_only=True)
    else:
        result = getattr(engine, args.stage.replace("-", "_"))()
    if args.stage == "run":
        print(describe(result))
    elif (args.json or args.stage == "mount-data") and result is not None:
        print(json.dumps(result, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o), indent=2))


def main() -> None:
    sys.exit(run(sys.argv[1:]))
