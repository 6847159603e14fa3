"""Optional: serve the dataset from the instance's own NVMe disks (instance store), copied from the EBS volume.

Instance types with instance store (p4d, p5, g5.8xlarge and up, ...) have
local NVMe disks faster than any gp3 volume.  With ``--local-nvme`` the agent
mounts the restored EBS volume aside, puts a filesystem on the local disks
(RAID 0 across them with mdadm when there are several), copies the dataset
over with large sequential I/O, mounts the copy read-only at the usual mount
point and unmounts the EBS volume (it stays attached, DeleteOnTermination).
The ready marker says how long the copy took.  Instance store is empty at
every start, so a stopped and started instance copies again.

Instance-store disks are told apart from EBS by their NVMe model string.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bootstrap.common.commands import Runner
from bootstrap.common.devices import DeviceRoots

log = logging.getLogger(__name__)
INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"
MD_DEVICE = "/dev/md/imagenet-local"
LABEL = "imagenet-local"
CHUNK = 16 << 20


def instance_store_devices(roots: DeviceRoots) -> list[Path]:
    """The instance's NVMe instance-store disks, by their model string (EBS volumes say Elastic Block Store)."""
    block, found = roots.sys_root / "block", []
    for entry in sorted(block.iterdir()) if block.is_dir() else []:
        try:
            model = (entry / "device" / "model").read_text().strip()
        except OSError:
            continue
        if entry.name.startswith("nvme") and model == INSTANCE_STORE_MODEL:
            found.append(roots.dev_root / entry.name)
    return found


def prepare_commands(devices: list[Path]) -> tuple[list[list[str]], str]:
    """The commands that put one filesystem on ``devices`` (RAID 0 when several), and the device to mount."""
    commands, target = [], str(devices[0])
    if len(devices) > 1:
        target = MD_DEVICE
        commands.append(["mdadm", "--create", MD_DEVICE, "--level=0", f"--raid-devices={len(devices)}", "--run",
                         "--force", *map(str, devices)])  # fmt: skip
    commands.append(["mkfs.ext4", "-F", "-q", "-m", "0", "-L", LABEL, "-E", "nodiscard", target])
    return commands, target


def copy_tree(source: Path, dest: Path) -> int:
    """Every file under ``source`` to ``dest``, in 16 MiB blocks; returns the bytes copied."""
    total = 0
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if not path.is_file() or path.name == "lost+found":
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
            total += out.tell()
    os.sync()
    return total


def serve_locally(ebs_device: Path, mount_point: Path, devices: list[Path], run: Runner) -> dict[str, Any]:
    """Copy the dataset from ``ebs_device`` to the local disks and mount the copy read-only at ``mount_point``."""
    staging = mount_point.parent / f".{mount_point.name}-ebs"
    staging.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run(["mount", "-o", "ro,noatime", str(ebs_device), str(staging)])
    try:
        commands, target = prepare_commands(devices)
        for command in commands:
            run(command)
        mount_point.mkdir(parents=True, exist_ok=True)
        run(["mount", "-o", "noatime", target, str(mount_point)])
        copied = copy_tree(staging, mount_point)
        run(["mount", "-o", "remount,ro", str(mount_point)])
    finally:
        run(["umount", str(staging)])
    seconds = time.monotonic() - started
    log.info("attach: dataset copied to %d local NVMe disk(s) in %.0fs (%.0f MiB/s)", len(devices), seconds,
             copied / (1 << 20) / max(seconds, 1e-9))  # fmt: skip
    return {"devices": [str(d) for d in devices], "device": target, "bytes": copied, "seconds": round(seconds, 1)}
