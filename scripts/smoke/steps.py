"""The smoke run's steps, each against the user's account with the operator's own machinery.

1. ``dataset``: a tiny ILSVRC2012-format dataset (the test generator, awkward
   cases included) in a bucket of the run's own, with its archive table;
2. ``deploy``: the four stacks with the smoke context (``plan.SmokePlan``);
3. ``pipeline``: ``status``'s view of the run until the dataset snapshot is
   published and the teardown function has terminated the download instance;
4. ``fleet``: one instance from the launch template (``launch-fleet``), its
   dataset-ready tag, then ``python -m bootstrap read-check`` on it through
   SSM Run Command: every record read back with the project's reader, the
   counts compared with what was generated and what was published.

The teardown is ``cleanup.teardown``; the runner in ``scripts.smoke`` puts
them in order and writes the report.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.contract import names, tags
from scripts.common import OperatorError
from scripts.launch import launch_fleet, wait_for_datasets
from scripts.smoke.cleanup import Clients, Waits
from scripts.smoke.deploy import Deployer, stack_outputs
from scripts.smoke.plan import DATASET, ROLES, SmokePlan, expected_images
from scripts.status import gather

TERMINAL = {"Success", "Cancelled", "TimedOut", "Failed"}
"""GetCommandInvocation's final statuses (Pending, InProgress, Delayed and Cancelling are not)."""
READ_CHECK = f"cd {names.HOME} && {names.PYTHON} -m bootstrap read-check --recordio {names.DATA_DIR}/recordio"
"""What the fleet instance runs: installed by the launch template's user data, like ``bootstrap attach``."""


class SmokeError(OperatorError):
    """A step found the pipeline not doing what it should; the message says what and where to look."""


@dataclass(frozen=True)
class Timeouts:
    pipeline: float = 45 * 60
    """From the deploy to the published snapshot and the download instance gone (about 15 minutes on AWS)."""
    fleet: float = 20 * 60
    """For the fleet instance to boot, install, attach and mount (about 5 minutes), and for its SSM agent."""
    failed: float = 3 * 60
    """How long the run may show ``failed`` before the step fails: the download instance's unit retries a failed run
    after 60 seconds (bootstrap/systemd), and a retry that gets further rewrites the status."""


@dataclass
class Smoke:
    plan: SmokePlan
    aws: Clients
    deployer: Deployer
    work: Path
    user_context: dict[str, Any]
    waits: Waits = field(default_factory=Waits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    # what the steps learn, in order
    table: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    checked: dict[str, Any] = field(default_factory=dict)

    def say(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} smoke: {message}", file=sys.stderr, flush=True)


def dataset(s: Smoke) -> str:
    """Generate the tiny dataset and upload it, with its table, to the run's source bucket."""
    try:
        from scripts.synthetic_imagenet import Spec, generate
    except ImportError as e:
        raise OperatorError(f"the dataset generator needs {e.name}: pip install '.[dev]' (or run `make aws-smoke`, "
                            "which uses the project's venv)") from None  # fmt: skip
    d = DATASET
    generated = generate(s.work / "dataset", Spec(d.classes, d.train_per_class, d.val_per_class))
    s.table = json.loads(generated.table.read_text())
    s.expected = expected_images(len(generated.undecodable))
    bucket, region = s.plan.source_bucket, s.plan.region
    s.aws.s3.create_bucket(Bucket=bucket, **({} if region == "us-east-1" else
                           {"CreateBucketConfiguration": {"LocationConstraint": region}}))  # fmt: skip
    s.aws.s3.get_waiter("bucket_exists").wait(Bucket=bucket, WaiterConfig={"Delay": 2, "MaxAttempts": 30})
    s.aws.s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": tags.PIPELINE, "Value": s.plan.pipeline}]})
    files = sorted(p for p in generated.root.iterdir() if p.is_file())
    for path in files:
        s.aws.s3.upload_file(str(path), bucket, s.plan.source_prefix + path.name)
    size = sum(p.stat().st_size for p in files)
    return f"{len(files)} files, {size:,} bytes in {s.plan.source}; expecting {s.expected}"


def deploy(s: Smoke) -> str:
    s.deployer.deploy(s.plan.context(s.table, s.user_context))
    s.outputs = {role: stack_outputs(s.aws.cfn, s.plan.stacks[role]) for role in ROLES}
    return f"stacks {', '.join(s.plan.stacks.values())}; download instance {s.outputs['download']['InstanceId']}"


def _instance_state(ec2: Any, instance_id: str) -> str:
    found = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [instance_id]}])["Reservations"]
    return next((str(i["State"]["Name"]) for r in found for i in r["Instances"]), "unknown")


