"""State you can trust: one writer, settings bound to outputs, markers checked against files, a message for each
broken state.  Each case is the command line a person runs (``python -m bootstrap``), in a subprocess."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bootstrap.pack.recordio import iter_records
from scripts.synthetic_imagenet import Generated, Spec, generate
from tests.fixtures.cli import for_stage
from tests.fixtures.loopdev import loop_ext4, run
from tests.fixtures.paths import ROOT

BASE = ["--max-failure-rate", "0.2", "--resize", "64", "--workers", "1", "--checkpoint-seconds", "0"]


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    """Big enough that a pack takes a few seconds (a kill can land in it)."""
    return generate(tmp_path_factory.mktemp("medium"), Spec(classes=6, train_per_class=100, val_per_class=3, seed=3))


def bootstrap(
    stage: str, data: Path, archives: Generated, *extra: str, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(stage, data, archives, extra), capture_output=True, text=True, timeout=300, check=False,
                          **kwargs)  # fmt: skip


def _argv(stage: str, data: Path, archives: Generated, extra: tuple[str, ...]) -> list[str]:
    settings = for_stage(stage, ["--source", str(archives.root), "--dataset-table", str(archives.table), *BASE])
    return [sys.executable, "-m", "bootstrap", stage, "--data-dir", str(data), *settings, *extra]


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The error a person sees: exactly one ERROR line, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    return errors[0]


def records(rec: Path) -> int:
    with open(rec, "rb") as f:
        return sum(1 for _ in iter_records(f))


def short_sides(rec: Path) -> set[int]:
    import cv2
    import numpy as np

    from bootstrap.pack.recordio import unpack_image

    sides = set()
    with open(rec, "rb") as f:
        for _offset, payload in iter_records(f):
            img = cv2.imdecode(np.frombuffer(unpack_image(payload)[1], np.uint8), cv2.IMREAD_COLOR)
            sides.add(min(img.shape[:2]))
    return sides


@pytest.fixture
def finished(archives: Generated, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert bootstrap("run", data, archives).returncode == 0
    return data


# -- 1. one writer per data directory -------------------------------------------------------------


def _start(stage: str, data: Path, archives: Generated, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _argv(stage, data, archives, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("trial", range(5))
def test_a_second_writer_is_refused_at_once_naming_the_holder(trial: int, medium: Generated, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _start("run", data, medium)
    time.sleep(random.Random(trial).uniform(0.05, 1.5))  # anywhere in fetch, organise or pack
    second = bootstrap("run", data, medium)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    if second.returncode != 0:  # it overlapped (it may also have started after the first finished)
        assert second.returncode == 4 and f"pid {first.pid}" in one_line(second)
    train = data / "recordio" / "train.rec"
    assert records(train) == json.loads((data / ".state" / "pack-train.done").read_text())["packed"]
    assert bootstrap("verify", data, medium).returncode == 0


def test_status_and_a_read_only_verify_need_no_lock(finished: Path, archives: Generated) -> None:
    with open(finished / ".lock", "a+") as held:
        import fcntl

        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as a running unit holds it
        assert bootstrap("status", finished, archives).returncode == 0
        assert bootstrap("verify", finished, archives, "--read-only").returncode == 0
        assert bootstrap("verify", finished, archives).returncode == 4  # a verify that writes its marker waits


# -- 2, 3. settings bound to what they produced ----------------------------------------------------


def test_a_resume_with_other_settings_is_refused_then_rebuilt(medium: Generated, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert bootstrap("fetch", data, medium).returncode == 0
    proc = _start("pack", data, medium)
    checkpoint = data / ".state" / "pack-train" / "checkpoint.json"
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(checkpoint.read_text())["cursor"]["next_id"] > 20:
                break
        except (OSError, ValueError, TypeError, KeyError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the kill should land in pass one of train"
    refused = bootstrap("run", data, medium, "--resize", "32", "--seed", "5")
    assert refused.returncode == 2
    line = one_line(refused)
    assert "resize 64 -> 32" in line and "seed 100 -> 5" in line and "--rebuild-from pack" in line
    rebuilt = bootstrap("run", data, medium, "--resize", "32", "--seed", "5", "--rebuild-from", "pack")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert max(short_sides(data / "recordio" / "train.rec")) <= 32  # no record kept from the first settings


def test_new_settings_on_a_finished_run_are_refused_and_force_rebuilds_only_what_they_affect(
    finished: Path, archives: Generated
) -> None:
    (finished / ".state" / "run.done").unlink()  # as in the report: even without run.done
    archive_mtime = (finished / "archives" / "ILSVRC2012_img_train.tar").stat().st_mtime_ns
    refused = bootstrap("run", finished, archives, "--resize", "32")
    assert refused.returncode == 2 and "resize 64 -> 32" in one_line(refused)
    assert max(short_sides(finished / "recordio" / "val.rec")) > 32  # nothing was touched
    forced = bootstrap("run", finished, archives, "--resize", "32", "--force")
    assert forced.returncode == 0, forced.stderr
    assert max(short_sides(finished / "recordio" / "val.rec")) <= 32
    assert (finished / "archives" / "ILSVRC2012_img_train.tar").stat().st_mtime_ns == archive_mtime  # not fetched


def test_a_rebuilt_pack_leaves_no_format_it_no_longer_makes(archives: Generated, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert bootstrap("run", data, archives, "--formats", "webdataset,tree").returncode == 0
    assert (data / "webdataset" / "train-000000.tar").exists() and (data / "imagenet" / "meta.bin").exists()
    refused = bootstrap("run", data, archives)
    assert refused.returncode == 2 and "formats 'webdataset,tree' -> 'recordio'" in one_line(refused)
    forced = bootstrap("run", data, archives, "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (data / "webdataset").exists() and not (data / "imagenet").exists()  # never backed up nor published
    assert (data / "recordio" / "train.rec").exists()


def test_adding_a_bucket_to_a_finished_run_backs_it_up(finished: Path, archives: Generated, aws_endpoint: str) -> None:
    from tests.fixtures.aws_emulator import client

    client("s3").create_bucket(Bucket="added-later")
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    done = bootstrap("run", finished, archives, "--bucket", "added-later", env=env)
    assert done.returncode == 0, done.stderr
    keys = {o["Key"] for o in client("s3").list_objects_v2(Bucket="added-later")["Contents"]}
    assert "manifest.json" in keys and "recordio/train.rec" in keys


# -- 4. markers checked against their outputs ----------------------------------------------------


@pytest.mark.parametrize("damage", ["delete train.idx", "truncate train.rec by 5 bytes"])
def test_a_changed_output_is_named_and_its_stage_redone(damage: str, finished: Path, archives: Generated) -> None:
    recordio = finished / "recordio"
    want = {p.name: p.read_bytes() for p in recordio.glob("train.*")}
    if damage.startswith("delete"):
        (recordio / "train.idx").unlink()
    else:
        with open(recordio / "train.rec", "r+b") as f:
            f.truncate((recordio / "train.rec").stat().st_size - 5)
    again = bootstrap("run", finished, archives)
    assert again.returncode == 0, again.stderr
    assert ("recordio/train.idx: missing" if damage.startswith("delete") else "recordio/train.rec:") in again.stderr
    assert {p.name: p.read_bytes() for p in recordio.glob("train.*")} == want  # packed again, identically


# -- 5. unreadable state ------------------------------------------------------------------------


GARBAGE = {  # the file, what it holds, the stage that reads it
    "empty pack marker": (".state/pack-train.done", b"", "pack"),
    "garbage pack marker": (".state/pack-train.done", b"\x00\xffnot json", "pack"),
    "a list for a marker": (".state/verify.done", b"[1, 2]", "verify"),
    "garbage classes": (".state/classes.json", b'{"classes": 5}', "pack"),
    "garbage fetch marker": ("archives/.state/fetch-ILSVRC2012_img_val.tar.done", b"{", "fetch"),
}


@pytest.mark.parametrize("case", GARBAGE)
def test_unreadable_state_is_redone_not_a_traceback(case: str, finished: Path, archives: Generated) -> None:
    relpath, content, reader = GARBAGE[case]
    (finished / relpath).write_bytes(content)
    for stage in (reader, "run"):
        again = bootstrap(stage, finished, archives)
        assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert bootstrap("verify", finished, archives).returncode == 0


def test_a_garbage_checkpoint_restarts_its_split(medium: Generated, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert bootstrap("fetch", data, medium).returncode == 0
    (data / ".state" / "pack-train").mkdir(parents=True)
    (data / ".state" / "pack-train" / "checkpoint.json").write_text('{"phase": 1}')
    done = bootstrap("run", data, medium)
    assert done.returncode == 0 and "not a checkpoint" in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["train.idx", "train.lst", "train.crc"])
def test_binary_garbage_in_a_text_file_is_named_by_verify(name: str, finished: Path, archives: Generated) -> None:
    (finished / "recordio" / name).write_bytes(b"\xff\xfe\x00garbage\n" * 10)
    done = bootstrap("verify", finished, archives, "--read-only")
    assert done.returncode == 1
    assert "--rebuild-from pack" in one_line(done)


def test_a_garbage_status_is_reported_then_replaced(finished: Path, archives: Generated) -> None:
    (finished / "status.json").write_bytes(b"\x00garbage")
    shown = bootstrap("status", finished, archives)
    assert shown.returncode == 0 and "no readable status" in shown.stdout and "Traceback" not in shown.stderr
    assert bootstrap("run", finished, archives).returncode == 0
    assert json.loads((finished / "status.json").read_text())["state"] == "done"


# -- 6, 7. full, read-only and foreign filesystems ----------------------------------------------


@contextmanager
def small_volume(tmp_path: Path, size_mib: int = 12) -> Iterator[Path]:
    with loop_ext4(tmp_path / "small.img", tmp_path / "mnt", size_mib) as (mount, _device):
        yield mount


def fill(mount: Path, leave: int) -> Path:
    """Fill the filesystem until ``leave`` bytes are free (0: until the kernel says no space is left)."""
    filler, chunk = mount / "filler", b"\0" * (16 << 10)
    with open(filler, "wb", buffering=0) as f:
        try:
            while shutil.disk_usage(mount).free > leave:
                f.write(chunk)
        except OSError:
            pass
        os.fsync(f.fileno())
    return filler


@pytest.mark.root
@pytest.mark.parametrize("leave", [200 << 10, 0], ids=["filled while packing", "full from the start"])
def test_a_full_disk_is_exit_3_every_time_and_leaves_nothing_half_written(leave: int, archives: Generated,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    with small_volume(tmp_path) as mount:
        data = mount / "data"
        assert bootstrap("fetch", data, archives).returncode == 0
        filler = fill(mount, leave)
        for _attempt in range(2):  # the first run, and a re-run while the disk is still full
            done = bootstrap("run", data, archives)
            assert done.returncode == 3 and "no space left" in one_line(done)
            assert not list(data.rglob(".*.tmp"))
        status = json.loads((data / "status.json").read_text())
        assert status["state"] == "failed" and "no space left" in status["last_error"]
        filler.unlink()
        assert bootstrap("run", data, archives).returncode == 0


@pytest.mark.root
def test_a_full_disk_at_inspect_fails_the_stage(finished: Path, archives: Generated, tmp_path: Path) -> None:
    with small_volume(tmp_path, 64) as mount:
        data = mount / "data"
        shutil.copytree(finished, data)
        for stale in (data / ".state" / "inspect.done", data / "recordio" / "contact_sheet_val.png",
                      data / "recordio" / "contact_sheet_train.png"):  # fmt: skip
            stale.unlink()
        filler = fill(mount, 8 << 10)
        done = bootstrap("inspect", data, archives)
        assert done.returncode == 3 and "no space left" in one_line(done)
        assert not (data / ".state" / "inspect.done").exists()
        filler.unlink()


@pytest.mark.root
def test_a_read_only_data_directory_is_verified_without_a_write(finished: Path, archives: Generated,
                                                                tmp_path: Path) -> None:  # fmt: skip
    with small_volume(tmp_path, 64) as mount:
        shutil.copytree(finished, mount / "data")
        run("mount", "-o", "remount,ro", str(mount))
        try:
            verified = bootstrap("verify", mount / "data", archives)  # as on a GPU instance: /data is read-only
            assert verified.returncode == 0 and "Traceback" not in verified.stderr, verified.stderr
            refused = bootstrap("run", mount / "data", archives)
            assert refused.returncode == 3 and "read-only" in one_line(refused)
        finally:
            run("mount", "-o", "remount,rw", str(mount))


@pytest.mark.root
def test_a_data_directory_this_process_may_not_write_is_a_permission_message(
    finished: Path, archives: Generated, tmp_path: Path
) -> None:
    """EPERM/EACCES: made immutable (chattr +i), which stops root too (the tests run as root; another user could not
    run this interpreter here)."""
    with small_volume(tmp_path, 64) as mount:
        data = mount / "data"
        shutil.copytree(finished, data)
        (data / ".state" / "run.done").unlink()
        (data / ".state" / "inspect.done").unlink()  # so the run has something to write
        run("chattr", "+i", str(data / ".state"), str(data / "recordio"), str(data))
        try:
            refused = bootstrap("run", data, archives)
            assert refused.returncode == 3 and "permission denied" in one_line(refused)
            assert bootstrap("verify", data, archives).returncode == 0  # readable: verified without writing
        finally:
            run("chattr", "-i", str(data / ".state"), str(data / "recordio"), str(data))


# -- 8. config types --------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{"data_dir": 5}, {"data_dir": ""}, {"dataset_table": {}}, {"workers": True},
                                    {"resize": "256"}, {"max_failure_rate": True}])  # fmt: skip
def test_a_config_of_the_wrong_type_is_exit_2_naming_the_key(config: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bootstrap", "run", "--config", str(path)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, check=False)  # fmt: skip
    assert done.returncode == 2 and next(iter(config)) in one_line(done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # nothing written, not even data_dir


@pytest.mark.parametrize("counts", [1, {"train": True}, {"val": -3}, "many"])
def test_a_dataset_table_with_bad_counts_is_exit_2(counts: Any, archives: Generated, tmp_path: Path) -> None:
    table = json.loads(archives.table.read_text())
    (tmp_path / "table.json").write_text(json.dumps({**table, "counts": counts}))
    done = subprocess.run([sys.executable, "-m", "bootstrap", "fetch", "--data-dir", str(tmp_path / "d"),
                           "--source", str(archives.root), "--dataset-table", str(tmp_path / "table.json")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 2 and "counts" in one_line(done)


# -- 9. the status shows the stage that is running --------------------------------------------------


def test_the_status_shows_the_running_stage_and_only_that(medium: Generated, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert bootstrap("fetch", data, medium).returncode == 0
    proc = _start("pack", data, medium)  # organise runs first, inside pack
    seen: list[tuple[str, str]] = []
    while proc.poll() is None:
        try:
            status = json.loads((data / "status.json").read_text())
            seen.append((status.get("stage", ""), status.get("state", "")))
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    assert proc.returncode == 0
    packing = [i for i, (stage, _) in enumerate(seen) if stage.startswith("pack")]
    assert packing, "the run should be seen packing"
    assert all(state == "running" for stage, state in seen[packing[0] : packing[-1]] if stage.startswith("pack "))
    assert not [s for s in seen[packing[0] :] if s[0] == "organise"]  # organise never reappears mid-pack
    assert json.loads((data / "status.json").read_text())["state"] == "done"


# -- 10. verify checks content ------------------------------------------------------------------------


def test_verify_catches_a_flipped_payload_byte(finished: Path, archives: Generated) -> None:
    rec = finished / "recordio" / "train.rec"
    with open(rec, "rb") as f:
        offsets = [offset for offset, _ in iter_records(f)]
    data = bytearray(rec.read_bytes())
    target = offsets[len(offsets) // 2] + 8 + 24 + 100  # magic + length, image header, into the JPEG bytes
    data[target] ^= 0x01
    rec.write_bytes(bytes(data))
    done = bootstrap("verify", finished, archives, "--read-only")
    assert done.returncode == 1 and "CRC-32" in one_line(done)


def test_verify_catches_an_emptied_failures_file(finished: Path, archives: Generated) -> None:
    (finished / "recordio" / "failures_train.tsv").write_text("")
    done = bootstrap("verify", finished, archives, "--read-only")
    assert done.returncode == 1 and "failures_train.tsv" in one_line(done)
