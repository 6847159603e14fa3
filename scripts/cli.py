"""``python -m scripts``: plan, status, launch-fleet, teardown, copy-snapshot, smoke.

Each command is one module with ``HELP``, ``add_arguments(parser, deployed)``
and ``command(args)``, which returns ``(data, text)`` (or an exit code it has
already reported).  ``run(argv)`` returns an exit code and is what tests call;
results go to stdout (human text, or JSON with ``--json``), logs to stderr.
Exit codes (``bootstrap.common.failures``): 0 ok, 1 failure, 2 usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from types import ModuleType

from bootstrap import __version__
from bootstrap.common.argparsing import Parser, add_common, command_name, parse
from bootstrap.common.errors import ConfigError
from bootstrap.common.failures import exit_code
from cdk_app.config import StagingConfig
from scripts import copy_snapshot, hub_table, launch, plan, smoke, status, teardown
from scripts.common import deployed_config

COMMANDS: dict[str, ModuleType] = {
    "plan": plan,
    "status": status,
    "launch-fleet": launch,
    "teardown": teardown,
    "copy-snapshot": copy_snapshot,
    "hub-table": hub_table,
    "smoke": smoke,
}


PROG = "python -m scripts"


def build_parser(deployed: StagingConfig | None = None, prog: str = PROG) -> argparse.ArgumentParser:
    deployed = deployed or StagingConfig()
    parser = Parser(
        prog=prog,
        description="Operate the ImageNet staging pipeline.",
        epilog="exit codes: 0 done; 1 failed; 2 bad command line or configuration; 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command, deployed)
        add_common(command)
    return parser


def _say(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def run(argv: Sequence[str], prog: str = PROG) -> int:
    try:
        deployed = deployed_config()
    except ConfigError as e:
        _say(str(e))
        return e.exit_code
    args = parse(build_parser(deployed, prog), argv)
    try:
        outcome = COMMANDS[args.command].command(args)
        if isinstance(outcome, int):
            return outcome
        data, text = outcome
        print(json.dumps(data, indent=2, default=str) if args.json else text, flush=True)
        return 0
    except SystemExit:
        raise
    except BaseException as e:  # every error ends as one line and its exit code (bootstrap.common.failures)
        return exit_code(e, _say, verbose=args.verbose)


def main() -> None:
    sys.exit(run(sys.argv[1:], command_name(PROG)))