def pipeline(s: Smoke) -> str:
    """Until the snapshot is published and the download instance is gone, as ``status --watch`` shows it."""
    instance = s.outputs["download"]["InstanceId"]
    logs = s.outputs["download"].get("LogGroup", "")
    deadline, last, failed_since = time.monotonic() + s.timeouts.pipeline, "", None
    while True:
        state = _instance_state(s.aws.ec2, instance)  # first: the function publishes before it terminates
        report = gather(s.aws.ssm, s.aws.ec2, pipeline=s.plan.pipeline, status_parameter=s.plan.status_parameter,
                        snapshot_parameter=s.plan.snapshot_parameter)  # fmt: skip
        status, snapshot = report["status"] or {}, report["snapshot"] or {}
        line = f"{status.get('stage', 'not started')} {status.get('state', '')}".strip()
        if line != last:
            s.say(f"download instance {instance}: {line}")
            last = line
        failed_since = (failed_since or time.monotonic()) if status.get("state") == "failed" else None
        if failed_since is not None and time.monotonic() - failed_since >= s.timeouts.failed:
            error, stage = status.get("last_error", "no error recorded"), status.get("stage")
            raise SmokeError(f"the run failed on the download instance in {stage} and stayed failed for "
                             f"{s.timeouts.failed:.0f}s: {error} (its log: CloudWatch log group {logs})")  # fmt: skip
        if report["published"] and snapshot.get("state") == "completed" and state == "terminated":
            s.published = report["published"]
            return (f"snapshot {snapshot['id']} published with {s.published.get('images')} images; the teardown "
                    f"function terminated {instance}")  # fmt: skip
        if state == "terminated" and not report["published"]:
            raise SmokeError(f"the download instance {instance} terminated before it published a snapshot "
                             f"(its log: CloudWatch log group {logs})")  # fmt: skip
        if time.monotonic() > deadline:
            raise SmokeError(f"no published snapshot after {s.timeouts.pipeline:.0f}s (now: {line}, instance "
                             f"{state}); its log: CloudWatch log group {logs}")  # fmt: skip
        s.waits.sleep(s.waits.poll)


def fleet(s: Smoke) -> str:
    """One fleet instance: launched, its dataset mounted, every record read back on it."""
    subnets = s.outputs["network"]["SubnetIds"].split(",")
    template = s.outputs["fleet"]["LaunchTemplateId"]
    launched = launch_fleet(s.aws.ec2, template_id=template, count=1, instance_types=[s.plan.instance_type],
                            subnets=subnets, pipeline=s.plan.pipeline)  # fmt: skip
    if not launched["instances"]:
        raise SmokeError(f"CreateFleet launched nothing: {launched['errors']}")
    (instance,) = launched["instances"]
    s.say(f"fleet instance {instance} launched; waiting for its dataset-ready tag")
    ready = wait_for_datasets(s.aws.ec2, [instance], timeout=s.timeouts.fleet, poll=s.waits.poll, sleep=s.waits.sleep)
    if instance not in ready:
        raise SmokeError(f"{instance} did not mount its dataset within {s.timeouts.fleet:.0f}s; see its user data's "
                         f"output: aws ec2 get-console-output --instance-id {instance}")  # fmt: skip
    s.say(f"{instance} mounted {ready[instance]}; running read-check on it through SSM Run Command")
    output = run_on_instance(s.aws.ssm, instance, READ_CHECK, s.timeouts.fleet, s.waits)
    try:
        s.checked = json.loads(output)
    except json.JSONDecodeError:
        raise SmokeError(f"read-check on {instance} printed no JSON: {output[:300]!r}") from None
    read = {split: info["records"] for split, info in s.checked["splits"].items()}
    if read != s.expected or read != s.published.get("images"):
        raise SmokeError(f"{instance} read {read} records; generated {s.expected}, published "
                         f"{s.published.get('images')}")  # fmt: skip
    return f"{instance} read back {read} records of {s.checked['classes']} classes from {ready[instance]}"


def run_on_instance(ssm: Any, instance: str, command: str, timeout: float, waits: Waits) -> str:
    """Run ``command`` on the instance with SSM Run Command (AWS-RunShellScript) and return its standard output.

    The instance's SSM agent registers a minute or so after boot: until then SendCommand answers
    InvalidInstanceId.  Right after SendCommand, GetCommandInvocation may answer InvocationDoesNotExist.
    Both mean "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            sent = ssm.send_command(InstanceIds=[instance], DocumentName="AWS-RunShellScript",
                                    Parameters={"commands": [command]}, TimeoutSeconds=600,
                                    Comment="imagenet-staging smoke: read-check")  # fmt: skip
            break
        except ssm.exceptions.InvalidInstanceId:
            if time.monotonic() > deadline:
                raise SmokeError(
                    f"{instance} never registered with SSM within {timeout:.0f}s: its agent needs outbound "
                    "HTTPS to the SSM endpoints (a public address, a NAT or VPC endpoints)"
                ) from None
            waits.sleep(waits.poll)
    command_id = sent["Command"]["CommandId"]
    while True:
        try:
            result = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance)
        except ssm.exceptions.InvocationDoesNotExist:
            result = {"Status": "Pending"}
        if result["Status"] in TERMINAL:
            break
        if time.monotonic() > deadline:
            raise SmokeError(f"read-check on {instance} is still {result['Status']} after {timeout:.0f}s")
        waits.sleep(waits.poll)
    if result["Status"] != "Success":
        raise SmokeError(f"read-check on {instance} ended {result['Status']} (exit {result.get('ResponseCode')}): "
                         f"{result.get('StandardErrorContent', '').strip()[-500:]}")  # fmt: skip
    return str(result.get("StandardOutputContent", ""))


@dataclass(frozen=True)
class StepSpec:
    name: str
    title: str


STEPS = (
    StepSpec("dataset", "1 tiny dataset uploaded to the run's source bucket"),
    StepSpec("deploy", "2 stacks deployed with the smoke configuration"),
    StepSpec("pipeline", "3 snapshot published, download side torn down"),
    StepSpec("fleet", "4 fleet instance mounted it and read every record"),
    StepSpec("teardown", "5 everything deleted, nothing left in the region"),
)
ACTIONS = {"dataset": dataset, "deploy": deploy, "pipeline": pipeline, "fleet": fleet}
