"""An archive goes up to S3 while it downloads: multipart parts right behind the downloaded prefix, the last part
held until the archive verified, the upload aborted if it did not.  The download is played by a writer that does
what the downloader does on disk (a preallocated ``.NAME.part``, chunks recorded in ``.NAME.part.json`` as they
land, a rename once the MD5 matched), so the reader under test is the real one."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from bootstrap.common.errors import FetchError
from bootstrap.common.state import atomic_write_json
from bootstrap.fetch.growing import GrowingArchive
from bootstrap.instance.backup import Backup, BackupOptions, local_file, to_upload
from bootstrap.layout import ArchiveDir
from tests.fixtures.aws_emulator import client

pytestmark = pytest.mark.usefixtures("aws_endpoint")
NAME, CHUNK, CHUNKS = "train.tar", 8 << 20, 5  # 40 MiB: three 16 MiB parts


class Download:
    """Writes the archive the way the downloader does, chunk by chunk, on the test's command."""

    def __init__(self, root: Path) -> None:
        self.dir = ArchiveDir(root / "archives")
        self.dir.root.mkdir(parents=True)
        self.data = os.urandom(CHUNK * CHUNKS)
        self.part = self.dir.partial(NAME)
        self.part.write_bytes(b"\0" * len(self.data))  # preallocated
        self.done: list[int] = []
        self._state()
        self.error: BaseException | None = None

    def _state(self) -> None:
        atomic_write_json(self.dir.partial_state(NAME), {"size": len(self.data), "chunk": CHUNK, "done": self.done})

    def write(self, *chunks: int) -> None:
        with open(self.part, "r+b") as f:
            for i in chunks:
                f.seek(i * CHUNK)
                f.write(self.data[i * CHUNK : (i + 1) * CHUNK])
                f.flush()
                os.fsync(f.fileno())
                self.done.append(i)
        self._state()

    def verified(self) -> None:
        os.replace(self.part, self.dir.final(NAME))
        self.dir.partial_state(NAME).unlink()

    def opener(self) -> Callable[[], IO[bytes]]:
        def open_growing() -> IO[bytes]:
            growing = GrowingArchive(self.dir, NAME, len(self.data), failure=lambda: self.error, poll_seconds=0.02,
                                     hold_tail=True)  # fmt: skip
            return io.BufferedReader(growing, 1 << 20)

        return open_growing


def uploaded_parts(bucket: str) -> int:
    s3 = client("s3")
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    parts = [s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []) for u in uploads]
    return sum(len(p) for p in parts)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # handed to the test
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_parts_go_up_while_the_archive_downloads_and_the_object_completes_once_it_verified(tmp_path: Path) -> None:
    client("s3").create_bucket(Bucket="bk-growing")
    download = Download(tmp_path)
    backup = Backup(tmp_path, client("s3"), BackupOptions("bk-growing", ""))
    download.write(0, 1)  # 16 MiB: one part's worth
    thread, result = in_thread(lambda: backup.send_growing(f"archives/{NAME}", len(download.data), download.opener(),
                                                           "test"))  # fmt: skip
    wait_for(lambda: uploaded_parts("bk-growing") >= 1, "a part uploaded while 24 MiB are still to download")
    download.write(3, 2, 4)  # out of order, as parallel connections land them: every chunk is on disk now
    time.sleep(0.5)
    assert thread.is_alive() and "Contents" not in client("s3").list_objects_v2(Bucket="bk-growing")  # tail held
    download.verified()
    thread.join(30)
    assert "error" not in result, result
    body = client("s3").get_object(Bucket="bk-growing", Key=f"archives/{NAME}")["Body"].read()
    assert body == download.data
    # journalled with the final file's size and mtime, so the backup stage finds it up to date
    remote = backup.remote()
    assert to_upload([local_file(tmp_path, f"archives/{NAME}")], backup._journal(), remote, backup.opts) == []
    assert remote[f"archives/{NAME}"][1].endswith("-3")


def test_an_archive_that_fails_to_verify_leaves_no_object_and_no_upload(tmp_path: Path) -> None:
    client("s3").create_bucket(Bucket="bk-growing-bad")
    download = Download(tmp_path)
    backup = Backup(tmp_path, client("s3"), BackupOptions("bk-growing-bad", ""))
    download.write(0, 1, 2, 3, 4)  # every byte arrived; the MD5 is computed last
    thread, result = in_thread(lambda: backup.send_growing(f"archives/{NAME}", len(download.data), download.opener(),
                                                           "test"))  # fmt: skip
    wait_for(lambda: uploaded_parts("bk-growing-bad") >= 2, "the parts before the held tail")
    download.part.unlink()  # what the downloader does on a wrong MD5
    download.error = FetchError(f"{NAME}: MD5 is 0 but the dataset table pins 1")
    thread.join(30)
    assert "its download failed while it was being read" in str(result["error"])
    assert "Contents" not in client("s3").list_objects_v2(Bucket="bk-growing-bad")
    assert client("s3").list_multipart_uploads(Bucket="bk-growing-bad").get("Uploads", []) == []  # aborted
    assert not backup.journal_path.exists()


def test_a_download_that_starts_the_file_over_is_not_read_on_from_the_old_one(tmp_path: Path) -> None:
    download = Download(tmp_path)
    download.write(0)
    reader = download.opener()()
    assert reader.read(CHUNK) == download.data[:CHUNK]
    download.part.unlink()  # the downloader found a partial file of another layout and began again
    download.part.write_bytes(b"\0" * len(download.data))
    with pytest.raises(FetchError, match="started the file over"):
        reader.read(CHUNK)
