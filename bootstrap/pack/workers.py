"""The packer's transcoding processes: a pool forked from a clean fork server, one batch of images per task."""

from __future__ import annotations

import multiprocessing
import os
import select
import threading
from concurrent.futures import ProcessPoolExecutor

from bootstrap.pack.imaging import ImageError, ImageOptions, transcode

_worker_options: ImageOptions | None = None


def worker_pool(workers: int, options: ImageOptions) -> ProcessPoolExecutor:
    """Workers forked from a clean fork server, never from this process.

    Forking a process whose OpenCV thread pool (or any other thread) is live
    can deadlock the child; the fork server has imported cv2 but run nothing.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bootstrap.pack.workers"])
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(options, os.getpid())
    )


def _exit_when_gone(pid: int) -> None:
    """Block until process ``pid`` ends, then end this one.

    A worker's parent is the fork server, not the packer, and every worker
    holds pipes that keep the fork server and its own task queue open; if the
    packer is killed with SIGKILL nothing else would ever tell the workers.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    select.select([fd], [], [])  # a pidfd becomes readable when the process exits
    os._exit(1)


def _init_worker(options: ImageOptions, packer_pid: int) -> None:
    global _worker_options
    import cv2

    threading.Thread(target=_exit_when_gone, args=(packer_pid,), name="watch-packer", daemon=True).start()
    cv2.setNumThreads(1)  # one process per core already
    _worker_options = options


def transcode_batch(images: list[bytes]) -> list[tuple[bool, bytes | str]]:
    assert _worker_options is not None
    results: list[tuple[bool, bytes | str]] = []
    for data in images:
        try:
            results.append((True, transcode(data, _worker_options)))
        except ImageError as e:
            results.append((False, str(e)))
        except Exception as e:  # a decoder bug must not kill the run; list the image instead
            results.append((False, f"unexpected {type(e).__name__}: {e}"))
    return results
