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
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ArchiveError, DiskFullError, PackError, SettingsChangedError
from bootstrap.common.progress import Progress, StatusFile, human_bytes
from bootstrap.common.state import atomic_write_json, read_state
from bootstrap.dataset.streams import END, Cursor, Item, StreamFactory
from bootstrap.layout import PackWorkDir, bucket_file
from bootstrap.pack.imaging import ImageOptions
from bootstrap.pack.plan import bucket_count, failure_rate_exceeded, shuffle_bucket
from bootstrap.pack.sinks import BucketWriter, FailureLog, OutputSink, move_into, read_bucket
from bootstrap.pack.workers import transcode_batch, worker_pool
from bootstrap.settings import default, differences

log = logging.getLogger(__name__)

BATCH_BYTES = 8 << 20


@dataclass(frozen=True)
class PackOptions:
    image: ImageOptions = field(default_factory=ImageOptions)
    workers: int = default("workers")
    """Transcoding processes; 0 means one per CPU."""
    shuffle: bool = default("shuffle_train")
    seed: int = default("seed")
    parts: int = default("parts")
    shard_bytes: int = 0
    """WebDataset shards of about this size next to the records; 0: none."""
    bucket_bytes: int = default("bucket_mib") << 20
    batch_images: int = 32
    checkpoint_seconds: float = default("checkpoint_seconds")
    max_failure_rate: float = default("max_failure_rate")

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass
class PackReport:
    split: str
    packed: int = 0
    failed: int = 0
    outputs: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    """The WebDataset shards and their index (in ``SplitJob.shard_dir``)."""
    failures_file: str = ""
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.packed + self.failed


# -- main side ---------------------------------------------------------------------


@dataclass
class _Batch:
    future: Future[list[tuple[bool, bytes | str]]]
    items: list[Item]
    """The batch's records without their image bytes (the workers have those)."""


class _PassOne:
    """Pass one's moving parts: the sink, the failure log, the counts, and the window of batches in flight.

    Results are applied in stream order, so a checkpoint taken at a cursor
    covers exactly the images before it, whichever worker finished first.
    """

    def __init__(self, packer: _SplitPacker, saved: dict[str, Any] | None) -> None:
        self.packer, opts = packer, packer.opts
        work = packer.work
        if saved is None:
            shutil.rmtree(work.root, ignore_errors=True)
            work.root.mkdir(parents=True)
            self.state: dict[str, Any] = {
                "phase": 1,
                "cursor": None,
                "packed": 0,
                "failed": 0,
                "buckets": packer.buckets,
                "settings": packer.settings,
            }
            sink_state, failures_len = None, None
        else:
            self.state = saved
            log.info("%s: resuming pass one at image %d", packer.split, saved["cursor"]["next_id"])
            packer.buckets = saved["buckets"]
            sink_state, failures_len = saved["sink"], saved["failures"]
        self.sink: OutputSink | BucketWriter
        if opts.shuffle:
            lengths = sink_state["lengths"] if sink_state else None
            self.sink = BucketWriter(work.buckets, packer.buckets, opts.seed, lengths)
        else:
            self.sink = packer.output_sink(sink_state)
        self.failures = FailureLog(work.failures, failures_len)
        self.counts = {"packed": self.state["packed"], "failed": self.state["failed"]}
        self.progress = Progress(f"pack {packer.split}", packer.expected, "images", status=packer.status,
                                 done=sum(self.counts.values()))  # fmt: skip
        self.window: deque[_Batch | Cursor] = deque()
        self.in_flight = 0  # batches in the window (cursors are free)
        self.batch: list[Item] = []
        self.batch_bytes = 0

    @property
    def start(self) -> Cursor | None:
        return Cursor(**self.state["cursor"]) if self.state["cursor"] else None

    def take(self, pool: ProcessPoolExecutor, obj: Item | Cursor) -> None:
        """One object of the stream: an image joins the current batch, a cursor closes it."""
        if isinstance(obj, Cursor):
            self.submit(pool)
            self.window.append(obj)
            return
        self.batch.append(obj)
        self.batch_bytes += len(obj.data)
        if len(self.batch) >= self.packer.opts.batch_images or self.batch_bytes >= BATCH_BYTES:
            self.submit(pool)

    def submit(self, pool: ProcessPoolExecutor) -> None:
        if self.batch:
            self.in_flight += 1
            future = pool.submit(transcode_batch, [i.data for i in self.batch])
            self.window.append(_Batch(future, [replace(i, data=b"") for i in self.batch]))
            self.batch, self.batch_bytes = [], 0

    def settle(self, limit: int = 0) -> None:
        """Apply results in stream order until at most ``limit`` batches are in flight."""
        while self.window and (self.in_flight > limit or isinstance(self.window[0], Cursor)):
            entry = self.window.popleft()
            if isinstance(entry, Cursor):
                self._reached(entry)
            else:
                self._apply(entry)

    def _reached(self, cursor: Cursor) -> None:
        if cursor.offset == END:
            self.packer.check_count(self.counts["packed"] + self.counts["failed"])
        if (
            cursor.offset == END
            or time.monotonic() - self.packer.last_checkpoint >= self.packer.opts.checkpoint_seconds
        ):
            self.state = {**self.state, **self.counts, "cursor": asdict(cursor), "sink": self.sink.sync(),
                          "failures": self.failures.sync()}  # fmt: skip
            self.packer.save(self.state)

    def _apply(self, batch: _Batch) -> None:
        for item, (ok, value) in zip(batch.items, batch.future.result(), strict=True):
            if ok:
                assert isinstance(value, bytes)
                packed = replace(item, data=value)
                self.sink.add(packed)
                if self.packer.on_image is not None:
                    self.packer.on_image(packed)
                self.counts["packed"] += 1
            else:
                self.failures.add(item.id, item.relpath, str(value))
                self.counts["failed"] += 1
                log.warning("%s: cannot pack %s: %s", self.packer.split, item.relpath, value)
        self.in_flight -= 1
        self.progress.advance(len(batch.items))

    def close(self) -> None:
        self.failures.close()
        if isinstance(self.sink, BucketWriter):
            self.sink.close()
        self.progress.finish()


