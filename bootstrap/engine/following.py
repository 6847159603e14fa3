"""Pack follows the download: the fetch stage on a thread of its own, pack reading each archive as it grows.

``run`` starts the fetch in the background (smallest archive first: the
devkit, then val, then train), organises as soon as the devkit is verified,
and packs each split through a ``GrowingArchive`` that waits at the
downloaded prefix.  A split in shards (the hub's layout) is packed shard by
shard, each once its own SHA-256 has matched.  A split's pack is recorded
only once its archive's MD5 has matched.  If the download fails instead (a wrong MD5 at the end, a source
that gives up), the split's half-made pack is thrown away, so nothing made
from those bytes survives, and the run fails with the fetch's own error; the
next run downloads again and packs again.  Killed at any moment, the next
run resumes both: the fetch from its finished ranges, the pack from its last
checkpoint, which never lies past the prefix it had read.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

from bootstrap.common.errors import FetchError
from bootstrap.dataset.safetar import READ_BUFFER
from bootstrap.engine.context import SPLITS, StageContext
from bootstrap.fetch.download import fetched
from bootstrap.fetch.growing import GrowingArchive

log = logging.getLogger("bootstrap.engine")


class BackgroundFetch:
    """The fetch stage running on its own thread; what pack needs to follow it."""

    def __init__(self, ctx: StageContext, fetch: Callable[[], None], poll_seconds: float = 0.05) -> None:
        """``poll_seconds``: how often a reader at the downloaded prefix looks again; pack's workers idle that long
        each time it catches up with the download (a look reads the small ``.part.json``)."""
        self.ctx, self.poll_seconds = ctx, poll_seconds
        self.error: BaseException | None = None
        self._fetch = fetch
        self._thread = threading.Thread(target=self._run, name="fetch", daemon=True)

    def _run(self) -> None:
        try:
            self._fetch()
        except BaseException as e:  # handed to the pack that follows, and raised by join()
            self.error = e

    def __enter__(self) -> BackgroundFetch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:  # pack is done: wait for the last archive's MD5 and raise the fetch's failure, if any
            self._thread.join()
            if self.error is not None:
                raise self.error

    def verified(self, role: str) -> bool:
        """Every file of ``role`` (an archive, or a split's shards) is downloaded and matched its digest."""
        files = self.ctx.dataset.split_files(role) if role in SPLITS else [self.ctx.dataset.archives[role]]
        return all(fetched(self.ctx.paths.archives, spec) for spec in files)

    def wait_verified(self, role: str) -> None:
        """Block until ``role``'s archive is downloaded and its digest matched; raise the fetch's error instead."""
        self._wait(lambda: self.verified(role), f"the {role} archive")

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        while not done():
            if self.error is not None:
                raise self.error
            if not self._thread.is_alive() and not done():  # again: it may have just finished
                raise FetchError(f"the fetch ended without verifying {what}; run again")
            time.sleep(self.poll_seconds)

    def shard_opener(self, split: str) -> Callable[[int], IO[bytes]]:
        """Opens shard ``i`` of ``split`` once it has downloaded and its SHA-256 matched: pack never reads a byte
        that is not verified, so a failed download leaves nothing of the pack to throw away."""
        specs, archives = self.ctx.dataset.split_files(split), self.ctx.paths.archives

        def open_shard(index: int) -> IO[bytes]:
            self._wait(lambda: fetched(archives, specs[index]), specs[index].name)
            return open(archives / specs[index].name, "rb", buffering=READ_BUFFER)

        return open_shard

    def opener(self, role: str) -> Callable[[], IO[bytes]]:
        """Opens ``role``'s archive as far as it has downloaded, for the pack's stream."""
        spec, archives, size = self.ctx.dataset.archives[role], self.ctx.paths.archive_dir, self.size(role)
        return lambda: io.BufferedReader(GrowingArchive(archives, spec.name, size, failure=lambda: self.error,
                                                        poll_seconds=self.poll_seconds), READ_BUFFER)  # fmt: skip

    def size(self, role: str) -> int:
        """The archive's size: pinned in the table, else the partial file's, preallocated once the download starts."""
        if self.ctx.dataset.archives[role].size is not None:
            return int(self.ctx.dataset.archives[role].size or 0)
        name, archives = self.ctx.dataset.archives[role].name, self.ctx.paths.archive_dir
        while True:
            for path in (archives.final(name), archives.partial(name)):
                try:
                    if path == archives.final(name) or archives.partial_state(name).exists():
                        return os.path.getsize(path)
                except FileNotFoundError:
                    continue
            if self.error is not None:
                raise self.error
            time.sleep(self.poll_seconds)


def discard(ctx: StageContext, role: str, split_work: Path) -> None:
    log.error("%s: its archive did not verify, so the pack made from it while it downloaded is thrown away "
              "(%s); the next run downloads and packs it again", role, split_work)  # fmt: skip
    shutil.rmtree(split_work, ignore_errors=True)
