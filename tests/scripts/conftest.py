"""The operator's machine: AWS credentials and a region configured (``aws configure``), as the README asks."""

from __future__ import annotations

import pytest

from tests.fixtures.aws_emulator import REGION


@pytest.fixture(autouse=True)
def operator_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)  # the SDK reads this one, not AWS_REGION
