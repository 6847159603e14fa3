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

from scripts.synthetic_imagenet import DEVKIT, TRAIN, VAL, Generated
from tests.fixtures.aws_emulator import client
from tests.fixtures.deployment import Deployment, Names
from tests.fixtures.http_server import ArchiveServer, ServerOptions
from tests.fixtures.imds import Identity, ImdsStub, instance_env
from tests.fixtures.strict_aws import StrictAws


def _bootstrap(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootstrap", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def _fetch_config(tmp_path: Path, archives: Generated, config: dict[str, object]) -> Path:
    """The download instance's config, as its user data writes it, pointed at a local data directory."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config, "data_dir": str(tmp_path / "data"), "dataset_table": str(archives.table)}))
    return path


def test_fetch_from_s3_gets_its_region_and_credentials_from_the_instance(
    archives: Generated, strict_aws: StrictAws, s3_deployment: Deployment, tmp_path: Path
) -> None:
    """An s3:// source, read with the download role (which may read the source prefix and nothing else)."""
    names = Names("instance-env", source="s3://instance-env-src/ilsvrc/")
    s3 = client("s3")
    s3.create_bucket(Bucket="instance-env-src")
    for path in archives.root.iterdir():
        s3.upload_file(str(path), "instance-env-src", f"ilsvrc/{path.name}")
    config = {**s3_deployment.download_config(names), "region": None}  # the region from the instance identity
    role, before = s3_deployment.role("download", names), len(strict_aws.calls)
    with ImdsStub(Identity("i-0env", "us-east-1c", role.access_key)) as imds, strict_aws.enforcing(role):
        done = _bootstrap(["fetch", "--config", str(_fetch_config(tmp_path, archives, config))],
                          instance_env(imds.endpoint, tmp_path), tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "data" / "archives").glob("*.tar*")} == {TRAIN, VAL, DEVKIT}
    made = [c for c in strict_aws.calls[before:] if c.access_key == role.access_key]
    assert {c.service for c in made} == {"s3"}
    assert {c.region for c in made} == {"us-east-1"}  # from the instance identity: its AZ is us-east-1c


def test_fetch_over_https_reads_its_login_from_the_secret_the_stack_names(
    archives: Generated, strict_aws: StrictAws, deployment: Deployment, tmp_path: Path
) -> None:
    """The default source: the login comes from the stack's secret, read with the download role."""
    names = Names("instance-https")
    config = deployment.download_config(names)
    login = {"username": "u", "access_key": "k"}
    client("secretsmanager").create_secret(Name=config["source_secret"], SecretString=json.dumps(login))
    role = deployment.role("download", names)
    options, before = ServerOptions(username="u", password="k"), len(strict_aws.calls)
    with (
        ArchiveServer(archives.root, options) as server,
        ImdsStub(Identity("i-0https", "us-east-1a", role.access_key)) as imds,
        strict_aws.enforcing(role),
    ):
        path = _fetch_config(tmp_path, archives, {**config, "source": server.url})
        done = _bootstrap(["fetch", "--config", str(path)], instance_env(imds.endpoint, tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr
    made = [c for c in strict_aws.calls[before:] if c.access_key == role.access_key]
    assert {(c.service, c.operation) for c in made} == {("secretsmanager", "GetSecretValue")}


def test_a_call_the_role_does_not_allow_is_refused_as_aws_would(
    archives: Generated, strict_aws: StrictAws, s3_deployment: Deployment, tmp_path: Path
) -> None:
    """The check can fail: a source prefix the role was not deployed for is AccessDenied, and the test says so."""
    names = Names("instance-denied", source="s3://instance-env-src/ilsvrc/")
    config = {**s3_deployment.download_config(names), "source": "s3://instance-env-src/elsewhere/"}
    role = s3_deployment.role("download", names)
    with (
        ImdsStub(Identity("i-0denied", "us-east-1c", role.access_key)) as imds,
        pytest.raises(AssertionError, match=r"(?s)IAM would refuse:.*not authorized to perform: s3:GetObject"),
        strict_aws.enforcing(role),
    ):
        done = _bootstrap(["fetch", "--config", str(_fetch_config(tmp_path, archives, config))],
                          instance_env(imds.endpoint, tmp_path), tmp_path)  # fmt: skip
        assert done.returncode != 0 and "access denied" in done.stderr and "Traceback" not in done.stderr


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


def test_the_tests_themselves_run_with_no_region() -> None:
    """In-process code under test cannot lean on a region from the environment either."""
    from botocore.exceptions import NoRegionError

    from bootstrap.common import aws

    with pytest.raises(NoRegionError):
        aws.client("ec2")


@pytest.mark.parametrize("chunked", [False, True])
def test_half_a_request_from_a_killed_process_is_never_judged(
    chunked: bool, strict_aws: StrictAws, deployment: Deployment
) -> None:
    """A process killed mid-request (the kill -9 tests) leaves half a request behind: AWS never sees it, so the
    strict layer must neither answer it nor count it as a call the role made (it once failed a test as a denial)."""
    import socket
    import urllib.parse

    role = deployment.role("download", Names("half-request"))
    endpoint = urllib.parse.urlsplit(strict_aws.endpoint)
    scope = f"Credential={role.access_key}/20261204/us-east-1/ec2/aws4_request"
    framing = "Transfer-Encoding: chunked\r\n\r\n40\r\nAction=Describe" if chunked else \
        "Content-Length: 200\r\n\r\nAction=DescribeVolumes&Vers"  # fmt: skip
    request = (f"POST / HTTP/1.1\r\nHost: {endpoint.netloc}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               f"Authorization: AWS4-HMAC-SHA256 {scope}, SignedHeaders=host, Signature=x\r\n{framing}")  # fmt: skip
    calls = len(strict_aws.calls)
    with strict_aws.enforcing(role) as denials:
        with socket.create_connection((endpoint.hostname, endpoint.port)) as sock:
            sock.sendall(request.encode())
            sock.shutdown(socket.SHUT_WR)  # the process is gone
            assert sock.recv(1024) == b""  # no answer: the connection is closed
        assert denials == []
    assert len(strict_aws.calls) == calls
