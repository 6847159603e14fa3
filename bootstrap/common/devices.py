"""Find the block device of an EBS volume by its id; never guess a device name.

- Nitro: EBS volumes are NVMe controllers whose serial number is the volume id
  without the hyphen (``vol0123…``), in whatever order they were discovered.
  We read the serial from sysfs rather than trusting a by-id symlink alone.
- Xen (t2 and other older types): a volume attached as ``/dev/sdf`` appears as
  ``/dev/xvdf``; it has no serial, so the attachment's device name is the key.

``sys_root`` and ``dev_root`` are injectable so tests can lay out a sysfs-like
tree whose device nodes point at real loop devices.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bootstrap.common.errors import BootstrapError


@dataclass(frozen=True)
class DeviceRoots:
    sys_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")


def nvme_serial(volume_id: str) -> str:
    return volume_id.replace("-", "")


def xen_name(attachment_device: str) -> str:
    """``/dev/sdf`` -> ``xvdf``; ``/dev/xvdg`` -> ``xvdg``."""
    name = Path(attachment_device).name
    return re.sub(r"^sd", "xvd", name)


def find_device(volume_id: str, attachment_device: str | None, roots: DeviceRoots = DeviceRoots()) -> Path | None:
    """The device node of ``volume_id``, or ``None`` when it has not appeared (yet)."""
    block = roots.sys_root / "block"
    wanted = nvme_serial(volume_id)
    if block.is_dir():
        for entry in sorted(block.iterdir()):
            if not entry.name.startswith("nvme"):
                continue
            serial_file = entry / "device" / "serial"
            try:
                serial = serial_file.read_text().strip()
            except OSError:
                continue
            if serial == wanted:
                return roots.dev_root / entry.name
    if attachment_device:
        candidate = roots.dev_root / xen_name(attachment_device)
        if candidate.exists():
            return candidate
    return None


def same_device(a: Path, b: Path) -> bool:
    """True when two paths name the same block device (symlinks and device numbers resolved)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return sa.st_rdev == sb.st_rdev and sa.st_rdev != 0


def mount_source(mount_point: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> Path:
    """The device mounted at ``mount_point``."""
    target = str(mount_point.resolve())
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[4] == target:
            return Path(fields[separator + 2])
    raise BootstrapError(f"nothing is mounted at {mount_point}; mount the data volume there first")


def mounted_device(mount_point: Path, mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """The device mounted at ``mount_point``, or ``None``."""
    for line in mounts.read_text().splitlines():
        source, target = line.split()[:2]
        if target == str(mount_point):
            return Path(source)
    return None


def add_fstab_entry(fstab: Path, uuid: str, mount_point: Path, fstype: str, *, options: str, passno: int) -> None:
    """Append ``UUID=… mount_point`` to fstab unless that filesystem already has a line; safe to repeat."""
    existing = fstab.read_text() if fstab.exists() else ""
    if f"UUID={uuid} " not in existing:
        with open(fstab, "a") as f:
            f.write(f"UUID={uuid} {mount_point} {fstype} {options} 0 {passno}\n")
