"""Fetch against a real HTTP server (and moto's S3): ranges, auth, faults, checksums, kill -9 and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootstrap.common.errors import ChecksumError, FetchError
from bootstrap.dataset.archives import ArchiveSpec
from bootstrap.fetch.download import FetchOptions, fetch_archive
from bootstrap.fetch.sources import (
    Credentials,
    HttpSource,
    LocalSource,
    S3Source,
    TransientError,
    read_exactly,
    resolve_credentials,
)
from tests.fixtures.http_server import ArchiveServer, ServerOptions

CHUNK = 256 << 10
OPTS = FetchOptions(connections=4, chunk_size=CHUNK, max_attempts=5, backoff_seconds=0.01)
NO_SLEEP = {"sleep": lambda _s: None}


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, ArchiveSpec]:
    root = tmp_path / "served"
    root.mkdir()
    data = os.urandom(3 * CHUNK + 12345)
    (root / "blob.tar").write_bytes(data)
    return root, ArchiveSpec("train", "blob.tar", hashlib.md5(data).hexdigest(), len(data))


def test_parallel_ranges_with_basic_auth(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    with ArchiveServer(root, ServerOptions(username="ann", password="key")) as server:
        source = HttpSource(server.url, Credentials("ann", "key"))
        path = fetch_archive(source, spec, tmp_path / "dest", OPTS, **NO_SLEEP)
        assert path.read_bytes() == (root / "blob.tar").read_bytes()
        assert sorted(server.ranges_served[1:]) == [(i * CHUNK, min((i + 1) * CHUNK, spec.size or 0)) for i in range(4)]
    assert not list((tmp_path / "dest").glob(".blob.tar.part*"))


def test_done_archive_is_not_fetched_again(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    with ArchiveServer(root) as server:
        fetch_archive(HttpSource(server.url), spec, tmp_path / "d", OPTS, **NO_SLEEP)
        before = server.requests
        fetch_archive(HttpSource(server.url), spec, tmp_path / "d", OPTS, **NO_SLEEP)
        assert server.requests == before


@pytest.mark.parametrize(
    ("options", "credentials", "message"),
    [
        (ServerOptions(username="ann", password="key"), None, r"HTTP 401.*DATASET_SOURCE_USERNAME"),
        (ServerOptions(username="ann", password="key"), Credentials("ann", "wrong"), r"HTTP 403.*refused"),
        (ServerOptions(token="t0k"), Credentials(token="nope"), "HTTP 403"),
    ],
)
def test_auth_errors_say_what_to_fix(
    blob: tuple[Path, ArchiveSpec], tmp_path: Path, options: ServerOptions, credentials: Credentials | None,
    message: str,
) -> None:  # fmt: skip
    root, spec = blob
    with ArchiveServer(root, options) as server, pytest.raises(FetchError, match=message) as err:
        fetch_archive(HttpSource(server.url, credentials), spec, tmp_path / "d", OPTS, **NO_SLEEP)
    assert "wrong" not in str(err.value) and "nope" not in str(err.value)  # secrets never echoed


def test_bearer_token(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    with ArchiveServer(root, ServerOptions(token="t0k")) as server:
        fetch_archive(HttpSource(server.url, Credentials(token="t0k")), spec, tmp_path / "d", OPTS, **NO_SLEEP)


def test_missing_file_is_404_with_hint(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, _spec = blob
    with ArchiveServer(root) as server, pytest.raises(FetchError, match=r"404.*check the source URL"):
        fetch_archive(HttpSource(server.url), ArchiveSpec("val", "nope.tar", "0" * 32), tmp_path / "d", OPTS,
                      **NO_SLEEP)  # fmt: skip


def test_500s_and_dropped_connections_are_retried(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    options = ServerOptions(fail_first=3, drop_after=50_000, drop_times=3)
    with ArchiveServer(root, options) as server:
        path = fetch_archive(HttpSource(server.url), spec, tmp_path / "d", OPTS, **NO_SLEEP)
        assert 500 in server.statuses
        assert options.drop_times == 0
    assert hashlib.md5(path.read_bytes()).hexdigest() == spec.md5


def test_persistent_failure_gives_up_with_message(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    with ArchiveServer(root, ServerOptions(fail_first=10_000)) as server, pytest.raises(FetchError, match="HTTP 500"):
        fetch_archive(HttpSource(server.url), spec, tmp_path / "d", OPTS, **NO_SLEEP)


def test_server_without_ranges_still_works(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    with ArchiveServer(root, ServerOptions(ranges=False, drop_after=100_000, drop_times=1)) as server:
        path = fetch_archive(HttpSource(server.url), spec, tmp_path / "d", OPTS, **NO_SLEEP)
        assert set(server.statuses) <= {200}
    assert path.read_bytes() == (root / "blob.tar").read_bytes()


def test_wrong_md5_is_clear_and_marks_nothing(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    bad = ArchiveSpec(spec.role, spec.name, "0" * 32, spec.size)
    dest = tmp_path / "d"
    with ArchiveServer(root) as server, pytest.raises(ChecksumError, match=r"MD5 is .* pins 0{32}.*removed"):
        fetch_archive(HttpSource(server.url), bad, dest, OPTS, **NO_SLEEP)
    assert not (dest / spec.name).exists()
    assert not list(dest.glob(".blob*")) and not list((dest / ".state").glob("*"))


def test_wrong_size_is_caught_before_downloading(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    bad = ArchiveSpec(spec.role, spec.name, spec.md5, 999)
    with ArchiveServer(root) as server:
        with pytest.raises(ChecksumError, match="pins 999"):
            fetch_archive(HttpSource(server.url), bad, tmp_path / "d", OPTS, **NO_SLEEP)
        assert server.body_bytes <= 1


KILL_SCRIPT = """
import sys
from pathlib import Path
from bootstrap.dataset.archives import ArchiveSpec
from bootstrap.fetch.download import FetchOptions, fetch_archive
from bootstrap.fetch.sources import HttpSource
url, name, md5, size, dest, chunk = sys.argv[1:]
fetch_archive(HttpSource(url), ArchiveSpec("train", name, md5, int(size)), Path(dest),
              FetchOptions(connections=2, chunk_size=int(chunk)))
