"""Bad input gets a clear error and loses nothing: malicious archives, a full disk, bad config."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from bootstrap.common.errors import ArchiveError, ConfigError, DiskFullError
from bootstrap.engine import Engine
from bootstrap.settings import PrepConfig, load_config
from scripts.synthetic_imagenet import TRAIN, VAL, Generated, add_member, write_table
from tests.fixtures.loopdev import loop_ext4


def _inner_tar(build: Callable[[tarfile.TarFile], None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_member(tar, "n00000001_1.JPEG", b"\xff\xd8\xff good enough to reach the bad member")
        build(tar)
    return out.getvalue()


def _special(name: str, kind: bytes, linkname: str = "") -> Callable[[tarfile.TarFile], None]:
    def build(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        tar.addfile(info)

    return build


def _named(name: str) -> Callable[[tarfile.TarFile], None]:
    return lambda tar: add_member(tar, name, b"\xff\xd8\xffpayload")


MALICIOUS = {
    "dot-dot path": (_named("../../escaped.JPEG"), "unsafe path"),
    "absolute path": (_named("/tmp/escaped.JPEG"), "unsafe path"),
    "symlink": (_special("n00000001_2.JPEG", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hard link": (_special("n00000001_3.JPEG", tarfile.LNKTYPE, "../../escaped"), "hard link"),
    "device": (_special("n00000001_4.JPEG", tarfile.CHRTYPE), "device file"),
    "fifo": (_special("n00000001_5.JPEG", tarfile.FIFOTYPE), "FIFO"),
    "oversized member": (lambda tar: add_member(tar, "n00000001_6.JPEG", b"\xff" * (2 << 20)), "limit"),
}


def _swap_archive(src: Path, archives: Generated, name: str, data: bytes) -> None:
    (src / name).write_bytes(data)
    counts = json.loads(archives.table.read_text())["counts"]
    write_table(src, "tampered", counts["train"], counts["val"], counts["classes"])


def _files_outside(root: Path, inside: Path) -> set[Path]:
    return {p for p in root.rglob("*") if inside not in p.parents and p != inside}


@pytest.mark.parametrize("case", MALICIOUS)
def test_malicious_train_archive_is_refused_and_writes_nothing_outside(
    case: str, archives: Generated, archive_copy: Path, tmp_path: Path
) -> None:
    build, message = MALICIOUS[case]
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_member(tar, f"{sorted(archives.wnids)[0]}.tar", _inner_tar(build))
    _swap_archive(archive_copy, archives, TRAIN, outer.getvalue())
    data = tmp_path / "deep" / "data"
    data.mkdir(parents=True)
    before = _files_outside(tmp_path, data)
    engine = Engine(PrepConfig(data_dir=data, source=str(archive_copy), dataset_table=archive_copy / "dataset.json",
                               keep_tree=True, max_image_mib=1, workers=1))  # fmt: skip
    with pytest.raises(ArchiveError, match=message):
        engine.run()
    assert _files_outside(tmp_path, data) == before
    assert not list(tmp_path.rglob("escaped*"))
    assert not engine.markers.is_done("pack-train")


def test_truncated_archive_member_is_refused(archives: Generated, archive_copy: Path, tmp_path: Path) -> None:
    whole = (archives.root / VAL).read_bytes()
    _swap_archive(archive_copy, archives, VAL, whole[: len(whole) // 2 + 100])
    engine = Engine(PrepConfig(data_dir=tmp_path / "d", source=str(archive_copy),
                               dataset_table=archive_copy / "dataset.json", workers=1))  # fmt: skip
    with pytest.raises(ArchiveError, match="truncated"):
        engine.run()


def test_class_tar_not_in_devkit_is_refused(archives: Generated, archive_copy: Path, tmp_path: Path) -> None:
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_member(tar, "n99999999.tar", _inner_tar(lambda tar: None))
    _swap_archive(archive_copy, archives, TRAIN, outer.getvalue())
    engine = Engine(PrepConfig(data_dir=tmp_path / "d", source=str(archive_copy),
                               dataset_table=archive_copy / "dataset.json", workers=1))  # fmt: skip
    with pytest.raises(ArchiveError, match=r"n99999999, which the devkit does not list"):
        engine.run()


@pytest.mark.root
def test_full_disk_gives_clear_error_and_resumes_after_space_is_freed(archives: Generated, tmp_path: Path) -> None:
    reference = Engine(PrepConfig(data_dir=tmp_path / "ref", source=str(archives.root),
                                  dataset_table=archives.table, max_failure_rate=0.2, workers=1))  # fmt: skip
    reference.run()
    with loop_ext4(tmp_path / "small.img", tmp_path / "mnt", size_mib=8) as (mnt, _device):
        cfg = PrepConfig(data_dir=mnt / "data", source=str(archives.root), dataset_table=archives.table,
                         max_failure_rate=0.2, workers=1, checkpoint_seconds=0, bucket_mib=1)  # fmt: skip
        Engine(cfg).fetch()
        filler = mnt / "filler"
        free = shutil.disk_usage(mnt).free
        with open(filler, "wb") as f:
            f.write(b"\0" * (free - (300 << 10)))  # leave less than packing needs
            os.fsync(f.fileno())
        with pytest.raises(DiskFullError, match=r"no space left.*run again"):
            Engine(cfg).run()
        filler.unlink()
        Engine(cfg).run()
        got = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (mnt / "data" / "recordio").glob("*.*")}
    want = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in reference.paths.recordio.glob("*.*")}
    assert got == want


def test_unknown_config_key_names_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"resise": 256}))
    with pytest.raises(ConfigError, match=r"unknown key 'resise'.*resize"):
        load_config(path, {})


@pytest.mark.parametrize(("key", "value"), [("resize", "big"), ("quality", 101), ("parts", 0)])
def test_invalid_config_values_name_the_key(tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError, match=key):
        load_config(path, {})


def test_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"resize": 300, "quality": 80, "bucket": "b"}))
    cfg = load_config(path, {"resize": 128, "quality": None})
    assert (cfg.resize, cfg.quality, cfg.bucket) == (128, 80, "b")
