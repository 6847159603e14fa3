"""``python -m bootstrap read-check``: what the smoke test runs on a fleet instance to prove its dataset reads back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.cli import run as cli_run
from bootstrap.read_check import DatasetMismatchError, read_check
from scripts.synthetic_imagenet import Generated
from tests.bootstrap.test_readers import _packed


@pytest.fixture(scope="module")
def packed(archives: Generated, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _packed(tmp_path_factory.mktemp("read-check"), archives, parts=1)


def _counts(recordio: Path) -> dict[str, int]:
    return {split: sum(1 for _ in (recordio / f"{split}.lst").open()) for split in ("train", "val")}


def test_every_record_is_read_and_counted(packed: Path, archives: Generated) -> None:
    checked = read_check(packed)
    assert {s: v["records"] for s, v in checked["splits"].items()} == _counts(packed)
    assert checked["splits"]["val"]["records"] == 8 * 3  # every val image of the archives
    assert checked["classes"] == 8 and checked["splits"]["train"]["classes"] == 8
    assert checked["splits"]["train"]["bytes"] < (packed / "train.rec").stat().st_size


def test_parts_are_read_through_the_global_index(archives: Generated, tmp_path: Path, packed: Path) -> None:
    parts = _packed(tmp_path, archives, parts=3)
    assert not (parts / "train.rec").exists() and (parts / "train.global.idx").exists()
    assert {s: v["records"] for s, v in read_check(parts)["splits"].items()} == _counts(packed)


def test_a_list_that_disagrees_with_the_records_fails(packed: Path, tmp_path: Path) -> None:
    copy = tmp_path / "recordio"
    shutil.copytree(packed, copy)
    lines = (copy / "val.lst").read_text().splitlines()
    (copy / "val.lst").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetMismatchError, match=r"val: 24 records read, but the .lst lists 23"):
        read_check(copy)


def test_labels_beyond_the_classes_fail(packed: Path, tmp_path: Path) -> None:
    copy = tmp_path / "recordio"
    shutil.copytree(packed, copy)
    synsets = (copy / "synsets.txt").read_text().splitlines()
    (copy / "synsets.txt").write_text("\n".join(synsets[:4]) + "\n")
    with pytest.raises(DatasetMismatchError, match=r"are outside 0-3 \(synsets.txt has 4 classes\)"):
        read_check(copy)


def test_an_unmounted_dataset_is_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert cli_run(["read-check", "--recordio", str(tmp_path)]) == 2
    assert "synsets.txt is missing: is the dataset mounted (python -m bootstrap attach)?" in caplog.text


def test_on_a_gpu_instance_it_needs_only_the_standard_library(packed: Path) -> None:
    """The fleet installs bootstrap/requirements-attach.txt (boto3) only: read-check must not import numpy or cv2."""
    code = ("import json, sys; from bootstrap.cli import run; code = run(['read-check', '--recordio', sys.argv[1]]); "
            "print(json.dumps(sorted({'numpy', 'cv2', 'scipy', 'bootstrap.engine'} & set(sys.modules))))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(packed)], capture_output=True, text=True, check=True)
    *result, imported = done.stdout.strip().splitlines()
    assert json.loads(imported) == []
    assert json.loads("\n".join(result))["splits"]["val"]["records"] == 24
