"""Pack one split into RecordIO in a single sequential pass over its archive.

Pass one streams the archive (``streams``), sends batches of images to one
worker process per core, and writes results in stream order: straight into
the .rec/.idx/.lst when the split is not shuffled, or scattered into bucket
files when it is.  Pass two (shuffled splits only) reads one bucket at a
time, shuffles it with a seeded RNG and appends it to the outputs, so memory
stays bounded by one bucket whatever the dataset size.

Both passes checkpoint: the sinks' byte lengths plus the stream cursor (pass
one) or the next bucket (pass two).  A run killed at any moment truncates
back to its last checkpoint and continues, and the result is byte-identical
to a run that was never interrupted.  Outputs are built under the work
directory and moved into place only when complete.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import select
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ArchiveError, DiskFullError, PackError
from bootstrap.common.progress import Progress, StatusFile, human_bytes
from bootstrap.common.state import Markers, atomic_write_json, read_json
from bootstrap.dataset.streams import END, Cursor, Item, StreamFactory
from bootstrap.pack.imaging import ImageError, ImageOptions, transcode
from bootstrap.pack.plan import bucket_count, failure_rate_exceeded, shuffle_bucket
from bootstrap.pack.sinks import BucketWriter, FailureLog, RecordSink, move_into, read_bucket

log = logging.getLogger(__name__)

BATCH_BYTES = 8 << 20


@dataclass(frozen=True)
class PackOptions:
    image: ImageOptions = field(default_factory=ImageOptions)
    workers: int = 0
    """Transcoding processes; 0 means one per CPU."""
    shuffle: bool = True
    seed: int = 100
    parts: int = 1
    bucket_bytes: int = 128 << 20
    batch_images: int = 32
    checkpoint_seconds: float = 30.0
    max_failure_rate: float = 0.001

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass
class PackReport:
    split: str
    packed: int = 0
    failed: int = 0
    outputs: list[str] = field(default_factory=list)
    failures_file: str = ""
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.packed + self.failed


# -- worker side -------------------------------------------------------------------

_worker_options: ImageOptions | None = None


def _worker_pool(workers: int, options: ImageOptions) -> ProcessPoolExecutor:
    """Workers forked from a clean fork server, never from this process.

    Forking a process whose OpenCV thread pool (or any other thread) is live
    can deadlock the child; the fork server has imported cv2 but run nothing.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bootstrap.pack.packer"])
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


def _transcode_batch(images: list[bytes]) -> list[tuple[bool, bytes | str]]:
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


# -- main side ---------------------------------------------------------------------


@dataclass
class _Batch:
    future: Future[list[tuple[bool, bytes | str]]]
    items: list[tuple[int, int, str]]


