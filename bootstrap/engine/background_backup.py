"""Back up while the rest is still being made: each archive once verified, each split's outputs once packed.

``run`` starts this thread with the fetch and stops it just before the backup
stage.  Every second it sends what has become final since: an archive
once its size and MD5 are recorded, a split's records, lists and shards once
its pack is recorded.  Each file goes through the backup's own upload and
journal, so the backup stage later sends only the rest (the class tree, the
state, anything that changed since) and writes the manifest last; a file that
changed after it was sent is simply sent again there.

It never fails the run: an error is logged once and the thread stops, and the
backup stage sends what it had not.  The thread is waited for only when the
stages before the backup succeeded; when one fails, the current upload is
left to the journal and S3's lifecycle rule for incomplete multipart uploads.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from bootstrap.engine.context import SPLITS, StageContext
from bootstrap.fetch.download import fetched
from bootstrap.instance.backup import Backup, local_file
from bootstrap.layout import backed_up, pack_marker

log = logging.getLogger("bootstrap.engine")
STAGE = "backup while packing"


class BackgroundBackup:
    def __init__(self, ctx: StageContext, job: Backup, poll_seconds: float = 1.0) -> None:
        self.ctx, self.job, self.poll_seconds = ctx, job, poll_seconds
        self.sent: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backup-while-packing", daemon=True)

    def final(self) -> list[str]:
        """What is final and not sent yet: verified archives, and the outputs each recorded pack vouches for."""
        root, ready = self.ctx.paths.root, []
        for spec in self.ctx.dataset.files():
            if fetched(self.ctx.paths.archives, spec):
                ready.append((self.ctx.paths.archives / spec.name).relative_to(root).as_posix())
        for split in SPLITS:
            ready += list((self.ctx.markers.info(pack_marker(split)) or {}).get("fingerprints", {}))
        return [relpath for relpath in ready if backed_up(relpath) and relpath not in self.sent]

    def _run(self) -> None:
        remote = None
        try:
            while not self._stop.wait(self.poll_seconds):
                todo = self.final()
                if not todo:
                    continue
                remote = self.job.remote() if remote is None else remote  # listed once: we know what we sent since
                self.job.send([local_file(self.ctx.paths.root, relpath) for relpath in todo], remote, STAGE)
                self.sent.update(todo)
        except Exception as e:  # the backup stage sends what this did not
            log.warning("%s stopped: %s; the backup stage will send the rest", STAGE, e)

    def __enter__(self) -> BackgroundBackup:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if kind is None:  # the backup stage comes next: let the file in flight finish, never two senders at once
            self._thread.join()
