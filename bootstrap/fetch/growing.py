"""Read an archive while it downloads: as far as its contiguous prefix of finished ranges reaches.

The downloader preallocates ``.NAME.part``, writes ranges into it and, after
each range's ``fdatasync``, records it in ``.NAME.part.json``.  The ranges
from the start that are all done form the prefix a reader may trust; a read
past it waits until the prefix grows, or the verified file replaces the
partial one (then everything is there), or the download fails (then the
reader fails with it).  The bytes are only known right when the MD5 matches
at the end, so whatever was made from them is accepted only then
(``bootstrap.engine.following``).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from typing import Any

from bootstrap.common.errors import FetchError
from bootstrap.common.state import read_state
from bootstrap.layout import ArchiveDir


def contiguous_prefix(state: dict[str, Any] | None) -> int:
    """Bytes from the start covered by finished ranges, from a ``.part.json``; 0 without one."""
    if not state:
        return 0
    done, chunk, size = set(state.get("done", ())), int(state["chunk"]), int(state["size"])
    count = 0
    while count in done:
        count += 1
    return min(count * chunk, size)


class GrowingArchive(io.RawIOBase):
    """A read-only, seekable view of an archive that is being downloaded; reads past the prefix wait."""

    def __init__(self, archives: ArchiveDir, name: str, size: int, *, failure: Callable[[], BaseException | None],
                 poll_seconds: float = 0.2, sleep: Callable[[float], None] = time.sleep,
                 hold_tail: bool = False) -> None:  # fmt: skip
        """``hold_tail``: the last byte only once the file has verified, for a reader whose end makes something final
        (a multipart upload completes at its last part)."""
        super().__init__()
        self.archives, self.name, self.size, self.hold_tail = archives, name, size, hold_tail
        self.failure, self.poll_seconds, self.sleep = failure, poll_seconds, sleep
        self.pos = 0
        self.prefix = 0
        self.fd = self._open()

    def _check(self) -> None:
        error = self.failure()
        if error is not None:
            raise FetchError(f"{self.name}: its download failed while it was being read ({error})")

    def _open(self) -> int:
        """The verified file, else the partial one (it appears once the download starts)."""
        while True:
            for path in (self.archives.final(self.name), self.archives.partial(self.name)):
                try:
                    return os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            self._check()
            self.sleep(self.poll_seconds)

    def _same_file(self) -> None:
        """Still the file the download writes: one it started over (a new ``.part``) holds other bytes."""
        for path in (self.archives.final(self.name), self.archives.partial(self.name)):
            try:
                if os.stat(path).st_ino != os.fstat(self.fd).st_ino:
                    raise FetchError(f"{self.name}: the download started the file over while it was being read; "
                                     "run again")  # fmt: skip
                return
            except FileNotFoundError:
                continue

    def _refresh(self) -> None:
        self._same_file()
        if self.archives.final(self.name).exists():
            self.prefix = self.size  # renamed into place: downloaded in full (its MD5 is checked by then)
        else:
            self.prefix = max(self.prefix, contiguous_prefix(read_state(self.archives.partial_state(self.name))))
            if self.hold_tail:
                self.prefix = min(self.prefix, self.size - 1)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self.pos >= self.prefix and self.pos < self.size:
            self._refresh()
            if self.pos < self.prefix:
                break
            self._check()
            self.sleep(self.poll_seconds)
        if self.pos >= self.size:
            return 0
        data = os.pread(self.fd, min(len(view), self.prefix - self.pos), self.pos)
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()