class _SplitPacker:
    def __init__(
        self,
        split: str,
        stream: StreamFactory,
        *,
        estimated_bytes: int,
        expected: int | None,
        out_dir: Path,
        work_dir: Path,
        opts: PackOptions,
        status: StatusFile | None,
        on_image: Callable[[Item], None] | None,
    ) -> None:
        self.split, self.stream, self.expected = split, stream, expected
        self.out_dir, self.work, self.opts = out_dir, work_dir, opts
        self.status, self.on_image = status, on_image
        self.ckpt_path = work_dir / "checkpoint.json"
        self.failures_path = work_dir / f"failures_{split}.tsv"
        self.buckets = bucket_count(estimated_bytes, opts.bucket_bytes) if opts.shuffle else 0
        self._last_ckpt = time.monotonic()

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.ckpt_path, state)
        self._last_ckpt = time.monotonic()

    # pass one -------------------------------------------------------------------

    def pass_one(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        state: dict[str, Any]
        if saved is None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(parents=True)
            state = {"phase": 1, "cursor": None, "packed": 0, "failed": 0, "buckets": self.buckets}
            sink_state = failures_len = None
        else:
            state = saved
            log.info("%s: resuming pass one at image %d", self.split, state["cursor"]["next_id"])
            self.buckets = state["buckets"]
            sink_state, failures_len = state["sink"], state["failures"]
        sink: RecordSink | BucketWriter
        if self.opts.shuffle:
            lengths = sink_state["lengths"] if sink_state else None
            sink = BucketWriter(self.work / "buckets", self.buckets, self.opts.seed, lengths)
        else:
            sink = RecordSink(self.work / "out", self.split, self.opts.parts, sink_state)
        failures = FailureLog(self.failures_path, failures_len)
        counts = {"packed": state["packed"], "failed": state["failed"]}
        cursor = Cursor(**state["cursor"]) if state["cursor"] else None

        def checkpoint(at: Cursor) -> dict[str, Any]:
            new = {**state, **counts, "cursor": asdict(at), "sink": sink.sync(), "failures": failures.sync()}
            self._save(new)
            return new

        progress = Progress(
            f"pack {self.split}", self.expected, "images", status=self.status, done=sum(counts.values())
        )
        window: deque[_Batch | Cursor] = deque()
        workers = self.opts.worker_count()
        batch: list[Item] = []
        batch_bytes = 0
        in_flight = 0  # batches in the window (cursors are free)

        def settle(entry: _Batch | Cursor) -> None:
            nonlocal state, in_flight
            if isinstance(entry, Cursor):
                if entry.offset == END:
                    self._check_count(counts["packed"] + counts["failed"])
                if entry.offset == END or time.monotonic() - self._last_ckpt >= self.opts.checkpoint_seconds:
                    state = checkpoint(entry)
                return
            for (record_id, label, relpath), (ok, value) in zip(entry.items, entry.future.result(), strict=True):
                if ok:
                    assert isinstance(value, bytes)
                    sink.add(record_id, label, relpath, value)
                    counts["packed"] += 1
                else:
                    failures.add(record_id, relpath, str(value))
                    counts["failed"] += 1
                    log.warning("%s: cannot pack %s: %s", self.split, relpath, value)
            in_flight -= 1
            progress.advance(len(entry.items))

        with _worker_pool(workers, self.opts.image) as pool:

            def submit() -> None:
                nonlocal batch, batch_bytes, in_flight
                if batch:
                    in_flight += 1
                    future = pool.submit(_transcode_batch, [i.data for i in batch])
                    window.append(_Batch(future, [(i.id, i.label, i.relpath) for i in batch]))
                    batch, batch_bytes = [], 0

            for obj in self.stream(cursor):
                if isinstance(obj, Cursor):
                    submit()
                    window.append(obj)
                else:
                    if self.on_image is not None:
                        self.on_image(obj)
                    batch.append(obj)
                    batch_bytes += len(obj.data)
                    if len(batch) >= self.opts.batch_images or batch_bytes >= BATCH_BYTES:
                        submit()
                while in_flight > 2 * workers:
                    settle(window.popleft())
            submit()
            while window:
                settle(window.popleft())
        failures.close()
        if isinstance(sink, BucketWriter):
            sink.close()
        progress.finish()
        return state

    def _check_count(self, seen: int) -> None:
        if self.expected is not None and seen != self.expected:
            raise ArchiveError(
                f"{self.split}: the archive holds {seen:,} images but the dataset table promises "
                f"{self.expected:,}; the archive or the table is wrong (nothing was marked done)"
            )

    # pass two -------------------------------------------------------------------

    def pass_two(self, state: dict[str, Any]) -> dict[str, Any]:
        if state["phase"] == 1:
            state = {**state, "phase": 2, "next_bucket": 0, "out": None}
            self._save(state)
        sink = RecordSink(self.work / "out", self.split, self.opts.parts, state["out"])
        writer_dir = self.work / "buckets"
        progress = Progress(f"shuffle {self.split}", state["buckets"], "buckets", status=self.status,
                            done=state["next_bucket"])  # fmt: skip
        for b in range(state["next_bucket"], state["buckets"]):
            path = writer_dir / f"bucket-{b:05d}.bin"
            for entry in shuffle_bucket(list(read_bucket(path)), self.opts.seed, b):
                sink.add(entry.id, entry.label, entry.relpath, entry.image)
            state = {**state, "next_bucket": b + 1, "out": sink.sync()}
            self._save(state)
            progress.advance()
        progress.finish()
        return {**state, "sink": state["out"]}

    # both -----------------------------------------------------------------------

    def run(self) -> PackReport:
        start = time.monotonic()
        state = read_json(self.ckpt_path)
        if state is None or (state["phase"] == 1 and (state["cursor"] or {}).get("offset") != END):
            state = self.pass_one(state)
        if state["phase"] != "finishing":
            if self.opts.shuffle:
                state = self.pass_two(state)
            names = RecordSink(self.work / "out", self.split, self.opts.parts, state["sink"]).close()
            state = {**state, "phase": "finishing", "outputs": names}
            self._save(state)
        # Moving into place is the last step; a run killed part-way through it moves the rest.
        move_into(self.work / "out", self.out_dir, state["outputs"])
        move_into(self.work, self.out_dir, [self.failures_path.name])
        seconds = round(time.monotonic() - start, 1)
        return PackReport(
            self.split, state["packed"], state["failed"], state["outputs"], self.failures_path.name, seconds
        )


def pack_split(
    split: str,
    stream: StreamFactory,
    *,
    estimated_bytes: int,
    expected: int | None,
    out_dir: Path,
    work_dir: Path,
    opts: PackOptions,
    markers: Markers,
    status: StatusFile | None = None,
    on_image: Callable[[Item], None] | None = None,
) -> PackReport:
    """Pack ``split`` unless already done; then apply the failure threshold to its report."""
    marker = f"pack-{split}"
    info = markers.info(marker)
    if info is not None:
        report = PackReport(**info)
        log.info("%s: already packed (%d images, %d failed)", split, report.packed, report.failed)
    else:
        try:
            report = _SplitPacker(
                split,
                stream,
                estimated_bytes=estimated_bytes,
                expected=expected,
                out_dir=out_dir,
                work_dir=work_dir,
                opts=opts,
                status=status,
                on_image=on_image,
            ).run()
        except OSError as e:
            if e.errno == errno.ENOSPC:
                free = shutil.disk_usage(work_dir).free if work_dir.exists() else 0
                raise DiskFullError(
                    f"{split}: no space left while packing under {work_dir} (free {human_bytes(free)}); "
                    "free space or grow the volume and run again: packing resumes from its last checkpoint"
                ) from None
            raise
        markers.mark(marker, asdict(report))
        shutil.rmtree(work_dir, ignore_errors=True)
        log.info("%s: packed %d images (%d failed) in %.1fs", split, report.packed, report.failed, report.seconds)
    if failure_rate_exceeded(report.failed, report.total, opts.max_failure_rate):
        raise PackError(
            f"{split}: {report.failed} of {report.total} images could not be packed "
            f"({report.failed / report.total:.3%}, above the {opts.max_failure_rate:.3%} limit); they are listed "
            f"with reasons in {out_dir / report.failures_file}. Replace them, or accept them with a higher "
            "--max-failure-rate (the packed output is kept, nothing is redone)"
        )
    return report
