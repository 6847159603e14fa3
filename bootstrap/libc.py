"""Two Linux process settings the packer needs, set through glibc.

Both are best effort: on a libc without them the packer still works, with
orphaned workers possible after a SIGKILL and slower-settling memory.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def die_with_parent() -> None:
    """Exit when our parent dies, even by SIGKILL, instead of waiting forever as an orphan."""
    parent = os.getppid()
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent or parent == 1:  # the parent was already gone
        os._exit(1)


def pin_mmap_threshold(threshold: int = 128 << 10) -> None:
    """Serve every allocation above ``threshold`` with mmap, and stop glibc raising it.

    By default glibc raises the threshold each time a large block is freed,
    after which image-sized buffers come from the heap, fragment it, and the
    resident size creeps up with the number of images processed.  Call it
    early: settings made after the heap has grown help less.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)  # raised along with it; give freed heap back
