"""``python -m scripts smoke`` end to end against the emulator and the strict AWS layer.

The smoke command runs as it would against AWS, with the operator's clients;
only ``cdk deploy`` is the emulator's (``MotoDeployer``), and what AWS does
between the calls (booting the download instance, the teardown function,
booting the fleet instance, its SSM agent) is ``SimulatedCloud``'s.  Every
test checks, with its own calls, that nothing carrying the run's name or tag
is left in the region.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.common.errors import ConfigError
from bootstrap.contract import tags
from scripts.cli import run as scripts_run
from scripts.instance_types import InstanceTable
from scripts.plan_data import load_prices
from scripts.smoke import clients, execute, measured, steps
from scripts.smoke.cleanup import Waits
from scripts.smoke.deploy import CdkCli
from scripts.smoke.plan import ASSUMED, Durations, SmokePlan, estimate_cost, new_run_id
from scripts.smoke.report import FAIL, INTERRUPTED, KEPT, PASS, SKIPPED, Report, Step
from scripts.smoke.steps import STEPS, Smoke, Timeouts
from tests.fixtures.aws_emulator import REGION, client
from tests.fixtures.cdk_synth import ROOT, cdk_json_context
from tests.fixtures.iam_requests import ACCOUNT
from tests.fixtures.simulated_cloud import MotoDeployer, SimulatedCloud
from tests.fixtures.strict_aws import StrictAws

BOOTSTRAP_VERSION = "/cdk-bootstrap/hnb659fds/version"


@pytest.fixture
def smoke_world(tmp_path: Path, strict_aws: StrictAws) -> Iterator[Callable[..., tuple[Smoke, SimulatedCloud]]]:
    """A smoke run against the emulator: its plan, the simulated cloud and the deployer, ready to ``execute``."""
    client("ssm").put_parameter(Name=BOOTSTRAP_VERSION, Value="30", Type="String", Overwrite=True)
    clouds: list[SimulatedCloud] = []

    def make(**deployer: Any) -> tuple[Smoke, SimulatedCloud]:
        plan = SmokePlan(new_run_id(), ACCOUNT, REGION)
        cloud = SimulatedCloud(tmp_path / "cloud", strict_aws, plan.pipeline).__enter__()
        clouds.append(cloud)
        deploy = MotoDeployer(tmp_path / "deploy", cloud, **deployer)
        smoke = Smoke(plan, clients(REGION), deploy, tmp_path / "work", cdk_json_context(), Waits(poll=0.2),
                      Timeouts(pipeline=180, fleet=120, failed=2.0))  # fmt: skip
        return smoke, cloud

    yield make
    for cloud in clouds:
        cloud.__exit__(None, None, None)


def nothing_left(plan: SmokePlan) -> None:
    """The test's own look at the region, independent of the smoke command's leftover listing."""
    ours = [{"Name": f"tag:{tags.PIPELINE}", "Values": [plan.pipeline]}]
    ec2, s3, cfn, ssm = client("ec2"), client("s3"), client("cloudformation"), client("ssm")
    alive = [i["InstanceId"] for r in ec2.describe_instances(Filters=ours)["Reservations"] for i in r["Instances"]
             if i["State"]["Name"] != "terminated"]  # fmt: skip
    assert alive == []
    assert ec2.describe_volumes(Filters=ours)["Volumes"] == []
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=ours)["Snapshots"] == []
    assert [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(plan.run_id)] == []
    stacks = cfn.list_stacks()["StackSummaries"]
    assert [(s["StackName"], s["StackStatus"]) for s in stacks
            if s["StackName"].startswith(plan.run_id) and s["StackStatus"] != "DELETE_COMPLETE"] == []  # fmt: skip
    assert ssm.get_parameters_by_path(Path=f"/{plan.pipeline}", Recursive=True)["Parameters"] == []
    assert ec2.describe_launch_templates(Filters=ours)["LaunchTemplates"] == []


def statuses(report: Report) -> dict[str, str]:
    return {s.name: s.status for s in report.steps}


@pytest.mark.root
def test_the_smoke_run_proves_the_whole_chain_and_leaves_nothing(smoke_world: Any) -> None:
    smoke, cloud = smoke_world()
    report = execute(smoke)

    assert statuses(report) == dict.fromkeys(("dataset", "deploy", "pipeline", "fleet", "teardown"), PASS), (
        report.render()
    )
    assert report.passed and report.leftovers == []
    # the download instance really ran the engine on the uploaded dataset, under its role, and published; it either
    # finished or was still tidying up when the teardown function terminated it (the race the design expects)
    assert cloud.engine_exit in (0, -signal.SIGKILL)
    assert smoke.published["images"] == {"train": 48, "val": 10} == smoke.expected
    # the fleet instance attached the snapshot and the read-check ran on it through SSM Run Command
    (attached,) = cloud.attached.values()
    assert attached["volume_id"] in report.step_named("fleet").detail
    assert {s: v["records"] for s, v in smoke.checked["splits"].items()} == {"train": 48, "val": 10}
    assert smoke.checked["classes"] == 5
    # what it deployed was the smoke configuration, on top of the user's cdk.json
    (context,) = smoke.deployer.contexts  # type: ignore[attr-defined]
    assert context["name"] == smoke.plan.pipeline and context["source"] == smoke.plan.source
    assert context["download_instance_type"] == context["gpu_instance_types"][0] == "t3.small"
    assert (context["data_volume_type"], context["data_volume_gib"], context["dlm_interval_hours"]) == ("sc1", 125, 0)
    nothing_left(smoke.plan)
    total = sum(report.cost_usd.values())
    assert 0 < total < 0.05  # minutes of two t3.small and their volumes: cents at most
    written = report.as_dict()
    assert written["result"] == PASS and [s["status"] for s in written["steps"]] == [PASS] * 5


def _failing_after(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step ``name`` does its real work, then fails."""
    real = steps.ACTIONS[name]

    def fails(s: Smoke) -> str:
        real(s)
        raise steps.SmokeError(f"injected failure after {name}")

    monkeypatch.setitem(steps.ACTIONS, name, fails)


