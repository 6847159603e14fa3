"""``smoke``: the whole pipeline on a tiny dataset in your own account, then everything deleted and a report.

Run it before the real deployment: in about 15 minutes and for a few cents it
proves every link the ImageNet run depends on in *your* account and region
(CDK bootstrap, the stacks, the download instance's installs and role, the
s3:// source, pack, backup, the dataset snapshot, the teardown function, the
launch template, attach, reading the records back), where the real run would
find a problem hours and dollars in.

Safe by construction: every name comes from a run id of its own, so nothing of
a real pipeline is touched; it asks first (account, region, estimated cost)
unless ``--yes``; it tears everything down on success, on failure and on
Ctrl-C, then lists whatever in the region still carries the run's name or tag
and fails if anything does.  ``--keep`` leaves it all for debugging and prints
the ``--cleanup RUN_ID`` command that removes it later.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bootstrap.common.aws import client
from bootstrap.common.errors import ConfigError
from cdk_app.config import StagingConfig
from scripts.common import OperatorError
from scripts.instance_types import InstanceTable
from scripts.plan_data import load_prices
from scripts.smoke.cleanup import Clients, Waits, leftovers, teardown
from scripts.smoke.deploy import CdkCli, user_context
from scripts.smoke.plan import ASSUMED, DATA_VOLUME, Durations, SmokePlan, estimate_cost, new_run_id
from scripts.smoke.report import INTERRUPTED, KEPT, PASS, Report, Step
from scripts.smoke.steps import ACTIONS, STEPS, Smoke, SmokeError, Timeouts

HELP = "prove the whole pipeline in your AWS account on a tiny dataset (~15 min, ~1.5 cents), then delete it all"
BOOTSTRAP_VERSION = "/cdk-bootstrap/hnb659fds/version"
"""The parameter ``cdk bootstrap`` creates (default qualifier); without it ``cdk deploy`` cannot publish assets."""


def add_arguments(parser: argparse.ArgumentParser, deployed: StagingConfig) -> None:
    add = parser.add_argument
    add("--region", help="default: the AWS CLI's (AWS_DEFAULT_REGION, ~/.aws/config)")
    add("--yes", action="store_true", help="do not ask for confirmation")
    add("--keep", action="store_true", help="leave everything in place for debugging; prints how to clean up later")
    add("--cleanup", metavar="RUN_ID", help="delete everything the run RUN_ID made (a --keep or interrupted run), "
        "then list what is left")  # fmt: skip
    add("--work-dir", type=Path, default=Path("smoke-output"),
        help="where the dataset, the run's cdk.json and report.json go (default ./smoke-output/RUN_ID)")  # fmt: skip
    add("--poll", type=float, default=10.0, help="seconds between checks (default 10)")
    add("--timeout-minutes", type=float, default=45.0, help="for the download side to publish (default 45)")


def clients(region: str) -> Clients:
    return Clients(*(client(name, region=region) for name in
                     ("ec2", "ssm", "s3", "cloudformation", "logs", "resourcegroupstaggingapi", "sts")))  # fmt: skip


def command(args: argparse.Namespace) -> int:
    import boto3

    region = args.region or boto3.session.Session().region_name
    if not region:
        raise ConfigError("no AWS region: give --region, or set AWS_DEFAULT_REGION (aws configure)")
    aws = clients(region)
    account = str(aws.sts.get_caller_identity()["Account"])
    waits = Waits(poll=args.poll)
    if args.cleanup:
        return cleanup(aws, SmokePlan(args.cleanup, account, region), waits)
    plan = SmokePlan(new_run_id(), account, region)
    work = args.work_dir / plan.run_id
    deployer = CdkCli(work / "cdk", region)
    deployer.check()
    preflight(aws)
    smoke = Smoke(plan, aws, deployer, work, user_context(), waits, Timeouts(pipeline=args.timeout_minutes * 60))
    if not args.yes and not confirm(plan, estimated(plan)):
        raise OperatorError("not confirmed; nothing was created (pass --yes to skip the question)")
    report = execute(smoke, keep=args.keep)
    print(report.render(), flush=True)
    report.write(work / "report.json")
    print(f"report: {work / 'report.json'}", file=sys.stderr)
    if any(s.status == INTERRUPTED for s in report.steps):
        return 130
    return 0 if report.passed else 1


def preflight(aws: Clients) -> None:
    """What must be true before anything is created: the account is CDK-bootstrapped in the region."""
    try:
        aws.ssm.get_parameter(Name=BOOTSTRAP_VERSION)
    except aws.ssm.exceptions.ParameterNotFound:
        target = f"aws://{aws.sts.get_caller_identity()['Account']}/{aws.ssm.meta.region_name}"
        raise OperatorError(
            f"this account and region are not CDK-bootstrapped ({BOOTSTRAP_VERSION} is missing): "
            f"run `npx cdk bootstrap {target}` once, then this again"
        ) from None


def estimated(plan: SmokePlan) -> float:
    return sum(estimate_cost(plan, ASSUMED, load_prices(), InstanceTable()).values())


def confirm(plan: SmokePlan, usd: float) -> bool:
    if not sys.stdin.isatty():
        return False
    volume_type, volume_gib = DATA_VOLUME
    print(f"This smoke run creates, in account {plan.account} ({plan.region}):\n"
          f"  the bucket {plan.source_bucket} with a tiny dataset, the stacks {plan.pipeline}-{{network,storage,"
          f"download,fleet}}\n  ({plan.instance_type} download instance with a {volume_gib} GiB {volume_type} volume, "
          f"one {plan.instance_type} fleet instance), a snapshot of a few MB,\n"
          f"and deletes all of it at the end (on failure and Ctrl-C too). About 15-30 minutes; estimated ${usd:.3f} "
          "at list prices (scripts/prices.json).", file=sys.stderr)  # fmt: skip
    return input("Type yes to go on: ").strip().lower() == "yes"


def execute(smoke: Smoke, *, keep: bool = False) -> Report:
    """Run the steps in order until one fails or Ctrl-C, then tear everything down (unless ``keep``)."""
    plan = smoke.plan
    report = Report(plan.run_id, plan.account, plan.region, [Step(s.name, s.title) for s in STEPS],
                    estimated_usd=round(estimated(plan), 4))  # fmt: skip
    try:
        for name, action in ACTIONS.items():
            smoke.say(report.step_named(name).title)
            with report.step(name) as step:
                step.detail = action(smoke)
            if report.failed:
                smoke.say(f"{name} failed: {report.failed.detail}")
                break
    except KeyboardInterrupt:
        smoke.say("interrupted: tearing down")
    if keep:
        report.kept, report.step_named("teardown").status = True, KEPT
        report.cleanup_command = f"python -m scripts smoke --cleanup {plan.run_id} --region {plan.region}"
    else:
        smoke.say(report.step_named("teardown").title)
        with shielded_from_ctrl_c(smoke.say, plan.run_id), report.step("teardown") as step:
            step.detail = _teardown(smoke, report)
    report.cost_usd = estimate_cost(plan, measured(report), load_prices(), InstanceTable())
    return report


def _teardown(smoke: Smoke, report: Report) -> str:
    problems, report.leftovers = sweep(smoke.aws, smoke.plan, smoke.waits, smoke.say)
    if problems or report.leftovers:
        raise SmokeError("; ".join([*problems, *(f"left behind: {item}" for item in report.leftovers)]))
    return "nothing carries the run's name or tag any more"


def sweep(aws: Clients, plan: SmokePlan, waits: Waits, say: Callable[[str], None], rounds: int = 3
          ) -> tuple[list[str], list[str]]:  # fmt: skip
    """Tear down, then look for leftovers; while any are found, wait a poll and do both again.

    Deletions take a moment to show, and a dying download instance may still write its status parameter after
    the storage stack took it: a later round removes what an earlier one could not.  Returns the last round's
    problems and leftovers.
    """
    for round_ in range(rounds):
        problems = teardown(aws, plan, waits, say)
        found = leftovers(aws, plan)
        if not found or round_ == rounds - 1:
            break
        say(f"still there, another round: {'; '.join(found)}")
        waits.sleep(waits.poll)
    return problems, found


def cleanup(aws: Clients, plan: SmokePlan, waits: Waits) -> int:
    def say(message: str) -> None:
        print(f"smoke cleanup: {message}", file=sys.stderr, flush=True)

    problems, left = sweep(aws, plan, waits, say)
    for line in [*problems, *(f"left behind: {item}" for item in left)]:
        print(line)
    print(f"{plan.run_id}: {'nothing left' if not problems and not left else 'NOT clean'} in {plan.region}")
    return 0 if not problems and not left else 1


def measured(report: Report) -> Durations:
    """How long each billed thing existed, from the steps' clocks: the download instance until the teardown function
    ended it (or the teardown did), the fleet instance until the teardown; a step that never ran adds nothing."""
    steps = {s.name: s for s in report.steps}
    last = max((s.started + s.seconds for s in report.steps if s.started is not None), default=0.0)

    def hours(first: str, until: str | None = None) -> float:
        start, end = steps[first].started, steps[until] if until else None
        if start is None:
            return 0.0
        stop = end.started + end.seconds if end is not None and end.status == PASS and end.started else last
        return (stop - start) / 3600

    return Durations(download=hours("deploy", "pipeline"), fleet=hours("fleet"), run=hours("dataset"))


@contextmanager
def shielded_from_ctrl_c(say: Callable[[str], None], run_id: str) -> Iterator[None]:
    """Ctrl-C during the teardown would leave things behind: say so instead of stopping (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def refuse(signum: int, frame: object) -> None:
        say(f"tearing down; Ctrl-C is ignored until that ends (if you kill it, `python -m scripts smoke --cleanup "
            f"{run_id}` removes the rest)")  # fmt: skip

    previous = signal.signal(signal.SIGINT, refuse)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
