"""Errors of the filesystem itself (full, read-only, permission), as one line that names the path and the fix."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from bootstrap.common.errors import DiskFullError, StorageError
from bootstrap.common.progress import human_bytes

STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _free(path: Path) -> str:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return human_bytes(shutil.disk_usage(candidate).free)
    return "unknown"


def storage_error(e: OSError, doing: str = "") -> StorageError | None:
    """``e`` as a ``StorageError`` that says what to do, or None when it is another kind of error."""
    if e.errno not in STORAGE_ERRNOS:
        return None
    path = Path(e.filename) if e.filename else None
    where = f"{path}" if path else "the data directory"
    what = f" while {doing}" if doing else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free(path) if path else "unknown"
        return DiskFullError(f"no space left on the filesystem of {where}{what} (free: {free}); free space or grow "
                             "the volume, then run again: every stage resumes where it stopped")  # fmt: skip
    if e.errno == errno.EROFS:
        return StorageError(
            f"{where} is on a read-only filesystem{what}; use a writable data directory "
            "(GPU instances mount /data read-only: only status and verify --read-only run there)"
        )
    owner = ""
    if path is not None:
        for candidate in (path, *path.parents):
            if candidate.exists():
                owner = f" (it belongs to uid {candidate.stat().st_uid}; this is uid {os.geteuid()})"
                break
    return StorageError(f"permission denied on {where}{what}{owner}; run as the data directory's owner, or give "
                        "this user write access")  # fmt: skip
