"""``GrowingArchive``: reads an archive as far as its finished ranges reach, waits there, fails with its download."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bootstrap.common.errors import FetchError
from bootstrap.fetch.growing import GrowingArchive, contiguous_prefix
from bootstrap.layout import ArchiveDir

CHUNK, SIZE = 10, 35


def test_the_prefix_ends_at_the_first_range_not_done() -> None:
    assert contiguous_prefix(None) == 0
    assert contiguous_prefix({"size": SIZE, "chunk": CHUNK, "done": [1, 2]}) == 0
    assert contiguous_prefix({"size": SIZE, "chunk": CHUNK, "done": [0, 1, 3]}) == 20
    assert contiguous_prefix({"size": SIZE, "chunk": CHUNK, "done": [0, 1, 2, 3]}) == SIZE


def _partial(archives: ArchiveDir, done: list[int]) -> bytes:
    data = bytes(range(SIZE))
    archives.root.mkdir(parents=True, exist_ok=True)
    archives.partial("a.tar").write_bytes(data)
    archives.partial_state("a.tar").write_text(json.dumps({"size": SIZE, "chunk": CHUNK, "done": done}))
    return data


def test_a_read_past_the_prefix_waits_until_the_range_is_done(tmp_path: Path) -> None:
    archives = ArchiveDir(tmp_path)
    data = _partial(archives, [0])
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the download finishing ranges while the reader waits
        waits.append(seconds)
        done = [0, 1] if len(waits) == 1 else [0, 1, 2, 3]
        archives.partial_state("a.tar").write_text(json.dumps({"size": SIZE, "chunk": CHUNK, "done": done}))

    reader = GrowingArchive(archives, "a.tar", SIZE, failure=lambda: None, sleep=sleep)
    assert reader.read(100) == data[:10] and not waits  # the prefix, at once
    assert reader.read(100) == data[10:20] and len(waits) == 1
    reader.seek(30)
    assert reader.read(100) == data[30:] and reader.read(100) == b""
    reader.close()


def test_the_verified_file_counts_whole_and_a_failed_download_fails_the_reader(tmp_path: Path) -> None:
    archives = ArchiveDir(tmp_path)
    data = _partial(archives, [])
    reader = GrowingArchive(archives, "a.tar", SIZE, failure=lambda: None, sleep=lambda s: None)
    os.replace(archives.partial("a.tar"), archives.final("a.tar"))  # MD5 matched: renamed into place
    assert reader.read(100) == data
    other = ArchiveDir(tmp_path / "other")
    _partial(other, [])  # nothing finished yet, and the download fails
    failing = GrowingArchive(other, "a.tar", SIZE, failure=lambda: RuntimeError("MD5 mismatch"), sleep=lambda s: None)
    with pytest.raises(FetchError, match=r"a.tar: its download failed while it was being read \(MD5 mismatch"):
        failing.read(1)
    with pytest.raises(FetchError, match="its download failed"):  # one that never started fails as it opens
        GrowingArchive(ArchiveDir(tmp_path / "none"), "a.tar", SIZE, failure=lambda: RuntimeError("gone"),
                       sleep=lambda s: None)  # fmt: skip
