"""The engine's command line: golden help per stage, and a one-line error a person can act on for every mistake."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bootstrap
from bootstrap.cli import STAGES, build_parser, run
from bootstrap.engine import Engine
from scripts.synthetic_imagenet import Generated
from tests.fixtures.cli import stage_flags, usage_error
from tests.fixtures.paths import GOLDEN


def _stage_parser(stage: str) -> object:
    return build_parser()._subparsers._group_actions[0].choices[stage]  # type: ignore[union-attr]


@pytest.mark.parametrize("stage", ["", *STAGES])
def test_help_matches_golden(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = (_stage_parser(stage) if stage else build_parser()).format_help()  # type: ignore[attr-defined]
    golden = GOLDEN / f"bootstrap-help{'-' + stage if stage else ''}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"help changed; rerun with UPDATE_GOLDEN=1 if intended ({golden})"


def test_each_stage_lists_only_the_flags_it_uses() -> None:
    verify = stage_flags("verify")
    assert {"--data-dir", "--dataset-table", "--sample-every", "--read-only", "--json", "--verbose"} <= verify
    assert not verify & {"--connections", "--bucket", "--data-volume-id", "--quality", "--source", "--verify"}
    assert (
        "--bucket" in stage_flags("backup")
        and "--verify" in stage_flags("backup")
        and "--quality" not in stage_flags("backup")
    )
    assert "--data-volume-id" in stage_flags("mount-data") and "--resize" not in stage_flags("mount-data")
    assert stage_flags("status") == {"--help", "--config", "--data-dir", "--json", "--verbose"}
    assert stage_flags("run") >= stage_flags("pack") - {"--help"}  # run takes every stage's settings
    assert all(stage in STAGES["run"] for stage in ("backup", "snapshot", "publish"))


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["pack", "--qualty", "95"], "python -m bootstrap pack: error: unrecognized argument --qualty; did you mean "
                                     "--quality?"),
        (["pack", "--bucket", "b"], "--bucket is not a flag of pack (it is a flag of: run, backup)"),
        (["verify", "--connections", "4"], "--connections is not a flag of verify (it is a flag of: run, fetch)"),
        (["pack", "--quality", "120"], "argument --quality: 120 is out of range: it must be 0-100"),
        (["pack", "--workers", "x"], "argument --workers: 'x' is not a whole number (at least 0)"),
        (["pack", "--max-failure-rate", "2"], "argument --max-failure-rate: 2 is out of range: it must be 0-1"),
        (["pack", "--encoding", "jpg"], "argument --encoding: invalid choice: 'jpg'; did you mean '.jpg'?"),
        (["pack", "--formats", "recordio,wds"], "argument --formats: 'recordio,wds': must be a comma-separated list "
                                                "of recordio, webdataset, tree"),
        (["pak"], "argument STAGE: invalid choice: 'pak'; did you mean 'pack'?"),
        (["pack", "--data-dir", ""], "argument --data-dir: an empty path; give a directory or file"),
        (["pack", "--qual", "95"], "unrecognized argument --qual; did you mean --quality?"),  # no abbreviations
    ],
)  # fmt: skip
def test_a_bad_command_line_is_one_line_with_a_suggestion(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in usage_error(run, argv, capsys)


def test_a_config_file_typo_names_the_closest_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data_dir": str(tmp_path), "qualty": 95}))
    assert run(["pack", "--config", str(config)]) == 2
    assert f"config file {config}: unknown key 'qualty'; did you mean 'quality'?" in caplog.text
    assert "valid keys are" not in caplog.text  # one suggestion, not a list of 40 keys


@pytest.mark.parametrize("stage", ["organise", "pack", "verify", "inspect", "backup", "snapshot", "publish", "status"])
def test_stages_that_read_a_data_directory_never_create_one(
    stage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "does" / "not" / "exist"
    assert run([stage, "--data-dir", str(missing)]) == 2
    assert f"{missing} does not exist: point --data-dir" in caplog.text
    assert not (tmp_path / "does").exists()


def test_version_and_common_flags_anywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["--version"])
    assert capsys.readouterr().out.strip() == f"python -m bootstrap {bootstrap.__version__}"
    for argv in (["--json", "-v", "status"], ["status", "--json", "-v"], ["-v", "status", "--json"]):
        args = build_parser().parse_args([*argv, "--data-dir", str(tmp_path)])
        assert args.json and args.verbose, argv


def test_a_bug_is_one_line_and_its_traceback_needs_verbose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Engine) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Engine, "organise", broken)
    assert run(["organise", "--data-dir", str(tmp_path)]) == 1
    assert "unexpected error: RuntimeError: boom (a bug: run the same command with --verbose" in caplog.text
    assert "Traceback" not in caplog.text
    caplog.clear()
    assert run(["organise", "--data-dir", str(tmp_path), "--verbose"]) == 1
    assert "Traceback" in caplog.text and "RuntimeError: boom" in caplog.text


@pytest.mark.parametrize(
    ("raised", "code", "says"),
    [
        (KeyboardInterrupt(), 130, "interrupted; run the same command again to resume"),
        (ModuleNotFoundError("No module named 'cv2'", name="cv2"), 2,
         "cv2 is not installed, and this command needs it: pip install 'imagenet-staging[download]'"),
        (PermissionError(13, "Permission denied", "/data/recordio/train.rec"), 3, "/data/recordio/train.rec"),
    ],
)  # fmt: skip
def test_interrupts_and_the_environment_end_in_one_line(
    raised: BaseException, code: int, says: str, *, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    def interrupted(self: Engine) -> None:
        raise raised

    monkeypatch.setattr(Engine, "organise", interrupted)
    assert run(["organise", "--data-dir", str(tmp_path)]) == code
    assert says in caplog.text and "Traceback" not in caplog.text


def test_missing_config_file_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run(["pack", "--config", str(tmp_path / "nope.json")]) == 2
    assert "nope.json does not exist" in caplog.text


def test_pack_before_fetch_says_what_to_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run(["pack", "--data-dir", str(tmp_path)]) == 1
    assert "run the fetch stage first" in caplog.text


def test_fetch_without_source_says_what_to_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run(["fetch", "--data-dir", str(tmp_path)]) == 2
    assert "no source configured" in caplog.text


def test_run_twice_then_single_stages_take_the_settings_it_was_made_with(
    archives: Generated, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = [sys.executable, "-m", "bootstrap", "run", "--data-dir", str(tmp_path), "--source", str(archives.root),
            "--dataset-table", str(archives.table), "--max-failure-rate", "0.2", "--resize", "64"]  # fmt: skip
    first = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert '"packed"' in first.stdout
    assert "backup will be skipped: no bucket is set (--bucket" in first.stderr
    assert "snapshot and publish will be skipped: no snapshot parameter is set" in first.stderr
    assert "status: {" not in first.stderr  # the status file is not dumped into the log
    second = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert "already done" in second.stderr and second.stdout == first.stdout
    status = subprocess.run([sys.executable, "-m", "bootstrap", "status", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert '"state": "done"' in status.stdout
    # a stage run by hand takes what is not given from how the directory was made (resize 64), not the defaults
    common = ["--data-dir", str(tmp_path), "--dataset-table", str(archives.table)]
    caplog.set_level(logging.INFO)
    assert run(["pack", *common]) == 0 and "train: already packed" in caplog.text
    assert run(["inspect", *common]) == 0
    assert run(["pack", *common, "--resize", "128"]) == 2  # what is given is still compared
    assert "resize 64 -> 128" in caplog.text and "--rebuild-from pack" in caplog.text
