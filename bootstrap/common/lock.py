"""One writer per data directory: an exclusive ``flock`` held for the life of the process.

Two runs on one directory corrupt it (outputs renamed under each other,
bucket files shared).  Every stage that writes takes this lock first; a second
writer fails at once with a message naming the holder.  The lock is released
by the kernel when the process ends, however it ends (kill -9 included), so a
stale lock file never blocks anyone.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import IO

from bootstrap.common.errors import BusyError

LOCK_NAME = ".lock"


class DataDirLock:
    """``with DataDirLock(root):`` ... writes ... (the holder's pid and command are kept in the file)."""

    def __init__(self, root: Path, command: str | None = None) -> None:
        self.path = root / LOCK_NAME
        self.command = command or " ".join(["python -m bootstrap", *sys.argv[1:]])
        self._file: IO[str] | None = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
            return f"pid {info['pid']} ({info['command']}, since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def __enter__(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # held until __exit__
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise BusyError(f"{self.path.parent} is being written by {self.holder()}; wait for it to finish "
                            "(python -m bootstrap status shows where it is) or stop it first") from None  # fmt: skip
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "command": self.command, "since": time.time()}))
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
