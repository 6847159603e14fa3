"""The instance's commands run as the systemd unit runs them: no region, no keys, only the instance's role.

Each command is a subprocess whose environment holds no ``AWS_REGION``,
``AWS_DEFAULT_REGION`` or access keys (``instance_env``).  Credentials come
from the IMDSv2 stub's role endpoint, and the strict layer records which key
signed each call and for which region: a client made without a region fails
here, as it would on EC2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.common.aws import client
from scripts.synthetic_imagenet import DEVKIT, TRAIN, VAL, Generated
from tests.fixtures.imds import ROLE_KEY, Identity, ImdsStub, instance_env
from tests.fixtures.strict_aws import StrictAws


def _bootstrap(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootstrap", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def test_fetch_from_s3_with_a_secret_gets_its_region_from_the_instance(
    archives: Generated, strict_aws: StrictAws, tmp_path: Path
) -> None:
    s3 = client("s3")
    s3.create_bucket(Bucket="instance-env-src")
    for path in archives.root.iterdir():
        s3.upload_file(str(path), "instance-env-src", f"ilsvrc/{path.name}")
    client("secretsmanager").create_secret(Name="instance-env/login", SecretString='{"token": "t"}')
    config = tmp_path / "config.json"
    settings = {"data_dir": str(tmp_path / "data"), "source": "s3://instance-env-src/ilsvrc",
                "source_secret": "instance-env/login", "dataset_table": str(archives.table)}  # fmt: skip
    config.write_text(json.dumps(settings))
    with ImdsStub(Identity("i-0env", "us-east-1c")) as imds:
        done = _bootstrap(["fetch", "--config", str(config)], instance_env(imds.endpoint, tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "data" / "archives").glob("*.tar*")} == {TRAIN, VAL, DEVKIT}
    made = strict_aws.calls_by(ROLE_KEY)
    assert {c.service for c in made} == {"s3", "secretsmanager"}
    assert {c.region for c in made} == {"us-east-1"}  # from the instance identity: its AZ is us-east-1c


def test_no_credentials_is_one_line_that_says_what_to_do(tmp_path: Path) -> None:
    """An SDK error (no region, no credentials, no route) is reported like an AWS error: one line, exit 1."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "data"), "bucket": "b", "region": "us-east-1"}))
    (tmp_path / "data").mkdir()
    env = instance_env("http://127.0.0.1:9", tmp_path)  # nothing answers: no instance role to be had
    env["AWS_METADATA_SERVICE_NUM_ATTEMPTS"] = "1"
    done = _bootstrap(["backup", "--config", str(config)], env, tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "no AWS credentials" in done.stderr


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID"])
def test_the_instance_environment_holds_no_region_and_no_keys(variable: str, tmp_path: Path) -> None:
    assert variable not in instance_env("http://127.0.0.1:9", tmp_path)
