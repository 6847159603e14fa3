"""Back up while the rest is still being made: the archives as they download, each split's outputs once packed.

``run`` starts these threads with the fetch and stops them just before the
backup stage.  One uploads the val and train archives (ILSVRC2012's layout)
while they download, in multipart parts right behind the downloaded prefix,
where the bytes are still in the page cache: on an sc1 disk, reading the
archives back after the download would compete with pack for the disk.  The
last part waits for the archive's MD5, so S3 completes the object only if it
verified; if it did not, the upload is aborted.  The other thread, every
second, sends what has become final since: another archive (the devkit, a
hub dataset's shards) once its size and digest are recorded, a split's
records, lists and shards once its pack is recorded.  Each file goes through the backup's own upload and
journal, so the backup stage later sends only the rest (the class tree, the
state, anything that changed since) and writes the manifest last; a file that
changed after it was sent is simply sent again there.

Neither ever fails the run: an error is logged once and the thread stops, and
the backup stage sends what it had not.  The threads are waited for only when
the stages before the backup succeeded; when one fails, the current upload is
left to the journal and S3's lifecycle rule for incomplete multipart uploads.
"""

from __future__ import annotations

import io
import logging
import threading
from types import TracebackType
from typing import IO

from bootstrap.common.errors import FetchError
from bootstrap.dataset.safetar import READ_BUFFER
from bootstrap.engine.context import SPLITS, StageContext
from bootstrap.fetch.download import fetched
from bootstrap.fetch.growing import GrowingArchive
from bootstrap.instance.backup import Backup, local_file
from bootstrap.layout import backed_up, pack_marker

log = logging.getLogger("bootstrap.engine")
STAGE = "backup while packing"


class BackgroundBackup:
    def __init__(self, ctx: StageContext, job: Backup, poll_seconds: float = 1.0) -> None:
        self.ctx, self.job, self.poll_seconds = ctx, job, poll_seconds
        self.sent: set[str] = set()
        self.growing: set[str] = set()
        """Archives the other thread uploads as they download: not for this one to send."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="backup-while-packing", daemon=True),
                         threading.Thread(target=self._follow, name="backup-as-downloaded", daemon=True)]  # fmt: skip

    def final(self) -> list[str]:
        """What is final and not sent yet: verified archives, and the outputs each recorded pack vouches for."""
        with self._lock:
            skip = self.sent | self.growing
        archives = self.ctx.paths.archives
        # of a thousand shards, what is sent is skipped before the check that reads its marker and stats it
        ready = [relpath for spec in self.ctx.dataset.files()
                 if (relpath := self._relpath(spec.name)) not in skip and fetched(archives, spec)]  # fmt: skip
        for split in SPLITS:
            ready += list((self.ctx.markers.info(pack_marker(split)) or {}).get("fingerprints", {}))
        return [relpath for relpath in ready if backed_up(relpath) and relpath not in skip]

    def _relpath(self, name: str) -> str:
        """An archive's path in the backup (relative to the data directory)."""
        return (self.ctx.paths.archives / name).relative_to(self.ctx.paths.root).as_posix()

    def _follow(self) -> None:
        """Upload the val and train archives as they download (ILSVRC2012's layout; each of a hub dataset's shards
        is small and goes up once it verifies).  One that is here already, or of no pinned size, is left to
        ``_run``."""
        archives = self.ctx.paths.archive_dir
        for role in () if self.ctx.dataset.sharded else SPLITS:
            spec = self.ctx.dataset.archives[role]
            relpath = self._relpath(spec.name)
            if self._stop.is_set() or spec.size is None or fetched(self.ctx.paths.archives, spec):
                continue
            size = spec.size

            def opener(name: str = spec.name, size: int = size) -> IO[bytes]:
                growing = GrowingArchive(archives, name, size, failure=self._stopped, hold_tail=True)
                return io.BufferedReader(growing, READ_BUFFER)

            with self._lock:
                self.growing.add(relpath)
            try:
                self.job.send_growing(relpath, size, opener, STAGE)
            except Exception as e:  # the fetch failed, or S3 did: the backup stage sends it, once it verified
                log.warning("%s: %s did not go up as it downloaded (%s); it is sent once verified", STAGE, relpath, e)
                with self._lock:
                    self.growing.discard(relpath)
                continue
            with self._lock:
                self.sent.add(relpath)
                self.growing.discard(relpath)

    def _stopped(self) -> BaseException | None:
        """Why a reader waiting for the download should give up: the run stopped (its fetch or a stage failed)."""
        return FetchError("the run stopped before the download finished") if self._stop.is_set() else None

    def _run(self) -> None:
        remote = None
        try:
            while not self._stop.wait(self.poll_seconds):
                todo = self.final()
                if not todo:
                    continue
                remote = self.job.remote() if remote is None else remote  # listed once: we know what we sent since
                self.job.send([local_file(self.ctx.paths.root, relpath) for relpath in todo], remote, STAGE)
                with self._lock:
                    self.sent.update(todo)
        except Exception as e:  # the backup stage sends what this did not
            log.warning("%s stopped: %s; the backup stage will send the rest", STAGE, e)

    def __enter__(self) -> BackgroundBackup:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if kind is None:  # the backup stage comes next: let the files in flight finish, never two senders at once
            for thread in self._threads:
                thread.join()
