"""mount-data on real loop devices: formats a blank volume once, never reformats, refuses partitioned disks."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bootstrap.common.devices import DeviceRoots, mounted_device
from bootstrap.common.errors import BootstrapError
from bootstrap.engine import Engine
from bootstrap.settings import PrepConfig
from tests.fixtures.loopdev import loop_attach, run

VOLUME = "vol-0abc1234def567890"


@contextmanager
def blank_volume(tmp: Path, content: bytes = b"") -> Iterator[DeviceRoots]:
    """A 32 MiB blank disk attached as /dev/sdf on a Xen instance (so /dev/xvdf), backed by a loop device."""
    image = tmp / "disk.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
        f.write(content)
    roots = DeviceRoots(tmp / "sys", tmp / "dev")
    roots.dev_root.mkdir(parents=True)
    with loop_attach(image, read_only=False) as device:
        (roots.dev_root / "xvdf").symlink_to(device)
        yield roots


def engine(tmp: Path, roots: DeviceRoots) -> Engine:
    return Engine(PrepConfig(data_dir=tmp / "data", data_volume_id=VOLUME, sys_root=roots.sys_root,
                             dev_root=roots.dev_root, fstab=tmp / "fstab"))  # fmt: skip


@pytest.mark.root
def test_formats_a_blank_volume_once_and_never_again(tmp_path: Path) -> None:
    with blank_volume(tmp_path) as roots:
        first = engine(tmp_path, roots).mount_data()
        try:
            (tmp_path / "data" / "kept.txt").write_text("data that must survive")
            assert first["mount_point"] == str(tmp_path / "data")
            assert engine(tmp_path, roots).mount_data() == first  # already mounted: nothing to do
        finally:
            run("umount", str(tmp_path / "data"))
        engine(tmp_path, roots).mount_data()  # the next boot: mounts again, does not format
        try:
            assert (tmp_path / "data" / "kept.txt").read_text() == "data that must survive"
            assert (tmp_path / "fstab").read_text().count("UUID=") == 1
            assert "noatime,nofail" in (tmp_path / "fstab").read_text()
        finally:
            run("umount", str(tmp_path / "data"))
    assert mounted_device(tmp_path / "data") is None


def _mbr() -> bytes:
    sector = bytearray(512)
    sector[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, 16384)  # one Linux partition
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


@pytest.mark.root
def test_refuses_to_format_a_partitioned_disk(tmp_path: Path) -> None:
    with blank_volume(tmp_path, _mbr()) as roots, pytest.raises(BootstrapError, match="partition table"):
        engine(tmp_path, roots).mount_data()
    assert mounted_device(tmp_path / "data") is None


def test_needs_the_volume_id(tmp_path: Path) -> None:
    with pytest.raises(BootstrapError, match="no data_volume_id configured"):
        Engine(PrepConfig(data_dir=tmp_path)).mount_data()


@pytest.mark.root
def test_a_filesystem_left_frozen_by_a_crash_is_thawed_at_service_start(tmp_path: Path) -> None:
    """The process died between ``fsfreeze -f`` and ``-u``: the unit's next start (mount-data) must thaw /data."""
    with blank_volume(tmp_path) as roots:
        engine(tmp_path, roots).mount_data()
        try:
            run("fsfreeze", "--freeze", str(tmp_path / "data"))
            engine(tmp_path, roots).mount_data()
            # a write to a frozen filesystem blocks for good, so ask fsfreeze instead: thawing succeeds only
            # when the filesystem is frozen
            thawing = ["fsfreeze", "--unfreeze", str(tmp_path / "data")]
            still_frozen = subprocess.run(thawing, check=False, capture_output=True)
            assert still_frozen.returncode != 0, "mount-data left the data filesystem frozen"
            (tmp_path / "data" / "after").write_text("writable")
        finally:
            subprocess.run(["fsfreeze", "--unfreeze", str(tmp_path / "data")], check=False, capture_output=True)
            run("umount", str(tmp_path / "data"))
