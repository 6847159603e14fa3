"""verify catches every kind of damage; the pure planning functions; the devkit parser."""

from __future__ import annotations

import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from bootstrap.common.errors import ArchiveError, PackError, VerifyError
from bootstrap.dataset.devkit import read_devkit
from bootstrap.dataset.naming import val_position, wnid_of_class_tar
from bootstrap.dataset.streams import Item
from bootstrap.pack.plan import bucket_of, part_names, shuffle_bucket
from bootstrap.pack.sinks import RecordSink, move_into
from bootstrap.pack.verify import verify_split
from scripts.synthetic_imagenet import DEVKIT, Generated, add_member
from tests.fixtures.paths import GOLDEN


@pytest.fixture
def packed_dir(tmp_path: Path) -> Path:
    sink = RecordSink(tmp_path / "work", "train", parts=1)
    image = (GOLDEN / "tiny.jpg").read_bytes()
    for i in range(20):
        sink.add(Item(i, i % 4, f"n0000000{i % 4}/x_{i}.JPEG", image))
    move_into(tmp_path / "work", tmp_path / "out", sink.close())
    return tmp_path / "out"


def _verify(directory: Path, expected: int = 20) -> None:
    verify_split(directory, "train", parts=1, classes=4, expected=expected, sample_every=1)


def test_clean_output_verifies(packed_dir: Path) -> None:
    _verify(packed_dir)


def _damage_rec(d: Path) -> None:
    data = bytearray((d / "train.rec").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xde\xad\xbe\xef" * 2
    (d / "train.rec").write_bytes(bytes(data))


def _shift_idx(d: Path, line: int, by: int) -> None:
    pairs = [entry.split("\t") for entry in (d / "train.idx").read_text().splitlines()]
    (d / "train.idx").write_text(
        "".join(f"{k}\t{int(o) + (by if n == line else 0)}\n" for n, (k, o) in enumerate(pairs))
    )


DAMAGE = {
    "flipped bytes in the .rec": _damage_rec,
    "truncated .rec": lambda d: (d / "train.rec").write_bytes((d / "train.rec").read_bytes()[:-10]),
    "idx offset off by 4": lambda d: _shift_idx(d, line=3, by=4),
    "extra idx line": lambda d: (d / "train.idx").write_text((d / "train.idx").read_text() + "99\t0\n"),
    "lst label differs": lambda d: (d / "train.lst").write_text(
        (d / "train.lst").read_text().replace("\t1.000000\t", "\t2.000000\t", 1)
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_caught(packed_dir: Path, damage: str) -> None:
    DAMAGE[damage](packed_dir)
    with pytest.raises(VerifyError):
        _verify(packed_dir)


def test_count_mismatch_is_caught(packed_dir: Path) -> None:
    with pytest.raises(VerifyError, match="holds 20 records but 21 were packed"):
        _verify(packed_dir, expected=21)


def test_shuffle_is_a_seeded_permutation() -> None:
    items = list(range(1000))
    once = shuffle_bucket(items, seed=100, bucket=3)
    assert sorted(once) == items and once != items
    assert shuffle_bucket(items, 100, 3) == once and shuffle_bucket(items, 101, 3) != once


def test_buckets_are_even() -> None:
    counts = Counter(bucket_of(i, seed=100, buckets=16) for i in range(160_000))
    assert len(counts) == 16 and max(counts.values()) < 10_000 * 1.05 and min(counts.values()) > 10_000 * 0.95


def test_names() -> None:
    assert [p.rec for p in part_names("train", 1)] == ["train.rec"]
    assert [p.idx for p in part_names("val", 2)] == ["val_0.idx", "val_1.idx"]
    assert val_position("ILSVRC2012_val_00000042.JPEG") == 41 and val_position("x.JPEG") is None
    assert wnid_of_class_tar("n01440764.tar") == "n01440764" and wnid_of_class_tar("../n0.tar") is None


def test_devkit_keeps_leaves_in_wnid_order(archives: Generated) -> None:
    devkit = read_devkit(archives.root / DEVKIT)
    assert [c.wnid for c in devkit.classes] == sorted(archives.wnids)  # the 3 parent synsets are dropped
    assert [c.label for c in devkit.classes] == list(range(len(archives.wnids)))
    assert [c.ilsvrc_id for c in devkit.classes] != sorted(c.ilsvrc_id for c in devkit.classes)
    positions = {val_position(name): wnid for name, wnid in archives.val_files.items()}
    assert devkit.val_wnids == [positions[i] for i in range(len(positions))]


def test_devkit_with_bad_ground_truth_is_refused(archives: Generated, tmp_path: Path) -> None:
    with tarfile.open(archives.root / DEVKIT) as src:
        meta = src.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()  # type: ignore[union-attr]
    bad = tmp_path / DEVKIT
    with tarfile.open(bad, "w:gz") as tar:
        add_member(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta)
        add_member(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", b"1\n9999\n")
    with pytest.raises(ArchiveError, match="line 2 holds '9999'"):
        read_devkit(bad)
    shutil.copy(archives.root / "dataset.json", tmp_path / "not-a-devkit.tar.gz")
    with pytest.raises(ArchiveError, match="cannot read the devkit"):
        read_devkit(tmp_path / "not-a-devkit.tar.gz")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        add_member(tar, "readme.txt", b"")
    with pytest.raises(ArchiveError, match=r"no data/meta\.mat"):
        read_devkit(empty)


def test_a_sink_file_shorter_than_its_checkpoint_is_refused_not_zero_filled(tmp_path: Path) -> None:
    sink = RecordSink(tmp_path / "work", "val", parts=1)
    sink.add(Item(1, 0, "n0/a.JPEG", b"\xff\xd8\xff" * 10))
    state = sink.sync()
    sink.close()
    (tmp_path / "work" / "val.rec").write_bytes(b"")  # lost, e.g. moved away by a crashed finish
    with pytest.raises(PackError, match="its checkpoint says"):
        RecordSink(tmp_path / "work", "val", parts=1, state=state)


def test_moving_outputs_into_place_can_be_repeated_after_a_crash(tmp_path: Path) -> None:
    src, dest = tmp_path / "work", tmp_path / "out"
    src.mkdir()
    for name in ("a.rec", "a.idx"):
        (src / name).write_text(name)
    move_into(src, dest, ["a.rec"])  # a crash after the first move...
    move_into(src, dest, ["a.rec", "a.idx"])  # ...and the resumed run moves the rest
    assert sorted(p.name for p in dest.iterdir()) == ["a.idx", "a.rec"]
    with pytest.raises(PackError, match="neither in"):
        move_into(src, dest, ["missing.lst"])
