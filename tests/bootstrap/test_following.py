"""Pack follows the download: archives served slowly over HTTP, packed while they arrive, byte for byte as a run that
fetches first; a wrong MD5 found at the end throws the pack away; kill -9 while pack waits resumes identically; a
server that falls silent mid-archive is hung up on and the range asked for again from where it stopped; what is
final goes to S3 while the rest is still being packed."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bootstrap.common.errors import ChecksumError
from bootstrap.engine import Engine
from bootstrap.engine.background_backup import STAGE
from bootstrap.engine.timeline import read_history
from bootstrap.instance.backup import Backup, BackupError, LocalFile
from bootstrap.settings import PrepConfig
from scripts.synthetic_imagenet import TRAIN, VAL, Generated, Spec, generate
from tests.bootstrap.pack.test_pack import digests
from tests.fixtures.aws_emulator import REGION, client
from tests.fixtures.http_server import ArchiveServer, ServerOptions

SLOW = ServerOptions(bytes_per_second=512 << 10)  # per connection: the 2.7 MB train archive takes about 3 s


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generate(tmp_path_factory.mktemp("medium"), Spec(classes=6, train_per_class=80, val_per_class=4, seed=7))


def settings(data: Path, source: str, archives: Generated, **overrides: Any) -> PrepConfig:
    values: dict[str, Any] = {"data_dir": data, "source": source, "dataset_table": archives.table, "resize": 64,
                              "workers": 1, "max_failure_rate": 0.2, "checkpoint_seconds": 0.0, "connections": 2,
                              "chunk_mib": 1, "formats": "webdataset"}  # fmt: skip
    return PrepConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def reference(medium: Generated, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same archives fetched first, then packed."""
    data = tmp_path_factory.mktemp("sequential")
    Engine(settings(data, str(medium.root), medium, follow_download=False)).run()
    return data


def first(history: list[dict[str, Any]], stage: str) -> float:
    return min(h["t"] for h in history if h["stage"] == stage)


def last(history: list[dict[str, Any]], stage: str) -> float:
    return max(h["t"] for h in history if h["stage"] == stage)


