"""Pure decisions for packing: which label, which bucket, which order, which part, which names.

Nothing here touches a file.  Everything is a function of its arguments, so a
run that resumes from a checkpoint makes exactly the decisions the
interrupted run would have made, and the outputs are byte-identical.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_MASK = (1 << 64) - 1
MAX_BUCKETS = 512


def splitmix64(x: int) -> int:
    """A fast, well-mixed 64-bit hash (Vigna's splitmix64 finaliser)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def bucket_of(record_id: int, seed: int, buckets: int) -> int:
    """The scatter bucket of a record: uniform, independent of arrival order or restarts."""
    return splitmix64(splitmix64(seed) ^ record_id) % buckets


def bucket_count(estimated_bytes: int, bucket_bytes: int) -> int:
    """Enough buckets that each fits in memory, but few enough to keep every file open."""
    return max(1, min(MAX_BUCKETS, -(-estimated_bytes // bucket_bytes)))


def shuffle_bucket(entries: Sequence[T], seed: int, bucket: int) -> list[T]:
    """Entries of one bucket in their final order.

    Scattering records to uniformly random buckets and then shuffling each
    bucket uniformly gives a uniformly random permutation of the whole split
    with only one bucket in memory at a time.
    """
    order = list(entries)
    random.Random(f"{seed}:{bucket}").shuffle(order)
    return order


def part_of(position: int, parts: int) -> int:
    """Round-robin: part sizes differ by at most one and need no total up front."""
    return position % parts


@dataclass(frozen=True)
class PartNames:
    rec: str
    idx: str
    lst: str
    crc: str
    """One CRC-32 per record (RecordIO has no field for one), so verify can check every record's bytes."""

    @property
    def files(self) -> tuple[str, str, str, str]:
        return self.rec, self.idx, self.lst, self.crc


def part_names(split: str, parts: int) -> list[PartNames]:
    """``train.rec`` … for one part; ``train_0.rec`` … ``train_{N-1}.rec`` for N parts."""
    stems = [split] if parts == 1 else [f"{split}_{i}" for i in range(parts)]
    return [PartNames(f"{s}.rec", f"{s}.idx", f"{s}.lst", f"{s}.crc") for s in stems]


def global_idx_name(split: str) -> str:
    """One index over all parts of a split, offsets cumulative in part order (DALI's multi-file form)."""
    return f"{split}.global.idx"


def failure_rate_exceeded(failed: int, total: int, max_rate: float) -> bool:
    return total > 0 and failed / total > max_rate
