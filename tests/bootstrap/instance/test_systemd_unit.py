"""The unit that runs the instance side: resumes after a crash, never loops on a permanent error."""

from __future__ import annotations

import configparser
import inspect
import shutil
import subprocess

import pytest

from bootstrap.contract import names
from bootstrap.instance.volume import mount_data_volume
from tests.fixtures.paths import ROOT

UNIT = ROOT / "bootstrap" / "systemd" / names.UNIT


def load() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_restarts_on_failure_but_not_on_permanent_errors() -> None:
    unit = load()
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3"}  # ConfigError, DiskFullError
    assert "-m bootstrap run --verbose --config" in service["ExecStart"]  # a bug's traceback reaches the journal
    assert "-m bootstrap mount-data --verbose --config" in service["ExecStartPre"]  # /data is mounted before the run
    assert int(unit["Unit"]["StartLimitBurst"]) <= 5
    # mount-data (ExecStartPre) waits up to 600 s for CloudFormation to attach the volume; systemd must wait longer
    assert service["TimeoutStartSec"].endswith("min") and int(service["TimeoutStartSec"][:-3]) * 60 > 600
    assert inspect.signature(mount_data_volume).parameters["timeout"].default == 600.0


def test_exit_codes_match_the_errors() -> None:
    from bootstrap.common.errors import ConfigError, DiskFullError

    assert (ConfigError.exit_code, DiskFullError.exit_code) == (2, 3)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_the_unit() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True, check=False
    )
    # The interpreter exists only on the instance; any other complaint is a real problem with the unit.
    complaints = [line for line in result.stderr.splitlines() if "is not executable" not in line]
    assert complaints == []


def test_unit_uses_the_install_paths_of_the_contract() -> None:
    """The unit is a static file, so nothing else keeps it in step with ``contract.names``."""
    service = load()["Service"]
    assert UNIT.is_file(), f"the unit the user data installs ({names.UNIT}) is not in bootstrap/systemd"
    assert service["WorkingDirectory"] == names.HOME
    for command in (service["ExecStartPre"], service["ExecStart"]):
        assert command.startswith(f"{names.PYTHON} -m bootstrap ") and command.endswith(f"--config {names.CONFIG}")
    assert service["StandardOutput"] == f"append:{names.LOG_FILE}"
