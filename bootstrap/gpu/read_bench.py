"""``python -m bootstrap bench-read``: how fast the mounted dataset gives up its records.

Training reads records either in file order (DALI and sequential readers, in
large blocks) or in random order by index (a map-style dataset shuffling every
epoch).  This reads one split's ``.rec`` both ways through its ``.idx``, as a
loader would, after dropping the file from the page cache, and reports
records/s and MiB/s, so a user can check on a real instance that the restored
volume keeps up with the GPUs (``python -m scripts plan`` says what they need).
Needs nothing but the standard library.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bootstrap.common.errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class ReadRate:
    order: str
    records: int
    bytes: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MIB / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "records_per_s": round(self.records_per_s, 1), "mib_per_s": round(self.mib_per_s, 1)}


def record_spans(idx: Path, rec_size: int) -> list[tuple[int, int]]:
    """(offset, length) of every record: the idx's offsets, sorted, each running to the next (the last to EOF)."""
    offsets = sorted(int(line.split("\t")[1]) for line in idx.read_text().splitlines() if line.strip())
    ends = [*offsets[1:], rec_size]
    return [(start, end - start) for start, end in zip(offsets, ends, strict=True)]


def _uncached(fd: int) -> None:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # measure the volume, not the page cache


def read_rate(rec: Path, idx: Path, order: str, *, seconds: float = 10.0, seed: int = 0) -> ReadRate:
    """Read records of ``rec`` in ``order`` (sequential or random) for up to ``seconds`` or all of them."""
    spans = record_spans(idx, rec.stat().st_size)
    if order == "random":
        random.Random(seed).shuffle(spans)
    fd = os.open(rec, os.O_RDONLY)
    try:
        _uncached(fd)
        started, total, count = time.monotonic(), 0, 0
        for offset, length in spans:
            total += len(os.pread(fd, length, offset))
            count += 1
            if time.monotonic() - started >= seconds:
                break
        return ReadRate(order, count, total, time.monotonic() - started)
    finally:
        os.close(fd)


def bench_read(recordio: Path, split: str = "train", seconds: float = 10.0) -> dict[str, Any]:
    rec, idx = recordio / f"{split}.rec", recordio / f"{split}.idx"
    if not rec.exists() or not idx.exists():
        raise ConfigError(f"{rec} or its .idx is missing: is the dataset mounted (python -m bootstrap attach)?")
    rates = [read_rate(rec, idx, order, seconds=seconds) for order in ("sequential", "random")]
    return {"rec": str(rec), **{r.order: r.as_dict() for r in rates}}
