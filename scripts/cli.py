"""``python -m scripts``: plan, status, launch-fleet, teardown, copy-snapshot.

Each command is one module with ``HELP``, ``add_arguments(parser, deployed)``
and ``command(args)``, which returns ``(data, text)`` (or an exit code it has
already reported).  ``run(argv)`` returns an exit code and is what tests call;
results go to stdout (human text, or JSON with ``--json``), logs to stderr.
Exit codes: 0 ok, 1 failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from types import ModuleType

from botocore.exceptions import BotoCoreError, ClientError

from bootstrap.common.aws import aws_error
from bootstrap.common.errors import BootstrapError, ConfigError
from cdk_app.config import StagingConfig
from scripts import copy_snapshot, launch, plan, status, teardown
from scripts.common import deployed_config

COMMANDS: dict[str, ModuleType] = {
    "plan": plan,
    "status": status,
    "launch-fleet": launch,
    "teardown": teardown,
    "copy-snapshot": copy_snapshot,
}


def build_parser(deployed: StagingConfig | None = None) -> argparse.ArgumentParser:
    deployed = deployed or StagingConfig()
    parser = argparse.ArgumentParser(prog="python -m scripts", description="Operate the ImageNet staging pipeline.")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP), deployed)
    return parser


def run(argv: Sequence[str]) -> int:
    try:
        deployed = deployed_config()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    args = build_parser(deployed).parse_args(argv)
    try:
        outcome = COMMANDS[args.command].command(args)
    except BootstrapError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (ClientError, BotoCoreError) as e:  # a missing template, snapshot or permission: on one line
        print(f"error: {aws_error(getattr(e, 'operation_name', 'AWS'), e)}", file=sys.stderr)
        return 1
    if isinstance(outcome, int):
        return outcome
    data, text = outcome
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