"""


def test_kill_9_then_resume_skips_finished_ranges(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    dest = tmp_path / "d"
    state = dest / ".blob.tar.part.json"
    with ArchiveServer(root, ServerOptions(bytes_per_second=CHUNK * 2)) as server:
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, server.url, spec.name, spec.md5, str(spec.size),
                                 str(dest), str(CHUNK)])  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if state.exists() and json.loads(state.read_text())["done"]:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = json.loads(state.read_text())["done"]
        assert done and len(done) < 4, "the kill should land mid-download"
        requests_before = len(server.ranges_served)
        server.options.bytes_per_second = None
        fetch_archive(HttpSource(server.url), spec, dest, OPTS, **NO_SLEEP)
        resumed = server.ranges_served[requests_before:]
    finished = [(i * CHUNK, (i + 1) * CHUNK) for i in done]
    body_ranges = [r for r in resumed if r[1] - r[0] > 1]  # the 1-byte probe of stat() aside
    assert body_ranges, "the rest must have been downloaded"
    assert not [(r, f) for r in body_ranges for f in finished if r[0] < f[1] and f[0] < r[1]]
    assert (dest / spec.name).read_bytes() == (root / "blob.tar").read_bytes()


def test_s3_source(blob: tuple[Path, ArchiveSpec], tmp_path: Path, aws_endpoint: str) -> None:
    from tests.fixtures.aws_emulator import client

    root, spec = blob
    s3 = client("s3")
    s3.create_bucket(Bucket="archives-src")
    s3.put_object(Bucket="archives-src", Key="ilsvrc/blob.tar", Body=(root / "blob.tar").read_bytes())
    path = fetch_archive(S3Source("s3://archives-src/ilsvrc", s3), spec, tmp_path / "d", OPTS, **NO_SLEEP)
    assert path.read_bytes() == (root / "blob.tar").read_bytes()
    with pytest.raises(FetchError, match="does not exist"):
        fetch_archive(S3Source("s3://archives-src/other", s3), spec, tmp_path / "e", OPTS, **NO_SLEEP)


def test_local_source_and_in_place_verification(blob: tuple[Path, ArchiveSpec], tmp_path: Path) -> None:
    root, spec = blob
    copied = fetch_archive(LocalSource(root), spec, tmp_path / "d", OPTS, **NO_SLEEP)
    assert copied.read_bytes() == (root / "blob.tar").read_bytes()
    in_place = fetch_archive(LocalSource(root), spec, root, OPTS, **NO_SLEEP)  # already there: verify only
    assert in_place == root / "blob.tar"


def test_credentials_from_env_or_secret() -> None:
    env = {"DATASET_SOURCE_USERNAME": "ann", "DATASET_SOURCE_PASSWORD": "k"}
    assert resolve_credentials(None, env) == Credentials("ann", "k")
    from_secret = resolve_credentials("src", {}, lambda name: '{"username": "bob", "access_key": "s3cr3t"}')
    assert from_secret == Credentials("bob", "s3cr3t")
    assert "s3cr3t" not in repr(from_secret)


def test_archive_already_in_place_with_wrong_md5_is_reported_and_left(
    blob: tuple[Path, ArchiveSpec], tmp_path: Path
) -> None:
    root, spec = blob
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / spec.name).write_bytes(b"x" * (spec.size or 0))  # right size, wrong bytes
    with pytest.raises(ChecksumError, match=r"left in place\. Delete or replace it"):
        fetch_archive(LocalSource(root), spec, dest, OPTS, **NO_SLEEP)
    assert (dest / spec.name).exists()


def test_pieces_are_gathered_into_blocks_and_kept_when_the_stream_stalls() -> None:
    pieces: list[bytes | Exception] = [b"a" * 1000, b"b" * 24, TimeoutError("read timed out")]

    def read1(_size: int) -> bytes:
        piece = pieces.pop(0)
        if isinstance(piece, Exception):
            raise piece
        return piece

    got: list[bytes] = []
    with pytest.raises(TransientError, match=r"x\.tar: connection lost: read timed out"):
        for block in read_exactly(read1, 4096, "x.tar", (OSError,)):
            got.append(block)
    assert got == [b"a" * 1000 + b"b" * 24]  # one block, handed over before the error: nothing delivered is lost
    whole = [b"c" * 600] * 4
    assert list(read_exactly(lambda _n: whole.pop(0), 2400, "y.tar", (OSError,))) == [b"c" * 2400]
