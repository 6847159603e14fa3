"""The command line: golden help, exit codes and messages a person can act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.cli import build_parser, run
from scripts.synthetic_imagenet import Generated
from tests.fixtures.paths import GOLDEN


@pytest.mark.parametrize("argv", [[], ["pack"]])
def test_help_matches_golden(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    text = (parser._subparsers._group_actions[0].choices["pack"] if argv else parser).format_help()  # type: ignore[union-attr]
    golden = GOLDEN / f"bootstrap-help{'-' + argv[0] if argv else ''}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"help changed; rerun with UPDATE_GOLDEN=1 if intended ({golden})"


def test_every_stage_answers_help() -> None:
    for stage in ("run", "fetch", "organise", "pack", "verify", "inspect", "status"):
        with pytest.raises(SystemExit) as exit_info:
            run([stage, "--help"])
        assert exit_info.value.code == 0


def test_missing_config_file_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run(["pack", "--config", str(tmp_path / "nope.json")]) == 2
    assert "nope.json does not exist" in caplog.text


def test_pack_before_fetch_says_what_to_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run(["pack", "--data-dir", str(tmp_path)]) == 1
    assert "run the fetch stage first" in caplog.text


def test_fetch_without_source_says_what_to_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run(["fetch", "--data-dir", str(tmp_path)]) == 2
    assert "no source configured" in caplog.text


def test_run_twice_then_status(archives: Generated, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bootstrap", "run", "--data-dir", str(tmp_path), "--source", str(archives.root),
            "--dataset-table", str(archives.table), "--max-failure-rate", "0.2", "--resize", "64"]  # fmt: skip
    first = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert '"packed"' in first.stdout
    second = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert "already done" in second.stderr and second.stdout == first.stdout
    status = subprocess.run([sys.executable, "-m", "bootstrap", "status", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert '"state": "done"' in status.stdout