@pytest.mark.root
@pytest.mark.parametrize("failing", ["dataset", "deploy", "pipeline", "fleet"])
def test_a_failure_at_any_step_still_tears_everything_down(failing: str, smoke_world: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    if failing == "deploy":
        smoke, _ = smoke_world(fail_at="download")  # cdk deploy breaks halfway: network and storage exist
    else:
        smoke, _ = smoke_world()
        if failing == "pipeline":
            _corrupt_archive_after_upload(monkeypatch)  # the engine itself fails, as a bad source makes it
        else:
            _failing_after(failing, monkeypatch)
    report = execute(smoke)

    names = [s.name for s in STEPS]
    at = names.index(failing)
    expected = {n: PASS if i < at else FAIL if i == at else SKIPPED for i, n in enumerate(names[:-1])}
    assert statuses(report) == {**expected, "teardown": PASS}, report.render()
    assert not report.passed and report.leftovers == []
    detail = report.step_named(failing).detail
    if failing == "deploy":
        assert "could not be created" in detail
    elif failing == "pipeline":
        assert "the run failed on the download instance in fetch" in detail and "MD5" in detail
    else:
        assert f"injected failure after {failing}" in detail
    nothing_left(smoke.plan)


def _corrupt_archive_after_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    real = steps.ACTIONS["dataset"]

    def corrupted(s: Smoke) -> str:
        detail = real(s)
        key = s.plan.source_prefix + s.table["archives"]["val"]["name"]
        size = s.aws.s3.head_object(Bucket=s.plan.source_bucket, Key=key)["ContentLength"]
        s.aws.s3.put_object(Bucket=s.plan.source_bucket, Key=key, Body=b"\0" * size)  # same size, wrong MD5
        return detail

    monkeypatch.setitem(steps.ACTIONS, "dataset", corrupted)


@pytest.mark.root
def test_ctrl_c_in_the_middle_tears_everything_down(smoke_world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke, _ = smoke_world()
    real = steps.ACTIONS["pipeline"]

    def interrupted_while_watching(s: Smoke) -> str:
        # Ctrl-C as the terminal sends it, to this (the main) thread, once the download instance is at work
        threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        return real(s)

    monkeypatch.setitem(steps.ACTIONS, "pipeline", interrupted_while_watching)
    report = execute(smoke)

    assert statuses(report) == {"dataset": PASS, "deploy": PASS, "pipeline": INTERRUPTED, "fleet": SKIPPED,
                                "teardown": PASS}, report.render()  # fmt: skip
    nothing_left(smoke.plan)


def test_what_the_teardown_cannot_know_is_listed(smoke_world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke, _ = smoke_world()
    real, stray = steps.ACTIONS["dataset"], {}

    def with_a_stray(s: Smoke) -> str:
        # something else tagged as the run's (a hand-made security group): the smoke run must say it is left
        vpc = client("ec2").describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        stray["id"] = client("ec2").create_security_group(
            GroupName=f"{s.plan.run_id}-stray", Description="stray", VpcId=vpc, TagSpecifications=[
                {"ResourceType": "security-group", "Tags": [{"Key": tags.PIPELINE, "Value": s.plan.pipeline}]}],
        )["GroupId"]  # fmt: skip
        real(s)
        raise steps.SmokeError("stop after the dataset")

    monkeypatch.setitem(steps.ACTIONS, "dataset", with_a_stray)
    report = execute(smoke)
    try:
        assert report.step_named("teardown").status == FAIL
        assert [line for line in report.leftovers if stray["id"] in line], report.leftovers
        assert "left behind" in report.step_named("teardown").detail and not report.passed
        assert f"left behind: {report.leftovers[0]}" in report.render()
    finally:
        client("ec2").delete_security_group(GroupId=stray["id"])
    nothing_left(smoke.plan)  # everything else went


def test_keep_leaves_everything_and_cleanup_removes_it(smoke_world: Any) -> None:
    smoke, _ = smoke_world(fail_at="download")  # network and storage deployed: stacks, buckets, parameters
    report = execute(smoke, keep=True)

    assert report.kept and statuses(report)["teardown"] == KEPT and not report.passed  # the deploy failed
    assert report.cleanup_command == f"python -m scripts smoke --cleanup {smoke.plan.run_id} --region {REGION}"
    assert report.cleanup_command in report.render()
    cfn = client("cloudformation")
    assert cfn.describe_stacks(StackName=smoke.plan.stacks["storage"])["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"

    argv = report.cleanup_command.split()[3:]
    assert scripts_run([*argv, "--poll", "0.1"]) == 0
    nothing_left(smoke.plan)


def test_the_cost_estimate_matches_a_hand_computation() -> None:
    plan = SmokePlan("smoke-20261204-101500-a1b2", ACCOUNT, REGION)
    cost = estimate_cost(plan, Durations(download=0.3, fleet=0.15, run=0.5), load_prices(), InstanceTable())
    # t3.small $0.0208/h; gp3 $0.08, sc1 $0.015, snapshot $0.05 per GB-month of 730 h; public IPv4 $0.005/h
    assert cost == pytest.approx({
        "download instance": 0.0208 * 0.3,
        "download volumes (root gp3, data sc1, dataset gp3)": (30 * 0.08 + 125 * 0.015 + 2 * 0.08) / 730 * 0.3,
        "fleet instance": 0.0208 * 0.15,
        "fleet volumes (root gp3, restored dataset gp3)": 32 * 0.08 / 730 * 0.15,
        "public IPv4 addresses": 0.005 * 0.45,
        "dataset snapshot": 2 * 0.05 / 730 * 0.5,
    }, abs=1e-6)  # fmt: skip
    assert sum(cost.values()) == pytest.approx(0.014027, abs=1e-6)  # 1.4 cents for the planned half hour
    assert estimate_cost(plan, ASSUMED, load_prices(), InstanceTable()) == cost
    # EC2 and EBS bill at least a minute
    short = estimate_cost(plan, Durations(0.001, 0.0, 0.0), load_prices(), InstanceTable())
    assert short["download instance"] == pytest.approx(0.0208 / 60, abs=1e-6)


def test_measured_durations_follow_the_steps() -> None:
    report = Report("smoke-20261204-101500-a1b2", ACCOUNT, REGION, [Step(s.name, s.title) for s in STEPS])
    clock = {"dataset": (0, 60), "deploy": (60, 300), "pipeline": (360, 600), "fleet": (960, 300),
             "teardown": (1260, 540)}  # fmt: skip
    for name, (started, seconds) in clock.items():
        step = report.step_named(name)
        step.started, step.seconds, step.status = 1_000_000.0 + started, seconds, PASS
    assert measured(report) == Durations(download=900 / 3600, fleet=840 / 3600, run=1800 / 3600)
    report.step_named("pipeline").status = FAIL  # the teardown, not the function, ended the download instance
    assert measured(report).download == pytest.approx(1740 / 3600)


def test_the_run_id_names_everything_and_fits_aws_limits() -> None:
    from datetime import UTC, datetime

    run_id = new_run_id(datetime(2026, 12, 4, 10, 15, tzinfo=UTC), "a1b2")
    assert run_id == "smoke-20261204-101500-a1b2"
    plan = SmokePlan(run_id, ACCOUNT, "ap-southeast-2")
    assert len(plan.source_bucket) <= 63 and len(f"{plan.pipeline}-{ACCOUNT}-ap-southeast-2") <= 63
    assert set(plan.stacks.values()) == {f"{run_id}-{r}" for r in ("network", "storage", "download", "fleet")}
    with pytest.raises(ConfigError, match="not a smoke run id"):
        SmokePlan("imagenet-staging", ACCOUNT, REGION)  # --cleanup never takes a real pipeline's name
    user = {**cdk_json_context(), "alarm_email": "me@example.com", "keep_data_volume": True, "vpc_id": "vpc-0123"}
    context = plan.context({"name": "t"}, user)
    assert "alarm_email" not in context and "keep_data_volume" not in context  # nothing to confirm, nothing kept
    assert context["vpc_id"] == "vpc-0123"  # the user's network is what the smoke run proves


def test_the_command_asks_first_and_creates_nothing_unconfirmed(capsys: pytest.CaptureFixture[str]) -> None:
    client("ssm").put_parameter(Name=BOOTSTRAP_VERSION, Value="30", Type="String", Overwrite=True)
    before = {b["Name"] for b in client("s3").list_buckets()["Buckets"]}
    assert scripts_run(["smoke", "--region", REGION]) == 1  # no terminal to answer on, no --yes
    assert "not confirmed; nothing was created (pass --yes to skip the question)" in capsys.readouterr().err
    assert {b["Name"] for b in client("s3").list_buckets()["Buckets"]} == before


def test_an_account_without_cdk_bootstrap_is_told_what_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    ssm = client("ssm")
    with contextlib.suppress(ssm.exceptions.ParameterNotFound):
        ssm.delete_parameter(Name=BOOTSTRAP_VERSION)
    try:
        assert scripts_run(["smoke", "--region", REGION, "--yes"]) == 1
        err = capsys.readouterr().err
        assert f"run `npx cdk bootstrap aws://{ACCOUNT}/{REGION}` once" in err and "Traceback" not in err
    finally:
        ssm.put_parameter(Name=BOOTSTRAP_VERSION, Value="30", Type="String", Overwrite=True)


def test_the_report_is_written_as_json(tmp_path: Path) -> None:
    report = Report("smoke-20261204-101500-a1b2", ACCOUNT, REGION, [Step(s.name, s.title) for s in STEPS])
    report.steps[0].status, report.steps[0].detail = FAIL, "no bucket"
    report.write(tmp_path / "r" / "report.json")
    written = json.loads((tmp_path / "r" / "report.json").read_text())
    assert written["result"] == FAIL and written["steps"][0]["detail"] == "no bucket"


def test_the_real_deployer_synthesizes_the_smoke_app_with_the_cdk_cli(tmp_path: Path, archives: Any) -> None:
    """``CdkCli`` runs the pinned CDK CLI in the run's own folder; here ``synth`` (offline, no credentials) proves
    the context it writes makes the app the smoke run deploys, cdk-nag clean, without touching the user's files."""
    plan = SmokePlan("smoke-20261204-101500-a1b2", ACCOUNT, REGION)
    mine = {name: (ROOT / name).read_bytes() for name in ("cdk.json", "cdk.context.json")}
    cli = CdkCli(tmp_path / "cdk", REGION)
    argv, env = cli.command("synth", plan.context(json.loads(archives.table.read_text()), cdk_json_context()))
    env = {k: v for k, v in env.items() if not k.startswith(("AWS_", "CDK_")) or k in ("AWS_REGION",
           "AWS_DEFAULT_REGION", "CDK_DISABLE_CLI_TELEMETRY")}  # fmt: skip
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    done = subprocess.run(argv, cwd=cli.work, env=env, capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr and "ERROR" not in done.stderr
    out = tmp_path / "cdk" / "cdk.out"
    assert sorted(p.name for p in out.glob("*.template.json")) == sorted(f"{s}.template.json"
                                                                          for s in plan.stacks.values())  # fmt: skip
    download = (out / f"{plan.stacks['download']}.template.json").read_text()
    assert "/opt/imagenet-staging/dataset-table.json" in download and plan.source_bucket in download
    assert {name: (ROOT / name).read_bytes() for name in mine} == mine
