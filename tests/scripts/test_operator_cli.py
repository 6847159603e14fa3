"""The operator CLI on a person's mistakes: one line that says what to do, a documented exit code, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

import bootstrap
from scripts import cli
from scripts.cli import run as scripts_run
from tests.fixtures.cli import usage_error
from tests.fixtures.paths import ROOT


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_plan_knows_the_families_people_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert scripts_run(["plan", "--instance-type", "c6i.4xlarge", "--gpu-instance-type", "p5.48xlarge"]) == 0
    out = capsys.readouterr().out
    assert "on 16 vCPU, or the disk" in out and "c6i.4xlarge instance" in out
    assert "p5.48xlarge compute" in out and "8 x H100" in out
    for line in ("total, one-off", "total, per month", "total, fleet", "per GPU-instance day"):
        assert line in out


def test_an_unknown_instance_type_names_the_table_and_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    assert scripts_run(["plan", "--instance-type", "c6i.4xlargee"]) == 2
    err = _one_line(capsys)
    assert "unknown instance type 'c6i.4xlargee' (did you mean 'c6i.4xlarge'?)" in err
    assert "scripts/instance_types.json" in err and "t3a" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["plan", "--bandwidth-mb-s", "0"], "argument --bandwidth-mb-s: 0 is out of range: it must be more than 0"),
        (["plan", "--gpu-instances", "-1"], "argument --gpu-instances: -1 is out of range: it must be at least 0"),
        (["plan", "--restored-iops", "100"], "it must be 3000-80000"),
        (["plan", "--gpu-hours", "many"], "'many' is not a number (at least 0)"),
        (["plan", "--bandwith-mb-s", "5"], "unrecognized argument --bandwith-mb-s; did you mean --bandwidth-mb-s?"),
        (["plan", "--count", "2"], "--count is not a flag of plan (it is a flag of: launch-fleet)"),
        (["stauts"], "invalid choice: 'stauts'; did you mean 'status'?"),
    ],
)
def test_bad_values_and_flags_name_the_range_or_the_closest(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in usage_error(scripts_run, argv, capsys)


def test_json_and_verbose_are_accepted_before_and_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--json", "plan"], ["plan", "--json"], ["-v", "plan", "--json"]):
        assert scripts_run(argv) == 0
        data = json.loads(capsys.readouterr().out)
        assert {r["item"] for r in data["rows"]} >= {"download", "pack", "g5.xlarge compute"}
        assert set(data["totals"]) >= {"one-off", "monthly", "fleet", "per GPU-instance day"}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        scripts_run(["--version"])
    assert capsys.readouterr().out.strip() == f"python -m scripts {bootstrap.__version__}"


def test_plan_reads_its_defaults_from_cdk_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    context = {"download_instance_type": "t3.xlarge", "cpu_credits": "unlimited", "data_volume_gib": 1500,
               "gpu_instance_types": ["g6e.2xlarge"], "restored_throughput": 300}  # fmt: skip
    (tmp_path / "cdk.json").write_text(json.dumps({"context": context}))
    assert scripts_run(["plan", "--json"]) == 0
    inputs = json.loads(capsys.readouterr().out)["inputs"]
    assert (inputs["instance_type"], inputs["cpu_credits"], inputs["data_volume_gib"]) == ("t3.xlarge", "unlimited",
                                                                                          1500)  # fmt: skip
    assert (inputs["gpu_instance_type"], inputs["restored_throughput"]) == ("g6e.2xlarge", 300)
    assert scripts_run(["plan", "--json", "--instance-type", "t2.xlarge"]) == 0  # a flag still wins
    assert json.loads(capsys.readouterr().out)["inputs"]["instance_type"] == "t2.xlarge"


def test_a_closed_pipe_ends_quietly() -> None:
    """``python -m scripts --json plan | head -1``: the reader goes away before the output is written."""
    proc = subprocess.Popen([sys.executable, "-m", "scripts", "--json", "plan"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and err == ""


def test_no_credentials_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # not an instance: no instance profile to find
    assert scripts_run(["status"]) == 1
    assert "no AWS credentials: on an instance check its instance profile" in _one_line(capsys)


@pytest.mark.parametrize(
    ("raised", "code", "says"),
    [
        (KeyboardInterrupt(), 130, "error: interrupted; run the same command again to resume"),
        (ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "You are not authorized to perform "
                                "this operation."}}, "DescribeInstances"), 1,
         "error: DescribeInstances: UnauthorizedOperation: You are not authorized to perform this operation."),
        (RuntimeError("boom"), 1, "error: unexpected error: RuntimeError: boom (a bug: run the same command with "
                                  "--verbose"),
    ],
)  # fmt: skip
def test_interrupts_denials_and_bugs_end_in_one_line(
    raised: BaseException, code: int, says: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def fails(args: object) -> None:
        raise raised

    monkeypatch.setattr(cli.COMMANDS["status"], "command", fails)
    assert scripts_run(["status"]) == code
    assert _one_line(capsys).startswith(says)
