"""Shared fixtures: synthetic archives, the HTTP server, the AWS emulator, root-only tests.

Tests marked ``root`` need loop devices and mounts.  They skip with a reason
for a non-root user, but when ``STRICT_SKIPS=1`` (set by .ci/run, which runs
as root) any skip fails the session: a green CI must mean they ran.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.synthetic_imagenet import Generated, Spec, generate
from tests.fixtures.aws_emulator import FAKE_ENV, NO_REGION, emulated_aws
from tests.fixtures.cdk_synth import Synthesized, synth
from tests.fixtures.deployment import Account, Deployment
from tests.fixtures.strict_aws import StrictAws

collect_ignore = ["torch"]
"""tests/torch needs PyTorch, which this venv does not carry: `make test-torch` runs it in its own."""

for _key in ("AWS_PROFILE", *NO_REGION):  # no region either: code that needs one must find it itself
    os.environ.pop(_key, None)
for _key, _value in FAKE_ENV.items():  # no test may ever find real credentials or configuration
    os.environ[_key] = _value

IS_ROOT = os.geteuid() == 0
_skipped: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root for loop devices and mounts (CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("STRICT_SKIPS") == "1" and _skipped:
        print(f"\nSTRICT_SKIPS: {len(_skipped)} test(s) skipped, which CI treats as failure:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    """Small synthetic ILSVRC2012 archives with every awkward case (shared, read-only)."""
    return generate(tmp_path_factory.mktemp("archives"), Spec(classes=8, train_per_class=6, val_per_class=3))


@pytest.fixture
def archive_copy(archives: Generated, tmp_path: Path) -> Path:
    """A private copy of the archive directory that a test may change."""
    dest = tmp_path / "source"
    shutil.copytree(archives.root, dest)
    return dest


@pytest.fixture(scope="session")
def strict_aws() -> Iterator[StrictAws]:
    """moto behind the strict layer, for the whole session; tests switch its rules with ``rules_changed``."""
    with emulated_aws() as strict:
        yield strict


@pytest.fixture(scope="session")
def aws_endpoint(strict_aws: StrictAws) -> str:
    return strict_aws.endpoint


@pytest.fixture(scope="session")
def default_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The app from cdk.json's context alone, synthesized with cdk-nag, as ``cdk synth`` would."""
    return synth(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The app as synthesized (https source, the default), to bind each test's names to: roles, tags, settings."""
    return Deployment.synthesized(tmp_path_factory.mktemp("deployment"))


@pytest.fixture(scope="session")
def s3_deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The same with an s3:// source, whose download role may read the source prefix."""
    return Deployment.synthesized(tmp_path_factory.mktemp("s3-deployment"), s3_source=True)


@pytest.fixture(scope="session")
def account(strict_aws: StrictAws, deployment: Deployment) -> Account:
    return Account(strict_aws, deployment)