def test_pack_runs_while_the_archives_download_and_makes_the_same_bytes(medium: Generated, reference: Path,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    with ArchiveServer(medium.root, SLOW) as server:
        engine = Engine(settings(tmp_path, server.url, medium))
        engine.run()
    history = read_history(engine.paths.status_history)
    # the train pack began long before the train archive's last byte arrived
    assert first(history, "pack train") < last(history, f"fetch {TRAIN}") - 0.5
    assert first(history, "pack val") < last(history, f"fetch {TRAIN}")
    for folder in ("recordio", "webdataset"):
        assert digests(engine.paths.root / folder) == digests(reference / folder)
    assert engine.markers.is_done("pack-train") and engine.markers.is_done("fetch")


def test_a_wrong_md5_found_at_the_end_throws_the_split_away(medium: Generated, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    table = json.loads(medium.table.read_text())
    table["archives"]["train"]["md5"] = "0" * 32  # the bytes arrive, are packed, then fail the check
    wrong = tmp_path / "table.json"
    wrong.write_text(json.dumps(table))
    with ArchiveServer(medium.root, SLOW) as server:
        engine = Engine(settings(tmp_path / "data", server.url, medium, dataset_table=wrong))
        with pytest.raises(ChecksumError, match=f"{TRAIN}: MD5 is .* but the dataset table pins 0000"):
            engine.run()
    # it had transcoded train images from the download (the damaged ones were listed) before the check failed
    assert any(r.message.startswith("train: cannot pack") for r in caplog.records)
    assert not engine.markers.is_done("pack-train") and engine.markers.is_done("pack-val")
    assert not engine.paths.pack_work("train").root.exists()  # nothing made from those bytes is kept
    assert not (engine.paths.archives / TRAIN).exists()
    status = json.loads(engine.paths.status.read_text())  # what the operator sees: the download failed, not pack
    assert (status["stage"], status["state"]) == ("fetch", "failed") and "MD5" in status["last_error"]


def kill_9_while_packing_then_resume(argv: list[str], data: Path,
                                     when: Callable[[int], bool]) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``argv``, kill -9 it once ``when(train images packed)`` holds, then run it again to the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = data / ".state" / "pack-train" / "checkpoint.json"
    deadline, killed = time.monotonic() + 60, False
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            ready = when(json.loads(checkpoint.read_text())["cursor"]["next_id"])
        except (OSError, ValueError, KeyError, TypeError):
            ready = False
        if ready:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    proc.wait()
    assert killed, "the run finished before pack caught up with the download; slow the server down"
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def test_kill_9_while_pack_waits_on_the_download_resumes_to_the_same_bytes(medium: Generated, reference: Path,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    data = tmp_path / "data"
    with ArchiveServer(medium.root, SLOW) as server:
        argv = [sys.executable, "-m", "bootstrap", "run", "--data-dir", str(data), "--source", server.url,
                "--dataset-table", str(medium.table), "--resize", "64", "--workers", "1", "--max-failure-rate",
                "0.2", "--checkpoint-seconds", "0", "--connections", "2", "--chunk-mib", "1", "--formats",
                "webdataset"]  # fmt: skip
        partial = data / "archives" / f".{TRAIN}.part"
        # packed a part of train while the rest of it is still downloading
        resumed = kill_9_while_packing_then_resume(argv, data, lambda packed: packed > 20 and partial.exists())
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming pass one" in resumed.stderr
    for folder in ("recordio", "webdataset"):
        assert digests(data / folder) == digests(reference / folder)


def test_a_server_that_stalls_mid_archive_is_dropped_and_pack_carries_on(
    medium: Generated, reference: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the first train range falls silent after 256 KiB and stays open for 30 s; we give up on it after 1 s
    stalling = ServerOptions(bytes_per_second=SLOW.bytes_per_second, stall_after=256 << 10, stall_times=1,
                             stall_seconds=30.0, stall_file=TRAIN)  # fmt: skip
    with ArchiveServer(medium.root, stalling) as server:
        engine = Engine(settings(tmp_path, server.url, medium, stall_seconds=1.0))
        engine.run()
        served = list(server.ranges_served)
    assert stalling.stall_times == 0, "no train range was long enough to stall"
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{TRAIN}: ") and "retry" in
               r.getMessage()]  # fmt: skip
    assert len(retries) == 1 and "timed out" in retries[0]  # we hung up on the silence, not the server on us
    # the range was fetched again from where the silence began, not from its start
    assert any(start % (1 << 20) == 256 << 10 for start, _ in served)
    history = read_history(engine.paths.status_history)
    assert first(history, "pack train") < last(history, f"fetch {TRAIN}")  # pack followed, waited, carried on
    for folder in ("recordio", "webdataset"):
        assert digests(engine.paths.root / folder) == digests(reference / folder)


@pytest.mark.usefixtures("aws_endpoint")
def test_the_backup_sends_what_is_final_while_pack_still_runs(medium: Generated, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    client("s3").create_bucket(Bucket="bk-follow")
    with ArchiveServer(medium.root, SLOW) as server:
        engine = Engine(settings(tmp_path, server.url, medium, bucket="bk-follow", region=REGION))
        engine.run()
    history = read_history(engine.paths.status_history)
    # the devkit and val archives and val's records went up while train was still downloading and being packed
    assert first(history, STAGE) < last(history, "pack train")
    journal = [json.loads(line)["relpath"] for line in engine.paths.backup_journal.read_text().splitlines()]
    assert len(journal) == len(set(journal))  # nothing was sent twice
    sends = [re.match(r"(.+): (\d+) files, (\d+) to send", r.getMessage()) for r in caplog.records]
    sent_early = sum(int(m[3]) for m in sends if m and m[1] == STAGE)
    assert sent_early >= 2  # at least the devkit and val's records
    # the val and train archives went up as they downloaded (tests/bootstrap/instance/test_backup_as_downloaded.py
    # shows the parts going up before the last byte; these archives are one part each)
    growing = [r.getMessage() for r in caplog.records if r.getMessage().endswith("goes up as it downloads")]
    assert [m.split(": ")[1].split(" ")[0] for m in growing] == [f"archives/{VAL}", f"archives/{TRAIN}"]
    (stage,) = [(int(m[2]), int(m[3])) for m in sends if m and m[1] == "backup"]
    assert stage[1] == stage[0] - sent_early - 2  # the backup stage sent only the rest, then the manifest
    manifest = json.loads(client("s3").get_object(Bucket="bk-follow", Key="manifest.json")["Body"].read())
    assert {e["relpath"] for e in manifest["files"]} >= {f"archives/{TRAIN}", "recordio/train.rec", "recordio/val.rec"}
    again = Engine(settings(tmp_path, server.url, medium, bucket="bk-follow", region=REGION))
    assert again.backup(verify_only=True)["verified"]


@pytest.mark.usefixtures("aws_endpoint")
def test_a_backup_that_fails_while_pack_runs_leaves_it_to_the_backup_stage(
    medium: Generated, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sending = Backup.send

    def refused_while_packing(self: Backup, files: list[LocalFile], remote: Any = None, stage: str = "backup") -> Any:
        if stage == STAGE:
            raise BackupError("injected: access denied to s3://bk-fail-early/")
        return sending(self, files, remote, stage)

    monkeypatch.setattr(Backup, "send", refused_while_packing)
    client("s3").create_bucket(Bucket="bk-fail-early")
    with ArchiveServer(medium.root, SLOW) as server:
        Engine(settings(tmp_path, server.url, medium, bucket="bk-fail-early", region=REGION)).run()
    assert any(r.getMessage().startswith(f"{STAGE} stopped: injected") for r in caplog.records)
    manifest = json.loads(client("s3").get_object(Bucket="bk-fail-early", Key="manifest.json")["Body"].read())
    assert {e["relpath"] for e in manifest["files"]} >= {f"archives/{TRAIN}", "recordio/train.rec", "recordio/val.rec"}
