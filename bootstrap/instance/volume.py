"""Prepare the download instance's data volume: find it by id, format it once, mount it.

Formatting happens only when the device holds neither a filesystem nor a
partition table, so running this again (every boot) never destroys data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from bootstrap.common.commands import Runner, run_command
from bootstrap.common.devices import DeviceRoots, add_fstab_entry, find_device, mounted_device, same_device
from bootstrap.common.errors import BootstrapError

log = logging.getLogger(__name__)
LABEL = "imagenet-data"
DEFAULT_ROOTS = DeviceRoots()


def _probe(run: Runner, device: Path, tag: str) -> str:
    """A blkid tag of the device, or "" when it has none (blkid exits 2 then)."""
    try:
        return run(["blkid", "-p", "-s", tag, "-o", "value", str(device)]).strip()
    except BootstrapError:
        return ""


def thaw(mount_point: Path, run: Runner = run_command) -> None:
    """Unfreeze a filesystem a crash left frozen between ``fsfreeze -f`` and ``-u`` (else every write hangs)."""
    try:
        run(["fsfreeze", "--unfreeze", str(mount_point)])
        log.warning("mount-data: %s was frozen (a snapshot step died mid-way); thawed it", mount_point)
    except BootstrapError:
        pass  # not frozen: fsfreeze says "Invalid argument"


def mount_data_volume(
    volume_id: str,
    attachment_device: str,
    mount_point: Path,
    *,
    roots: DeviceRoots = DEFAULT_ROOTS,
    fstab: Path = Path("/etc/fstab"),
    run: Runner = run_command,
    timeout: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Wait for ``volume_id``'s device, format it if blank, mount it at ``mount_point``; returns the device."""
    deadline = time.monotonic() + timeout
    while (device := find_device(volume_id, attachment_device, roots)) is None:
        if time.monotonic() > deadline:
            raise BootstrapError(
                f"{volume_id} has not appeared as a block device after {timeout:.0f}s; is it attached?"
            )
        sleep(2.0)
    current = mounted_device(mount_point)
    if current is not None:
        if same_device(current, device):
            log.info("mount-data: %s is already mounted at %s", volume_id, mount_point)
            thaw(mount_point, run)
            return device
        raise BootstrapError(f"{mount_point} is already mounted from {current}, not from {volume_id}; unmount it first")
    if not _probe(run, device, "TYPE"):
        if _probe(run, device, "PTTYPE"):
            raise BootstrapError(
                f"{device} ({volume_id}) has a partition table but no filesystem; refusing to format it"
            )
        log.info("mount-data: %s is blank; formatting it as ext4", volume_id)
        run(["mkfs.ext4", "-q", "-L", LABEL, "-E", "lazy_itable_init=1,lazy_journal_init=1", str(device)])
    mount_point.mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", "noatime", str(device), str(mount_point)])
    uuid = _probe(run, device, "UUID")
    if uuid:
        add_fstab_entry(fstab, uuid, mount_point, "ext4", options="defaults,noatime,nofail", passno=2)
    log.info("mount-data: %s mounted at %s", volume_id, mount_point)
    return device
