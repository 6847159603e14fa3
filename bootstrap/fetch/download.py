"""Download archives: parallel byte ranges, resumable, verified (MD5 or SHA-256, as pinned) before they count.

Layout in the destination directory while an archive downloads:

    .NAME.part        the file, preallocated to its full size
    .NAME.part.json   which fixed-size chunks are complete (and fsynced)

Worker threads each stream one chunk at a time into the file with ``pwrite``;
a dropped connection resumes inside its chunk.  The main thread hashes chunks
in order as they complete, so the digest is ready when the last byte lands and
the 140 GB file is not read a second time (after a restart, the finished
prefix is re-hashed once).  Only when size and digest match is the file renamed
to NAME and marked done.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bootstrap.common.errors import ChecksumError, DiskFullError, FetchError
from bootstrap.common.progress import Progress, StatusFile, human_bytes
from bootstrap.common.state import Markers, atomic_write_json, read_state
from bootstrap.dataset.archives import ArchiveSpec, DatasetSpec
from bootstrap.fetch.sources import RemoteFile, Source, TransientError
from bootstrap.layout import ArchiveDir, fetch_marker
from bootstrap.settings import default

log = logging.getLogger(__name__)
HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class FetchOptions:
    connections: int = default("connections")
    chunk_size: int = default("chunk_mib") << 20
    max_attempts: int = 8
    backoff_seconds: float = 1.0


def _backoff(opts: FetchOptions, attempt: int) -> float:
    """Exponential backoff with jitter, capped at 30 s."""
    return min(30.0, opts.backoff_seconds * 2.0 ** (attempt - 1)) * (0.5 + random.random())


def _stat_with_retries(source: Source, name: str, opts: FetchOptions, sleep: Callable[[float], None]) -> RemoteFile:
    for attempt in range(1, opts.max_attempts + 1):
        try:
            return source.stat(name)
        except TransientError as e:
            if attempt == opts.max_attempts:
                raise FetchError(
                    f"{name}: the source keeps failing ({e}) after {attempt} attempts; check it and run again"
                ) from None
            log.warning("%s; retry %d/%d", e, attempt, opts.max_attempts)  # e begins with the archive's name
            sleep(_backoff(opts, attempt))
    raise AssertionError("unreachable")


def _disk_full(path: Path, need: int) -> DiskFullError:
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    return DiskFullError(
        f"no space left on {path} (free {human_bytes(free)}, this archive needs {human_bytes(need)}); "
        "free space or grow the volume, then run again: finished ranges are kept"
    )


def chunk_size(size: int, ranges: bool, opts: FetchOptions) -> int:
    """Range size: the configured one, smaller for small files so every connection gets work."""
    if not ranges:
        return max(size, 1)
    per_connection = -(-size // (opts.connections * 4))
    return min(opts.chunk_size, max(1 << 20, per_connection))


class _Download:
    """One archive's download in progress; shared by the worker threads."""

    def __init__(self, source: Source, spec: ArchiveSpec, dest: Path, *, size: int, ranges: bool, opts: FetchOptions):
        self.source, self.spec, self.size, self.ranges, self.opts = source, spec, size, ranges, opts
        self.part = ArchiveDir(dest).partial(spec.name)
        self.state_path = ArchiveDir(dest).partial_state(spec.name)
        state = read_state(self.state_path)
        resumable = bool(state) and state.get("size") == size and self.part.exists()
        if resumable and ranges:
            self.chunk = state["chunk"]  # keep the layout of the ranges already on disk
        else:
            self.chunk = chunk_size(size, ranges, opts)
        self.nchunks = max(1, -(-size // self.chunk))
        self.lock = threading.Condition()
        self.done: set[int] = set()
        self.error: BaseException | None = None
        if resumable and state["chunk"] == self.chunk:
            self.done = set(state["done"])
        elif self.part.exists() or self.state_path.exists():
            log.info("%s: earlier partial download does not match this one; starting over", spec.name)
            self.part.unlink(missing_ok=True)
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        if not self.done:
            try:
                os.posix_fallocate(self.fd, 0, size)
            except OSError as e:
                os.close(self.fd)
                if e.errno == errno.ENOSPC:
                    raise _disk_full(dest, size) from None
                raise
            self._save_state()

    def bounds(self, index: int) -> tuple[int, int]:
        return index * self.chunk, min((index + 1) * self.chunk, self.size)

    def done_bytes(self) -> int:
        return sum(self.bounds(i)[1] - self.bounds(i)[0] for i in self.done)

    def _save_state(self) -> None:
        atomic_write_json(self.state_path, {"size": self.size, "chunk": self.chunk, "done": sorted(self.done)})

    def run_chunk(self, index: int, progress: Progress, sleep: Callable[[float], None]) -> None:
        start, end = self.bounds(index)
        pos, attempt = start, 0
        while pos < end:
            if self.error is not None:
                return
            try:
                for block in self.source.read(self.spec.name, pos, end):
                    try:
                        os.pwrite(self.fd, block, pos)
                    except OSError as e:
                        if e.errno == errno.ENOSPC:
                            raise _disk_full(self.part.parent, self.size) from None
                        raise
                    pos += len(block)
                    progress.advance(len(block))
            except TransientError as e:
                attempt += 1
                if attempt >= self.opts.max_attempts:
                    raise FetchError(
                        f"{self.spec.name}: gave up on bytes {pos}-{end} after {attempt} attempts ({e}); "
                        "check the network and the source, then run again: finished ranges are kept"
                    ) from None
                delay = _backoff(self.opts, attempt)
                log.warning("%s; retry %d/%d in %.1fs", e, attempt, self.opts.max_attempts, delay)  # e names it
                if not self.ranges:
                    # Without range support the stream restarts at 0: rewind, and take back progress.
                    progress.advance(start - pos)
                    pos = start
                sleep(delay)
        os.fdatasync(self.fd)
        with self.lock:
            self.done.add(index)
            self._save_state()
            self.lock.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = error
            self.lock.notify_all()

    def hash_in_order(self) -> str:
        """The file's digest (the table's algorithm), reading each chunk as soon as it and all before it are done."""
        digest = hashlib.new(self.spec.digest[0], usedforsecurity=False)
        for index in range(self.nchunks):
            with self.lock:
                while index not in self.done and self.error is None:
                    self.lock.wait(timeout=1.0)
                if self.error is not None:
                    raise self.error
            start, end = self.bounds(index)
            pos = start
            while pos < end:
                block = os.pread(self.fd, min(HASH_BLOCK, end - pos), pos)
                digest.update(block)
                pos += len(block)
        return digest.hexdigest()


def fetch_archive(
    source: Source,
    spec: ArchiveSpec,
    dest: Path,
    opts: FetchOptions,
    *,
    status: StatusFile | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Progress | None = None,
) -> Path:
    """Download ``spec`` from ``source`` into ``dest``, verify it, and return its path.  ``progress``: count the
    bytes there (one bar for many files) instead of on a bar of the file's own."""
    dest.mkdir(parents=True, exist_ok=True)
    markers = Markers(ArchiveDir(dest).markers)
    final = ArchiveDir(dest).final(spec.name)
    if fetched(dest, spec):
        log.info("%s: already downloaded and verified", spec.name)
        return final

    remote = _stat_with_retries(source, spec.name, opts, sleep)
    if spec.size is not None and remote.size != spec.size:
        raise ChecksumError(
            f"{source.describe()} serves {spec.name} as {remote.size:,} bytes but the dataset table pins "
            f"{spec.size:,}: the source holds a different file, or the table is wrong"
        )
    if not remote.ranges:
        log.warning("%s: the source ignores Range requests; downloading in one stream, which cannot resume", spec.name)
    if final.exists() and final.stat().st_size == remote.size:
        digest = _verify_in_place(final, spec, remote.size, status)
        if progress is not None:
            progress.advance(remote.size)
    else:
        dl = _Download(source, spec, dest, size=remote.size, ranges=remote.ranges, opts=opts)
        digest = _download(dl, source, opts, status, sleep, shared=progress)
        _accept(dl, final, digest)
    algorithm = spec.digest[0]
    markers.mark(fetch_marker(spec.name), {algorithm: digest, "size": remote.size})
    log.info("%s: verified (%s %s)", spec.name, algorithm, digest)
    return final


def fetched(dest: Path, spec: ArchiveSpec) -> bool:
    """``spec``'s archive is in ``dest``, marked downloaded with its size and the pinned digest."""
    final, info = ArchiveDir(dest).final(spec.name), Markers(ArchiveDir(dest).markers).info(fetch_marker(spec.name))
    algorithm, expected = spec.digest
    present = bool(info) and final.exists() and final.stat().st_size == info.get("size")
    return present and info.get(algorithm) == expected


def _verify_in_place(final: Path, spec: ArchiveSpec, size: int, status: StatusFile | None) -> str:
    """An archive placed there by hand or by an earlier version: verify instead of downloading again."""
    log.info("%s: found in %s, verifying", spec.name, final.parent)
    algorithm, expected = spec.digest
    got = hash_file(final, algorithm, Progress(f"verify {spec.name}", size, "B", status=status))
    if got != expected:
        raise ChecksumError(
            f"{final} has {algorithm.upper()} {got} but the dataset table pins {expected}; it was left in place. "
            "Delete or replace it, then run fetch again"
        )
    return got


def _download(dl: _Download, source: Source, opts: FetchOptions, status: StatusFile | None,
              sleep: Callable[[float], None], *, shared: Progress | None = None) -> str:  # fmt: skip
    """Fetch the missing chunks on parallel connections while hashing in order; returns the digest."""
    pending = [i for i in range(dl.nchunks) if i not in dl.done]
    if shared is not None:
        progress = shared
        progress.advance(dl.done_bytes())
    else:
        progress = Progress(f"fetch {dl.spec.name}", dl.size, "B", status=status, done=dl.done_bytes())
    workers = opts.connections if dl.ranges else 1
    log.info("%s: %s from %s, %d of %d chunks to go, %d connections", dl.spec.name, human_bytes(dl.size),
             source.describe(), len(pending), dl.nchunks, workers)  # fmt: skip
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
            futures: list[Future[None]] = []

            def report_failure(fut: Future[None]) -> None:
                if not fut.cancelled() and (error := fut.exception()) is not None:
                    dl.fail(error)

            for index in pending:
                fut = pool.submit(dl.run_chunk, index, progress, sleep)
                fut.add_done_callback(report_failure)
                futures.append(fut)
            try:
                digest = dl.hash_in_order()
            except BaseException as e:
                dl.fail(e)
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        os.close(dl.fd)
    if shared is None:
        progress.finish()
    return digest


def _accept(dl: _Download, final: Path, digest: str) -> None:
    """Rename the finished download into place if its digest is the pinned one; otherwise throw it away."""
    algorithm, expected = dl.spec.digest
    if digest != expected:
        dl.part.unlink(missing_ok=True)
        dl.state_path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dl.spec.name}: {algorithm.upper()} is {digest} but the dataset table pins {expected}; the file was "
            "removed and nothing was marked done. Run fetch again; if it repeats, the source serves a different file "
            "(check the source URL and the dataset table)"
        )
    os.replace(dl.part, final)
    dl.state_path.unlink(missing_ok=True)


def hash_file(path: Path, algorithm: str, progress: Progress | None = None) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
            if progress:
                progress.advance(len(block))
    if progress:
        progress.finish()
    return digest.hexdigest()


def fetch_all(
    source: Source,
    dataset: DatasetSpec,
    dest: Path,
    opts: FetchOptions,
    *,
    status: StatusFile | None = None,
) -> dict[str, Path]:
    """Fetch every file of ``dataset`` in the order pack reads them (``DatasetSpec.files``); by name, their paths.
    A hub dataset's shards count on one bar: a thousand bars of 140 MB each would give no useful rate or ETA."""
    files = dataset.files()
    if not dataset.sharded:
        return {a.name: fetch_archive(source, a, dest, opts, status=status) for a in files}
    here = {a.name for a in files if fetched(dest, a)}
    progress = Progress(f"fetch {len(files)} shards", sum(int(a.size or 0) for a in files), "B", status=status,
                        done=sum(int(a.size or 0) for a in files if a.name in here))  # fmt: skip
    paths = {name: ArchiveDir(dest).final(name) for name in here}
    for spec in files:
        if spec.name not in here:
            paths[spec.name] = fetch_archive(source, spec, dest, opts, status=status, progress=progress)
    progress.finish()
    return paths
