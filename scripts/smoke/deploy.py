"""Deploying the smoke stacks: the real ``cdk deploy``, and reading back what CloudFormation made.

The CLI runs in a directory of the run's own, with a ``cdk.json`` holding the
merged context, so the user's ``cdk.json``, ``cdk.context.json`` and
``cdk.out`` stay as they were.  Anything that can deploy a context is a
``Deployer``: the tests use one that creates the same templates in the
emulator's CloudFormation.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from scripts.common import OperatorError

ROOT = Path(__file__).resolve().parent.parent.parent


class Deployer(Protocol):
    def deploy(self, context: dict[str, Any]) -> None:
        """Create (or update) every stack of the app with this context; raise if any fails."""


class CdkCli:
    """The CDK CLI pinned in package.json (``npm ci`` or ``make deps`` installs it)."""

    def __init__(self, work: Path, region: str, root: Path = ROOT) -> None:
        self.work, self.region, self.root = work, region, root
        self.cli = root / "node_modules" / ".bin" / "cdk"

    def check(self) -> None:
        if not self.cli.exists():
            raise OperatorError(f"the CDK CLI is not installed at {self.cli}: run `make deps` (or `npm ci`) first")

    def command(self, verb: str, context: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """argv and environment of ``cdk VERB`` for this context; writes the run's own cdk.json."""
        self.work.mkdir(parents=True, exist_ok=True)
        app = f"{shlex.quote(sys.executable)} -m cdk_app.app"
        (self.work / "cdk.json").write_text(json.dumps({"app": app, "context": context}, indent=2))
        env = {**os.environ, "PYTHONPATH": str(self.root), "AWS_REGION": self.region,
               "AWS_DEFAULT_REGION": self.region, "CDK_DISABLE_CLI_TELEMETRY": "true",
               "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}  # fmt: skip
        argv = [str(self.cli), verb, "--no-notices", "--no-version-reporting", "--output", str(self.work / "cdk.out")]
        if verb == "deploy":
            argv += ["--all", "--require-approval", "never", "--progress", "events"]
        return argv, env

    def deploy(self, context: dict[str, Any]) -> None:
        self.check()
        argv, env = self.command("deploy", context)
        print(f"$ cdk deploy --all (context in {self.work / 'cdk.json'})", file=sys.stderr, flush=True)
        done = subprocess.run(argv, cwd=self.work, env=env, check=False)
        if done.returncode != 0:
            raise OperatorError(f"cdk deploy failed (exit {done.returncode}); its output is above")


def user_context(path: Path = ROOT / "cdk.json") -> dict[str, Any]:
    """The context of the user's cdk.json: the settings their real deployment would use."""
    context: dict[str, Any] = json.loads(path.read_text()).get("context", {}) if path.exists() else {}
    return context


def stack_outputs(cfn: Any, stack: str) -> dict[str, str]:
    (found,) = cfn.describe_stacks(StackName=stack)["Stacks"]
    if found["StackStatus"] not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise OperatorError(f"stack {stack} is {found['StackStatus']}: {found.get('StackStatusReason', '')}")
    return {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])}