@dataclass(frozen=True)
class SplitJob:
    """One split to pack: where its images come from and where its records go."""

    split: str
    stream: StreamFactory
    estimated_bytes: int
    """The archive's size, from which the number of shuffle buckets follows."""
    expected: int | None
    out_dir: Path
    """Where the records go (the WebDataset shards go to ``shard_dir``)."""
    work: PackWorkDir
    opts: PackOptions
    status: StatusFile | None = None
    on_image: Callable[[Item], None] | None = None
    """Sees every packed image as stored in its record, in archive order, and never a failed one (the class
    tree: what ImageFolder reads must decode). A resume replays everything after the last checkpoint."""
    settings: dict[str, Any] = field(default_factory=dict)
    """What shapes the output (recorded in the checkpoint: a resume with others is refused)."""
    rebuild: bool = False
    """A checkpoint made with other settings is thrown away instead of refused."""
    shard_dir: Path | None = None


class _SplitPacker:
    def __init__(self, job: SplitJob) -> None:
        self.split, self.stream, self.expected = job.split, job.stream, job.expected
        self.out_dir, self.work, self.opts = job.out_dir, job.work, job.opts
        self.status, self.on_image = job.status, job.on_image
        self.settings, self.rebuild, self.shard_dir = job.settings, job.rebuild, job.shard_dir
        self.buckets = bucket_count(job.estimated_bytes, job.opts.bucket_bytes) if job.opts.shuffle else 0
        self.last_checkpoint = time.monotonic()

    def output_sink(self, state: dict[str, Any] | None) -> OutputSink:
        return OutputSink(self.work.out, self.split, self.opts.parts, self.opts.shard_bytes, state)

    def save(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.work.checkpoint, state)
        self.last_checkpoint = time.monotonic()

    def pass_one(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        one = _PassOne(self, saved)
        workers = self.opts.worker_count()
        with worker_pool(workers, self.opts.image) as pool:
            for obj in self.stream(one.start):
                one.take(pool, obj)
                one.settle(limit=2 * workers)
            one.submit(pool)
            one.settle()
        one.close()
        return one.state

    def check_count(self, seen: int) -> None:
        if self.expected is not None and seen != self.expected:
            raise ArchiveError(
                f"{self.split}: the archive holds {seen:,} images but the dataset table promises "
                f"{self.expected:,}; the archive or the table is wrong (nothing was marked done)"
            )

    def pass_two(self, state: dict[str, Any]) -> dict[str, Any]:
        if state["phase"] == 1:
            state = {**state, "phase": 2, "next_bucket": 0, "out": None}
            self.save(state)
        sink = self.output_sink(state["out"])
        progress = Progress(f"shuffle {self.split}", state["buckets"], "buckets", status=self.status,
                            done=state["next_bucket"])  # fmt: skip
        for b in range(state["next_bucket"], state["buckets"]):
            for item in shuffle_bucket(list(read_bucket(bucket_file(self.work.buckets, b))), self.opts.seed, b):
                sink.add(item)
            state = {**state, "next_bucket": b + 1, "out": sink.sync()}
            self.save(state)
            progress.advance()
        progress.finish()
        return {**state, "sink": state["out"]}

    def _checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume from: none when there is none or it is unreadable; refused when it was made with
        other settings (unless rebuilding)."""
        state = read_state(self.work.checkpoint)
        if state is not None and not _resumable(state):
            log.warning("%s: %s is not a checkpoint this version wrote; packing the split again", self.split,
                        self.work.checkpoint)  # fmt: skip
            return None
        changed = differences(state.get("settings") if state else None, self.settings)
        if changed and not self.rebuild:
            raise SettingsChangedError(
                f"{self.split}: a pack made with other settings is half done in {self.work.root} "
                f"({'; '.join(changed)}); run again with --rebuild-from pack to start it over with these "
                "settings, or go back to the ones it was started with"
            )
        if changed:
            log.warning("%s: starting over with the new settings (%s)", self.split, "; ".join(changed))
            return None
        return dict(state) if state is not None else None

    def run(self) -> PackReport:
        start = time.monotonic()
        state = self._checkpoint()
        if state is None or (state["phase"] == 1 and (state["cursor"] or {}).get("offset") != END):
            state = self.pass_one(state)
        if state["phase"] != "finishing":
            if self.opts.shuffle:
                state = self.pass_two(state)
            state = {**state, "phase": "finishing", "outputs": self.output_sink(state["sink"]).close()}
            self.save(state)
        # Moving into place is the last step; a run killed part-way through it moves the rest.
        outputs = state["outputs"]
        move_into(self.work.out, self.out_dir, outputs["recordio"])
        if outputs["webdataset"]:
            assert self.shard_dir is not None
            move_into(self.work.out, self.shard_dir, outputs["webdataset"])
        move_into(self.work.root, self.out_dir, [self.work.failures.name])
        seconds = round(time.monotonic() - start, 1)
        return PackReport(self.split, state["packed"], state["failed"], outputs["recordio"], outputs["webdataset"],
                          self.work.failures.name, seconds)  # fmt: skip


_PHASE_KEYS = {1: ("cursor", "packed", "failed", "buckets"), 2: ("next_bucket", "out", "packed", "failed"),
               "finishing": ("outputs", "packed", "failed")}  # fmt: skip


def _resumable(state: Any) -> bool:
    if not isinstance(state, dict) or not all(k in state for k in _PHASE_KEYS.get(state.get("phase"), ("?",))):
        return False
    return state["phase"] != "finishing" or isinstance(state["outputs"], dict)  # a list: before the formats


def pack_split(job: SplitJob, done: PackReport | None, record: Callable[[PackReport], None]) -> PackReport:
    """Pack ``job.split`` unless ``done``; ``record`` it once packed; then apply the failure threshold."""
    split, work, opts, out_dir = job.split, job.work, job.opts, job.out_dir
    if done is not None:
        report = done
        log.info("%s: already packed (%d images, %d failed)", split, report.packed, report.failed)
    else:
        try:
            report = _SplitPacker(job).run()
        except OSError as e:
            if e.errno == errno.ENOSPC:
                free = shutil.disk_usage(work.root).free if work.root.exists() else 0
                raise DiskFullError(
                    f"{split}: no space left while packing under {work.root} (free {human_bytes(free)}); "
                    "free space or grow the volume and run again: packing resumes from its last checkpoint"
                ) from None
            raise
        record(report)
        shutil.rmtree(work.root, ignore_errors=True)
        log.info("%s: packed %d images (%d failed) in %.1fs", split, report.packed, report.failed, report.seconds)
    if failure_rate_exceeded(report.failed, report.total, opts.max_failure_rate):
        raise PackError(
            f"{split}: {report.failed} of {report.total} images could not be packed "
            f"({report.failed / report.total:.3%}, above the {opts.max_failure_rate:.3%} limit); they are listed "
            f"with reasons in {out_dir / report.failures_file}. Replace them, or accept them with a higher "
            "--max-failure-rate (the packed output is kept, nothing is redone)"
        )
    return report
